import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import {
  fromIoredis,
  Lock,
  LockLostError,
  LockTimeoutError,
  type ScriptClient,
} from "../mod.ts";
import { type RedisServer, startRedis } from "./_redis.ts";
import { DbRedisShape, type RespClient } from "./_resp.ts";
import { type ScriptKind, scriptKind, sleep, within } from "./_util.ts";

// Faults injected inside this process, against a real redis-server: a
// blocked event loop (F4), wall-clock jumps (F23), renewal racing release
// (F25), misuse of one handle (F26), aborts (F27) and a contention storm
// (F30). Out-of-process faults live in processes_test.ts.

type Kind = ScriptKind;

type Phase = "send" | "reply";
interface Hook {
  kind: Kind;
  phase: Phase;
  run(reply?: unknown): void;
}
interface Gate {
  kind: Kind;
  phase: Phase;
  open: Promise<void>;
}

/**
 * A client that forwards to `inner`, counts script calls by kind, runs
 * one-shot hooks when a call is about to be sent or has answered (before the
 * library sees the reply), and can hold a call's send or reply behind a gate.
 */
class Recording implements ScriptClient {
  readonly counts: Record<Kind, number> = {
    acquire: 0,
    extend: 0,
    release: 0,
    handover: 0,
    adopt: 0,
    leave: 0,
  };
  /** Renewals Redis confirmed (reply 1): when each was sent and answered. */
  readonly renewals: { sentAt: number; answeredAt: number }[] = [];
  /** Release scripts that deleted their own key (reply 1). */
  deleted = 0;
  evalCalls = 0;
  evalshaCalls = 0;
  #inner: ScriptClient;
  #hooks: Hook[] = [];
  #gates: Gate[] = [];
  #inflight = new Set<Promise<unknown>>();

  constructor(inner: ScriptClient) {
    this.#inner = inner;
  }

  get total(): number {
    return this.counts.acquire + this.counts.extend + this.counts.release;
  }

  eval(script: string, keys: string[], args: string[]): Promise<unknown> {
    this.evalCalls++;
    return this.#call(script, () => this.#inner.eval(script, keys, args));
  }

  evalsha(sha: string, keys: string[], args: string[]): Promise<unknown> {
    this.evalshaCalls++;
    return this.#call(sha, () => this.#inner.evalsha!(sha, keys, args));
  }

  /** Runs `run` once, synchronously, when the next `kind` call is about to be sent or has answered. */
  once(kind: Kind, phase: Phase, run: (reply?: unknown) => void): void {
    this.#hooks.push({ kind, phase, run });
  }

  /** Resolves when the next `kind` call is sent, or with its reply once it answers. */
  next(kind: Kind, phase: Phase): Promise<unknown> {
    return new Promise((resolve) => this.once(kind, phase, resolve));
  }

  /** Holds the next `kind` call's send (or its reply) until `open` resolves. */
  hold(kind: Kind, phase: Phase, open: Promise<void>): void {
    this.#gates.push({ kind, phase, open });
  }

  clearHooks(): void {
    this.#hooks = [];
  }

  /** Resolves once every call sent so far has settled. */
  async settled(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.allSettled(this.#inflight);
  }

  #call(script: string, send: () => Promise<unknown>): Promise<unknown> {
    const kind = scriptKind(script);
    this.counts[kind]++;
    this.#fire(kind, "send");
    const sentAt = performance.now();
    const sendGate = this.#take(this.#gates, kind, "send");
    let reply = sendGate ? sendGate.open.then(send) : send();
    const replyGate = this.#take(this.#gates, kind, "reply");
    if (replyGate) {
      reply = reply.then(
        (value) => replyGate.open.then(() => value),
        (error) => replyGate.open.then(() => Promise.reject(error)),
      );
    }
    this.#inflight.add(reply);
    reply.then(
      (value) => {
        this.#inflight.delete(reply);
        if (kind === "extend" && Number(value) === 1) {
          this.renewals.push({ sentAt, answeredAt: performance.now() });
        }
        if (kind === "release" && Number(value) === 1) this.deleted++;
        this.#fire(kind, "reply", value);
      },
      () => this.#inflight.delete(reply),
    );
    return reply;
  }

