// A plain Node (>= 24) script, run by clients_dying_test.ts: `node
// tests/node/server_dies.node.ts <ioredis|node-redis> <lock name>` with the
// port of a redis-server in DEADBOLT_TEST_REDIS_PORT. Two app clients, each
// with its own 'error' listener as the client's docs ask; one holds the lock,
// the other waits for it. It prints `waiting` once the wait has begun; the
// test then kills the server, and the wait must end in an error that this
// script catches, prints as `result …`, and exits 0 by itself.
import process from "node:process";
import { Redis } from "ioredis";
import { createClient } from "redis";
import { Lock, type RedisClient } from "../../mod.ts";

const [which, name] = process.argv.slice(2);
const url = `redis://127.0.0.1:${process.env.DEADBOLT_TEST_REDIS_PORT}`;

interface AppClient {
  client: RedisClient;
  close(): void;
}

let errorEvents = 0;
const onError = () => void errorEvents++;

async function connect(): Promise<AppClient> {
  if (which === "ioredis") {
    const redis = new Redis(url);
    redis.on("error", onError);
    return { client: redis, close: () => redis.disconnect() };
  }
  if (which === "node-redis") {
    const redis = createClient({ url });
    redis.on("error", onError);
    await redis.connect();
    return { client: redis, close: () => redis.destroy() };
  }
  throw new Error(
    `Cannot connect as '${which}' is no client: use ioredis or node-redis`,
  );
}

const holder = await connect();
const waiter = await connect();
try {
  await Lock.acquire(holder.client, name);
  // The holder's lease timer does not keep Node alive, and the server that
  // holds its key is about to die: it is not released.
  const outcome = Lock.acquire(waiter.client, name, { timeout: 10_000 }).then(
    () => "acquired",
    (error: Error) => `rejected ${error.name}: ${error.message}`,
  );
  console.log("waiting");
  console.log(`result ${await outcome} (app 'error' events: ${errorEvents})`);
} finally {
  holder.close();
  waiter.close();
}
