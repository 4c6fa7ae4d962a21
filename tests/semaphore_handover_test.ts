import assert from "node:assert/strict";
import { type ScriptClient, Semaphore } from "../mod.ts";
import { redisEnv } from "./_env.ts";
import { Redis } from "npm:ioredis@6";
import { lineUp, quitIoredis, until, within } from "./_util.ts";
import { toScriptClient } from "../src/client.ts";
import { existingCrowd } from "../src/_crowd.ts";

// A released permit handed to a sleeping waiter of the same process in one
// script (TRANSFER_PERMIT), as a lock's handover does.

/** What one script call was, by its arguments (each script has its own count). */
const KINDS: Record<number, string> = {
  1: "release or leave",
  2: "extend",
  4: "transfer",
  7: "acquire",
};

/** A client that forwards to `inner`, recording each answered script call's kind. */
function recording(inner: ScriptClient): ScriptClient & {
  calls: string[];
  hold?: Promise<void>;
} {
  const client: ScriptClient & { calls: string[]; hold?: Promise<void> } = {
    calls: [],
    eval: (script, keys, args) =>
      watch(args, () => inner.eval(script, keys, args)),
    evalsha: (sha, keys, args) =>
      watch(args, () => inner.evalsha!(sha, keys, args)),
  };
  const watch = async (args: string[], call: () => Promise<unknown>) => {
    const kind = KINDS[args.length] ?? `${args.length} arguments`;
    // Recorded once answered: a first EVALSHA refused with NOSCRIPT (the
    // script is then sent with EVAL) is not a call of its own.
    const reply = await call();
    client.calls.push(kind);
    // A transfer's answer may be held back, to act while it is on its way.
    if (kind === "transfer" && client.hold) await client.hold;
    return reply;
  };
  return client;
}

// The permits key of the semaphore "pool" (see Semaphore.key).
const key = "deadbolt:semaphore:{pool}";

/**
 * Once a waiter sleeps in the process's line, releases `holder`, recording
 * the script calls from the release on; resolves with what it returned.
 */
async function releaseTo(
  client: ReturnType<typeof recording>,
  holder: Semaphore,
): Promise<boolean> {
  await lineUp(client, "pool", 1, 5_000, key);
  client.calls.length = 0;
  return await holder.release();
}

/**
 * Releases `holder` with the transfer's answer held back, aborts the
 * waiter's `controller` once the transfer has run in Redis, and checks that
 * `waiter` then rejects with an AbortError; resolves with what the release
 * returned.
 */
async function releaseWhileGivingUp(
  client: ReturnType<typeof recording>,
  holder: Semaphore,
  waiter: Promise<Semaphore>,
  controller: AbortController,
): Promise<boolean> {
  const { promise: answered, resolve: letAnswer } = Promise.withResolvers<
    void
  >();
  client.hold = answered;
  client.calls.length = 0;
  const released = holder.release();
  await until(
    () => Promise.resolve(client.calls.includes("transfer")),
    5_000,
    "the transfer",
  );
  controller.abort();
  await assert.rejects(within(waiter, 5_000, "the waiter's end"), {
    name: "AbortError",
  });
  letAnswer();
  return await released;
}

/** What `Semaphore.acquire` takes. */
type Options = Parameters<typeof Semaphore.acquire>[2];

/**
 * Checks that `permit` holds the only permit in Redis, releases it, and
 * checks that nothing is left.
 */
async function onlyPermitThenNothing(
  side: { send(...args: string[]): Promise<unknown> },
  permit: Semaphore,
): Promise<void> {
  assert.deepEqual(await side.send("ZRANGE", key, "0", "-1"), [permit.token]);
  await permit.release();
  assert.equal(await side.send("EXISTS", key), 0);
}

/**
 * Lines up two waiters (limit 1) behind a held permit: a head that wants a
 * fence, so it is never handed a permit, and a waiter behind it, whose offer
 * a release therefore takes. Options are added to each one's.
 */
