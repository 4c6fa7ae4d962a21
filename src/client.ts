import { type BunRedisClient, fromBunRedis } from "./clients/bun.ts";
import { fromGlide, type GlideClient } from "./clients/glide.ts";
import { fromIoredis, type IoredisClient } from "./clients/ioredis.ts";
import { fromNodeRedis, type NodeRedisClient } from "./clients/node_redis.ts";
import { clientKind, withKind } from "./_client_kind.ts";

/**
 * What deadbolt needs from a Redis client: run a Lua script with keys and
 * arguments. `@db/redis` and `@upstash/redis` clients have exactly this shape
 * and are used as they are; the other clients are adapted by shape (or by the
 * explicit `from*` functions).
 *
 * deadbolt calls nothing else on such an object, whatever other methods it
 * has: a client's own `subscribe` or `wait` mean what that client says
 * (`@db/redis`'s `subscribe` turns its own connection into a subscriber),
 * so deadbolt's optional extras live under one property, `deadbolt`, that no
 * client library uses (see {@linkcode ClientHooks}).
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
  /** deadbolt's optional extras: wake-ups, `WAIT`, call ordering. */
  readonly deadbolt?: ClientHooks;
}

/**
 * Optional extras a {@linkcode ScriptClient} may offer deadbolt, under its
 * `deadbolt` property. The adapters fill them in for the clients they know;
 * a client of your own may offer any of them.
 */
export interface ClientHooks {
  /**
   * `true` when calls made one after another run in Redis in that order
   * (one connection, pipelined), as with ioredis, node-redis and Bun's
   * client. A release in this process may then pass the lock to a waiter of
   * the same process before Redis has answered: whatever the waiter sends
   * next runs after the handover; and a lease takes a renewal's answer to
   * mean that every renewal or `extend()` sent before it ran before it.
   * Leave it unset for pooled or HTTP clients: set wrongly, `validUntil`
   * can outlast the key.
   */
  readonly ordered?: boolean;
  /**
   * `true` when the client reaches a Redis Cluster: a script may then only
   * touch keys of one hash slot, so a `MultiLock` takes names of different
   * slots one slot at a time, in a global order.
   */
  readonly cluster?: boolean;
  /**
   * Runs `WAIT numreplicas timeout` on the connection that ran the scripts
   * on `key` (on a cluster, the connection to the master of `key`'s slot);
   * needed only for the `waitReplicas` option.
   */
  wait?(numreplicas: number, timeout: number, key: string): Promise<unknown>;
  /**
   * Calls `listener` on every pub/sub message to `channel` (deadbolt's
   * release script publishes with `SPUBLISH`, or `PUBLISH` where the server
   * has no `SPUBLISH` or a waiter is known and nobody got the sharded
   * message) and resolves with a function that stops it. That function
   * resolves once the subscription, and any connection opened for it, is
   * gone: deadbolt awaits it (3 s at most) before the call that ended the
   * wait resolves. When `signal` aborts before the subscription is set up
   * (the wait ended first), undo what was started and reject. When
   * present, a waiter is woken as soon as the holder releases, instead of
   * at its next backoff attempt. Pass each message's payload to `listener`:
   * a release names the seat of the process first in line, whose turn it
   * is, so that only its waiters wake (a listener called without it wakes
   * every waiter). If it throws or rejects, deadbolt reports that on
   * `diagnostics` (a `SubscriberErrorEvent`) and waiters keep their backoff.
   */
  subscribe?(
    channel: string,
    listener: (message?: string) => void,
    signal: AbortSignal,
  ): Promise<() => Promise<void>>;
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
 * Binds what deadbolt uses of an object with the {@linkcode ScriptClient}
 * shape: `eval`, `evalsha` and the `deadbolt` hooks, and nothing else.
 */
export function bindScriptClient(client: ScriptClient): ScriptClient {
  const adapted: { -readonly [K in keyof ScriptClient]: ScriptClient[K] } = {
    eval: (script, keys, args) => client.eval(script, keys, args),
  };
  if (typeof client.evalsha === "function") {
    adapted.evalsha = (sha1, keys, args) => client.evalsha!(sha1, keys, args);
  }
  if (client.deadbolt !== undefined) adapted.deadbolt = client.deadbolt;
  // An adapter's output passed in again keeps its kind.
  return withKind(clientKind(client), adapted);
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

// Each client is told apart by methods only it has; a client deadbolt does
// not recognise is used through `eval`/`evalsha` alone.
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

/**
 * Validates `clients` (a `Redlock`'s): a non-empty array of distinct
 * supported clients, adapted.
 */
export function toScriptClients(
  action: string,
  clients: unknown,
): ScriptClient[] {
  if (!Array.isArray(clients)) {
    throw new TypeError(
      `${action} as 'clients' must be an array of Redis clients, one per independent master: current value is ${
        clients === null ? "null" : typeof clients
      }`,
    );
  }
  if (clients.length === 0) {
    throw new RangeError(
      `${action} as 'clients' must hold at least one Redis client: current value is an empty array`,
    );
  }
  const seen = new Map<ScriptClient, number>();
  const adapted: ScriptClient[] = [];
  for (let i = 0; i < clients.length; i++) {
    let client: ScriptClient;
    try {
      client = toScriptClient(clients[i]);
    } catch (error) {
      throw new TypeError(
        `${action} as 'clients[${i}]' is not a supported Redis client: ${
          (error as Error).message
        }`,
        { cause: error },
      );
    }
    const twin = seen.get(client);
    if (twin !== undefined) {
      throw new RangeError(
        `${action} as 'clients' must hold distinct clients, one per master: clients[${twin}] and clients[${i}] are the same object`,
      );
    }
    seen.set(client, i);
    adapted.push(client);
  }
  return adapted;
}
