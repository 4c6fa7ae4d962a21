import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import {
  fromIoredis,
  Lock,
  MultiLock,
  ReadWriteLock,
  type RedisClient,
  type ScriptClient,
  Semaphore,
} from "../mod.ts";
import { existingQueue } from "../src/_queue.ts";
import { toScriptClient } from "../src/client.ts";
import { LEAVE } from "../src/_line_scripts.ts";
import { startRedis } from "./_redis.ts";
import { DbRedisShape, type RespClient } from "./_resp.ts";
import {
  evalClient,
  lineUp,
  sleep,
  slowBackoff,
  until,
  within,
} from "./_util.ts";

// Across processes, waiters take places in the lock's line in Redis: once
// the first process in line has waited the patience (30 ms), a free lock
// is promised to it alone. Each client here stands for a process (its own
// local queue, its own seat). A client with `eval` only backs off between
// attempts; ioredis is woken by pub/sub at once, so without the line it
// would win every race against a waiter that sleeps.

/**
 * The seats in line for lock `name` (or `key`'s line), first first, and how
 * long (ms) the first has waited.
 */
async function line(
  side: RespClient,
  name: string,
  key = Lock.keys(name).lock,
): Promise<{ seats: string[]; waited: number }> {
  const line = `${key}:line`;
  const reply = await side.send("ZRANGE", line, "0", "-1", "WITHSCORES");
  const flat = (reply as unknown[]).map(String);
  const [seconds, micros] = (await side.send("TIME") as unknown[]).map(Number);
  const seats = flat.filter((_, i) => i % 2 === 0);
  const waited = seats.length === 0
    ? 0
    : (seconds * 1e6 + micros - Number(flat[1])) / 1000;
  return { seats, waited };
}

/** Resolves once `count` processes wait in line and the first has waited 40 ms. */
function patientLine(
  side: RespClient,
  name: string,
  count: number,
  key?: string,
) {
  return until(
    async () => {
      const { seats, waited } = await line(side, name, key);
      return seats.length === count && waited >= 40;
    },
    5_000,
    `${count} process(es) in line for '${name}', the first for 40 ms`,
  );
}

async function setup() {
  const server = await startRedis();
  const side = await server.connect();
  const sleeper = await server.connect();
  const other = await server.connect();
  const woken = new Redis(server.port, "127.0.0.1");
  return {
    side,
    // Backs off up to 200 ms between attempts: no wake-ups.
    sleeper: evalClient(sleeper),
    // Asks once, or backs off: a third process.
    other: evalClient(other),
    // Woken by pub/sub the moment a release happens.
    woken,
    async [Symbol.asyncDispose]() {
      woken.disconnect();
      for (const conn of [side, sleeper, other]) {
        await conn[Symbol.asyncDispose]();
      }
      await server.stop();
    },
  };
}

const SLOW = { timeout: 10_000, retryDelay: 100, maxRetryDelay: 200 };

Deno.test("across processes a free lock goes to the process first in line once it has waited 30 ms, though another process asks first", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.other, "order");
  const grants: string[] = [];
  const first = Lock.acquire(env.sleeper, "order", SLOW).then((lock) => {
    grants.push("first in line");
    return lock;
  });
  // A failed assertion must not leave them unhandled when the test ends.
  first.catch(() => {});
  await patientLine(env.side, "order", 1);
  const second = Lock.acquire(env.woken, "order", { timeout: 10_000 }).then(
    (lock) => {
      grants.push("second in line");
      return lock;
    },
  );
  second.catch(() => {});
  await lineUp(env.woken, "order", 1);
  await until(
    async () => (await line(env.side, "order")).seats.length === 2,
    5_000,
    "the second process takes a place in line",
  );
  // The second's process hears of the release at once, and asks first.
  assert.equal(await holder.release(), true);
  const lock = await within(first, 5_000, "the first in line's grant");
  assert.deepEqual(grants, ["first in line"]);
  assert.equal(await lock.release(), true);
  const next = await within(second, 5_000, "the second in line's grant");
  assert.deepEqual(grants, ["first in line", "second in line"]);
  assert.equal(await next.release(), true);
  assert.deepEqual((await line(env.side, "order")).seats, []);
});