async function fencedHeadAndBehind(
  client: ReturnType<typeof recording>,
  options: { head?: Partial<Options>; behind?: Partial<Options> } = {},
): Promise<{ head: Promise<Semaphore>; behind: Promise<Semaphore> }> {
  const head = Semaphore.acquire(client, "pool", {
    limit: 1,
    fencing: true,
    timeout: 5_000,
    ...options.head,
  });
  head.catch(() => {});
  const behind = Semaphore.acquire(client, "pool", {
    limit: 1,
    timeout: 5_000,
    ...options.behind,
  });
  behind.catch(() => {});
  await lineUp(client, "pool", 2, 5_000, key);
  return { head, behind };
}

Deno.test("a released permit is handed to a sleeping waiter of the same process in one script, with no attempt of its own", async () => {
  await using env = await redisEnv();
  const client = recording(env.redis);
  const holder = await Semaphore.acquire(client, "pool", { limit: 1 });
  const waiter = Semaphore.acquire(client, "pool", {
    limit: 1,
    timeout: 5_000,
  });
  await releaseTo(client, holder);
  const handed = await within(waiter, 5_000, "the waiter's permit");
  assert.deepEqual(client.calls, ["transfer"]);
  assert.equal(handed.held, true);
  await onlyPermitThenNothing(env.side, handed);
});

Deno.test("a waiter is handed a permit only within its own limit, and one that wants a fence is never handed one", async () => {
  await using env = await redisEnv();
  const client = recording(env.redis);
  const first = await Semaphore.acquire(client, "pool", { limit: 2 });
  const second = await Semaphore.acquire(client, "pool", { limit: 2 });
  // Limit 1: it may have a permit only once none is held.
  const strict = Semaphore.acquire(client, "pool", {
    limit: 1,
    timeout: 5_000,
  });
  await releaseTo(client, first);
  // The transfer was refused (one permit still held): a plain release.
  assert.deepEqual(client.calls.slice(0, 2), ["transfer", "release or leave"]);
  await releaseTo(client, second);
  const handed = await within(strict, 5_000, "the strict waiter's permit");
  assert.deepEqual(client.calls, ["transfer"]);
  await handed.release();

  const holder = await Semaphore.acquire(client, "pool", { limit: 1 });
  const fenced = Semaphore.acquire(client, "pool", {
    limit: 1,
    fencing: true,
    timeout: 5_000,
  });
  fenced.catch(() => {});
  await releaseTo(client, holder);
  const withFence = await within(fenced, 5_000, "the fenced waiter's permit");
  assert.ok(withFence.fence! > 0, `fence ${withFence.fence}`);
  assert.equal(client.calls[0], "release or leave");
  assert.ok(client.calls.includes("acquire"), client.calls.join(", "));
  await withFence.release();
});

