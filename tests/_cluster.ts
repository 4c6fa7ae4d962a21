/**
 * Starts a real Redis Cluster on loopback: `redis-server --cluster-enabled yes`
 * processes (each started and checked by `startRedis()`), joined by
 * `redis-cli --cluster create`, plus the admin moves the cluster tests need:
 * find a key's master, move a slot, fail a master over, kill one.
 *
 * @module
 */

import { freePort, type RedisServer, startRedis } from "./_redis.ts";
import { type RespArg, RespClient, type RespReply } from "./_resp.ts";

/** One redis-server of the cluster. */
export interface ClusterNode {
  /** The loopback port clients use. */
  readonly port: number;
  /** The PID of the current process (changes on restart). */
  readonly pid: number;
  /** The cluster node ID (kept across restarts in its nodes.conf). */
  readonly id: string;
  /** Whether it is running (not killed or stopped by the harness). */
  readonly up: boolean;
  /** The server process underneath. */
  readonly server: RedisServer;
  /** Its role now, as it says itself (`INFO replication`). */
  role(): Promise<"master" | "replica">;
  /** Sends `sig` to this node's PID only. */
  signal(sig: Deno.Signal): void;
  /** Starts it again on the same port and directory (it rejoins the cluster). */
  restart(): Promise<void>;
  /** Stops it for good and removes its directory (dispose does this for every node). */
  stop(): Promise<void>;
  /** Sends one admin command over a side connection the harness owns. */
  send(command: string, ...args: RespArg[]): Promise<RespReply>;
}

/** Options for `startCluster()`. */
export interface StartClusterOptions {
  /** Masters, each with a share of the 16384 slots. @default {3} */
  masters?: number;
  /** Replicas per master. @default {1} */
  replicasPerMaster?: number;
  /** `cluster-node-timeout` in ms: how long until a silent master is failed over. @default {1000} */
  nodeTimeout?: number;
  /** Extra redis-server arguments for every node. @default {[]} */
  args?: string[];
}

/** Options for `RedisCluster.migrateSlot()`. */
export interface MigrateOptions {
  /** Keys per MIGRATE command. @default {100} */
  batch?: number;
  /** Awaited with the keys of each batch just before they move (the slot is then MIGRATING/IMPORTING). */
  beforeBatch?: (keys: string[]) => Promise<void>;
  /** Awaited after the last key moved, before the slot is assigned to the target. */
  beforeCommit?: () => Promise<void>;
}

/** A running cluster; dispose stops every node by PID. */
export interface RedisCluster extends AsyncDisposable {
  /** Every node, in creation order (the first `masters` started as masters). */
  readonly nodes: readonly ClusterNode[];
  /** Seed nodes in ioredis' `Cluster` shape. */
  readonly startupNodes: { host: string; port: number }[];
  /** Seed nodes in node-redis' `createCluster({ rootNodes })` shape. */
  readonly rootNodes: { url: string }[];
  /** The hash slot of each key, from the server (`CLUSTER KEYSLOT`, pipelined). */
  keyslots(keys: string[]): Promise<number[]>;
  /** The master serving `slot` now. */
  slotOwner(slot: number): Promise<ClusterNode>;
  /** The master serving `key`'s slot now. */
  masterFor(key: string): Promise<ClusterNode>;
  /** The masters serving slots now. */
  masters(): Promise<ClusterNode[]>;
  /** The running replicas of `master` now. */
  replicasOf(master: ClusterNode): Promise<ClusterNode[]>;
  /**
   * A replica of `master` that is up, once the cluster's view shows one
   * (after a failover, the demoted master shows as a replica a moment later).
   */
  replicaOf(master: ClusterNode): Promise<ClusterNode>;
  /**
   * Moves `slot` with its keys to the master `to`: SETSLOT IMPORTING and
   * MIGRATING, MIGRATE … KEYS in batches, then SETSLOT NODE on every master;
   * resolves once every node agrees.
   */
  migrateSlot(
    slot: number,
    to: ClusterNode,
    options?: MigrateOptions,
  ): Promise<void>;
  /**
   * Promotes `replica` with `CLUSTER FAILOVER [mode]` (no mode: the
   * coordinated failover that loses no write) and resolves once the cluster
   * agrees it is a master.
   */
  failover(
    replica: ClusterNode,
    mode?: "FORCE" | "TAKEOVER",
  ): Promise<void>;
  /**
   * SIGKILLs `master`, awaits `onKilled` (say, to resume a replica), and
   * resolves with the replica the cluster promoted in its place, once every
   * running node agrees.
   */
  kill(
    master: ClusterNode,
    options?: { onKilled?: () => void | Promise<void> },
  ): Promise<ClusterNode>;
  /** Resolves once every running replica of `master` has all its writes so far. */
  synced(master: ClusterNode): Promise<void>;
  /**
   * Resolves when every running node says `cluster_state:ok` with all 16384
   * slots served, the nodes agree on who serves which slot, no slot is being
   * migrated and every running replica's link to its master is up.
   */
  ready(timeout?: number): Promise<void>;
}

