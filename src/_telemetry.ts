/**
 * What deadbolt records of a handle's life, for `Lifecycle`: a wait (its
 * outcome, its time, the waiters gauge, an `acquire` span) and a hold (its
 * time, how it ended, renewals, a loss, a `hold` span). Records exist only
 * while an OpenTelemetry implementation is registered (`_otel_api.ts` says
 * how deadbolt finds it): with none, the whole cost is a look at the API's
 * global slot at each acquisition and grant, and an SDK started later
 * counts from then on.
 *
 * The names, units and attributes are listed in `docs/observing.md`.
 */

import { LockTimeoutError } from "./errors.ts";
import {
  ERROR,
  guarded,
  type Instruments,
  instruments,
  registered,
  type Span,
  tracer,
} from "./_otel_api.ts";
import type { Subject } from "./_telemetry_subject.ts";

export { recording } from "./_otel_api.ts";
export { Subject } from "./_telemetry_subject.ts";

/** What a wait ended with: the `deadbolt.acquire.outcome` attribute. */
export type Outcome = "acquired" | "timeout" | "busy" | "cancelled" | "error";

/**
 * How a waiter got a lock that someone else held: handed over by a holder
 * of its process (`local`), handed over before Redis confirmed (`eager`),
 * or granted by Redis after a refusal (`remote`: the holder, in this
 * process or another, released through Redis).
 */
export type Handover = "local" | "eager" | "remote";

/** Why a hold was lost: its lease ran out here, or Redis said it was gone. */
export type Loss = "expired" | "revoked";

/** A background renewal's outcome; `late` left less than half the usual margin. */
export type RenewalOutcome = "on_time" | "late" | "failed";

/** How a hold ended. */
export type HoldEnd = "released" | "lost" | "detached";

/**
 * One acquire() under way, when a provider is registered: its span and
 * its place in the waiters gauge. `end` records the outcome, once.
 */
export class WaitRecord {
  #subject: Subject;
  #instruments: Instruments | undefined;
  #span: Span | undefined;
  #started = performance.now();
  #waiting: boolean;
  #ended = false;

  constructor(
    subject: Subject,
    found: Instruments | undefined,
    span: Span | undefined,
    waiting: boolean,
  ) {
    this.#subject = subject;
    this.#instruments = found;
    this.#span = span;
    this.#waiting = waiting;
    if (waiting) subject.waiters.count++;
  }

  /** Records the wait's outcome, once; `error` is what it failed with. */
  end(outcome: Outcome, error?: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#waiting) this.#subject.waiters.count--;
    // Each part on its own: a recording that throws must not keep the
    // span from ending.
    if (this.#instruments) guarded(() => this.#measure(outcome, error));
    const span = this.#span;
    if (span) endSpan(span, () => this.#annotate(span, outcome, error));
  }

  #measure(outcome: Outcome, error: unknown): void {
    const attributes = outcome === "error"
      ? this.#subject.with({
        "deadbolt.acquire.outcome": outcome,
        "error.type": errorType(error),
      })
      : this.#subject.and("deadbolt.acquire.outcome", outcome);
    const found = this.#instruments!;
    found.wait.record((performance.now() - this.#started) / 1000, attributes);
    if (outcome === "timeout") found.timeouts.add(1, this.#subject.with());
  }

  #annotate(span: Span, outcome: Outcome, error: unknown): void {
    span.setAttribute("deadbolt.acquire.outcome", outcome);
    if (outcome === "timeout" || outcome === "error") {
      span.setAttribute("error.type", errorType(error));
      span.setStatus({ code: ERROR, message: messageOf(error) });
    }
  }
}

/**
 * One hold, when a provider is registered: its span, from the grant to its
 * end, and its duration.
 */
export class HoldRecord {
  #subject: Subject;
  #instruments: Instruments | undefined;
  #span: Span | undefined;
  #started = performance.now();
  #ended = false;

  constructor(
    subject: Subject,
    found: Instruments | undefined,
    span: Span | undefined,
  ) {
    this.#subject = subject;
    this.#instruments = found;
    this.#span = span;
  }

  /** Counts a background renewal of the hold's lease, while it lasts. */
  renewal(outcome: RenewalOutcome): void {
    if (this.#ended) return;
    guarded(() =>
      this.#instruments?.renewals.add(
        1,
        this.#subject.and("deadbolt.renewal.outcome", outcome),
      )
    );
  }

