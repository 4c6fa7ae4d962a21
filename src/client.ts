import { shardedFirst, sharedSubscriber } from "./_subscriber.ts";
import { keySlot } from "./keys.ts";

/**
 * What deadbolt needs from a Redis client: run a Lua script with keys and
 * arguments. `@db/redis` and `@upstash/redis` clients have exactly this shape
 * and are used as they are; the other clients are adapted by shape (or by the
 * explicit `from*` functions below).
 *
 * Scripts reply with integers (or arrays of integers) only, which every client
 * returns as numbers; deadbolt still coerces with `Number()` so clients that
 * map integers to strings or bigints work too.
 *
 * @example A client of your own
 * ```ts
 * import type { ScriptClient } from "@deadbolt/deadbolt";
 *
 * const logging = (inner: ScriptClient): ScriptClient => ({
 *   eval: (script, keys, args) => {
 *     console.debug("EVAL", keys);
 *     return inner.eval(script, keys, args);
 *   },
 * });
 * ```
 */
export interface ScriptClient {
  /** Runs `EVAL script numkeys ...keys ...args`. */
  eval(script: string, keys: string[], args: string[]): Promise<unknown>;
  /**
   * Runs `EVALSHA sha1 numkeys ...keys ...args`. When present, deadbolt uses
   * it first and falls back to `eval` on a `NOSCRIPT` error.
   */
  evalsha?(sha1: string, keys: string[], args: string[]): Promise<unknown>;
  /**
   * Runs `WAIT numreplicas timeout` on the connection that ran the scripts
   * on `key` (on a cluster, the connection to the master of `key`'s slot);
   * needed only for the `waitReplicas` option.
   */
  wait?(numreplicas: number, timeout: number, key: string): Promise<unknown>;
  /**
   * Calls `listener` on every pub/sub message to `channel` and resolves with
   * a function that stops it. When present, a waiter is woken as soon as the
   * holder releases, instead of at its next backoff attempt; the ioredis and
   * node-redis adapters provide it over one extra connection per client,
   * open only while some lock is waited for.
   */
  subscribe?(
    channel: string,
    listener: () => void,
  ): Promise<() => Promise<void>>;
  /**
   * `true` when calls made one after another run in Redis in that order
   * (one connection, pipelined), as with ioredis, node-redis and Bun's
   * client. A release in this process may then pass the lock to a waiter of
   * the same process before Redis has answered: whatever the waiter sends
   * next runs after the handover. Leave it unset for pooled or HTTP clients.
   */
  ordered?: boolean;
}

/** The part of an ioredis 5 or 6 client (or `Cluster`) that deadbolt uses. */
export interface IoredisClient {
  /** `EVAL` with variadic keys and arguments. */
  eval(
    script: string,
    numkeys: number,
    ...keysAndArgs: string[]
  ): Promise<unknown>;
  /** `EVALSHA` with variadic keys and arguments. */
  evalsha(
    sha1: string,
    numkeys: number,
    ...keysAndArgs: string[]
  ): Promise<unknown>;
  /** Present on ioredis only; used to tell it apart from other clients. */
  defineCommand(name: string, definition: { lua: string }): unknown;
  /** `WAIT`, for the `waitReplicas` option. */
  wait?(numreplicas: number, timeout: number): Promise<unknown>;
  /**
   * A new connection (or, for a `Cluster`, a new cluster client) with the
   * same options, for pub/sub wake-ups.
   */
  duplicate?(...options: never[]): IoredisSubscriber;
  /** `true` on an ioredis `Cluster`. */
  readonly isCluster?: boolean;
  /** A `Cluster`'s slot table: the `host:port` of each slot's nodes, master first. */
  readonly slots?: readonly (readonly string[] | undefined)[];
  /** A `Cluster`'s node connections. */
  nodes?(role: "master"): IoredisNode[];
}

/** One node connection of an ioredis `Cluster`. */
export interface IoredisNode {
  /** The node's address. */
  readonly options: { readonly host?: string; readonly port?: number };
  /** `WAIT`, for the `waitReplicas` option. */
  wait(numreplicas: number, timeout: number): Promise<unknown>;
}

