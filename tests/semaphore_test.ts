import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import {
  LockKeyError,
  LockLostError,
  LockTimeoutError,
  type ScriptClient,
  Semaphore,
} from "../mod.ts";
import { redisEnv } from "./_env.ts";
import { DbRedisShape } from "./_resp.ts";
import {
  abortedAt,
  CountingClient,
  lineUp,
  slowBackoff,
  until,
  within,
} from "./_util.ts";

// Semaphore against a real redis-server: at most `limit` permits at once,
// a lease per permit, and Lock's promises for each permit.

const setup = redisEnv;

Deno.test("Semaphore grants at most `limit` permits at once, and a release lets the next one in", async () => {
  await using env = await setup();
  const first = await Semaphore.acquire(env.redis, "api", { limit: 2 });
  await using _second = await Semaphore.acquire(env.redis, "api", {
    limit: 2,
  });
  assert.equal(
    await Semaphore.tryAcquire(env.redis, "api", { limit: 2 }),
    null,
  );
  assert.equal(await env.side.send("ZCARD", first.key), 2);
  const waiting = Semaphore.acquire(env.redis, "api", {
    limit: 2,
    timeout: 10_000,
  });
  assert.equal(await first.release(), true);
  await using third = await within(waiting, 5_000, "the third permit");
  assert.ok(third.held);
  assert.equal(await env.side.send("ZCARD", third.key), 2);
  assert.equal(await first.release(), false);
});

Deno.test("a permit whose holder stopped renewing frees itself when its lease ends, never earlier, and never another holder's", async () => {
  await using env = await setup();
  // The "dead" holder: no renewal, never released.
  const dead = await Semaphore.acquire(env.redis, "lease", {
    limit: 2,
    ttl: 400,
    autoExtend: false,
  });
  await using alive = await Semaphore.acquire(env.redis, "lease", {
    limit: 2,
    ttl: 400,
  });
  const waiting = Semaphore.acquire(env.redis, "lease", {
    limit: 2,
    timeout: 10_000,
  });
  const next = await within(waiting, 5_000, "a permit after the lease ended");
  const grantedAt = performance.now();
  assert.ok(
    grantedAt >= dead.validUntil,
    `granted ${
      dead.validUntil - grantedAt
    } ms before the dead holder's validity ended`,
  );
  assert.ok(
    (await within(
      abortedAt(dead.signal).then(() => dead.signal.reason),
      5_000,
      "the dead holder's loss",
    )) instanceof LockLostError,
  );
  // The renewing holder kept its permit.
  assert.ok(alive.held);
  assert.equal(
    await env.side.send("ZSCORE", alive.key, alive.token) !== null,
    true,
  );
  assert.equal(await next.release(), true);
});

Deno.test("permit fences are strictly increasing across holders", async () => {
  await using env = await setup();
  const fences: number[] = [];
  for (let i = 0; i < 5; i++) {
    await using permit = await Semaphore.acquire(env.redis, "fenced", {
      limit: 3,
      fencing: true,
    });
    fences.push(permit.fence!);
  }
  assert.deepEqual(fences, [1, 2, 3, 4, 5]);
});

Deno.test("a permit deleted behind deadbolt's back is lost, and says so; extend() never grants it again", async () => {
  await using env = await setup();
  await using permit = await Semaphore.acquire(env.redis, "gone", {
    limit: 1,
  });
  await env.side.send("DEL", permit.key);
  assert.equal(await permit.extend(), false);
  const reason = await within(
    abortedAt(permit.signal).then(() => permit.signal.reason),
    5_000,
    "the loss",
  );
  assert.ok(reason instanceof LockLostError, String(reason));
  assert.equal(await env.side.send("EXISTS", permit.key), 0);
});

