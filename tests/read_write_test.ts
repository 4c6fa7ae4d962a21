import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import { LockLostError, LockTimeoutError, ReadWriteLock } from "../mod.ts";
import { redisEnv } from "./_env.ts";
import {
  abortedAt,
  CountingClient,
  lineUp,
  slowBackoff,
  within,
} from "./_util.ts";

// ReadWriteLock against a real redis-server: many readers or one writer,
// never both, writers not starved, and Lock's promises for every hold.

const setup = redisEnv;

Deno.test("readers hold together; a writer waits for them, and while it waits new readers wait behind it", async () => {
  await using env = await setup();
  const rw = new ReadWriteLock(env.redis, "catalog");
  const first = await rw.read();
  const second = await rw.read();
  assert.ok(first.held && second.held);
  assert.equal(await env.side.send("ZCARD", first.key), 2);
  const writing = rw.write({ timeout: 10_000 });
  // The writer has been turned away once: its mark is set.
  await lineUp(env.redis, "catalog", 1, 5_000, rw.writer().key);
  assert.equal(await rw.reader().tryAcquire(), false, "a reader barged in");
  const lateReader = rw.read({ timeout: 10_000 });
  await first.release();
  await second.release();
  const writer = await within(writing, 5_000, "the writer's grant");
  assert.ok(writer.held);
  assert.equal(writer.mode, "write");
  let readerGranted = false;
  lateReader.then(() => readerGranted = true, () => {});
  assert.equal(readerGranted, false);
  await writer.release();
  await using reader = await within(lateReader, 5_000, "the late reader");
  assert.ok(reader.held);
});

Deno.test("a reader and a writer are never held at once, and there is at most one writer (24 workers, two connections)", async () => {
  await using env = await setup();
  const clients = [
    new Redis(env.server.port, "127.0.0.1"),
    new Redis(env.server.port, "127.0.0.1"),
  ];
  try {
    let readers = 0;
    let writers = 0;
    let mostReaders = 0;
    let writes = 0;
    const violations: string[] = [];
    const workers = Array.from({ length: 24 }, async (_, i) => {
      const rw = new ReadWriteLock(clients[i % 2], "mixed", {
        retryDelay: 2,
        maxRetryDelay: 20,
      });
      for (let round = 0; round < 6; round++) {
        if (i % 4 === 0) {
          await using hold = await rw.write({ timeout: 30_000 });
          writers++;
          writes++;
          if (writers > 1 || readers > 0) {
            violations.push(
              `writer with ${writers} writers, ${readers} readers`,
            );
          }
          await new Promise((resolve) => setTimeout(resolve, 1));
          assert.ok(hold.held);
          writers--;
        } else {
          await using hold = await rw.read({ timeout: 30_000 });
          readers++;
          mostReaders = Math.max(mostReaders, readers);
          if (writers > 0) violations.push(`reader with ${writers} writers`);
          await new Promise((resolve) => setTimeout(resolve, 1));
          assert.ok(hold.held);
          readers--;
        }
      }
    });
    await within(Promise.all(workers), 60_000, "144 holds");
    assert.deepEqual(violations, []);
    assert.equal(writes, 36);
    assert.ok(mostReaders > 1, "readers never shared the lock");
  } finally {
    for (const client of clients) await client.quit();
  }
});

Deno.test("writer fences are strictly increasing; a reader gets the last writer's fence", async () => {
  await using env = await setup();
  const rw = new ReadWriteLock(env.redis, "fenced", { fencing: true });
  const fences: number[] = [];
  for (let i = 0; i < 3; i++) {
    await using writer = await rw.write();
    fences.push(writer.fence!);
  }
  assert.deepEqual(fences, [1, 2, 3]);
  await using reader = await rw.read();
  assert.equal(reader.fence, 3);
});

Deno.test("a reader whose lease ends without renewal is lost and says so; a writer gets the lock after it, never before", async () => {
  await using env = await setup();
  const quiet = await ReadWriteLock.read(env.redis, "lease", {
    ttl: 300,
    autoExtend: false,
  });
  const writer = await within(
    ReadWriteLock.write(env.redis, "lease", { timeout: 5_000 }),
    6_000,
    "the writer",
  );
  const grantedAt = performance.now();
  assert.ok(
    grantedAt >= quiet.validUntil,
    `granted ${
      quiet.validUntil - grantedAt
    } ms before the reader's validity ended`,
  );
  const reason = await within(
    abortedAt(quiet.signal).then(() => quiet.signal.reason),
    2_000,
    "the reader's loss",
  );
  assert.ok(reason instanceof LockLostError, String(reason));
  assert.equal(await writer.release(), true);
  assert.equal(await quiet.release(), false);
});