  #fire(kind: Kind, phase: Phase, reply?: unknown): void {
    this.#take(this.#hooks, kind, phase)?.run(reply);
  }

  #take<T extends { kind: Kind; phase: Phase }>(
    list: T[],
    kind: Kind,
    phase: Phase,
  ): T | undefined {
    const index = list.findIndex((h) => h.kind === kind && h.phase === phase);
    return index === -1 ? undefined : list.splice(index, 1)[0];
  }
}

/** A @db/redis-shaped client on its own connection; dispose closes it. */
async function openShape(server: RedisServer) {
  const connection = await server.connect();
  const redis = new DbRedisShape(connection);
  return {
    redis,
    async [Symbol.asyncDispose]() {
      redis.close();
      await connection.closed;
    },
  };
}

/** Loads the three scripts, so later EVALSHA calls never meet NOSCRIPT. */
async function warmScripts(client: ScriptClient): Promise<void> {
  const lock = await Lock.acquire(client, "warm-up");
  await lock.extend();
  await lock.release();
}

/** A server, a warmed client `redis` and a `side` connection for assertions. */
async function setup() {
  const server = await startRedis();
  const shape = await openShape(server);
  const side = await server.connect();
  await warmScripts(shape.redis);
  return {
    server,
    redis: shape.redis,
    side,
    async [Symbol.asyncDispose]() {
      await shape[Symbol.asyncDispose]();
      await side[Symbol.asyncDispose]();
      await server.stop();
    },
  };
}

const macrotask = () => new Promise((r) => setTimeout(r, 0));

/** Blocks the event loop, as a long synchronous computation or a GC pause would. */
function busyLoop(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // Nothing else in this process runs meanwhile: no timer, no reply.
  }
}

/** Parses `INFO commandstats` into command → calls (rejected calls included). */
function commandCalls(info: string): Map<string, number> {
  const calls = new Map<string, number>();
  for (const match of info.matchAll(/^cmdstat_(\S+?):calls=(\d+).*$/gm)) {
    const rejected = /rejected_calls=(\d+)/.exec(match[0])?.[1] ?? "0";
    calls.set(match[1], Number(match[2]) + Number(rejected));
  }
  return calls;
}

Deno.test("a holder whose event loop was blocked past its lease sees the loss on wake and never sends an extend (F4)", async (t) => {
  const ttl = 300;
  // How the holder's code first meets the lock after the block: nothing at
  // all (the library's own timer must abort the signal before any other
  // macrotask runs), a read of `held`, or a call to release().
  const firstTouches = [
    "the first macrotask",
    "a read of held",
    "a call to release()",
  ] as const;
  for (const first of firstTouches) {
    await t.step(`loss seen by ${first}`, async () => {
      await using env = await setup();
      await using shapeB = await openShape(env.server);
      const clientA = new Recording(env.redis);
      const clientB = new Recording(shapeB.redis);
      const a = await Lock.acquire(clientA, "blocked", { ttl });
      const signalA = a.signal;
      // B waits before the block, on its own connection; a block stalls it too.
      const firstTry = clientB.next("acquire", "reply");
      const waiting = Lock.acquire(clientB, "blocked", {
        ttl: 10_000,
        timeout: 10_000,
      });
      const [code] = await firstTry as number[];
      assert.equal(code, 0, "B found the lock held before the block");

      busyLoop(2 * ttl);
      const extendsBefore = clientA.counts.extend;
      let released: boolean | undefined;
      if (first === "the first macrotask") {
        await macrotask();
        assert.equal(signalA.aborted, true, "aborted by the first macrotask");
      } else if (first === "a read of held") {
        assert.equal(a.held, false, "held reads false right after the block");
        assert.equal(signalA.aborted, true);
      } else {
        released = await a.release();
        assert.equal(released, false, "release() found its key expired");
      }

      await using b = await waiting;
      if (released === undefined) {
        assert.equal(await a.extend(), false);
        released = await a.release();
      }
      assert.equal(released, false);
      assert.equal(
        clientA.counts.extend,
        extendsBefore,
        "A sent an extend after the block",
      );
      assert.equal(await env.side.send("GET", b.key), b.token);
      assert.equal(b.held, true);
      // release() checks the clock as `held` does: called first after the
      // block, it still signals the loss before ending the handle.
      assert.equal(signalA.aborted, true, "the loss was never signalled");
      assert.ok(signalA.reason instanceof LockLostError);
      assert.match(signalA.reason.message, /lease ran out/);
    });
  }
});