Deno.test("each caller counts against its own limit: a smaller limit waits, and no holder is evicted", async () => {
  await using env = await setup();
  await using _a = await Semaphore.acquire(env.redis, "mixed", { limit: 3 });
  await using _b = await Semaphore.acquire(env.redis, "mixed", { limit: 3 });
  assert.equal(
    await Semaphore.tryAcquire(env.redis, "mixed", { limit: 2 }),
    null,
  );
  await using c = await Semaphore.tryAcquire(env.redis, "mixed", {
    limit: 3,
  });
  assert.ok(c?.held);
  assert.equal(await env.side.send("ZCARD", c.key), 3);
});

Deno.test("a wait for a full semaphore times out with LockTimeoutError and the time until the first lease ends", async () => {
  await using env = await setup();
  await using _holder = await Semaphore.acquire(env.redis, "full", {
    limit: 1,
    ttl: 10_000,
  });
  const error = await Semaphore.acquire(env.redis, "full", {
    limit: 1,
    timeout: 200,
  }).then(() => assert.fail("acquired a full semaphore"), (e) => e);
  assert.ok(error instanceof LockTimeoutError, String(error));
  assert.ok(
    error.remainingTtl > 9_000 && error.remainingTtl <= 10_000,
    `remainingTtl ${error.remainingTtl}`,
  );
});

Deno.test("a semaphore on a key of another type fails with LockKeyError and leaves it alone", async () => {
  await using env = await setup();
  await env.side.send("SET", "deadbolt:semaphore:{typed}", "x");
  await assert.rejects(
    Semaphore.acquire(env.redis, "typed", { limit: 2 }),
    LockKeyError,
  );
  assert.equal(await env.side.send("GET", "deadbolt:semaphore:{typed}"), "x");
});

Deno.test("bad semaphore options are a TypeError or RangeError naming the option, before any Redis command", async () => {
  await using env = await setup();
  const calls = new CountingClient(env.redis);
  const cases: [unknown, ErrorConstructor, RegExp][] = [
    [{}, TypeError, /'limit' is required/],
    [{ limit: 0 }, RangeError, /'limit'/],
    [{ limit: 1.5 }, RangeError, /'limit'/],
    [{ limit: 2 ** 31 }, RangeError, /'limit'/],
    [{ limit: "3" }, TypeError, /'limit'/],
    [{ limit: 2, waitReplicas: 1 }, TypeError, /waitReplicas/],
    [undefined, TypeError, /'limit' is required/],
  ];
  for (const [options, type, message] of cases) {
    await assert.rejects(
      Semaphore.acquire(calls, "bad", options as { limit: number }),
      (error: Error) => error instanceof type && message.test(error.message),
      JSON.stringify(options),
    );
  }
  assert.equal(calls.calls, 0);
});

Deno.test("12 workers on two connections never hold more than `limit` permits at once", async () => {
  await using env = await setup();
  const server = env.server;
  const clients = [
    new Redis(server.port, "127.0.0.1"),
    new Redis(server.port, "127.0.0.1"),
  ];
  try {
    const LIMIT = 3;
    let inside = 0;
    let most = 0;
    let sections = 0;
    const workers = Array.from({ length: 12 }, async (_, i) => {
      for (let round = 0; round < 10; round++) {
        await using permit = await Semaphore.acquire(clients[i % 2], "busy", {
          limit: LIMIT,
          timeout: 20_000,
          retryDelay: 2,
          maxRetryDelay: 20,
        });
        inside++;
        most = Math.max(most, inside);
        // Also counted in Redis, by the holders themselves.
        const inRedis = Number(await env.side.send("INCR", "inside"));
        assert.ok(inRedis <= LIMIT, `${inRedis} holders counted in Redis`);
        await new Promise((resolve) => setTimeout(resolve, 1));
        await env.side.send("DECR", "inside");
        assert.ok(permit.held);
        inside--;
        sections++;
      }
    });
    await within(Promise.all(workers), 60_000, "120 sections");
    assert.equal(sections, 120);
    assert.ok(most <= LIMIT, `${most} permits held at once`);
    assert.equal(most, LIMIT, "the semaphore was never full");
    await until(
      async () =>
        await env.side.send("EXISTS", "deadbolt:semaphore:{busy}") === 0,
      2_000,
      "an idle semaphore leaving nothing",
    );
  } finally {
    for (const client of clients) await client.quit();
  }
});

