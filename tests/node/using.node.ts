// `await using` under Node >= 24, which parses it without flags (Node 20 and
// 22 do not: the shared cases in ../_core_cases.ts dispose by hand instead).
// Run by node_test.ts under `node --test`; see core.node.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { Redis } from "ioredis";
import { createClient } from "redis";
import { Lock, type RedisClient } from "../../mod.ts";

const url = `redis://127.0.0.1:${process.env.DEADBOLT_TEST_REDIS_PORT}`;

/** Checks `await using` with `client`, reading the key through `get`. */
async function releasesOnScopeExit(
  client: RedisClient,
  name: string,
  get: (key: string) => Promise<unknown>,
): Promise<void> {
  let key = "";
  {
    await using lock = await Lock.acquire(client, name, { fencing: true });
    key = lock.key;
    assert.equal(await get(key), lock.token);
    await using other = await Lock.tryAcquire(client, name);
    assert.equal(other, null);
  }
  assert.equal(await get(key), null);

  await assert.rejects(async () => {
    await using lock = await Lock.acquire(client, name);
    assert.equal(await get(key), lock.token);
    throw new Error("critical section failed");
  }, /critical section failed/);
  assert.equal(await get(key), null);
}

test("await using releases the lock on scope exit, also when the body throws (ioredis 6 on Node)", async () => {
  const redis = new Redis(url);
  try {
    await releasesOnScopeExit(
      redis,
      "node using ioredis",
      (key) => redis.get(key),
    );
  } finally {
    await redis.quit();
  }
});

test("await using releases the lock on scope exit, also when the body throws (node-redis 6 on Node)", async () => {
  const redis = await createClient({ url }).connect();
  try {
    await releasesOnScopeExit(
      redis,
      "node using node-redis",
      (key) => redis.get(key),
    );
  } finally {
    await redis.close();
  }
});

test("acquisitions one after another set about one timer a second, and the timer left set keeps Node alive for nobody (ioredis 6 on Node)", async () => {
  const redis = new Redis(url);
  const original = globalThis.setTimeout;
  const set: { hasRef(): boolean }[] = [];
  try {
    await (await Lock.acquire(redis, "node timers")).release(); // loads the scripts
    globalThis.setTimeout = ((...args: Parameters<typeof setTimeout>) => {
      const timer = original(...args);
      set.push(timer);
      return timer;
    }) as typeof setTimeout;
    const rounds = 50;
    let released = 0;
    const started = performance.now();
    for (let round = 0; round < rounds; round++) {
      await using lock = await Lock.acquire(redis, "node timers");
      if (await lock.release()) released++;
    }
    const seconds = (performance.now() - started) / 1_000;
    globalThis.setTimeout = original;
    assert.equal(released, rounds);
    // One per round before: set at the acquisition, cleared at the release.
    assert.ok(
      set.length <= Math.ceil(seconds) + 1,
      `${set.length} timers for ${rounds} rounds in ${seconds.toFixed(2)} s`,
    );
    for (const timer of set) assert.equal(timer.hasRef(), false);
  } finally {
    globalThis.setTimeout = original;
    await redis.quit();
  }
});

test("a timer left to fire that was dropped (fake timers uninstalled, say) does not stall later deadlines (ioredis 6 on Node)", async () => {
  const redis = new Redis(url);
  const original = globalThis.setTimeout;
  const set: Parameters<typeof clearTimeout>[0][] = [];
  try {
    // A timer left set by an earlier test has fired by then: the next
    // acquisition sets its own, seen here.
    await new Promise((resolve) => original(resolve, 1_100));
    globalThis.setTimeout = ((...args: Parameters<typeof setTimeout>) => {
      const timer = original(...args);
      set.push(timer);
      return timer;
    }) as typeof setTimeout;
    await (await Lock.acquire(redis, "dropped timer")).release();
    globalThis.setTimeout = original;
    // The timer left set never fires now.
    for (const timer of set) clearTimeout(timer);
    await new Promise((resolve) => original(resolve, 2_100));
    // A lease that is not renewed must still be declared lost in time.
    const lock = await Lock.acquire(redis, "dropped timer", {
      ttl: 100,
      autoExtend: false,
    });
    const lost = await Promise.race([
      new Promise((resolve) =>
        lock.signal.addEventListener("abort", () => resolve("lost"))
      ),
      new Promise((resolve) => original(() => resolve("silent"), 2_000)),
    ]);
    assert.equal(lost, "lost");
    assert.equal(lock.held, false);
  } finally {
    globalThis.setTimeout = original;
    await redis.quit();
  }
});

test("a timer left to fire that is only late (a blocked event loop) is replaced, not left to run beside the new one (ioredis 6 on Node)", async () => {
  const redis = new Redis(url);
  const { setTimeout: set, clearTimeout: clear } = globalThis;
  const live = new Set<unknown>();
  try {
    // A timer left set by an earlier test has fired by then.
    await new Promise((resolve) => set(resolve, 1_100));
    globalThis.setTimeout = ((callback: () => void, ms?: number) => {
      const timer = set(() => {
        live.delete(timer);
        callback();
      }, ms);
      live.add(timer);
      return timer;
    }) as typeof setTimeout;
    globalThis.clearTimeout = ((timer?: Parameters<typeof clear>[0]) => {
      live.delete(timer);
      clear(timer);
    }) as typeof clearTimeout;
    await (await Lock.acquire(redis, "late timer")).release();
    // The event loop is blocked past the timer's time and a second more.
    const until = performance.now() + 2_200;
    while (performance.now() < until) {
      // busy
    }
    const lock = await Lock.acquire(redis, "late timer");
    // Let the late timer's turn come.
    await new Promise((resolve) => set(resolve, 50));
    // Before: the late one fired too, and two timers ran from then on.
    assert.equal(live.size, 1, `${live.size} timers while one lock is held`);
    assert.equal(await lock.release(), true);
  } finally {
    globalThis.setTimeout = set;
    globalThis.clearTimeout = clear;
    await redis.quit();
  }
});
