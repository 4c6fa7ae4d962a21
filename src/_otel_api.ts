/**
 * The OpenTelemetry API as deadbolt reaches it without a dependency: the
 * providers that every copy of `@opentelemetry/api` 1.x registers in one
 * global slot (and that Deno registers there under `OTEL_DENO=true`), the
 * part of their interfaces deadbolt uses, described structurally, and
 * deadbolt's instruments on a meter provider. Nothing here throws into a
 * lock: see {@linkcode guarded}.
 *
 * @module
 */

import { VERSION } from "./_version.ts";

/** The API's global slot, named by its major version. */
const API_SLOT = Symbol.for("opentelemetry.js.api.1");
const SCOPE = "@deadbolt/deadbolt";

/** Attribute values, as the API takes them. */
export type Attributes = Record<string, string | number | boolean>;

// What deadbolt uses of the API's interfaces, structurally.
export interface MeterProvider {
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
export interface TracerProvider {
  getTracer(name: string, version?: string): Tracer;
}
export interface Tracer {
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
export const ERROR = 2;

// Histogram bucket bounds, in seconds: `steps` in each decade from `from`
// up to `to`.
function buckets(from: number, to: number, steps: number[]): number[] {
  const bounds: number[] = [];
  for (let decade = from; decade <= to; decade *= 10) {
    for (const step of steps) {
      const bound = Number((decade * step).toPrecision(3));
      if (bound <= to) bounds.push(bound);
    }
  }
  return bounds;
}

// Waits: from an uncontended acquisition (a round trip, well under a
// millisecond on a LAN) to a contended one of a minute: 100 µs to 50 s.
const WAIT_BUCKETS = buckets(1e-4, 60, [1, 2.5, 5]);
// Holds: from a quick critical section to a job: 1 ms to 1000 s.
const HOLD_BUCKETS = buckets(1e-3, 3_600, [1, 5]);

/** deadbolt's instruments on one meter provider. */
export class Instruments {
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
    const counter = (name: string, unit: string, description: string) =>
      meter.createCounter(`deadbolt.lock.${name}`, { description, unit });
    this.acquisitions = counter(
      "acquisitions",
      "{acquisition}",
      "Holds granted.",
    );
    this.timeouts = counter(
      "timeouts",
      "{timeout}",
      "Waits that gave up when their timeout ran out.",
    );
    this.losses = counter(
      "losses",
      "{loss}",
      "Holds whose ownership was lost before their release.",
    );
    this.renewals = counter(
      "renewals",
      "{renewal}",
      "Background renewals of held leases, by outcome.",
    );
    this.handovers = counter(
      "handovers",
      "{handover}",
      "Holds that passed from a holder to a waiter, by type.",
    );
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
export interface Shared {
  readonly attributes: Attributes;
  count: number;
  readonly variants: Map<string, Attributes>;
}

// Per set of handle attributes. Entries stay (at 0) once seen, so that the
// gauge reads 0 rather than vanishing.
export const waiting = new Map<string, Shared>();

// Per provider; `null` for one that failed to make them (asked once).
const instrumentsOf = new WeakMap<MeterProvider, Instruments | null>();
const tracerOf = new WeakMap<TracerProvider, Tracer | null>();

export function registered(): Registered | undefined {
  return (globalThis as Record<symbol, Registered | undefined>)[API_SLOT];
}

/**
 * Whether an OpenTelemetry implementation is registered: callers check it
 * before building what a record needs, so that none costs nothing more.
 */
export function recording(): boolean {
  // A slot set to something else, or whose getters throw, records nothing:
  // it must never change what a lock does.
  try {
    const api = registered();
    // The API's disable() deletes the providers and keeps the slot.
    return api != null &&
      (api.metrics !== undefined || api.trace !== undefined);
  } catch {
    return false;
  }
}

/**
 * Runs `record`, swallowing what it throws: a failing OpenTelemetry
 * implementation must never change what a lock does.
 */
export function guarded(record: () => void): void {
  try {
    record();
  } catch {
    // Telemetry is lost; the lock is not.
  }
}

export function instruments(provider: MeterProvider | undefined) {
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

export function tracer(provider: TracerProvider | undefined) {
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