Deno.test("a writer's wait for readers times out with LockTimeoutError and the time until the first reader's lease ends", async () => {
  await using env = await setup();
  await using _reader = await ReadWriteLock.read(env.redis, "slow", {
    ttl: 10_000,
  });
  const error = await ReadWriteLock.write(env.redis, "slow", { timeout: 200 })
    .then(() => assert.fail("wrote while read"), (e) => e);
  assert.ok(error instanceof LockTimeoutError, String(error));
  assert.ok(
    error.remainingTtl > 9_000 && error.remainingTtl <= 10_000,
    `remainingTtl ${error.remainingTtl}`,
  );
});

Deno.test("bad read-write lock options are a TypeError or RangeError naming the option, before any Redis command", async () => {
  await using env = await setup();
  const calls = new CountingClient(env.redis);
  const cases: [unknown, RegExp][] = [
    [{ ttl: 5 }, /'ttl'/],
    [{ waitReplicas: 1 }, /waitReplicas/],
    [{ limit: 2 }, /limit/],
    [{ fencing: "yes" }, /'fencing'/],
  ];
  for (const [options, message] of cases) {
    await assert.rejects(
      ReadWriteLock.read(calls, "bad", options as { ttl: number }),
      (error: Error) =>
        (error instanceof TypeError || error instanceof RangeError) &&
        message.test(error.message),
      JSON.stringify(options),
    );
  }
  assert.equal(calls.calls, 0);
});

Deno.test("a release of one kind wakes the waiters of the other kind in the same process, on a client that cannot subscribe", async () => {
  await using env = await setup();
  // Backoff sleeps as long as their bound allows: about 4 s.
  using _ = slowBackoff();
  const rw = new ReadWriteLock(env.redis, "kinds", {
    timeout: 20_000,
    retryDelay: 4_000,
    maxRetryDelay: 4_000,
  });
  const reader = await rw.read();
  const writing = rw.write();
  await lineUp(env.redis, "kinds", 1, 5_000, rw.writer().key);
  assert.equal(await reader.release(), true);
  // Before: each slept out its backoff, where a lock's waiter is woken.
  const writer = await within(writing, 2_000, "the writer's grant");
  const reading = rw.read();
  await lineUp(env.redis, "kinds", 1, 5_000, rw.reader().key);
  assert.equal(await writer.release(), true);
  const again = await within(reading, 2_000, "the reader's grant");
  assert.equal(await again.release(), true);
});

Deno.test("a writer that gives up takes its mark away with its place, and readers kept out by it get the lock at once, here and elsewhere", async (t) => {
  await using env = await setup();
  // Backoff sleeps as long as their bound allows: about 4 s.
  using _ = slowBackoff();
  const elsewhere = new Redis(env.server.port, "127.0.0.1");
  try {
    const options = {
      timeout: 20_000,
      retryDelay: 4_000,
      maxRetryDelay: 4_000,
    };
    const cases = [
      // A reader in another process hears of it by pub/sub.
      ["elsewhere", elsewhere, "marked-elsewhere"],
      // One of the writer's own process, on a client that cannot subscribe.
      ["here", env.redis, "marked-here"],
    ] as const;
    for (const [where, client, name] of cases) {
      await t.step(where, async () => {
        const rw = new ReadWriteLock(env.redis, name, options);
        const first = await rw.read();
        const controller = new AbortController();
        const writing = rw.write({ signal: controller.signal });
        await lineUp(env.redis, name, 1, 5_000, rw.writer().key);
        const second = new ReadWriteLock(client, name, options).read();
        await lineUp(client, name, 1, 5_000, rw.reader().key);
        controller.abort(new Error("gave up"));
        await assert.rejects(writing);
        // Before: the mark stood until it lapsed (about 4 s), and no reader
        // was let in though only readers held the lock.
        const reader = await within(second, 2_000, "the second reader");
        assert.equal(await reader.release(), true);
        assert.equal(await first.release(), true);
      });
    }
  } finally {
    await elsewhere.quit();
  }
});
