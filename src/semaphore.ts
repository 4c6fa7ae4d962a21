import { type RedisClient, toScriptClient } from "./client.ts";
import { lockKeys } from "./keys.ts";
import { Lifecycle } from "./_lifecycle.ts";
import { acquireNew, tryAcquireNew } from "./_entry.ts";
import { ScriptedStore } from "./_scripted_store.ts";
import { permitScripts } from "./_permit_scripts.ts";
import { checkName } from "./_validate.ts";
import {
  ACQUIRE_KEYS,
  type AcquireOptions,
  SEMAPHORE_KEYS,
  type SemaphoreOptions,
  semaphoreSettings,
} from "./options.ts";

const STATIC_ACQUIRE_KEYS = [...ACQUIRE_KEYS, ...SEMAPHORE_KEYS];
const STATIC_TRY_KEYS = [...SEMAPHORE_KEYS, "signal"];

/**
 * A permit of a distributed semaphore: at most `limit` permits of one name
 * are held at once, across processes and machines. A permit has a `Lock`'s
 * surface and promises: a lease of its own that renews itself while held,
 * a `signal` that aborts with {@linkcode LockLostError} before the lease can
 * have run out, `await using`, opt-in fencing. A holder that dies frees its
 * permit when its lease ends, never earlier, and never another holder's.
 *
 * Permits live in one sorted set per name (`<prefix>semaphore:{<name>}`),
 * each token scored by the end of its lease on Redis' clock; on a Redis
 * Cluster all of a semaphore's keys share one slot.
 *
 * @example At most 5 calls to a rate-limited API at once, across workers
 * ```ts
 * import { type RedisClient, Semaphore } from "@deadbolt/deadbolt";
 *
 * async function callApi(redis: RedisClient, url: string): Promise<Response> {
 *   await using permit = await Semaphore.acquire(redis, "partner-api", { limit: 5 });
 *   return await fetch(url, { signal: permit.signal });
 * }
 * ```
 */
export class Semaphore implements AsyncDisposable {
  /** The semaphore's name, as given. */
  readonly name: string;
  /** The Redis key of its permits (a sorted set): `<prefix>semaphore:{<name>}`. */
  readonly key: string;
  /** How many permits this handle lets be held at once, itself included. */
  readonly limit: number;

  #life: Lifecycle;

