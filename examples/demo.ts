/**
 * A tour of deadbolt against a real Redis.
 *
 * Run: `deno task demo`. It starts a throwaway redis-server on a free
 * loopback port (redis-server must be on PATH), or uses REDIS_URL when set.
 */

import { Redis } from "npm:ioredis@6";
import { Lock, LockTimeoutError } from "../mod.ts";
import { startRedis } from "../tests/_redis.ts";

const url = Deno.env.get("REDIS_URL");
const server = url ? undefined : await startRedis();
const redis = new Redis(url ?? server!.url);
const log = (who: string, what: string) =>
  console.log(
    `${performance.now().toFixed(0).padStart(6)} ms  ${who.padEnd(9)} ${what}`,
  );

try {
  console.log(
    "1. Three workers want the same lock; fences grow with each grant.",
  );
  await Promise.all(["worker-a", "worker-b", "worker-c"].map(async (who) => {
    await using lock = await Lock.acquire(redis, "nightly-report", {
      fencing: true,
      timeout: 5_000,
    });
    log(who, `holds it with fence ${lock.fence}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
    log(who, "done, releasing");
  }));

  console.log("\n2. tryAcquire() does not wait: null while someone holds it.");
  {
    await using _holder = await Lock.acquire(redis, "nightly-report");
    await using other = await Lock.tryAcquire(redis, "nightly-report");
    log("other", other ? "got it (unexpected)" : "got null: busy");
  }

  console.log(
    "\n3. Waiting has a deadline: LockTimeoutError when it stays held.",
  );
  {
    await using _holder = await Lock.acquire(redis, "nightly-report");
    try {
      await Lock.acquire(redis, "nightly-report", { timeout: 300 });
    } catch (error) {
      if (!(error instanceof LockTimeoutError)) throw error;
      log("waiter", `${error.name} after ${Math.round(error.waited)} ms`);
    }
  }

  console.log("\n4. Lost ownership is never silent: lock.signal aborts.");
  {
    await using lock = await Lock.acquire(redis, "nightly-report", {
      ttl: 600,
    });
    lock.signal.addEventListener(
      "abort",
      () => log("holder", String(lock.signal.reason)),
    );
    log("holder", "someone deletes the key behind our back…");
    await redis.del(lock.key);
    await new Promise((resolve) =>
      lock.signal.addEventListener("abort", resolve)
    );
    log("holder", `held: ${lock.held}; release() → ${await lock.release()}`);
  }

  console.log("\n5. Auto-extension keeps a short lease alive for long work.");
  {
    await using lock = await Lock.acquire(redis, "nightly-report", {
      ttl: 300,
    });
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    log("holder", `after 1000 ms on a 300 ms lease: held ${lock.held}`);
  }
} finally {
  redis.disconnect();
  await server?.stop();
}
