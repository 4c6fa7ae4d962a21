import { backoff } from "./backoff.ts";
import { now } from "./_timers.ts";
import { Alarm } from "./_deadlines.ts";
import { type Extension, Extensions } from "./_extensions.ts";
import type { Loss, RenewalOutcome } from "./_telemetry.ts";

const DRIFT_FACTOR = 0.01;

/**
 * How long ownership is guaranteed after a lease of `ttl` ms was granted or
 * renewed, counted from the request's send time: Redis expires keys with
 * 1 ms precision and clocks drift, so 1% of ttl + 2 ms come off.
 */
export const validity = (ttl: number): number => ttl - (ttl * DRIFT_FACTOR + 2);

// Loss is declared this long before validity runs out, so that a timer
// firing a few ms late still aborts in time.
const lossMargin = (ttl: number): number => Math.min(25, validity(ttl) / 10);

/** What a {@linkcode Lease} needs from its lock. */
export interface LeaseOptions {
  /** The lease length in ms. */
  ttl: number;
  /** Renew while held. */
  autoExtend: boolean;
  /** How often to renew, in ms. */
  renewInterval: number;
  /** Backoff bounds for retrying a failed renewal. */
  retryDelay: number;
  /** Backoff bounds for retrying a failed renewal. */
  maxRetryDelay: number;
  /** How long one renewal call may take, in ms. */
  commandTimeout: number;
  /**
   * Whether the client runs calls in the order they are sent (see
   * `ClientHooks.ordered`): a renewal given up on then ran before any sent
   * after it, if at all.
   */
  ordered?: boolean;
  /** Renews the lease to `ttl` ms from now, giving up after `timeout` ms. */
  extend(ttl: number, timeout: number): Promise<Renewal>;
  /**
   * Told of each background renewal: `late` when it was sent with less
   * than half the validity that a renewal on time has left.
   */
  onRenewal?(outcome: RenewalOutcome): void;
  /** Called once, when ownership is lost: why, and whether it `expired` here. */
  onLost(message: string, cause: unknown, loss: Loss): void;
}

/** A renewal's outcome: renewed, or lost and why. */
export type Renewal =
  | { readonly renewed: true }
  | { readonly renewed: false; readonly lost: string };

/** A successful renewal. */
export const RENEWED: Renewal = { renewed: true };

/**
 * One acquisition's lease: it knows until when ownership is guaranteed,
 * renews it in the background, and declares it lost — a little before its
 * validity runs out, so that a timer firing a few ms late is still in time.
 * A lease that has ended (released or lost) stays ended.
 */
export class Lease {
  #options: LeaseOptions;
  #margin: number;
  // The scripts that may have set the key's expiry last: the lease holds
  // until the soonest of them ends (`_extensions.ts`).
  #extensions: Extensions;
  #validUntil = 0;
  #active = true;
  // At the next renewal or the loss deadline, whichever comes first.
  #alarm: Alarm;
  #renewAt = 0;
  // When the current renewal was first due (retries move #renewAt on).
  #dueAt = 0;
  #renewing = false;
  #failures = 0;
  #error: unknown;

