import { LockTimeoutError } from "./errors.ts";
import { Holding } from "./_holding.ts";
import type { LifecycleSettings, Store } from "./_store.ts";
import { now } from "./_timers.ts";
import { Stop, type StopSignal } from "./_stop.ts";
import { endOperation, startOperation } from "./_deadlines.ts";
import { outcomeOf, recording, recordWait, Subject } from "./_telemetry.ts";
import {
  checkInteger,
  checkOptionKeys,
  checkSignal,
  MAX_TIMER_MS,
} from "./_validate.ts";
import {
  type AcquireOptions,
  acquireSettings,
  MIN_TTL,
  NO_OPTIONS,
  type WaitSettings,
} from "./options.ts";

/**
 * The life of a lock handle, written once for every kind of lock; what a
 * kind does in Redis is its {@linkcode Store}.
 *
 * ```text
 * idle ─acquire()─▶ acquiring ─granted─▶ held ─release()─▶ released
 *   ▲                  │                   │
 *   └─ timed out, ─────┘                   └─ lease lost ─▶ lost
 *      failed, cancelled
 * ```
 *
 * - `acquire()` refuses while acquiring or held (not reentrant). From
 *   released or lost it starts over with a new token, after deleting a lost
 *   hold that may still sit in Redis (a failure there leaves it to expire).
 * - `release()` calls off a pending `acquire()` and waits for it to end,
 *   then releases the hold. If Redis fails, a later `release()` tries again.
 * - While held, the lease renews itself in the background; when ownership
 *   can no longer be guaranteed, `signal` aborts with a
 *   {@linkcode LockLostError} before `validUntil` passes. A handle acquired
 *   again after a loss gets a new signal; a release never aborts it.
 */
export class Lifecycle {
  /** The lock's name, as given. */
  readonly name: string;

  #store: Store;
  #settings: LifecycleSettings;
  #kind: Kind;
  // What telemetry says about this handle: built when first recorded.
  #subject: Subject | undefined;
  // What it holds: token, fence, lease, signal.
  #holding: Holding;
  // The acquire() in progress, and how to call it off.
  #pending: Pending | undefined;

  /**
   * A handle on `name` whose Redis side is `store`; validated settings;
   * `kind` is the kind of lock, in messages and telemetry.
   */
  constructor(
    name: string,
    settings: LifecycleSettings,
    store: Store,
    kind: Kind = "lock",
  ) {
    this.name = name;
    this.#kind = kind;
    this.#settings = settings;
    this.#store = store;
    this.#holding = new Holding(name, settings, store, () => this.#telemetry());
  }

