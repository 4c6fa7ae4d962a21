/**
 * What deadbolt's OpenTelemetry recording costs on the uncontended path:
 * acquire + release in a loop with nothing registered, with the SDK's meter
 * provider registered, and with its tracer provider too (spans batched to an
 * exporter that drops them), in interleaved slices of one process so that
 * machine noise hits every mode alike. Two clients: ioredis 6 on a local
 * redis-server this script starts, and a client that answers at once (the
 * library's own CPU, where the recording's share is largest).
 *
 * Usage: `deno run -A bench/telemetry.ts [--slices N] [--ms M]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { metrics, trace } from "npm:@opentelemetry/api@1.9.1";
import {
  MeterProvider,
  PeriodicExportingMetricReader,
  type PushMetricExporter,
} from "npm:@opentelemetry/sdk-metrics@2.12.1";
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  type SpanExporter,
} from "npm:@opentelemetry/sdk-trace-base@2.12.1";
import { Redis } from "npm:ioredis@6";
import { Lock, type RedisClient, type ScriptClient } from "../mod.ts";
import { startRedis } from "../tests/_redis.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    slices: { type: "string", default: "20" },
    ms: { type: "string", default: "250" },
  },
});
const SLICES = Number(flags.slices);
const SLICE_MS = Number(flags.ms);

// Exporters that drop what they are given: the bench measures recording.
const SUCCESS = { code: 0 };
const dropSpans: SpanExporter = {
  export: (_spans, done) => done(SUCCESS),
  shutdown: () => Promise.resolve(),
};
const dropMetrics: PushMetricExporter = {
  export: (_metrics, done) => done(SUCCESS),
  forceFlush: () => Promise.resolve(),
  shutdown: () => Promise.resolve(),
};

const meterProvider = new MeterProvider({
  readers: [
    new PeriodicExportingMetricReader({
      exporter: dropMetrics,
      exportIntervalMillis: 1_000,
    }),
  ],
});
const tracerProvider = new BasicTracerProvider({
  spanProcessors: [new BatchSpanProcessor(dropSpans)],
});

type Mode = "off" | "metrics" | "metrics+traces";
const MODES: Mode[] = ["off", "metrics", "metrics+traces"];

function enter(mode: Mode): void {
  metrics.disable();
  trace.disable();
  if (mode !== "off") metrics.setGlobalMeterProvider(meterProvider);
  if (mode === "metrics+traces") trace.setGlobalTracerProvider(tracerProvider);
}

const instant: ScriptClient = {
  eval: (_script, _keys, args) =>
    Promise.resolve(args.length >= 3 ? [1, 0] : 1),
  evalsha: (_sha, _keys, args) =>
    Promise.resolve(args.length >= 3 ? [1, 0] : 1),
};

await using server = await startRedis();
const redis = new Redis(server.port, "127.0.0.1");
const clients: [string, RedisClient][] = [
  ["ioredis 6, local redis-server", redis],
  ["instant client (library CPU)", instant],
];
const totals = new Map<string, { ops: number; ms: number }>();

for (const [, client] of clients) {
  await (await Lock.acquire(client, "warm-up")).release();
}
for (let slice = 0; slice < SLICES; slice++) {
  // Rotate the order, so that no mode always follows another.
  const order = MODES.map((_, i) => MODES[(i + slice) % MODES.length]);
  for (const [label, client] of clients) {
    for (const mode of order) {
      enter(mode);
      const start = performance.now();
      let ops = 0;
      while (performance.now() - start < SLICE_MS) {
        const lock = await Lock.acquire(client, "telemetry");
        await lock.release();
        ops++;
      }
      const key = `${label}\u0000${mode}`;
      const total = totals.get(key) ?? { ops: 0, ms: 0 };
      total.ops += ops;
      total.ms += performance.now() - start;
      totals.set(key, total);
    }
  }
}
enter("off");
redis.disconnect();
await meterProvider.shutdown();
await tracerProvider.shutdown();

console.log(
  `deadbolt telemetry cost, ${SLICES} interleaved slices of ${SLICE_MS} ms per mode (${
    new Date().toISOString().slice(0, 10)
  }, Deno ${Deno.version.deno})\n`,
);
console.log("| client | mode | µs per acquire + release | vs off |");
console.log("|---|---|---|---|");
for (const [label] of clients) {
  const perOp = (mode: Mode) => {
    const { ops, ms } = totals.get(`${label}\u0000${mode}`)!;
    return ms * 1000 / ops;
  };
  for (const mode of MODES) {
    const ratio = perOp(mode) / perOp("off");
    console.log(
      `| ${label} | ${mode} | ${perOp(mode).toFixed(1)} | ${
        mode === "off" ? "1.00" : `${ratio.toFixed(3)}×`
      } |`,
    );
  }
}
