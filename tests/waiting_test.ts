import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import {
  diagnostics,
  fromIoredis,
  Lock,
  LockTimeoutError,
  type ScriptClient,
  SubscriberErrorEvent,
} from "../mod.ts";
import { startRedis } from "./_redis.ts";
import { evalClient, lineUp, scriptKind, within } from "./_util.ts";

// How waiting ends: the local queue, the backoff, the timeout and what it
// reports. Each test fails on a specific broken behaviour, deterministically.

async function setup() {
  const server = await startRedis();
  const conn = await server.connect();
  const side = await server.connect();
  return {
    server,
    side,
    client: evalClient(conn),
    async [Symbol.asyncDispose]() {
      await conn[Symbol.asyncDispose]();
      await side[Symbol.asyncDispose]();
      await server.stop();
    },
  };
}

Deno.test("a waiter queued behind a holder of its own process gets the lock when that holder's lease runs out, not a maxRetryDelay later", async () => {
  await using env = await setup();
  // Never released: its lease simply runs out after ~200 ms.
  const first = await Lock.acquire(env.client, "runs-out", {
    ttl: 200,
    autoExtend: false,
  });
  const started = performance.now();
  await using second = await within(
    Lock.acquire(env.client, "runs-out", {
      timeout: 10_000,
      maxRetryDelay: 5_000,
    }),
    2_500,
    "the grant after the first lease ran out",
  );
  const waited = performance.now() - started;
  assert.ok(waited < 1_000, `waited ${Math.round(waited)} ms`);
  assert.equal(first.held, false);
  assert.equal(await env.side.send("GET", second.key), second.token);
});

Deno.test("a waiter queued behind a holder of its own process gets the lock soon after that holder loses it", async () => {
  await using env = await setup();
  const first = await Lock.acquire(env.client, "deleted", { ttl: 600 });
  const waiting = Lock.acquire(env.client, "deleted", {
    timeout: 10_000,
    maxRetryDelay: 5_000,
  });
  // Deleted behind deadbolt's back: the holder's next renewal (≤ 200 ms)
  // finds it gone, and its loss must wake the queue.
  await env.side.send("DEL", first.key);
  await using second = await within(
    waiting,
    2_500,
    "the grant after the holder lost its key",
  );
  assert.equal(first.signal.aborted, true);
  assert.equal(await env.side.send("GET", second.key), second.token);
});

Deno.test("every waiter that times out reports the holder's remaining lease, queued ones too", async () => {
  await using env = await setup();
  // The holder is of this process too: queued waiters then never ask Redis.
  const holder = await Lock.acquire(env.client, "long", { ttl: 600_000 });
  const errors = await within(
    Promise.all(
      [0, 1, 2].map(() =>
        Lock.acquire(env.client, "long", { timeout: 300 }).then(
          () => assert.fail("granted while held"),
          (error) => error,
        )
      ),
    ),
    5_000,
    "three timeouts",
  );
  for (const error of errors) {
    assert.ok(error instanceof LockTimeoutError, String(error));
    assert.ok(
      error.remainingTtl > 590_000 && error.remainingTtl <= 600_000,
      `remainingTtl ${error.remainingTtl}`,
    );
  }
  assert.equal(await holder.release(), true);
});

Deno.test("a waiter whose backoff would outlast its timeout gives up at the timeout", async () => {
  await using env = await setup();
  await using other = await env.server.connect();
  const holder = await Lock.acquire(evalClient(other), "slow-backoff", {
    ttl: 60_000,
  });
  // Every backoff draw is the largest possible: 10 s, far past the timeout.
  const random = Math.random;
  Math.random = () => 0.999;
  try {
    const started = performance.now();
    const error = await within(
      Lock.acquire(env.client, "slow-backoff", {
        timeout: 300,
        retryDelay: 10_000,
        maxRetryDelay: 10_000,
      }).then(() => assert.fail("granted while held"), (error) => error),
      3_000,
      "the timeout",
    );
    const took = performance.now() - started;
    assert.ok(error instanceof LockTimeoutError, String(error));
    assert.ok(took >= 300 && took < 1_000, `took ${Math.round(took)} ms`);
  } finally {
    Math.random = random;
  }
  assert.equal(await holder.release(), true);
});