  // `lock "name"`, `semaphore "name"`: built only for a message.
  #what(): string {
    return `${NOUNS[this.#kind]} ${JSON.stringify(this.name)}`;
  }

  #telemetry(): Subject {
    return this.#subject ??= new Subject(
      NOUNS[this.#kind],
      this.#kind,
      this.#store.clientKind,
      this.#settings.telemetryName,
    );
  }

  /** The token of the current or last acquisition. */
  get token(): string {
    return this.#holding.token;
  }

  /** Whether the handle owns the lock now. */
  get held(): boolean {
    return this.#holding.held;
  }

  /** Aborts with a {@linkcode LockLostError} when ownership is lost. */
  get signal(): AbortSignal {
    return this.#holding.signal;
  }

  /** The fence of the current acquisition, if one was issued. */
  get fence(): number | undefined {
    return this.#holding.fence;
  }

  /** Until when (monotonic ms) ownership is guaranteed; `0` before acquiring. */
  get validUntil(): number {
    return this.#holding.validUntil;
  }

  /** Waits for the lock (see `Lock.acquire`). */
  acquire(options: AcquireOptions = NO_OPTIONS): Promise<void> {
    // The handle's own wait: its settings were checked when it was made.
    if (options === NO_OPTIONS) {
      return this.#begin("acquire", undefined, this.#settings);
    }
    // Not async, so that an acquisition costs one promise layer less: what
    // throws here must reject instead.
    try {
      const { signal, ...wait } = acquireSettings(
        `Cannot acquire ${this.#what()}`,
        options,
        this.#settings,
      );
      return this.#begin("acquire", signal, wait);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Takes over the hold of `token` (see `Lock.adopt`): `true` when the key
   * held it and the lease now runs here.
   */
  async adopt(
    token: string,
    options: Pick<AcquireOptions, "signal"> = {},
  ): Promise<boolean> {
    const action = `Cannot adopt ${this.#what()}`;
    checkOptionKeys(action, options, ["signal"]);
    const signal = checkSignal(action, options.signal);
    if (typeof token !== "string" || token === "") {
      throw new TypeError(
        `${action} as 'token' must be a non-empty string: current value is ${
          token === "" ? '""' : typeof token
        }`,
      );
    }
    if (!this.#store.adopt) {
      throw new TypeError(`${action} as this kind of lock cannot be adopted`);
    }
    await this.#begin("adopt", signal, token);
    return this.held;
  }

  // Runs this handle's one pending acquisition: a wait by `how`, or the
  // adoption of the hold of the token `how`.
  async #begin(
    verb: "acquire" | "adopt",
    signal: AbortSignal | undefined,
    how: WaitSettings | string,
  ): Promise<void> {
    if (this.#pending) {
      throw new Error(
        `Cannot ${verb} ${this.#what()} as an acquire() of this handle is pending`,
      );
    }
    if (this.held) {
      throw new Error(
        `Cannot ${verb} ${this.#what()} as this handle holds it already (not reentrant)`,
      );
    }
    signal?.throwIfAborted();
    // An adoption is no wait: only its hold is recorded.
    const record = typeof how === "string" || !recording()
      ? undefined
      : recordWait(this.#telemetry(), how.timeout > 0);
    const started = record ? now() : 0;
    // release() calls it off, as does the caller's signal.
    const stop = new Stop(signal);
    // From the call's bound to the lease's alarm, one timer (`_deadlines.ts`).
    startOperation();
    // The usual case, one promise layer less: nothing to release first.
    const attempt = this.#holding.acquired
      ? this.#release().catch(noop).then(() => this.#attempt(how, stop))
      : this.#attempt(how, stop);
    this.#pending = { stop, attempt };
    try {
      await attempt;
      record?.end("acquired");
    } catch (error) {
      if (record) {
        const { timeout } = how as WaitSettings;
        const cancelled = stop.aborted;
        record.end(
          outcomeOf(error, timeout, cancelled, now() - started),
          error,
        );
      }
      throw error;
    } finally {
      this.#pending = undefined;
      stop.unfollow();
      endOperation();
    }
  }

  // The store's wait by `how`, or its adoption of the hold of the token `how`.
  #attempt(how: WaitSettings | string, stop: StopSignal): Promise<unknown> {
    // Called off while a lost hold's key was being deleted first.
    if (stop.aborted) return Promise.reject(stop.reason);
    try {
      const { grant } = this.#holding;
      return typeof how === "string"
        ? this.#store.adopt!(how, stop, grant)
        : this.#store.acquire(how, stop, grant);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** One attempt: `true` when held now, `false` when another owner holds it. */
  async tryAcquire(
    options: Pick<AcquireOptions, "signal"> = {},
  ): Promise<boolean> {
    checkOptionKeys(
      `Cannot acquire ${this.#what()}`,
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

  /** Renews the lease to `ttl` ms from now (see `Lock.extend`). */
  async extend(ttl: number = this.#settings.ttl): Promise<boolean> {
    const action = `Cannot extend ${this.#what()}`;
    checkInteger(action, "ttl", ttl, MIN_TTL, MAX_TIMER_MS);
    const holding = this.#holding;
    if (!holding.acquired) {
      throw new Error(`${action} as this handle does not hold it`);
    }
    const lease = holding.lease!;
    if (!lease.isActive()) return false;
    const extension = lease.extending(now(), ttl);
    let renewal;
    try {
      renewal = await this.#store.extend(holding.granted!, ttl, {
        timeout: this.#settings.commandTimeout,
      });
    } catch (error) {
      lease.unanswered(extension);
      throw error;
    }
    if (!lease.isActive()) return false;
    if (!renewal.renewed) {
      lease.lose(renewal.lost);
      return false;
    }
    lease.extended(extension);
    return true;
  }

  /**
   * Lets the hold go without touching Redis, for another handle to adopt
   * (see `Lock.detach`): returns its token.
   */
  detach(): string {
    const action = `Cannot detach ${this.#what()}`;
    if (this.#pending) {
      throw new Error(`${action} as an acquire() of this handle is pending`);
    }
    if (!this.held) {
      throw new Error(`${action} as this handle does not hold it`);
    }
    const holding = this.#holding;
    const lease = holding.lease!;
    holding.acquired = false;
    lease.end();
    holding.record?.end("detached");
    this.#store.lost?.(lease);
    return holding.granted!;
  }

  /** Calls off a pending `acquire()`, then releases the hold (see `Lock.release`). */
  release(): Promise<boolean> {
    const pending = this.#pending;
    // Not async when nothing is pending: a release costs a promise layer less.
    return pending ? this.#callOff(pending) : this.#release();
  }

  async #callOff(pending: Pending): Promise<boolean> {
    pending.stop.abort(
      new DOMException(
        `${this.#what()} was released while acquire() waited`,
        "AbortError",
      ),
    );
    // Once the wait has ended (and closed what it opened); if it got the
    // lock just before, that hold is released below.
    await pending.attempt.then(noop, noop);
    return await this.#release();
  }

  async #release(): Promise<boolean> {
    const holding = this.#holding;
    if (!holding.acquired) return false;
    holding.acquired = false;
    const lease = holding.lease!;
    const record = holding.record;
    // From the lease's alarm to the call's bound, one timer (`_deadlines.ts`).
    startOperation();
    try {
      // A lease past its validity is lost, and says so, even when the loss
      // is first noticed here (say, after a long block of the event loop).
      const valid = lease.isActive();
      lease.end();
      const released = await this.#store.release(
        holding.granted!,
        lease,
        valid,
      );
      // A valid hold whose key was gone or another's at its release was
      // lost all the same, only noticed now. (One already lost has ended.)
      if (released) record?.end("released");
      else {record?.lost(
          "revoked",
          "its key was gone or another owner's at its release",
        );}
      return released;
    } catch (error) {
      // Let a later release() try again, unless the handle moved on (it
      // acquired again meanwhile): the key is then left to expire.
      if (holding.lease === lease) holding.acquired = true;
      else record?.end("lost");
      throw error;
    } finally {
      endOperation();
    }
  }
}

const noop = (): void => {};

/** The acquire() in progress, and how to call it off. */
interface Pending {
  stop: Stop;
  attempt: Promise<unknown>;
}

/**
 * The kinds of lock, as telemetry's `deadbolt.lock.kind` names them; the
 * handles' messages say {@linkcode NOUNS}.
 */
export type Kind =
  | "lock"
  | "redlock"
  | "semaphore"
  | "read"
  | "write"
  | "multi";

const NOUNS: Record<Kind, string> = {
  lock: "lock",
  redlock: "lock",
  semaphore: "semaphore",
  read: "read lock",
  write: "write lock",
  multi: "locks",
};
