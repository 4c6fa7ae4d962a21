/**
 * How far deadbolt goes on this machine: lock throughput on one redis-server
 * and on a 3-master Redis Cluster, with 1, 2 and 4 client processes, over
 * many keys; Redis memory per lock key and per fence counter; Redis commands
 * per acquisition. The servers are started and stopped by this script.
 *
 * Usage: `deno run -A bench/scale.ts [--quick] [--seconds S] [--rounds R]`
 *   --quick      a short run: one round of 1 s windows, 1 and 2 processes,
 *                2,000 locks for the memory figures (about 15 s)
 *   --seconds S  measuring window per cell (default 2)
 *   --rounds R   rounds over every cell, interleaving the targets (default
 *                3); a full run takes about 90 s on 2 cores
 * Markdown goes to stdout, progress to stderr.
 *
 * Workloads (every process is a `_scale_worker.ts` with one ioredis client,
 * a `Redis` or a `Cluster`):
 * - uncontended: 16 tasks per process loop acquire + release over 10,000
 *   distinct names, split so that no two tasks share a name;
 * - contended: 64 keys with 8 waiters each (512 tasks spread over the
 *   processes, a key's waiters in different processes where there are
 *   several), acquire + release with no work inside.
 * A cell's locks/s is acquire + release cycles completed in the window.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Cluster, Redis } from "npm:ioredis@6";
import { Lock } from "../mod.ts";
import { lockKeys } from "../src/keys.ts";
import { startRedis } from "../tests/_redis.ts";
import { startCluster } from "../tests/_cluster.ts";
import type { RespArg, RespReply } from "../tests/_resp.ts";
import type { WorkerPlan, WorkerResult } from "./_scale_worker.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    seconds: { type: "string" },
    rounds: { type: "string" },
  },
});
const QUICK = flags.quick;
const SECONDS = Number(flags.seconds ?? (QUICK ? 1 : 2));
const ROUNDS = Number(flags.rounds ?? (QUICK ? 1 : 3));
if (!(SECONDS > 0)) throw new RangeError("--seconds must be positive");
if (!(Number.isInteger(ROUNDS) && ROUNDS > 0)) {
  throw new RangeError("--rounds must be a positive integer");
}
const PROCESSES = QUICK ? [1, 2] : [1, 2, 4];
const NAMES = 10_000;
const TASKS_PER_PROCESS = 16;
const KEYS = 64;
const WAITERS_PER_KEY = 8;
const MEMORY_LOCKS = QUICK ? 2_000 : 10_000;

const WORKER = new URL("./_scale_worker.ts", import.meta.url).pathname;

/** A server, or a cluster, to measure. */
interface Target {
  label: string;
  ports: number[];
  cluster: boolean;
  /** Admin access to each master. */
  masters: Admin[];
  /** Admin access to the master that serves `key`. */
  ownerOf(key: string): Promise<Admin>;
}

interface Admin {
  send(command: string, ...args: RespArg[]): Promise<RespReply>;
}

interface Cell {
  target: string;
  workload: "uncontended" | "contended";
  processes: number;
  locksPerSecond: number;
  waitP50: number;
  waitP99: number;
  cycleP50: number;
  /** Calls the clients made (EVALSHA, EVAL, (S)SUBSCRIBE…) per cycle. */
  roundTrips: number;
  /** Of `roundTrips`, the (un)subscribe calls of waiters, per cycle. */
  subscribes: number;
  /** Every command Redis ran, those inside scripts included, per cycle. */
  commands: number;
}

const log = (message: string) => console.error(`[scale] ${message}`);

const percentile = (sorted: number[], p: number) =>
  sorted.length === 0
    ? NaN
    : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

async function* lines(stream: ReadableStream<Uint8Array>) {
  let buffer = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    for (let end; (end = buffer.indexOf("\n")) >= 0;) {
      yield buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
    }
  }
}

