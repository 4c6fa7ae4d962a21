import assert from "node:assert/strict";
import { Lock, LockLostError } from "../mod.ts";
import { redisEnv } from "./_env.ts";
import { DbRedisShape } from "./_resp.ts";
import { abortedAt, CountingClient, within } from "./_util.ts";

// Lock.adopt: a hold passed to another handle (another process, most
// likely) by name and token, and Lock.keys, against a real redis-server.

const setup = redisEnv;

Deno.test("Lock.adopt() takes over a hold by its token: same token and fence, renewed, watched, released", async () => {
  await using env = await setup();
  const scheduler = await Lock.acquire(env.redis, "job", {
    fencing: true,
    ttl: 2_000,
    autoExtend: false,
  });
  await using worker = await within(
    Lock.adopt(env.redis, "job", scheduler.detach(), {
      fencing: true,
      ttl: 60_000,
    }),
    5_000,
    "the adoption",
  );
  assert.ok(worker?.held);
  assert.equal(worker.token, scheduler.token);
  assert.equal(worker.fence, scheduler.fence);
  // Renewed to the worker's ttl at once.
  const pttl = Number(await env.side.send("PTTL", worker.key));
  assert.ok(pttl > 50_000, `PTTL ${pttl}`);
  assert.ok(worker.validUntil > scheduler.validUntil);
  assert.equal(scheduler.held, false);
  assert.equal(scheduler.signal.aborted, false);
  assert.equal(await scheduler.release(), false);
  // Its loss is signalled like any hold's.
  await env.side.send("SET", worker.key, "someone-else");
  assert.equal(await worker.extend(), false);
  assert.ok(
    (await within(
      abortedAt(worker.signal).then(() => worker.signal.reason),
      5_000,
      "the loss",
    )) instanceof LockLostError,
  );
  // Released by token only: the foreign value stays.
  assert.equal(await worker.release(), false);
  assert.equal(await env.side.send("GET", worker.key), "someone-else");
});

Deno.test("Lock.adopt() then release() deletes the key, and wakes a waiter of the detaching process", async () => {
  await using env = await setup();
  const scheduler = await Lock.acquire(env.redis, "job");
  const waiting = Lock.acquire(env.redis, "job", { timeout: 10_000 });
  const token = scheduler.detach();
  assert.throws(() => scheduler.detach(), /does not hold it/);
  const other = new DbRedisShape(await env.server.connect());
  try {
    const worker = await Lock.adopt(other, "job", token);
    assert.ok(worker?.held);
    assert.equal(await worker.release(), true);
    await using next = await within(waiting, 5_000, "the waiter's grant");
    assert.ok(next.held);
  } finally {
    other.close();
  }
});

Deno.test("Lock.adopt() is null when the key is gone or holds another token, and creates nothing", async () => {
  await using env = await setup();
  const gone = await Lock.adopt(env.redis, "job", crypto.randomUUID());
  assert.equal(gone, null);
  assert.equal(await env.side.send("EXISTS", Lock.keys("job").lock), 0);
  await using holder = await Lock.acquire(env.redis, "job");
  const other = await Lock.adopt(env.redis, "job", crypto.randomUUID());
  assert.equal(other, null);
  assert.equal(await env.side.send("GET", holder.key), holder.token);
});

Deno.test("Lock.adopt() refuses a token that is not a non-empty string with a TypeError, before any command", async () => {
  await using env = await setup();
  const calls = new CountingClient(env.redis);
  for (const token of ["", 42, undefined, null]) {
    await assert.rejects(
      Lock.adopt(calls, "job", token as string),
      (error: Error) =>
        error instanceof TypeError && /'token'/.test(error.message),
    );
  }
  assert.equal(calls.calls, 0);
  const held = await Lock.acquire(env.redis, "job");
  await assert.rejects(held.adopt(held.token), /holds it already/);
  await held.release();
});

Deno.test("Lock.keys() names a lock's keys as a handle uses them, and checks the name and prefix", () => {
  const keys = Lock.keys("a}b", { prefix: "app:" });
  assert.equal(
    keys.lock,
    new Lock({ eval: () => Promise.resolve(0) }, "a}b", { prefix: "app:" }).key,
  );
  assert.deepEqual(keys, {
    lock: "app:{a%7Db}",
    fence: "app:{a%7Db}:fence",
    released: "app:{a%7Db}:released",
    line: "app:{a%7Db}:line",
    seats: "app:{a%7Db}:seats",
  });
  assert.throws(() => Lock.keys(""), TypeError);
  assert.throws(() => Lock.keys("x", { prefix: "{bad}" }), TypeError);
  assert.throws(
    () => Lock.keys("x", { ttl: 5 } as { prefix?: string }),
    TypeError,
  );
});
