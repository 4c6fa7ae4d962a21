import assert from "node:assert/strict";
import { Redis, type RedisConfigNodejs } from "npm:@upstash/redis@1";
import { Lock, LockTimeoutError } from "../mod.ts";
import { startRedis } from "./_redis.ts";
import { startUpstash, type UpstashServer } from "./_upstash.ts";
import { sleep, within } from "./_util.ts";

// The real @upstash/redis client, over HTTP to a local Upstash REST endpoint
// (tests/_upstash.ts) in front of a real redis-server. It has no pub/sub that
// deadbolt uses, so waiters wake by backoff only.

/** How long one lock operation may take before the test fails instead of hanging. */
const LIMIT = 5_000;

/** The client's defaults (auto-pipelining, base64 replies, JSON parsing), and all three off. */
const CONFIGS: [string, Partial<RedisConfigNodejs>][] = [
  ["defaults", {}],
  ["no auto-pipelining, plain JSON, no deserialization", {
    enableAutoPipelining: false,
    responseEncoding: false,
    automaticDeserialization: false,
  }],
];

/** A new client; `retry: false` so that a refused connection fails at once. */
const upstash = (
  rest: UpstashServer,
  config: Partial<RedisConfigNodejs> = {},
) => new Redis({ url: rest.url, token: rest.token, retry: false, ...config });

Deno.test("the real @upstash/redis client acquires and releases a lock as it is", async (t) => {
  await using redis = await startRedis();
  await using rest = await startUpstash(redis.port);
  await using side = await redis.connect();
  for (const [label, config] of CONFIGS) {
    await t.step(label, async () => {
      const client = upstash(rest, config);
      const requests = rest.requests;
      const lock = await within(Lock.acquire(client, label), LIMIT, "acquire");
      assert.equal(lock.held, true);
      assert.equal(await side.send("GET", lock.key), lock.token);
      assert.ok(rest.requests > requests, "the script went over HTTP");
      assert.equal(await within(lock.release(), LIMIT, "release"), true);
      assert.equal(lock.held, false);
      assert.equal(await side.send("EXISTS", lock.key), 0);
    });
  }
});

Deno.test("a waiter on a second @upstash/redis client gets the lock by backoff once the holder releases", async () => {
  await using redis = await startRedis();
  await using rest = await startUpstash(redis.port);
  await using side = await redis.connect();
  const holder = await within(
    Lock.acquire(upstash(rest), "contended"),
    LIMIT,
    "the holder's acquire",
  );
  const polls = rest.commands.length;
  const waiting = Lock.acquire(upstash(rest), "contended", {
    timeout: 5_000,
    maxRetryDelay: 50,
  });
  // A rejection (say, a TypeError from the wait) fails the test as it is.
  assert.equal(
    await Promise.race([
      waiting.then(() => "acquired"),
      sleep(300).then(() => "waiting"),
    ]),
    "waiting",
    "the waiter waits while the lock is held",
  );
  assert.ok(rest.commands.length - polls >= 3, "the waiter retries by backoff");

  assert.equal(await within(holder.release(), LIMIT, "release"), true);
  await using waiter = await within(waiting, 7_000, "the waiter's acquire");
  assert.equal(waiter.held, true);
  assert.equal(await side.send("GET", waiter.key), waiter.token);
});

Deno.test("Lock.acquire() through @upstash/redis times out with the holder's remaining ttl", async () => {
  await using redis = await startRedis();
  await using rest = await startUpstash(redis.port);
  const ttl = 10_000;
  await using holder = await within(
    Lock.acquire(upstash(rest), "busy", { ttl }),
    LIMIT,
    "the holder's acquire",
  );
  await assert.rejects(
    within(
      Lock.acquire(upstash(rest), "busy", { timeout: 200, maxRetryDelay: 50 }),
      LIMIT,
      "the timeout",
    ),
    (error) =>
      error instanceof LockTimeoutError && error.lockName === "busy" &&
      Number.isInteger(error.remainingTtl) && error.remainingTtl > 0 &&
      error.remainingTtl <= ttl,
  );
  assert.equal(holder.held, true);
});

Deno.test("fencing through @upstash/redis issues 1, 2, 3 to successive holders", async () => {
  await using redis = await startRedis();
  await using rest = await startUpstash(redis.port);
  await using side = await redis.connect();
  const client = upstash(rest);
  for (const fence of [1, 2, 3]) {
    const lock = await within(
      Lock.acquire(client, "fenced", { fencing: true }),
      LIMIT,
      `acquire ${fence}`,
    );
    assert.equal(lock.fence, fence);
    assert.equal(await side.send("GET", `${lock.key}:fence`), String(fence));
    assert.equal(await within(lock.release(), LIMIT, "release"), true);
  }
});

Deno.test("@upstash/redis falls back from EVALSHA to EVAL after SCRIPT FLUSH", async (t) => {
  await using redis = await startRedis();
  await using rest = await startUpstash(redis.port);
  await using side = await redis.connect();
  for (const [label, config] of CONFIGS) {
    await t.step(label, async () => {
      const client = upstash(rest, config);
      assert.equal(await side.send("SCRIPT", "FLUSH"), "OK");
      let from = rest.commands.length;
      const lock = await within(
        Lock.acquire(client, label, { autoExtend: false }),
        LIMIT,
        "acquire",
      );
      assert.deepEqual(rest.commands.slice(from), ["evalsha", "eval"]);
      assert.equal(await side.send("GET", lock.key), lock.token);

      assert.equal(await side.send("SCRIPT", "FLUSH"), "OK");
      from = rest.commands.length;
      assert.equal(await within(lock.release(), LIMIT, "release"), true);
      assert.deepEqual(rest.commands.slice(from), ["evalsha", "eval"]);
      assert.equal(await side.send("EXISTS", lock.key), 0);
    });
  }
});

Deno.test("release() through @upstash/redis deletes by token only, never another holder's key", async () => {
  await using redis = await startRedis();
  await using rest = await startUpstash(redis.port);
  await using side = await redis.connect();
  const client = upstash(rest);
  const first = await within(Lock.acquire(client, "shared"), LIMIT, "acquire");
  assert.equal(await within(first.release(), LIMIT, "release"), true);
  assert.equal(await within(first.release(), LIMIT, "second release"), false);

  // A holder whose lease ran out; the next one takes the key after expiry.
  const stale = await within(
    Lock.acquire(client, "shared", { ttl: 150, autoExtend: false }),
    LIMIT,
    "the stale holder's acquire",
  );
  await using fresh = await within(
    Lock.acquire(upstash(rest), "shared", { timeout: 1_000 }),
    LIMIT,
    "the fresh holder's acquire",
  );
  const from = rest.commands.length;
  assert.equal(await within(stale.release(), LIMIT, "stale release"), false);
  assert.ok(rest.commands.length > from, "the token was checked in Redis");
  assert.equal(await side.send("GET", fresh.key), fresh.token);
  assert.equal(await within(first.release(), LIMIT, "release again"), false);
  assert.equal(await side.send("GET", fresh.key), fresh.token);
});
