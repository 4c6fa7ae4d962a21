import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import { createClient } from "npm:redis@6";
import {
  fromIoredis,
  Lock,
  LockLostError,
  LockTimeoutError,
  type RedisClient,
  type ScriptClient,
} from "../mod.ts";
import { startRedis } from "./_redis.ts";
import { DbRedisShape } from "./_resp.ts";
import {
  abortedAt,
  CountingClient,
  lineUp,
  scriptKind,
  sleep,
  until,
  within,
} from "./_util.ts";
import { HANDOVER } from "../src/scripts.ts";

// Waiters in one process on one lock queue locally: first come, first
// served, one contender in Redis; a release in the process hands the lock
// to the waiting head (or wakes it), one elsewhere wakes it through pub/sub.

async function setup() {
  const server = await startRedis();
  const conn = await server.connect();
  const side = await server.connect();
  const redis = new CountingClient(new DbRedisShape(conn));
  return {
    redis,
    side,
    port: server.port,
    async [Symbol.asyncDispose]() {
      await conn[Symbol.asyncDispose]();
      await side[Symbol.asyncDispose]();
      await server.stop();
    },
  };
}

Deno.test("waiters in one process get the lock in the order they asked for it", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.redis, "fifo");
  const order: number[] = [];
  const waiters = Array.from({ length: 10 }, async (_, i) => {
    await using _lock = await Lock.acquire(env.redis, "fifo", {
      timeout: 10_000,
    });
    order.push(i);
  });
  await lineUp(env.redis, "fifo", 10);
  await holder.release();
  await Promise.all(waiters);
  assert.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
});

Deno.test("a release in this process wakes the next local waiter at once, not after a backoff sleep", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.redis, "handoff");
  // Backoff waits of up to 2 s: without a wake the handoff would take long.
  const waiting = Lock.acquire(env.redis, "handoff", {
    timeout: 10_000,
    retryDelay: 2_000,
    maxRetryDelay: 2_000,
  });
  await lineUp(env.redis, "handoff", 1);
  const released = performance.now();
  await holder.release();
  await using next = await within(waiting, 20_000, "the waiter's grant");
  const handoff = performance.now() - released;
  assert.ok(next.held);
  assert.ok(handoff < 50, `handoff took ${handoff} ms`);
});

Deno.test("only the head of the local queue polls Redis", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.redis, "polite");
  const before = env.redis.calls;
  const waiters = Array.from(
    { length: 20 },
    () =>
      Lock.acquire(env.redis, "polite", { timeout: 10_000 }).then((lock) =>
        lock.release()
      ),
  );
  await sleep(500);
  const whileHeld = env.redis.calls - before;
  await holder.release();
  await Promise.all(waiters);
  // One head backing off from 5 ms for 500 ms makes about 10 attempts;
  // 20 independent pollers would make about 200.
  assert.ok(whileHeld <= 20, `${whileHeld} script calls while held`);
});

Deno.test("a queued waiter that times out or is aborted leaves the queue and the rest are served", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.redis, "leave");
  const first = Lock.acquire(env.redis, "leave", { timeout: 10_000 });
  const controller = new AbortController();
  const aborted = Lock.acquire(env.redis, "leave", {
    timeout: 10_000,
    signal: controller.signal,
  });
  const started = performance.now();
  const timedOut = Lock.acquire(env.redis, "leave", { timeout: 200 });
  const last = Lock.acquire(env.redis, "leave", { timeout: 10_000 });
  await assert.rejects(timedOut, LockTimeoutError);
  const took = performance.now() - started;
  assert.ok(took >= 200 && took < 350, `timed out after ${took} ms`);
  const reason = new Error("stop");
  controller.abort(reason);
  await assert.rejects(aborted, (error) => error === reason);
  await holder.release();
  await (await first).release();
  await using lastLock = await last;
  assert.ok(lastLock.held);
});

Deno.test("tryAcquire does not queue behind local waiters", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.redis, "barge");
  const waiting = Lock.acquire(env.redis, "barge", { timeout: 10_000 });
  const started = performance.now();
  assert.equal(await Lock.tryAcquire(env.redis, "barge"), null);
  assert.ok(performance.now() - started < 50);
  await holder.release();
  await (await within(waiting, 20_000, "the waiter's grant")).release();
});

// A server without sharded pub/sub, as Redis 6 is: both commands unknown.
const NO_SHARDED_PUBSUB = [
  "--rename-command",
  "SSUBSCRIBE",
  "",
  "--rename-command",
  "SPUBLISH",
  "",
];

