import assert from "node:assert/strict";
import {
  Lock,
  LockKeyError,
  LockLostError,
  LockTimeoutError,
  type ScriptClient,
} from "../mod.ts";
import { redisEnv } from "./_env.ts";
import {
  abortedAt,
  CountingClient,
  lineUp,
  scriptKind,
  sleep,
  within,
} from "./_util.ts";

// Core semantics against a real redis-server. The client is the @db/redis
// shape over a Deno socket, so the sanitizers see its resources too.

const setup = redisEnv;

/**
 * A client that forwards to `inner` and resolves `released` once a release
 * script has answered (not a LEAVE, whose one argument is a seat).
 */
function watchingReleases(inner: ScriptClient): ScriptClient & {
  released: Promise<void>;
} {
  const { promise, resolve } = Promise.withResolvers<void>();
  const watch = (script: string, reply: Promise<unknown>) => {
    if (scriptKind(script) === "release") reply.then(() => resolve(), () => {});
    return reply;
  };
  return {
    released: promise,
    eval: (script, keys, args) => watch(script, inner.eval(script, keys, args)),
    evalsha: (sha, keys, args) => watch(sha, inner.evalsha!(sha, keys, args)),
  };
}

Deno.test("Lock.acquire() sets the key to its token with a ttl lease and honest validity", async () => {
  await using env = await setup();
  const before = performance.now();
  await using lock = await Lock.acquire(env.redis, "job", { ttl: 5_000 });
  const after = performance.now();
  assert.equal(lock.key, "deadbolt:{job}");
  assert.equal(await env.side.send("GET", lock.key), lock.token);
  assert.match(lock.token, /^[0-9a-f-]{36}$/);
  const pttl = await env.side.send("PTTL", lock.key) as number;
  assert.ok(pttl > 4_900 && pttl <= 5_000, `PTTL ${pttl}`);
  assert.equal(lock.held, true);
  assert.equal(lock.signal.aborted, false);
  assert.equal(lock.fence, undefined);
  // validUntil = send time + ttl - (1% of ttl + 2 ms), so it lies in this band.
  assert.ok(lock.validUntil >= before + 5_000 - 52);
  assert.ok(lock.validUntil <= after + 5_000 - 52);
});

Deno.test("Lock.acquire() gives each acquisition a fresh token", async () => {
  await using env = await setup();
  const lock = new Lock(env.redis, "job");
  await lock.acquire();
  const first = lock.token;
  assert.equal(await lock.release(), true);
  await lock.acquire();
  assert.notEqual(lock.token, first);
  assert.equal(await env.side.send("GET", lock.key), lock.token);
  assert.equal(await lock.release(), true);
});

Deno.test("await using releases the lock on scope exit, also when the body throws", async () => {
  await using env = await setup();
  {
    await using lock = await Lock.acquire(env.redis, "scoped");
    assert.equal(await env.side.send("EXISTS", lock.key), 1);
  }
  assert.equal(await env.side.send("EXISTS", "deadbolt:{scoped}"), 0);
  const body = new Error("body failed");
  await assert.rejects(async () => {
    await using _lock = await Lock.acquire(env.redis, "scoped");
    throw body;
  }, (error) => error === body);
  assert.equal(await env.side.send("EXISTS", "deadbolt:{scoped}"), 0);
});

Deno.test("Lock.tryAcquire() returns null while another owner holds the lock", async () => {
  await using env = await setup();
  await using holder = await Lock.acquire(env.redis, "busy");
  const calls = new CountingClient(env.redis);
  {
    await using other = await Lock.tryAcquire(calls, "busy");
    assert.equal(other, null);
  }
  assert.equal(calls.calls, 1);
  assert.equal(await env.side.send("GET", holder.key), holder.token);
  assert.equal(await holder.release(), true);
  await using next = await Lock.tryAcquire(env.redis, "busy");
  assert.ok(next?.held);
});

Deno.test("Lock.acquire() rejects with LockTimeoutError once timeout ms have passed while held", async () => {
  await using env = await setup();
  await using _holder = await Lock.acquire(env.redis, "busy", { ttl: 10_000 });
  const started = performance.now();
  const error = await Lock.acquire(env.redis, "busy", { timeout: 300 }).then(
    () => assert.fail("acquired a held lock"),
    (error) => error,
  );
  const waited = performance.now() - started;
  assert.ok(error instanceof LockTimeoutError, String(error));
  assert.equal(error.lockName, "busy");
  assert.ok(error.remainingTtl > 9_000 && error.remainingTtl <= 10_000);
  assert.ok(waited >= 300 && waited < 450, `waited ${waited} ms`);
});

