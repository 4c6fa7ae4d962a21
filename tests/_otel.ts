/**
 * The real OpenTelemetry SDK, registered globally for one test: a metric
 * reader that collects on demand (no export timer for the sanitizers to
 * see) and an in-memory span exporter. Disposing of it unregisters both.
 * Each runtime passes in the SDK's modules as it imports them (`npm:`
 * specifiers under Deno, node_modules under Node); the imports here are
 * types only, which Node strips.
 *
 * @module
 */

import type * as Api from "npm:@opentelemetry/api@1.9.1";
import type * as SdkMetrics from "npm:@opentelemetry/sdk-metrics@2.12.1";
import type {
  DataPoint,
  Histogram,
} from "npm:@opentelemetry/sdk-metrics@2.12.1";
import type * as SdkTrace from "npm:@opentelemetry/sdk-trace-base@2.12.1";
import type { ReadableSpan } from "npm:@opentelemetry/sdk-trace-base@2.12.1";

/** The SDK's modules: the versions CI installs (see .ci/run). */
export interface OtelModules {
  api: typeof Api;
  metrics: typeof SdkMetrics;
  trace: typeof SdkTrace;
}

/** The attributes of a data point or a span. */
export type Attributes = Record<string, unknown>;

/** One data point: a counter's number, or a histogram's count and sum. */
export interface Point {
  attributes: Attributes;
  value: number | Histogram;
}

/** The SDK as registered for a test. */
export interface Otel extends AsyncDisposable {
  /** The data points of the metric `name` now, with its unit. */
  points(name: string): Promise<{ unit: string; points: Point[] }>;
  /** The spans ended so far. */
  spans(): ReadableSpan[];
}

/** Registers the SDK's meter and tracer providers globally. */
export function registerOtel(sdk: OtelModules): Otel {
  const { metrics, trace } = sdk.api;
  // Collects on demand, cumulatively.
  class OnDemandReader extends sdk.metrics.MetricReader {
    constructor() {
      super({
        aggregationTemporalitySelector: () =>
          sdk.metrics.AggregationTemporality.CUMULATIVE,
      });
    }
    protected override onForceFlush(): Promise<void> {
      return Promise.resolve();
    }
    protected override onShutdown(): Promise<void> {
      return Promise.resolve();
    }
  }
  const reader = new OnDemandReader();
  const meterProvider = new sdk.metrics.MeterProvider({ readers: [reader] });
  const exporter = new sdk.trace.InMemorySpanExporter();
  const tracerProvider = new sdk.trace.BasicTracerProvider({
    spanProcessors: [new sdk.trace.SimpleSpanProcessor(exporter)],
  });
  assert(metrics.setGlobalMeterProvider(meterProvider), "meter provider");
  assert(trace.setGlobalTracerProvider(tracerProvider), "tracer provider");
  return {
    async points(name) {
      const { resourceMetrics, errors } = await reader.collect();
      if (errors.length > 0) throw errors[0];
      for (const scope of resourceMetrics.scopeMetrics) {
        for (const metric of scope.metrics) {
          if (metric.descriptor.name !== name) continue;
          const points = (metric.dataPoints as DataPoint<number | Histogram>[])
            .map(({ attributes, value }) => ({ attributes, value }));
          return { unit: metric.descriptor.unit, points };
        }
      }
      return { unit: "", points: [] };
    },
    spans: () => exporter.getFinishedSpans(),
    async [Symbol.asyncDispose]() {
      metrics.disable();
      trace.disable();
      await meterProvider.shutdown();
      await tracerProvider.shutdown();
    },
  };
}

function assert(registered: boolean, what: string): void {
  if (!registered) throw new Error(`Cannot register the SDK's ${what}`);
}

/** The sum of the points whose attributes include `match`: counts for histograms. */
export function total(points: Point[], match: Attributes = {}): number {
  let sum = 0;
  for (const { attributes, value } of points) {
    const matches = Object.entries(match).every(([key, expected]) =>
      attributes[key] === expected
    );
    if (!matches) continue;
    sum += typeof value === "number" ? value : value.count;
  }
  return sum;
}
