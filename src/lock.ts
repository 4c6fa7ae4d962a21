import {
  type RedisClient,
  type ScriptClient,
  toScriptClient,
} from "./client.ts";
import { backoff } from "./backoff.ts";
import {
  LockKeyError,
  LockLostError,
  LockReplicationError,
  LockTimeoutError,
} from "./errors.ts";
import { lockKeys } from "./keys.ts";
import {
  ACQUIRE,
  EAGER_HANDOVER,
  EXTEND,
  HANDOVER,
  RELEASE,
  runScript,
  toIntegers,
} from "./scripts.ts";
import { delay, now, settle } from "./_timers.ts";
import { Lease, validity } from "./_lease.ts";
import { deferred } from "./_deferred.ts";
import {
  existingQueue,
  type LocalQueue,
  localQueue,
  MAX_UNANSWERED,
  type Offer,
  type PendingHandover,
  unwatched,
} from "./_queue.ts";
import {
  checkInteger,
  checkName,
  checkOptionKeys,
  MAX_TIMER_MS,
} from "./_validate.ts";
import {
  ACQUIRE_KEYS,
  type AcquireOptions,
  acquireSettings,
  LOCK_KEYS,
  type LockOptions,
  type LockSettings,
  lockSettings,
  MIN_TTL,
  type WaitSettings,
} from "./options.ts";

const noop = (): void => {};
// The option keys of the static entry points, built once (they run per lock).
const STATIC_ACQUIRE_KEYS = [...ACQUIRE_KEYS, ...LOCK_KEYS];
const STATIC_TRY_KEYS = [...LOCK_KEYS, "signal"];
// How long, after a run of local handovers, waiters in other processes get
// to ask for the lock before the local head does (they hear of the release
// by pub/sub within a round trip).
const YIELD_MS = 2;
// Added to a waiting mark's lifetime, so it outlasts the waiter's sleep.
const MARK_MARGIN_MS = 20;

/**
 * A distributed lock on one Redis key, with a lease that renews itself while
 * held, an `AbortSignal` that tells when ownership is lost, and opt-in
 * fencing tokens. It implements `AsyncDisposable`, so `await using` releases
 * it on every exit path.
 *
 * @example Scoped
 * ```ts ignore
 * import { Redis } from "npm:ioredis";
 * import { Lock } from "@deadbolt/deadbolt";
 *
 * const redis = new Redis();
 * {
 *   await using lock = await Lock.acquire(redis, "nightly-report", { ttl: 30_000 });
 *   await fetch("https://example.com/report", { method: "POST", signal: lock.signal });
 * } // released here
 * ```
 *
 * @example Managed by hand
 * ```ts ignore
 * import { Lock } from "@deadbolt/deadbolt";
 *
 * const lock = new Lock(redis, "my_lock", { ttl: 60_000 });
 * await lock.acquire();
 * try {
 *   // critical section
 * } finally {
 *   await lock.release();
 * }
 * ```
 */
export class Lock implements AsyncDisposable {
  /** The lock's name, as given. */
  readonly name: string;
  /** The Redis key that holds the owner's token: `<prefix>{<name>}`. */
  readonly key: string;