Deno.test("Lock.acquire() with timeout 0 makes exactly one attempt", async () => {
  await using env = await setup();
  await using _holder = await Lock.acquire(env.redis, "busy");
  const calls = new CountingClient(env.redis);
  await assert.rejects(
    Lock.acquire(calls, "busy", { timeout: 0 }),
    LockTimeoutError,
  );
  assert.equal(calls.calls, 1);
});

Deno.test("Lock.acquire() takes the lock as soon as the holder releases it", async () => {
  await using env = await setup();
  const holder = await Lock.acquire(env.redis, "handoff");
  const waiting = Lock.acquire(env.redis, "handoff", { timeout: 5_000 });
  await lineUp(env.redis, "handoff", 1);
  await holder.release();
  await using next = await within(waiting, 20_000, "the waiter's grant");
  assert.equal(await env.side.send("GET", next.key), next.token);
});

Deno.test("release() never deletes another owner's key", async () => {
  await using env = await setup();
  const stale = await Lock.acquire(env.redis, "shared", {
    ttl: 150,
    autoExtend: false,
  });
  await abortedAt(stale.signal);
  assert.ok(stale.signal.reason instanceof LockLostError);
  // Wait out the server-side expiry, which follows validUntil by the drift.
  const fresh = await Lock.acquire(env.redis, "shared", { timeout: 1_000 });
  assert.equal(await stale.release(), false);
  assert.equal(await env.side.send("GET", fresh.key), fresh.token);
  assert.equal(await stale.release(), false);
  assert.equal(await fresh.release(), true);
});

Deno.test("auto-extension keeps the lock held past its ttl", async () => {
  await using env = await setup();
  await using lock = await Lock.acquire(env.redis, "long", { ttl: 150 });
  const firstValidUntil = lock.validUntil;
  await sleep(600);
  assert.equal(lock.held, true);
  assert.equal(lock.signal.aborted, false);
  assert.ok(lock.validUntil > firstValidUntil + 300);
  assert.equal(await env.side.send("GET", lock.key), lock.token);
  const pttl = await env.side.send("PTTL", lock.key) as number;
  assert.ok(pttl > 0 && pttl <= 150, `PTTL ${pttl}`);
});

Deno.test("lock.signal aborts no later than validUntil when autoExtend is off", async () => {
  await using env = await setup();
  await using lock = await Lock.acquire(env.redis, "short", {
    ttl: 200,
    autoExtend: false,
  });
  const at = await abortedAt(lock.signal);
  assert.ok(at <= lock.validUntil, `aborted ${at - lock.validUntil} ms late`);
  assert.ok(lock.signal.reason instanceof LockLostError);
  assert.equal(lock.held, false);
  assert.match(lock.signal.reason.message, /autoExtend is off/);
});

Deno.test("lock.signal aborts with LockLostError when the key is deleted, and the key is not recreated", async () => {
  await using env = await setup();
  await using lock = await Lock.acquire(env.redis, "gone", { ttl: 300 });
  await env.side.send("DEL", lock.key);
  const at = await abortedAt(lock.signal);
  assert.ok(at <= lock.validUntil);
  assert.ok(lock.signal.reason instanceof LockLostError);
  assert.match(lock.signal.reason.message, /expired or was deleted/);
  assert.equal(lock.held, false);
  assert.equal(await lock.extend(), false);
  assert.equal(await env.side.send("EXISTS", lock.key), 0);
});

Deno.test("lock.signal aborts when another owner took the key, whose key release() then keeps", async () => {
  await using env = await setup();
  const lock = await Lock.acquire(env.redis, "taken", { ttl: 300 });
  await env.side.send("SET", lock.key, "someone-else", "PX", 10_000);
  await abortedAt(lock.signal);
  assert.match(lock.signal.reason.message, /another owner/);
  assert.equal(await lock.release(), false);
  assert.equal(await env.side.send("GET", lock.key), "someone-else");
});

