// A plain Node (>= 24) script, run by clients_dying_test.ts: `node
// tests/node/called_off.node.ts <ioredis|ioredis5|node-redis|node-redis5>`
// with the port of a redis-server in DEADBOLT_TEST_REDIS_PORT. It opens
// deadbolt's wake-up connection through the client's adapter and calls it
// off at once, 20 times, at different moments of its opening (as a wait
// that ends right away does), then closes the app's client. It prints the
// slowest call-off (`slowest <ms>`); Node must then exit by itself: a
// wake-up connection left open would keep it alive.
import process from "node:process";
import { Redis as Ioredis6 } from "ioredis";
import { Redis as Ioredis5 } from "ioredis5";
import { createClient as createNodeRedis6 } from "redis";
import { createClient as createNodeRedis5 } from "redis5";
import {
  fromIoredis,
  fromNodeRedis,
  type IoredisClient,
  type NodeRedisClient,
  type ScriptClient,
} from "../../mod.ts";

const [which] = process.argv.slice(2);
const url = `redis://127.0.0.1:${process.env.DEADBOLT_TEST_REDIS_PORT}`;

async function connect(): Promise<{ client: ScriptClient; close(): void }> {
  if (which === "ioredis" || which === "ioredis5") {
    const redis = which === "ioredis" ? new Ioredis6(url) : new Ioredis5(url);
    redis.on("error", () => {});
    return {
      client: fromIoredis(redis as unknown as IoredisClient),
      close: () => redis.disconnect(),
    };
  }
  const redis = which === "node-redis"
    ? createNodeRedis6({ url })
    : createNodeRedis5({ url });
  redis.on("error", () => {});
  await redis.connect();
  return {
    client: fromNodeRedis(redis as unknown as NodeRedisClient),
    close: () => void redis.destroy(),
  };
}

const { client, close } = await connect();
const subscribe = client.deadbolt!.subscribe!;
let slowest = 0;
for (let i = 0; i < 20; i++) {
  const controller = new AbortController();
  const started = performance.now();
  const subscribing = subscribe(`called-off-${i}`, () => {}, controller.signal)
    .then((unsubscribe) => unsubscribe(), () => {});
  // Call it off at once, or a little later, somewhere in its opening.
  if (i % 4 === 1) await new Promise((resolve) => setImmediate(resolve));
  if (i % 4 === 2) await new Promise((resolve) => setTimeout(resolve, 1));
  if (i % 4 === 3) await new Promise((resolve) => setTimeout(resolve, 3));
  controller.abort();
  await subscribing;
  slowest = Math.max(slowest, performance.now() - started);
}
close();
console.log(`slowest ${Math.round(slowest)}`);
