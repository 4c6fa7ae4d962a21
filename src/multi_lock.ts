import { type RedisClient, toScriptClient } from "./client.ts";
import { lockKeys } from "./keys.ts";
import { Lifecycle } from "./_lifecycle.ts";
import { LockHandle } from "./handle.ts";
import { acquireNew, tryAcquireNew } from "./_entry.ts";
import { MultiStore } from "./_multi_store.ts";
import { checkName } from "./_validate.ts";
import {
  ACQUIRE_KEYS,
  type AcquireOptions,
  MAX_NAMES,
  MULTI_KEYS,
  type MultiLockOptions,
  multiLockSettings,
} from "./options.ts";

const STATIC_ACQUIRE_KEYS = [...ACQUIRE_KEYS, ...MULTI_KEYS];
const STATIC_TRY_KEYS = [...MULTI_KEYS, "signal"];

/**
 * Several locks taken together: every name or none, with one handle whose
 * `signal` aborts when any of them is lost. Each name is the same lock a
 * `Lock` of that name takes (a `MultiLock` and a `Lock` exclude each
 * other). Callers asking for overlapping sets, in any order, never
 * deadlock: names are taken in one global order, and a caller that finds
 * some busy gives back what it took before it waits.
 *
 * On one Redis server, one script takes every name at once. On a Redis
 * Cluster (a client that says `cluster`, as ioredis' `Cluster` and
 * node-redis' `createCluster` do), a script can only touch one hash slot:
 * names of one slot go in one script, and the slots are taken one after
 * another, in slot order, within one attempt.
 *
 * @example Move money between two accounts
 * ```ts
 * import { MultiLock, type RedisClient } from "@deadbolt/deadbolt";
 *
 * async function transfer(redis: RedisClient, from: string, to: string): Promise<void> {
 *   await using locks = await MultiLock.acquire(redis, [`account:${from}`, `account:${to}`]);
 *   // both accounts are ours; locks.signal aborts if either is lost
 * }
 * ```
 */
export class MultiLock extends LockHandle {
  /** The locks' names, as given. */
  readonly names: readonly string[];
  /** The locks' Redis keys, in the order they are taken. */
  readonly keys: readonly string[];

  /**
   * Creates a handle on the locks `names`; nothing is sent until `acquire()`.
   *
   * @param client Your Redis client, as it is (see {@linkcode RedisClient}).
   * @param names 1 to 64 distinct lock names.
   * @param options Lease, key prefix and default wait options.
   * @throws {TypeError} when `names` is not an array of well-formed names,
   * or an option has the wrong type or is unknown.
   * @throws {RangeError} when `names` is empty, holds a name twice or more
   * than 64 names, or a number is out of range.
   */
  constructor(
    client: RedisClient,
    names: readonly string[],
    options: MultiLockOptions = {},
  ) {
    const action = "Cannot lock a set of names";
    const settings = multiLockSettings(action, options);
    const checked = checkNames(action, names);
    const locks = checked.map((name) => lockKeys(settings.prefix, name))
      .sort((a, b) => a.lock < b.lock ? -1 : a.lock > b.lock ? 1 : 0);
    const label = checked.join(", ");
    super(
      new Lifecycle(
        label,
        settings,
        new MultiStore(toScriptClient(client), label, locks, settings),
        "multi",
      ),
    );
    this.names = checked;
    this.keys = locks.map(({ lock }) => lock);
  }

  /**
   * Acquires every lock of `names`, waiting up to `timeout` ms.
   *
   * @param client Your Redis client, as it is.
   * @param names 1 to 64 distinct lock names.
   * @param options Lock and wait options.
   * @returns The held set; dispose or release it.
   * @throws {LockTimeoutError} when some name stayed held for the whole wait.
   * @throws {LockKeyError} when a key holds a value deadbolt did not write.
   */
  static acquire(
    client: RedisClient,
    names: readonly string[],
    options: MultiLockOptions & AcquireOptions = {},
  ): Promise<MultiLock> {
    return acquireNew(
      MultiLock,
      client,
      names,
      options,
      STATIC_ACQUIRE_KEYS,
    );
  }

  /**
   * Makes one attempt to acquire every lock of `names`.
   *
   * @param client Your Redis client, as it is.
   * @param names 1 to 64 distinct lock names.
   * @param options Lock options, and a `signal` that cancels the attempt.
   * @returns The held set, or `null` when some name is held.
   */
  static tryAcquire(
    client: RedisClient,
    names: readonly string[],
    options: MultiLockOptions & Pick<AcquireOptions, "signal"> = {},
  ): Promise<MultiLock | null> {
    return tryAcquireNew(
      MultiLock,
      client,
      names,
      options,
      STATIC_TRY_KEYS,
    );
  }
}

// 1 to MAX_NAMES distinct well-formed names, copied.
function checkNames(action: string, names: unknown): string[] {
  if (!Array.isArray(names)) {
    throw new TypeError(
      `${action} as 'names' must be an array of lock names: current value is ${
        names === null ? "null" : typeof names
      }`,
    );
  }
  if (names.length === 0 || names.length > MAX_NAMES) {
    throw new RangeError(
      `${action} as 'names' must hold 1 to ${MAX_NAMES} names: current value holds ${names.length}`,
    );
  }
  const seen = new Set<string>();
  return names.map((name, i) => {
    checkName(action, `names[${i}]`, name);
    if (seen.has(name)) {
      throw new RangeError(
        `${action} as 'names' must hold distinct names: ${
          JSON.stringify(name)
        } is there twice`,
      );
    }
    seen.add(name);
    return name;
  });
}