Deno.test("extend() to a shorter lease counts validity down to it as the script goes out, even when its answer is lost", async () => {
  await using env = await setup();
  // Every extend's answer comes a second late: past its 300 ms bound. The
  // test waits for the late answers before it ends: their timers are the
  // stand-in's, not the lock's, and would run into the next test.
  const late: Promise<unknown>[] = [];
  const client: ScriptClient = {
    eval: (script, keys, args) => {
      const reply = env.redis.eval(script, keys, args);
      if (scriptKind(script) !== "extend") return reply;
      const delayed = reply.then((value) =>
        new Promise((resolve) => setTimeout(() => resolve(value), 1_000))
      );
      late.push(delayed);
      return delayed;
    },
  };
  const lock = await Lock.acquire(client, "shorter", {
    ttl: 10_000,
    commandTimeout: 300,
    autoExtend: false,
  });
  const sent = performance.now();
  await assert.rejects(
    lock.extend(1_000),
    (error) => (error as Error).name === "TimeoutError",
  );
  // Redis ran it: the key now expires a second after it was sent at the
  // latest. Before: validUntil stayed 10 s away, and the lock held on past
  // its key, beside the next owner.
  const pttl = Number(await env.side.send("PTTL", lock.key));
  assert.ok(pttl > 0 && pttl <= 1_000, `the script ran: PTTL ${pttl}`);
  assert.ok(
    lock.validUntil <= sent + 1_000,
    `valid ${Math.round(lock.validUntil - sent)} ms after the extend's send`,
  );
  const lost = await abortedAt(lock.signal, 3_000);
  assert.ok(lost <= sent + 1_000);
  await lock.release();
  await within(Promise.all(late), 3_000, "the late extend answers");
});

Deno.test("extend() renews the lease and moves validUntil; after loss it returns false", async () => {
  await using env = await setup();
  const lock = await Lock.acquire(env.redis, "ext", {
    ttl: 1_000,
    autoExtend: false,
  });
  const first = lock.validUntil;
  assert.equal(await lock.extend(20_000), true);
  assert.ok(lock.validUntil > first + 18_000);
  const pttl = await env.side.send("PTTL", lock.key) as number;
  assert.ok(pttl > 19_000 && pttl <= 20_000, `PTTL ${pttl}`);
  await env.side.send("SET", lock.key, "intruder");
  assert.equal(await lock.extend(), false);
  assert.ok(lock.signal.reason instanceof LockLostError);
  assert.equal(await env.side.send("GET", lock.key), "intruder");
  assert.equal(await lock.release(), false);
  await assert.rejects(lock.extend(), /does not hold it/);
});

Deno.test("extension racing release() neither errors nor leaves a key", async () => {
  await using env = await setup();
  for (let i = 0; i < 200; i++) {
    const lock = await Lock.acquire(env.redis, "race", { ttl: 60 });
    // ttl 60 renews every ~19 ms: release lands before, during or after one,
    // with enough validity left that a busy machine does not lose the lease.
    await sleep(i % 25);
    assert.equal(
      lock.signal.aborted,
      false,
      `round ${i}: ${lock.signal.reason}`,
    );
    assert.equal(await lock.release(), true, `round ${i}`);
    assert.equal(lock.signal.aborted, false);
  }
  assert.equal(await env.side.send("EXISTS", "deadbolt:{race}"), 0);
});

Deno.test("fencing issues strictly increasing fences and keeps the counter", async () => {
  await using env = await setup();
  const fences: number[] = [];
  for (let i = 0; i < 5; i++) {
    await using lock = await Lock.acquire(env.redis, "fenced", {
      fencing: true,
    });
    fences.push(lock.fence!);
  }
  assert.deepEqual(fences, [1, 2, 3, 4, 5]);
  assert.equal(await env.side.send("GET", "deadbolt:{fenced}:fence"), "5");
  assert.equal(await env.side.send("PTTL", "deadbolt:{fenced}:fence"), -1);
});

Deno.test("a foreign key at the lock's name fails fast with LockKeyError and is left alone (F32)", async () => {
  await using env = await setup();
  await env.side.send("HSET", "deadbolt:{app}", "field", "value");
  const started = performance.now();
  await assert.rejects(
    Lock.acquire(env.redis, "app", { timeout: 5_000 }),
    (error) => error instanceof LockKeyError && error.key === "deadbolt:{app}",
  );
  assert.ok(performance.now() - started < 500);
  assert.equal(await env.side.send("TYPE", "deadbolt:{app}"), "hash");

  await env.side.send("SET", "deadbolt:{count}:fence", "not-a-number");
  await assert.rejects(
    Lock.acquire(env.redis, "count", { fencing: true }),
    (error) =>
      error instanceof LockKeyError && /fence counter/.test(error.message),
  );
  assert.equal(await env.side.send("EXISTS", "deadbolt:{count}"), 0);
  await env.side.send("SET", "deadbolt:{count}:fence", String(2 ** 53 - 1));
  await assert.rejects(
    Lock.acquire(env.redis, "count", { fencing: true }),
    LockKeyError,
  );
  assert.equal(await env.side.send("EXISTS", "deadbolt:{count}"), 0);
});