const SLOTS = 16384;
const READY_TIMEOUT_MS = 30_000;
const ATTEMPTS = 3;

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** One line of `CLUSTER NODES`. */
interface NodeLine {
  id: string;
  port: number;
  flags: string[];
  /** The master's ID for a replica, else "-". */
  master: string;
  /** Served slot ranges, [first, last] inclusive (migration markers dropped). */
  ranges: [number, number][];
  /** Whether a `[slot->-id]` or `[slot-<-id]` marker shows an open slot. */
  open: boolean;
}

function parseNodes(reply: RespReply): NodeLine[] {
  return String(reply).trim().split("\n").map((line) => {
    const [id, address, flags, master, , , , , ...slots] = line.trim().split(
      " ",
    );
    const ranges = slots.filter((s) => !s.startsWith("[")).map((s) => {
      const [first, last = first] = s.split("-").map(Number);
      return [first, last] as [number, number];
    });
    return {
      id,
      port: Number(/:(\d+)@/.exec(address)?.[1]),
      flags: flags.split(","),
      master,
      ranges,
      open: slots.some((s) => s.startsWith("[")),
    };
  });
}

function infoField(info: RespReply, field: string): string | undefined {
  return new RegExp(`^${field}:(.*?)\\r?$`, "m").exec(String(info))?.[1];
}

class Node implements ClusterNode {
  readonly server: RedisServer;
  id = "";
  up = true;
  #admin: Promise<RespClient> | undefined;
  #opened: RespClient[] = [];

  constructor(server: RedisServer) {
    this.server = server;
  }

  get port(): number {
    return this.server.port;
  }
  get pid(): number {
    return this.server.pid;
  }

  async role(): Promise<"master" | "replica"> {
    const role = infoField(await this.send("INFO", "replication"), "role");
    return role === "master" ? "master" : "replica";
  }

  signal(sig: Deno.Signal): void {
    this.server.signal(sig);
  }

  async restart(): Promise<void> {
    await this.#dropAdmin();
    await this.server.restart();
    this.up = true;
  }

  /** SIGKILLs the process and waits for it to exit. */
  async kill(): Promise<void> {
    this.up = false;
    this.server.signal("SIGKILL");
    await this.#dropAdmin();
  }

  async send(command: string, ...args: RespArg[]): Promise<RespReply> {
    this.#admin ??= RespClient.connect(this.port).then((client) => {
      this.#opened.push(client);
      // A dead connection is replaced on the next send.
      client.closed.then(() => {
        if (this.#admin && this.#opened.at(-1) === client) {
          this.#admin = undefined;
        }
      });
      return client;
    }).catch((error) => {
      this.#admin = undefined;
      throw error;
    });
    return (await this.#admin).send(command, ...args);
  }

  async #dropAdmin(): Promise<void> {
    this.#admin = undefined;
    await Promise.all(
      this.#opened.splice(0).map((c) => c[Symbol.asyncDispose]()),
    );
  }

  async stop(): Promise<void> {
    this.up = false;
    await this.#dropAdmin();
    await this.server.stop();
  }
}

