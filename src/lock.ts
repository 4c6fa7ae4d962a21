import { type RedisClient, toScriptClient } from "./client.ts";
import { type LockKeys, lockKeys } from "./keys.ts";
import { Lifecycle } from "./_lifecycle.ts";
import { LockHandle } from "./handle.ts";
import { acquireNew, tryAcquireNew } from "./_entry.ts";
import { RedisStore } from "./_redis_store.ts";
import {
  checkedAs,
  checkName,
  checkOptionKeys,
  checkPrefix,
} from "./_validate.ts";
import {
  ACQUIRE_KEYS,
  type AcquireOptions,
  LOCK_KEYS,
  type LockOptions,
  lockSettings,
} from "./options.ts";

// The option keys of the static entry points, built once (they run per lock).
const STATIC_ACQUIRE_KEYS = [...ACQUIRE_KEYS, ...LOCK_KEYS];
const STATIC_TRY_KEYS = [...LOCK_KEYS, "signal"];

/**
 * A distributed lock on one Redis key, with a lease that renews itself while
 * held, an `AbortSignal` that tells when ownership is lost, and opt-in
 * fencing tokens. It implements `AsyncDisposable`, so `await using` releases
 * it on every exit path.
 *
 * @example Scoped
 * ```ts
 * import { Redis } from "npm:ioredis@6";
 * import { Lock } from "@deadbolt/deadbolt";
 *
 * async function nightlyReport(redis: Redis): Promise<void> {
 *   await using lock = await Lock.acquire(redis, "nightly-report", { ttl: 30_000 });
 *   await fetch("https://example.com/report", { method: "POST", signal: lock.signal });
 * } // released here
 * ```
 *
 * @example Managed by hand
 * ```ts
 * import { Redis } from "npm:ioredis@6";
 * import { Lock } from "@deadbolt/deadbolt";
 *
 * async function criticalSection(redis: Redis): Promise<void> {
 *   const lock = new Lock(redis, "my_lock", { ttl: 60_000 });
 *   await lock.acquire();
 *   try {
 *     // critical section
 *   } finally {
 *     await lock.release();
 *   }
 * }
 * ```
 */
export class Lock extends LockHandle {
  /** The lock's name, as given. */
  readonly name: string;
  /** The Redis key that holds the owner's token: `<prefix>{<name>}`. */
  readonly key: string;

  #life: Lifecycle;

  /**
   * Creates a lock handle; nothing is sent to Redis until `acquire()`.
   *
   * @param client Your Redis client, as it is (see {@linkcode RedisClient}).
   * @param name The lock's name: 1 to 1024 UTF-8 bytes, any characters.
   * @param options Lease, fencing, key prefix and default wait options.
   * @throws {TypeError} when the client has no supported shape, the name is
   * not a non-empty well-formed string, or an option has the wrong type or is
   * unknown.
   * @throws {RangeError} when a number is out of range.
   */
  constructor(client: RedisClient, name: string, options: LockOptions = {}) {
    checkOptionKeys("Cannot lock", options, LOCK_KEYS);
    checkName("Cannot lock", "name", name);
    const settings = checkedAs(
      () => lockAction(name),
      (action) => lockSettings(action, options),
    );
    const scriptClient = toScriptClient(client);
    if (settings.waitReplicas > 0 && !scriptClient.deadbolt?.wait) {
      throw new TypeError(
        `${
          lockAction(name)
        } as 'waitReplicas' needs a client that can send WAIT (pass @db/redis through fromDbRedis): current value is ${settings.waitReplicas}`,
      );
    }
    const keys = lockKeys(settings.prefix, name);
    const life = new Lifecycle(
      name,
      settings,
      new RedisStore(scriptClient, name, keys, settings),
    );
    super(life);
    this.#life = life;
    this.name = name;
    this.key = keys.lock;
  }

  /**
   * Acquires the lock `name`, waiting up to `timeout` ms for it.
   *
   * @param client Your Redis client, as it is.
   * @param name The lock's name.
   * @param options Lock and wait options.
   * @returns The held lock; dispose or release it.
   * @throws {LockTimeoutError} when another owner held it for the whole wait.
   * @throws {LockKeyError} when the key holds a value deadbolt did not write.
   * @throws {TypeError} on bad input, before any Redis command.
   * @throws {RangeError} on an out-of-range option, before any Redis command.
   *
   * @example Usage
   * ```ts
   * import { Redis } from "npm:ioredis@6";
   * import { Lock } from "@deadbolt/deadbolt";
   *
   * async function report(redis: Redis): Promise<void> {
   *   await using lock = await Lock.acquire(redis, "nightly-report", { timeout: 5_000 });
   * }
   * ```
   */
  static acquire(
    client: RedisClient,
    name: string,
    options: LockOptions & AcquireOptions = {},
  ): Promise<Lock> {
    return acquireNew(Lock, client, name, options, STATIC_ACQUIRE_KEYS);
  }

