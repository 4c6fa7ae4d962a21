import { LockLostError } from "./errors.ts";
import { Lease } from "./_lease.ts";
import type { Grant, LifecycleSettings, Store } from "./_store.ts";
import {
  type Handover,
  type HoldRecord,
  recordHold,
  recording,
  type Subject,
} from "./_telemetry.ts";

/**
 * What a handle holds from a grant to its release or loss, for its
 * `Lifecycle`: the token and the fence the grant came with, the lease that
 * renews it, the `signal` that tells of its loss, and its telemetry record.
 * One per handle; each grant starts over.
 */
export class Holding {
  /** Granted and not yet released: a release must ask Redis. */
  acquired = false;
  /** The current or last grant's lease; ended once released or lost. */
  lease: Lease | undefined;
  /** The fence of the current or last grant, if one was issued. */
  fence: number | undefined;
  /** The current hold's record, while a telemetry provider is registered. */
  record: HoldRecord | undefined;
  // Made when first read, if that comes before the first grant.
  #token: string | undefined;
  // `signal`'s controller, made when first needed (read, or a loss).
  #controller: AbortController | undefined;
  #name: string;
  #settings: LifecycleSettings;
  #store: Store;
  #subject: () => Subject;

  /**
   * What a handle on `name` holds, renewed through `store`; `subject` is
   * the handle's telemetry subject, made when first needed.
   */
  constructor(
    name: string,
    settings: LifecycleSettings,
    store: Store,
    subject: () => Subject,
  ) {
    this.#name = name;
    this.#settings = settings;
    this.#store = store;
    this.#subject = subject;
  }

  /** The token of the current or last grant (made up before the first). */
  get token(): string {
    // Read while held, it may be passed on (to `adopt` elsewhere): Redis
    // must know it by then.
    if (this.acquired) this.#store.reveal?.();
    return this.#token ??= crypto.randomUUID();
  }

  /** The token the current or last grant came with (read while acquired). */
  get granted(): string | undefined {
    return this.#token;
  }

  /** Whether the lease holds now. */
  get held(): boolean {
    return this.lease?.isActive() ?? false;
  }

  /** Aborts with a {@linkcode LockLostError} when ownership is lost. */
  get signal(): AbortSignal {
    // The lease's timer may be late (the event loop blocked): a signal read
    // past the lease's validity must have aborted already.
    this.lease?.expireIfDue();
    return (this.#controller ??= new AbortController()).signal;
  }

  /** Until when (monotonic ms) ownership is guaranteed; `0` before a grant. */
  get validUntil(): number {
    return this.lease?.validUntil ?? 0;
  }

  /** Starts the lease of a grant (the store calls it; see {@linkcode Grant}). */
  readonly grant: Grant = (token, sent, fence, handover?: Handover) => {
    // The last hold's record is open here when its release failed and the
    // handle moved on, leaving its key to expire: its span ends now. (One
    // whose release is still under way is ended by that release.)
    if (this.acquired) this.record?.end("lost");
    const record = this.record = recording()
      ? recordHold(this.#subject(), handover, fence)
      : undefined;
    this.#token = token;
    this.fence = fence;
    this.acquired = true;
    // A new grant after a loss gets a new signal.
    if (this.#controller?.signal.aborted) this.#controller = undefined;
    // The handle's settings hold the lease's (ttl, renewals, retries, the
    // call's timeout); the lease reads only those.
    const lease: Lease = new Lease(sent, {
      ...this.#settings,
      ordered: this.#store.ordered,
      extend: (ttl, timeout) =>
        this.#store.extend(token, ttl, { timeout, background: true }),
      onRenewal: record && ((outcome) => record.renewal(outcome)),
      onLost: (message, cause, loss) => {
        this.#store.lost?.(lease);
        // This grant's: only an active lease is lost, and the next grant
        // comes after it has ended.
        (this.#controller ??= new AbortController()).abort(
          new LockLostError(
            this.#name,
            message,
            cause === undefined ? undefined : { cause },
          ),
        );
        record?.lost(loss, message);
      },
    });
    return this.lease = lease;
  };
}