Deno.test("tryAcquire gets no free lock promised to a process that has waited in line 30 ms; the process gets it", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.other, "promised");
  const waiter = Lock.acquire(env.sleeper, "promised", SLOW);
  await patientLine(env.side, "promised", 1);
  assert.equal(await holder.release(), true);
  assert.equal(await Lock.tryAcquire(env.woken, "promised"), null);
  const lock = await within(waiter, 5_000, "the waiter's grant");
  assert.equal(await lock.release(), true);
  // With nobody in line, a try gets a free lock.
  const tried = await Lock.tryAcquire(env.woken, "promised");
  assert.ok(tried);
  assert.equal(await tried.release(), true);
});

Deno.test("a process that died in line holds a free lock up only until its place lapses", async () => {
  await using env = await setup();
  const { line: lineKey, seats } = Lock.keys("dead");
  const holder = await Lock.acquire(env.other, "dead");
  // A seat that arrived a second ago and lapses 400 ms from now: a process
  // that asked and then died.
  const [seconds, micros] = (await env.side.send("TIME") as unknown[]).map(
    Number,
  );
  const now = seconds * 1000 + Math.floor(micros / 1000);
  await env.side.send("ZADD", lineKey, String((now - 1000) * 1000), "dead");
  await env.side.send("ZADD", seats, String(now + 400), "dead");
  const started = performance.now();
  const waiter = Lock.acquire(env.woken, "dead", { timeout: 10_000 });
  await lineUp(env.woken, "dead", 1);
  assert.equal(await holder.release(), true);
  const lock = await within(waiter, 3_000, "the live waiter's grant");
  const waited = performance.now() - started;
  assert.ok(waited >= 300, `granted after ${waited} ms, before the lapse`);
  assert.equal(await lock.release(), true);
  assert.deepEqual(
    (await line(env.side, "dead")).seats,
    [],
    "the dead seat is gone",
  );
});

Deno.test("a waiter that gives up takes its process's place out of line at once, and a new head keeps it", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.other, "leave");
  // Backs off 500–1000 ms: its place would last 600 ms or more.
  const slow = { timeout: 10_000, retryDelay: 500, maxRetryDelay: 1_000 };
  const gaveUp = new AbortController();
  const first = Lock.acquire(env.sleeper, "leave", {
    ...slow,
    signal: gaveUp.signal,
  });
  first.catch(() => {});
  const behind = new AbortController();
  const second = Lock.acquire(env.sleeper, "leave", {
    ...slow,
    signal: behind.signal,
  });
  second.catch(() => {});
  await lineUp(env.sleeper, "leave", 2);
  const { seats } = await line(env.side, "leave");
  assert.equal(seats.length, 1);
  // The head gives up: the waiter behind it keeps the process's place.
  gaveUp.abort();
  await assert.rejects(within(first, 2_000, "the abort"));
  assert.deepEqual((await line(env.side, "leave")).seats, seats);
  behind.abort();
  await assert.rejects(within(second, 2_000, "the abort"));
  const left = performance.now();
  await until(
    async () =>
      Number(await env.side.send("EXISTS", Lock.keys("leave").line)) === 0,
    2_000,
    "the place leaves the line",
  );
  const ms = performance.now() - left;
  assert.ok(ms < 400, `the place left after ${ms} ms, as if it lapsed`);
  assert.equal(await holder.release(), true);
});