  /** Ends the hold as lost: the loss counter, and an event on its span. */
  lost(loss: Loss, message: string): void {
    if (this.#ended) return;
    guarded(() =>
      this.#instruments?.losses.add(
        1,
        this.#subject.and("deadbolt.loss.reason", loss),
      )
    );
    guarded(() => {
      this.#span?.addEvent("deadbolt.lock.lost", {
        "deadbolt.loss.reason": loss,
        "deadbolt.loss.message": message,
      });
      this.#span?.setStatus({ code: ERROR, message: `lost: ${message}` });
    });
    this.end("lost");
  }

  /** Records the hold's end, once. */
  end(how: HoldEnd): void {
    if (this.#ended) return;
    this.#ended = true;
    guarded(() =>
      this.#instruments?.hold.record(
        (performance.now() - this.#started) / 1000,
        this.#subject.and("deadbolt.hold.end", how),
      )
    );
    const span = this.#span;
    if (span) endSpan(span, () => span.setAttribute("deadbolt.hold.end", how));
  }
}

/**
 * Starts recording an acquire() of `subject` (one that may wait when
 * `waiting`); `undefined` when no provider is registered.
 */
export function recordWait(
  subject: Subject,
  waiting: boolean,
): WaitRecord | undefined {
  try {
    const api = registered();
    if (!api) return undefined;
    const found = instruments(api.metrics);
    const span = tracer(api.trace)?.startSpan(`acquire ${subject.noun}`, {
      attributes: subject.with(),
    });
    if (!found && !span) return undefined;
    return new WaitRecord(subject, found, span, waiting);
  } catch {
    return undefined;
  }
}

/**
 * Starts recording a hold of `subject`, granted by `handover` when someone
 * held it before; `undefined` when no provider is registered.
 */
export function recordHold(
  subject: Subject,
  handover: Handover | undefined,
  fence: number | undefined,
): HoldRecord | undefined {
  let found: Instruments | undefined;
  let span: Span | undefined;
  try {
    const api = registered();
    if (!api) return undefined;
    found = instruments(api.metrics);
    const attributes = subject.with(
      fence === undefined ? undefined : { "deadbolt.lock.fence": fence },
    );
    span = tracer(api.trace)?.startSpan(`hold ${subject.noun}`, {
      attributes: handover
        ? { ...attributes, "deadbolt.handover.type": handover }
        : attributes,
    });
  } catch {
    return undefined;
  }
  if (!found && !span) return undefined;
  // Past the span's start, nothing may throw: its record must end it.
  if (found) {
    const counters = found;
    guarded(() => {
      counters.acquisitions.add(1, subject.with());
      if (handover) {
        counters.handovers.add(
          1,
          subject.and("deadbolt.handover.type", handover),
        );
      }
    });
  }
  return new HoldRecord(subject, found, span);
}

/**
 * How a wait with `timeout` that failed with `error` after `waited` ms
 * ended; `cancelled` when its signal or a `release()` called it off.
 */
export function outcomeOf(
  error: unknown,
  timeout: number,
  cancelled: boolean,
  waited: number,
): Outcome {
  if (cancelled) return "cancelled";
  if (error instanceof LockTimeoutError) {
    return timeout === 0 ? "busy" : "timeout";
  }
  // A grant that came too late to leave any lease, or a call that Redis
  // left unanswered, once the wait's time has run out: the wait ran out.
  const late = error instanceof DOMException && error.name === "TimeoutError";
  return late && timeout > 0 && waited >= timeout ? "timeout" : "error";
}

// Ends `span` after `annotate`, even when that throws: a span started is
// ended once. What either throws is swallowed.
function endSpan(span: Span, annotate: () => void): void {
  try {
    annotate();
  } catch {
    // The span ends without its attributes.
  }
  try {
    span.end();
  } catch {
    // Telemetry is lost; the lock is not.
  }
}

function errorType(error: unknown): string {
  if (error instanceof Error || error instanceof DOMException) {
    return error.name;
  }
  return "_OTHER";
}

function messageOf(error: unknown): string {
  return error instanceof Error || error instanceof DOMException
    ? error.message
    : String(error);
}