  #fenceKey: string;
  #channel: string;
  #waitingKey: string;
  #client: ScriptClient;
  #settings: LockSettings;
  #token: string = crypto.randomUUID();
  #fence: number | undefined;
  // The current or last acquisition's lease; ended once released or lost.
  #lease: Lease | undefined;
  // Granted and not yet released: release() must ask Redis.
  #acquired = false;
  // The acquire() in progress, and how to call it off.
  #pending: { cancel: AbortController; attempt: Promise<void> } | undefined;
  #controller = new AbortController();

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
    this.name = checkName("Cannot lock", "name", name);
    const action = `Cannot lock ${JSON.stringify(name)}`;
    this.#settings = lockSettings(action, options);
    this.#client = toScriptClient(client);
    if (this.#settings.waitReplicas > 0 && !this.#client.deadbolt?.wait) {
      throw new TypeError(
        `${action} as 'waitReplicas' needs a client that can send WAIT (pass @db/redis through fromDbRedis): current value is ${this.#settings.waitReplicas}`,
      );
    }
    const keys = lockKeys(this.#settings.prefix, name);
    this.key = keys.lock;
    this.#fenceKey = keys.fence;
    this.#channel = keys.released;
    this.#waitingKey = keys.waiting;
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
   * ```ts ignore
   * import { Lock } from "@deadbolt/deadbolt";
   *
   * await using lock = await Lock.acquire(redis, "nightly-report", { timeout: 5_000 });
   * ```
   */
  static async acquire(
    client: RedisClient,
    name: string,
    options: LockOptions & AcquireOptions = {},
  ): Promise<Lock> {
    checkOptionKeys("Cannot lock", options, STATIC_ACQUIRE_KEYS);
    const { signal, ...lockOptions } = options;
    const lock = new Lock(client, name, lockOptions);
    await lock.acquire({ signal });
    return lock;
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
   * ```ts ignore
   * import { Lock } from "@deadbolt/deadbolt";
   *
   * await using lock = await Lock.tryAcquire(redis, "nightly-report");
   * if (!lock) console.log("someone else is on it");
   * ```
   */
  static async tryAcquire(
    client: RedisClient,
    name: string,
    options: LockOptions & Pick<AcquireOptions, "signal"> = {},
  ): Promise<Lock | null> {
    checkOptionKeys("Cannot lock", options, STATIC_TRY_KEYS);
    const { signal, ...lockOptions } = options;
    const lock = new Lock(client, name, lockOptions);
    return await lock.tryAcquire({ signal }) ? lock : null;
  }

  /** The token that marks this handle's ownership in Redis, from `crypto.randomUUID()`; new for each acquisition. */
  get token(): string {
    return this.#token;
  }

  /** Whether this handle owns the lock now: acquired, not released, not lost, and its validity not run out. */
  get held(): boolean {
    return this.#lease?.active ?? false;
  }

  /**
   * Aborts with a {@linkcode LockLostError} when ownership can no longer be
   * guaranteed, before `validUntil` passes. It does not abort on `release()`.
   * A handle acquired again after a loss gets a new signal.
   */
  get signal(): AbortSignal {
    this.#lease?.active; // past its validity, reading it aborts the signal
    return this.#controller.signal;
  }

  /** The fencing token of the current acquisition when `fencing` is on; else `undefined`. */
  get fence(): number | undefined {
    return this.#fence;
  }

  /**
   * The monotonic time (`performance.now()` ms) until which ownership is
   * guaranteed: send time of the last successful acquire or renewal, plus
   * `ttl`, minus 1% of `ttl` + 2 ms for clock drift. `0` before acquiring.
   */
  get validUntil(): number {
    return this.#lease?.validUntil ?? 0;
  }

  /**
   * Waits up to `timeout` ms for the lock.
   *
   * @param options Wait options; defaults come from the constructor.
   * @returns When the lock is held, with validity left.
   * @throws {LockTimeoutError} when another owner held it for the whole wait.
   * @throws {LockKeyError} when the key holds a value deadbolt did not write.
   * @throws {Error} when this handle already holds the lock or is acquiring it.
   * @throws {TypeError} on bad options, before any Redis command.
   * @throws {RangeError} on an out-of-range option, before any Redis command.
   */
  async acquire(options: AcquireOptions = {}): Promise<void> {
    const action = `Cannot acquire lock ${JSON.stringify(this.name)}`;
    const { signal, ...wait } = acquireSettings(
      action,
      options,
      this.#settings,
    );
    if (this.#pending) {
      throw new Error(`${action} as an acquire() of this handle is pending`);
    }
    if (this.held) {
      throw new Error(
        `${action} as this handle holds it already (not reentrant)`,
      );
    }
    signal?.throwIfAborted();
    const cancel = new AbortController();
    const attempt = (async () => {
      // A lost lease may still sit in Redis under our old token.
      if (this.#acquired) await this.#release();
      await this.#acquire(
        action,
        wait,
        signal ? AbortSignal.any([signal, cancel.signal]) : cancel.signal,
      );
    })();
    this.#pending = { cancel, attempt };
    try {
      await attempt;
    } finally {
      this.#pending = undefined;
    }
  }

  /**
   * Makes one attempt to acquire the lock.
   *
   * @param options A `signal` that cancels the attempt.
   * @returns `true` when the lock is now held, `false` when another owner holds it.
   * @throws {LockKeyError} when the key holds a value deadbolt did not write.
   */
  async tryAcquire(
    options: Pick<AcquireOptions, "signal"> = {},
  ): Promise<boolean> {
    checkOptionKeys(
      `Cannot acquire lock ${JSON.stringify(this.name)}`,
      options,
      ["signal"],
    );
    try {
      await this.acquire({ signal: options.signal, timeout: 0 });
      return true;
    } catch (error) {
      if (error instanceof LockTimeoutError) return false;
      throw error;
    }
  }

  /**
   * Renews the lease to `ttl` ms from now, if this handle still owns the key.
   * It never creates the key again.
   *
   * @param ttl The new lease length in ms; the lock's `ttl` by default.
   * @returns `true` when renewed; `false` when ownership was lost (then
   * `signal` has aborted) or the lock was released meanwhile.
   * @throws {Error} when this handle has not acquired the lock or has released it.
   * @throws {RangeError} when `ttl` is out of range.
   */
  async extend(ttl: number = this.#settings.ttl): Promise<boolean> {
    const action = `Cannot extend lock ${JSON.stringify(this.name)}`;
    checkInteger(action, "ttl", ttl, MIN_TTL, MAX_TIMER_MS);
    if (!this.#acquired) {
      throw new Error(`${action} as this handle does not hold it`);
    }
    if (!this.held) return false;
    const lease = this.#lease!;
    const sent = now();
    const reply = await this.#settle(
      runScript(this.#client, EXTEND, [this.key], [this.#token, String(ttl)]),
    );
    if (!lease.active) return false;
    const [code] = toIntegers(reply, 1);
    if (code !== 1) {
      lease.lose(
        code === 0
          ? "its key expired or was deleted"
          : "another owner holds its key",
      );
      return false;
    }
    lease.extended(sent, ttl);
    return true;
  }

  /**
   * Stops renewal and deletes the key if it still holds this handle's token
   * (or, when a waiter of this process is next in line, hands the lock to it
   * in the same step). It never touches another owner's key. Calling it
   * again is a no-op; calling it while `acquire()` waits cancels that wait.
   *
   * @returns `true` when this call released this handle's own hold; `false`
   * when the lease had expired, another owner holds the key, or there was
   * nothing to release.
   */
  async release(): Promise<boolean> {
    const pending = this.#pending;
    if (pending) {
      pending.cancel.abort(
        new DOMException(
          `Lock '${this.name}' was released while acquire() waited`,
          "AbortError",
        ),
      );
      // Once the wait has ended (and closed what it opened); if it got the
      // lock just before, that hold is released below.
      await pending.attempt.then(noop, noop);
    }
    return await this.#release();
  }

  /**
   * Stops renewal and releases the lock if this handle holds it, for
   * `await using`.
   *
   * @returns When released; rejects with the Redis error if release failed.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }

  async #release(): Promise<boolean> {
    try {
      return await this.#releaseHold();
    } finally {
      // A wake-up connection that a wait of this client opened is closed
      // by now: nothing deadbolt opened outlives the call.
      const closing = unwatched(this.#client);
      if (closing) await closing;
    }
  }

  async #releaseHold(): Promise<boolean> {
    if (!this.#acquired) return false;
    this.#acquired = false;
    const lease = this.#lease;
    // A lease past its validity is lost, and says so, even when the loss is
    // first noticed here (say, after a long block of the event loop).
    const held = lease?.active ?? false;
    lease?.end();
    const queue = existingQueue(this.#client, this.key);
    queue?.vacate(this);
    const offer = queue?.take();
    try {
      if (offer) return await this.#handOver(offer, queue!, held && lease);
      return await this.#releaseKey(queue);
    } catch (error) {
      // Let a later release() try again, unless the handle moved on.
      if (this.#lease === lease) this.#acquired = true;
      throw error;
    }
  }

  // Deletes the key if it holds this handle's token, waking waiters.
  async #releaseKey(queue: LocalQueue | undefined): Promise<boolean> {
    const reply = await this.#settle(
      runScript(
        this.#client,
        RELEASE,
        [this.key, this.#channel, this.#waitingKey],
        [this.#token],
      ),
    );
    // After a run of handovers, waiters elsewhere get a head start.
    if (queue?.yielding) queue.wakeLater(YIELD_MS);
    else queue?.wake();
    return toIntegers(reply, 1)[0] === 1;
  }

  // Passes the lock to a waiter of this process in one round trip. When the
  // waiter needs nothing from Redis but the key, the client runs calls in
  // order, and this handle still held the lock (`lease`; `false` once lost),
  // the waiter starts at once (see #handOverEagerly).
  async #handOver(
    offer: Offer,
    queue: LocalQueue,
    lease: Lease | false | undefined,
  ): Promise<boolean> {
    const sent = now();
    if (
      lease && offer.eager && this.#client.deadbolt?.ordered &&
      queue.unanswered < MAX_UNANSWERED
    ) {
      // The waiter may start now if this handle's lease, still good, covers
      // its whole ttl from some moment on; its own lease then counts from
      // there (or from now, if that is earlier) until Redis confirms.
      const from = Math.min(sent, lease.validUntil - validity(offer.ttl));
      if (Lease.fresh(from, offer.ttl)) {
        return await this.#handOverEagerly(offer, queue, sent, from);
      }
    }
    let code: number, fence: number;
    try {
      const call = runScript(
        this.#client,
        HANDOVER,
        [this.key, this.#fenceKey, this.#waitingKey],
        [
          this.#token,
          offer.token,
          String(offer.ttl),
          offer.fencing ? "1" : "0",
        ],
      );
      let waiting: number;
      [code, fence, waiting] = toIntegers(await this.#settle(call), 3);
      queue.waitingElsewhere = waiting === 1;
    } catch (error) {
      // It may have landed: the waiter retries with its token and, if so,
      // finds the key its own.
      offer.deliver(null);
      throw error;
    }
    if (code === 1) {
      if (!offer.deliver({ sent, fence })) this.#forget(offer.token);
      return true;
    }
    offer.deliver(null);
    // 3: the fence counter was unusable and our key was deleted instead.
    return code === 3;
  }

  async #handOverEagerly(
    offer: Offer,
    queue: LocalQueue,
    sent: number,
    from: number,
  ): Promise<boolean> {
    const code = deferred<number>();
    // The waiter may have gone (aborted) meanwhile: then release as usual.
    if (
      !offer.deliver({
        sent: from,
        fence: 0,
        pending: { sent, code: code.promise },
      })
    ) {
      return await this.#releaseKey(queue);
    }
    queue.unanswered++;
    try {
      // EVAL, not EVALSHA: a NOSCRIPT answer would make the script run after
      // whatever the new holder sends next, out of the order this relies on.
      const call = this.#client.eval(
        EAGER_HANDOVER.source,
        [this.key, this.#waitingKey],
        [this.#token, offer.token, String(offer.ttl)],
      );
      const [handed, , waiting] = toIntegers(await this.#settle(call), 3);
      queue.waitingElsewhere = waiting === 1;
      code.resolve(handed);
      return handed === 1;
    } catch (error) {
      // Unanswered: the waiter's renewals tell whether the key became its.
      code.reject(error);
      throw error;
    } finally {
      queue.unanswered--;
    }
  }

  async #acquire(
    action: string,
    wait: WaitSettings,
    signal: AbortSignal,
  ): Promise<void> {
    const started = now();
    const deadline = started + wait.timeout;
    // Waiters in this process take turns; one attempt (tryAcquire) does not
    // queue: it may barge in, as a non-blocking try is expected to.
    const queue = wait.timeout > 0
      ? localQueue(this.#client, this.key)
      : undefined;
    // When the first attempt goes out right away, `started` is its send time.
    let firstSend = started;
    try {
      const entered = queue?.enter(signal, deadline) ?? true;
      if (entered !== true) {
        if (!await entered) {
          throw new LockTimeoutError(
            this.name,
            now() - started,
            queue!.remainingTtl(),
          );
        }
        firstSend = now();
      }
      try {
        await this.#contend(
          action,
          wait,
          signal,
          started,
          firstSend,
          deadline,
          queue,
        );
        queue?.hold(this);
      } finally {
        queue?.leave();
      }
    } catch (error) {
      // A wait that fails leaves nothing open behind it (see #release).
      await unwatched(this.#client);
      throw error;
    }
  }

  async #contend(
    action: string,
    wait: WaitSettings,
    signal: AbortSignal,
    started: number,
    firstSend: number,
    deadline: number,
    queue: LocalQueue | undefined,
  ): Promise<void> {
    // A waiter (not one attempt) leaves a mark when turned away, so that a
    // holder handing the lock over in its own process yields to it.
    const keys = queue
      ? [this.key, this.#fenceKey, this.#waitingKey]
      : [this.key, this.#fenceKey];
    const fencing = this.#settings.fencing ? "1" : "0";
    let token = crypto.randomUUID();
    const want = () => ({
      token,
      ttl: this.#settings.ttl,
      fencing: this.#settings.fencing,
      eager: !this.#settings.fencing && this.#settings.waitReplicas === 0,
    });
    const subscribe = this.#client.deadbolt?.subscribe;
    if (queue?.holder) {
      // A handle of this process holds it: wait to be handed it, rather
      // than ask Redis now (its release would come while we asked). If its
      // lease ends without a release (lost, or run out), the queue wakes us.
      if (subscribe) queue.watch(subscribe, this.#channel);
      const pause = Math.min(wait.maxRetryDelay, deadline - now());
      const handed = await queue.sleep(pause, signal, want());
      if (
        handed &&
        await this.#take(
          token,
          handed.sent,
          handed.fence,
          signal,
          handed.pending,
        )
      ) {
        return;
      }
      if (handed) token = crypto.randomUUID();
      firstSend = now();
    }
    for (let attempt = 0;; attempt++) {
      const sent = attempt === 0 ? firstSend : now();
      // The mark lasts until this waiter's next attempt at the latest.
      const mark = Math.ceil(
        Math.min(wait.maxRetryDelay, wait.retryDelay * 2 ** attempt),
      ) + MARK_MARGIN_MS;
      const call = runScript(this.#client, ACQUIRE, keys, [
        token,
        String(this.#settings.ttl),
        fencing,
        String(mark),
      ]);
      let code: number, value: number;
      try {
        [code, value] = toIntegers(await this.#settle(call, signal), 2);
      } catch (error) {
        // The SET may have landed before the failure, or may land after an
        // abandoned call: delete it (by token) once the call has settled.
        const forget = () => this.#forget(token);
        call.then(forget, forget);
        throw error;
      }
      if (code === 1) {
        if (await this.#take(token, sent, value, signal)) return;
        // The grant arrived with no validity left: retry afresh.
        token = crypto.randomUUID();
      } else if (code === 2) {
        throw new LockKeyError(
          this.key,
          `${action} as its key '${this.key}' holds a value of another type; deadbolt leaves it alone`,
        );
      } else if (code === 3) {
        throw new LockKeyError(
          this.#fenceKey,
          `${action} as its fence counter '${this.#fenceKey}' is not an integer below 2^53 - 1`,
        );
      } else if (code !== 0) {
        throw new TypeError(`${action} as the acquire script replied ${code}`);
      }
      const left = deadline - now();
      if (left <= 0) {
        if (code === 0) {
          throw new LockTimeoutError(this.name, now() - started, value);
        }
        throw new DOMException(
          `${action} as Redis answered too slowly to leave any of the ${this.#settings.ttl} ms lease`,
          "TimeoutError",
        );
      }
      let pause = backoff(attempt, wait.retryDelay, wait.maxRetryDelay);
      if (code === 0 && value >= 0) pause = Math.min(pause, value);
      if (code === 0 && queue) {
        queue.noteRemaining(value);
        if (subscribe) queue.watch(subscribe, this.#channel);
      }
      pause = Math.min(pause, left);
      const handed = queue
        ? await queue.sleep(pause, signal, want())
        : await delay(pause, signal);
      if (handed) {
        if (
          await this.#take(
            token,
            handed.sent,
            handed.fence,
            signal,
            handed.pending,
          )
        ) return;
        token = crypto.randomUUID();
      }
    }
  }

  /**
   * Takes a grant whose request went out at `sent`; `false` when it came
   * with no validity left (it is then deleted by token: use a new one).
   */
  async #take(
    token: string,
    sent: number,
    fence: number,
    signal: AbortSignal,
    pending?: PendingHandover,
  ): Promise<boolean> {
    if (this.#settings.waitReplicas > 0) {
      await this.#awaitReplicas(token, signal);
    }
    if (!Lease.fresh(sent, this.#settings.ttl)) {
      this.#forget(token);
      return false;
    }
    this.#grant(token, sent, this.#settings.fencing ? fence : undefined);
    if (pending) {
      // Handed over before Redis answered: the answer renews the lease from
      // the script's send time, or ends it if the holder's key was gone.
      const lease = this.#lease!;
      const { ttl } = this.#settings;
      pending.code.then((code) => {
        if (code === 1) lease.extended(pending.sent, ttl);
        else {
          lease.lose(
            code === 0
              ? "its key was gone when it was handed over"
              : "another owner held its key when it was handed over",
          );
        }
      }, noop);
    }
    return true;
  }

  // WAIT must follow the script on the same connection, since it counts the
  // replicas that have every write that connection made so far.
  async #awaitReplicas(token: string, signal: AbortSignal): Promise<void> {
    let acknowledged: number;
    try {
      const call = this.#client.deadbolt!.wait!(
        this.#settings.waitReplicas,
        this.#settings.replicaTimeout,
        this.key,
      );
      [acknowledged] = toIntegers(
        await this.#settle(call, signal, this.#settings.replicaTimeout),
        1,
      );
    } catch (error) {
      this.#forget(token);
      throw error;
    }
    if (acknowledged < this.#settings.waitReplicas) {
      this.#forget(token);
      throw new LockReplicationError(
        this.name,
        acknowledged,
        this.#settings.waitReplicas,
      );
    }
  }