Deno.test("a semaphore's free permit goes to the process first in line once it has waited 30 ms, though another process asks first; a try gets none", async () => {
  await using env = await setup();
  const limit = { limit: 2 };
  const held = [
    await Semaphore.acquire(env.other, "permits", limit),
    await Semaphore.acquire(env.other, "permits", limit),
  ];
  const key = held[0].key;
  const grants: string[] = [];
  const first = Semaphore.acquire(env.sleeper, "permits", { ...limit, ...SLOW })
    .then((permit) => {
      grants.push("first in line");
      return permit;
    });
  // A failed assertion must not leave them unhandled when the test ends.
  first.catch(() => {});
  await patientLine(env.side, "permits", 1, key);
  const second = Semaphore.acquire(env.woken, "permits", {
    ...limit,
    timeout: 10_000,
  }).then((permit) => {
    grants.push("second in line");
    return permit;
  });
  second.catch(() => {});
  await lineUp(env.woken, "permits", 1, 5_000, key);
  await until(
    async () => (await line(env.side, "permits", key)).seats.length === 2,
    5_000,
    "the second process takes a place in line",
  );
  // One permit frees: the second's process hears of it at once and asks
  // first, and so does a try.
  assert.equal(await held[0].release(), true);
  assert.equal(await Semaphore.tryAcquire(env.woken, "permits", limit), null);
  const permit = await within(first, 5_000, "the first in line's permit");
  assert.deepEqual(grants, ["first in line"]);
  assert.equal(await held[1].release(), true);
  const next = await within(second, 5_000, "the second in line's permit");
  assert.deepEqual(grants, ["first in line", "second in line"]);
  assert.equal(await permit.release(), true);
  assert.equal(await next.release(), true);
  assert.deepEqual((await line(env.side, "permits", key)).seats, []);
});

Deno.test("a free write lock goes to the writer process first in line once it has waited 30 ms, though another writer process asks first", async () => {
  await using env = await setup();
  const holder = await ReadWriteLock.write(env.other, "writers");
  const key = holder.key;
  const grants: string[] = [];
  const first = ReadWriteLock.write(env.sleeper, "writers", SLOW).then(
    (hold) => {
      grants.push("first in line");
      return hold;
    },
  );
  first.catch(() => {});
  await patientLine(env.side, "writers", 1, key);
  const second = ReadWriteLock.write(env.woken, "writers", { timeout: 10_000 })
    .then((hold) => {
      grants.push("second in line");
      return hold;
    });
  second.catch(() => {});
  await until(
    async () => (await line(env.side, "writers", key)).seats.length === 2,
    5_000,
    "the second process takes a place in line",
  );
  assert.equal(await holder.release(), true);
  const hold = await within(first, 5_000, "the first in line's write hold");
  assert.deepEqual(grants, ["first in line"]);
  assert.equal(await hold.release(), true);
  const next = await within(second, 5_000, "the second in line's write hold");
  assert.deepEqual(grants, ["first in line", "second in line"]);
  assert.equal(await next.release(), true);
  assert.deepEqual((await line(env.side, "writers", key)).seats, []);
});

Deno.test("a release wakes only the process the lock is promised to; the others in line sleep on", async () => {
  await using env = await setup();
  const behind = new Redis(env.woken.options.port!, "127.0.0.1");
  try {
    const first = fromIoredis(env.woken);
    const second = fromIoredis(behind);
    const holder = await Lock.acquire(env.other, "targeted");
    const slow = { timeout: 10_000, retryDelay: 500, maxRetryDelay: 1_000 };
    const firstWaits = Lock.acquire(first, "targeted", slow);
    firstWaits.catch(() => {});
    await patientLine(env.side, "targeted", 1);
    const secondWaits = Lock.acquire(second, "targeted", slow);
    secondWaits.catch(() => {});
    await until(
      async () => (await line(env.side, "targeted")).seats.length === 2,
      5_000,
      "the second process takes a place in line",
    );
    await lineUp(first, "targeted", 1);
    await lineUp(second, "targeted", 1);
    const { released } = Lock.keys("targeted");
    await until(
      async () => {
        const reply = await env.side.send("PUBSUB", "SHARDNUMSUB", released);
        return Number((reply as unknown[])[1]) === 2;
      },
      5_000,
      "both processes listen for releases",
    );
    // Wake-ups of the second's queue (its backoff timer is not one).
    const queue = existingQueue(
      toScriptClient(second),
      Lock.keys("targeted").lock,
    )!;
    let woken = 0;
    const wake = queue.wake.bind(queue);
    queue.wake = () => {
      woken++;
      wake();
    };
    assert.equal(await holder.release(), true);
    const lock = await within(firstWaits, 2_000, "the first in line's grant");
    // Long enough for the release's message to have reached both.
    await sleep(100);
    assert.equal(woken, 0, "the second process was woken too");
    assert.equal(await lock.release(), true);
    const next = await within(secondWaits, 5_000, "the second's grant");
    assert.equal(await next.release(), true);
  } finally {
    behind.disconnect();
  }
});