/** What a run of the clock scenario observed; equal runs give equal outcomes. */
interface ClockOutcome {
  acquired: boolean;
  timeoutError: string;
  waitedAboutTimeout: boolean;
  heldAfterThreeTtls: boolean;
  abortedAfterThreeTtls: boolean;
  keyStillOurs: boolean;
  released: boolean;
  waiterAcquired: boolean;
}

async function clockScenario(
  client: Recording,
  side: RespClient,
): Promise<ClockOutcome> {
  const holder = await Lock.acquire(client, "clock", { ttl: 200 });
  const started = performance.now();
  const error = await Lock.acquire(client, "clock", { timeout: 300 }).then(
    () => assert.fail("acquired a held lock"),
    (error: Error) => error,
  );
  const waited = performance.now() - started;
  await sleep(600); // three leases: auto-extension must carry the lock
  const heldAfterThreeTtls = holder.held;
  const abortedAfterThreeTtls = holder.signal.aborted;
  const keyStillOurs = await side.send("GET", holder.key) === holder.token;
  const firstTry = client.next("acquire", "reply");
  const waiting = Lock.acquire(client, "clock", { timeout: 5_000 });
  await firstTry;
  const released = await holder.release();
  const next = await waiting;
  const waiterAcquired = next.held &&
    await side.send("GET", next.key) === next.token;
  await next.release();
  return {
    acquired: true,
    timeoutError: error.name,
    waitedAboutTimeout: waited >= 300 && waited < 450,
    heldAfterThreeTtls,
    abortedAfterThreeTtls,
    keyStillOurs,
    released,
    waiterAcquired,
  };
}

Deno.test("client wall-clock jumps of ±1 h change no lease, wait or timeout (F23)", async () => {
  await using env = await setup();
  const client = new Recording(env.redis);
  const control = await clockScenario(client, env.side);
  assert.deepEqual(control, {
    acquired: true,
    timeoutError: "LockTimeoutError",
    waitedAboutTimeout: true,
    heldAfterThreeTtls: true,
    abortedAfterThreeTtls: false,
    keyStillOurs: true,
    released: true,
    waiterAcquired: true,
  });

  const RealDate = globalThis.Date;
  const HOUR = 3_600_000;
  let offset = HOUR;
  class JumpingDate extends RealDate {
    constructor(...args: unknown[]) {
      super(
        ...(args.length === 0 ? [RealDate.now() + offset] : args) as [
          number,
        ],
      );
    }
    static override now(): number {
      return RealDate.now() + offset;
    }
  }
  let jumps = 0;
  // The wall clock jumps an hour forward, then an hour back, every 5 ms:
  // while held, while waiting, and across the timeout.
  const jumping = setInterval(() => {
    offset = jumps++ % 2 === 0 ? HOUR : -HOUR;
  }, 5);
  globalThis.Date = JumpingDate as DateConstructor;
  try {
    await macrotask();
    assert.ok(Math.abs(Date.now() - RealDate.now()) >= HOUR - 1_000);
    assert.ok(new Date() instanceof RealDate);
    const jumped = await clockScenario(client, env.side);
    assert.deepEqual(jumped, control);
    assert.ok(jumps > 50, `only ${jumps} jumps`);
  } finally {
    clearInterval(jumping);
    globalThis.Date = RealDate;
  }
});

/** The moments at which a round of F25 calls release(), relative to renewals. */
const RELEASE_MOMENTS = [
  "as acquire() resolves",
  "after a few microtasks",
  "after a message task",
  "after a timer task",
  "after two timer tasks",
  "just before a renewal is sent",
  "just after a renewal is sent",
  "when a renewal's reply arrives, before the lock sees it",
] as const;

/**
 * Calls `release` when `register` fires, or as soon as the lock is lost if
 * that comes first (so a loss cannot hang the round).
 */
function releaseWhen(
  signal: AbortSignal,
  release: () => Promise<boolean>,
  register: (fire: () => void) => void,
): Promise<boolean> {
  return new Promise((resolve, reject) => {
    let fired = false;
    const fire = () => {
      if (fired) return;
      fired = true;
      signal.removeEventListener("abort", fire);
      release().then(resolve, reject);
    };
    if (signal.aborted) return fire();
    signal.addEventListener("abort", fire, { once: true });
    register(fire);
  });
}

