import assert from "node:assert/strict";
import { Lock, type ScriptClient } from "../mod.ts";
import { Lease, RENEWED, validity } from "../src/_lease.ts";
import { now } from "../src/_timers.ts";
import { redisEnv } from "./_env.ts";
import { scriptKind, sleep, within } from "./_util.ts";

// On a client that runs calls in the order sent (`ordered`), an extension
// that ran rules out every one sent before it: the key's expiry is its own.

Deno.test("ordered client: an extension that ran rules out every one sent before it, answered or not", () => {
  const lease = new Lease(now(), {
    ordered: true,
    ttl: 1_000,
    autoExtend: false,
    renewInterval: 300,
    retryDelay: 5,
    maxRetryDelay: 100,
    commandTimeout: 1_000,
    extend: () => Promise.resolve(RENEWED),
    onLost: () => {},
  });
  try {
    // A renewal (1 s) in flight when extend(5 s) goes out on the same
    // connection: Redis runs the renewal first, then the extend.
    const renewal = lease.extending(now(), 1_000);
    const sent = now();
    const extension = lease.extending(sent, 5_000);
    lease.extended(renewal);
    lease.extended(extension);
    assert.equal(lease.validUntil, sent + validity(5_000));
  } finally {
    lease.end();
  }
});

Deno.test("ordered client: extend() to a longer ttl sent while a renewal is in flight is not lost at the renewal's end", async () => {
  await using env = await redisEnv();
  // One connection, answers in the order sent (as the shape's own are); the
  // first renewal's answer, and so every answer after it, is held back
  // until the test lets it through.
  const gate = Promise.withResolvers<void>();
  const renewalRan = Promise.withResolvers<void>();
  let held = false;
  let last: Promise<unknown> = Promise.resolve();
  const client: ScriptClient = {
    deadbolt: { ordered: true },
    eval: (script, keys, args) => {
      const reply = env.redis.eval(script, keys, args);
      let answer: Promise<unknown> = reply;
      if (!held && scriptKind(script) === "extend") {
        held = true;
        reply.then(() => renewalRan.resolve(), () => renewalRan.resolve());
        answer = reply.then(async (value) => {
          await gate.promise;
          return value;
        });
      }
      const previous = last;
      const ordered = answer.then(
        async (value) => {
          await previous.catch(() => {});
          return value;
        },
        async (error) => {
          await previous.catch(() => {});
          throw error;
        },
      );
      last = ordered;
      return ordered;
    },
  };
  const lock = new Lock(client, "ordered-extend", {
    ttl: 1_000,
    renewInterval: 300,
  });
  try {
    await within(lock.acquire(), 5_000, "the grant");
    await within(renewalRan.promise, 5_000, "the first renewal in Redis");
    const sent = performance.now();
    const extended = lock.extend(5_000);
    gate.resolve();
    assert.equal(await within(extended, 5_000, "extend()"), true);
    const pttl = Number(await env.side.send("PTTL", lock.key));
    assert.ok(pttl > 4_000, `Redis ran the extend last: PTTL ${pttl}`);
    assert.ok(
      lock.validUntil >= sent + validity(5_000) - 50,
      `valid ${Math.round(lock.validUntil - sent)} ms after the extend's send`,
    );
  } finally {
    gate.resolve();
    await within(lock.release(), 5_000, "release");
  }
});

Deno.test("ordered client: two extend() calls in a row, the longer last, leave the lock held past the shorter", async () => {
  await using env = await redisEnv();
  const client: ScriptClient = {
    deadbolt: { ordered: true },
    eval: (script, keys, args) => env.redis.eval(script, keys, args),
  };
  const lock = new Lock(client, "ordered-extends", {
    ttl: 1_000,
    autoExtend: false,
  });
  try {
    await within(lock.acquire(), 5_000, "the grant");
    const shorter = lock.extend(1_000);
    const longer = lock.extend(5_000);
    assert.deepEqual(
      await within(Promise.all([shorter, longer]), 5_000, "extend()"),
      [true, true],
    );
    await sleep(1_200);
    const pttl = Number(await env.side.send("PTTL", lock.key));
    assert.ok(pttl > 3_000, `the key holds: PTTL ${pttl}`);
    assert.equal(lock.signal.aborted, false, "lost while its key holds");
    assert.equal(lock.held, true);
  } finally {
    await within(lock.release(), 5_000, "release");
  }
});

Deno.test("an extension always goes with EVAL, so that after SCRIPT FLUSH no NOSCRIPT retry runs it after a call sent later", async () => {
  await using env = await redisEnv();
  // How each extend went out: with its source, or with its SHA-1.
  const sent: string[] = [];
  const client: ScriptClient = {
    deadbolt: { ordered: true },
    eval: (script, keys, args) => {
      if (scriptKind(script) === "extend") sent.push("EVAL");
      return env.redis.eval(script, keys, args);
    },
    evalsha: (sha, keys, args) => {
      if (scriptKind(sha) === "extend") sent.push("EVALSHA");
      return env.redis.evalsha(sha, keys, args);
    },
  };
  const lock = await within(
    Lock.acquire(client, "in-order", { autoExtend: false }),
    5_000,
    "the grant",
  );
  try {
    for (let i = 0; i < 3; i++) {
      assert.equal(await within(lock.extend(), 5_000, "extend()"), true);
    }
    // Before: the first went with EVAL, which taught the SHA-1, and the
    // others with EVALSHA.
    assert.deepEqual(sent, ["EVAL", "EVAL", "EVAL"]);
  } finally {
    await within(lock.release(), 5_000, "release");
  }
});
