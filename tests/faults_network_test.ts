import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import {
  fromIoredis,
  Lock,
  LockLostError,
  LockTimeoutError,
  type ScriptClient,
} from "../mod.ts";
import { ChaosProxy } from "./_chaos.ts";
import { type RedisServer, startRedis } from "./_redis.ts";
import { DbRedisShape, RespClient } from "./_resp.ts";
import {
  abortedAt,
  quitIoredis,
  recordCall,
  type RecordedCall,
  type ScriptKind,
  scriptKind,
  sleep,
  within,
} from "./_util.ts";

// Network faults between the client and Redis, injected by the chaos proxy
// in _chaos.ts; assertions go over a side connection straight to Redis.
//
// Clients: the @db/redis shape (DbRedisShape) never reconnects and matches
// replies by order, so a fault acts on exactly one socket: it is used
// wherever the scenario needs deterministic no-reconnect behaviour. ioredis 6
// is used where the scenario is about a client that reconnects and resends
// the commands it sent but never heard back about (autoResendUnfulfilledCommands,
// on by default), which is what cleans up ambiguous outcomes (F6, F7).

const DRIFT = (ttl: number) => ttl * 0.01 + 2;

type Kind = ScriptKind;

/** One script call deadbolt made, as the client saw it. */
interface Call extends RecordedCall {
  kind: Kind;
}

type Recorder = ScriptClient & {
  calls: Call[];
  /** Resolves with the first call (past or future) that matches; fails after `ms`. */
  call(match: (call: Call) => boolean, ms?: number): Promise<Call>;
  /** Resolves once every call has settled, cleanups started by settling calls included. */
  idle(ms?: number): Promise<void>;
};

/** A client that forwards to `inner` and records every script call. */
function recording(inner: ScriptClient): Recorder {
  const calls: Call[] = [];
  const waiters: { match: (call: Call) => boolean; resolve(c: Call): void }[] =
    [];
  const record = (
    script: string,
    args: string[],
    reply: Promise<unknown>,
  ) => {
    const call: Call = Object.assign(recordCall(args, reply), {
      kind: scriptKind(script),
    });
    calls.push(call);
    for (const waiter of waiters.filter((w) => w.match(call))) {
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve(call);
    }
    return reply;
  };
  return {
    calls,
    eval: (script, keys, args) =>
      record(script, args, inner.eval(script, keys, args)),
    evalsha: (sha, keys, args) =>
      record(sha, args, inner.evalsha!(sha, keys, args)),
    call(match, ms = 3_000) {
      const found = calls.find(match);
      if (found) return Promise.resolve(found);
      const waiter = { match, ...Promise.withResolvers<Call>() };
      waiters.push(waiter);
      return within(waiter.promise, ms, "the expected script call").finally(
        () =>
          waiters.includes(waiter) &&
          waiters.splice(waiters.indexOf(waiter), 1),
      );
    },
    async idle(ms = 5_000) {
      const deadline = performance.now() + ms;
      while (!calls.every((call) => call.settled)) {
        assert.ok(performance.now() < deadline, "script calls still pending");
        await Promise.allSettled(calls.map((call) => call.reply));
        // A settled acquire starts its cleanup a few microtasks later.
        await sleep(0);
      }
    },
  };
}

/** Polls until `condition` holds: a server-side effect we can only observe. */
async function until(
  condition: () => Promise<boolean>,
  what: string,
  ms = 2_000,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (!await condition()) {
    assert.ok(performance.now() < deadline, `${what} within ${ms} ms`);
    await sleep(2);
  }
}

/** Runs `fn`, which must reject within `ms`; returns the error and how long it took. */
async function rejection(
  fn: () => Promise<unknown>,
  ms = 5_000,
): Promise<{ error: Error; took: number }> {
  const started = performance.now();
  const error = await within(fn(), ms, "the rejection").then(
    (value) => assert.fail(`resolved with ${value}`),
    (error) => error,
  );
  return { error, took: performance.now() - started };
}

