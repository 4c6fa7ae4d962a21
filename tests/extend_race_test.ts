import assert from "node:assert/strict";
import { Lock, type ScriptClient } from "../mod.ts";
import { type Env, redisEnv } from "./_env.ts";
import { scriptKind, sleep, until, within } from "./_util.ts";

// extend() racing the lease's own renewal. On a pooled client two extend
// scripts in flight at once may run in Redis in either order, and answer in
// either order; a late answer stands for the lost or slow one of any
// client. Whatever the order, `validUntil` must never lie past the key's
// real expiry, which the script Redis ran last set.

/** One extend script through the stand-in, with its two gates. */
interface ExtendCall {
  /** The ttl it asks for, in ms. */
  ttl: number;
  /** Opens the way to Redis (a call held back: a busy pooled connection). */
  send(): void;
  /** Hands Redis's answer on to deadbolt. */
  answer(): void;
  /** Redis ran it and answered the stand-in. */
  ran: Promise<void>;
  /** Its answer reached deadbolt. */
  done: Promise<void>;
}

/**
 * Forwards every call to `inner`; an extend script goes to Redis and its
 * answer on only when `hold` lets it at once, else once the test opens that
 * gate.
 */
function standIn(
  inner: ScriptClient,
  hold: (
    ttl: number,
    calls: ExtendCall[],
  ) => { send: boolean; answer: boolean },
): ScriptClient & { calls: ExtendCall[] } {
  const calls: ExtendCall[] = [];
  return {
    calls,
    eval: (script, keys, args) => {
      if (scriptKind(script) !== "extend") {
        return inner.eval(script, keys, args);
      }
      const ttl = Number(args[1]);
      const held = hold(ttl, calls);
      const send = Promise.withResolvers<void>();
      const answer = Promise.withResolvers<void>();
      const reply = send.promise.then(() => inner.eval(script, keys, args));
      const delivered = reply.then(async (value) => {
        await answer.promise;
        return value;
      });
      calls.push({
        ttl,
        send: () => send.resolve(),
        answer: () => answer.resolve(),
        ran: reply.then(() => {}),
        done: delivered.then(() => {}, () => {}),
      });
      if (!held.send) send.resolve();
      if (!held.answer) answer.resolve();
      return delivered;
    },
  };
}

/**
 * Fails when `lock.validUntil` lies past the key's expiry in Redis (as its
 * PTTL, read just after, tells).
 */
async function assertValidity(env: Env, lock: Lock, when: string) {
  const validUntil = lock.validUntil;
  const pttl = Number(await env.side.send("PTTL", lock.key));
  const expiry = performance.now() + pttl;
  assert.ok(
    validUntil <= expiry,
    `${when}: valid ${
      Math.round(validUntil - expiry)
    } ms past the key's expiry (PTTL ${pttl})`,
  );
}

const firstCall = (calls: ExtendCall[], ttl: number, what: string) =>
  until(
    () => Promise.resolve(calls.some((call) => call.ttl === ttl)),
    3_000,
    what,
  ).then(() => calls.find((call) => call.ttl === ttl)!);

// Lets the answers just handed on run through deadbolt's promise chains.
const settleDown = () => sleep(20);

// What is left in flight is let through and waited for: the test leaves no
// timer behind.
async function drain(client: { calls: ExtendCall[] }, lock: Lock) {
  await lock.release();
  for (const call of client.calls) {
    call.send();
    call.answer();
  }
  await within(
    Promise.all(client.calls.map((call) => call.done)),
    3_000,
    "the stand-in's held answers",
  );
}

Deno.test("a renewal answered after a shorter extend() ran in Redis leaves validUntil at the shorter lease", async () => {
  await using env = await setup();
  // The first renewal (10 s) and the extend run at once, their answers
  // held back.
  const client = standIn(env.redis, (ttl, calls) => ({
    send: false,
    answer: ttl === 10_000 && !calls.some((call) => call.ttl === 10_000) ||
      ttl === 1_000,
  }));
  const lock = await Lock.acquire(client, "race-shorter", {
    ttl: 10_000,
    renewInterval: 300,
  });
  try {
    const renewal = await firstCall(client.calls, 10_000, "the first renewal");
    await within(renewal.ran, 3_000, "the renewal in Redis");
    const sent = performance.now();
    const extended = lock.extend(1_000);
    const extension = await firstCall(client.calls, 1_000, "the extend");
    await within(extension.ran, 3_000, "the extend in Redis");
    const pttl = Number(await env.side.send("PTTL", lock.key));
    assert.ok(pttl > 0 && pttl <= 1_000, `Redis ran it last: PTTL ${pttl}`);
    await assertValidity(env, lock, "once Redis ran the extend");
    // The renewal's answer comes: it ran before the extend.
    renewal.answer();
    await within(renewal.done, 3_000, "the renewal's answer");
    await settleDown();
    assert.ok(
      lock.validUntil <= sent + 1_000,
      `valid ${Math.round(lock.validUntil - sent)} ms after the extend's send`,
    );
    await assertValidity(env, lock, "after the renewal's answer");
    extension.answer();
    assert.equal(await within(extended, 3_000, "extend()"), true);
    await assertValidity(env, lock, "after the extend's answer");
  } finally {
    await drain(client, lock);
  }
});