async function releaseAt(
  moment: typeof RELEASE_MOMENTS[number],
  signal: AbortSignal,
  release: () => Promise<boolean>,
  client: Recording,
  messageTask: () => Promise<void>,
  round: number,
): Promise<boolean> {
  switch (moment) {
    case "as acquire() resolves":
      return await release();
    case "after a few microtasks":
      for (let hop = 0; hop <= round % 5; hop++) await null;
      return await release();
    case "after a message task":
      await messageTask();
      return await release();
    case "after a timer task":
      // Timers fire ~2 ms late here, about when the renewal timer fires.
      await macrotask();
      return await release();
    case "after two timer tasks":
      await macrotask();
      await macrotask();
      return await release();
    case "just before a renewal is sent":
      // release() runs synchronously inside the renewal's client call, so
      // the release script reaches Redis first and the renewal finds no key.
      return await releaseWhen(
        signal,
        release,
        (fire) => client.once("extend", "send", fire),
      );
    case "just after a renewal is sent":
      return await releaseWhen(
        signal,
        release,
        (fire) => client.once("extend", "send", () => queueMicrotask(fire)),
      );
    case "when a renewal's reply arrives, before the lock sees it":
      return await releaseWhen(
        signal,
        release,
        (fire) => client.once("extend", "reply", fire),
      );
  }
}

Deno.test("auto-extension racing release() 10 000 times never aborts a released lock, rejects nothing and leaves no key (F25)", async () => {
  const lanes = 4, roundsPerLane = 2_500, ttl = 10;
  // As in src/lock.ts: validity = ttl - (1% of ttl + 2 ms); loss fires a
  // margin of min(25, validity / 10) ms before it runs out.
  const validity = ttl - (ttl * 0.01 + 2), margin = validity / 10;
  await using env = await setup();
  // A macrotask without the ~2 ms timer latency of this machine.
  const channel = new MessageChannel();
  const queued: (() => void)[] = [];
  channel.port1.onmessage = () => queued.shift()?.();
  const messageTask = () =>
    new Promise<void>((resolve) => {
      queued.push(resolve);
      channel.port2.postMessage(null);
    });
  const losses: string[] = [];
  let renewals = 0;
  const started = performance.now();
  try {
    await Promise.all(
      Array.from({ length: lanes }, async (_, lane) => {
        const client = new Recording(env.redis);
        for (let round = 0; round < roundsPerLane; round++) {
          const moment = RELEASE_MOMENTS[round % RELEASE_MOMENTS.length];
          const where = `lane ${lane} round ${round} (${moment})`;
          // ttl 10 renews every ~2.6 ms: renewals and releases interleave.
          const lock = await Lock.acquire(client, `race-${lane}`, { ttl });
          const deletedBefore = client.deleted;
          client.renewals.length = 0;
          const signal = lock.signal;
          let released = false, abortedAfterRelease = false, abortedAt = NaN;
          let knownUntil = NaN;
          const onAbort = () => {
            abortedAt = performance.now();
            knownUntil = lock.validUntil;
            abortedAfterRelease = released;
          };
          // A stall between the grant and this line may have lost it already.
          if (signal.aborted) onAbort();
          else signal.addEventListener("abort", onAbort, { once: true });
          const release = () => {
            // release() first checks the clock, as `held` does: a lease that
            // already ran out is signalled (honestly) in its synchronous
            // part, before anything is sent. Only later aborts count as
            // "after release()".
            const releasing = lock.release();
            released = true;
            return releasing;
          };
          const result = await within(
            releaseAt(moment, signal, release, client, messageTask, round),
            5_000,
            `${where} never released`,
          );
          client.clearHooks();
          // A renewal still in flight answers now; it must not abort anything.
          await client.settled();
          renewals += client.renewals.length;
          assert.equal(lock.held, false);
          assert.equal(
            await env.side.send("EXISTS", lock.key),
            0,
            `${where} left its key`,
          );
          // The race bug (redis-semaphore #205): a renewal answering after
          // release() reports a loss. Any abort after release() is that bug.
          assert.ok(!abortedAfterRelease, `${where} aborted after release()`);
          if (!signal.aborted) {
            if (result) continue;
            // A stall (here, or of the server) outlasted the lease and
            // release() came first: Redis had expired the key. No release
            // script of this round may have deleted it.
            assert.equal(client.deleted, deletedBefore, `${where}: false`);
            losses.push(`${where}: release() found the key expired`);
            continue;
          }
          // Otherwise only an honest loss is allowed: the event loop (or the
          // server) ran too late to renew before the lease ran out.
          if (/expired or was deleted/.test(signal.reason.message)) {
            losses.push(`${where}: ${signal.reason.message}`);
            continue;
          }
          assert.match(
            signal.reason.message,
            /lease ran out before a renewal succeeded/,
            where,
          );
          // Not before the validity the lock knew of had run out. (A renewal
          // whose reply has arrived but that the lock has not yet processed
          // does not count: declaring that loss is conservative, not unsafe.)
          assert.ok(
            abortedAt >= knownUntil - margin - 0.5,
            `${where} aborted ${
              knownUntil - abortedAt
            } ms before its known validity ran out`,
          );
          losses.push(`${where}: ${signal.reason.message}`);
        }
      }),
    );
  } finally {
    channel.port1.close();
  }
  const took = performance.now() - started;
  const rounds = lanes * roundsPerLane;
  console.log(
    `F25: ${rounds} rounds in ${
      Math.round(took)
    } ms, ${renewals} renewals confirmed, ${losses.length} losses to stalls`,
  );
  for (const loss of losses) console.log(`  ${loss}`);
  // Without renewals in flight there would be no race to test.
  assert.ok(renewals >= rounds / 4, `only ${renewals} renewals`);
  // With ttl 10 a stall of ~3 ms (GC, scheduler; timers here fire ~2 ms
  // late) is an honest loss. Measured: 0.01-0.2% of rounds alone, up to
  // 0.6% with two copies of this file running at once. Many more would
  // mean renewals themselves fail, which the checks above cannot see.
  assert.ok(losses.length <= rounds / 50, `${losses.length} losses`);
});