/** Loads deadbolt's scripts on the server, so no EVALSHA waits on NOSCRIPT mid-fault. */
async function warm(client: ScriptClient): Promise<void> {
  const lock = await within(
    Lock.acquire(client, "warm-up", { autoExtend: false }),
    5_000,
    "the warm-up acquire",
  );
  assert.equal(await within(lock.extend(), 5_000, "the warm-up extend"), true);
  assert.equal(
    await within(lock.release(), 5_000, "the warm-up release"),
    true,
  );
}

interface Env extends AsyncDisposable {
  server: RedisServer;
  proxy: ChaosProxy;
  /** Straight to Redis, never faulted: assertions and fault injection. */
  side: RespClient;
  /** A lock client straight to Redis, for the other owner. */
  direct: DbRedisShape;
  /** A recorded @db/redis-shaped client through the proxy (warmed up). */
  viaProxy(): Promise<Recorder>;
  /** A recorded ioredis 6 client through the proxy (warmed up). */
  ioredisViaProxy(): Promise<Recorder>;
}

/**
 * Starts an acquire whose reply the proxy drops, and resolves once the
 * server has applied it: the acquire's outcome is unknown to the client.
 */
async function acquireWithLostReply(
  env: Env,
  client: Recorder,
  name: string,
  ttl: number,
): Promise<{ acquiring: Promise<Lock>; attempt: Call }> {
  env.proxy.set("drop-replies");
  const from = client.calls.length;
  const acquiring = Lock.acquire(client, name, { ttl, timeout: 5_000 });
  acquiring.catch(() => {});
  const attempt = await client.call((call) =>
    client.calls.indexOf(call) >= from && call.kind === "acquire"
  );
  await until(
    async () =>
      await env.side.send("GET", `deadbolt:{${name}}`) === attempt.token,
    "the server applied the acquire",
  );
  return { acquiring, attempt };
}

async function setup(): Promise<Env> {
  const server = await startRedis();
  const proxy = await ChaosProxy.start(server.port);
  const side = await server.connect();
  const directConn = await server.connect();
  const direct = new DbRedisShape(directConn);
  const proxied: RespClient[] = [];
  const ioredis: Redis[] = [];
  return {
    server,
    proxy,
    side,
    direct,
    async viaProxy() {
      // A step that failed mid-fault must not break the next one.
      proxy.set("pass");
      const conn = await RespClient.connect(proxy.port);
      proxied.push(conn);
      const client = recording(new DbRedisShape(conn));
      await warm(client);
      return client;
    },
    async ioredisViaProxy() {
      proxy.set("pass");
      // A short fixed reconnect delay keeps recovery times tight and stable.
      const redis = new Redis({
        host: "127.0.0.1",
        port: proxy.port,
        retryStrategy: () => 20,
      });
      // Without a listener ioredis logs every reset connection.
      redis.on("error", () => {});
      ioredis.push(redis);
      await redis.ping();
      const client = recording(fromIoredis(redis));
      await warm(client);
      return client;
    },
    async [Symbol.asyncDispose]() {
      proxy.set("pass");
      proxy.delay(0, 0);
      for (const redis of ioredis) await quitIoredis(redis);
      for (const conn of proxied) await conn[Symbol.asyncDispose]();
      await directConn[Symbol.asyncDispose]();
      await side[Symbol.asyncDispose]();
      await proxy.close();
      await server.stop();
    },
  };
}