Deno.test("a release in another process wakes a waiter through sharded pub/sub, or plain pub/sub where the server has no sharded one (ioredis, node-redis)", async (t) => {
  for (
    const [flavour, args, used, unused] of [
      ["sharded (Redis 7)", [], "SHARDNUMSUB", "NUMSUB"],
      ["plain (no SSUBSCRIBE)", NO_SHARDED_PUBSUB, "NUMSUB", "SHARDNUMSUB"],
    ] as const
  ) {
    await using server = await startRedis({ args: [...args] });
    await using side = await server.connect();
    const subscribers = async (kind: string) =>
      Number(
        (await side.send("PUBSUB", kind, "deadbolt:{remote}:released") as [
          string,
          number,
        ])[1],
      );
    const connections = async () =>
      String(await side.send("CLIENT", "LIST")).trim().split("\n").length;
    const holder = new Redis(server.port, "127.0.0.1");
    const waiter = new Redis(server.port, "127.0.0.1");
    const nodeWaiter = await createClient({ url: server.url }).connect();
    try {
      for (
        const [label, client] of [["ioredis", waiter], [
          "node-redis",
          nodeWaiter,
        ]] as const
      ) {
        await t.step(`${flavour}, ${label}`, async () => {
          const baseline = await connections();
          // A separate client stands for another process: no local queue is shared.
          const held = await Lock.acquire(holder, "remote");
          // Backoff waits of 2 s: only a notification makes this fast.
          const waiting = Lock.acquire(client, "remote", {
            timeout: 10_000,
            retryDelay: 2_000,
            maxRetryDelay: 2_000,
          });
          for (let i = 0; i < 500 && await subscribers(used) === 0; i++) {
            await sleep(10);
          }
          assert.equal(await subscribers(used), 1);
          assert.equal(await subscribers(unused), 0);
          const released = performance.now();
          await held.release();
          const lock = await within(waiting, 20_000, "the waiter's grant");
          const handoff = performance.now() - released;
          assert.ok(handoff < 1_000, `handoff took ${handoff} ms`);
          await lock.release();
          // The subscriber connection closes once nobody waits.
          for (let i = 0; i < 50 && await connections() > baseline; i++) {
            await sleep(10);
          }
          const after = await connections();
          assert.ok(
            after <= baseline,
            `${after - baseline} extra connection(s) left open`,
          );
          assert.equal(await subscribers(used), 0);
        });
      }
    } finally {
      await holder.quit();
      await waiter.quit();
      await nodeWaiter.close();
    }
  }
});

Deno.test("time spent in the local queue does not shorten the lease a waiter gets", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.redis, "long-queue");
  const second = Lock.acquire(env.redis, "long-queue", { timeout: 10_000 });
  // Queued behind `second` for longer than its own 200 ms lease.
  const third = Lock.acquire(env.redis, "long-queue", {
    timeout: 10_000,
    ttl: 200,
  });
  await sleep(400);
  await holder.release();
  await (await second).release();
  await using lock = await third;
  const left = lock.validUntil - performance.now();
  assert.ok(left > 150 && left <= 200, `${left} ms of validity left`);
});

Deno.test("a release in this process hands the lock to the waiting head in one round trip, with its own fence", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.redis, "handover", { fencing: true });
  const fences: number[] = [holder.fence!];
  const waiters = Array.from({ length: 10 }, async () => {
    const lock = await Lock.acquire(env.redis, "handover", {
      timeout: 10_000,
      fencing: true,
    });
    fences.push(lock.fence!);
    assert.ok(lock.held);
    await lock.release();
  });
  await lineUp(env.redis, "handover", 10);
  const before = env.redis.calls;
  await holder.release();
  await Promise.all(waiters);
  // Each release handed over to the next in one script call, and the last
  // found nobody waiting: about 11 calls, where waking each next waiter
  // would take 3 per handoff.
  const calls = env.redis.calls - before;
  assert.ok(calls <= 15, `${calls} script calls for 10 handoffs`);
  assert.deepEqual(fences, fences.toSorted((a, b) => a - b));
  assert.equal(new Set(fences).size, 11);
});

Deno.test("local handovers stop after a few in a row, so a waiter in another process gets its turn", async (t) => {
  await using env = await setup();
  const subscribing = new Redis(env.port, "127.0.0.1");
  try {
    // With pub/sub (ioredis), the local head and the other process learn of
    // the yielding release from the same message; without (the @db/redis
    // shape), the local head waits a moment before asking.
    for (
      const [label, client] of [["ioredis", subscribing], [
        "@db/redis shape",
        env.redis,
      ]] as const
    ) {
      await t.step(label, () => takesTurns(env.port, client));
    }
  } finally {
    await subscribing.quit();
  }
});