  /**
   * Creates a permit handle; nothing is sent to Redis until `acquire()`.
   *
   * @param client Your Redis client, as it is (see {@linkcode RedisClient}).
   * @param name The semaphore's name: 1 to 1024 UTF-8 bytes, any characters.
   * @param options `limit` (required), lease, fencing, key prefix and
   * default wait options.
   * @throws {TypeError} when the client has no supported shape, the name is
   * not a non-empty well-formed string, `limit` is missing, or an option has
   * the wrong type or is unknown.
   * @throws {RangeError} when a number is out of range.
   */
  constructor(client: RedisClient, name: string, options: SemaphoreOptions) {
    this.name = checkName("Cannot open a semaphore", "name", name);
    const action = `Cannot open semaphore ${JSON.stringify(name)}`;
    const settings = semaphoreSettings(
      action,
      options ?? ({} as SemaphoreOptions),
    );
    const keys = lockKeys(`${settings.prefix}semaphore:`, name);
    this.key = keys.lock;
    this.limit = settings.limit;
    this.#life = new Lifecycle(
      name,
      settings,
      new ScriptedStore(
        toScriptClient(client),
        name,
        permitScripts(keys, settings),
        settings,
      ),
      "semaphore",
    );
  }

  /**
   * Acquires a permit of the semaphore `name`, waiting up to `timeout` ms.
   *
   * @param client Your Redis client, as it is.
   * @param name The semaphore's name.
   * @param options `limit`, and lock and wait options.
   * @returns The held permit; dispose or release it.
   * @throws {LockTimeoutError} when `limit` permits stayed held for the whole
   * wait (`remainingTtl`: until the first of their leases ends).
   * @throws {LockKeyError} when the key holds a value deadbolt did not write.
   * @throws {TypeError} on bad input, before any Redis command.
   * @throws {RangeError} on an out-of-range option, before any Redis command.
   */
  static acquire(
    client: RedisClient,
    name: string,
    options: SemaphoreOptions & AcquireOptions,
  ): Promise<Semaphore> {
    return acquireNew(
      Semaphore,
      client,
      name,
      options ?? {},
      STATIC_ACQUIRE_KEYS,
    );
  }

  /**
   * Makes one attempt to acquire a permit of the semaphore `name`.
   *
   * @param client Your Redis client, as it is.
   * @param name The semaphore's name.
   * @param options `limit`, lock options, and a `signal` that cancels the attempt.
   * @returns The held permit, or `null` when `limit` permits are held.
   * @throws {LockKeyError} when the key holds a value deadbolt did not write.
   */
  static tryAcquire(
    client: RedisClient,
    name: string,
    options: SemaphoreOptions & Pick<AcquireOptions, "signal">,
  ): Promise<Semaphore | null> {
    return tryAcquireNew(
      Semaphore,
      client,
      name,
      options ?? {},
      STATIC_TRY_KEYS,
    );
  }

  /** The token of this handle's permit, from `crypto.randomUUID()`; new for each acquisition. */
  get token(): string {
    return this.#life.token;
  }

  /** Whether this handle holds a permit now: acquired, not released, not lost, and its validity not run out. */
  get held(): boolean {
    return this.#life.held;
  }

  /**
   * Aborts with a {@linkcode LockLostError} when the permit can no longer be
   * guaranteed, before `validUntil` passes. It does not abort on `release()`.
   */
  get signal(): AbortSignal {
    return this.#life.signal;
  }

  /**
   * With `fencing: true`, the permit's fence: greater than every fence
   * issued before it for this name; else `undefined`.
   */
  get fence(): number | undefined {
    return this.#life.fence;
  }

  /**
   * The monotonic time (`performance.now()` ms) until which the permit is
   * guaranteed (as for `Lock`); `0` before acquiring.
   */
  get validUntil(): number {
    return this.#life.validUntil;
  }

  /**
   * Waits up to `timeout` ms for a permit.
   *
   * @param options Wait options; defaults come from the constructor.
   * @returns When a permit is held, with validity left.
   * @throws {LockTimeoutError} when `limit` permits stayed held for the whole wait.
   * @throws {Error} when this handle already holds a permit or is acquiring one.
   */
  acquire(options: AcquireOptions = {}): Promise<void> {
    return this.#life.acquire(options);
  }

  /**
   * Makes one attempt to acquire a permit.
   *
   * @param options A `signal` that cancels the attempt.
   * @returns `true` when a permit is now held, `false` when `limit` are held.
   */
  tryAcquire(options: Pick<AcquireOptions, "signal"> = {}): Promise<boolean> {
    return this.#life.tryAcquire(options);
  }

  /**
   * Renews the permit's lease to `ttl` ms from now, if its lease has not
   * ended. It never grants a permit again.
   *
   * @param ttl The new lease length in ms; the semaphore's `ttl` by default.
   * @returns `true` when renewed; `false` when the permit was lost (then
   * `signal` has aborted) or released meanwhile.
   * @throws {Error} when this handle has not acquired a permit or has released it.
   */
  extend(ttl?: number): Promise<boolean> {
    return this.#life.extend(ttl);
  }

  /**
   * Stops renewal and frees the permit, waking a waiter. Calling it again is
   * a no-op; calling it while `acquire()` waits cancels that wait.
   *
   * @returns `true` when this call freed this handle's running permit;
   * `false` when its lease had ended or there was nothing to release.
   */
  release(): Promise<boolean> {
    return this.#life.release();
  }

  /**
   * Releases the permit if this handle holds it, for `await using`.
   *
   * @returns When released; rejects with the Redis error if release failed.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#life.release();
  }
}