Deno.test("a lock handed over before Redis answers is valid no longer than the releasing holder's own lease", async () => {
  await using server = await startRedis();
  const redis = new Redis(server.port, "127.0.0.1");
  try {
    // Handover replies are held back, so the waiter runs on the holder's
    // lease alone until Redis confirms.
    const inner = fromIoredis(redis);
    const gate = Promise.withResolvers<void>();
    const hold = (kind: string, reply: Promise<unknown>) => {
      if (kind !== "handover") return reply;
      reply.catch(() => {});
      return gate.promise.then(() => reply);
    };
    const client: ScriptClient = {
      deadbolt: inner.deadbolt,
      eval: (s, k, a) => hold(scriptKind(s), inner.eval(s, k, a)),
      evalsha: (s, k, a) => hold(scriptKind(s), inner.evalsha!(s, k, a)),
    };
    const holder = await Lock.acquire(client, "capped", { ttl: 5_000 });
    const waiting = Lock.acquire(client, "capped", {
      ttl: 60_000,
      timeout: 10_000,
      retryDelay: 10_000,
      maxRetryDelay: 10_000,
    });
    // Behind a holder of its own process, the waiter asks Redis nothing: it
    // is asleep at the head, offering to be handed the lock, as soon as its
    // acquire() has run to its first await (one macrotask is plenty).
    await new Promise((resolve) => setTimeout(resolve, 0));
    const holderValidUntil = holder.validUntil;
    const released = holder.release();
    const next = await within(waiting, 2_000, "the eager handover");
    try {
      assert.ok(
        next.validUntil <= holderValidUntil + 1, // float rounding
        `the new holder is told it holds ${
          Math.round(next.validUntil - holderValidUntil)
        } ms past the key's own lease`,
      );
      gate.resolve();
      assert.equal(await within(released, 2_000, "the release"), true);
      // Confirmed by Redis: now its own 60 s lease counts.
      assert.ok(next.validUntil > holderValidUntil + 50_000);
    } finally {
      gate.resolve();
      await next.release();
    }
  } finally {
    await redis.quit();
  }
});

Deno.test("release() and extend() reject after commandTimeout when Redis stalls, and release() can be tried again", async () => {
  await using env = await setup();
  const lock = await Lock.acquire(env.client, "stall", {
    commandTimeout: 200,
    autoExtend: false,
  });
  env.server.signal("SIGSTOP");
  try {
    for (const call of [() => lock.extend(), () => lock.release()]) {
      const started = performance.now();
      const error = await within(
        call().then(() => assert.fail("answered"), (error) => error),
        2_000,
        "the commandTimeout",
      );
      const took = performance.now() - started;
      assert.equal((error as Error).name, "TimeoutError", String(error));
      assert.ok(took >= 200 && took < 1_000, `took ${Math.round(took)} ms`);
    }
  } finally {
    env.server.signal("SIGCONT");
  }
  // The timed-out release still ran once the server resumed (its call was
  // queued on the connection before the retry's), so the retry finds the
  // key gone; it answers, and nothing is left behind.
  assert.equal(await within(lock.release(), 2_000, "the retry"), false);
  assert.equal(await env.side.send("EXISTS", lock.key), 0);
});

/**
 * Collects the errors reported on `diagnostics` until disposed; `first()`
 * waits (5 s at most) for one and returns it.
 */