Deno.test("a MultiLock gets no free lock promised to a process that has waited in line 30 ms, and takes the set once nobody is", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.other, "set-a");
  const waiter = Lock.acquire(env.sleeper, "set-a", SLOW);
  waiter.catch(() => {});
  await patientLine(env.side, "set-a", 1);
  assert.equal(await holder.release(), true);
  assert.equal(await MultiLock.tryAcquire(env.woken, ["set-a", "set-b"]), null);
  assert.equal(
    Number(await env.side.send("EXISTS", Lock.keys("set-b").lock)),
    0,
    "nothing of the set taken",
  );
  const lock = await within(waiter, 5_000, "the waiter's grant");
  assert.equal(await lock.release(), true);
  const set = await MultiLock.tryAcquire(env.woken, ["set-a", "set-b"]);
  assert.ok(set, "the set once nobody waits");
  assert.equal(await set.release(), true);
});

/**
 * A client with `eval` and `evalsha` over one RESP connection: calls go out
 * at once, one behind the other (pipelined, as ioredis and node-redis send).
 */
function shaClient(conn: RespClient): ScriptClient {
  return {
    eval: (script, keys, args) =>
      conn.send("EVAL", script, keys.length, ...keys, ...args),
    evalsha: (sha, keys, args) =>
      conn.send("EVALSHA", sha, keys.length, ...keys, ...args),
  };
}

/** How a process's client sends: pipelined, or one command at a time. */
const SHAPES: [string, (conn: RespClient) => RedisClient][] = [
  ["pipelined", shaClient],
  ["one command at a time (@db/redis shape)", (conn) => new DbRedisShape(conn)],
];

// Waits of 2 s backoff: a place lasts 2.1 s past an attempt.
const PLACE_OUTLASTS_TEST = {
  timeout: 10_000,
  retryDelay: 2_000,
  maxRetryDelay: 2_000,
};

Deno.test("a wait that ends after Redis lost the scripts (NOSCRIPT) takes its place out of line before the process's next try asks", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  await using otherConn = await server.connect();
  const other = evalClient(otherConn);
  for (const [shape, open] of SHAPES) {
    await t.step(shape, async () => {
      await using conn = await server.connect();
      const client = open(conn);
      const name = `flushed ${shape}`;
      const holder = await within(Lock.acquire(other, name), 1_000, "hold");
      // The process knows LEAVE's SHA-1 (from a wait that gave up earlier,
      // as F21's did before F22), and Redis has lost the script (a restart,
      // a failover, SCRIPT FLUSH): the next wait's first attempt loads
      // ACQUIRE again, LEAVE stays unknown to Redis.
      LEAVE.sha ??= String(
        await within(side.send("SCRIPT", "LOAD", LEAVE.source), 1_000, "load"),
      );
      assert.equal(
        await within(side.send("SCRIPT", "FLUSH"), 1_000, "flush"),
        "OK",
      );
      using _slow = slowBackoff();
      const stop = new AbortController();
      const waiting = Lock.acquire(client, name, {
        ...PLACE_OUTLASTS_TEST,
        signal: stop.signal,
      });
      waiting.catch(() => {});
      await lineUp(client, name, 1);
      await patientLine(side, name, 1);
      assert.equal(await within(holder.release(), 1_000, "release"), true);
      // The wait ends (an abort here, a timeout in F22: both empty the
      // queue, which gives the place up), and the process tries at once.
      stop.abort();
      await assert.rejects(within(waiting, 1_000, "the abort"));
      const next = await within(Lock.tryAcquire(client, name), 1_000, "try");
      assert.ok(
        next,
        "a free lock refused: promised to the process's own place, still in line",
      );
      assert.equal(await within(next.release(), 1_000, "release"), true);
      assert.deepEqual((await line(side, name)).seats, []);
    });
  }
});

