import {
  checkBoolean,
  checkInteger,
  checkOptionKeys,
  checkPrefix,
  checkSignal,
  MAX_TIMER_MS,
} from "./_validate.ts";

/** Options of one wait for the lock. */
export interface AcquireOptions {
  /**
   * How long to wait for the lock, in ms, by the monotonic clock: `0` makes
   * one attempt, `Infinity` waits until the lock is free. An attempt sent
   * before the deadline may finish after it, within `commandTimeout`.
   *
   * @default {10000}
   */
  timeout?: number;
  /** Cancels the wait: the call rejects with `signal.reason`. */
  signal?: AbortSignal;
  /**
   * The bound of the first backoff wait, in ms. Waits are full-jitter
   * exponential: uniform up to `retryDelay · 2^n`, capped by `maxRetryDelay`,
   * and never past the holder's remaining lease or the deadline.
   *
   * @default {5}
   */
  retryDelay?: number;
  /**
   * The largest backoff wait, in ms.
   *
   * @default {1000}
   */
  maxRetryDelay?: number;
}

/** Options of a {@linkcode Lock}; `timeout` and the retry delays are defaults for its waits. */
export interface LockOptions extends Omit<AcquireOptions, "signal"> {
  /**
   * The lease length in ms: how long the key lives in Redis after each
   * acquisition or renewal. An integer from 10 to 2^31 - 1.
   *
   * @default {30000}
   */
  ttl?: number;
  /**
   * Renew the lease every third of `ttl` while the lock is held. When a
   * renewal cannot succeed in time, `signal` aborts before `validUntil`.
   *
   * @default {true}
   */
  autoExtend?: boolean;
  /**
   * How often the lease is renewed while held (with `autoExtend`), in ms: an
   * integer from 1 to half of `ttl`. Shorter renews more often (more
   * commands) and leaves more time to retry a failed renewal before the
   * lease runs out.
   *
   * @default a third of `ttl`
   */
  renewInterval?: number;
  /**
   * Issue a fencing token (`fence`) with every acquisition: an integer that
   * is strictly greater than every fence issued before for this name.
   *
   * @default {false}
   */
  fencing?: boolean;
  /**
   * The prefix of the lock's Redis keys. It may not contain `{` or `}`.
   *
   * @default {"deadbolt:"}
   */
  prefix?: string;
  /**
   * How long one Redis call may take, in ms, before deadbolt gives up on it
   * (a blackholed connection never answers); `Infinity` waits for the client.
   *
   * @default {5000}
   */
  commandTimeout?: number;
  /**
   * After each acquisition, send `WAIT` until this many replicas have
   * acknowledged the lock's write; with fewer, the lock is released and
   * `acquire` fails with {@linkcode LockReplicationError}. This narrows (it
   * cannot close) the window in which a failover forgets the lock. Needs a
   * client that can send `WAIT` on the connection that ran the script.
   *
   * @default {0}
   */
  waitReplicas?: number;
  /**
   * How long `WAIT` may block for `waitReplicas`, in ms.
   *
   * @default {1000}
   */
  replicaTimeout?: number;
  /**
   * The `deadbolt.lock.name` attribute of this handle's OpenTelemetry
   * metrics and spans: at most 256 UTF-16 code units (`""`, the default, is
   * none). Unset, they carry no name, as
   * lock names can be unbounded in number (one per job, per user) and each
   * distinct value makes new time series. Give the name itself for a lock
   * of a fixed name (`"nightly-report"`), or a group for locks named per
   * item (`"job"` for `job:${id}`). See `docs/observing.md`.
   *
   * @default {""}
   */
  telemetryName?: string;
}

/** The shortest lease: 10 ms leaves 7.9 ms of validity after drift. */
export const MIN_TTL = 10;
const WAIT_KEYS = ["timeout", "retryDelay", "maxRetryDelay"] as const;
/** The keys `acquire()` accepts. */
export const ACQUIRE_KEYS: readonly string[] = [...WAIT_KEYS, "signal"];
/** The keys the `Lock` constructor accepts. */
export const LOCK_KEYS: readonly string[] = [
  ...WAIT_KEYS,
  "ttl",
  "autoExtend",
  "renewInterval",
  "fencing",
  "prefix",
  "commandTimeout",
  "waitReplicas",
  "replicaTimeout",
  "telemetryName",
];

/**
 * `acquire()` without options: the handle's own wait, with nothing to check
 * (the static entry points pass it when the call has no `signal`).
 */
export const NO_OPTIONS: AcquireOptions = Object.freeze({});

/** One wait's validated settings. */
export type WaitSettings = Required<Omit<AcquireOptions, "signal">>;

/** A lock's validated settings. */
export type LockSettings = Required<LockOptions>;

/**
 * Validates the constructor's options and fills in the defaults; the caller
 * has checked that every key is one of its kind's.
 *
 * @throws {TypeError} on a value of the wrong type.
 * @throws {RangeError} on a number out of range.
 */
