import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import { Lock, type ScriptClient, Semaphore } from "../mod.ts";
import { startRedis } from "./_redis.ts";
import { lineUp, sleep, slowBackoff, until, within } from "./_util.ts";

// A hold freed any way but by its holder's release (handed to a waiter that
// gave up meanwhile) wakes waiters as a release does: elsewhere by its
// message, here directly; and what a release arms for a local waiter does
// not outlive it when that waiter gives up.

/** `redis` as a client that runs calls in order and cannot subscribe (as Bun's). */
function orderedWithoutWakeUps(redis: Redis): ScriptClient {
  return {
    eval: (script, keys, args) =>
      redis.eval(script, keys.length, ...keys, ...args),
    evalsha: (sha, keys, args) =>
      redis.evalsha(sha, keys.length, ...keys, ...args),
    deadbolt: { ordered: true },
  };
}

// The waiters' backoff: without a wake-up they sleep about this long.
const LONG = { timeout: 30_000, retryDelay: 4_000, maxRetryDelay: 4_000 };

Deno.test("a hold handed to a waiter that gave up meanwhile is freed with a release's message: a waiter in another process gets it at once", async () => {
  await using server = await startRedis();
  const here = new Redis(server.port, "127.0.0.1");
  const elsewhere = new Redis(server.port, "127.0.0.1");
  try {
    using _ = slowBackoff();
    const holder = await Lock.acquire(here, "gave-up");
    // Another client stands for another process: turned away, subscribed,
    // first in line, asleep for its backoff.
    const remote = Lock.acquire(elsewhere, "gave-up", LONG);
    await lineUp(elsewhere, "gave-up", 1);
    // Past the extra attempt made once its subscription is set up.
    await sleep(200);
    await lineUp(elsewhere, "gave-up", 1);
    // A local waiter that wants a fence: handed the lock by a script whose
    // answer it waits for.
    const controller = new AbortController();
    const local = Lock.acquire(here, "gave-up", {
      ...LONG,
      fencing: true,
      signal: controller.signal,
    });
    await lineUp(here, "gave-up", 1);
    const releasing = holder.release();
    const reason = new Error("gave up");
    controller.abort(reason);
    await assert.rejects(local, (error) => error === reason);
    assert.equal(await releasing, true);
    // Before: the handover's key was deleted without a message, and the
    // other process slept out its backoff (about 4 s).
    const lock = await within(remote, 2_000, "the other process's grant");
    assert.equal(await lock.release(), true);
  } finally {
    await here.quit();
    await elsewhere.quit();
  }
});

Deno.test("a permit handed to a waiter that gave up meanwhile is freed with a release's message: a waiter in another process gets it at once", async () => {
  await using server = await startRedis();
  const here = new Redis(server.port, "127.0.0.1");
  const elsewhere = new Redis(server.port, "127.0.0.1");
  const key = "deadbolt:semaphore:{pool}";
  try {
    using _ = slowBackoff();
    const holder = await Semaphore.acquire(here, "pool", { limit: 1 });
    const remote = Semaphore.acquire(elsewhere, "pool", { limit: 1, ...LONG });
    await lineUp(elsewhere, "pool", 1, 5_000, key);
    await sleep(200);
    await lineUp(elsewhere, "pool", 1, 5_000, key);
    const controller = new AbortController();
    const local = Semaphore.acquire(here, "pool", {
      limit: 1,
      ...LONG,
      signal: controller.signal,
    });
    await lineUp(here, "pool", 1, 5_000, key);
    const releasing = holder.release();
    controller.abort(new Error("gave up"));
    await assert.rejects(local);
    assert.equal(await releasing, true);
    // Before: the permit handed over was freed without a message.
    const permit = await within(remote, 2_000, "the other process's permit");
    assert.equal(await permit.release(), true);
  } finally {
    await here.quit();
    await elsewhere.quit();
  }
});

Deno.test("a hold handed to a waiter that gave up meanwhile wakes the next waiter of the holder's process, on a client that cannot subscribe", async () => {
  await using server = await startRedis();
  const redis = new Redis(server.port, "127.0.0.1");
  try {
    using _ = slowBackoff();
    const client = orderedWithoutWakeUps(redis);
    const holder = await Lock.acquire(client, "next-here");
    const controller = new AbortController();
    const first = Lock.acquire(client, "next-here", {
      ...LONG,
      fencing: true,
      signal: controller.signal,
    });
    const second = Lock.acquire(client, "next-here", LONG);
    await lineUp(client, "next-here", 2);
    const releasing = holder.release();
    controller.abort(new Error("gave up"));
    await assert.rejects(first);
    assert.equal(await releasing, true);
    // The second asked Redis as soon as the first left, and was turned away
    // by the key handed to the first. Before: it slept out its backoff.
    const lock = await within(second, 2_000, "the second waiter's grant");
    assert.equal(await lock.release(), true);
  } finally {
    await redis.quit();
  }
});