Deno.test("a grant delivered after its lease ran out is void and deleted by token (F5)", async (t) => {
  await using env = await setup();
  const ttl = 200;
  const key = "deadbolt:{late}";

  /** Starts an acquire with replies held; resolves with its first attempt once the server applied it. */
  async function heldAcquire(client: Recorder, timeout: number) {
    env.proxy.set("hold-replies");
    const from = client.calls.length;
    const acquiring = Lock.acquire(client, "late", { ttl, timeout });
    // Keep the rejection handled until the step awaits it.
    acquiring.catch(() => {});
    const attempt = await client.call((call, i = client.calls.indexOf(call)) =>
      i >= from && call.kind === "acquire"
    );
    await until(
      async () => await env.side.send("GET", key) === attempt.token,
      "the server applied the acquire",
    );
    return { acquiring, attempt };
  }

  /** Holds the grant's reply until 1.5 × ttl after its send, then delivers it. */
  async function deliverLate(attempt: Call) {
    await sleep(attempt.at + 1.5 * ttl - performance.now());
    env.proxy.release();
  }

  await t.step(
    "with timeout 0 the call rejects, not as a LockTimeoutError, and deletes its own orphan",
    async () => {
      const client = await env.viaProxy();
      const { acquiring, attempt } = await heldAcquire(client, 0);
      // The server key outlives the lease (a slow server clock), so only
      // deadbolt's compare-delete can remove it.
      await env.side.send("PEXPIRE", key, 60_000);
      await deliverLate(attempt);
      const { error } = await rejection(() => acquiring);
      assert.ok(!(error instanceof LockTimeoutError), String(error));
      assert.equal(error.name, "TimeoutError");
      const cleanup = await client.call((call) =>
        call.kind === "release" && call.token === attempt.token
      );
      assert.equal(await cleanup.reply, 1, "deleted its own orphan");
      assert.equal(await env.side.send("EXISTS", key), 0);
    },
  );

  await t.step(
    "the late grant's cleanup leaves the key of the owner who took over",
    async () => {
      const client = await env.viaProxy();
      const { acquiring, attempt } = await heldAcquire(client, 0);
      // The orphan expires on the server; another owner takes the lock.
      await using other = await Lock.acquire(env.direct, "late", {
        ttl: 10_000,
        timeout: 1_000,
      });
      assert.ok(
        performance.now() < attempt.at + 1.5 * ttl,
        "took over in time",
      );
      await deliverLate(attempt);
      const { error } = await rejection(() => acquiring);
      assert.ok(!(error instanceof LockTimeoutError), String(error));
      const cleanup = await client.call((call) =>
        call.kind === "release" && call.token === attempt.token
      );
      assert.equal(await cleanup.reply, -1, "saw another owner and kept off");
      assert.equal(await env.side.send("GET", key), other.token);
    },
  );

  await t.step(
    "with a longer timeout it retries with a new token and resolves with honest validity",
    async () => {
      const client = await env.viaProxy();
      const { acquiring, attempt } = await heldAcquire(client, 2_000);
      await deliverLate(attempt);
      const lock = await acquiring;
      const resolvedAt = performance.now();
      try {
        assert.ok(
          lock.validUntil - resolvedAt > 0,
          "resolved with no validity",
        );
        assert.notEqual(lock.token, attempt.token, "kept the void grant");
        // Validity counts from the send of the attempt that succeeded, not
        // from the first attempt (which would be later than the truth: unsafe).
        const success = await client.call((call) =>
          call.kind === "acquire" && call.token === lock.token
        );
        const expected = success.at + ttl - DRIFT(ttl);
        assert.ok(
          lock.validUntil <= expected + 0.01,
          `validUntil ${
            lock.validUntil - expected
          } ms after send + ttl - drift`,
        );
        assert.ok(
          lock.validUntil >= expected - 2,
          `validUntil ${expected - lock.validUntil} ms early`,
        );
        assert.equal(await env.side.send("GET", key), lock.token);
        const cleanup = await client.call((call) =>
          call.kind === "release" && call.token === attempt.token
        );
        // The orphan had expired by itself (0) or was deleted (1); never -1.
        assert.ok([0, 1].includes(await cleanup.reply as number));
      } finally {
        assert.equal(await lock.release(), true);
      }
    },
  );
});

