import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import {
  fromIoredis,
  LockLostError,
  LockTimeoutError,
  type ReadWriteHold,
  ReadWriteLock,
  type RedisClient,
  type ScriptClient,
  Semaphore,
} from "../mod.ts";
import { EXTEND_PERMIT } from "../src/_permit_scripts.ts";
import { EXTEND } from "../src/scripts.ts";
import { ChaosProxy } from "./_chaos.ts";
import { startRedis } from "./_redis.ts";
import type { RespClient } from "./_resp.ts";
import {
  abortedAt,
  quitIoredis,
  recordCall,
  type RecordedCall,
  sleep,
  until,
  within,
} from "./_util.ts";

// The faults that processes_test.ts and faults_network_test.ts inject for
// Lock, for the family's holds: a semaphore's permit, a read-write lock's
// read and write holds, each against a real redis-server. A holder process
// killed with SIGKILL (F2), a connection blackholed while holding (F10), an
// acquire whose reply is lost (F6). Network faults come from the chaos proxy
// in _chaos.ts; the killed holders are this file run as a program:
// `deno run -A tests/faults_family_network_test.ts <kind> <port> <name> <ttl>`
// acquires, prints `{"token": …}` and keeps renewing until killed.
// Assertions go over a side connection straight to Redis.

const TTL = 1_000;
const DRIFT = TTL * 0.01 + 2;
/** A semaphore's limit, unless a test needs a full semaphore (1). */
const LIMIT = 2;

/** The family's kinds of hold. */
type Kind = "permit" | "read" | "write";
const KINDS: readonly Kind[] = ["permit", "read", "write"];
/** Who a hold of each kind keeps out: a permit the next permit, a reader a writer, a writer a reader. */
const RIVAL: Record<Kind, Kind> = {
  permit: "permit",
  read: "write",
  write: "read",
};

type Hold = Semaphore | ReadWriteHold;

/** The Redis key that holds a `kind` hold of `name`. */
function keyOf(kind: Kind, name: string): string {
  if (kind === "permit") return `deadbolt:semaphore:{${name}}`;
  return kind === "read"
    ? `deadbolt:rw:{${name}}:readers`
    : `deadbolt:rw:{${name}}`;
}

/** Acquires a `kind` hold of `name` (a permit of a semaphore of `limit`). */
function acquireHold(
  client: RedisClient,
  kind: Kind,
  name: string,
  options: {
    ttl: number;
    timeout: number;
    limit?: number;
    maxRetryDelay?: number;
  },
): Promise<Hold> {
  const { limit = LIMIT, ...lockOptions } = options;
  if (kind === "permit") {
    return Semaphore.acquire(client, name, { ...lockOptions, limit });
  }
  return kind === "read"
    ? ReadWriteLock.read(client, name, lockOptions)
    : ReadWriteLock.write(client, name, lockOptions);
}

// ms left of the lease of the hold of ARGV[1] at KEYS[1] on Redis' clock
// (a sorted set's score, a writer key's PTTL); -2 when it is not there.
const LEASE_LEFT = `local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if redis.call('TYPE', KEYS[1])['ok'] == 'zset' then
  local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not ends then return -2 end
  return tonumber(ends) - now
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
return redis.call('PTTL', KEYS[1])`;

/** How many ms the lease of `token`'s hold at `key` has left on Redis; -2 when it is not there. */
async function leaseLeft(
  side: RespClient,
  key: string,
  token: string,
): Promise<number> {
  return await side.send("EVAL", LEASE_LEFT, 1, key, token) as number;
}

/** When (monotonic ms) the lease of `token`'s hold at `key` ends, and how much of it was left. */
async function leaseEnd(side: RespClient, key: string, token: string) {
  // Sampled before the server reads its clock: the true end is no earlier.
  const sampled = performance.now();
  const left = await leaseLeft(side, key, token);
  return { left, end: sampled + left };
}

/** The token that holds `key` (a sorted set's first, a writer key's value), "" if none. */
async function tokenAt(side: RespClient, kind: Kind, key: string) {
  const reply = kind === "write"
    ? await side.send("GET", key)
    : (await side.send("ZRANGE", key, 0, 0) as string[])[0];
  return typeof reply === "string" ? reply : "";
}