Deno.test("Lock.acquire() with an already aborted signal rejects with its reason and sends nothing (F27)", async () => {
  await using env = await setup();
  const client = new Recording(env.redis);
  const reason = new Error("cancelled before the call");
  const signal = AbortSignal.abort(reason);
  const isReason = (error: unknown) => error === reason;
  await assert.rejects(Lock.acquire(client, "early", { signal }), isReason);
  await assert.rejects(Lock.tryAcquire(client, "early", { signal }), isReason);
  const lock = new Lock(client, "early");
  await assert.rejects(lock.acquire({ signal }), isReason);
  await assert.rejects(lock.tryAcquire({ signal }), isReason);
  assert.equal(client.total, 0, "a Redis call was sent");
  assert.equal(lock.held, false);
  assert.equal(await env.side.send("EXISTS", lock.key), 0);
});

Deno.test("Lock.acquire() aborted while waiting rejects with signal.reason within 20 ms and sends no further attempt (F27)", async () => {
  await using env = await setup();
  await using holder = await Lock.acquire(env.redis, "busy");
  const client = new Recording(env.redis);
  for (const attemptsBeforeAbort of [1, 3]) {
    const controller = new AbortController();
    const waiting = Lock.acquire(client, "busy", {
      timeout: 10_000,
      signal: controller.signal,
    }).then(() => assert.fail("acquired a held lock"), (error) => error);
    for (let i = 0; i < attemptsBeforeAbort; i++) {
      await client.next("acquire", "reply");
    }
    const attempts = client.counts.acquire;
    const reason = new Error(`stop after ${attemptsBeforeAbort} attempt(s)`);
    const abortedAt = performance.now();
    controller.abort(reason);
    assert.equal(await waiting, reason);
    const took = performance.now() - abortedAt;
    assert.ok(took < 20, `rejected ${took} ms after the abort`);
    // Nothing to await for an attempt that must not happen: watch a while
    // (longer than the backoff bounds so far).
    await sleep(50);
    assert.equal(client.counts.acquire, attempts, "attempted after the abort");
  }
  assert.equal(await env.side.send("GET", holder.key), holder.token);
});

