import assert from "node:assert/strict";
import { Lock, type ScriptClient } from "../mod.ts";
import { type Env, redisEnv } from "./_env.ts";
import { fakeOtel } from "./_fake_otel.ts";
import { scriptKind, within } from "./_util.ts";

// A hold's span says how it ended. A handle may acquire again while its
// last release is still on its way (release() not awaited): that release,
// not the new grant, tells how the last hold ended.

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
      using telemetry = fakeOtel();
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
        const holds = telemetry.spans
          .filter(({ name }) => name === "hold lock")
          .map(({ attributes, ends }) => ({
            end: attributes["deadbolt.hold.end"],
            ends,
          }));
        assert.deepEqual(holds, [
          { end: fail ? "lost" : "released", ends: 1 },
          { end: "released", ends: 1 },
        ]);
      } finally {
        gate.resolve();
      }
    },
  );
}