/** An ioredis client that closes with `await using`; `retry` ms between reconnections, or none. */
async function ioredis(
  port: number,
  retry: number | null = 20,
): Promise<Redis & AsyncDisposable> {
  const redis = new Redis({
    host: "127.0.0.1",
    port,
    retryStrategy: () => retry,
  });
  // Without a listener ioredis logs every reset connection.
  redis.on("error", () => {});
  await within(redis.ping(), 5_000, "ioredis connecting");
  return Object.assign(redis, {
    [Symbol.asyncDispose]: () => quitIoredis(redis),
  });
}

/** Loads the family's scripts on the server, so no EVALSHA waits on NOSCRIPT mid-fault. */
async function warm(client: RedisClient): Promise<void> {
  for (const kind of KINDS) {
    const hold = await within(
      acquireHold(client, kind, "warm-up", { ttl: TTL, timeout: 0 }),
      5_000,
      `the warm-up ${kind}`,
    );
    assert.equal(await hold.extend(), true);
    assert.equal(await hold.release(), true);
  }
}

/** Releases what a pending acquire gets, if anything, so a failed test leaves no hold renewing. */
async function releaseWhatever(acquiring: Promise<Hold>): Promise<void> {
  const hold = await within(
    acquiring.catch(() => undefined),
    10_000,
    "the pending acquire",
  );
  await hold?.release();
}

// ---- killed holders ----

/** A hold taken by a child process, which the test kills. */
interface HolderProcess extends AsyncDisposable {
  /** The token of its hold. */
  readonly token: string;
  /** Kills it with SIGKILL; resolves once it has exited. */
  kill(): Promise<Deno.CommandStatus>;
}

/** Runs this file as a holder of a `kind` hold of `name` and waits until it holds. */
async function spawnHolder(
  kind: Kind,
  port: number,
  name: string,
): Promise<HolderProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", import.meta.url, kind, String(port), name, String(TTL)],
    cwd: new URL("../", import.meta.url),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const kill = async () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // It has exited already.
    }
    return await within(child.status, 5_000, `the ${kind} holder's exit`);
  };
  const dispose = async () => {
    await kill();
    await stdout.cancel();
    await stderr;
  };
  try {
    let printed = "";
    while (!printed.includes("\n")) {
      const { value, done } = await within(
        stdout.read(),
        20_000,
        `the ${kind} holder's report`,
      );
      if (done) {
        throw new Error(`the ${kind} holder exited: ${await stderr}`);
      }
      printed += value;
    }
    const { token } = JSON.parse(printed.slice(0, printed.indexOf("\n")));
    return { token, kill, [Symbol.asyncDispose]: dispose };
  } catch (error) {
    await dispose();
    throw error;
  }
}

/** The holder process: acquires, prints its token, renews until killed. */
async function holdUntilKilled(
  [kind, port, name, ttl]: string[],
): Promise<void> {
  const redis = new Redis(Number(port), "127.0.0.1");
  redis.on("error", () => {});
  const hold = await acquireHold(redis, kind as Kind, name, {
    ttl: Number(ttl),
    timeout: 5_000,
  });
  console.log(JSON.stringify({ token: hold.token }));
  // Its socket keeps the process alive, and the hold renewed, until killed.
}

/** Checks every 10 ms until `deadline` (monotonic ms) that `token` still holds `key`. */
async function stillHeldUntil(
  side: RespClient,
  key: string,
  token: string,
  deadline: number,
): Promise<void> {
  while (performance.now() < deadline) {
    const left = await leaseLeft(side, key, token);
    // Answered before the deadline, so read on the server before it too.
    const at = performance.now();
    if (at < deadline) {
      assert.ok(left > 0, `gone ${deadline - at} ms before its lease ended`);
    }
    await sleep(10);
  }
}