async function takesTurns(port: number, here: RedisClient): Promise<void> {
  const other = new Redis(port, "127.0.0.1");
  try {
    const first = await Lock.acquire(here, "fair");
    let local = 0;
    let stop = false;
    // This process keeps 4 workers queued on the lock all the time.
    const workers = Array.from({ length: 4 }, async () => {
      while (!stop) {
        const lock = await Lock.acquire(here, "fair", { timeout: 10_000 });
        local++;
        await lock.release();
      }
    });
    // Another client stands for another process.
    const remote = Lock.acquire(other, "fair", { timeout: 10_000 });
    await lineUp(other, "fair", 1);
    await first.release();
    const lock = await remote;
    const seen = local;
    stop = true;
    await lock.release();
    await Promise.all(workers);
    // Without the yield after MAX_HANDOVERS (16) it waited through hundreds
    // to thousands of local turns.
    assert.ok(
      seen <= 20,
      `the other process waited through ${seen} local turns`,
    );
  } finally {
    await other.quit();
  }
}

Deno.test("with nobody waiting in another process, local handovers go on without yielding", async () => {
  await using env = await setup();
  const TURNS = 200;
  let turns = 0;
  const first = await Lock.acquire(env.redis, "alone");
  const workers = Array.from({ length: 4 }, async () => {
    while (turns < TURNS) {
      const lock = await Lock.acquire(env.redis, "alone", { timeout: 10_000 });
      turns++;
      await lock.release();
    }
  });
  await lineUp(env.redis, "alone", 4);
  const before = env.redis.calls;
  await first.release();
  await Promise.all(workers);
  // One handover script per turn, plus the last release(s). A yield every
  // 16 handovers would add a release and an acquire each time (about 25).
  const calls = env.redis.calls - before;
  assert.ok(calls <= turns + 6, `${calls} script calls for ${turns} turns`);
  assert.equal(
    await env.side.send("EXISTS", "deadbolt:{alone}:line"),
    0,
    "nobody took a place in line",
  );
});

Deno.test("a waiter aborted while the lock is being handed to it leaves no key behind", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.redis, "abandoned");
  const controller = new AbortController();
  const waiting = Lock.acquire(env.redis, "abandoned", {
    timeout: 10_000,
    signal: controller.signal,
  });
  await lineUp(env.redis, "abandoned", 1);
  // Hold the handover script in the server's queue, abort meanwhile.
  await env.side.send("CLIENT", "PAUSE", "200", "WRITE");
  const releasing = holder.release();
  await sleep(20);
  const reason = new Error("gave up");
  controller.abort(reason);
  await assert.rejects(waiting, (error) => error === reason);
  assert.equal(await releasing, true);
  // The lock landed on the waiter's token after it gave up: deadbolt deletes
  // it by token, so nobody has to wait for that lease to run out.
  await until(
    async () => await env.side.send("EXISTS", "deadbolt:{abandoned}") === 0,
    2_000,
    "the abandoned handover's delete",
  );
});

/**
 * A client over `inner` whose handover replies wait for `open()`: the
 * script itself goes to Redis at once, only its answer is held back.
 */
function holdingHandovers(inner: ScriptClient, ordered: boolean) {
  const gate = Promise.withResolvers<void>();
  const hold = (kind: string, reply: Promise<unknown>) => {
    if (kind !== "handover") return reply;
    reply.catch(() => {}); // handled once the gate opens
    return gate.promise.then(() => reply);
  };
  const client: ScriptClient = {
    deadbolt: { ordered },
    eval: (script, keys, args) =>
      hold(scriptKind(script), inner.eval(script, keys, args)),
    evalsha: (sha, keys, args) =>
      hold(scriptKind(sha), inner.evalsha!(sha, keys, args)),
  };
  return { client, open: () => gate.resolve() };
}

/**
 * A server, a side connection and one ioredis client, with the handover
 * script loaded beforehand (so a held-back handover is the only call).
 */
async function ioredisSetup() {
  const server = await startRedis();
  const side = await server.connect();
  await side.send("SCRIPT", "LOAD", HANDOVER.source);
  const redis = new Redis(server.port, "127.0.0.1");
  return {
    side,
    redis,
    async [Symbol.asyncDispose]() {
      await redis.quit();
      await side[Symbol.asyncDispose]();
      await server.stop();
    },
  };
}