/** The tasks of each process: names per task. */
function plans(
  workload: Cell["workload"],
  processes: number,
): string[][][] {
  const perProcess: string[][][] = Array.from({ length: processes }, () => []);
  if (workload === "uncontended") {
    const tasks = processes * TASKS_PER_PROCESS;
    for (let task = 0; task < tasks; task++) {
      const names: string[] = [];
      for (let i = task; i < NAMES; i += tasks) names.push(`u-${i}`);
      perProcess[task % processes].push(names);
    }
  } else {
    // Waiter w of key k goes to process w mod n: a key's waiters spread out.
    for (let waiter = 0; waiter < WAITERS_PER_KEY; waiter++) {
      for (let key = 0; key < KEYS; key++) {
        perProcess[waiter % processes].push([`c-${key}`]);
      }
    }
  }
  return perProcess;
}

const ADMIN_COMMANDS = new Set([
  "info",
  "config|resetstat",
  "config",
  "cluster",
  "ping",
  "memory",
  "command",
  "client",
  "hello",
  "readonly",
]);
const TOP_LEVEL = new Set([
  "evalsha",
  "eval",
  "wait",
  "subscribe",
  "unsubscribe",
  "ssubscribe",
  "sunsubscribe",
]);

/** Calls per command over every master, from `INFO commandstats`. */
async function commandStats(target: Target): Promise<Map<string, number>> {
  const totals = new Map<string, number>();
  for (const master of target.masters) {
    const stats = String(await master.send("INFO", "commandstats"));
    for (
      const [, name, calls] of stats.matchAll(/cmdstat_(\S+?):calls=(\d+)/g)
    ) {
      totals.set(name, (totals.get(name) ?? 0) + Number(calls));
    }
  }
  return totals;
}

async function runCell(
  target: Target,
  workload: Cell["workload"],
  processes: number,
): Promise<Cell> {
  const children = plans(workload, processes).map((tasks) => {
    const plan: WorkerPlan = {
      ports: target.ports,
      cluster: target.cluster,
      tasks,
      ms: SECONDS * 1000,
    };
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", WORKER, JSON.stringify(plan)],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    return { child, output: lines(child.stdout) };
  });
  try {
    for (const { output } of children) {
      const { value } = await output.next();
      if (value !== "ready") throw new Error(`worker said ${value}`);
    }
    for (const master of target.masters) {
      await master.send("CONFIG", "RESETSTAT");
    }
    const go = new TextEncoder().encode("go\n");
    await Promise.all(children.map(async ({ child }) => {
      const writer = child.stdin.getWriter();
      await writer.write(go);
      await writer.close();
    }));
    const results: WorkerResult[] = [];
    for (const { output } of children) {
      const { value } = await output.next();
      results.push(JSON.parse(String(value)));
    }
    const stats = await commandStats(target);
    const cycles = results.reduce((n, r) => n + r.cycles, 0);
    const waits = results.flatMap((r) => r.waits).sort((a, b) => a - b);
    const durations = results.flatMap((r) => r.durations).sort((a, b) => a - b);
    let roundTrips = 0;
    let subscribes = 0;
    let commands = 0;
    for (const [name, calls] of stats) {
      if (ADMIN_COMMANDS.has(name) || name.startsWith("config")) continue;
      commands += calls;
      if (TOP_LEVEL.has(name)) roundTrips += calls;
      if (/subscribe$/.test(name)) subscribes += calls;
    }
    return {
      target: target.label,
      workload,
      processes,
      locksPerSecond: cycles / SECONDS,
      waitP50: percentile(waits, 0.5),
      waitP99: percentile(waits, 0.99),
      cycleP50: percentile(durations, 0.5),
      roundTrips: roundTrips / cycles,
      subscribes: subscribes / cycles,
      commands: commands / cycles,
    };
  } finally {
    for (const { child } of children) {
      await child.status;
    }
  }
}

interface Memory {
  target: string;
  /** used_memory delta per held lock (key, expiry entry, allocator overhead). */
  perLock: number;
  /** used_memory delta per fence counter left after release. */
  perFence: number;
  /** MEMORY USAGE of a lock key, averaged over a sample. */
  lockUsage: number;
  /** MEMORY USAGE of a fence counter, averaged over a sample. */
  fenceUsage: number;
}

async function usedMemory(target: Target): Promise<number> {
  let total = 0;
  for (const master of target.masters) {
    const info = String(await master.send("INFO", "memory"));
    total += Number(/^used_memory:(\d+)/m.exec(info)?.[1]);
  }
  return total;
}

