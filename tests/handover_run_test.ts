import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import { Lock, LockLostError } from "../mod.ts";
import { startRedis } from "./_redis.ts";
import { abortedAt, lineUp, until, within } from "./_util.ts";

// Eager handovers in one process go out at the next turn of the event loop
// (or before anything else the process sends about the lock): a run of
// short holds costs Redis one script, from the token in the key to the
// newest holder's, and every holder of the run is told its answer.

/** A server, a side connection, and one ioredis client (it runs calls in order). */
async function setup() {
  const server = await startRedis();
  const side = await server.connect();
  const redis = new Redis(server.port, "127.0.0.1");
  return {
    side,
    redis,
    /** Script calls the server has run so far (EVAL and EVALSHA). */
    async scripts(): Promise<number> {
      const stats = String(await side.send("INFO", "commandstats"));
      let calls = 0;
      for (
        const [, count] of stats.matchAll(/^cmdstat_eval(?:sha)?:calls=(\d+)/gm)
      ) {
        calls += Number(count);
      }
      return calls;
    },
    async [Symbol.asyncDispose]() {
      await redis.quit();
      await side[Symbol.asyncDispose]();
      await server.stop();
    },
  };
}

Deno.test("a run of short holds handed over in one process costs Redis one script, and leaves no key behind", async () => {
  await using env = await setup();
  const { redis, side } = env;
  const TURNS = 400;
  let turns = 0;
  const released: boolean[] = [];
  const first = await Lock.acquire(redis, "run");
  const workers = Array.from({ length: 8 }, async () => {
    while (turns < TURNS) {
      const lock = await Lock.acquire(redis, "run", { timeout: 10_000 });
      turns++;
      released.push(await lock.release());
    }
  });
  await lineUp(redis, "run", 8);
  const before = await env.scripts();
  await first.release();
  await within(Promise.all(workers), 20_000, "the workers' turns");
  // One script per handover would be about one per turn; a run of the
  // eight workers' holds goes out as one.
  const scripts = (await env.scripts()) - before;
  assert.ok(
    scripts <= turns / 2,
    `${scripts} scripts for ${turns} turns`,
  );
  assert.ok(released.every(Boolean), "every release ended its own hold");
  assert.equal(await side.send("EXISTS", "deadbolt:{run}"), 0);
});

Deno.test("a holder handed the lock eagerly is known to Redis by the next turn of the event loop, and at once when its token is read", async (t) => {
  await using env = await setup();
  const { redis, side } = env;
  await t.step("by the next turn", async () => {
    const holder = await Lock.acquire(redis, "told");
    const before = holder.token;
    const waiting = Lock.acquire(redis, "told", { timeout: 10_000 });
    await lineUp(redis, "told", 1);
    const released = holder.release();
    const lock = await within(waiting, 5_000, "the waiter's grant");
    // Neither released nor renewed, nor its token read: the key must hold
    // it all the same.
    await until(
      async () => await side.send("GET", "deadbolt:{told}") !== before,
      2_000,
      "the handover's script",
    );
    assert.equal(await side.send("GET", "deadbolt:{told}"), lock.token);
    assert.equal(await released, true);
    assert.equal(await lock.release(), true);
  });
  await t.step("when its token is read", async () => {
    const holder = await Lock.acquire(redis, "read");
    const waiting = Lock.acquire(redis, "read", { timeout: 10_000 });
    await lineUp(redis, "read", 1);
    const released = holder.release();
    const lock = await within(waiting, 5_000, "the waiter's grant");
    // Still the turn of the release: what the token reaches next (here,
    // the same connection) finds the key the new holder's.
    const token = lock.token;
    assert.equal(await redis.get("deadbolt:{read}"), token);
    assert.equal(await released, true);
    assert.equal(await lock.release(), true);
  });
});

Deno.test("a run of handovers from a holder whose key was gone: every holder of it is told, and the one holding loses the lock", async () => {
  await using env = await setup();
  const { redis, side } = env;
  const holder = await Lock.acquire(redis, "gone-run");
  const second = Lock.acquire(redis, "gone-run", { timeout: 10_000 });
  const third = Lock.acquire(redis, "gone-run", { timeout: 10_000 });
  await lineUp(redis, "gone-run", 2);
  // Redis forgets the holder's key (an operator, a failover).
  await side.send("DEL", "deadbolt:{gone-run}");
  const releasedFirst = holder.release();
  const lock2 = await within(second, 5_000, "the second's grant");
  const releasedSecond = lock2.release();
  const lock3 = await within(third, 5_000, "the third's grant");
  await abortedAt(lock3.signal);
  assert.ok(lock3.signal.reason instanceof LockLostError);
  assert.match(
    String(lock3.signal.reason.message),
    /gone when it was handed over/,
  );
  assert.equal(await releasedFirst, false);
  assert.equal(await releasedSecond, false);
  assert.equal(await lock3.release(), false);
  assert.equal(await side.send("EXISTS", "deadbolt:{gone-run}"), 0);
});