Deno.test("a permit handed to a waiter that gave up meanwhile is freed, not left held", async () => {
  await using env = await redisEnv();
  const client = recording(env.redis);
  const holder = await Semaphore.acquire(client, "pool", { limit: 1 });
  const controller = new AbortController();
  const waiter = Semaphore.acquire(client, "pool", {
    limit: 1,
    timeout: 5_000,
    signal: controller.signal,
  });
  waiter.catch(() => {});
  await lineUp(client, "pool", 1, 5_000, key);
  assert.equal(
    await releaseWhileGivingUp(client, holder, waiter, controller),
    true,
  );
  // The permit handed to the waiter that left is freed by its token.
  const deadline = performance.now() + 5_000;
  while (await env.side.send("EXISTS", key) === 1) {
    assert.ok(performance.now() < deadline, "the handed permit was not freed");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
});

Deno.test("a process's permit handovers stop after 16 in a row while another process waits, so that it gets its turn", async () => {
  await using env = await redisEnv();
  const other = new Redis(env.server.port, "127.0.0.1");
  try {
    const options = { limit: 1, timeout: 10_000 };
    // The local head sleeps between attempts until a release wakes it or
    // hands it the permit: every local release can be a handover.
    const patient = { ...options, retryDelay: 1_000, maxRetryDelay: 1_000 };
    const first = await Semaphore.acquire(env.redis, "pool", options);
    let local = 0;
    let stop = false;
    // This process keeps 4 workers queued on the permit all the time.
    const workers = Array.from({ length: 4 }, async () => {
      while (!stop) {
        const permit = await Semaphore.acquire(env.redis, "pool", patient);
        local++;
        // Held a moment, so that the next worker sleeps with its offer when
        // this one releases: every release could be a handover.
        await new Promise((resolve) => setTimeout(resolve, 2));
        await permit.release();
      }
    });
    // Another client stands for another process.
    const remote = Semaphore.acquire(other, "pool", options);
    await lineUp(other, "pool", 1, 5_000, key);
    await first.release();
    const permit = await within(remote, 5_000, "the other process's permit");
    const seen = local;
    stop = true;
    await permit.release();
    await within(Promise.all(workers), 10_000, "the local workers' end");
    // Two turns of this process at most: its own place in line was ahead
    // of the other's (its first worker was refused first), so the first
    // release through Redis after 16 handovers is promised back to it, and
    // the second to the other process. Without turns it never gets one:
    // every release finds a local worker to hand the permit to (checked: it
    // then times out).
    assert.ok(
      seen <= 40,
      `the other process waited through ${seen} local turns`,
    );
  } finally {
    await quitIoredis(other);
  }
});

Deno.test("with permits passing from holder to holder in one process, each acquisition is one script: waiters behind the head are handed permits, and a new head waits to be handed one", async () => {
  await using env = await redisEnv();
  const client = recording(env.redis);
  const limit = 2;
  const target = 400;
  let acquired = 0;
  let holding = 0;
  let most = 0;
  const perWorker = Array.from({ length: 8 }, () => 0);
  // Zero-work sections: a waiter that asked Redis would find every permit
  // held, as they pass on within the process.
  const workers = perWorker.map(async (_, worker) => {
    while (acquired < target) {
      const permit = await Semaphore.acquire(client, "pool", {
        limit,
        timeout: 5_000,
      });
      acquired++;
      perWorker[worker]++;
      most = Math.max(most, ++holding);
      assert.equal(permit.held, true);
      holding--;
      await permit.release();
    }
  });
  await within(Promise.all(workers), 20_000, "the workers' acquisitions");
  assert.ok(most <= limit, `${most} permits held at once`);
  assert.equal(await env.side.send("EXISTS", key), 0);
  const count = (kind: string) => client.calls.filter((k) => k === kind).length;
  // The code before sent 2.7 scripts per acquisition here: a release, then
  // a waiter's attempts, refused while permits passed on.
  const scripts = client.calls.length / acquired;
  assert.ok(
    scripts <= 1.2,
    `${scripts.toFixed(2)} scripts per acquisition: ${
      count("acquire")
    } attempts, ${count("transfer")} transfers, ${
      count("release or leave")
    } releases for ${acquired}`,
  );
  // Every worker had its turns.
  assert.ok(
    Math.min(...perWorker) >= Math.max(...perWorker) / 2,
    `acquisitions per worker: ${perWorker.join(", ")}`,
  );
});

Deno.test("a permit handed to a waiter behind the head that gave up meanwhile is freed, and the head is woken to get it", async () => {
  await using env = await redisEnv();
  const client = recording(env.redis);
  const holder = await Semaphore.acquire(client, "pool", { limit: 1 });
  const controller = new AbortController();
  // The head sleeps up to 10 s between attempts, unless woken.
  const { head, behind } = await fencedHeadAndBehind(client, {
    head: { timeout: 20_000, retryDelay: 10_000, maxRetryDelay: 10_000 },
    behind: { signal: controller.signal },
  });
  assert.equal(
    await releaseWhileGivingUp(client, holder, behind, controller),
    true,
  );
  // Freed by its token, and then the head woken: it gets it.
  const permit = await within(head, 2_000, "the head's permit");
  assert.ok(permit.fence! > 0);
  await onlyPermitThenNothing(env.side, permit);
});

Deno.test("a waiter behind the head whose transfer went unanswered asks with the token it was handed the permit under, and gets it", async () => {
  await using env = await redisEnv();
  const client = recording(env.redis);
  const holder = await Semaphore.acquire(client, "pool", {
    limit: 1,
    commandTimeout: 300,
  });
  const controller = new AbortController();
  const { behind } = await fencedHeadAndBehind(client, {
    head: { signal: controller.signal },
  });
  // The transfer runs in Redis; its answer never comes in time.
  const { promise: answered, resolve: letAnswer } = Promise.withResolvers<
    void
  >();
  client.hold = answered;
  await assert.rejects(within(holder.release(), 5_000, "the release"), {
    name: "TimeoutError",
  });
  // Once the head gives up, the waiter asks, with the permit's token.
  controller.abort();
  const permit = await within(behind, 5_000, "the waiter's permit");
  letAnswer();
  await onlyPermitThenNothing(env.side, permit);
});

Deno.test("a waiter behind the head handed a permit too late to leave any validity frees it, lines up again and gets one", async () => {
  await using env = await redisEnv();
  const client = recording(env.redis);
  const holder = await Semaphore.acquire(client, "pool", { limit: 1 });
  const controller = new AbortController();
  // A 300 ms lease leaves no validity once the transfer's answer is held
  // back 500 ms.
  const { head, behind } = await fencedHeadAndBehind(client, {
    head: { signal: controller.signal },
    behind: { ttl: 300, autoExtend: false },
  });
  client.hold = new Promise((resolve) => setTimeout(resolve, 500));
  client.calls.length = 0;
  assert.equal(await within(holder.release(), 5_000, "the release"), true);
  // The head may have got the permit as its 300 ms lease ran out.
  controller.abort();
  await (await head.catch(() => undefined))?.release();
  const permit = await within(behind, 5_000, "the waiter's permit");
  assert.ok(permit.held);
  assert.ok(client.calls.includes("transfer"), client.calls.join(", "));
  await onlyPermitThenNothing(env.side, permit);
});

Deno.test("a waiter behind the head whose permit could not be handed over (its own limit) stays in line and gets one later", async () => {
  await using env = await redisEnv();
  const client = recording(env.redis);
  const first = await Semaphore.acquire(client, "pool", { limit: 2 });
  const second = await Semaphore.acquire(client, "pool", { limit: 2 });
  // Limit 2 lets two of the process's waiters ask at once: two that want a
  // fence (never handed a permit) fill the head, asleep until woken.
  const fenced = {
    limit: 2,
    fencing: true,
    timeout: 5_000,
    retryDelay: 1_000,
    maxRetryDelay: 1_000,
  };
  const heads = [
    Semaphore.acquire(client, "pool", fenced),
    Semaphore.acquire(client, "pool", fenced),
  ];
  for (const head of heads) head.catch(() => {});
  // Behind them, limit 1: it may have a permit only once none is held.
  const strict = Semaphore.acquire(client, "pool", {
    limit: 1,
    timeout: 5_000,
  });
  strict.catch(() => {});
  await lineUp(client, "pool", 3, 5_000, key);
  client.calls.length = 0;
  await first.release();
  // Offered to the waiter behind the head and refused by its limit: a
  // plain release follows, which a head takes.
  const released = client.calls.filter((kind) => kind !== "acquire");
  assert.deepEqual(released.slice(0, 2), ["transfer", "release or leave"]);
  await second.release();
  for (const permit of await within(Promise.all(heads), 5_000, "the heads")) {
    await permit.release();
  }
  const handed = await within(strict, 5_000, "the strict waiter's permit");
  await onlyPermitThenNothing(env.side, handed);
});

/** Script calls the server has run so far (`INFO commandstats`). */
async function scriptCalls(
  env: { side: { send(...args: string[]): Promise<unknown> } },
): Promise<number> {
  const info = String(await env.side.send("INFO", "commandstats"));
  let calls = 0;
  for (
    const match of info.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)
  ) {
    calls += Number(match[1]);
  }
  return calls;
}