Deno.test("an acquire whose reply is lost on a connection that dies blocks a new acquirer no longer than its TTL (F6)", async () => {
  // The @db/redis shape never reconnects: when the reset rejects the call,
  // deadbolt's compare-delete goes to the same, dead client and fails, so
  // the orphan can only expire. What must hold is that it blocks nobody
  // beyond its TTL, and that the caller sees a connection error.
  await using env = await setup();
  const ttl = 1_000;
  const key = "deadbolt:{ambiguous}";
  const client = await env.viaProxy();
  const { acquiring, attempt } = await acquireWithLostReply(
    env,
    client,
    "ambiguous",
    ttl,
  );
  const orphanExpiry = performance.now() +
    (await env.side.send("PTTL", key) as number);
  env.proxy.reset();
  env.proxy.set("pass");
  const { error, took } = await rejection(() => acquiring);
  assert.ok(!(error instanceof LockTimeoutError), String(error));
  assert.match(error.message, /closed/);
  assert.ok(took < 200, `the reset took ${took} ms to surface`);
  const cleanup = await client.call((call) =>
    call.kind === "release" && call.token === attempt.token
  );
  await assert.rejects(cleanup.reply, /closed/);
  assert.equal(await env.side.send("GET", key), attempt.token, "orphan left");

  const fresh = await env.viaProxy();
  const lock = await Lock.acquire(fresh, "ambiguous", {
    ttl,
    timeout: 3 * ttl,
  });
  const acquiredAt = performance.now();
  try {
    // Backoff never sleeps past the PTTL the acquire script reports.
    assert.ok(
      acquiredAt <= orphanExpiry + 150,
      `blocked ${acquiredAt - orphanExpiry} ms past the orphan's TTL`,
    );
    assert.notEqual(lock.token, attempt.token);
    assert.equal(await env.side.send("GET", key), lock.token);
  } finally {
    assert.equal(await lock.release(), true);
  }
});

Deno.test("an acquire given up while its reply was lost is deleted by token once ioredis reconnects (F6)", async () => {
  // ttl 10 s: an orphan gone within a second was deleted, not expired.
  await using env = await setup();
  const ttl = 10_000;
  const key = "deadbolt:{ambiguous}";
  const client = await env.ioredisViaProxy();
  env.proxy.set("drop-replies");
  const from = client.calls.length;
  const { error } = await rejection(() =>
    Lock.acquire(client, "ambiguous", {
      ttl,
      timeout: 5_000,
      commandTimeout: 300,
    })
  );
  assert.ok(!(error instanceof LockTimeoutError), String(error));
  assert.equal(error.name, "TimeoutError");
  const attempt = await client.call((call) =>
    client.calls.indexOf(call) >= from && call.kind === "acquire"
  );
  assert.equal(
    await env.side.send("GET", key),
    attempt.token,
    "the server applied the acquire whose reply was lost",
  );
  env.proxy.reset();
  env.proxy.set("pass");
  const healed = performance.now();
  // ioredis resends the unanswered script; once it settles, deadbolt deletes
  // the grant by its token.
  const cleanup = await client.call((call) =>
    call.kind === "release" && call.token === attempt.token
  );
  assert.equal(await cleanup.reply, 1, "deleted its own orphan");
  const cleared = performance.now() - healed;
  assert.equal(await env.side.send("EXISTS", key), 0);
  assert.ok(cleared < 1_000, `orphan lived ${cleared} ms after recovery`);
  await client.idle();
});

Deno.test("an acquire whose reply was lost adopts its own grant when ioredis resends it (F6)", async () => {
  await using env = await setup();
  const ttl = 3_000;
  const key = "deadbolt:{adopt}";
  const client = await env.ioredisViaProxy();
  const { acquiring, attempt } = await acquireWithLostReply(
    env,
    client,
    "adopt",
    ttl,
  );
  env.proxy.reset();
  env.proxy.set("pass");
  const lock = await acquiring;
  try {
    // The resent script found its own token: "already mine", not "busy".
    assert.equal(lock.token, attempt.token);
    assert.ok(lock.validUntil > performance.now());
    assert.ok(lock.validUntil <= attempt.at + ttl - DRIFT(ttl) + 0.01);
    assert.equal(await env.side.send("GET", key), lock.token);
  } finally {
    assert.equal(await lock.release(), true);
  }
  assert.equal(await env.side.send("EXISTS", key), 0);
});