/** Starts `masters × (1 + replicasPerMaster)` nodes and joins them into a cluster. */
export async function startCluster(
  options: StartClusterOptions = {},
): Promise<RedisCluster> {
  const {
    masters = 3,
    replicasPerMaster = 1,
    nodeTimeout = 1000,
    args = [],
  } = options;
  const nodes: Node[] = [];
  const cluster = new Cluster(nodes);
  try {
    const count = masters * (1 + replicasPerMaster);
    nodes.push(
      ...await Promise.all(
        Array.from({ length: count }, () => startNode(nodeTimeout, args)),
      ),
    );
    for (const node of nodes) {
      node.id = String(await node.send("CLUSTER", "MYID"));
    }
    await create(nodes, replicasPerMaster);
    await cluster.ready();
    return cluster;
  } catch (error) {
    await cluster[Symbol.asyncDispose]();
    throw error;
  }
}

async function startNode(nodeTimeout: number, args: string[]): Promise<Node> {
  for (let attempt = 1;; attempt++) {
    try {
      const server = await startRedis({
        args: [
          ["--cluster-enabled", "yes"],
          // Relative to --dir, so inside the server's own temp directory.
          ["--cluster-config-file", "nodes.conf"],
          ["--cluster-node-timeout", String(nodeTimeout)],
          // The bus port defaults to port + 10000, which may be taken or past 65535.
          ["--cluster-port", String(freePort())],
          // Replicas sync at once, instead of after the default 5 s.
          ["--repl-diskless-sync-delay", "0"],
          args,
        ].flat(),
      });
      return new Node(server);
    } catch (error) {
      // The bus port may have been taken meanwhile: try another one.
      if (attempt >= ATTEMPTS) throw error;
    }
  }
}

