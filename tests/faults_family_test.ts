import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import {
  LockLostError,
  MultiLock,
  type ReadWriteHold,
  ReadWriteLock,
  Semaphore,
} from "../mod.ts";
import { startRedis } from "./_redis.ts";
import { abortedAt, within } from "./_util.ts";

// The faults of the fault suite that apply to the family (Semaphore,
// ReadWriteLock, MultiLock), each against a real redis-server: Redis
// restarted without persistence, a server clock that jumps (emulated by
// moving a lease's end to now), and a holder paused past its lease. In each,
// every holder's loss is signalled before its validUntil, and the hold is
// free afterwards. Killed holders, a blackholed connection and lost replies
// are in faults_family_network_test.ts.

const TTL = 1_500;

/** What each member's handle shares. */
interface Held {
  readonly signal: AbortSignal;
  readonly validUntil: number;
  readonly held: boolean;
  release(): Promise<boolean>;
}

async function ioredis(port: number): Promise<Redis> {
  const redis = new Redis(port, "127.0.0.1", { retryStrategy: () => 20 });
  redis.on("error", () => {});
  await within(
    new Promise((resolve) => redis.once("ready", resolve)),
    5_000,
    "ioredis connecting",
  );
  return redis;
}

/** Waits for every hold's loss and checks it came before its validUntil. */
async function allLost(holds: Held[]): Promise<void> {
  for (const hold of holds) {
    const at = await within(abortedAt(hold.signal, TTL), TTL, "the loss");
    assert.ok(at <= hold.validUntil, `lost ${at - hold.validUntil} ms late`);
    assert.ok(hold.signal.reason instanceof LockLostError);
    assert.equal(hold.held, false);
  }
}

Deno.test("a restart without persistence loses every permit and hold; each holder signals its loss before validUntil, and the names are free again", async () => {
  await using server = await startRedis();
  const redis = await ioredis(server.port);
  try {
    const options = { ttl: TTL };
    const permit = await Semaphore.acquire(redis, "s", {
      ...options,
      limit: 2,
    });
    const reader = await ReadWriteLock.read(redis, "r", options);
    const writer = await ReadWriteLock.write(redis, "w", options);
    const set = await MultiLock.acquire(redis, ["m1", "m2"], options);
    await server.restart();
    await allLost([permit, reader, writer, set]);
    for (const hold of [permit, reader, writer, set]) {
      assert.equal(await hold.release(), false);
    }
    // Free again.
    await using again = await Semaphore.acquire(redis, "s", {
      limit: 1,
      timeout: 0,
    });
    await using w = await ReadWriteLock.write(redis, "r", { timeout: 0 });
    assert.ok(again.held && w.held);
  } finally {
    redis.disconnect();
  }
});

Deno.test("a server clock jump that ends a permit's or a reader's lease early is found at the next renewal and signalled before validUntil; the other holders keep theirs", async () => {
  await using server = await startRedis();
  const redis = await ioredis(server.port);
  await using side = await server.connect();
  try {
    const now = async () => {
      const [s, us] = await side.send("TIME") as [string, string];
      return Number(s) * 1_000 + Math.floor(Number(us) / 1_000);
    };
    const first = await Semaphore.acquire(redis, "jump", {
      ttl: TTL,
      limit: 2,
    });
    await using second = await Semaphore.acquire(redis, "jump", {
      ttl: TTL,
      limit: 2,
    });
    const rw = new ReadWriteLock(redis, "jump", { ttl: TTL });
    const jumped: ReadWriteHold = await rw.read();
    await using kept = await rw.read();
    // Redis' clock jumps past these two leases: their ends are now.
    await side.send("ZADD", first.key, "XX", String(await now()), first.token);
    await side.send(
      "ZADD",
      jumped.key,
      "XX",
      String(await now()),
      jumped.token,
    );
    await allLost([first, jumped]);
    assert.ok(second.held && kept.held, "another holder lost its hold");
    assert.equal(await first.release(), false);
    assert.equal(await jumped.release(), false);
    // The freed permit is there to take.
    await using third = await Semaphore.acquire(redis, "jump", {
      limit: 2,
      timeout: 0,
    });
    assert.ok(third.held);
  } finally {
    redis.disconnect();
  }
});

Deno.test("a writer whose key expires early (a server clock jump, emulated with PEXPIRE) signals its loss before validUntil, and readers get in", async () => {
  await using server = await startRedis();
  const redis = await ioredis(server.port);
  await using side = await server.connect();
  try {
    const writer = await ReadWriteLock.write(redis, "pexpire", { ttl: TTL });
    await side.send("PEXPIRE", writer.key, "1");
    await allLost([writer]);
    await using reader = await ReadWriteLock.read(redis, "pexpire", {
      timeout: 0,
    });
    assert.ok(reader.held);
  } finally {
    redis.disconnect();
  }
});

Deno.test("a permit holder paused past its lease (its event loop blocked) sees the loss on wake, and its permit went to a waiter meanwhile, never earlier", async () => {
  await using server = await startRedis();
  const redis = await ioredis(server.port);
  try {
    const paused = await Semaphore.acquire(redis, "pause", {
      ttl: 300,
      limit: 1,
    });
    const waiting = Semaphore.acquire(redis, "pause", {
      ttl: 300,
      limit: 1,
      timeout: 5_000,
      maxRetryDelay: 20,
    });
    // A blocked event loop: no timer, no renewal, no reply runs.
    const until = performance.now() + 600;
    while (performance.now() < until) { /* blocked */ }
    // On wake, reading the signal declares the loss at once.
    assert.equal(paused.signal.aborted, true);
    assert.ok(paused.signal.reason instanceof LockLostError);
    const next = await within(waiting, 5_000, "the waiter");
    assert.ok(performance.now() >= paused.validUntil);
    assert.equal(await paused.release(), false);
    assert.equal(await next.release(), true);
  } finally {
    redis.disconnect();
  }
});
