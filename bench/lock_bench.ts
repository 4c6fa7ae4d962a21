/**
 * Lock throughput on a local redis-server that this suite starts and stops.
 *
 * Run: `deno task bench` (or `deno bench --allow-all bench/`).
 *
 * Groups compare like with like inside one run, since the machines are noisy:
 * - `uncontended`: one acquire + release cycle, per client.
 * - `contended`: 8 tasks in one process race for one lock; one iteration is
 *   all 8 getting it once (8 critical sections).
 */

import { Redis } from "npm:ioredis@6";
import { createClient } from "npm:redis@6";
import { Lock } from "../mod.ts";
import { startRedis } from "../tests/_redis.ts";
import { DbRedisShape } from "../tests/_resp.ts";

const server = await startRedis();

const ioredis = new Redis(server.port, "127.0.0.1");
const nodeRedis = await createClient({ url: server.url }).connect();
const dbRedis = new DbRedisShape(await server.connect());

let round = 0;
const uniqueName = () => `bench-${round++}`;

Deno.bench({
  name: "acquire + release (ioredis 6)",
  group: "uncontended",
  baseline: true,
  async fn() {
    const lock = await Lock.acquire(ioredis, "uncontended");
    await lock.release();
  },
});

// The floor: the same two round trips without the library (no token check
// on delete, no validity, no renewal), to show what the library costs.
Deno.bench({
  name: "raw SET NX PX + DEL, no library (ioredis 6)",
  group: "uncontended",
  async fn() {
    await ioredis.set("raw", "token", "PX", 30_000, "NX");
    await ioredis.del("raw");
  },
});

Deno.bench({
  name: "acquire + release (node-redis 6)",
  group: "uncontended",
  async fn() {
    const lock = await Lock.acquire(nodeRedis, "uncontended");
    await lock.release();
  },
});

Deno.bench({
  name: "acquire + release (@db/redis shape)",
  group: "uncontended",
  async fn() {
    const lock = await Lock.acquire(dbRedis, "uncontended");
    await lock.release();
  },
});

Deno.bench({
  name: "acquire + release, fencing on (ioredis 6)",
  group: "uncontended",
  async fn() {
    const lock = await Lock.acquire(ioredis, "uncontended", { fencing: true });
    await lock.release();
  },
});

Deno.bench({
  name: "await using, a new name each time (ioredis 6)",
  group: "uncontended",
  async fn() {
    await using _lock = await Lock.acquire(ioredis, uniqueName());
  },
});

const _holder = await Lock.acquire(ioredis, "held", { ttl: 600_000 });
Deno.bench({
  name: "tryAcquire of a held lock (ioredis 6)",
  group: "uncontended",
  async fn() {
    await Lock.tryAcquire(ioredis, "held");
  },
});

async function contend(tasks: number): Promise<void> {
  await Promise.all(
    Array.from({ length: tasks }, async () => {
      const lock = await Lock.acquire(ioredis, "contended", {
        timeout: 60_000,
      });
      await lock.release();
    }),
  );
}

Deno.bench({
  name: "8 tasks, one lock (ioredis 6)",
  group: "contended",
  baseline: true,
  n: 50,
  async fn() {
    await contend(8);
  },
});

Deno.bench({
  name: "8 tasks, 8 different locks (ioredis 6)",
  group: "contended",
  n: 50,
  async fn() {
    await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const lock = await Lock.acquire(ioredis, `spread-${i}`);
        await lock.release();
      }),
    );
  },
});

// Deno.bench has no teardown: close the clients, then kill the server.
globalThis.addEventListener("unload", () => {
  ioredis.disconnect();
  nodeRedis.destroy();
  dbRedis.close();
  server.signal("SIGKILL");
  Deno.removeSync(server.dir, { recursive: true });
});
