import { type RedisClient, toScriptClient } from "./client.ts";
import { lockKeys } from "./keys.ts";
import { Lifecycle } from "./_lifecycle.ts";
import { LockHandle } from "./handle.ts";
import { acquireNew, tryAcquireNew } from "./_entry.ts";
import { ScriptedStore } from "./_scripted_store.ts";
import { permitScripts } from "./_permit_scripts.ts";
import { checkedAs, checkName } from "./_validate.ts";
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
export class Semaphore extends LockHandle {
  /** The semaphore's name, as given. */
  readonly name: string;
  /** The Redis key of its permits (a sorted set): `<prefix>semaphore:{<name>}`. */
  readonly key: string;
  /** How many permits this handle lets be held at once, itself included. */
  readonly limit: number;

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
    checkName("Cannot open a semaphore", "name", name);
    const settings = checkedAs(
      () => `Cannot open semaphore ${JSON.stringify(name)}`,
      (action) =>
        semaphoreSettings(action, options ?? ({} as SemaphoreOptions)),
    );
    const keys = lockKeys(`${settings.prefix}semaphore:`, name);
    super(
      new Lifecycle(
        name,
        settings,
        new ScriptedStore(
          toScriptClient(client),
          name,
          permitScripts(keys, settings),
          settings,
        ),
        "semaphore",
      ),
    );
    this.name = name;
    this.key = keys.lock;
    this.limit = settings.limit;
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
}
