/**
 * Raised by {@linkcode Lock.acquire} when the lock stayed held by another
 * owner until the wait's deadline.
 *
 * It is only raised when Redis answered and the lock was seen held: a Redis
 * or connection failure surfaces as its own error, never as a timeout.
 *
 * @example Usage
 * ```ts
 * import { Lock, LockTimeoutError, type RedisClient } from "@deadbolt/deadbolt";
 *
 * async function report(redis: RedisClient): Promise<void> {
 *   try {
 *     await using lock = await Lock.acquire(redis, "report", { timeout: 1_000 });
 *   } catch (error) {
 *     if (!(error instanceof LockTimeoutError)) throw error;
 *     console.log(`busy for another ${error.remainingTtl} ms`);
 *   }
 * }
 * ```
 */
export class LockTimeoutError extends Error {
  /** The lock's name. */
  readonly lockName: string;
  /** How long the caller waited, in milliseconds. */
  readonly waited: number;
  /**
   * The other owner's remaining lease in milliseconds, as last known
   * (Redis' answer to this waiter or to the head of its process's queue,
   * or the lease of a holder in this process) and counted down to the
   * moment of the error; `-1` when the key has no expiry; `NaN` when the
   * wait ended before anything was known (shorter than one round trip).
   */
  readonly remainingTtl: number;

  /**
   * Constructs a new instance.
   *
   * @param lockName The lock's name.
   * @param waited How long the caller waited, in milliseconds.
   * @param remainingTtl The holder's remaining lease in milliseconds.
   */
  constructor(lockName: string, waited: number, remainingTtl: number) {
    super(
      `Cannot acquire lock '${lockName}' as another owner held it for the whole wait of ${
        Math.round(waited)
      } ms`,
    );
    this.name = "LockTimeoutError";
    this.lockName = lockName;
    this.waited = waited;
    this.remainingTtl = remainingTtl;
  }
}

/**
 * The reason `lock.signal` aborts with when ownership can no longer be
 * guaranteed: another owner holds the key, the key vanished, or the lease's
 * validity ran out before a renewal succeeded.
 *
 * @example Usage
 * ```ts
 * import { Lock, LockLostError, type RedisClient } from "@deadbolt/deadbolt";
 *
 * async function report(redis: RedisClient): Promise<void> {
 *   await using lock = await Lock.acquire(redis, "report");
 *   lock.signal.addEventListener("abort", () => {
 *     const reason = lock.signal.reason as LockLostError;
 *     console.error(reason.message, reason.cause);
 *   });
 * }
 * ```
 */
export class LockLostError extends Error {
  /** The lock's name. */
  readonly lockName: string;

  /**
   * Constructs a new instance.
   *
   * @param lockName The lock's name.
   * @param message Why ownership was lost.
   * @param options `cause`: the renewal error, when one led to the loss.
   */
  constructor(lockName: string, message: string, options?: ErrorOptions) {
    super(`Lost lock '${lockName}': ${message}`, options);
    this.name = "LockLostError";
    this.lockName = lockName;
  }
}

/**
 * Raised when the lock's Redis key (or its fence counter) holds a value that
 * deadbolt did not write: a key of another type, or a fence counter that is
 * not an integer or has no safe successor. deadbolt never deletes such a key;
 * rename the lock or remove the key by hand.
 *
 * @example Usage
 * ```ts
 * import { Lock, LockKeyError, type RedisClient } from "@deadbolt/deadbolt";
 *
 * async function report(redis: RedisClient): Promise<void> {
 *   try {
 *     await using lock = await Lock.acquire(redis, "name-used-by-a-hash");
 *   } catch (error) {
 *     if (error instanceof LockKeyError) console.error(error.key, error.message);
 *   }
 * }
 * ```
 */
export class LockKeyError extends Error {
  /** The Redis key that holds the foreign value. */
  readonly key: string;

  /**
   * Constructs a new instance.
   *
   * @param key The Redis key that holds the foreign value.
   * @param message What is wrong with it.
   */
  constructor(key: string, message: string) {
    super(message);
    this.name = "LockKeyError";
    this.key = key;
  }
}

