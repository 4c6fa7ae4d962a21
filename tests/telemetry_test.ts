import assert from "node:assert/strict";
import * as api from "npm:@opentelemetry/api@1.9.1";
import * as metrics from "npm:@opentelemetry/sdk-metrics@2.12.1";
import * as trace from "npm:@opentelemetry/sdk-trace-base@2.12.1";
import { Lock } from "../mod.ts";
import { startRedis } from "./_redis.ts";
import { DbRedisShape } from "./_resp.ts";
import { registerOtel, total } from "./_otel.ts";
import { runTelemetryCase, TELEMETRY_CASES } from "./_telemetry_cases.ts";

// The telemetry cases under Deno, with the @db/redis shape over a Deno
// socket (so the sanitizers see the connection): "custom" to deadbolt.

const SDK = { api, metrics, trace };

for (const kase of TELEMETRY_CASES) {
  Deno.test(`telemetry: ${kase.name} (Deno)`, async () => {
    await using server = await startRedis();
    await runTelemetryCase(kase, {
      clientKind: "custom",
      async connect() {
        const conn = await server.connect();
        const redis = new DbRedisShape(conn);
        return {
          client: redis,
          command: (...args) => redis.sendCommand(args[0], args.slice(1)),
          async close() {
            redis.close();
            await conn.closed;
          },
        };
      },
      register: () => registerOtel(SDK),
    });
  });
}

Deno.test("telemetry: an SDK registered after the handle was made counts from then on, and nothing after it is gone", async () => {
  await using server = await startRedis();
  const conn = await server.connect();
  const redis = new DbRedisShape(conn);
  try {
    const lock = new Lock(redis, "late");
    await lock.acquire();
    await lock.release();
    {
      await using otel = registerOtel(SDK);
      await lock.acquire();
      await lock.release();
      const { points } = await otel.points("deadbolt.lock.acquisitions");
      assert.equal(total(points), 1);
    }
    // Unregistered: nothing to record to, and nothing fails.
    await lock.acquire();
    assert.equal(await lock.release(), true);
  } finally {
    redis.close();
    await conn.closed;
  }
});

Deno.test("telemetryName: a wrong type or length is refused before any Redis command", () => {
  const client = { eval: () => Promise.reject(new Error("no call expected")) };
  assert.throws(
    () => new Lock(client, "x", { telemetryName: 1 as unknown as string }),
    {
      name: "TypeError",
      message:
        `Cannot lock "x" as 'telemetryName' must be a string: current value is number`,
    },
  );
  assert.throws(
    () => new Lock(client, "x", { telemetryName: "n".repeat(257) }),
    {
      name: "RangeError",
      message:
        `Cannot lock "x" as 'telemetryName' must be at most 256 characters: current value has 257`,
    },
  );
});