async function create(nodes: Node[], replicas: number): Promise<void> {
  const output = await new Deno.Command("redis-cli", {
    args: [
      "--cluster",
      "create",
      ...nodes.map((node) => `127.0.0.1:${node.port}`),
      "--cluster-replicas",
      String(replicas),
      "--cluster-yes",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!output.success) {
    const text = new TextDecoder().decode(output.stdout) +
      new TextDecoder().decode(output.stderr);
    throw new Error(
      `Cannot create the cluster as redis-cli --cluster create failed: ${
        text.slice(-2000)
      }`,
    );
  }
}

class Cluster implements RedisCluster {
  readonly nodes: Node[];

  constructor(nodes: Node[]) {
    this.nodes = nodes;
  }

  get startupNodes(): { host: string; port: number }[] {
    return this.nodes.map((node) => ({ host: "127.0.0.1", port: node.port }));
  }

  get rootNodes(): { url: string }[] {
    return this.nodes.map((node) => ({ url: node.server.url }));
  }

  #live(): Node[] {
    return this.nodes.filter((node) => node.up);
  }

  #byId(id: string): Node {
    const node = this.nodes.find((node) => node.id === id);
    if (!node) throw new Error(`No node of this cluster has ID ${id}`);
    return node;
  }

  /** CLUSTER NODES as a running master sees it (they agree once ready()). */
  async #view(): Promise<NodeLine[]> {
    for (const node of this.#live()) {
      try {
        if (await node.role() === "master") {
          return parseNodes(await node.send("CLUSTER", "NODES"));
        }
      } catch {
        // A node that went away between the check and the call; ask the next.
      }
    }
    throw new Error("No running master answers CLUSTER NODES");
  }

  async keyslots(keys: string[]): Promise<number[]> {
    const node = this.#live()[0];
    const replies = await Promise.all(
      keys.map((key) => node.send("CLUSTER", "KEYSLOT", key)),
    );
    return replies.map(Number);
  }

  async slotOwner(slot: number): Promise<ClusterNode> {
    const line = (await this.#view()).find((line) =>
      line.flags.includes("master") && !line.flags.includes("fail") &&
      line.ranges.some(([first, last]) => first <= slot && slot <= last)
    );
    if (!line) throw new Error(`No master serves slot ${slot}`);
    return this.#byId(line.id);
  }

  async masterFor(key: string): Promise<ClusterNode> {
    const [slot] = await this.keyslots([key]);
    return await this.slotOwner(slot);
  }

  async masters(): Promise<ClusterNode[]> {
    return (await this.#view())
      .filter((line) => line.flags.includes("master") && line.ranges.length)
      .map((line) => this.#byId(line.id));
  }

  async replicasOf(master: ClusterNode): Promise<ClusterNode[]> {
    return (await this.#view())
      .filter((line) => line.master === master.id)
      .map((line) => this.#byId(line.id))
      .filter((node) => node.up);
  }

  async replicaOf(master: ClusterNode): Promise<ClusterNode> {
    const deadline = performance.now() + READY_TIMEOUT_MS;
    for (;;) {
      const [replica] = await this.replicasOf(master);
      if (replica) return replica;
      if (performance.now() > deadline) {
        throw new Error(`Master ${master.port} shows no replica that is up`);
      }
      await delay(20);
    }
  }

  async migrateSlot(
    slot: number,
    to: ClusterNode,
    options: MigrateOptions = {},
  ): Promise<void> {
    const { batch = 100, beforeBatch, beforeCommit } = options;
    const from = await this.slotOwner(slot) as Node;
    const target = to as Node;
    if (from === target) {
      throw new Error(`Cannot migrate slot ${slot} as ${to.port} serves it`);
    }
    await target.send("CLUSTER", "SETSLOT", slot, "IMPORTING", from.id);
    await from.send("CLUSTER", "SETSLOT", slot, "MIGRATING", target.id);
    // A failing hook still lets the move finish, so the slot is not left open.
    let failure: { error: unknown } | undefined;
    const hook = async (run: (() => Promise<void>) | undefined) => {
      if (failure || !run) return;
      try {
        await run();
      } catch (error) {
        failure = { error };
      }
    };
    for (;;) {
      const keys = await from.send("CLUSTER", "GETKEYSINSLOT", slot, batch);
      if (!Array.isArray(keys) || keys.length === 0) break;
      const names = keys.map(String);
      await hook(beforeBatch && (() => beforeBatch(names)));
      await from.send(
        "MIGRATE",
        "127.0.0.1",
        target.port,
        "",
        0,
        5000,
        "KEYS",
        ...names,
      );
    }
    await hook(beforeCommit);
    // The target first, so the slot is never served by neither side.
    await target.send("CLUSTER", "SETSLOT", slot, "NODE", target.id);
    await from.send("CLUSTER", "SETSLOT", slot, "NODE", target.id);
    for (const master of await this.masters()) {
      if (master !== target && master !== from) {
        await master.send("CLUSTER", "SETSLOT", slot, "NODE", target.id);
      }
    }
    await this.ready();
    if (failure) throw failure.error;
  }

  async failover(
    replica: ClusterNode,
    mode?: "FORCE" | "TAKEOVER",
  ): Promise<void> {
    const deadline = performance.now() + READY_TIMEOUT_MS;
    // An election can fail (masters vote for one failover per shard per two
    // node timeouts): ask again until the cluster agrees on the promotion.
    for (;;) {
      await replica.send("CLUSTER", "FAILOVER", ...(mode ? [mode] : []));
      const asked = performance.now();
      while (performance.now() - asked < 3_000) {
        if (await this.#serves(replica)) return;
        if (performance.now() > deadline) {
          throw new Error(`Replica ${replica.port} was not promoted`);
        }
        await delay(20);
      }
    }
  }

  /** Whether the cluster is ready with `node` a master that serves slots. */
  async #serves(node: ClusterNode): Promise<boolean> {
    if (await this.#unready().catch(String)) return false;
    return (await this.#view()).some((line) =>
      line.id === node.id && line.flags.includes("master") &&
      line.ranges.length > 0
    );
  }

  async synced(master: ClusterNode): Promise<void> {
    const offset = (info: RespReply, field: string) =>
      Number(infoField(info, field) ?? NaN);
    const target = offset(
      await master.send("INFO", "replication"),
      "master_repl_offset",
    );
    const deadline = performance.now() + READY_TIMEOUT_MS;
    for (const replica of await this.replicasOf(master)) {
      while (
        !(offset(
          await replica.send("INFO", "replication"),
          "slave_repl_offset",
        ) >=
          target)
      ) {
        if (performance.now() > deadline) {
          throw new Error(`Replica ${replica.port} did not catch up`);
        }
        await delay(5);
      }
    }
  }

  async kill(
    master: ClusterNode,
    options: { onKilled?: () => void | Promise<void> } = {},
  ): Promise<ClusterNode> {
    const replicas = await this.replicasOf(master);
    if (replicas.length === 0) {
      throw new Error(`Cannot fail ${master.port} over as it has no replica`);
    }
    await (master as Node).kill();
    await options.onKilled?.();
    const deadline = performance.now() + READY_TIMEOUT_MS;
    for (;;) {
      for (const replica of replicas) {
        if (await this.#serves(replica)) return replica;
      }
      if (performance.now() > deadline) {
        throw new Error(`No replica of ${master.port} was promoted`);
      }
      await delay(20);
    }
  }

  async ready(timeout = READY_TIMEOUT_MS): Promise<void> {
    const deadline = performance.now() + timeout;
    let why = "";
    for (let wait = 10;; wait = Math.min(wait * 2, 100)) {
      why = await this.#unready().catch((error) => String(error));
      if (!why) return;
      if (performance.now() > deadline) {
        throw new Error(
          `The cluster was not ready within ${timeout} ms: ${why}`,
        );
      }
      await delay(wait);
    }
  }

  /** Why the cluster is not ready yet, or "" when it is. */
  async #unready(): Promise<string> {
    let agreed: string | undefined;
    for (const node of this.#live()) {
      const info = await node.send("CLUSTER", "INFO");
      for (
        const [field, want] of [
          ["cluster_state", "ok"],
          ["cluster_slots_assigned", String(SLOTS)],
          ["cluster_slots_ok", String(SLOTS)],
        ]
      ) {
        const value = infoField(info, field);
        if (value !== want) return `${node.port}: ${field}:${value}`;
      }
      const lines = parseNodes(await node.send("CLUSTER", "NODES"));
      if (lines.some((line) => line.open)) {
        return `${node.port}: a slot is being migrated`;
      }
      // A master that lost its slots to a failover turns replica soon after.
      const idle = lines.find((line) =>
        line.flags.includes("master") && line.ranges.length === 0 &&
        !line.flags.some((f) => f === "fail" || f === "fail?") &&
        this.#live().some((live) => live.id === line.id)
      );
      if (idle) return `${idle.port} is a master without slots`;
      // Who serves which slots, and who replicates whom, as this node sees it.
      const view = lines
        .filter((line) =>
          !line.flags.some((f) => f === "fail" || f === "fail?")
        )
        .map((line) =>
          `${line.id} ${
            line.flags.includes("master") ? "M" : "S"
          } ${line.master} ${
            line.ranges.map((range) => range.join("-")).join(",")
          }`
        )
        .sort()
        .join("\n");
      if (agreed !== undefined && view !== agreed) {
        return `${node.port} disagrees on the topology`;
      }
      agreed = view;
      const replication = await node.send("INFO", "replication");
      if (
        infoField(replication, "role") === "slave" &&
        infoField(replication, "master_link_status") !== "up"
      ) {
        return `${node.port}: its link to its master is not up`;
      }
    }
    return "";
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.nodes.map((node) => node.stop()));
  }
}
