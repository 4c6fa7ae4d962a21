// A user's own test file, as a user writes it, with Deno's sanitizers on:
// the waiter's Redis server dies mid-wait. Not run by the suite directly
// (the name is no `*_test.ts`): user_files_test.ts runs it with
// `deno test --no-lock` against a server of its own, port in
// DEADBOLT_TEST_REDIS_PORT and PID in DEADBOLT_TEST_REDIS_PID, which this
// file kills.
//
// ioredis 6.1.0, not deno.lock's 6.0.0: 6.0.0's `disconnect()` of a client
// that is reconnecting arms a 2 s timer that nothing clears, so this test's
// own clients would leak a timer whatever deadbolt does.
import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6.1.0";
import { Lock } from "../../mod.ts";

const url = `redis://127.0.0.1:${Deno.env.get("DEADBOLT_TEST_REDIS_PORT")}`;
const pid = Number(Deno.env.get("DEADBOLT_TEST_REDIS_PID"));

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves once someone subscribes to `channel` (sharded, as on Redis 7). */
async function subscribed(side: Redis, channel: string): Promise<void> {
  for (let tries = 0;; tries++) {
    const [, count] = await side.call("PUBSUB", "SHARDNUMSUB", channel) as [
      string,
      number,
    ];
    if (count > 0) return;
    assert.ok(tries < 500, `nobody subscribed to ${channel} within 5 s`);
    await sleep(10);
  }
}

Deno.test({
  name: "a wait ends in an error when the server dies, leaving no timer behind",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const holder = new Redis(url);
    const waiter = new Redis(url);
    const errors: Error[] = [];
    for (const client of [holder, waiter]) {
      client.on("error", (error: Error) => errors.push(error));
    }
    const name = "server dies";
    // Calls to the dead server give up after a second instead of five.
    const commandTimeout = 1_000;
    try {
      const held = await Lock.acquire(holder, name, { commandTimeout });
      const waiting = Lock.acquire(waiter, name, {
        timeout: 5_000,
        commandTimeout,
      });
      // The channel a release publishes on (see the README's "Keys").
      await subscribed(holder, `deadbolt:{${name}}:released`);
      Deno.kill(pid, "SIGKILL");
      await assert.rejects(waiting);
      await held.release().catch(() => {});
    } finally {
      holder.disconnect();
      waiter.disconnect();
    }
    assert.ok(errors.length > 0, "the clients saw the server go");
  },
});