/** The part of an ioredis connection used to subscribe. */
export interface IoredisSubscriber {
  /** `SUBSCRIBE`. */
  subscribe(channel: string): Promise<unknown>;
  /** `UNSUBSCRIBE`. */
  unsubscribe(channel: string): Promise<unknown>;
  /** `SSUBSCRIBE` (ioredis 5.3 and later). */
  ssubscribe?(channel: string): Promise<unknown>;
  /** `SUNSUBSCRIBE` (ioredis 5.3 and later). */
  sunsubscribe?(channel: string): Promise<unknown>;
  /** Listens for plain (`message`) and sharded (`smessage`) messages. */
  on(
    event: "message" | "smessage",
    listener: (channel: string) => void,
  ): unknown;
  /** Closes the connection. */
  disconnect(): void;
}

/** The keys-and-arguments option of node-redis' `eval` and `evalSha`. */
export interface NodeRedisEvalOptions {
  /** The script's `KEYS`. */
  keys: string[];
  /** The script's `ARGV`. */
  arguments: string[];
}

/** The part of a node-redis 5 or 6 client (or cluster) that deadbolt uses. */
export interface NodeRedisClient {
  /** `EVAL` with keys and arguments in an options object. */
  eval(script: string, options: NodeRedisEvalOptions): Promise<unknown>;
  /** `EVALSHA` with keys and arguments in an options object. */
  evalSha(sha1: string, options: NodeRedisEvalOptions): Promise<unknown>;
  /** `WAIT`, for the `waitReplicas` option. */
  wait?(numreplicas: number, timeout: number): Promise<unknown>;
  /** A new client with the same options, for pub/sub wake-ups. */
  duplicate?(): NodeRedisSubscriber;
  /**
   * Present on a cluster (`createCluster`) only: the master of a slot. A
   * cluster subscribes with its own sharded subscribers and sends `WAIT` to
   * the master of the lock's slot.
   */
  getSlotMaster?(slot: number): unknown;
  /** A cluster's connection to one node. */
  nodeClient?(node: never): unknown;
  /** `SSUBSCRIBE` on a cluster. */
  sSubscribe?(channel: string, listener: () => void): Promise<unknown>;
  /** `SUNSUBSCRIBE` on a cluster. */
  sUnsubscribe?(channel: string, listener: () => void): Promise<unknown>;
  /** `SUBSCRIBE` on a cluster. */
  subscribe?(channel: string, listener: () => void): Promise<unknown>;
  /** `UNSUBSCRIBE` on a cluster. */
  unsubscribe?(channel: string, listener: () => void): Promise<unknown>;
}

/** The part of a node-redis client used to subscribe. */
export interface NodeRedisSubscriber {
  /** Connects the duplicate. */
  connect(): Promise<unknown>;
  /** `SUBSCRIBE` with a listener. */
  subscribe(channel: string, listener: () => void): Promise<unknown>;
  /** `UNSUBSCRIBE`. */
  unsubscribe(channel: string): Promise<unknown>;
  /** `SSUBSCRIBE` with a listener. */
  sSubscribe?(channel: string, listener: () => void): Promise<unknown>;
  /** `SUNSUBSCRIBE`. */
  sUnsubscribe?(channel: string): Promise<unknown>;
  /** Closes the connection (node-redis 5 and 6). */
  close?(): Promise<unknown>;
  /** Closes the connection (node-redis 4). */
  quit?(): Promise<unknown>;
}

/** The part of Bun's built-in `RedisClient` (Bun ≥ 1.2.9) that deadbolt uses. */
export interface BunRedisClient {
  /** Sends a raw command; arguments must be strings. */
  send(command: string, args: string[]): Promise<unknown>;
  /** Present on Bun's client; used to tell it apart from other clients. */
  duplicate(): unknown;
}

/** The part of a Valkey GLIDE client (`GlideClient`) that deadbolt uses. */
export interface GlideClient {
  /** Sends a raw command. */
  customCommand(args: string[]): Promise<unknown>;
  /** Present on GLIDE only; used to tell it apart from other clients. */
  invokeScript(script: never, options?: never): Promise<unknown>;
}

/**
 * Any Redis client deadbolt accepts as it is: `@db/redis`, `@upstash/redis`
 * (or anything with their `eval(script, keys, args)` shape), ioredis,
 * node-redis, Bun's `RedisClient` or Valkey GLIDE.
 */
