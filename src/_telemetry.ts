/**
 * deadbolt's OpenTelemetry metrics and spans, sent through whatever
 * OpenTelemetry implementation the process has registered, with no
 * dependency. Every copy of `@opentelemetry/api` 1.x keeps the registered
 * providers in one global slot, `globalThis[Symbol.for("opentelemetry.js.api.1")]`,
 * so that libraries bundling different copies of the API share them, and
 * Deno fills that slot at startup under `OTEL_DENO=true`. deadbolt looks in
 * the slot at each acquisition and grant: with nothing registered that is
 * the whole cost, and an SDK started after deadbolt was loaded counts from
 * then on. What the implementation throws is swallowed (see `guarded`).
 *
 * The names and units are listed in `docs/observing.md`.
 */

import { VERSION } from "./_version.ts";

/** The API's global slot, named by its major version. */
const API_SLOT = Symbol.for("opentelemetry.js.api.1");
const SCOPE = "@deadbolt/deadbolt";

/** Attribute values, as the API takes them. */
export type Attributes = Record<string, string | number | boolean>;

// What deadbolt uses of the API's interfaces, structurally.
interface MeterProvider {
  getMeter(name: string, version?: string): Meter;
}
interface InstrumentOptions {
  description?: string;
  unit?: string;
  advice?: { explicitBucketBoundaries?: number[] };
}
interface Meter {
  createHistogram(name: string, options?: InstrumentOptions): Histogram;
  createCounter(name: string, options?: InstrumentOptions): Counter;
  createObservableUpDownCounter(
    name: string,
    options?: InstrumentOptions,
  ): Observable;
}
interface Observable {
  addCallback(
    callback: (result: {
      observe(value: number, attributes?: Attributes): void;
    }) => void,
  ): void;
}
interface Histogram {
  record(value: number, attributes?: Attributes): void;
}
interface Counter {
  add(value: number, attributes?: Attributes): void;
}
interface TracerProvider {
  getTracer(name: string, version?: string): Tracer;
}
interface Tracer {
  startSpan(name: string, options?: { attributes?: Attributes }): Span;
}
/** A span, as the API defines it (the part deadbolt uses). */
export interface Span {
  setAttribute(key: string, value: string | number | boolean): unknown;
  addEvent(name: string, attributes?: Attributes): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  end(): void;
}
interface Registered {
  metrics?: MeterProvider;
  trace?: TracerProvider;
}

/** The span status code for an error (`SpanStatusCode.ERROR`). */
const ERROR = 2;

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

// Wait-time buckets in seconds: an uncontended acquisition takes a round
// trip (well under a millisecond on a LAN), a contended one up to `timeout`.
const WAIT_BUCKETS = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
];
// Hold-time buckets in seconds: from a quick critical section to a job.
const HOLD_BUCKETS = [
  0.001,
  0.005,
  0.01,
  0.05,
  0.1,
  0.5,
  1,
  5,
  10,
  30,
  60,
  300,
  900,
  3600,
];

/** deadbolt's instruments on one meter provider. */
class Instruments {
  readonly wait: Histogram;
  readonly hold: Histogram;
  readonly acquisitions: Counter;
  readonly timeouts: Counter;
  readonly losses: Counter;
  readonly renewals: Counter;
  readonly handovers: Counter;

  constructor(meter: Meter) {
    this.wait = meter.createHistogram("deadbolt.lock.wait.duration", {
      description:
        "How long acquire() took, from the call to its outcome, by outcome.",
      unit: "s",
      advice: { explicitBucketBoundaries: WAIT_BUCKETS },
    });
    this.hold = meter.createHistogram("deadbolt.lock.hold.duration", {
      description: "How long holds lasted, from the grant to their end.",
      unit: "s",
      advice: { explicitBucketBoundaries: HOLD_BUCKETS },
    });
    this.acquisitions = meter.createCounter("deadbolt.lock.acquisitions", {
      description: "Holds granted.",
      unit: "{acquisition}",
    });
    this.timeouts = meter.createCounter("deadbolt.lock.timeouts", {
      description: "Waits that gave up when their timeout ran out.",
      unit: "{timeout}",
    });
    this.losses = meter.createCounter("deadbolt.lock.losses", {
      description: "Holds whose ownership was lost before their release.",
      unit: "{loss}",
    });
    this.renewals = meter.createCounter("deadbolt.lock.renewals", {
      description: "Background renewals of held leases, by outcome.",
      unit: "{renewal}",
    });
    this.handovers = meter.createCounter("deadbolt.lock.handovers", {
      description: "Holds that passed from a holder to a waiter, by type.",
      unit: "{handover}",
    });
    // Observed when the SDK collects: a wait costs two additions to a
    // number, not two recordings.
    meter.createObservableUpDownCounter("deadbolt.lock.waiters", {
      description: "acquire() calls waiting now.",
      unit: "{waiter}",
    }).addCallback((result) => {
      for (const { attributes, count } of waiting.values()) {
        result.observe(count, attributes);
      }
    });
  }
}

/**
 * What handles of one set of attributes share: the acquire() calls of
 * theirs waiting now, and the attribute sets recorded with one more
 * attribute (an outcome, a reason), built once each.
 */
interface Shared {
  readonly attributes: Attributes;
  count: number;
  readonly variants: Map<string, Attributes>;
}