Deno.test("a permit, a read hold or a write hold of a process killed by SIGKILL stays in Redis until its lease ends, and a waiter gets in then, within 300 ms; the other permit holder keeps its own (F2)", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  await using redis = await ioredis(server.port);

  for (const kind of KINDS) {
    await t.step(`a ${kind} hold, a ${RIVAL[kind]} waiter`, async () => {
      const name = `killed-${kind}`;
      const key = keyOf(kind, name);
      // A permit holder that stays alive, in this process.
      const other = kind === "permit"
        ? await within(
          acquireHold(redis, kind, name, { ttl: TTL, timeout: 0 }),
          5_000,
          "the other permit",
        )
        : undefined;
      try {
        await using holder = await spawnHolder(kind, server.port, name);
        assert.ok(await leaseLeft(side, key, holder.token) > 0, "not held");
        assert.equal((await holder.kill()).signal, "SIGKILL");
        // Its last renewal (if any) is in: its lease ends when it acquired
        // or last renewed, plus ttl, on Redis' clock.
        const { left, end } = await leaseEnd(side, key, holder.token);
        assert.ok(
          left > 0 && left <= TTL,
          `lease left after the kill: ${left}`,
        );

        // Asking every 20 ms at most, it would see a hold freed early.
        const waiting = acquireHold(redis, RIVAL[kind], name, {
          ttl: TTL,
          timeout: 3 * TTL,
          maxRetryDelay: 20,
        });
        const grantedAt = waiting.then(() => performance.now(), () => NaN);
        try {
          await stillHeldUntil(side, key, holder.token, end - 5);
          const waiter = await within(
            waiting,
            3 * TTL,
            `the ${RIVAL[kind]} waiter`,
          );
          const at = await grantedAt;
          assert.ok(
            at >= end - 2,
            `got in ${end - at} ms before the killed holder's lease ended`,
          );
          assert.ok(at <= end + 300, `got in ${at - end} ms after it ended`);
          assert.equal(await leaseLeft(side, key, holder.token), -2);
          assert.ok(await leaseLeft(side, waiter.key, waiter.token) > 0);
          if (other) {
            assert.ok(
              await leaseLeft(side, key, other.token) > 0,
              "other gone",
            );
            assert.ok(other.held && !other.signal.aborted, "other lost");
            assert.equal(await side.send("ZCARD", key), 2);
            assert.equal(await other.release(), true);
          }
          assert.equal(await waiter.release(), true);
        } finally {
          await releaseWhatever(waiting);
        }
      } finally {
        await other?.release();
      }
    });
  }
});

// ---- a blackholed connection ----

/** One script call made through a {@linkcode Recorder}. */
interface Call extends RecordedCall {
  /** The script's source (`EVAL`) or SHA-1 (`EVALSHA`). */
  script: string;
}

/** A client that forwards to `inner` and records every script call. */
class Recorder implements ScriptClient {
  readonly calls: Call[] = [];
  #inner: ScriptClient;

  constructor(inner: ScriptClient) {
    this.#inner = inner;
  }

  eval(script: string, keys: string[], args: string[]): Promise<unknown> {
    return this.#record(script, args, this.#inner.eval(script, keys, args));
  }

  evalsha(sha: string, keys: string[], args: string[]): Promise<unknown> {
    return this.#record(sha, args, this.#inner.evalsha!(sha, keys, args));
  }

  /** The renewals of `token`'s hold (a permit's or reader's, or a writer's). */
  renewals(token: string): Call[] {
    return this.calls.filter((call) =>
      call.token === token &&
      [EXTEND_PERMIT, EXTEND].some((script) =>
        call.script === script.source || call.script === script.sha
      )
    );
  }

  /** Resolves once every call has settled. */
  async idle(ms = 5_000): Promise<void> {
    await within(
      (async () => {
        while (!this.calls.every((call) => call.settled)) {
          await Promise.allSettled(this.calls.map((call) => call.reply));
        }
      })(),
      ms,
      "every script call settling",
    );
  }

  #record(script: string, args: string[], reply: Promise<unknown>) {
    const call: Call = Object.assign(recordCall(args, reply), { script });
    this.calls.push(call);
    return reply;
  }
}

