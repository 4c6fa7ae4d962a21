import assert from "node:assert/strict";
import { Lock, LockTimeoutError } from "../mod.ts";
import { backoff } from "../src/backoff.ts";
import { startRedis } from "./_redis.ts";
import { DbRedisShape } from "./_resp.ts";
import { CountingClient } from "./_util.ts";

/** The largest number below 1, the top of `Math.random()`'s range. */
const ALMOST_ONE = 1 - Number.EPSILON / 2;

Deno.test("backoff() waits random · min(maxDelay, initialDelay · 2^attempt), exactly", () => {
  for (const r of [0, 0.5, ALMOST_ONE]) {
    for (let attempt = 0; attempt <= 40; attempt++) {
      const bound = Math.min(1000, 5 * 2 ** attempt);
      assert.equal(backoff(attempt, 5, 1000, () => r), bound * r);
    }
  }
  // The seed's schedule, spelled out: 5 ms doubling, capped at 1 s.
  const half = (attempt: number) => backoff(attempt, 5, 1000, () => 0.5);
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map(half),
    [2.5, 5, 10, 20, 40, 80, 160, 320, 500, 500],
  );
  assert.equal(backoff(0, 5, 1000, () => 0), 0);
  assert.ok(backoff(7, 5, 1000, () => ALMOST_ONE) < 640);
  assert.ok(backoff(8, 5, 1000, () => ALMOST_ONE) < 1000);
  // A cap below the first bound wins from the start.
  assert.equal(backoff(0, 100, 30, () => 0.5), 15);
});

Deno.test("backoff() never exceeds maxDelay nor turns NaN or Infinity, even at attempt 5000", () => {
  const attempts = [1023, 1024, 1025, 1100, 5000, 1e6, Number.MAX_SAFE_INTEGER];
  for (const attempt of attempts) {
    for (const [initial, max] of [[5, 1000], [1, 1], [1, 2 ** 31 - 1]]) {
      for (const r of [0, 0.5, ALMOST_ONE]) {
        const wait = backoff(attempt, initial, max, () => r);
        assert.ok(
          Number.isFinite(wait) && wait >= 0 && wait <= max,
          `backoff(${attempt}, ${initial}, ${max}, ${r}) = ${wait}`,
        );
        assert.equal(wait, max * r);
      }
    }
  }
});

Deno.test("backoff() with Math.random averages half the bound at each attempt", () => {
  const samples = 20_000;
  for (let attempt = 0; attempt <= 10; attempt++) {
    const bound = Math.min(1000, 5 * 2 ** attempt);
    let sum = 0, min = Infinity, max = -Infinity;
    for (let i = 0; i < samples; i++) {
      const wait = backoff(attempt, 5, 1000);
      sum += wait;
      min = Math.min(min, wait);
      max = Math.max(max, wait);
    }
    const mean = sum / samples;
    // The mean's standard deviation is bound/sqrt(12·samples) ≈ 0.002·bound.
    assert.ok(
      Math.abs(mean - bound / 2) < 0.02 * bound,
      `attempt ${attempt}: mean ${mean}, bound ${bound}`,
    );
    assert.ok(min >= 0 && min < 0.01 * bound, `full jitter reaches 0: ${min}`);
    assert.ok(max < bound && max > 0.99 * bound, `max ${max} < ${bound}`);
  }
});

Deno.test("Lock.acquire() backs off exponentially while waiting and gives up after timeout ms, not attempts", async () => {
  await using server = await startRedis();
  await using holderConnection = await server.connect();
  await using waiterConnection = await server.connect();
  await using holder = await Lock.acquire(
    new DbRedisShape(holderConnection),
    "busy",
    { ttl: 2000, autoExtend: false },
  );
  const waiter = new CountingClient(new DbRedisShape(waiterConnection));
  const started = performance.now();
  const error = await Lock.acquire(waiter, "busy", { timeout: 1000 }).then(
    () => assert.fail("acquired a held lock"),
    (error) => error,
  );
  const elapsed = performance.now() - started;
  assert.ok(error instanceof LockTimeoutError, String(error));
  assert.equal(error.lockName, "busy");
  assert.ok(error.waited >= 1000, `waited ${error.waited}`);
  assert.ok(error.remainingTtl > 0 && error.remainingTtl <= 1000);
  assert.ok(elapsed >= 1000, `rejected early, after ${elapsed} ms`);
  assert.ok(elapsed <= 1150, `rejected late, after ${elapsed} ms`);
  // 5 ms doubling to 1 s (full jitter) makes about 10 attempts in 1 s;
  // a fixed 5 ms poll would make about 200.
  assert.ok(waiter.calls >= 3, `retried: ${waiter.calls} calls`);
  assert.ok(waiter.calls <= 25, `backed off: ${waiter.calls} calls`);
  assert.equal(holder.held, true);
});

Deno.test("Lock.acquire() never sleeps past the holder's remaining lease", async (t) => {
  await using server = await startRedis();
  await using holderConnection = await server.connect();
  await using waiterConnection = await server.connect();
  const holderClient = new DbRedisShape(holderConnection);
  const waiter = new CountingClient(new DbRedisShape(waiterConnection));
  // With retryDelay 1000 every wait would be up to 1 s long (2 s bound, 1 s
  // cap); only the PTTL bound makes the waiter wake when the lease runs out.
  const variants = [
    ["default backoff", {}],
    ["1 s backoff, round 1", { retryDelay: 1000 }],
    ["1 s backoff, round 2", { retryDelay: 1000 }],
    ["1 s backoff, round 3", { retryDelay: 1000 }],
  ] as const;
  for (const [what, options] of variants) {
    await t.step(what, async () => {
      const granting = performance.now();
      await using holder = await Lock.acquire(holderClient, "handoff", {
        ttl: 300,
        autoExtend: false,
      });
      const granted = performance.now();
      const lost = new Promise((resolve) =>
        holder.signal.addEventListener("abort", resolve, { once: true })
      );
      const calls = waiter.calls;
      await using lock = await Lock.acquire(waiter, "handoff", {
        maxRetryDelay: 1000,
        timeout: 3000,
        ...options,
      });
      const acquired = performance.now();
      assert.ok(
        acquired - granting >= 290,
        `not before the lease ran out: ${acquired - granting} ms`,
      );
      assert.ok(
        acquired - granted <= 400,
        `woke at the holder's PTTL: acquired ${
          acquired - granted
        } ms after the grant`,
      );
      assert.ok(waiter.calls - calls >= 2, "the waiter did wait");
      assert.equal(lock.held, true);
      await lost; // the holder's own clock says its lease is over
      assert.equal(holder.held, false);
      assert.equal(await holder.release(), false, "the key is the waiter's");
      assert.equal(lock.held, true);
    });
  }
});