async function inBatches<T, R>(
  items: T[],
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += 500) {
    out.push(...await Promise.all(items.slice(i, i + 500).map(fn)));
  }
  return out;
}

async function measureMemory(target: Target): Promise<Memory> {
  const client = target.cluster
    ? new Cluster(target.ports.map((port) => ({ host: "127.0.0.1", port })))
    : new Redis(target.ports[0], "127.0.0.1");
  try {
    const names = Array.from({ length: MEMORY_LOCKS }, (_, i) => `m-${i}`);
    const sample = names.slice(0, 100);
    const usage = async (keys: string[]) => {
      let sum = 0;
      for (const key of keys) {
        sum += Number(
          await (await target.ownerOf(key)).send("MEMORY", "USAGE", key),
        );
      }
      return sum / keys.length;
    };
    const hold = (fencing: boolean) =>
      inBatches(names, (name) =>
        Lock.acquire(client, name, {
          ttl: 600_000,
          autoExtend: false,
          fencing,
        }));
    for (const master of target.masters) await master.send("FLUSHALL");
    let before = await usedMemory(target);
    let locks = await hold(false);
    const perLock = (await usedMemory(target) - before) / names.length;
    const lockUsage = await usage(locks.slice(0, 100).map((lock) => lock.key));
    await inBatches(locks, (lock) => lock.release());

    for (const master of target.masters) await master.send("FLUSHALL");
    before = await usedMemory(target);
    locks = await hold(true);
    await inBatches(locks, (lock) => lock.release());
    const perFence = (await usedMemory(target) - before) / names.length;
    const fenceUsage = await usage(
      sample.map((name) => lockKeys("deadbolt:", name).fence),
    );
    for (const master of target.masters) await master.send("FLUSHALL");
    return { target: target.label, perLock, perFence, lockUsage, fenceUsage };
  } finally {
    await client.quit();
  }
}

/** The cells of every workload and process count, in one round. */
async function round(target: Target, index: number): Promise<Cell[]> {
  const cells: Cell[] = [];
  for (const workload of ["uncontended", "contended"] as const) {
    for (const processes of PROCESSES) {
      log(
        `round ${
          index + 1
        }: ${target.label}, ${workload}, ${processes} process(es)`,
      );
      cells.push(await runCell(target, workload, processes));
    }
  }
  return cells;
}

async function text(command: string, ...args: string[]): Promise<string> {
  try {
    const { stdout } = await new Deno.Command(command, { args }).output();
    return new TextDecoder().decode(stdout).trim();
  } catch {
    return "?";
  }
}