Deno.test("Lock.acquire() aborted while CLIENT PAUSE holds its script rejects promptly and deletes the late grant by token (F27)", async () => {
  await using env = await setup();
  const client = new Recording(env.redis);
  const released = client.next("release", "reply");
  const controller = new AbortController();
  const pausedAt = performance.now();
  assert.equal(await env.side.send("CLIENT", "PAUSE", "300", "WRITE"), "OK");
  const sent = client.next("acquire", "send");
  const acquiring = Lock.acquire(client, "paused", {
    signal: controller.signal,
  }).then(() => assert.fail("acquired after the abort"), (error) => error);
  await sent;
  await macrotask(); // the script reaches the server, which holds it
  const reason = new DOMException("gave up", "AbortError");
  const abortedAt = performance.now();
  controller.abort(reason);
  assert.equal(await acquiring, reason);
  const took = performance.now() - abortedAt;
  assert.ok(took < 20, `rejected ${took} ms after the abort`);
  assert.ok(abortedAt - pausedAt < 300, "aborted after the pause ended");
  // The grant landed when the pause ended; deadbolt deleted it by token.
  assert.equal(
    await within(released, 5_000, "no release script answered"),
    1,
    "the release found the late grant",
  );
  assert.ok(
    performance.now() - pausedAt >= 250,
    "answered before the pause ended",
  );
  assert.equal(await env.side.send("EXISTS", "deadbolt:{paused}"), 0);
  assert.equal(client.counts.acquire, 1);
  assert.equal(client.counts.release, 1);
});

Deno.test("one handle used concurrently from several places stays consistent (F26)", async (t) => {
  await using env = await setup();
  const client = new Recording(env.redis);
  const name = "misuse";
  const key = "deadbolt:{misuse}";

  await t.step(
    "concurrent release() calls: exactly one reports true",
    async () => {
      for (let round = 0; round < 20; round++) {
        const lock = await Lock.acquire(client, name);
        const results = await Promise.all([
          lock.release(),
          lock.release(),
          lock[Symbol.asyncDispose]().then(() => "disposed"),
          lock.release(),
        ]);
        assert.deepEqual(results, [true, false, "disposed", false]);
        assert.equal(lock.held, false);
        assert.equal(lock.signal.aborted, false);
        assert.equal(await env.side.send("EXISTS", key), 0);
      }
    },
  );

  await t.step("dispose during a pending extend()", async (t) => {
    const orders = {
      "extend pipelined before the release": () => {},
      "extend's reply delivered after the release": (open: Promise<void>) =>
        client.hold("extend", "reply", open),
      "extend sent after the release": (open: Promise<void>) =>
        client.hold("extend", "send", open),
    };
    for (const [order, arrange] of Object.entries(orders)) {
      await t.step(order, async () => {
        const lock = await Lock.acquire(client, name, { ttl: 1_000 });
        const gate = Promise.withResolvers<void>();
        arrange(gate.promise);
        const extending = lock.extend(5_000);
        await lock[Symbol.asyncDispose]();
        gate.resolve();
        // Whatever Redis did with the renewal, the handle no longer holds
        // the lock: extend() reports false, and the release is no loss.
        assert.equal(await extending, false);
        await client.settled();
        assert.equal(lock.held, false);
        assert.equal(lock.signal.aborted, false);
        assert.equal(await env.side.send("EXISTS", key), 0);
      });
    }
  });

  await t.step("extend() racing release()", async () => {
    for (let round = 0; round < 20; round++) {
      const lock = await Lock.acquire(client, name, { ttl: 1_000 });
      const [extended, released] = await Promise.all([
        lock.extend(),
        lock.release(),
      ]);
      assert.equal(extended, false, `round ${round}`);
      assert.equal(released, true);
      assert.equal(await env.side.send("EXISTS", key), 0);

      // Started after release(), extend() refuses: the handle let go.
      const again = await Lock.acquire(client, name, { ttl: 1_000 });
      const releasing = again.release();
      await assert.rejects(again.extend(), /does not hold it/);
      assert.equal(await releasing, true);
      assert.equal(again.signal.aborted, false);
      assert.equal(await env.side.send("EXISTS", key), 0);
    }
  });

  await t.step(
    "tryAcquire() on a handle whose acquire() is pending",
    async () => {
      const holder = await Lock.acquire(env.redis, name);
      const lock = new Lock(client, name, { timeout: 5_000 });
      const firstTry = client.next("acquire", "reply");
      const pending = lock.acquire();
      await firstTry;
      const before = client.total;
      await assert.rejects(lock.tryAcquire(), /pending/);
      assert.equal(client.total, before, "tryAcquire() sent a call");
      assert.equal(await env.side.send("GET", key), holder.token);
      assert.equal(await holder.release(), true);
      await pending;
      assert.equal(await env.side.send("GET", key), lock.token);
      await assert.rejects(lock.tryAcquire(), /holds it already/);
      assert.equal(await lock.release(), true);
    },
  );
});