Deno.test("with a client that runs calls in order, a release hands the lock to the next local waiter before Redis answers; with any other client, once it has", async (t) => {
  await using env = await ioredisSetup();
  const { side, redis } = env;
  for (const ordered of [true, false]) {
    await t.step(ordered ? "ordered" : "not ordered", async () => {
      const { client, open } = holdingHandovers(fromIoredis(redis), ordered);
      const holder = await Lock.acquire(client, "eager");
      let granted = false;
      const waiting = Lock.acquire(client, "eager", { timeout: 10_000 })
        .then((lock) => (granted = true, lock));
      await lineUp(client, "eager", 1);
      const released = holder.release();
      // The handover script ran; only its answer is held back.
      await until(
        async () => await side.send("GET", "deadbolt:{eager}") !== holder.token,
        5_000,
        "the handover script's run",
      );
      assert.equal(granted, ordered);
      open();
      assert.equal(await released, true);
      const lock = await within(waiting, 20_000, "the waiter's grant");
      assert.ok(lock.held);
      assert.equal(await side.send("GET", "deadbolt:{eager}"), lock.token);
      // Calls the new holder makes run after the handover.
      assert.equal(await lock.extend(), true);
      assert.equal(await lock.release(), true);
      assert.equal(await side.send("EXISTS", "deadbolt:{eager}"), 0);
    });
  }
});

Deno.test("a lock handed over before Redis answered is lost, and says so, when the holder's key turned out gone", async () => {
  await using env = await ioredisSetup();
  const { side, redis } = env;
  const { client, open } = holdingHandovers(fromIoredis(redis), true);
  const holder = await Lock.acquire(client, "eager-lost");
  const waiting = Lock.acquire(client, "eager-lost", { timeout: 10_000 });
  await lineUp(client, "eager-lost", 1);
  // Redis forgets the holder's key (an operator, a failover).
  await side.send("DEL", "deadbolt:{eager-lost}");
  const released = holder.release();
  const lock = await within(waiting, 20_000, "the waiter's grant");
  const lost = abortedAt(lock.signal);
  open();
  await lost;
  assert.ok(lock.signal.reason instanceof LockLostError);
  assert.match(
    String(lock.signal.reason.message),
    /gone when it was handed over/,
  );
  assert.equal(lock.held, false);
  assert.equal(await released, false);
  assert.equal(await lock.release(), false);
  assert.equal(await side.send("EXISTS", "deadbolt:{eager-lost}"), 0);
});

Deno.test("eager handovers keep their order after the server lost its scripts (SCRIPT FLUSH)", async () => {
  await using env = await ioredisSetup();
  const { side, redis } = env;
  const TURNS = 400;
  let turns = 0;
  const perWorker = [0, 0, 0, 0];
  const work = async (worker: number) => {
    while (turns < TURNS) {
      const lock = await Lock.acquire(redis, "flushed", { timeout: 5_000 });
      turns++;
      perWorker[worker]++;
      await lock.release();
    }
  };
  for (let round = 0; round < 2; round++) {
    // The handover script must now come back through NOSCRIPT and EVAL
    // (the acquire and release scripts are loaded again at once): a
    // handover retried that way would run after the next holder's calls.
    await side.send("SCRIPT", "FLUSH");
    await (await Lock.acquire(redis, "flushed")).release();
    turns = 0;
    await Promise.all(perWorker.map((_, worker) => work(worker)));
  }
  assert.ok(
    perWorker.every((n) => n >= 50),
    `turns per worker: ${perWorker}`,
  );
  assert.equal(await side.send("EXISTS", "deadbolt:{flushed}"), 0);
});

Deno.test("a run of eager handovers leaves the event loop its turns", async () => {
  await using env = await ioredisSetup();
  const { redis } = env;
  const TURNS = 3_000;
  let turns = 0;
  // Counts the handovers between two turns of the event loop while the
  // workers hand the lock around with zero-work sections, which run
  // entirely in microtasks: the most in one turn, however fast the machine.
  let ticking = true;
  let atLastTick = 0;
  let mostInOneTurn = 0;
  let ticks = 0;
  const tick = () => {
    ticks++;
    mostInOneTurn = Math.max(mostInOneTurn, turns - atLastTick);
    atLastTick = turns;
    if (ticking) setTimeout(tick, 0);
  };
  const first = await Lock.acquire(redis, "starve");
  const workers = Array.from({ length: 200 }, async () => {
    while (turns < TURNS) {
      const lock = await Lock.acquire(redis, "starve", { timeout: 10_000 });
      turns++;
      await lock.release();
    }
  });
  await lineUp(redis, "starve", 200);
  atLastTick = turns;
  setTimeout(tick, 0);
  await first.release();
  await Promise.all(workers);
  ticking = false;
  tick();
  await sleep(5);
  // Unbounded, all 200 waiters chained in one turn, again and again; with
  // at most 16 handovers unanswered, 17 follow each answer, and a turn saw
  // up to four answers (68).
  assert.ok(
    mostInOneTurn <= 100,
    `${mostInOneTurn} handovers in one turn (${turns} in ${ticks} turns)`,
  );
});