const fmt = (n: number, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString("en-US", {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    })
    : "—";

const started = performance.now();
const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
const cpus = await text("nproc");
const model = /^model name\s*:\s*(.*)$/m.exec(
  await Deno.readTextFile("/proc/cpuinfo").catch(() => ""),
)?.[1] ?? "?";
const redisVersion = /v=(\S+)/.exec(await text("redis-server", "--version"))
  ?.[1] ?? "?";
const load = await Deno.readTextFile("/proc/loadavg").then((l) =>
  l.split(" ").slice(0, 3).join(" ")
).catch(() => "?");

log("starting one redis-server and a 3-master cluster (no replicas)");
await using server = await startRedis();
await using admin = await server.connect();
await using cluster = await startCluster({ masters: 3, replicasPerMaster: 0 });
const clusterMasters = await cluster.masters();
const targets: Target[] = [
  {
    label: "1 redis-server",
    ports: [server.port],
    cluster: false,
    masters: [admin],
    ownerOf: () => Promise.resolve(admin),
  },
  {
    label: "cluster, 3 masters (no replicas)",
    ports: clusterMasters.map((node) => node.port),
    cluster: true,
    masters: clusterMasters,
    ownerOf: (key) => cluster.masterFor(key),
  },
];
// Rounds interleave the targets, so a burst of load from elsewhere on the
// machine does not land on one target only.
const rounds: Cell[][][] = targets.map(() => []);
for (let r = 0; r < ROUNDS; r++) {
  for (const [t, target] of targets.entries()) {
    rounds[t].push(await round(target, r));
  }
}
const memories: Memory[] = [];
for (const target of targets) {
  log(`${target.label}: memory over ${MEMORY_LOCKS} locks`);
  memories.push(await measureMemory(target));
}

/** Per cell: the round with the median locks/s, and the range over rounds. */
const results = rounds.map((perRound) =>
  perRound[0].map((_, c) => {
    const runs = perRound.map((cells) => cells[c])
      .sort((a, b) => a.locksPerSecond - b.locksPerSecond);
    return {
      median: runs[Math.floor((runs.length - 1) / 2)],
      low: runs[0].locksPerSecond,
      high: runs.at(-1)!.locksPerSecond,
    };
  })
);

const out: string[] = [];
out.push(
  `# deadbolt scale run, ${date}`,
  "",
  `Command: \`deno run -A bench/scale.ts${
    Deno.args.length ? " " + Deno.args.join(" ") : ""
  }\``,
  "",
  `Machine: ${cpus} cores (${model}), load average at start ${load}; Deno ${Deno.version.deno}; Redis ${redisVersion} on loopback; ioredis 6. Window ${SECONDS} s per cell, ${ROUNDS} round(s) interleaving the targets; locks/s is the median round (range in parentheses), the other columns are from that round.`,
  "",
  "| target | workload | client processes | locks/s | wait p50 / p99 (ms) | cycle p50 (ms) | client calls per lock (of which subscribe/unsubscribe) | Redis commands per lock |",
  "| --- | --- | --: | --: | --: | --: | --: | --: |",
);
for (const cells of results) {
  for (const { median: cell, low, high } of cells) {
    out.push(
      `| ${cell.target} | ${
        cell.workload === "uncontended"
          ? `uncontended, ${NAMES.toLocaleString("en-US")} names`
          : `contended, ${KEYS} keys × ${WAITERS_PER_KEY} waiters`
      } | ${cell.processes} | ${fmt(cell.locksPerSecond)}${
        ROUNDS > 1 ? ` (${fmt(low)}–${fmt(high)})` : ""
      } | ${fmt(cell.waitP50, 2)} / ${fmt(cell.waitP99, 2)} | ${
        fmt(cell.cycleP50, 2)
      } | ${fmt(cell.roundTrips, 2)} (${fmt(cell.subscribes, 2)}) | ${
        fmt(cell.commands, 2)
      } |`,
    );
  }
}
out.push(
  "",
  "Memory (`INFO memory` used_memory delta over held locks, and `MEMORY USAGE` averaged over 100 keys):",
  "",
  "| target | locks | per held lock (delta) | lock key (MEMORY USAGE) | per fence counter (delta) | fence counter (MEMORY USAGE) |",
  "| --- | --: | --: | --: | --: | --: |",
);
for (const memory of memories) {
  out.push(
    `| ${memory.target} | ${MEMORY_LOCKS.toLocaleString("en-US")} | ${
      fmt(memory.perLock)
    } B | ${fmt(memory.lockUsage)} B | ${fmt(memory.perFence)} B | ${
      fmt(memory.fenceUsage)
    } B |`,
  );
}
const single = memories[0];
const best = Math.max(...results[0].map(({ median }) => median.locksPerSecond));
out.push(
  "",
  "Contended with 1 process, a key's 8 waiters share one client, so a release hands the lock to the next local waiter in one script; with 2 or 4 processes a key's waiters sit in different processes and are woken by (sharded) pub/sub, as services on separate hosts would be.",
  "",
  `Arithmetic, from the single server's figures: 1 million held locks take about ${
    fmt(single.perLock * 1e6 / 2 ** 20)
  } MiB; 1 million fence counters (kept forever, one per name ever fenced) about ${
    fmt(single.perFence * 1e6 / 2 ** 20)
  } MiB. A fleet taking λ locks/s and holding each for h s keeps λ·h locks held at once (Little's law): memory is λ·h × ${
    fmt(single.perLock)
  } B, and λ must stay under the server's ceiling, ${
    fmt(best)
  } locks/s in the best single-server cell here (median of its rounds). On a cluster the keys, and so the load, spread over the masters by hash slot.`,
  "",
  `This machine has ${cpus} cores shared by the redis-server(s), the client processes and other work, so the cluster's 3 masters add no CPU: expect no linear scaling here; on separate hosts each master brings its own. Run took ${
    fmt((performance.now() - started) / 1000)
  } s.`,
);
console.log(out.join("\n"));