export type RedisClient =
  | ScriptClient
  | IoredisClient
  | NodeRedisClient
  | BunRedisClient
  | GlideClient;

const SUPPORTED =
  "@db/redis, @upstash/redis, ioredis, node-redis, Bun's RedisClient, Valkey GLIDE, or an object with eval(script, keys, args)";

/**
 * Adapts an ioredis 5 or 6 client (or `Cluster`).
 *
 * @param client A connected ioredis client.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { Redis } from "npm:ioredis";
 * import { fromIoredis, Lock } from "@deadbolt/deadbolt";
 *
 * const redis = fromIoredis(new Redis());
 * await using lock = await Lock.acquire(redis, "report");
 * ```
 */
export function fromIoredis(client: IoredisClient): ScriptClient {
  const cluster = client.isCluster === true;
  return {
    // A Cluster may resend a redirected call after later ones.
    ordered: !cluster,
    eval: (script, keys, args) =>
      client.eval(script, keys.length, ...keys, ...args),
    evalsha: (sha1, keys, args) =>
      client.evalsha(sha1, keys.length, ...keys, ...args),
    ...(cluster ? { wait: ioredisClusterWait(client) } : bindWait(client)),
    ...(typeof client.duplicate === "function" && {
      subscribe: sharedSubscriber((deliver) => {
        // A Cluster subscribes to sharded channels only through its own
        // per-shard subscribers, which this option turns on.
        const duplicate = client.duplicate!.bind(client) as (
          ...options: unknown[]
        ) => IoredisSubscriber;
        const subscriber = cluster
          ? duplicate([], { shardedSubscribers: true })
          : duplicate();
        subscriber.on("message", deliver);
        subscriber.on("smessage", deliver);
        return Promise.resolve({
          ...shardedFirst(
            subscriber.ssubscribe && {
              subscribe: (channel) => subscriber.ssubscribe!(channel),
              unsubscribe: (channel) => subscriber.sunsubscribe!(channel),
            },
            {
              subscribe: (channel) => subscriber.subscribe(channel),
              unsubscribe: (channel) => subscriber.unsubscribe(channel),
            },
          ),
          close: () => Promise.resolve(subscriber.disconnect()),
        });
      }),
    }),
  };
}

// WAIT has no key, so a Cluster would send it to any node: send it to the
// master of the key's slot instead, over the connection that ran the script.
function ioredisClusterWait(
  client: IoredisClient,
): NonNullable<ScriptClient["wait"]> {
  return (numreplicas, timeout, key) => {
    const address = client.slots?.[keySlot(key)]?.[0];
    const node = client.nodes?.("master").find(({ options }) =>
      `${options.host}:${options.port}` === address
    );
    if (!node) {
      return Promise.reject(
        new Error(
          `Cannot send WAIT as the cluster knows no master for key '${key}' (slot ${
            keySlot(key)
          })`,
        ),
      );
    }
    return node.wait(numreplicas, timeout);
  };
}

/**
 * Adapts a node-redis 5 or 6 client.
 *
 * @param client A connected node-redis client.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { createClient } from "npm:redis";
 * import { fromNodeRedis, Lock } from "@deadbolt/deadbolt";
 *
 * const redis = fromNodeRedis(await createClient().connect());
 * await using lock = await Lock.acquire(redis, "report");
 * ```
 */
export function fromNodeRedis(client: NodeRedisClient): ScriptClient {
  const base: ScriptClient = {
    ordered: true,
    eval: (script, keys, args) =>
      client.eval(script, { keys, arguments: args }),
    evalsha: (sha1, keys, args) =>
      client.evalSha(sha1, { keys, arguments: args }),
  };
  if (typeof client.getSlotMaster === "function") {
    // A cluster may resend a redirected call after later ones.
    return { ...base, ordered: false, ...nodeRedisCluster(client) };
  }
  return {
    ...base,
    ...bindWait(client),
    ...(typeof client.duplicate === "function" && {
      subscribe: sharedSubscriber(async (deliver) => {
        const subscriber = client.duplicate!();
        await subscriber.connect();
        return {
          ...shardedFirst(
            subscriber.sSubscribe && {
              subscribe: (channel) =>
                subscriber.sSubscribe!(channel, () => deliver(channel)),
              unsubscribe: (channel) => subscriber.sUnsubscribe!(channel),
            },
            {
              subscribe: (channel) =>
                subscriber.subscribe(channel, () => deliver(channel)),
              unsubscribe: (channel) => subscriber.unsubscribe(channel),
            },
          ),
          close: () => (subscriber.close ?? subscriber.quit)!.call(subscriber),
        };
      }),
    }),
  };
}

