import type { Lifecycle } from "./_lifecycle.ts";
import type { AcquireOptions } from "./options.ts";

/**
 * What every hold of deadbolt is, whatever its kind: a {@linkcode Lock}, a
 * {@linkcode Redlock}, a {@linkcode Semaphore} permit, a
 * {@linkcode ReadWriteHold}, a {@linkcode MultiLock}. Each has a lease that
 * renews itself while held, an `AbortSignal` that tells when the hold is
 * lost, and `await using`; write code against `LockHandle` to take any of
 * them.
 *
 * @example Work that any kind of hold can protect
 * ```ts
 * import type { LockHandle } from "@deadbolt/deadbolt";
 *
 * async function guarded(hold: LockHandle, work: (signal: AbortSignal) => Promise<void>) {
 *   if (!hold.held) throw new Error("not held");
 *   await work(hold.signal);
 * }
 * ```
 */
export abstract class LockHandle implements AsyncDisposable {
  #life: Lifecycle;

  /**
   * Built by each kind of lock around its lifecycle (internal).
   *
   * @param life The hold's lifecycle.
   */
  protected constructor(life: Lifecycle) {
    this.#life = life;
  }

  /**
   * The token that marks this hold in Redis, from `crypto.randomUUID()`;
   * new for each acquisition.
   */
  get token(): string {
    return this.#life.token;
  }

  /**
   * Whether this handle holds now: acquired, not released, not lost, and its
   * validity not run out.
   */
  get held(): boolean {
    return this.#life.held;
  }

  /**
   * Aborts with a {@linkcode LockLostError} when the hold can no longer be
   * guaranteed, before `validUntil` passes. It does not abort on `release()`.
   * A handle acquired again after a loss gets a new signal.
   */
  get signal(): AbortSignal {
    return this.#life.signal;
  }

  /**
   * The fencing token of the current acquisition, where this kind issues one
   * (`fencing: true` on a `Lock`, a `Semaphore`, a `ReadWriteLock`: a
   * writer's own, a reader's last writer's); else `undefined`.
   */
  get fence(): number | undefined {
    return this.#life.fence;
  }

  /**
   * The monotonic time (`performance.now()` ms) until which the hold is
   * guaranteed: send time of the last successful acquisition or renewal,
   * plus `ttl`, minus 1% of `ttl` + 2 ms for clock drift. `0` before
   * acquiring.
   */
  get validUntil(): number {
    return this.#life.validUntil;
  }

  /**
   * Waits up to `timeout` ms for the hold.
   *
   * @param options Wait options; defaults come from the constructor.
   * @returns When held, with validity left.
   * @throws {LockTimeoutError} when others held it for the whole wait.
   * @throws {LockKeyError} when a key holds a value deadbolt did not write.
   * @throws {Error} when this handle already holds or is acquiring.
   * @throws {TypeError} on bad options, before any Redis command.
   * @throws {RangeError} on an out-of-range option, before any Redis command.
   */
  acquire(options?: AcquireOptions): Promise<void> {
    return this.#life.acquire(options);
  }

  /**
   * Makes one attempt to acquire the hold.
   *
   * @param options A `signal` that cancels the attempt.
   * @returns `true` when held now, `false` when others hold it.
   * @throws {LockKeyError} when a key holds a value deadbolt did not write.
   */
  tryAcquire(options: Pick<AcquireOptions, "signal"> = {}): Promise<boolean> {
    return this.#life.tryAcquire(options);
  }

  /**
   * Renews the lease to `ttl` ms from now, if the hold is still this
   * handle's. It never acquires it again.
   *
   * @param ttl The new lease length in ms; the handle's `ttl` by default.
   * @returns `true` when renewed; `false` when the hold was lost (then
   * `signal` has aborted) or released meanwhile.
   * @throws {Error} when this handle has not acquired or has released.
   * @throws {RangeError} when `ttl` is out of range.
   */
  extend(ttl?: number): Promise<boolean> {
    return this.#life.extend(ttl);
  }

  /**
   * Stops renewal and ends the hold in Redis if it is still this handle's
   * (never another owner's), waking waiters. Calling it again is a no-op;
   * calling it while `acquire()` waits cancels that wait.
   *
   * @returns `true` when this call ended this handle's own hold; `false`
   * when the lease had ended, others hold it, or there was nothing to
   * release.
   */
  release(): Promise<boolean> {
    return this.#life.release();
  }

  /**
   * Releases the hold if this handle has it, for `await using`.
   *
   * @returns When released; rejects with the Redis error if release failed.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#life.release();
  }
}