Deno.test("while Redis is blackholed, a permit's, a read hold's and a write hold's signal aborts with LockLostError by validUntil, and after heal nothing brings the holds back (F10)", async () => {
  await using server = await startRedis();
  await using proxy = await ChaosProxy.start(server.port);
  await using side = await server.connect();
  await using redis = await ioredis(proxy.port);
  const client = new Recorder(fromIoredis(redis));
  await warm(client);
  const holds: Hold[] = [];
  try {
    for (const kind of KINDS) {
      holds.push(
        await within(
          acquireHold(client, kind, `dark-${kind}`, { ttl: TTL, timeout: 0 }),
          5_000,
          `the ${kind} hold`,
        ),
      );
    }
    // One renewal each first, so validity comes from a renewal's send time.
    for (const [i, hold] of holds.entries()) {
      await until(
        () =>
          Promise.resolve(
            client.renewals(hold.token).some((call) => call.value === 1),
          ),
        TTL,
        `a renewal of the ${KINDS[i]} hold`,
      );
    }
    await sleep(0);
    const blackholed = performance.now();
    proxy.set("blackhole");
    const losses = holds.map((hold) => abortedAt(hold.signal, 2 * TTL));
    for (const [i, hold] of holds.entries()) {
      const what = `${KINDS[i]} hold`;
      const at = await losses[i];
      const reason = hold.signal.reason;
      assert.ok(reason instanceof LockLostError, `${what}: ${reason}`);
      // The unanswered renewal is the cause, whichever timer ran first.
      assert.equal(
        (reason.cause as Error | undefined)?.name,
        "TimeoutError",
        `${what}: cause ${reason.cause}`,
      );
      assert.ok(
        at <= hold.validUntil,
        `${what} aborted ${at - hold.validUntil} ms late`,
      );
      const lastSuccess = client.renewals(hold.token).findLast((call) =>
        call.value === 1 && call.settledAt! <= at
      )!;
      assert.ok(
        at <= lastSuccess.at + TTL - DRIFT,
        `${what} aborted after its last successful renewal's send + ttl - drift`,
      );
      assert.equal(hold.held, false, what);
    }

    // Every lease has ended on the server by now.
    await sleep(blackholed + 2 * TTL - performance.now());
    const healed = performance.now();
    proxy.set("pass");
    // The renewals sent into the blackhole reach Redis now, after the
    // leases ended: none may make its hold again.
    await client.idle();
    for (const [i, hold] of holds.entries()) {
      const what = `${KINDS[i]} hold`;
      const late = client.renewals(hold.token).filter((call) =>
        call.at >= blackholed
      );
      assert.ok(late.length >= 1, `${what}: no renewal in the blackhole`);
      for (const call of late) assert.equal(call.value, 0, what);
      assert.equal(await leaseLeft(side, hold.key, hold.token), -2, what);
      assert.equal(await hold.extend(), false, what);
    }
    await sleep(TTL);
    for (const [i, hold] of holds.entries()) {
      const what = `${KINDS[i]} hold`;
      assert.equal(
        await leaseLeft(side, hold.key, hold.token),
        -2,
        `${what} came back`,
      );
      assert.ok(
        !client.renewals(hold.token).some((call) => call.at > healed),
        `${what} renewed after its loss`,
      );
    }
  } finally {
    proxy.set("pass");
    for (const hold of holds) await hold.release();
  }
  for (const kind of KINDS) {
    assert.equal(await side.send("EXISTS", keyOf(kind, `dark-${kind}`)), 0);
  }
});

// ---- an acquire whose reply is lost ----

/**
 * Starts an acquire through the proxy whose reply the proxy drops, and
 * resolves once the server has applied it, with the token it holds.
 */
async function acquireWithLostReply(
  proxy: ChaosProxy,
  side: RespClient,
  client: RedisClient,
  kind: Kind,
  name: string,
) {
  proxy.set("drop-replies");
  const sent = performance.now();
  const acquiring = acquireHold(client, kind, name, {
    ttl: TTL,
    timeout: 5_000,
    limit: 1,
  });
  acquiring.catch(() => {});
  let token = "";
  await until(
    async () => (token = await tokenAt(side, kind, keyOf(kind, name))) !== "",
    2_000,
    "the server applying the acquire",
  );
  return { acquiring, sent, token };
}