/**
 * A client over `conn` whose first call (a wait's first attempt) runs in
 * Redis but has its reply held back (a slow network) until `letGo`.
 */
function firstReplyHeldBack(conn: RespClient) {
  const inner = shaClient(conn);
  const held: (() => void)[] = [];
  let calls = 0;
  const stall = (reply: Promise<unknown>): Promise<unknown> => {
    if (++calls > 1) return reply;
    const late = Promise.withResolvers<unknown>();
    held.push(() => reply.then(late.resolve, late.reject));
    return late.promise;
  };
  const client: ScriptClient = {
    eval: (script, keys, args) => stall(inner.eval(script, keys, args)),
    evalsha: (sha, keys, args) => stall(inner.evalsha!(sha, keys, args)),
  };
  return { client, held, letGo: () => held.forEach((letGo) => letGo()) };
}

/** A lock or a semaphore of one permit, as the line's tests need it. */
interface Kind {
  key: (name: string) => string;
  acquire(
    client: RedisClient,
    name: string,
    options?: Record<string, unknown>,
  ): Promise<{ release(): Promise<boolean> }>;
  tryAcquire(
    client: RedisClient,
    name: string,
  ): Promise<{ release(): Promise<boolean> } | null>;
}

const KINDS: [string, Kind][] = [
  ["a lock", {
    key: (name) => Lock.keys(name).lock,
    acquire: (client, name, options) => Lock.acquire(client, name, options),
    tryAcquire: (client, name) => Lock.tryAcquire(client, name),
  }],
  ["a semaphore", {
    key: (name) => `deadbolt:semaphore:{${name}}`,
    acquire: (client, name, options) =>
      Semaphore.acquire(client, name, { ...options, limit: 1 }),
    tryAcquire: (client, name) =>
      Semaphore.tryAcquire(client, name, { limit: 1 }),
  }],
];

Deno.test("a wait called off before its first attempt's reply takes the place that attempt took out of line", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  await using otherConn = await server.connect();
  const other = evalClient(otherConn);
  for (const [kind, { key, acquire, tryAcquire }] of KINDS) {
    await t.step(kind, async () => {
      await using conn = await server.connect();
      const { client, held, letGo } = firstReplyHeldBack(conn);
      const name = `stalled ${kind}`;
      try {
        const holder = await within(acquire(other, name), 1_000, "hold");
        const stop = new AbortController();
        const waiting = acquire(client, name, {
          ...PLACE_OUTLASTS_TEST,
          signal: stop.signal,
        });
        waiting.catch(() => {});
        // The first attempt took a place; its reply has not come.
        await patientLine(side, name, 1, key(name));
        assert.equal(held.length, 1);
        assert.equal(await within(holder.release(), 1_000, "release"), true);
        stop.abort();
        await assert.rejects(within(waiting, 1_000, "the abort"));
        const next = await within(tryAcquire(client, name), 1_000, "try");
        assert.ok(
          next,
          "refused: promised to the process's own place, still in line",
        );
        assert.equal(await within(next.release(), 1_000, "release"), true);
        assert.deepEqual((await line(side, name, key(name))).seats, []);
      } finally {
        letGo();
      }
    });
  }
});
