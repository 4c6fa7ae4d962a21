/**
 * A hand-made OpenTelemetry implementation in the API's global slot, for
 * tests that need one to misbehave or to be read span by span: its
 * instruments record nothing, its spans keep their attributes and count
 * their ends. Disposing of it puts back what the slot held.
 *
 * @module
 */

/** A span of the fake: its name, its attributes, how often it was ended. */
export interface FakeSpan {
  name: string;
  attributes: Record<string, unknown>;
  ends: number;
}

/**
 * Installs the fake; `failing` names what throws: the instruments'
 * recordings (`metrics`), the spans' annotations, never their end
 * (`spans`), both, or nothing.
 */
export function fakeOtel(
  failing: "none" | "metrics" | "spans" | "both" = "none",
): { spans: FakeSpan[] } & Disposable {
  const key = Symbol.for("opentelemetry.js.api.1");
  const slots = globalThis as unknown as Record<symbol, unknown>;
  const before = slots[key];
  const fail = () => {
    throw new Error("a broken telemetry implementation");
  };
  const noop = () => {};
  const metricsFail = failing === "metrics" || failing === "both";
  const spansFail = failing === "spans" || failing === "both";
  const spans: FakeSpan[] = [];
  const instrument = {
    add: metricsFail ? fail : noop,
    record: metricsFail ? fail : noop,
    addCallback: noop,
  };
  slots[key] = {
    version: "1.9.1",
    metrics: {
      getMeter: () => ({
        createHistogram: () => instrument,
        createCounter: () => instrument,
        createObservableUpDownCounter: () => instrument,
      }),
    },
    trace: {
      getTracer: () => ({
        startSpan(name: string) {
          const span: FakeSpan = { name, attributes: {}, ends: 0 };
          spans.push(span);
          return {
            setAttribute: spansFail
              ? fail
              : (attribute: string, value: unknown) => {
                span.attributes[attribute] = value;
              },
            addEvent: spansFail ? fail : noop,
            setStatus: spansFail ? fail : noop,
            end: () => void span.ends++,
          };
        },
      }),
    },
  };
  return {
    spans,
    [Symbol.dispose]() {
      if (before === undefined) delete slots[key];
      else slots[key] = before;
    },
  };
}
