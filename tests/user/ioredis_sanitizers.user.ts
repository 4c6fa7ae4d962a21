// A user's own test file, as a user writes it: module-level ioredis clients,
// Deno's sanitizers on, a contended lock per test. Not run by the suite
// directly (the name is no `*_test.ts`): user_files_test.ts runs it with
// `deno test --no-lock` against the server it started, whose port is in
// DEADBOLT_TEST_REDIS_PORT. ioredis 6.1.0: see ioredis_server_dies.user.ts.
import { Redis } from "npm:ioredis@6.1.0";
import { Lock } from "../../mod.ts";

/**
 * Tests in this file; each leaks with a probability of about one in eight
 * when deadbolt closes its subscriber after the test has ended, so this
 * many make a leak all but certain to show.
 */
const ROUNDS = 50;

const url = `redis://127.0.0.1:${Deno.env.get("DEADBOLT_TEST_REDIS_PORT")}`;
const holder = new Redis(url);
const waiter = new Redis(url);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

for (let round = 1; round <= ROUNDS; round++) {
  Deno.test({
    name: `a waiter gets the lock when its holder releases it (round ${round})`,
    sanitizeOps: true,
    sanitizeResources: true,
    async fn() {
      const name = `user sanitizers ${round}`;
      const held = await Lock.acquire(holder, name);
      const waiting = Lock.acquire(waiter, name, { timeout: 5_000 });
      await sleep(20);
      await held.release();
      const lock = await waiting;
      await lock.release();
    },
  });
}

Deno.test("the clients close", async () => {
  await holder.quit();
  await waiter.quit();
});