Deno.test("a release whose reply is lost rejects, yet the key is gone and no retry touches another owner's key (F7)", async (t) => {
  await using env = await setup();
  const ttl = 10_000;
  const commandTimeout = 300;
  const key = "deadbolt:{rel}";

  await t.step(
    "ioredis: the retry after reconnecting reports false and keeps the new owner's key",
    async () => {
      const client = await env.ioredisViaProxy();
      const lock = await Lock.acquire(client, "rel", { ttl, commandTimeout });
      env.proxy.set("drop-replies");
      const { error, took } = await rejection(() => lock.release());
      assert.equal(error.name, "TimeoutError", String(error));
      assert.ok(took >= commandTimeout - 1 && took < commandTimeout + 200);
      assert.equal(await env.side.send("EXISTS", key), 0, "released anyway");
      await using other = await Lock.acquire(env.direct, "rel", { ttl });
      env.proxy.reset();
      env.proxy.set("pass");
      // Same handle, same token: the compare-delete finds another owner.
      assert.equal(await lock.release(), false);
      assert.equal(await env.side.send("GET", key), other.token);
      // ioredis also resent the first release; it too kept off.
      await client.idle();
      assert.equal(await env.side.send("GET", key), other.token);
      assert.equal(await lock.release(), false);
    },
  );

  await t.step(
    "@db/redis shape: the retry fails with the connection error and deletes nothing",
    async () => {
      const client = await env.viaProxy();
      const lock = await Lock.acquire(client, "rel", { ttl, commandTimeout });
      env.proxy.set("drop-replies");
      const { error } = await rejection(() => lock.release());
      assert.equal(error.name, "TimeoutError", String(error));
      assert.equal(await env.side.send("EXISTS", key), 0, "released anyway");
      await using other = await Lock.acquire(env.direct, "rel", { ttl });
      env.proxy.reset();
      env.proxy.set("pass");
      const second = await rejection(() => lock.release());
      assert.match(second.error.message, /closed/);
      assert.equal(await env.side.send("GET", key), other.token);
    },
  );
});

Deno.test("lock.signal aborts by validUntil while Redis is blackholed, and nothing resurrects the key after heal (F10)", async () => {
  await using env = await setup();
  const ttl = 300;
  const key = "deadbolt:{held}";
  const client = await env.viaProxy();
  const lock = await Lock.acquire(client, "held", { ttl });
  // Let one renewal succeed, so validity comes from a renewal's send time.
  const renewal = await client.call((call) =>
    call.kind === "extend" && call.token === lock.token
  );
  assert.equal(await renewal.reply, 1);
  await sleep(0);
  const blackholed = performance.now();
  env.proxy.set("blackhole");
  const at = await abortedAt(lock.signal);
  const reason = lock.signal.reason;
  assert.ok(reason instanceof LockLostError, String(reason));
  // The unanswered renewal is the cause, whichever timer ran first.
  assert.equal((reason.cause as Error | undefined)?.name, "TimeoutError");
  assert.ok(at <= lock.validUntil, `aborted ${at - lock.validUntil} ms late`);
  const lastSuccess = client.calls.findLast((call) =>
    call.token === lock.token && call.settled && call.settledAt! <= at &&
    (call.value === 1 || (Array.isArray(call.value) && call.value[0] === 1))
  )!;
  assert.ok(
    at <= lastSuccess.at + ttl - DRIFT(ttl),
    `aborted after the last successful send + ttl - drift`,
  );
  assert.equal(lock.held, false);

  await sleep(blackholed + 2 * ttl - performance.now());
  const healed = performance.now();
  env.proxy.set("pass");
  // The renewals sent into the blackhole reach Redis now, after the expiry:
  // the extend script must not create the key again.
  await client.idle();
  const late = client.calls.filter((call) =>
    call.kind === "extend" && call.at >= blackholed
  );
  assert.ok(late.length >= 1, "no renewal was attempted in the blackhole");
  for (const call of late) assert.equal(call.value, 0, "extend found no key");
  assert.equal(await env.side.send("EXISTS", key), 0);
  assert.equal(await lock.extend(), false);
  await sleep(ttl);
  assert.equal(await env.side.send("EXISTS", key), 0, "the key came back");
  assert.ok(
    !client.calls.some((call) => call.kind === "extend" && call.at > healed),
    "renewed after the loss",
  );
  assert.equal(await lock.release(), false);
});