// A node-redis cluster keeps its own pub/sub connections (one per shard for
// sharded channels), so it subscribes itself; WAIT goes to the master of the
// key's slot, over the connection the cluster sent the script on.
function nodeRedisCluster(
  cluster: NodeRedisClient,
): Pick<ScriptClient, "wait" | "subscribe"> {
  type Commands = (channel: string, listener: () => void) => Promise<unknown>;
  const bound = (command: Commands | undefined) => command?.bind(cluster);
  const [sSubscribe, sUnsubscribe, subscribe, unsubscribe] = [
    bound(cluster.sSubscribe),
    bound(cluster.sUnsubscribe),
    bound(cluster.subscribe),
    bound(cluster.unsubscribe),
  ];
  return {
    wait: async (numreplicas, timeout, key) => {
      const node = cluster.getSlotMaster!(keySlot(key));
      const connection = await cluster.nodeClient!(node as never) as {
        wait(numreplicas: number, timeout: number): Promise<unknown>;
      };
      return await connection.wait(numreplicas, timeout);
    },
    ...(subscribe && unsubscribe && {
      subscribe: sharedSubscriber((deliver) => {
        const listeners = new Map<string, () => void>();
        const listener = (channel: string) => {
          let each = listeners.get(channel);
          if (!each) listeners.set(channel, each = () => deliver(channel));
          return each;
        };
        const forget = (run: Commands) => (channel: string) => {
          const each = listener(channel);
          listeners.delete(channel);
          return run(channel, each);
        };
        return Promise.resolve({
          ...shardedFirst(
            sSubscribe && sUnsubscribe && {
              subscribe: (channel) => sSubscribe(channel, listener(channel)),
              unsubscribe: forget(sUnsubscribe),
            },
            {
              subscribe: (channel) => subscribe(channel, listener(channel)),
              unsubscribe: forget(unsubscribe),
            },
          ),
          close: () => Promise.resolve(),
        });
      }),
    }),
  };
}

/**
 * Adapts Bun's built-in `RedisClient` through `send`, which exists since
 * Bun 1.2.9.
 *
 * @param client A Bun `RedisClient`.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { RedisClient } from "bun";
 * import { fromBunRedis, Lock } from "@deadbolt/deadbolt";
 *
 * const redis = fromBunRedis(new RedisClient("redis://localhost:6379"));
 * await using lock = await Lock.acquire(redis, "report");
 * ```
 */
export function fromBunRedis(client: BunRedisClient): ScriptClient {
  return {
    ordered: true,
    eval: (script, keys, args) =>
      client.send("EVAL", [script, String(keys.length), ...keys, ...args]),
    evalsha: (sha1, keys, args) =>
      client.send("EVALSHA", [sha1, String(keys.length), ...keys, ...args]),
    wait: (numreplicas, timeout) =>
      client.send("WAIT", [String(numreplicas), String(timeout)]),
  };
}

/**
 * Adapts a Valkey GLIDE client through `customCommand`.
 *
 * @param client A connected `GlideClient`.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { GlideClient } from "npm:@valkey/valkey-glide";
 * import { fromGlide, Lock } from "@deadbolt/deadbolt";
 *
 * const glide = await GlideClient.createClient({ addresses: [{ host: "localhost", port: 6379 }] });
 * await using lock = await Lock.acquire(fromGlide(glide), "report");
 * ```
 */
export function fromGlide(client: GlideClient): ScriptClient {
  return {
    eval: (script, keys, args) =>
      client.customCommand([
        "EVAL",
        script,
        String(keys.length),
        ...keys,
        ...args,
      ]),
    evalsha: (sha1, keys, args) =>
      client.customCommand([
        "EVALSHA",
        sha1,
        String(keys.length),
        ...keys,
        ...args,
      ]),
    wait: (numreplicas, timeout) =>
      client.customCommand(["WAIT", String(numreplicas), String(timeout)]),
  };
}