Deno.test("a holder that has lost the lock never hands it over eagerly", async () => {
  await using env = await ioredisSetup();
  const { side, redis } = env;
  const { client, open } = holdingHandovers(fromIoredis(redis), true);
  const holder = await Lock.acquire(client, "stolen", { ttl: 300 });
  let granted = false;
  const waiting = Lock.acquire(client, "stolen", { timeout: 10_000 })
    .then((lock) => (granted = true, lock));
  // Another owner takes the key; the holder's next renewal finds out.
  await side.send("SET", "deadbolt:{stolen}", "someone-else", "PX", 60_000);
  await abortedAt(holder.signal);
  const released = holder.release();
  await sleep(50);
  // The other owner holds it: the waiter must not have been told it does.
  assert.equal(granted, false);
  open();
  assert.equal(await released, false);
  assert.equal(granted, false);
  await side.send("DEL", "deadbolt:{stolen}");
  await using lock = await within(waiting, 20_000, "the waiter's grant");
  assert.equal(await side.send("GET", "deadbolt:{stolen}"), lock.token);
});

Deno.test("after the lock went through Redis to another process without a yield, this process's next turn is a full one", async () => {
  await using env = await setup();
  const here = new Redis(env.port, "127.0.0.1");
  const there = new Redis(env.port, "127.0.0.1");
  const name = "full-turn";
  // Renewed often: a deleted key is found lost at once.
  const HOLD = { ttl: 2_000, renewInterval: 20, timeout: 10_000 };
  const ELSEWHERE = { timeout: 10_000, retryDelay: 50, maxRetryDelay: 50 };
  const acquired = (lock: Promise<Lock>, what: string) =>
    within(lock, 5_000, what);
  try {
    // Another process waits in line while this one hands the lock over 10
    // times in a row.
    let holder = await acquired(Lock.acquire(here, name, HOLD), "the grant");
    const remote = Lock.acquire(there, name, ELSEWHERE);
    await lineUp(there, name, 1);
    for (let i = 0; i < 10; i++) {
      const next = Lock.acquire(here, name, HOLD);
      await lineUp(here, name, 1);
      assert.equal(await within(holder.release(), 5_000, "release"), true);
      holder = await acquired(next, "a local handover");
    }
    // The lock goes through Redis without a yield: the holder loses it, and
    // the other process, first in line, gets it; then the local head.
    const head = Lock.acquire(here, name, HOLD);
    await lineUp(here, name, 1);
    await env.side.send("DEL", Lock.keys(name).lock);
    await abortedAt(holder.signal);
    assert.equal(await within(holder.release(), 5_000, "release"), false);
    const other = await acquired(remote, "the other process's turn");
    await lineUp(here, name, 1);
    assert.equal(await within(other.release(), 5_000, "release"), true);
    holder = await acquired(head, "this process's turn");
    // This process's turn: 16 handovers in a row while the other process
    // waits in line again, then a yield.
    const again = Lock.acquire(there, name, ELSEWHERE);
    await lineUp(there, name, 1);
    for (let i = 1; i <= 16; i++) {
      const next = Lock.acquire(here, name, HOLD);
      await lineUp(here, name, 1);
      assert.equal(await within(holder.release(), 5_000, "release"), true);
      const first = await within(
        Promise.race([next.then(() => "here"), again.then(() => "there")]),
        5_000,
        "the next turn",
      );
      // Before: the 10 handovers of the last turn still counted, and the
      // 7th release of this one yielded.
      assert.equal(first, "here", `release ${i} of the turn yielded`);
      holder = await next;
    }
    const next = Lock.acquire(here, name, HOLD);
    await lineUp(here, name, 1);
    assert.equal(await within(holder.release(), 5_000, "release"), true);
    const yielded = await acquired(again, "the other process's next turn");
    assert.equal(await within(yielded.release(), 5_000, "release"), true);
    const last = await acquired(next, "the last local turn");
    assert.equal(await within(last.release(), 5_000, "release"), true);
  } finally {
    await here.quit();
    await there.quit();
  }
});