/**
 * Raised by `acquire` when `waitReplicas` is set and fewer replicas than
 * asked acknowledged the lock's write within `replicaTimeout`. deadbolt has
 * deleted the key (by token) before raising it, so nothing is held.
 *
 * @example Usage
 * ```ts
 * import { Lock, LockReplicationError, type RedisClient } from "@deadbolt/deadbolt";
 *
 * async function report(redis: RedisClient): Promise<void> {
 *   try {
 *     await using lock = await Lock.acquire(redis, "report", { waitReplicas: 1 });
 *   } catch (error) {
 *     if (error instanceof LockReplicationError) console.error(error.acknowledged);
 *   }
 * }
 * ```
 */
export class LockReplicationError extends Error {
  /** The lock's name. */
  readonly lockName: string;
  /** How many replicas acknowledged the write. */
  readonly acknowledged: number;
  /** How many were asked for (`waitReplicas`). */
  readonly required: number;

  /**
   * Constructs a new instance.
   *
   * @param lockName The lock's name.
   * @param acknowledged How many replicas acknowledged the write.
   * @param required How many were asked for.
   */
  constructor(lockName: string, acknowledged: number, required: number) {
    super(
      `Cannot acquire lock '${lockName}' as ${acknowledged} of the ${required} required replica(s) acknowledged it in time; it was released`,
    );
    this.name = "LockReplicationError";
    this.lockName = lockName;
    this.acknowledged = acknowledged;
    this.required = required;
  }
}

/**
 * Raised by a {@linkcode Redlock} when too many of its servers failed
 * (errors or no answer within `commandTimeout`, not a lock held by another
 * owner) for a quorum to be reached: `acquire` raises it at once rather
 * than waiting out its `timeout`, since waiting does not bring servers back.
 * `release` and `extend` raise it when too few servers answered to know the
 * outcome. Its `cause` is an `AggregateError` of the failed servers' errors.
 *
 * @example Usage
 * ```ts
 * import { LockQuorumError, Redlock, type RedisClient } from "@deadbolt/deadbolt";
 *
 * async function report(masters: RedisClient[]): Promise<void> {
 *   try {
 *     await using lock = await Redlock.acquire(masters, "report");
 *   } catch (error) {
 *     if (!(error instanceof LockQuorumError)) throw error;
 *     console.error(`${error.answered} of ${error.servers} servers answered`, error.cause);
 *   }
 * }
 * ```
 */
export class LockQuorumError extends Error {
  /** The lock's name. */
  readonly lockName: string;
  /** What failed: `"acquire"`, `"extend"` or `"release"`. */
  readonly operation: "acquire" | "extend" | "release";
  /** How many servers answered (whatever the answer). */
  readonly answered: number;
  /** How many servers the lock uses. */
  readonly servers: number;
  /** How many servers make a quorum: ⌊servers / 2⌋ + 1. */
  readonly quorum: number;

  /**
   * Constructs a new instance.
   *
   * @param lockName The lock's name.
   * @param operation What failed.
   * @param answered How many servers answered.
   * @param servers How many servers the lock uses.
   * @param quorum How many servers make a quorum.
   * @param options `cause`: an `AggregateError` of the failed servers' errors.
   */
  constructor(
    lockName: string,
    operation: "acquire" | "extend" | "release",
    answered: number,
    servers: number,
    quorum: number,
    options?: ErrorOptions,
  ) {
    const reach = answered < quorum
      ? `only ${answered} of its ${servers} Redis servers answered and a quorum of ${quorum} is needed`
      : `${
        servers - answered
      } of its ${servers} Redis servers failed and too few of the ${answered} that answered confirmed it for a quorum of ${quorum}`;
    super(
      `Cannot ${operation} lock '${lockName}' as ${reach}; the cause holds the failed servers' errors`,
      options,
    );
    this.name = "LockQuorumError";
    this.lockName = lockName;
    this.operation = operation;
    this.answered = answered;
    this.servers = servers;
    this.quorum = quorum;
  }
}