// Per set of handle attributes. Entries stay (at 0) once seen, so that the
// gauge reads 0 rather than vanishing.
const waiting = new Map<string, Shared>();

// Per provider; `null` for one that failed to make them (asked once).
const instrumentsOf = new WeakMap<MeterProvider, Instruments | null>();
const tracerOf = new WeakMap<TracerProvider, Tracer | null>();

function registered(): Registered | undefined {
  return (globalThis as Record<symbol, Registered | undefined>)[API_SLOT];
}

/**
 * Whether an OpenTelemetry implementation is registered: callers check it
 * before building what a record needs, so that none costs nothing more.
 */
export function recording(): boolean {
  const api = registered();
  // The API's disable() deletes the providers and keeps the slot.
  return api !== undefined &&
    (api.metrics !== undefined || api.trace !== undefined);
}

/**
 * Runs `record`, swallowing what it throws: a failing OpenTelemetry
 * implementation must never change what a lock does.
 */
function guarded(record: () => void): void {
  try {
    record();
  } catch {
    // Telemetry is lost; the lock is not.
  }
}

function instruments(provider: MeterProvider | undefined) {
  if (!provider) return undefined;
  let found = instrumentsOf.get(provider);
  if (found === undefined) {
    try {
      found = new Instruments(provider.getMeter(SCOPE, VERSION));
    } catch {
      found = null;
    }
    instrumentsOf.set(provider, found);
  }
  return found ?? undefined;
}

function tracer(provider: TracerProvider | undefined) {
  if (!provider) return undefined;
  let found = tracerOf.get(provider);
  if (found === undefined) {
    try {
      found = provider.getTracer(SCOPE, VERSION);
    } catch {
      found = null;
    }
    tracerOf.set(provider, found);
  }
  return found ?? undefined;
}

/** What telemetry says about one handle: its kind, client and (opt-in) name. */
export class Subject {
  /** The kind of lock, as the span names say it: `lock`, `read lock`, … */
  readonly noun: string;
  /** Its entry in the waiters gauge, shared by handles of equal attributes. */
  readonly waiters: Shared;
  #attributes: Attributes;

  /**
   * `kind` and `client` are the `deadbolt.lock.kind` and `deadbolt.client`
   * attributes; `name`, when not empty, is `deadbolt.lock.name`.
   */
  constructor(noun: string, kind: string, client: string, name: string) {
    this.noun = noun;
    this.#attributes = {
      "deadbolt.lock.kind": kind,
      "deadbolt.client": client,
    };
    if (name !== "") this.#attributes["deadbolt.lock.name"] = name;
    const key = JSON.stringify([kind, client, name]);
    let entry = waiting.get(key);
    if (!entry) {
      entry = { attributes: this.#attributes, count: 0, variants: new Map() };
      waiting.set(key, entry);
    }
    this.waiters = entry;
    this.#attributes = entry.attributes;
  }

  /** The handle's attributes, with `extra`. */
  with(extra?: Attributes): Attributes {
    return extra ? { ...this.#attributes, ...extra } : this.#attributes;
  }

  /** The handle's attributes with `key` set to `value`, built once. */
  and(key: string, value: string): Attributes {
    const { variants } = this.waiters;
    const id = `${key}=${value}`;
    let found = variants.get(id);
    if (!found) {
      variants.set(id, found = { ...this.#attributes, [key]: value });
    }
    return found;
  }
}

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
    guarded(() => this.#record(outcome, error));
  }

  #record(outcome: Outcome, error: unknown): void {
    const attributes = outcome === "error"
      ? this.#subject.with({
        "deadbolt.acquire.outcome": outcome,
        "error.type": errorType(error),
      })
      : this.#subject.and("deadbolt.acquire.outcome", outcome);
    const found = this.#instruments;
    if (found) {
      found.wait.record((performance.now() - this.#started) / 1000, attributes);
      if (outcome === "timeout") found.timeouts.add(1, this.#subject.with());
    }
    const span = this.#span;
    if (span) {
      span.setAttribute("deadbolt.acquire.outcome", outcome);
      if (outcome === "timeout" || outcome === "error") {
        span.setAttribute("error.type", errorType(error));
        span.setStatus({ code: ERROR, message: messageOf(error) });
      }
      span.end();
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
    guarded(() => {
      this.#instruments?.losses.add(
        1,
        this.#subject.and("deadbolt.loss.reason", loss),
      );
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
    guarded(() => {
      this.#instruments?.hold.record(
        (performance.now() - this.#started) / 1000,
        this.#subject.and("deadbolt.hold.end", how),
      );
      this.#span?.setAttribute("deadbolt.hold.end", how);
      this.#span?.end();
    });
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
  const api = registered();
  if (!api) return undefined;
  try {
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
  const api = registered();
  if (!api) return undefined;
  try {
    const found = instruments(api.metrics);
    const attributes = subject.with(
      fence === undefined ? undefined : { "deadbolt.lock.fence": fence },
    );
    const span = tracer(api.trace)?.startSpan(`hold ${subject.noun}`, {
      attributes: handover
        ? { ...attributes, "deadbolt.handover.type": handover }
        : attributes,
    });
    if (!found && !span) return undefined;
    if (found) {
      found.acquisitions.add(1, subject.with());
      if (handover) {
        found.handovers.add(1, subject.and("deadbolt.handover.type", handover));
      }
    }
    return new HoldRecord(subject, found, span);
  } catch {
    return undefined;
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