  /**
   * Makes one attempt to acquire the lock `name`.
   *
   * @param client Your Redis client, as it is.
   * @param name The lock's name.
   * @param options Lock options, and a `signal` that cancels the attempt.
   * @returns The held lock, or `null` when another owner holds it, so
   * `await using lock = await Lock.tryAcquire(…)` works either way.
   * @throws {LockKeyError} when the key holds a value deadbolt did not write.
   *
   * @example Usage
   * ```ts
   * import { Redis } from "npm:ioredis@6";
   * import { Lock } from "@deadbolt/deadbolt";
   *
   * async function report(redis: Redis): Promise<void> {
   *   await using lock = await Lock.tryAcquire(redis, "nightly-report");
   *   if (!lock) console.log("someone else is on it");
   * }
   * ```
   */
  static tryAcquire(
    client: RedisClient,
    name: string,
    options: LockOptions & Pick<AcquireOptions, "signal"> = {},
  ): Promise<Lock | null> {
    return tryAcquireNew(Lock, client, name, options, STATIC_TRY_KEYS);
  }

  /**
   * Takes over a lock that another handle acquired, given its name and
   * token: a scheduler locks a job and passes the token on; the worker that
   * does the job adopts the lock and from then on renews it, watches it and
   * releases it, with the same promises as an acquired lock. The lease is
   * renewed to `ttl` at once, and the fence (with `fencing: true`) is the one
   * issued to that token. The handle that acquired it lets it go with
   * {@linkcode Lock.detach}.
   *
   * @param client Your Redis client, as it is.
   * @param name The lock's name.
   * @param token The token of the hold to take over (see {@linkcode Lock.token}).
   * @param options Lock options, and a `signal` that cancels the call.
   * @returns The held lock, or `null` when the key does not hold `token`
   * (released, expired, or taken by another owner since).
   * @throws {TypeError} on bad input, before any Redis command.
   *
   * @example A worker takes over the lock its scheduler acquired
   * ```ts
   * import { Lock, type RedisClient } from "@deadbolt/deadbolt";
   *
   * async function work(redis: RedisClient, job: { id: string; token: string }): Promise<void> {
   *   await using lock = await Lock.adopt(redis, `job:${job.id}`, job.token);
   *   if (!lock) return; // the scheduler's hold has ended meanwhile
   *   // work, with lock.signal
   * }
   * ```
   */
  static async adopt(
    client: RedisClient,
    name: string,
    token: string,
    options: LockOptions & Pick<AcquireOptions, "signal"> = {},
  ): Promise<Lock | null> {
    checkOptionKeys("Cannot lock", options, STATIC_TRY_KEYS);
    const { signal, ...lockOptions } = options;
    const lock = new Lock(client, name, lockOptions);
    return await lock.adopt(token, { signal }) ? lock : null;
  }

  /**
   * The Redis keys that the lock `name` uses under `prefix`, for looking at
   * them from elsewhere (a dashboard, `redis-cli`); deadbolt alone writes them.
   *
   * @param name The lock's name.
   * @param options The key prefix, `"deadbolt:"` by default.
   * @returns The lock key (the holder's token, with the lease as its
   * expiry), the fence counter, the release channel, and the line of waiting
   * processes with when their places lapse.
   * @throws {TypeError} when the name or prefix is not valid.
   */
  static keys(
    name: string,
    options: Pick<LockOptions, "prefix"> = {},
  ): LockKeys {
    checkOptionKeys("Cannot lock", options, ["prefix"]);
    checkName("Cannot lock", "name", name);
    return lockKeys(
      checkPrefix("Cannot lock", options.prefix ?? "deadbolt:"),
      name,
    );
  }

  /**
   * Takes over the hold of `token`, as {@linkcode Lock.adopt} does.
   *
   * @param token The token of the hold to take over.
   * @param options A `signal` that cancels the call.
   * @returns `true` when the lock is now held by this handle; `false` when
   * the key does not hold `token`.
   * @throws {Error} when this handle already holds the lock or is acquiring it.
   */
  adopt(
    token: string,
    options: Pick<AcquireOptions, "signal"> = {},
  ): Promise<boolean> {
    return this.#life.adopt(token, options);
  }

  /**
   * Lets the lock go without releasing it, so that another handle (in
   * another process, most likely) can take it over with
   * {@linkcode Lock.adopt}: renewal stops, `held` turns `false`, `signal`
   * does not abort, and the key stays as it is until the adopter renews it
   * or its lease runs out (if the lock was handed to this handle within
   * this process, the handover's script, which writes this token, goes out
   * first).
   *
   * @returns The token to pass to the adopter.
   * @throws {Error} when this handle does not hold the lock.
   *
   * @example A scheduler passes a job's lock to a worker
   * ```ts
   * import { Lock, type RedisClient } from "@deadbolt/deadbolt";
   *
   * async function schedule(redis: RedisClient, send: (job: object) => Promise<void>): Promise<void> {
   *   const lock = await Lock.acquire(redis, "job:42", { ttl: 60_000 });
   *   await send({ id: "42", token: lock.detach() });
   * }
   * ```
   */
  detach(): string {
    return this.#life.detach();
  }
}

// The action in the messages of a lock `name`'s checks.
const lockAction = (name: string): string =>
  `Cannot lock ${JSON.stringify(name)}`;