// The renewal sent into the blackhole and the loss deadline fall due at the
// same moment; when the loss wins (a busy event loop across the deadline),
// the renewal still in flight must be named as the cause all the same.
Deno.test("lock.signal names the unanswered renewal as the cause when read at the deadline (F10)", async () => {
  await using env = await setup();
  const ttl = 300;
  const client = await env.viaProxy();
  const lock = await Lock.acquire(client, "busy", { ttl });
  env.proxy.set("blackhole");
  await client.call((call) =>
    call.kind === "extend" && call.token === lock.token
  );
  // A busy event loop (a long synchronous task, GC) reaches the deadline with
  // the renewal still unanswered.
  const end = lock.validUntil - 1;
  while (performance.now() < end) {
    // Busy: no timer or reply can run.
  }
  const reason = lock.signal.reason;
  try {
    assert.ok(lock.signal.aborted, "held past the deadline");
    assert.ok(reason instanceof LockLostError, String(reason));
    assert.equal(
      (reason.cause as Error | undefined)?.name,
      "TimeoutError",
      `cause: ${reason.cause}`,
    );
  } finally {
    env.proxy.set("pass");
    await client.idle();
  }
  // The renewal landed late, on a key that had not yet expired: it renewed
  // it (it never creates one). Release deletes it by token.
  await lock.release();
  assert.equal(await env.side.send("EXISTS", lock.key), 0);
});

Deno.test("a blackholed connection without RST never leaves a call pending past commandTimeout (F18)", async () => {
  await using env = await setup();
  const commandTimeout = 300;
  const tolerance = 200;
  const client = await env.viaProxy();
  const lock = await Lock.acquire(client, "dark", {
    ttl: 10_000,
    autoExtend: false,
    commandTimeout,
  });
  const watched = await Lock.acquire(client, "watched", {
    ttl: 600,
    commandTimeout,
  });
  env.proxy.set("blackhole");
  const watchedLost = abortedAt(watched.signal);

  const calls: [string, () => Promise<unknown>][] = [
    ["extend()", () => lock.extend()],
    ["release()", () => lock.release()],
    [
      "Lock.tryAcquire()",
      () => Lock.tryAcquire(client, "dark-try", { commandTimeout }),
    ],
    [
      "Lock.acquire() with a 10 s timeout",
      () =>
        Lock.acquire(client, "dark-wait", { timeout: 10_000, commandTimeout }),
    ],
  ];
  for (const [name, call] of calls) {
    const { error, took } = await rejection(call);
    assert.equal(error.name, "TimeoutError", `${name}: ${error}`);
    assert.ok(!(error instanceof LockTimeoutError), name);
    assert.ok(
      took >= commandTimeout - 1 && took < commandTimeout + tolerance,
      `${name} settled after ${took} ms`,
    );
  }
  // Renewals time out too; the loss is signalled by validUntil.
  const at = await watchedLost;
  assert.ok(
    at <= watched.validUntil,
    `lost ${at - watched.validUntil} ms late`,
  );
  assert.ok(watched.signal.reason instanceof LockLostError);

  env.proxy.set("pass");
  // Everything sent into the blackhole now arrives, in order: the late
  // release deletes "dark", the late grants are deleted by token.
  await client.idle();
  for (const name of ["dark", "dark-try", "dark-wait"]) {
    assert.equal(await env.side.send("EXISTS", `deadbolt:{${name}}`), 0, name);
  }
  assert.equal(await lock.release(), false, "the late release did it");
  assert.equal(await watched.release(), false);
  // The same connection works again.
  await using again = await Lock.acquire(client, "dark", { commandTimeout });
  assert.equal(await env.side.send("GET", again.key), again.token);
});

/** The key's PTTL on the side connection, sent at `at`, and the client's validUntil then. */
interface Sample {
  at: number;
  pttl: number;
  validUntil: number;
}

