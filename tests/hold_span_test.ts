import assert from "node:assert/strict";
import { Lock, type ScriptClient } from "../mod.ts";
import { type Env, redisEnv } from "./_env.ts";
import { scriptKind, within } from "./_util.ts";

// A hold's span says how it ended. A handle may acquire again while its
// last release is still on its way (release() not awaited): that release,
// not the new grant, tells how the last hold ended.

interface RecordedSpan {
  name: string;
  attributes: Record<string, unknown>;
  ends: number;
}

/** OpenTelemetry's global API slot, with spans that keep what they are told. */
function recordingTelemetry() {
  const key = Symbol.for("opentelemetry.js.api.1");
  const slots = globalThis as unknown as Record<symbol, unknown>;
  const before = slots[key];
  const noop = () => {};
  const spans: RecordedSpan[] = [];
  const instrument = { add: noop, record: noop, addCallback: noop };
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
          const span: RecordedSpan = { name, attributes: {}, ends: 0 };
          spans.push(span);
          return {
            setAttribute: (k: string, v: unknown) => {
              span.attributes[k] = v;
            },
            addEvent: noop,
            setStatus: noop,
            end: () => void span.ends++,
          };
        },
      }),
    },
  };
  return {
    holds: () =>
      spans.filter(({ name }) => name === "hold lock").map((span) => ({
        end: span.attributes["deadbolt.hold.end"],
        ends: span.ends,
      })),
    [Symbol.dispose]() {
      if (before === undefined) delete slots[key];
      else slots[key] = before;
    },
  };
}

/**
 * The first release script runs in Redis at once; its answer (or, with
 * `fail`, an error instead) reaches deadbolt only once `gate` opens.
 */
function slowRelease(env: Env, fail: boolean) {
  const gate = Promise.withResolvers<void>();
  const ran = Promise.withResolvers<void>();
  let first = true;
  const client: ScriptClient = {
    eval: (script, keys, args) => {
      const reply = env.redis.eval(script, keys, args);
      if (!first || scriptKind(script) !== "release") return reply;
      first = false;
      reply.then(() => ran.resolve(), () => ran.resolve());
      return reply.then(async (value) => {
        await gate.promise;
        if (fail) throw new Error("connection lost");
        return value;
      });
    },
  };
  return { client, gate, ran };
}

for (const fail of [false, true]) {
  Deno.test(
    `telemetry: a release ${
      fail ? "that fails" : "answered"
    } after the handle acquired again ends the last hold's span as ${
      fail ? "lost" : "released"
    }, once`,
    async () => {
      await using env = await redisEnv();
      using telemetry = recordingTelemetry();
      const { client, gate, ran } = slowRelease(env, fail);
      try {
        const lock = new Lock(client, `hold-end-${fail}`);
        await within(lock.acquire(), 5_000, "the grant");
        const released = lock.release();
        await within(ran.promise, 5_000, "the release in Redis");
        await within(lock.acquire(), 5_000, "the next grant");
        gate.resolve();
        if (fail) await within(assert.rejects(released), 5_000, "the release");
        else assert.equal(await within(released, 5_000, "the release"), true);
        assert.equal(await within(lock.release(), 5_000, "release"), true);
        assert.deepEqual(telemetry.holds(), [
          { end: fail ? "lost" : "released", ends: 1 },
          { end: "released", ends: 1 },
        ]);
      } finally {
        gate.resolve();
      }
    },
  );
}