  /** Starts a lease granted by a request sent at `sent` (monotonic ms). */
  constructor(sent: number, options: LeaseOptions) {
    this.#options = options;
    this.#alarm = new Alarm(this.#tick);
    this.#margin = lossMargin(options.ttl);
    this.#extensions = new Extensions(
      sent,
      validity(options.ttl),
      options.ordered === true,
    );
    this.#update();
  }

  /** Until when (monotonic ms) ownership is guaranteed. */
  get validUntil(): number {
    return this.#validUntil;
  }

  /**
   * Whether the lease still holds. Past its validity (its timer late, the
   * event loop blocked) it is declared lost here and now.
   */
  isActive(): boolean {
    this.expireIfDue();
    return this.#active;
  }

  /** Declares the lease lost now if its validity has run out. */
  expireIfDue(): void {
    if (this.#active && now() >= this.#validUntil - this.#margin) {
      this.#expire();
    }
  }

  /** Whether a grant sent at `sent` would leave any validity now. */
  static fresh(sent: number, ttl: number): boolean {
    return now() < sent + validity(ttl) - lossMargin(ttl);
  }

  /**
   * An extension to `ttl` ms goes out at `sent`: where it would end the
   * lease sooner than now known, the lease ends that sooner from now on,
   * answered or not (Redis may run it though its answer is lost or late),
   * until an extension sent after it settled has run. Pass what it returns
   * to {@linkcode extended} or {@linkcode unanswered}.
   */
  extending(sent: number, ttl: number): Extension {
    const extension = this.#extensions.add(sent, validity(ttl));
    if (this.#active) this.#update();
    return extension;
  }

  /**
   * Records that `extension` ran: the ones settled before it went out no
   * longer count. Those still in flight then, or answered meanwhile, may
   * have run after it (on pooled clients), and still do.
   */
  extended(extension: Extension): void {
    if (!this.#active) return;
    this.#failures = 0;
    this.#extensions.ran(extension);
    this.#update();
  }

  /**
   * Records that `extension` failed: it may have run all the same (or, on
   * a client whose calls may overtake each other, may run yet).
   */
  unanswered(extension: Extension): void {
    this.#extensions.gaveUp(extension);
    if (this.#active) this.#update();
  }

  /**
   * The grant, handed over before Redis answered, was confirmed by its
   * script, which went out at `sent` and set `ttl` ms (unless an extension
   * since has run after it).
   */
  confirmed(sent: number, ttl: number): void {
    const grant = this.#extensions.grant;
    if (!this.#active || !this.#extensions.counts(grant)) return;
    const until = sent + validity(ttl);
    if (until <= grant.until) return;
    grant.sent = sent;
    grant.until = until;
    this.#failures = 0;
    this.#update();
  }

  /**
   * Renews as soon as it can (a renewal in flight first ends): an eager
   * handover's answer was lost, and Redis must say whether the key became
   * this lease's. Without `autoExtend` the lease runs out as usual.
   */
  renewNow(): void {
    if (!this.#active || !this.#options.autoExtend) return;
    this.#renewAt = Math.min(this.#renewAt, now());
    this.#arm();
  }

  /** Ends the lease without a loss (the lock is being released). */
  end(): void {
    this.#active = false;
    this.#alarm.clear();
  }

  /**
   * Ends the lease as lost, telling the lock once; `loss` says whether
   * Redis said so (`revoked`) or the lease ran out here (`expired`).
   */
  lose(message: string, cause?: unknown, loss: Loss = "revoked"): void {
    if (!this.#active) return;
    this.end();
    this.#options.onLost(message, cause, loss);
  }

  // The lease holds until the soonest end of the extensions that may have
  // run last. A renewal can only do away with settled ones: it is due by
  // theirs (one still in flight is waited for). One adrift stays, its end
  // moved on by each renewal that runs: one is due by it too, though not
  // sooner than `renewInterval` after the last.
  #update(): void {
    this.#validUntil = this.#extensions.validUntil();
    // Renew `renewInterval` into a normal lease (when that much less than a
    // normal lease remains, after an extension to another ttl).
    const { ttl, renewInterval } = this.#options;
    this.#renewAt = this.#dueAt = this.#extensions.renewalDue(
      validity(ttl) - renewInterval,
      renewInterval,
    );
    this.#arm();
  }

  // One alarm per lease (see `_deadlines.ts`): at the next renewal or at
  // the loss deadline. An alarm already set to ring no later is kept (an
  // extension only moves the times later; the early ring sets it again).
  #arm(): void {
    if (!this.#active) return this.#alarm.clear();
    const lossAt = this.#validUntil - this.#margin;
    const renew = this.#options.autoExtend && !this.#renewing;
    const at = renew ? Math.min(this.#renewAt, lossAt) : lossAt;
    if (this.#alarm.slot >= 0 && this.#alarm.at <= at) return;
    this.#alarm.set(at);
  }

  #tick = (): void => {
    if (!this.isActive()) return;
    const { autoExtend } = this.#options;
    if (autoExtend && !this.#renewing && now() >= this.#renewAt) {
      void this.#renew();
    }
    this.#arm();
  };

  async #renew(): Promise<void> {
    const {
      ttl,
      commandTimeout,
      retryDelay,
      maxRetryDelay,
      onRenewal,
    } = this.#options;
    this.#renewing = true;
    const sent = now();
    const left = this.#validUntil - this.#margin - sent;
    // Late: more than half the time between its due time and the loss
    // deadline had gone when it was sent.
    const late = left < (this.#validUntil - this.#margin - this.#dueAt) / 2;
    const extension = this.extending(sent, ttl);
    try {
      const renewal = await this.#options.extend(
        ttl,
        Math.max(1, Math.min(commandTimeout, left)),
      );
      if (renewal.renewed) {
        onRenewal?.(late ? "late" : "on_time");
        this.extended(extension);
      } else this.lose(renewal.lost);
    } catch (error) {
      onRenewal?.("failed");
      // It may have run all the same: its end still counts. (No update:
      // the retry is due by the backoff, the renewal by when it was due.)
      this.#extensions.gaveUp(extension);
      this.#error = error;
      this.#renewAt = now() +
        backoff(this.#failures++, retryDelay, maxRetryDelay);
    } finally {
      this.#renewing = false;
      this.#arm();
    }
  }

  #expire(): void {
    // A renewal still in flight at the deadline is as good as timed out.
    const cause = this.#renewing
      ? new DOMException(
        "A renewal was unanswered at the deadline",
        "TimeoutError",
      )
      : this.#error;
    this.lose(
      this.#options.autoExtend
        ? "its lease ran out before a renewal succeeded"
        : "its lease ran out (autoExtend is off)",
      cause,
      "expired",
    );
  }
}