function subscriberErrors(): Disposable & { first(): Promise<unknown> } {
  const errors: unknown[] = [];
  const onError = (event: unknown) => {
    if (event instanceof SubscriberErrorEvent) errors.push(event.error);
  };
  diagnostics.addEventListener("subscribererror", onError);
  return {
    first: () =>
      within(
        (async () => {
          while (errors.length === 0) {
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
          return errors[0];
        })(),
        5_000,
        "a report on diagnostics",
      ),
    [Symbol.dispose]: () =>
      diagnostics.removeEventListener("subscribererror", onError),
  };
}

Deno.test("a waiter whose wake-up subscription is refused falls back to backoff and says so on diagnostics (ioredis)", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  // May run deadbolt's scripts and publish, but not subscribe.
  await side.send(
    "ACL",
    ..."SETUSER nosub on >secret ~deadbolt:* &deadbolt:* -@all +eval +evalsha +info +ping +get +set +pexpire +pttl +del +exists +spublish +publish"
      .split(" "),
  );
  const holder = new Redis(server.port, "127.0.0.1");
  const waiter = new Redis({
    port: server.port,
    host: "127.0.0.1",
    username: "nosub",
    password: "secret",
  });
  using errors = subscriberErrors();
  try {
    const held = await Lock.acquire(holder, "refused");
    const waiting = Lock.acquire(waiter, "refused", {
      timeout: 10_000,
      maxRetryDelay: 50,
    });
    assert.match(String(await errors.first()), /NOPERM|no permissions/i);
    assert.equal(await held.release(), true);
    const next = await within(waiting, 5_000, "the grant by backoff");
    assert.equal(await next.release(), true);
  } finally {
    await holder.quit();
    await waiter.quit();
  }
});

Deno.test("a subscribe hook of one's own that throws is reported on diagnostics, and the wait goes on by backoff", async () => {
  await using server = await startRedis();
  const holder = new Redis(server.port, "127.0.0.1");
  const redis = new Redis(server.port, "127.0.0.1");
  const failure = new Error("no subscriber today");
  const client: ScriptClient = {
    eval: (script, keys, args) =>
      redis.eval(script, keys.length, ...keys, ...args),
    deadbolt: {
      subscribe: () => {
        throw failure;
      },
    },
  };
  using errors = subscriberErrors();
  try {
    const held = await Lock.acquire(holder, "own-hook");
    // Before: the hook's throw rejected the acquire().
    const waiting = Lock.acquire(client, "own-hook", {
      timeout: 10_000,
      maxRetryDelay: 50,
    });
    assert.equal(await errors.first(), failure);
    assert.equal(await held.release(), true);
    const next = await within(waiting, 5_000, "the grant by backoff");
    assert.equal(await next.release(), true);
  } finally {
    await holder.quit();
    await redis.quit();
  }
});

Deno.test("with ioredis' keyPrefix, a release in another process still wakes a waiter, over sharded and plain pub/sub", async (t) => {
  const noSharded = [
    "--rename-command",
    "SSUBSCRIBE",
    "",
    "--rename-command",
    "SPUBLISH",
    "",
  ];
  for (const [flavour, args] of [["sharded", []], ["plain", noSharded]]) {
    await t.step(flavour as string, async () => {
      await using server = await startRedis({ args: args as string[] });
      const options = {
        port: server.port,
        host: "127.0.0.1",
        keyPrefix: "app:",
      };
      const holder = new Redis(options);
      const waiter = new Redis(options);
      try {
        const held = await Lock.acquire(holder, "prefixed");
        // Backoff waits of 10 s: only a wake-up makes the handoff prompt.
        const waiting = Lock.acquire(waiter, "prefixed", {
          timeout: 20_000,
          retryDelay: 10_000,
          maxRetryDelay: 10_000,
        });
        const side = new Redis({ port: server.port, host: "127.0.0.1" });
        try {
          await within(
            (async () => {
              const count = async () => {
                const [, plain] = await side.call(
                  "PUBSUB",
                  "NUMSUB",
                  "app:deadbolt:{prefixed}:released",
                ) as [string, number];
                const sharded = flavour === "sharded"
                  ? (await side.call(
                    "PUBSUB",
                    "SHARDNUMSUB",
                    "app:deadbolt:{prefixed}:released",
                  ) as [string, number])[1]
                  : 0;
                return Number(plain) + Number(sharded);
              };
              while (await count() === 0) {
                await new Promise((resolve) => setTimeout(resolve, 10));
              }
            })(),
            5_000,
            "the waiter's subscription to the prefixed channel",
          );
        } finally {
          side.disconnect();
        }
        assert.equal(await held.release(), true);
        const next = await within(waiting, 2_000, "the woken waiter's grant");
        assert.equal(await next.release(), true);
      } finally {
        await holder.quit();
        await waiter.quit();
      }
    });
  }
});