/** Samples the server's expiry of `lock` every ~10 ms over `ms`. */
async function sampleExpiry(
  env: Env,
  lock: Lock,
  ms: number,
): Promise<Sample[]> {
  const samples: Sample[] = [];
  for (const end = performance.now() + ms; performance.now() < end;) {
    const at = performance.now();
    const pttl = await env.side.send("PTTL", lock.key) as number;
    samples.push({ at, pttl, validUntil: lock.validUntil });
    await sleep(10);
  }
  return samples;
}

// Keeping a lock under latency has a hard limit. Validity counts from the
// send, so a grant leaves ttl - drift - RTT; the first renewal can only go out
// once that grant is known and must be answered before validUntil - margin.
// So a lock can be kept only while 2 × RTT < ttl - drift - margin: with
// ttl 400 (margin 25), up to about 92 ms each way; for any ttl, below ttl/4
// each way. At ttl/4 each way the lease cannot be kept by any lock that is
// honest about validity: what must hold is that the loss is signalled in time.
Deno.test("under latency of ttl/4 each way validity shrinks by the round trip, never outlasts the server's expiry, and its loss is signalled in time (F17)", async () => {
  await using env = await setup();
  const ttl = 400;
  const d = ttl / 4;
  const client = await env.viaProxy();
  env.proxy.delay(d, d);
  const lock = await Lock.acquire(client, "slow", { ttl });
  const resolvedAt = performance.now();
  const lost = abortedAt(lock.signal, 3 * ttl);
  try {
    const attempt = await client.call((call) =>
      call.kind === "acquire" && call.token === lock.token
    );
    const rtt = resolvedAt - attempt.at;
    assert.ok(rtt >= 2 * d - 1, `round trip ${rtt} ms`);
    assert.ok(lock.validUntil <= attempt.at + ttl - DRIFT(ttl) + 0.01);
    const left = lock.validUntil - resolvedAt;
    assert.ok(left > 0, "resolved with no validity");
    // validity = ttl - drift - round trip: shrunk by the latency, not more.
    assert.ok(
      left <= ttl - DRIFT(ttl) - 2 * d,
      `${left} ms of validity left after a ${rtt} ms round trip`,
    );
    assert.ok(left >= ttl - DRIFT(ttl) - rtt - 1, `only ${left} ms left`);
    const samples = sampleExpiry(env, lock, 3 * ttl);
    const at = await lost;
    assert.ok(at <= lock.validUntil, `lost ${at - lock.validUntil} ms late`);
    assert.ok(lock.signal.reason instanceof LockLostError);
    assertNeverPastServerExpiry(await samples);
  } finally {
    await lock.release();
    await client.idle();
  }
});

/** Client validity must end before the server's expiry, which is at least sample time + PTTL. */
function assertNeverPastServerExpiry(samples: Sample[]): void {
  for (const sample of samples) {
    if (sample.pttl < 0) continue;
    assert.ok(
      sample.validUntil <= sample.at + sample.pttl,
      `validUntil ${
        sample.validUntil - sample.at - sample.pttl
      } ms after the server's expiry`,
    );
  }
}

Deno.test("auto-extension keeps a lock through latency of ttl/6 each way, ending each lease before the server does (F17)", async () => {
  // 2 × RTT = 267 ms against 369 ms of validity less margin: renewable,
  // with room for a loaded machine.
  await using env = await setup();
  const ttl = 400;
  const d = Math.round(ttl / 6);
  const client = await env.viaProxy();
  env.proxy.delay(d, d);
  const lock = await Lock.acquire(client, "slow", { ttl });
  try {
    const samples = await sampleExpiry(env, lock, 3 * ttl);
    assert.equal(
      lock.signal.aborted,
      false,
      `lost under ${d} ms of latency each way: ${lock.signal.reason}`,
    );
    const gone = samples.find((sample) => sample.pttl <= 0);
    assert.equal(gone, undefined, "the key expired while held");
    const renewals = client.calls.filter((call) =>
      call.kind === "extend" && call.token === lock.token && call.value === 1
    );
    assert.ok(renewals.length >= 4, `only ${renewals.length} renewals`);
    assertNeverPastServerExpiry(samples);
    assert.equal(await env.side.send("GET", lock.key), lock.token);
  } finally {
    assert.equal(await lock.release(), true);
    await client.idle();
  }
});