Deno.test("Lock.acquire() rejects with signal.reason when aborted while waiting", async () => {
  await using env = await setup();
  await using _holder = await Lock.acquire(env.redis, "busy");
  const controller = new AbortController();
  const waiting = Lock.acquire(env.redis, "busy", {
    timeout: 10_000,
    signal: controller.signal,
  });
  await lineUp(env.redis, "busy", 1);
  const reason = new Error("shutting down");
  const started = performance.now();
  controller.abort(reason);
  await assert.rejects(waiting, (error) => error === reason);
  assert.ok(performance.now() - started < 50);
});

Deno.test("Lock.acquire() aborted while its SET is in flight cleans up the late grant", async () => {
  await using env = await setup();
  const client = watchingReleases(env.redis);
  const controller = new AbortController();
  // Another connection stalls the server, so our script waits in its queue.
  const stall = await env.server.connect();
  const stalled = stall.send("DEBUG", "SLEEP", "0.3");
  await sleep(20);
  const acquiring = Lock.acquire(client, "inflight", {
    signal: controller.signal,
  });
  await sleep(20);
  controller.abort();
  await assert.rejects(
    acquiring,
    (error) => (error as Error).name === "AbortError",
  );
  await stalled;
  await stall[Symbol.asyncDispose]();
  // The grant landed after the abort; deadbolt deletes it once it arrives.
  await within(client.released, 5_000, "the late grant's deletion");
  assert.equal(await env.side.send("EXISTS", "deadbolt:{inflight}"), 0);
});

Deno.test("a grant that arrives with no validity left is void and cleaned up", async () => {
  await using env = await setup();
  const client = watchingReleases(env.redis);
  const stall = await env.server.connect();
  const stalled = stall.send("DEBUG", "SLEEP", "0.25");
  await sleep(20);
  const error = await Lock.acquire(client, "late", {
    ttl: 200,
    timeout: 0,
  }).then(() => assert.fail("resolved with an expired lock"), (e) => e);
  await stalled;
  await stall[Symbol.asyncDispose]();
  assert.ok(!(error instanceof LockTimeoutError));
  assert.equal((error as Error).name, "TimeoutError");
  await within(client.released, 5_000, "the late grant's deletion");
  assert.equal(await env.side.send("EXISTS", "deadbolt:{late}"), 0);
});

Deno.test("a dead Redis surfaces as its own error, never as LockTimeoutError", async () => {
  await using env = await setup();
  env.server.signal("SIGKILL");
  await env.side.closed;
  await assert.rejects(
    Lock.acquire(env.redis, "down", { timeout: 1_000 }),
    (error) =>
      !(error instanceof LockTimeoutError) && /closed/.test(String(error)),
  );
});

Deno.test("a stalled Redis rejects after commandTimeout, not as LockTimeoutError", async () => {
  await using env = await setup();
  const client = watchingReleases(env.redis);
  env.server.signal("SIGSTOP");
  try {
    const started = performance.now();
    const error = await Lock.acquire(client, "stalled", {
      commandTimeout: 200,
      timeout: 60_000,
    }).then(() => assert.fail("acquired"), (e) => e);
    const took = performance.now() - started;
    assert.equal((error as Error).name, "TimeoutError");
    assert.ok(took >= 200 && took < 400, `took ${took} ms`);
  } finally {
    env.server.signal("SIGCONT");
  }
  // The script ran once the server resumed; its key is deleted by token.
  await within(client.released, 5_000, "the late grant's deletion");
  assert.equal(await env.side.send("EXISTS", "deadbolt:{stalled}"), 0);
});

Deno.test("lock.signal aborts before validUntil while Redis is unreachable", async () => {
  await using env = await setup();
  await using lock = await Lock.acquire(env.redis, "held", { ttl: 300 });
  env.server.signal("SIGSTOP");
  try {
    const at = await abortedAt(lock.signal);
    assert.ok(at <= lock.validUntil, `aborted ${at - lock.validUntil} ms late`);
    assert.ok(lock.signal.reason instanceof LockLostError);
    assert.equal((lock.signal.reason.cause as Error)?.name, "TimeoutError");
  } finally {
    env.server.signal("SIGCONT");
  }
});