export function lockSettings(
  action: string,
  options: LockOptions,
): LockSettings {
  const {
    ttl = 30_000,
    autoExtend = true,
    fencing = false,
    prefix = "deadbolt:",
    commandTimeout = 5_000,
    waitReplicas = 0,
    replicaTimeout = 1_000,
    telemetryName = "",
  } = options;
  const settings: LockSettings = {
    ttl: checkInteger(action, "ttl", ttl, MIN_TTL, MAX_TIMER_MS),
    autoExtend: checkBoolean(action, "autoExtend", autoExtend),
    renewInterval: options.renewInterval === undefined ? ttl / 3 : checkInteger(
      action,
      "renewInterval",
      options.renewInterval,
      1,
      Math.floor(checkInteger(action, "ttl", ttl, MIN_TTL, MAX_TIMER_MS) / 2),
    ),
    fencing: checkBoolean(action, "fencing", fencing),
    prefix: checkPrefix(action, prefix),
    commandTimeout: checkInteger(
      action,
      "commandTimeout",
      commandTimeout,
      1,
      MAX_TIMER_MS,
      true,
    ),
    waitReplicas: checkInteger(action, "waitReplicas", waitReplicas, 0, 1_000),
    replicaTimeout: checkInteger(
      action,
      "replicaTimeout",
      replicaTimeout,
      1,
      MAX_TIMER_MS,
    ),
    telemetryName: checkTelemetryName(action, telemetryName),
    timeout: 0,
    retryDelay: 0,
    maxRetryDelay: 0,
  };
  // Filled in, not spread in: a spread cost an object per lock.
  const wait = waitSettings(action, options, LOCK_WAIT_DEFAULTS);
  settings.timeout = wait.timeout;
  settings.retryDelay = wait.retryDelay;
  settings.maxRetryDelay = wait.maxRetryDelay;
  return settings;
}

const LOCK_WAIT_DEFAULTS: WaitSettings = {
  timeout: 10_000,
  retryDelay: 5,
  maxRetryDelay: 1_000,
};

// At most this many characters: an attribute value, not a payload.
const MAX_TELEMETRY_NAME = 256;

function checkTelemetryName(action: string, value: unknown): string {
  if (typeof value !== "string") {
    throw new TypeError(
      `${action} as 'telemetryName' must be a string: current value is ${typeof value}`,
    );
  }
  if (value.length > MAX_TELEMETRY_NAME) {
    throw new RangeError(
      `${action} as 'telemetryName' must be at most ${MAX_TELEMETRY_NAME} characters: current value has ${value.length}`,
    );
  }
  return value;
}

/**
 * Validates one wait's options, falling back to `defaults`.
 *
 * @throws {TypeError} on a value of the wrong type.
 * @throws {RangeError} on a number out of range.
 */
export function waitSettings(
  action: string,
  options: Omit<AcquireOptions, "signal">,
  defaults: WaitSettings,
): WaitSettings {
  const {
    timeout = defaults.timeout,
    retryDelay = defaults.retryDelay,
    maxRetryDelay = defaults.maxRetryDelay,
  } = options;
  const checkedRetryDelay = checkInteger(
    action,
    "retryDelay",
    retryDelay,
    1,
    MAX_TIMER_MS,
  );
  return {
    timeout: checkInteger(
      action,
      "timeout",
      timeout,
      0,
      Number.MAX_SAFE_INTEGER,
      true,
    ),
    retryDelay: checkedRetryDelay,
    maxRetryDelay: checkInteger(
      action,
      "maxRetryDelay",
      maxRetryDelay,
      checkedRetryDelay,
      MAX_TIMER_MS,
    ),
  };
}

/**
 * Validates `acquire()`'s options against the lock's defaults.
 *
 * @throws {TypeError} on an unknown key or a value of the wrong type.
 * @throws {RangeError} on a number out of range.
 */
export function acquireSettings(
  action: string,
  options: AcquireOptions,
  defaults: WaitSettings,
): WaitSettings & { signal: AbortSignal | undefined } {
  checkOptionKeys(action, options, ACQUIRE_KEYS);
  const signal = checkSignal(action, options.signal);
  return { ...waitSettings(action, options, defaults), signal };
}

/** Options of a `Redlock`: those of a `Lock` that apply to independent masters. */
export interface RedlockOptions
  extends Omit<LockOptions, "fencing" | "waitReplicas" | "replicaTimeout"> {
  /**
   * Only `false`: a `Redlock` issues no fencing tokens, and `true` is refused
   * with a `TypeError`. Independent masters keep independent counters, and
   * the largest fence of one quorum need not exceed that of an earlier one,
   * so no fence taken across them is strictly increasing. For fencing
   * tokens, use `Lock` with `fencing: true` on one Redis or a Redis Cluster.
   *
   * @default {false}
   */
  fencing?: false;
}

/** A `Redlock`'s validated settings. */
export type RedlockSettings = Required<Omit<RedlockOptions, "fencing">>;

// Lock options a Redlock refuses by name, with the reason, rather than as typos.
const NOT_OFFERED = ["waitReplicas", "replicaTimeout"];