/** The runtime timers set from now on and not yet fired or cleared. */
function timersSet(): Disposable & { readonly pending: Set<unknown> } {
  const { setTimeout: set, clearTimeout: clear } = globalThis;
  const pending = new Set<unknown>();
  globalThis.setTimeout = ((callback: () => void, ms?: number) => {
    const id = set(() => {
      pending.delete(id);
      callback();
    }, ms);
    pending.add(id);
    return id;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((id?: number) => {
    pending.delete(id);
    clear(id);
  }) as typeof clearTimeout;
  return {
    pending,
    [Symbol.dispose]() {
      globalThis.setTimeout = set;
      globalThis.clearTimeout = clear;
    },
  };
}

Deno.test("a release that lets another process have a turn leaves no timer behind when its local waiter gives up meanwhile", async () => {
  await using server = await startRedis();
  const here = new Redis(server.port, "127.0.0.1");
  const there = new Redis(server.port, "127.0.0.1");
  try {
    using _ = slowBackoff();
    const client = orderedWithoutWakeUps(here);
    let holder = await Lock.acquire(client, "turns");
    // Another process, first in line, asleep: its turn comes after 16
    // handovers in a row here.
    const other = orderedWithoutWakeUps(there);
    const remote = Lock.acquire(other, "turns", {
      timeout: 30_000,
      retryDelay: 1_000,
      maxRetryDelay: 1_000,
    });
    await lineUp(other, "turns", 1);
    for (let handovers = 0; handovers < 16; handovers++) {
      const next = Lock.acquire(client, "turns", LONG);
      await lineUp(client, "turns", 1);
      assert.equal(await holder.release(), true);
      holder = await within(next, 2_000, "a local handover");
    }
    const controller = new AbortController();
    const last = Lock.acquire(client, "turns", {
      ...LONG,
      signal: controller.signal,
    });
    await lineUp(client, "turns", 1);
    // This release goes through Redis (the other process's turn), and would
    // wake the local waiter a moment later: it gives up meanwhile.
    {
      using timers = timersSet();
      const releasing = holder.release();
      controller.abort(new Error("gave up"));
      await assert.rejects(last);
      assert.equal(await releasing, true);
      // Before: a timer to wake a waiter who had left, set after the release
      // was answered, and cleared by nobody.
      assert.equal(timers.pending.size, 0, "timers left behind");
    }
    const lock = await within(remote, 10_000, "the other process's turn");
    assert.equal(await lock.release(), true);
  } finally {
    await here.quit();
    await there.quit();
  }
});

Deno.test("a hold or permit handed over by a script whose answer was lost is freed once the script has run, when its waiter gave up meanwhile", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  const redis = new Redis(server.port, "127.0.0.1");
  try {
    // A waiter that wants a fence is handed a lock by a script whose answer
    // its holder waits for; a semaphore's waiter, always.
    const kinds = [
      {
        kind: "lock",
        hold: () => Lock.acquire(redis, "lost-answer", { commandTimeout: 200 }),
        wait: (signal: AbortSignal) =>
          Lock.acquire(redis, "lost-answer", {
            fencing: true,
            timeout: 10_000,
            signal,
          }),
        line: () => lineUp(redis, "lost-answer", 1),
        holders: async () =>
          await side.send("EXISTS", Lock.keys("lost-answer").lock),
      },
      {
        kind: "semaphore",
        hold: () =>
          Semaphore.acquire(redis, "lost-answer", {
            limit: 1,
            commandTimeout: 200,
          }),
        wait: (signal: AbortSignal) =>
          Semaphore.acquire(redis, "lost-answer", {
            limit: 1,
            timeout: 10_000,
            signal,
          }),
        line: () =>
          lineUp(
            redis,
            "lost-answer",
            1,
            5_000,
            "deadbolt:semaphore:{lost-answer}",
          ),
        holders: async () =>
          await side.send("ZCARD", "deadbolt:semaphore:{lost-answer}"),
      },
    ];
    for (const { kind, hold, wait, line, holders } of kinds) {
      await t.step(kind, async () => {
        const holder = await hold();
        const controller = new AbortController();
        const waiting = wait(controller.signal);
        await line();
        // The handover script waits in the server past the holder's bound.
        await side.send("CLIENT", "PAUSE", "600", "ALL");
        const releasing = holder.release();
        controller.abort(new Error("gave up"));
        await assert.rejects(waiting);
        await assert.rejects(
          releasing,
          (error) => (error as Error).name === "TimeoutError",
        );
        // Before: it ran after the pause and handed the hold to the waiter
        // that had gone, and nobody freed it for its whole ttl (30 s).
        await until(
          async () => await holders() === 0,
          3_000,
          `the ${kind} handed to nobody freed`,
        );
      });
    }
  } finally {
    await redis.quit();
  }
});