Deno.test("50 waiters on one key all get their turns with bounded Redis calls, and timed waiters settle on time (F30)", async () => {
  const waiters = 50, rounds = 3;
  await using server = await startRedis();
  await using side = await server.connect();
  const redis = new Redis({ host: "127.0.0.1", port: server.port });
  redis.on("error", () => {});
  try {
    await warmScripts(fromIoredis(redis));
    const client = new Recording(fromIoredis(redis));
    await side.send("CONFIG", "RESETSTAT");

    // The holder keeps the lock until the timed waiters (the 51st to 55th)
    // have given up, so all start against a held lock and back off together.
    const holder = await Lock.acquire(client, "storm");
    let inside = 0;
    const sections: number[] = [];
    const lateStart = performance.now();
    // With its default backoff one timed waiter could pass by luck even if
    // the last sleep ignored the deadline; with waits up to 1 s from the
    // first attempt the others cannot.
    const late = [5, 5, 100, 500, 1_000].map((retryDelay) =>
      Lock.acquire(client, "storm", { timeout: 300, retryDelay }).then(
        () => assert.fail("acquired a held lock"),
        (error) => ({ error, took: performance.now() - lateStart }),
      )
    );
    const storm = Array.from({ length: waiters }, async (_, waiter) => {
      for (let round = 0; round < rounds; round++) {
        const lock = await Lock.acquire(client, "storm", { timeout: 20_000 });
        assert.equal(inside++, 0, "two waiters inside at once");
        const count = Number(await redis.get("storm:count") ?? 0);
        await redis.set("storm:count", count + 1);
        inside--;
        sections.push(waiter);
        assert.equal(await lock.release(), true);
      }
    });
    let stormTook: number, tooks: number[];
    try {
      const settled = await Promise.all(late);
      tooks = settled.map(({ took }) => Math.round(took));
      for (const { error, took } of settled) {
        assert.ok(error instanceof LockTimeoutError, String(error));
        assert.ok(
          took >= 300 && took <= 450,
          `timeout 300 settled in ${tooks}`,
        );
      }
    } finally {
      assert.equal(await holder.release(), true);
      const stormStart = performance.now();
      await Promise.all(storm);
      stormTook = performance.now() - stormStart;
      await client.settled();
    }

    assert.equal(sections.length, waiters * rounds);
    assert.equal(await redis.get("storm:count"), String(waiters * rounds));
    const acquisitions = waiters * rounds + 1;
    const perAcquisition = client.total / acquisitions;
    console.log(
      `F30: ${acquisitions} acquisitions, ${client.total} script calls ` +
        `(${perAcquisition.toFixed(1)} per acquisition), storm ${
          Math.round(stormTook)
        } ms after the holder's release, timed waiters settled in ${tooks} ms, ` +
        `${
          (client.total / waiters / ((performance.now() - lateStart) / 1000))
            .toFixed(1)
        } calls/s per waiter`,
    );
    // The bound, from the backoff: the n-th wait is uniform below
    // min(1000, 5 · 2^n) ms. Against the ~300 ms hold each of the 50 waiters
    // makes ~7 attempts (mean total wait 2.5 · (2^7 - 1) ≈ 317 ms): ~2.3 calls
    // per acquisition. Each acquisition adds its own attempt and its release:
    // 2. Waiters at the 1 s cap retry ~2/s, ≤ 100 calls per second of storm:
    // ~0.7 for a ~1 s storm. Model ≈ 5; measured 4.6-4.9 in 10 runs. 10 leaves
    // room for a storm twice as slow, while a backoff that does not grow
    // (always below 5 ms) measured ~29.
    assert.ok(perAcquisition <= 10, `${perAcquisition} calls per acquisition`);

    const stats = commandCalls(String(await side.send("INFO", "commandstats")));
    assert.equal(stats.get("evalsha") ?? 0, client.evalshaCalls);
    assert.equal(stats.get("eval") ?? 0, client.evalCalls);
    assert.equal(await side.send("EXISTS", "deadbolt:{storm}"), 0);
  } finally {
    await redis.quit();
  }
});