Deno.test("a renewal sent after a shorter extend() but run before it leaves validUntil at the shorter lease", async () => {
  await using env = await setup();
  // The extend is held back on its way to Redis until a renewal has run
  // and answered (on another connection of a pool).
  const client = standIn(env.redis, (ttl) => ({
    send: ttl === 2_000,
    answer: false,
  }));
  const lock = await Lock.acquire(client, "overtaken-shorter", {
    ttl: 10_000,
    renewInterval: 300,
  });
  try {
    const extended = lock.extend(2_000);
    const extension = await firstCall(client.calls, 2_000, "the extend");
    const renewal = await firstCall(client.calls, 10_000, "a renewal");
    await within(renewal.done, 3_000, "the renewal's answer");
    await settleDown();
    await assertValidity(env, lock, "after the renewal's answer");
    extension.send();
    assert.equal(await within(extended, 3_000, "extend()"), true);
    await assertValidity(env, lock, "after the extend's answer");
  } finally {
    await drain(client, lock);
  }
});

Deno.test("a renewal run after a longer extend() leaves validUntil at the renewal's lease", async () => {
  await using env = await setup();
  // The first renewal is held back on its way to Redis until the extend
  // has run and answered.
  const client = standIn(env.redis, (ttl, calls) => ({
    send: ttl === 10_000 && !calls.some((call) => call.ttl === 10_000),
    answer: false,
  }));
  const lock = await Lock.acquire(client, "overtaken-longer", {
    ttl: 10_000,
    renewInterval: 300,
  });
  try {
    const renewal = await firstCall(client.calls, 10_000, "the first renewal");
    assert.equal(await within(lock.extend(30_000), 3_000, "extend()"), true);
    await assertValidity(env, lock, "after the extend's answer");
    renewal.send();
    await within(renewal.done, 3_000, "the renewal's answer");
    await settleDown();
    const pttl = Number(await env.side.send("PTTL", lock.key));
    assert.ok(pttl <= 10_000, `Redis ran the renewal last: PTTL ${pttl}`);
    await assertValidity(env, lock, "after the renewal's answer");
  } finally {
    await drain(client, lock);
  }
});

function setup(): Promise<Env> {
  return redisEnv();
}

Deno.test("an extend() given up on before it reached Redis, then run there after a renewal, leaves validUntil at the shorter lease", async () => {
  await using env = await setup();
  // The extend is held back on its way to Redis (a busy connection of a
  // pool, a retried HTTP request) past commandTimeout: extend() rejects,
  // a renewal runs and answers, and then Redis runs the extend.
  const client = standIn(env.redis, (ttl) => ({
    send: ttl === 2_000,
    answer: false,
  }));
  const lock = await Lock.acquire(client, "given-up-shorter", {
    ttl: 10_000,
    renewInterval: 300,
    commandTimeout: 200,
  });
  try {
    await assert.rejects(
      within(lock.extend(2_000), 3_000, "extend()"),
      (error: Error) => error.name === "TimeoutError",
    );
    const extension = await firstCall(client.calls, 2_000, "the extend");
    const after = client.calls.length;
    await until(
      () => Promise.resolve(client.calls.length > after),
      3_000,
      "a renewal after the extend() gave up",
    );
    const renewal = client.calls[after];
    assert.equal(renewal.ttl, 10_000);
    await within(renewal.done, 3_000, "the renewal's answer");
    await settleDown();
    await assertValidity(env, lock, "after the renewal's answer");
    // Redis runs the extend now: the key ends 2 s from now.
    extension.send();
    await within(extension.ran, 3_000, "the extend in Redis");
    await assertValidity(env, lock, "once Redis ran the extend");
  } finally {
    await drain(client, lock);
  }
});