Deno.test("an acquire of a permit or of the write hold whose reply is lost on a connection that dies blocks a new acquirer no longer than its lease, and leaves no orphan (F6)", async (t) => {
  await using server = await startRedis();
  await using proxy = await ChaosProxy.start(server.port);
  await using side = await server.connect();
  await using direct = await ioredis(server.port);
  await warm(direct);

  for (const kind of ["permit", "write"] as const) {
    await t.step(`a ${kind}`, async () => {
      const name = `lost-${kind}`;
      const key = keyOf(kind, name);
      // No reconnection, so no resend: once the connection dies the client
      // can neither hear of the grant nor delete it; only its lease ends it.
      await using lossy = await ioredis(proxy.port, null);
      const { acquiring, sent, token: orphan } = await acquireWithLostReply(
        proxy,
        side,
        lossy,
        kind,
        name,
      );
      const { end } = await leaseEnd(side, key, orphan);
      proxy.reset();
      proxy.set("pass");
      const error = await within(
        acquiring.then(
          (hold) => assert.fail(`granted ${hold.token}`),
          (e) => e,
        ),
        1_000,
        "the lost acquire's rejection",
      );
      assert.ok(!(error instanceof LockTimeoutError), String(error));
      assert.match(error.message, /closed/);
      // Nothing could delete it: it is there until its lease ends.
      assert.ok(await leaseLeft(side, key, orphan) > 0, "the orphan went");

      const next = await within(
        acquireHold(direct, kind, name, {
          ttl: TTL,
          timeout: 3 * TTL,
          limit: 1,
        }),
        4 * TTL,
        "the new acquirer",
      );
      const at = performance.now();
      try {
        assert.ok(
          at >= end - 2,
          `got in ${end - at} ms before the orphan's lease ended`,
        );
        assert.ok(at <= end + 150, `blocked ${at - end} ms past its lease`);
        assert.ok(
          at - sent <= TTL + 150,
          `blocked ${at - sent} ms after the lost acquire was sent`,
        );
        assert.notEqual(next.token, orphan);
        assert.equal(await leaseLeft(side, key, orphan), -2, "orphan left");
        assert.ok(await leaseLeft(side, key, next.token) > 0);
        if (kind === "permit") assert.equal(await side.send("ZCARD", key), 1);
        assert.equal(await next.release(), true);
      } finally {
        await next.release();
      }
      assert.equal(await side.send("EXISTS", key), 0);
    });
  }
});

Deno.test("an acquire of a permit or of the write hold whose reply was lost gets its own grant when ioredis resends it, and takes nothing more (F6)", async (t) => {
  await using server = await startRedis();
  await using proxy = await ChaosProxy.start(server.port);
  await using side = await server.connect();
  await using redis = await ioredis(proxy.port);
  await warm(redis);

  for (const kind of ["permit", "write"] as const) {
    await t.step(`a ${kind}`, async () => {
      const name = `resent-${kind}`;
      const key = keyOf(kind, name);
      const { acquiring, token } = await acquireWithLostReply(
        proxy,
        side,
        redis,
        kind,
        name,
      );
      const applied = performance.now();
      proxy.reset();
      proxy.set("pass");
      try {
        // Granted by the resent script ("already mine"), not after its own
        // grant's lease ran out.
        const hold = await within(acquiring, TTL / 2, "the resent acquire");
        assert.equal(hold.token, token);
        assert.ok(hold.held);
        // Validity counts from the first send, before the server applied it.
        assert.ok(
          hold.validUntil <= applied + TTL - DRIFT,
          `validUntil ${hold.validUntil - applied} ms after it was applied`,
        );
        assert.ok(await leaseLeft(side, key, token) > 0);
        if (kind === "permit") assert.equal(await side.send("ZCARD", key), 1);
        assert.equal(await hold.release(), true);
      } finally {
        await releaseWhatever(acquiring);
      }
      assert.equal(await side.send("EXISTS", key), 0);
    });
  }
});

if (import.meta.main) await holdUntilKilled(Deno.args);
