import assert from "node:assert/strict";
import * as api from "npm:@opentelemetry/api@1.9.1";
import * as metrics from "npm:@opentelemetry/sdk-metrics@2.12.1";
import * as trace from "npm:@opentelemetry/sdk-trace-base@2.12.1";
import { Lock, LockLostError, LockTimeoutError } from "../mod.ts";
import { startRedis } from "./_redis.ts";
import { DbRedisShape } from "./_resp.ts";
import { fakeOtel } from "./_fake_otel.ts";
import { registerOtel, total } from "./_otel.ts";
import { runTelemetryCase, TELEMETRY_CASES } from "./_telemetry_cases.ts";
import { abortedAt, scriptKind, until, within } from "./_util.ts";

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

Deno.test("telemetry: an SDK registered after the handle was made counts from then on, and nothing once it is unregistered", async () => {
  await using server = await startRedis();
  const conn = await server.connect();
  const redis = new DbRedisShape(conn);
  try {
    const lock = new Lock(redis, "late");
    await lock.acquire();
    await lock.release();
    let calls = 0;
    {
      await using otel = registerOtel(SDK);
      // Counts what deadbolt asks of the registered provider.
      const provider = api.metrics.getMeterProvider();
      const getMeter = provider.getMeter.bind(provider);
      provider.getMeter = (...args) => (calls++, getMeter(...args));
      await lock.acquire();
      await lock.release();
      const { points } = await otel.points("deadbolt.lock.acquisitions");
      assert.equal(total(points), 1);
      assert.equal(calls, 1, "one meter, made once");
    }
    // disable() leaves the API's slot with no provider in it: nothing is
    // asked of anyone, and nothing fails.
    assert.ok(Symbol.for("opentelemetry.js.api.1") in globalThis);
    await lock.acquire();
    assert.equal(await lock.release(), true);
    assert.equal(calls, 1);
  } finally {
    redis.close();
    await conn.closed;
  }
});

Deno.test("telemetry: a registered implementation that throws everywhere changes nothing a lock does", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const conn = await server.connect();
  const redis = new DbRedisShape(conn);
  const slot = Symbol.for("opentelemetry.js.api.1");
  const fail = () => {
    throw new Error("a broken telemetry implementation");
  };
  const instrument = { add: fail, record: fail, addCallback: fail };
  const span = {
    setAttribute: fail,
    addEvent: fail,
    setStatus: fail,
    end: fail,
  };
  const slots = globalThis as unknown as Record<symbol, unknown>;
  const before = slots[slot];
  for (
    const broken of [
      { metrics: { getMeter: fail }, trace: { getTracer: fail } },
      {
        metrics: {
          getMeter: () => ({
            createHistogram: () => instrument,
            createCounter: () => instrument,
            createObservableUpDownCounter: () => instrument,
          }),
        },
        trace: { getTracer: () => ({ startSpan: () => span }) },
      },
      // A slot set to something other than the API, or whose getters throw.
      null,
      "throwing getter",
    ]
  ) {
    slots[slot] = broken === null
      ? null
      : broken === "throwing getter"
      ? Object.defineProperty({ version: "1.9.1" }, "metrics", { get: fail })
      : { version: "1.9.1", ...broken as object };
    try {
      // Acquire, renew, wait, time out, lose, and release.
      const lock = await Lock.acquire(redis, "sturdy", {
        ttl: 1_000,
        renewInterval: 20,
      });
      await until(
        async () => Number(await side.send("PTTL", lock.key)) > 980,
        5_000,
        "a renewal",
      );
      await assert.rejects(
        Lock.acquire(redis, "sturdy", { timeout: 30 }),
        LockTimeoutError,
      );
      await side.send("DEL", lock.key);
      await abortedAt(lock.signal);
      assert.ok(lock.signal.reason instanceof LockLostError);
      assert.equal(await lock.release(), false);
      const again = await Lock.acquire(redis, "sturdy");
      assert.equal(await again.release(), true);
    } finally {
      if (before === undefined) delete slots[slot];
      else slots[slot] = before;
    }
  }
  redis.close();
  await conn.closed;
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

Deno.test("telemetry: every span started is ended once, whatever the instruments or the spans' annotations throw", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const conn = await server.connect();
  const redis = new DbRedisShape(conn);
  try {
    for (const failing of ["metrics", "spans", "both"] as const) {
      using telemetry = fakeOtel(failing);
      const { spans } = telemetry;
      // A grant, a renewal, a timeout, a busy try, a loss, a release that
      // finds its key gone, and a release.
      const lock = await within(
        Lock.acquire(redis, "ended", { ttl: 1_000, renewInterval: 20 }),
        5_000,
        "the grant",
      );
      await until(
        async () => Number(await side.send("PTTL", lock.key)) > 980,
        5_000,
        "a renewal",
      );
      await within(
        assert.rejects(
          Lock.acquire(redis, "ended", { timeout: 30 }),
          LockTimeoutError,
        ),
        5_000,
        "the timeout",
      );
      assert.equal(
        await within(new Lock(redis, "ended").tryAcquire(), 5_000, "try"),
        false,
      );
      await side.send("DEL", lock.key);
      await abortedAt(lock.signal);
      assert.equal(await within(lock.release(), 5_000, "release"), false);
      const again = await within(
        Lock.acquire(redis, "ended"),
        5_000,
        "the next grant",
      );
      assert.equal(await within(again.release(), 5_000, "release"), true);
      const open = spans.filter(({ ends }) => ends !== 1);
      assert.deepEqual(open, [], `${failing} throwing: spans not ended once`);
      // acquire ×4, hold ×2.
      assert.equal(spans.length, 6, `${failing} throwing: spans started`);
    }
  } finally {
    redis.close();
    await conn.closed;
  }
});

Deno.test("telemetry: a hold whose release failed ends its span when the handle acquires again", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const conn = await server.connect();
  const redis = new DbRedisShape(conn);
  using telemetry = fakeOtel("metrics");
  const { spans } = telemetry;
  try {
    // Redis fails every release while `failing`.
    let failing = false;
    const fails = (script: string) =>
      failing && scriptKind(script) === "release";
    const client = {
      eval: (script: string, keys: string[], args: string[]) =>
        fails(script)
          ? Promise.reject(new Error("connection lost"))
          : redis.eval(script, keys, args),
      evalsha: (sha: string, keys: string[], args: string[]) =>
        fails(sha)
          ? Promise.reject(new Error("connection lost"))
          : redis.evalsha(sha, keys, args),
    };
    const lock = new Lock(client, "unreleased");
    await within(lock.acquire(), 5_000, "the grant");
    failing = true;
    await within(assert.rejects(lock.release()), 5_000, "the release");
    // Its key expires (here, at once); the release tried first fails again.
    await side.send("DEL", lock.key);
    await within(lock.acquire(), 5_000, "the next grant");
    failing = false;
    assert.equal(await within(lock.release(), 5_000, "release"), true);
    const holds = spans.filter(({ name }) => name === "hold lock");
    assert.deepEqual(holds.map(({ ends }) => ends), [1, 1]);
  } finally {
    redis.close();
    await conn.closed;
  }
});