Deno.test("one handle refuses misuse without touching another owner's key", async (t) => {
  await using env = await setup();
  await t.step("a second acquire() while one is pending", async () => {
    await using holder = await Lock.acquire(env.redis, "misuse");
    const lock = new Lock(env.redis, "misuse", { timeout: 5_000 });
    const first = lock.acquire();
    await assert.rejects(lock.acquire(), /pending/);
    await holder.release();
    await first;
    await assert.rejects(lock.acquire(), /holds it already/);
    assert.equal(await lock.release(), true);
  });
  await t.step("release() while acquire() waits cancels the wait", async () => {
    await using holder = await Lock.acquire(env.redis, "misuse");
    const lock = new Lock(env.redis, "misuse", { timeout: 5_000 });
    const waiting = lock.acquire();
    await lineUp(env.redis, "misuse", 1);
    assert.equal(await lock.release(), false);
    await assert.rejects(
      waiting,
      (error) => (error as Error).name === "AbortError",
    );
    assert.equal(await env.side.send("GET", holder.key), holder.token);
  });
  await t.step(
    "release twice, dispose twice, extend after release",
    async () => {
      const lock = await Lock.acquire(env.redis, "misuse");
      assert.equal(await lock.release(), true);
      assert.equal(await lock.release(), false);
      await lock[Symbol.asyncDispose]();
      await lock[Symbol.asyncDispose]();
      await assert.rejects(lock.extend(), /does not hold it/);
      assert.equal(lock.held, false);
    },
  );
});

Deno.test("acquire() after a loss deletes the stale lease and hands out a fresh signal", async () => {
  await using env = await setup();
  const lock = new Lock(env.redis, "again", { ttl: 200, autoExtend: false });
  await lock.acquire();
  const lost = lock.signal;
  const staleToken = lock.token;
  await abortedAt(lost);
  // The key outlives the handle's validity (say, a slow server clock).
  await env.side.send("PEXPIRE", lock.key, 60_000);
  await lock.acquire({ timeout: 0 });
  assert.notEqual(lock.token, staleToken);
  assert.equal(await env.side.send("GET", lock.key), lock.token);
  assert.equal(lost.aborted, true);
  assert.equal(lock.signal.aborted, false);
  assert.equal(await lock.release(), true);
});

Deno.test("release() while acquire() first deletes a lost hold's key sends no attempt for the wait it called off", async () => {
  await using env = await setup();
  // The kind of each script call (a NOSCRIPT retry repeats its kind).
  const kinds: string[] = [];
  const client: ScriptClient = {
    eval: (script, keys, args) => {
      kinds.push(scriptKind(script));
      return env.redis.eval(script, keys, args);
    },
  };
  const lock = new Lock(client, "called-off", { ttl: 200, autoExtend: false });
  await lock.acquire();
  await abortedAt(lock.signal);
  kinds.length = 0;
  const acquiring = lock.acquire();
  assert.equal(await lock.release(), false);
  await assert.rejects(
    acquiring,
    (error) => (error as Error).name === "AbortError",
  );
  // The lost hold's delete only. Before, the attempt went out as well, and
  // the key it may have won was deleted once it answered.
  assert.deepEqual(kinds, ["release"]);
  assert.equal(await env.side.send("EXISTS", lock.key), 0);
});

Deno.test("renewInterval sets how often the lease is renewed; a third of ttl by default", async () => {
  await using env = await setup();
  const renewals = async (options: { renewInterval?: number }) => {
    const calls = new CountingClient(env.redis);
    const lock = await Lock.acquire(calls, `renew-${options.renewInterval}`, {
      ttl: 1_500,
      ...options,
    });
    const after = calls.calls;
    await sleep(1_050); // real time for renewals to happen
    const count = calls.calls - after;
    assert.ok(lock.held);
    await lock.release();
    return count;
  };
  const [often, byDefault] = await Promise.all([
    renewals({ renewInterval: 100 }),
    renewals({}),
  ]);
  // Every 100 ms: about 10 in 1 s; every 500 ms: 2.
  assert.ok(often >= 7 && often <= 11, `${often} renewals every 100 ms`);
  assert.ok(byDefault >= 1 && byDefault <= 2, `${byDefault} by default`);
  for (const renewInterval of [0, 751, 1.5, "100"]) {
    assert.throws(
      () =>
        new Lock(env.redis, "bad", {
          ttl: 1_500,
          renewInterval: renewInterval as number,
        }),
      (error: Error) =>
        (error instanceof RangeError || error instanceof TypeError) &&
        /'renewInterval'/.test(error.message),
      String(renewInterval),
    );
  }
});
