import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import { Lock, LockLostError, MultiLock } from "../mod.ts";
import { redisEnv } from "./_env.ts";
import { abortedAt, CountingClient, within } from "./_util.ts";

// MultiLock against a real redis-server: every name or none, no deadlock
// between overlapping sets asked in any order, one signal for the set.

const setup = redisEnv;

Deno.test("MultiLock takes every name or none: one held name leaves the others untouched", async () => {
  await using env = await setup();
  await using holder = await Lock.acquire(env.redis, "b");
  assert.equal(
    await MultiLock.tryAcquire(env.redis, ["a", "b", "c"]),
    null,
  );
  for (const name of ["a", "c"]) {
    assert.equal(await env.side.send("EXISTS", Lock.keys(name).lock), 0);
  }
  await holder.release();
  await using all = await MultiLock.tryAcquire(env.redis, ["a", "b", "c"]);
  assert.ok(all?.held);
  for (const key of all.keys) {
    assert.equal(await env.side.send("GET", key), all.token);
  }
  assert.equal(await Lock.tryAcquire(env.redis, "c"), null);
  assert.equal(await all.release(), true);
  for (const key of all.keys) {
    assert.equal(await env.side.send("EXISTS", key), 0);
  }
});

Deno.test("overlapping sets asked in different orders never deadlock, and each name has one holder at a time", async () => {
  await using env = await setup();
  const clients = [
    new Redis(env.server.port, "127.0.0.1"),
    new Redis(env.server.port, "127.0.0.1"),
  ];
  try {
    const sets = [["a", "b"], ["b", "a"], ["b", "c"], ["c", "a"]];
    const holders = new Map<string, number>();
    const violations: string[] = [];
    let sections = 0;
    const workers = Array.from({ length: 8 }, async (_, i) => {
      const names = sets[i % sets.length];
      for (let round = 0; round < 10; round++) {
        await using _set = await MultiLock.acquire(clients[i % 2], names, {
          timeout: 30_000,
          retryDelay: 2,
          maxRetryDelay: 20,
        });
        for (const name of names) {
          holders.set(name, (holders.get(name) ?? 0) + 1);
          if (holders.get(name)! > 1) violations.push(`${name} twice`);
        }
        await new Promise((resolve) => setTimeout(resolve, 1));
        for (const name of names) holders.set(name, holders.get(name)! - 1);
        sections++;
      }
    });
    await within(Promise.all(workers), 30_000, "80 sections (a deadlock?)");
    assert.deepEqual(violations, []);
    assert.equal(sections, 80);
  } finally {
    for (const client of clients) await client.quit();
  }
});

Deno.test("the set's signal aborts with LockLostError when any one of its locks is lost", async () => {
  await using env = await setup();
  await using all = await MultiLock.acquire(env.redis, ["x", "y"]);
  await env.side.send("DEL", Lock.keys("y").lock);
  assert.equal(await all.extend(), false);
  const reason = await within(
    abortedAt(all.signal).then(() => all.signal.reason),
    5_000,
    "the loss",
  );
  assert.ok(reason instanceof LockLostError, String(reason));
  // Release deletes what is still ours, and says the set was not whole.
  assert.equal(await all.release(), false);
  assert.equal(await env.side.send("EXISTS", Lock.keys("x").lock), 0);
});

Deno.test("bad name lists are a TypeError or RangeError, before any Redis command", async () => {
  await using env = await setup();
  const calls = new CountingClient(env.redis);
  const cases: [unknown, ErrorConstructor, RegExp][] = [
    [[], RangeError, /1 to 64 names/],
    [["a", "a"], RangeError, /distinct names: "a" is there twice/],
    [Array.from({ length: 65 }, (_, i) => `n${i}`), RangeError, /1 to 64/],
    ["a", TypeError, /must be an array/],
    [["a", ""], TypeError, /names\[1\]/],
  ];
  for (const [names, type, message] of cases) {
    await assert.rejects(
      MultiLock.acquire(calls, names as string[]),
      (error: Error) => error instanceof type && message.test(error.message),
      JSON.stringify(names).slice(0, 40),
    );
  }
  await assert.rejects(
    MultiLock.acquire(calls, ["a"], { fencing: true } as { ttl?: number }),
    (error: Error) =>
      error instanceof TypeError && /fencing/.test(error.message),
  );
  assert.equal(calls.calls, 0);
});