Deno.test("up to `limit` waiters of one process ask Redis at once, never more", async () => {
  await using env = await setup();
  // Every permit held from another connection.
  const other = new DbRedisShape(await env.server.connect());
  const held = await Promise.all(
    Array.from(
      { length: 4 },
      () => Semaphore.acquire(other, "wide", { limit: 4 }),
    ),
  );
  // Acquire calls in flight (the acquire script takes 7 arguments; a
  // release takes 1).
  let inFlight = 0;
  let most = 0;
  const track = async (args: string[], call: () => Promise<unknown>) => {
    const acquiring = args.length === 7;
    if (acquiring) most = Math.max(most, ++inFlight);
    try {
      return await call();
    } finally {
      if (acquiring) inFlight--;
    }
  };
  const counting = {
    evalsha: (sha: string, keys: string[], args: string[]) =>
      track(args, () => env.redis.evalsha(sha, keys, args)),
    eval: (script: string, keys: string[], args: string[]) =>
      track(args, () => env.redis.eval(script, keys, args)),
  };
  // Each releases at once, so that all 8 get a permit in turn.
  const waiters = Array.from(
    { length: 8 },
    () =>
      Semaphore.acquire(counting, "wide", {
        limit: 4,
        timeout: 10_000,
        maxRetryDelay: 50,
      }).then((permit) => permit.release()),
  );
  await lineUp(counting, "wide", 8, 5_000, held[0].key);
  for (const permit of held) await permit.release();
  const released = await within(
    Promise.all(waiters),
    5_000,
    "8 permits in turn",
  );
  assert.deepEqual(released, new Array(8).fill(true));
  assert.equal(most, 4, `${most} calls in flight at once`);
  other.close();
});

Deno.test("a semaphore waiter aborted in the same tick as it is woken sends no attempt, and takes no permit, after its acquire() rejected", async () => {
  await using env = await setup();
  const key = "deadbolt:semaphore:{woken}";
  // Every call sent once the waiter was aborted.
  let aborted = false;
  const late: string[] = [];
  const client: ScriptClient = {
    eval(script, keys, args) {
      if (aborted) late.push(keys[0]);
      return env.redis.eval(script, keys, args);
    },
  };
  const holder = await within(
    Semaphore.acquire(client, "woken", { limit: 1, renewInterval: 20 }),
    5_000,
    "the grant",
  );
  // The job's controller aborts when the holder's permit is lost; a waiter
  // of the same job, queued behind it, is woken by that loss.
  const controller = new AbortController();
  holder.signal.addEventListener("abort", () => {
    aborted = true;
    controller.abort(new Error("the job is over"));
  });
  // Its backoff sleeps a second (jitter pinned): only the loss wakes it.
  using _slow = slowBackoff();
  const waiter = Semaphore.acquire(client, "woken", {
    limit: 1,
    timeout: 10_000,
    retryDelay: 1_000,
    maxRetryDelay: 1_000,
    signal: controller.signal,
  });
  await lineUp(client, "woken", 1, 5_000, key);
  await env.side.send("DEL", key);
  await within(
    assert.rejects(waiter, { message: "the job is over" }),
    5_000,
    "the waiter's rejection",
  );
  const permits = await env.side.send("ZCARD", key);
  // Before: one attempt went out after the abort and took the free permit
  // for a round trip, until its reply made deadbolt give it back.
  assert.deepEqual(late.filter((k) => k === key), [], "calls after the abort");
  assert.equal(permits, 0, "permits held after the rejection");
});