/**
 * Adapts a `@db/redis` (Deno) client. Its `eval(script, keys, args)` already
 * has deadbolt's shape, so this only binds the methods; passing the client
 * itself works too.
 *
 * @param client A connected `@db/redis` client.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { connect } from "jsr:@db/redis";
 * import { fromDbRedis, Lock } from "@deadbolt/deadbolt";
 *
 * const redis = await connect({ hostname: "127.0.0.1", port: 6379 });
 * await using lock = await Lock.acquire(fromDbRedis(redis), "report");
 * ```
 */
export function fromDbRedis(client: ScriptClient): ScriptClient {
  return bindScriptClient(client);
}

/**
 * Adapts an `@upstash/redis` client. Its `eval(script, keys, args)` already
 * has deadbolt's shape, so this only binds the methods; passing the client
 * itself works too. deadbolt's scripts reply with integers only, so
 * Upstash's automatic JSON deserialization does not change them.
 *
 * @param client An `@upstash/redis` client.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { Redis } from "npm:@upstash/redis";
 * import { fromUpstash, Lock } from "@deadbolt/deadbolt";
 *
 * await using lock = await Lock.acquire(fromUpstash(Redis.fromEnv()), "report");
 * ```
 */
export function fromUpstash(client: ScriptClient): ScriptClient {
  return bindScriptClient(client);
}

function bindScriptClient(client: ScriptClient): ScriptClient {
  const adapted: ScriptClient = {
    eval: (script, keys, args) => client.eval(script, keys, args),
  };
  if (typeof client.evalsha === "function") {
    adapted.evalsha = (sha1, keys, args) => client.evalsha!(sha1, keys, args);
  }
  if (typeof client.subscribe === "function") {
    adapted.subscribe = (channel, listener) =>
      client.subscribe!(channel, listener);
  }
  if (client.ordered === true) adapted.ordered = true;
  if (typeof client.wait === "function") {
    adapted.wait = (numreplicas, timeout, key) =>
      client.wait!(numreplicas, timeout, key);
  }
  return adapted;
}

// Binds an optional `wait` method; absent when the client has none (Upstash).
// ioredis sends every argument it is given, so these clients get two.
function bindWait(
  client: { wait?(numreplicas: number, timeout: number): Promise<unknown> },
): Pick<ScriptClient, "wait"> {
  if (typeof client.wait !== "function") return {};
  return { wait: (numreplicas, timeout) => client.wait!(numreplicas, timeout) };
}

const adapted = new WeakMap<object, ScriptClient>();

/**
 * Detects the client's shape and returns a {@linkcode ScriptClient} for it,
 * cached per client object.
 *
 * @throws {TypeError} when the client has no supported shape.
 */
export function toScriptClient(client: RedisClient): ScriptClient {
  if (
    (typeof client !== "object" && typeof client !== "function") ||
    client === null
  ) {
    throw new TypeError(
      `Cannot use the Redis client as it must be one of ${SUPPORTED}: current value is ${
        describe(client)
      }`,
    );
  }
  let script = adapted.get(client);
  if (!script) {
    script = adapt(client);
    adapted.set(client, script);
  }
  return script;
}

function adapt(client: RedisClient): ScriptClient {
  const has = (method: string) =>
    typeof (client as unknown as Record<string, unknown>)[method] ===
      "function";
  if (has("defineCommand") && has("evalsha")) {
    return fromIoredis(client as IoredisClient);
  }
  if (has("evalSha")) return fromNodeRedis(client as NodeRedisClient);
  if (has("invokeScript") && has("customCommand")) {
    return fromGlide(client as GlideClient);
  }
  if (has("send") && has("duplicate")) {
    return fromBunRedis(client as BunRedisClient);
  }
  if (has("eval")) return bindScriptClient(client as ScriptClient);
  throw new TypeError(
    `Cannot use the Redis client as it must be one of ${SUPPORTED}: current value is ${
      describe(client)
    }`,
  );
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") {
    return `an object (${value.constructor?.name ?? "no prototype"})`;
  }
  if (typeof value === "function") {
    return `a function (${value.name || "anonymous"})`;
  }
  return `${typeof value} ${String(value)}`;
}
