import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import { fromIoredis, Lock, LockLostError, type ScriptClient } from "../mod.ts";
import { EAGER_HANDOVER, HANDOVER } from "../src/scripts.ts";
import { startRedis } from "./_redis.ts";
import { abortedAt, lineUp, sleep, until, within } from "./_util.ts";

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
    port: server.port,
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

/**
 * A hold of `name` released to a waiter of the same client: resolves, in
 * the turn of the release (no I/O since), with the new holder, the
 * release's promise and the first holder's token.
 */
async function handedOver(redis: Redis, name: string) {
  const holder = await Lock.acquire(redis, name);
  const before = holder.token;
  const waiting = Lock.acquire(redis, name, { timeout: 10_000 });
  await lineUp(redis, name, 1);
  const released = holder.release();
  const lock = await within(waiting, 5_000, "the waiter's grant");
  return { lock, released, before };
}

Deno.test("a run of short holds handed over in one process costs Redis one script, and leaves no key behind", async () => {
  await using env = await setup();
  const { redis, side } = env;
  const TURNS = 400;
  let turns = 0;
  const released: boolean[] = [];
  const first = await Lock.acquire(redis, "run");
  let inside = 0;
  let most = 0;
  const workers = Array.from({ length: 8 }, async () => {
    while (turns < TURNS) {
      const lock = await Lock.acquire(redis, "run", { timeout: 10_000 });
      most = Math.max(most, ++inside);
      turns++;
      inside--;
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
  assert.equal(most, 1, "one holder at a time");
  assert.ok(released.every(Boolean), "every release ended its own hold");
  assert.equal(await side.send("EXISTS", "deadbolt:{run}"), 0);
});

Deno.test("a holder handed the lock eagerly is known to Redis by the next turn of the event loop, and at once when its token is read", async (t) => {
  await using env = await setup();
  const { redis, side } = env;
  await t.step("by the next turn", async () => {
    const { lock, released, before } = await handedOver(redis, "told");
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
    const { lock, released } = await handedOver(redis, "read");
    // Still the turn of the release: what the token reaches next (here,
    // the same connection) finds the key the new holder's.
    const token = lock.token;
    assert.equal(await redis.get("deadbolt:{read}"), token);
    assert.equal(await released, true);
    assert.equal(await lock.release(), true);
  });
});

Deno.test("a release that hands the lock over in this process sends its script at the next turn of the event loop, not after a timer (1-2 ms here)", async () => {
  await using env = await setup();
  const { redis, side } = env;
  const holder = await Lock.acquire(redis, "soon");
  const waiting = Lock.acquire(redis, "soon", { timeout: 10_000 });
  await lineUp(redis, "soon", 1);
  const original = globalThis.setTimeout;
  const delays: number[] = [];
  globalThis.setTimeout = ((...args: Parameters<typeof setTimeout>) => {
    delays.push(args[1] ?? 0);
    return original(...args);
  }) as typeof setTimeout;
  let released: boolean;
  try {
    // Nothing else is sent about the lock: only the next turn sends it.
    released = await within(holder.release(), 5_000, "the release");
  } finally {
    globalThis.setTimeout = original;
  }
  assert.equal(released, true);
  const lock = await within(waiting, 5_000, "the waiter's grant");
  assert.equal(await side.send("GET", "deadbolt:{soon}"), lock.token);
  // The release waited for Redis, and for no 0 ms timer (a timer's
  // granularity delayed every handover's answer by 1-2 ms).
  assert.deepEqual(delays.filter((ms) => ms < 1), []);
  assert.equal(await lock.release(), true);
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

Deno.test("a holder handed the lock eagerly that extends it or detaches it in the same turn sends the handover first", async (t) => {
  await using env = await setup();
  const { redis, side } = env;
  await t.step("extend()", async () => {
    const { lock, released } = await handedOver(redis, "extend-now");
    // Still the turn of the release: the renewal must find the key its own.
    assert.equal(await lock.extend(), true);
    assert.ok(lock.held);
    assert.equal(await released, true);
    assert.equal(await lock.release(), true);
    assert.equal(await side.send("EXISTS", "deadbolt:{extend-now}"), 0);
  });
  await t.step("detach(), then adopt on another connection", async () => {
    const other = new Redis(env.port, "127.0.0.1");
    try {
      await within(
        new Promise((ready) => other.once("ready", ready)),
        5_000,
        "the other connection",
      );
      const { lock, released } = await handedOver(redis, "detach-now");
      // The token goes elsewhere in the same turn: written after the
      // handover's script, the adoption must find the key the hold's.
      const adopted = await Lock.adopt(other, "detach-now", lock.detach());
      assert.ok(adopted, "the adopter finds the key the detached hold's");
      assert.equal(await released, true);
      assert.equal(await adopted.release(), true);
    } finally {
      await other.quit();
    }
  });
});

Deno.test("a run whose script never reached Redis: its releases return false, are not retried, and the holder finds out at once", async () => {
  await using env = await setup();
  const { redis, side } = env;
  const inner = fromIoredis(redis);
  let failing = true;
  // The client loses the handover's script once (it throws, as a client of
  // one's own may): its fate is unknown to deadbolt.
  const client: ScriptClient = {
    deadbolt: inner.deadbolt,
    eval: (script, keys, args) => {
      if (failing && script === EAGER_HANDOVER.source) {
        failing = false;
        throw new Error("connection lost");
      }
      return inner.eval(script, keys, args);
    },
    evalsha: (sha, keys, args) => inner.evalsha!(sha, keys, args),
  };
  const first = await Lock.acquire(client, "lost-run");
  const firstToken = first.token;
  const second = Lock.acquire(client, "lost-run", { timeout: 10_000 });
  const third = Lock.acquire(client, "lost-run", { timeout: 10_000 });
  await lineUp(client, "lost-run", 2);
  const releasedFirst = first.release();
  const lock2 = await within(second, 5_000, "the second's grant");
  const releasedSecond = lock2.release();
  const lock3 = await within(third, 5_000, "the third's grant");
  assert.equal(await releasedFirst, false);
  assert.equal(await releasedSecond, false);
  // The key is still the first holder's: the third renews at once (its
  // renewal is due in 10 s) and finds it so.
  await abortedAt(lock3.signal, 2_000);
  assert.ok(lock3.signal.reason instanceof LockLostError);
  assert.equal(await lock3.release(), false);
  // Neither release is retried: the key is left as it was.
  assert.equal(await first.release(), false);
  assert.equal(await lock2.release(), false);
  assert.equal(await side.send("GET", "deadbolt:{lost-run}"), firstToken);
  await side.send("DEL", "deadbolt:{lost-run}");
  // Handovers go on as before.
  const holder = await Lock.acquire(client, "lost-run");
  const waiting = Lock.acquire(client, "lost-run", { timeout: 10_000 });
  await lineUp(client, "lost-run", 1);
  assert.equal(await holder.release(), true);
  const lock = await within(waiting, 5_000, "a later grant");
  assert.equal(await lock.release(), true);
  assert.equal(await side.send("EXISTS", "deadbolt:{lost-run}"), 0);
});

Deno.test("a handover run twice (a client resent it after a reconnect) reports the lock handed over, with the same fence", async () => {
  await using env = await setup();
  const { side } = env;
  const key = "deadbolt:{twice}";
  await side.send("SET", key, "holder", "PX", 10_000);
  const eager = () =>
    side.send(
      "EVAL",
      EAGER_HANDOVER.source,
      2,
      key,
      `${key}:line`,
      "holder",
      "head",
      10_000,
    );
  assert.deepEqual(await eager(), [1, 0, 0]);
  assert.deepEqual(await eager(), [1, 0, 0]);
  assert.equal(await side.send("GET", key), "head");
  const fenced = () =>
    side.send(
      "EVAL",
      HANDOVER.source,
      3,
      key,
      `${key}:fence`,
      `${key}:line`,
      "head",
      "next",
      10_000,
      "1",
    );
  const once = await fenced();
  assert.deepEqual(await fenced(), once);
  assert.equal(await side.send("GET", key), "next");
});

Deno.test("a handover run again counts the waiter's ttl from that run, as the waiter counts its validity from its own send", async () => {
  await using env = await setup();
  const { side } = env;
  const key = "deadbolt:{again}";
  const run = (script: string, keys: string[], args: (string | number)[]) =>
    side.send("EVAL", script, keys.length, ...keys, ...args);
  const plain = () =>
    run(HANDOVER.source, [key, `${key}:fence`, `${key}:line`], [
      "holder",
      "head",
      10_000,
      "0",
    ]);
  const eager = () =>
    run(EAGER_HANDOVER.source, [key, `${key}:line`], [
      "holder",
      "head",
      10_000,
    ]);
  for (const handover of [plain, eager]) {
    await side.send("SET", key, "holder", "PX", 10_000);
    assert.deepEqual(await handover(), [1, 0, 0]);
    await sleep(300);
    // Run again (a release retried after its first call timed out, and
    // landed late): the head counts its lease from this call's send.
    assert.deepEqual(await handover(), [1, 0, 0]);
    const pttl = Number(await side.send("PTTL", key));
    assert.ok(pttl > 9_900, `the key expires in ${pttl} ms, not 10,000`);
  }
});
