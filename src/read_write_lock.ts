import {
  type RedisClient,
  type ScriptClient,
  toScriptClient,
} from "./client.ts";
import { type LockKeys, lockKeys } from "./keys.ts";
import { Lifecycle } from "./_lifecycle.ts";
import { LockHandle } from "./handle.ts";
import { ScriptedStore } from "./_scripted_store.ts";
import { readScripts, writeScripts } from "./_rw_scripts.ts";
import { checkedAs, checkName, checkOptionKeys } from "./_validate.ts";
import {
  ACQUIRE_KEYS,
  type AcquireOptions,
  READ_WRITE_KEYS,
  type ReadWriteLockOptions,
  type ReadWriteLockSettings,
  readWriteSettings,
} from "./options.ts";

const STATIC_KEYS = [...ACQUIRE_KEYS, ...READ_WRITE_KEYS];

/**
 * A distributed read-write lock: any number of readers, or one writer. A
 * waiting writer stops new readers, so writers do not starve; a reader and a
 * writer are never granted at once. Each hold is a handle with `Lock`'s
 * surface and promises (a lease renewed while held, a `signal` that aborts
 * with {@linkcode LockLostError} before the lease can have run out, `await
 * using`); with `fencing: true`, writers get strictly increasing fences and
 * readers the fence of the last writer.
 *
 * @example Many readers, one writer
 * ```ts
 * import { ReadWriteLock, type RedisClient } from "@deadbolt/deadbolt";
 *
 * async function show(redis: RedisClient): Promise<void> {
 *   await using hold = await ReadWriteLock.read(redis, "catalog");
 *   // read, with hold.signal
 * }
 *
 * async function update(redis: RedisClient): Promise<void> {
 *   await using hold = await ReadWriteLock.write(redis, "catalog", { timeout: 5_000 });
 *   // write, with hold.signal and hold.fence
 * }
 * ```
 */
export class ReadWriteLock {
  /** The lock's name, as given. */
  readonly name: string;

  #client: ScriptClient;
  #settings: ReadWriteLockSettings;
  #keys: LockKeys;

  /**
   * Opens the read-write lock `name`; nothing is sent until a hold is
   * acquired.
   *
   * @param client Your Redis client, as it is (see {@linkcode RedisClient}).
   * @param name The lock's name: 1 to 1024 UTF-8 bytes, any characters.
   * @param options Lease, fencing, key prefix and default wait options.
   * @throws {TypeError} on a client, name or option of the wrong kind.
   * @throws {RangeError} when a number is out of range.
   */
  constructor(
    client: RedisClient,
    name: string,
    options: ReadWriteLockOptions = {},
  ) {
    this.name = checkName("Cannot open a read-write lock", "name", name);
    this.#settings = checkedAs(
      () => `Cannot open read-write lock ${JSON.stringify(name)}`,
      (action) => readWriteSettings(action, options),
    );
    this.#client = toScriptClient(client);
    this.#keys = lockKeys(`${this.#settings.prefix}rw:`, name);
  }

  /**
   * Acquires a read hold of the lock `name`, waiting up to `timeout` ms.
   *
   * @param client Your Redis client, as it is.
   * @param name The lock's name.
   * @param options Lock and wait options.
   * @returns The held read hold; dispose or release it.
   * @throws {LockTimeoutError} when a writer held or awaited it for the whole wait.
   */
  static async read(
    client: RedisClient,
    name: string,
    options: ReadWriteLockOptions & AcquireOptions = {},
  ): Promise<ReadWriteHold> {
    return await ReadWriteLock.#open(client, name, options).read(options);
  }

  /**
   * Acquires the write hold of the lock `name`, waiting up to `timeout` ms.
   *
   * @param client Your Redis client, as it is.
   * @param name The lock's name.
   * @param options Lock and wait options.
   * @returns The held write hold; dispose or release it.
   * @throws {LockTimeoutError} when readers or a writer held it for the whole wait.
   */
  static async write(
    client: RedisClient,
    name: string,
    options: ReadWriteLockOptions & AcquireOptions = {},
  ): Promise<ReadWriteHold> {
    return await ReadWriteLock.#open(client, name, options).write(options);
  }

  static #open(
    client: RedisClient,
    name: string,
    options: ReadWriteLockOptions & AcquireOptions,
  ): ReadWriteLock {
    checkOptionKeys("Cannot lock", options, STATIC_KEYS);
    const {
      signal: _signal,
      timeout: _timeout,
      retryDelay: _retryDelay,
      maxRetryDelay: _maxRetryDelay,
      ...lockOptions
    } = options;
    return new ReadWriteLock(client, name, lockOptions);
  }

  /**
   * Acquires a read hold, waiting up to `timeout` ms.
   *
   * @param options Wait options; defaults come from the constructor.
   * @returns The held read hold; dispose or release it.
   * @throws {LockTimeoutError} when a writer held or awaited it for the whole wait.
   */
  async read(options: AcquireOptions = {}): Promise<ReadWriteHold> {
    const hold = this.reader();
    await hold.acquire(pickWait(options));
    return hold;
  }

  /**
   * Acquires the write hold, waiting up to `timeout` ms.
   *
   * @param options Wait options; defaults come from the constructor.
   * @returns The held write hold; dispose or release it.
   * @throws {LockTimeoutError} when readers or a writer held it for the whole wait.
   */
  async write(options: AcquireOptions = {}): Promise<ReadWriteHold> {
    const hold = this.writer();
    await hold.acquire(pickWait(options));
    return hold;
  }

  /** A read hold's handle, not acquired yet. */
  reader(): ReadWriteHold {
    return new ReadWriteHold(
      "read",
      `${this.#keys.lock}:readers`,
      this.#life("read", readScripts(this.#keys, this.#settings)),
    );
  }

  /** The write hold's handle, not acquired yet. */
  writer(): ReadWriteHold {
    return new ReadWriteHold(
      "write",
      this.#keys.lock,
      this.#life("write", writeScripts(this.#keys, this.#settings)),
    );
  }

  #life(
    kind: "read" | "write",
    scripts: ReturnType<typeof readScripts>,
  ): Lifecycle {
    return new Lifecycle(
      this.name,
      this.#settings,
      new ScriptedStore(this.#client, this.name, scripts, this.#settings),
      kind,
    );
  }
}

// The wait options among `options` (the static forms take lock options too).
function pickWait(options: AcquireOptions): AcquireOptions {
  const { signal, timeout, retryDelay, maxRetryDelay } = options;
  const wait: AcquireOptions = {};
  if (signal !== undefined) wait.signal = signal;
  if (timeout !== undefined) wait.timeout = timeout;
  if (retryDelay !== undefined) wait.retryDelay = retryDelay;
  if (maxRetryDelay !== undefined) wait.maxRetryDelay = maxRetryDelay;
  return wait;
}

/**
 * A read or write hold of a {@linkcode ReadWriteLock}, with `Lock`'s
 * surface.
 */
export class ReadWriteHold extends LockHandle {
  /** `"read"` or `"write"`. */
  readonly mode: "read" | "write";
  /** The Redis key of this hold: the readers' sorted set, or the writer key. */
  readonly key: string;

  /** The lock's name. */
  readonly name: string;

  /**
   * Built by {@linkcode ReadWriteLock} (`read()`, `write()`, `reader()`,
   * `writer()`).
   *
   * @param mode `"read"` or `"write"`.
   * @param key The hold's Redis key.
   * @param life The hold's lifecycle.
   */
  constructor(mode: "read" | "write", key: string, life: Lifecycle) {
    super(life);
    this.mode = mode;
    this.key = key;
    this.name = life.name;
  }
}
