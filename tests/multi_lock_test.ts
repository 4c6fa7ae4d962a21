import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import {
  Lock,
  LockKeyError,
  LockLostError,
  MultiLock,
  type ScriptClient,
} from "../mod.ts";
import { ACQUIRE_ALL, RELEASE_ALL } from "../src/_multi_scripts.ts";
import { keySlot } from "../src/keys.ts";
import { redisEnv } from "./_env.ts";
import {
  abortedAt,
  CountingClient,
  lineUp,
  sleep,
  slowBackoff,
  until,
  within,
} from "./_util.ts";

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

Deno.test("a MultiLock waiter hears the release of whichever name turned it away last, not only the first", async () => {
  await using env = await setup();
  const here = new Redis(env.server.port, "127.0.0.1");
  const elsewhere = new Redis(env.server.port, "127.0.0.1");
  try {
    using _ = slowBackoff();
    const first = await Lock.acquire(elsewhere, "first-busy");
    const second = await Lock.acquire(elsewhere, "then-busy");
    const handle = new MultiLock(here, ["first-busy", "then-busy"], {
      timeout: 20_000,
      retryDelay: 4_000,
      maxRetryDelay: 4_000,
    });
    const set = handle.acquire().then(() => handle);
    // Turned away by the first name, subscribed to its channel, asleep.
    const line = `multi\u0000${handle.keys.join("\u0000")}`;
    await lineUp(here, "the set", 1, 5_000, line);
    await sleep(200);
    // Its release wakes the set, which the second name now turns away.
    assert.equal(await first.release(), true);
    await sleep(300);
    const released = performance.now();
    assert.equal(await second.release(), true);
    // Before: only the first name's channel was heard, and the set slept out
    // its backoff (about 4 s) beside free names.
    const all = await within(set, 2_000, "the set after the second release");
    assert.ok(performance.now() - released < 2_000);
    assert.equal(await all.release(), true);
  } finally {
    await here.quit();
    await elsewhere.quit();
  }
});

Deno.test("a MultiLock whose every grant comes too late to leave any validity gives up at its deadline, as a lock does", async () => {
  await using env = await setup();
  // Every answer comes 60 ms late: longer than a 50 ms lease.
  const late = (reply: Promise<unknown>) =>
    new Promise((resolve, reject) =>
      reply.then(
        (value) => setTimeout(() => resolve(value), 60),
        (error) => setTimeout(() => reject(error), 60),
      )
    );
  const client: ScriptClient = {
    eval: (script, keys, args) => late(env.redis.eval(script, keys, args)),
  };
  // Before: both went on asking, two scripts a round trip, until aborted.
  await assert.rejects(
    within(
      MultiLock.tryAcquire(client, ["late-a", "late-b"], { ttl: 50 }),
      2_000,
      "tryAcquire()",
    ),
    (error) => (error as Error).name === "TimeoutError",
  );
  await assert.rejects(
    within(
      MultiLock.acquire(client, ["late-a", "late-b"], {
        ttl: 50,
        timeout: 300,
      }),
      2_000,
      "acquire() with a 300 ms timeout",
    ),
    (error) => (error as Error).name === "TimeoutError",
  );
  await sleep(200); // the last late grant's delete
  for (const name of ["late-a", "late-b"]) {
    assert.equal(await env.side.send("EXISTS", Lock.keys(name).lock), 0);
  }
});

Deno.test("on a cluster, a MultiLock whose attempt fails on one master gives back the names it took on the others at once", async () => {
  await using env = await setup();
  // A client that says it reaches a cluster (one script per slot's names)
  // and whose second master never answers.
  let attempts = 0;
  const client: ScriptClient = {
    eval: (script, keys, args) => {
      if (script === ACQUIRE_ALL.source && ++attempts === 2) {
        return new Promise(() => {});
      }
      return env.redis.eval(script, keys, args);
    },
    deadbolt: { cluster: true },
  };
  const set = new MultiLock(client, ["slot-a", "slot-b"], {
    commandTimeout: 200,
  });
  await assert.rejects(
    within(set.acquire({ timeout: 5_000 }), 2_000, "acquire()"),
    (error) => (error as Error).name === "TimeoutError",
  );
  // Before: the first master's names stayed held by a token nobody owned
  // until that call settled: never, for a master that does not answer.
  await until(
    async () => {
      for (const key of set.keys) {
        if (await env.side.send("EXISTS", key) !== 0) return false;
      }
      return true;
    },
    1_000,
    "the names taken on the first master given back",
  );
});

Deno.test("on a cluster, a MultiLock that finds a key of another type gives back the names it took on the other masters before it rejects", async () => {
  await using env = await setup();
  // "type-a" is taken first (lower slot); "type-b" is a hash.
  const [a, b] = [Lock.keys("type-a").lock, Lock.keys("type-b").lock];
  assert.ok(keySlot(a) < keySlot(b));
  await env.side.send("HSET", b, "field", "value");
  // A client that says it reaches a cluster, whose give-backs take 300 ms
  // (a slow link to the first master) or, once `silent`, never answer.
  let silent = false;
  const client: ScriptClient = {
    eval: async (script, keys, args) => {
      if (script === RELEASE_ALL.source) {
        if (silent) return await new Promise(() => {});
        await sleep(300);
      }
      return env.redis.eval(script, keys, args);
    },
    deadbolt: { cluster: true },
  };
  const isKeyError = (error: unknown) =>
    error instanceof LockKeyError && error.key === b;
  await assert.rejects(
    within(
      MultiLock.acquire(client, ["type-a", "type-b"], { timeout: 1_000 }),
      2_000,
      "acquire()",
    ),
    isKeyError,
  );
  // Before: it rejected at once, sending the give-back without awaiting it:
  // "type-a" was still held by a token nobody owns (and stayed so for the
  // whole ttl had the give-back failed or the process exited meanwhile).
  assert.equal(await env.side.send("EXISTS", a), 0, "type-a still held");
  // A give-back that never answers holds the error back commandTimeout only.
  silent = true;
  const started = performance.now();
  await assert.rejects(
    within(
      MultiLock.acquire(client, ["type-a", "type-b"], {
        timeout: 1_000,
        commandTimeout: 200,
      }),
      2_000,
      "acquire() with a silent give-back",
    ),
    isKeyError,
  );
  assert.ok(performance.now() - started < 1_500);
  await env.side.send("DEL", a);
});