Deno.test("the caller's signal keeps no listener of deadbolt's once an acquisition has ended, however it ended", async () => {
  await using env = await setup();
  const controller = new AbortController();
  const { signal } = controller;
  // Counts the listeners added to the caller's signal and not removed.
  let listening = 0;
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = (...args: Parameters<typeof add>) => {
    listening++;
    add(...args);
  };
  signal.removeEventListener = (...args: Parameters<typeof remove>) => {
    listening--;
    remove(...args);
  };
  // Granted at once, 50 times over: one long-lived signal must not collect
  // a listener per acquisition.
  for (let round = 0; round < 50; round++) {
    const lock = await within(
      Lock.acquire(env.client, "one-signal", { signal }),
      2_000,
      `acquisition #${round}`,
    );
    await lock.release();
  }
  assert.equal(listening, 0, "after grants");
  // Timed out behind another holder, and called off by release().
  await using holder = await Lock.acquire(env.client, "one-signal");
  await assert.rejects(
    within(
      Lock.acquire(env.client, "one-signal", { signal, timeout: 50 }),
      2_000,
      "the timeout",
    ),
    LockTimeoutError,
  );
  const waiter = new Lock(env.client, "one-signal");
  const waiting = waiter.acquire({ signal, timeout: 10_000 });
  await waiter.release();
  await assert.rejects(within(waiting, 2_000, "the call-off"), {
    name: "AbortError",
  });
  assert.equal(listening, 0, "after a timeout and a call-off");
  assert.equal(holder.held, true);
});

Deno.test("acquire() rejects with the caller's reason when the caller's abort listener calls release() first", async () => {
  await using env = await setup();
  await using holder = await Lock.acquire(env.client, "abort-release");
  const controller = new AbortController();
  const waiter = new Lock(env.client, "abort-release");
  // Registered before acquire() listens: it runs first.
  controller.signal.addEventListener("abort", () => void waiter.release());
  const waiting = waiter.acquire({
    signal: controller.signal,
    timeout: 10_000,
  });
  const reason = new Error("the caller's reason");
  controller.abort(reason);
  await assert.rejects(within(waiting, 2_000, "the rejection"), (error) => {
    assert.equal(error, reason);
    return true;
  });
  assert.equal(holder.held, true);
});

Deno.test("a waiter aborted in the same tick as it is woken sends no attempt, and takes nothing, after its acquire() rejected", async () => {
  await using env = await setup();
  const conn = await env.server.connect();
  try {
    const inner = evalClient(conn);
    // Every acquire script sent once the waiter was aborted, and its reply.
    let aborted = false;
    const late: Promise<unknown>[] = [];
    const client: ScriptClient = {
      eval(script, keys, args) {
        const reply = inner.eval(script, keys, args);
        if (aborted && scriptKind(script) === "acquire") {
          late.push(reply.then(String, () => "failed"));
        }
        return reply;
      },
    };
    const holder = await within(
      Lock.acquire(client, "woken", { renewInterval: 20 }),
      5_000,
      "the grant",
    );
    // The job's controller aborts when the holder's lock is lost; a waiter
    // of the same job, queued behind it, is woken by that loss.
    const controller = new AbortController();
    holder.signal.addEventListener("abort", () => {
      aborted = true;
      controller.abort(new Error("the job is over"));
    });
    const waiter = Lock.acquire(client, "woken", {
      timeout: 10_000,
      signal: controller.signal,
    });
    await lineUp(client, "woken", 1);
    await env.side.send("DEL", Lock.keys("woken").lock);
    await within(
      assert.rejects(waiter, { message: "the job is over" }),
      5_000,
      "the waiter's rejection",
    );
    const owner = await env.side.send("GET", Lock.keys("woken").lock);
    const replies = await within(Promise.all(late), 5_000, "the replies");
    // Before: one attempt went out after the abort and took the free lock
    // for a round trip, until its reply made deadbolt delete it.
    assert.deepEqual(replies, [], "attempts sent after the abort");
    assert.equal(owner, null, "the key's owner after the rejection");
  } finally {
    await conn[Symbol.asyncDispose]();
  }
});
