/**
 * A distributed lock for Redis and Valkey that works with the client you
 * already have (`@db/redis`, `@upstash/redis`, ioredis, node-redis, Bun's
 * `RedisClient`, Valkey GLIDE) on Deno, Bun, Node and edge runtimes.
 *
 * - `await using` releases the lock on every exit path.
 * - The lease renews itself while held; if ownership can no longer be
 *   guaranteed, `lock.signal` aborts with a {@linkcode LockLostError} before
 *   the lease can have run out. Loss is never silent.
 * - Waiting uses full-jitter exponential backoff bounded by the holder's
 *   remaining lease and by `timeout`, which is time, not attempts.
 * - Opt-in fencing tokens, strictly increasing per lock name.
 * - {@linkcode Redlock}: the same handle over several independent Redis
 *   masters, held while a majority of them agree.
 * - {@linkcode Semaphore}: at most `limit` holders of a name at once, each
 *   permit a handle with its own lease.
 * - {@linkcode ReadWriteLock}: many readers or one writer, writers not
 *   starved, each hold a handle with its own lease.
 *
 * ```ts
 * import { Redis } from "npm:ioredis@6";
 * import { Lock } from "@deadbolt/deadbolt";
 *
 * async function buildReport({ signal }: { signal: AbortSignal }): Promise<void> {
 *   // long work that stops when `signal` aborts
 * }
 *
 * async function nightly(): Promise<void> {
 *   const redis = new Redis();
 *   {
 *     await using lock = await Lock.acquire(redis, "nightly-report", { timeout: 10_000 });
 *     await buildReport({ signal: lock.signal }); // aborts if ownership is lost
 *   } // released here
 *   redis.disconnect();
 * }
 * ```
 *
 * @module
 */

export { Lock } from "./src/lock.ts";
export { LockHandle } from "./src/handle.ts";
export type { LockKeys } from "./src/keys.ts";
export type {
  AcquireOptions,
  LockOptions,
  MultiLockOptions,
  ReadWriteLockOptions,
  RedlockOptions,
  SemaphoreOptions,
} from "./src/options.ts";
export { Redlock } from "./src/redlock.ts";
export { Semaphore } from "./src/semaphore.ts";
export { ReadWriteHold, ReadWriteLock } from "./src/read_write_lock.ts";
export { MultiLock } from "./src/multi_lock.ts";
export {
  LockKeyError,
  LockLostError,
  LockQuorumError,
  LockReplicationError,
  LockTimeoutError,
} from "./src/errors.ts";
export type { ClientHooks, RedisClient, ScriptClient } from "./src/client.ts";
export { type BunRedisClient, fromBunRedis } from "./src/clients/bun.ts";
export {
  type DbRedisClient,
  type DbRedisOptions,
  type DbRedisSubscriberClient,
  type DbRedisSubscription,
  fromDbRedis,
} from "./src/clients/db_redis.ts";
export { fromGlide, type GlideClient } from "./src/clients/glide.ts";
export {
  fromIoredis,
  type IoredisClient,
  type IoredisNode,
  type IoredisSubscriber,
} from "./src/clients/ioredis.ts";
export {
  fromNodeRedis,
  type NodeRedisClient,
  type NodeRedisEvalOptions,
  type NodeRedisSubscriber,
} from "./src/clients/node_redis.ts";
export { fromUpstash, type UpstashClient } from "./src/clients/upstash.ts";
export { diagnostics, SubscriberErrorEvent } from "./src/diagnostics.ts";
