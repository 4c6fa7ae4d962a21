import assert from "node:assert/strict";
import { Lock, LockTimeoutError, type ScriptClient } from "../mod.ts";
import { startRedis } from "./_redis.ts";
import type { RespClient } from "./_resp.ts";
import { evalClient, within } from "./_util.ts";

// What deadbolt calls on a client it is given: on one it does not
// recognise, `eval` and `evalsha` only; its own extras live under
// `deadbolt`, a name no client library uses.

/**
 * A client with `eval`/`evalsha` over `conn` and, besides, the methods
 * popular clients have with meanings of their own, each recording a call.
 */
function clientWithOwnMethods(conn: RespClient) {
  const called: string[] = [];
  const own = (name: string) => (..._args: unknown[]) => {
    called.push(name);
    return Promise.reject(new Error(`deadbolt called the client's ${name}`));
  };
  const client = {
    eval: (script: string, keys: string[], args: string[]) =>
      conn.send("EVAL", script, keys.length, ...keys, ...args),
    evalsha: (sha1: string, keys: string[], args: string[]) =>
      conn.send("EVALSHA", sha1, keys.length, ...keys, ...args),
    subscribe: own("subscribe"),
    psubscribe: own("psubscribe"),
    wait: own("wait"),
    duplicate: own("duplicate"),
    quit: own("quit"),
    close: own("close"),
    sendCommand: own("sendCommand"),
    ordered: true,
  };
  return { client, called };
}

Deno.test("deadbolt calls only eval and evalsha on a client it does not recognise, also while waiting", async () => {
  await using server = await startRedis();
  await using a = await server.connect();
  await using b = await server.connect();
  const first = clientWithOwnMethods(a);
  const second = clientWithOwnMethods(b);
  const holder = await Lock.acquire(first.client, "own-methods");
  // Contended, from the same client and from another one.
  for (const waiter of [first.client, second.client]) {
    await assert.rejects(
      within(
        Lock.acquire(waiter, "own-methods", { timeout: 100 }),
        5_000,
        "the timeout",
      ),
      LockTimeoutError,
    );
  }
  const waiting = Lock.acquire(second.client, "own-methods", {
    timeout: 5_000,
    maxRetryDelay: 20,
  });
  assert.equal(await holder.release(), true);
  const next = await within(waiting, 5_000, "the grant after release");
  assert.equal(await next.release(), true);
  assert.deepEqual([...first.called, ...second.called], []);
});

Deno.test("waitReplicas with a client deadbolt cannot send WAIT through is a TypeError, whatever methods it has", () => {
  const { client, called } = clientWithOwnMethods({} as RespClient);
  assert.throws(
    () => new Lock(client, "replicated", { waitReplicas: 1 }),
    (error) =>
      error instanceof TypeError && /waitReplicas/.test(error.message) &&
      /fromDbRedis/.test(error.message),
  );
  assert.deepEqual(called, []);
});

Deno.test("a client's own deadbolt.subscribe hook is used, and a wait ends only once its subscription is gone", async () => {
  await using server = await startRedis();
  await using conn = await server.connect();
  const events: string[] = [];
  const client: ScriptClient = {
    eval: (script, keys, args) =>
      conn.send("EVAL", script, keys.length, ...keys, ...args),
    deadbolt: {
      subscribe(channel) {
        events.push(`subscribe ${channel}`);
        return Promise.resolve(async () => {
          await new Promise((resolve) => setTimeout(resolve, 50));
          events.push(`stopped ${channel}`);
        });
      },
    },
  };
  await using other = await server.connect();
  const holder = await Lock.acquire(evalClient(other), "hooked");
  await assert.rejects(
    within(
      Lock.acquire(client, "hooked", { timeout: 100 }).finally(() =>
        events.push("rejected")
      ),
      5_000,
      "the timeout",
    ),
    LockTimeoutError,
  );
  const channel = "deadbolt:{hooked}:released";
  assert.deepEqual(events, [
    `subscribe ${channel}`,
    `stopped ${channel}`,
    "rejected",
  ]);
  assert.equal(await holder.release(), true);
});

Deno.test("a client of one's own whose evalsha throws instead of rejecting, or returns a thenable, fails or works as a rejecting one would", async () => {
  await using server = await startRedis();
  await using conn = await server.connect();
  let broken = false;
  const client: ScriptClient = {
    eval: (script, keys, args) =>
      conn.send("EVAL", script, keys.length, ...keys, ...args),
    // A thenable, not a Promise; or a synchronous throw once broken.
    evalsha: (sha1, keys, args) => {
      if (broken) throw new Error("socket closed");
      const reply = conn.send("EVALSHA", sha1, keys.length, ...keys, ...args);
      return { then: (ok, fail) => reply.then(ok, fail) } as Promise<unknown>;
    },
  };
  // The second time, the scripts' SHA-1s are known: EVALSHA first.
  for (let i = 0; i < 2; i++) {
    const lock = await within(
      Lock.acquire(client, "thrower"),
      5_000,
      "acquire",
    );
    assert.equal(await within(lock.release(), 5_000, "release"), true);
  }
  broken = true;
  await assert.rejects(
    within(Lock.acquire(client, "thrower"), 5_000, "the failing acquire"),
    { message: "socket closed" },
  );
  assert.equal(await conn.send("EXISTS", Lock.keys("thrower").lock), 0);
});
