// A user's own test file, as a user writes it: a new ioredis client with
// default options waits for many locks at once, its waiters arriving one
// after another as requests do. Not run by the suite directly (the name is
// no `*_test.ts`): user_files_test.ts runs it with `deno test --no-lock`
// against the server it started, whose port is in DEADBOLT_TEST_REDIS_PORT,
// and reads its output for ioredis' "Unhandled error event".
//
// ioredis 5: it sends a SUBSCRIBE made while its ready check is pending at
// once (ioredis 6 holds it back until the check is done).
import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@5.11.1";
import { Lock } from "../../mod.ts";

const url = `redis://127.0.0.1:${Deno.env.get("DEADBOLT_TEST_REDIS_PORT")}`;
const ROUNDS = 5;
const WAITERS = 20;

const holder = new Redis(url);

for (let round = 1; round <= ROUNDS; round++) {
  Deno.test({
    name:
      `every waiter of a new client is woken as soon as its lock is released (round ${round})`,
    // Timers left behind are ioredis_sanitizers.user.ts's business.
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const names = Array.from(
        { length: WAITERS },
        (_, i) => `many ${round}.${i}`,
      );
      const held = await Promise.all(
        names.map((name) => Lock.acquire(holder, name)),
      );
      // Used at once: ioredis connects in the background.
      const waiter = new Redis(url);
      try {
        const waits = [];
        for (const name of names) {
          // No attempt of theirs comes due within the test: only a wake-up
          // grants them the lock in time.
          waits.push(
            Lock.acquire(waiter, name, {
              timeout: 3_000,
              retryDelay: 10_000,
              maxRetryDelay: 10_000,
            }).then((lock) => ({ lock, at: performance.now() })),
          );
          await holder.ping(); // the next one comes a round trip later
        }
        await waitForSubscribers(names.map(released), 1_000);
        const releasedAt = performance.now();
        await Promise.all(held.map((lock) => lock.release()));
        const granted = await Promise.all(waits);
        await Promise.all(granted.map(({ lock }) => lock.release()));
        const late = granted.flatMap(({ at }, i) =>
          at - releasedAt > 1_000
            ? [`${names[i]} after ${Math.round(at - releasedAt)} ms`]
            : []
        );
        assert.deepEqual(late, [], "waiters woken more than 1 s after release");
      } finally {
        await waiter.quit();
      }
    },
  });
}

Deno.test("the holder's client closes", async () => {
  await holder.quit();
});

/** The channel a release publishes on (see the README's "Keys"). */
function released(name: string): string {
  return `deadbolt:{${name}}:released`;
}

/** Waits up to `ms` for every channel to have a (sharded) subscriber. */
async function waitForSubscribers(channels: string[], ms: number) {
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    const reply = await holder.call("PUBSUB", "SHARDNUMSUB", ...channels);
    const counts = (reply as unknown[]).filter((_, i) => i % 2 === 1);
    if (counts.every((count) => Number(count) > 0)) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