  #settle(
    call: Promise<unknown>,
    signal?: AbortSignal,
    extra = 0,
  ): Promise<unknown> {
    const timeout = this.#settings.commandTimeout + extra;
    return settle(call, {
      timeout,
      signal,
      onTimeout: () =>
        new DOMException(
          `Redis did not answer within ${timeout} ms (lock '${this.name}')`,
          "TimeoutError",
        ),
    });
  }

  #forget(token: string): void {
    runScript(this.#client, RELEASE, [this.key], [token]).then(noop, noop);
  }

  #grant(token: string, sent: number, fence: number | undefined): void {
    this.#token = token;
    this.#fence = fence;
    this.#acquired = true;
    if (this.#controller.signal.aborted) {
      this.#controller = new AbortController();
    }
    const controller = this.#controller;
    const { commandTimeout } = this.#settings;
    this.#lease = new Lease(sent, {
      ...this.#settings,
      extend: async (ttl, timeout) => {
        const call = runScript(this.#client, EXTEND, [this.key], [
          token,
          String(ttl),
        ]);
        const reply = await settle(call, {
          timeout,
          background: true,
          onTimeout: () =>
            new DOMException(
              `Redis did not answer within ${timeout} ms (commandTimeout ${commandTimeout})`,
              "TimeoutError",
            ),
        });
        return toIntegers(reply, 1)[0];
      },
      onLost: (message, cause) => {
        existingQueue(this.#client, this.key)?.lost(this);
        controller.abort(
          new LockLostError(
            this.name,
            message,
            cause === undefined ? undefined : { cause },
          ),
        );
      },
    });
  }
}