Deno.test("a waiter refused while its process holds a permit waits to be handed one, instead of asking Redis again and again", async () => {
  await using env = await redisEnv();
  const redis = new Redis(env.server.port, "127.0.0.1");
  try {
    const holder = await Semaphore.acquire(redis, "pool", { limit: 1 });
    const waiter = Semaphore.acquire(redis, "pool", {
      limit: 1,
      timeout: 10_000,
    });
    await lineUp(redis, "pool", 1, 5_000, key);
    // Once it hears releases elsewhere, it no longer asks (its sleep then
    // may still end once).
    const crowd = existingCrowd(toScriptClient(redis), key)!;
    await until(
      () => Promise.resolve(crowd.listening),
      5_000,
      "the wake-up subscription",
    );
    const before = await scriptCalls(env);
    await new Promise((resolve) => setTimeout(resolve, 500));
    // A backoff from 5 ms asked 3 times in 300 ms (the code before).
    const asked = await scriptCalls(env) - before;
    assert.ok(asked <= 1, `the waiter asked ${asked} times in 500 ms`);
    await holder.release();
    const permit = await within(waiter, 5_000, "the handed permit");
    await permit.release();
  } finally {
    await quitIoredis(redis);
  }
});

Deno.test("a waiter that waits for its process's permit still gets one that another process releases, woken by pub/sub", async () => {
  await using env = await redisEnv();
  const redis = new Redis(env.server.port, "127.0.0.1");
  const other = new Redis(env.server.port, "127.0.0.1");
  try {
    const options = { limit: 2, maxRetryDelay: 5_000 };
    const local = await Semaphore.acquire(redis, "pool", options);
    const remote = await Semaphore.acquire(other, "pool", options);
    const waiter = Semaphore.acquire(redis, "pool", {
      ...options,
      timeout: 10_000,
    });
    await lineUp(redis, "pool", 1, 5_000, key);
    const released = performance.now();
    await remote.release();
    const permit = await within(waiter, 5_000, "the remote permit");
    // Well before its next attempt (5 s): the release's message woke it.
    const waited = performance.now() - released;
    assert.ok(waited < 1_000, `woken ${waited.toFixed(0)} ms after`);
    await permit.release();
    await local.release();
  } finally {
    await quitIoredis(redis);
    await quitIoredis(other);
  }
});

Deno.test("a process's record of a semaphore's waiters and holds goes once none is left, after releases and after losses", async () => {
  await using env = await redisEnv();
  const redis = new Redis(env.server.port, "127.0.0.1");
  try {
    const client = toScriptClient(redis);
    const tried = await Semaphore.tryAcquire(redis, "pool", { limit: 2 });
    const waited = await Semaphore.acquire(redis, "pool", { limit: 2 });
    assert.ok(existingCrowd(client, key));
    await tried!.release();
    assert.ok(existingCrowd(client, key), "one hold is left");
    await waited.release();
    assert.equal(existingCrowd(client, key), undefined);
    // Lost: its permit taken away in Redis, found at the next renewal.
    const lost = await Semaphore.acquire(redis, "pool", {
      limit: 2,
      ttl: 500,
    });
    await env.side.send("DEL", key);
    await within(
      new Promise((resolve) =>
        lost.signal.addEventListener("abort", resolve, { once: true })
      ),
      5_000,
      "the loss",
    );
    assert.equal(existingCrowd(client, key), undefined);
    assert.equal(await lost.release(), false);
  } finally {
    await quitIoredis(redis);
  }
});
