import { type RedisClient, toScriptClients } from "./client.ts";
import { lockKeys } from "./keys.ts";
import { Lifecycle } from "./_lifecycle.ts";
import { LockHandle } from "./handle.ts";
import { acquireNew, tryAcquireNew } from "./_entry.ts";
import { QuorumStore } from "./_quorum_store.ts";
import { checkName, checkOptionKeys } from "./_validate.ts";
import {
  ACQUIRE_KEYS,
  type AcquireOptions,
  LOCK_KEYS,
  type RedlockOptions,
  redlockSettings,
} from "./options.ts";

const STATIC_ACQUIRE_KEYS = [...ACQUIRE_KEYS, ...LOCK_KEYS];
const STATIC_TRY_KEYS = [...LOCK_KEYS, "signal"];

/**
 * A lock held on a quorum of independent Redis masters, after the Redlock
 * algorithm described in the Redis documentation: one attempt sends the
 * acquire script to every server at once and succeeds when a majority
 * (⌊N/2⌋ + 1) granted it with validity left; otherwise it deletes what it
 * got, by token, on every server and retries after a jittered backoff. It
 * keeps working while a minority of the servers is down or paused, and it
 * has the `Lock` experience: `await using`, a lease renewed (on a quorum)
 * while held, and a `signal` that aborts with {@linkcode LockLostError}
 * before `validUntil` when a quorum can no longer be renewed.
 *
 * Guarantee: no two handles hold one name at once, as long as the servers
 * keep what they acknowledged, their clocks run at about the same rate
 * (drift under 1% of `ttl`), and no holder pauses past its validity. Caveat:
 * a server restarted without persistence forgets the lock, so a second
 * client can then make a quorum with it; keep a restarted server out for at
 * least the longest `ttl` in use (delayed restart), or run it with
 * `appendonly yes` and `appendfsync always`. A `Redlock` issues no fencing
 * tokens (see `fencing`).
 *
 * A round waits for a silent server at most `commandTimeout`, and only when
 * its answer decides the outcome. Set `commandTimeout` well below `ttl`: a
 * client that queues commands while it reconnects (ioredis by default) is
 * silent, not failing, when its server is down.
 *
 * @example Scoped, on five independent masters
 * ```ts
 * import { Redis } from "npm:ioredis@6";
 * import { Redlock } from "@deadbolt/deadbolt";
 *
 * async function nightlyReport(): Promise<void> {
 *   const masters = [6379, 6380, 6381, 6382, 6383].map((port) => new Redis({ port }));
 *   {
 *     await using lock = await Redlock.acquire(masters, "nightly-report", { ttl: 30_000 });
 *     await fetch("https://example.com/report", { method: "POST", signal: lock.signal });
 *   } // released on every server here
 *   for (const master of masters) master.disconnect();
 * }
 * ```
 */
export class Redlock extends LockHandle {
  /** The lock's name, as given. */
  readonly name: string;
  /** The Redis key that holds the owner's token on every server: `<prefix>{<name>}`. */
  readonly key: string;
  /** How many servers must grant or renew the lock: ⌊servers / 2⌋ + 1. */
  readonly quorum: number;

  /**
   * Creates a lock handle; nothing is sent until `acquire()`.
   *
   * @param clients One client per independent Redis master (an odd number
   * of at least 3 is the point; 1 works), each as it is. Different objects
   * must reach different servers: deadbolt cannot tell two connections to
   * one server apart.
   * @param name The lock's name: 1 to 1024 UTF-8 bytes, any characters.
   * @param options Lease, key prefix and default wait options.
   * @throws {TypeError} when `clients` is not an array of supported clients,
   * the name is not a non-empty well-formed string, an option has the wrong
   * type or is unknown, or `fencing` is `true`.
   * @throws {RangeError} when `clients` is empty or holds one client twice,
   * or a number is out of range.
   */
  constructor(
    clients: readonly RedisClient[],
    name: string,
    options: RedlockOptions = {},
  ) {
    checkOptionKeys("Cannot lock", options, LOCK_KEYS);
    checkName("Cannot lock", "name", name);
    const action = `Cannot lock ${JSON.stringify(name)}`;
    const settings = redlockSettings(action, options);
    const key = lockKeys(settings.prefix, name).lock;
    const store = new QuorumStore(
      toScriptClients(action, clients),
      name,
      key,
      settings,
    );
    super(new Lifecycle(name, settings, store, "redlock"));
    this.name = name;
    this.key = key;
    this.quorum = store.quorum;
  }

  /**
   * Acquires the lock `name` on a quorum of `clients`, waiting up to
   * `timeout` ms for it.
   *
   * @param clients One client per independent Redis master.
   * @param name The lock's name.
   * @param options Lock and wait options.
   * @returns The held lock; dispose or release it.
   * @throws {LockTimeoutError} when other owners kept a quorum out of reach
   * for the whole wait.
   * @throws {LockQuorumError} at once, when so many servers failed that no
   * quorum was possible.
   * @throws {TypeError} on bad input, before any Redis command.
   * @throws {RangeError} on an out-of-range input, before any Redis command.
   *
   * @example Usage
   * ```ts
   * import { Redlock, type RedisClient } from "@deadbolt/deadbolt";
   *
   * async function report(a: RedisClient, b: RedisClient, c: RedisClient): Promise<void> {
   *   await using lock = await Redlock.acquire([a, b, c], "nightly-report", { timeout: 5_000 });
   * }
   * ```
   */
  static acquire(
    clients: readonly RedisClient[],
    name: string,
    options: RedlockOptions & AcquireOptions = {},
  ): Promise<Redlock> {
    return acquireNew(Redlock, clients, name, options, STATIC_ACQUIRE_KEYS);
  }

  /**
   * Makes one attempt to acquire the lock `name` on a quorum of `clients`.
   *
   * @param clients One client per independent Redis master.
   * @param name The lock's name.
   * @param options Lock options, and a `signal` that cancels the attempt.
   * @returns The held lock, or `null` when other owners keep a quorum out of
   * reach, so `await using lock = await Redlock.tryAcquire(…)` works either way.
   * @throws {LockQuorumError} when so many servers failed that no quorum was possible.
   *
   * @example Usage
   * ```ts
   * import { Redlock, type RedisClient } from "@deadbolt/deadbolt";
   *
   * async function report(a: RedisClient, b: RedisClient, c: RedisClient): Promise<void> {
   *   await using lock = await Redlock.tryAcquire([a, b, c], "nightly-report");
   *   if (!lock) console.log("someone else is on it");
   * }
   * ```
   */
  static tryAcquire(
    clients: readonly RedisClient[],
    name: string,
    options: RedlockOptions & Pick<AcquireOptions, "signal"> = {},
  ): Promise<Redlock | null> {
    return tryAcquireNew(Redlock, clients, name, options, STATIC_TRY_KEYS);
  }
}