/** Validates the options: a `Lock`'s, without fencing and replicas. */
export function redlockSettings(
  action: string,
  options: RedlockOptions,
): RedlockSettings {
  const record = options as Record<string, unknown>;
  for (const key of NOT_OFFERED) {
    if (record[key] !== undefined) {
      throw new TypeError(
        `${action} as '${key}' is not an option of Redlock: its servers are independent masters, and a quorum of them (not replicas) keeps the lock`,
      );
    }
  }
  if (
    options.fencing !== undefined &&
    checkBoolean(action, "fencing", options.fencing)
  ) {
    throw new TypeError(
      `${action} as 'fencing' must be false for a Redlock: current value is true. Independent masters cannot issue one strictly increasing counter (the largest fences of two quorums are not ordered), so a fence would look monotonic without being so; for fencing tokens, use Lock with fencing: true on one Redis or a Redis Cluster`,
    );
  }
  const {
    fencing: _fencing,
    waitReplicas: _waitReplicas,
    replicaTimeout: _replicaTimeout,
    ...settings
  } = lockSettings(action, options);
  return settings;
}

/** Options of a `Semaphore`: `limit`, and those of a `Lock` that apply to permits. */
export interface SemaphoreOptions
  extends Omit<LockOptions, "waitReplicas" | "replicaTimeout"> {
  /**
   * How many permits may be held at once: an integer from 1 to 2^31 − 1.
   * Each call counts against its own `limit`: a caller with a smaller one
   * waits while at least that many permits are held, and a smaller limit
   * never takes a permit from a holder (new grants wait until enough
   * leases have ended).
   */
  limit: number;
}

/** A `Semaphore`'s validated settings. */
export type SemaphoreSettings = Required<SemaphoreOptions>;

/** The keys the `Semaphore` constructor accepts. */
export const SEMAPHORE_KEYS: readonly string[] = [
  ...LOCK_KEYS.filter((key) => !NOT_OFFERED.includes(key)),
  "limit",
];

/**
 * Validates a `Semaphore`'s options: `limit`, and a `Lock`'s without
 * replicas.
 *
 * @throws {TypeError} on an unknown key, a missing `limit` or a value of the
 * wrong type.
 * @throws {RangeError} on a number out of range.
 */
export function semaphoreSettings(
  action: string,
  options: SemaphoreOptions,
): SemaphoreSettings {
  checkOptionKeys(action, options, SEMAPHORE_KEYS);
  const { limit, ...lockOptions } = options;
  if (limit === undefined) {
    throw new TypeError(
      `${action} as 'limit' is required: how many permits may be held at once, an integer from 1 to ${MAX_TIMER_MS}`,
    );
  }
  const {
    waitReplicas: _waitReplicas,
    replicaTimeout: _replicaTimeout,
    ...settings
  } = lockSettings(action, lockOptions);
  return {
    ...settings,
    limit: checkInteger(action, "limit", limit, 1, MAX_TIMER_MS),
  };
}

/** Options of a `ReadWriteLock`: those of a `Lock` that apply to its holds. */
export type ReadWriteLockOptions = Omit<
  LockOptions,
  "waitReplicas" | "replicaTimeout"
>;

/** A `ReadWriteLock`'s validated settings. */
export type ReadWriteLockSettings = Required<ReadWriteLockOptions>;

/** The keys the `ReadWriteLock` constructor accepts. */
export const READ_WRITE_KEYS: readonly string[] = LOCK_KEYS.filter((key) =>
  !NOT_OFFERED.includes(key)
);

/**
 * Validates a `ReadWriteLock`'s options: a `Lock`'s without replicas.
 *
 * @throws {TypeError} on an unknown key or a value of the wrong type.
 * @throws {RangeError} on a number out of range.
 */
export function readWriteSettings(
  action: string,
  options: ReadWriteLockOptions,
): ReadWriteLockSettings {
  checkOptionKeys(action, options, READ_WRITE_KEYS);
  const {
    waitReplicas: _waitReplicas,
    replicaTimeout: _replicaTimeout,
    ...settings
  } = lockSettings(action, options);
  return settings;
}

/** Options of a `MultiLock`: those of a `Lock` that apply to a set of locks. */
export type MultiLockOptions = Omit<
  LockOptions,
  "fencing" | "waitReplicas" | "replicaTimeout"
>;

/** A `MultiLock`'s validated settings. */
export type MultiLockSettings = Required<MultiLockOptions>;

/** The keys the `MultiLock` constructor accepts. */
export const MULTI_KEYS: readonly string[] = READ_WRITE_KEYS.filter((key) =>
  key !== "fencing"
);

/** The most names one `MultiLock` may take. */
export const MAX_NAMES = 64;

/**
 * Validates a `MultiLock`'s options: a `Lock`'s without fencing and
 * replicas.
 *
 * @throws {TypeError} on an unknown key or a value of the wrong type.
 * @throws {RangeError} on a number out of range.
 */
export function multiLockSettings(
  action: string,
  options: MultiLockOptions,
): MultiLockSettings {
  checkOptionKeys(action, options, MULTI_KEYS);
  const { fencing: _fencing, ...settings } = readWriteSettings(action, options);
  return settings;
}
