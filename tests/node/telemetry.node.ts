// The telemetry cases (../_telemetry_cases.ts) under Node 24 with ioredis 6
// and the OpenTelemetry SDK from node_modules (see .ci/run). Run by
// node_test.ts under `node --test`, against the redis-server it started.
import { test } from "node:test";
import process from "node:process";
import { Redis } from "ioredis";
import * as api from "@opentelemetry/api";
import * as metrics from "@opentelemetry/sdk-metrics";
import * as trace from "@opentelemetry/sdk-trace-base";
import { registerOtel } from "../_otel.ts";
import { runTelemetryCase, TELEMETRY_CASES } from "../_telemetry_cases.ts";

const url = `redis://127.0.0.1:${process.env.DEADBOLT_TEST_REDIS_PORT}`;

for (const kase of TELEMETRY_CASES) {
  test(`telemetry: ${kase.name} (ioredis 6 on Node)`, async () => {
    await runTelemetryCase(kase, {
      clientKind: "ioredis",
      async connect() {
        const redis = new Redis(url, { lazyConnect: true });
        redis.on("error", () => {});
        await redis.connect();
        return {
          client: redis,
          command: (...args) => redis.call(args[0], ...args.slice(1)),
          close: async () => void await redis.quit(),
        };
      },
      register: () => registerOtel({ api, metrics, trace }),
    });
  });
}
