// Run by node_test.ts under `node --test` (Node >= 24, which strips types),
// against the redis-server it started (port in DEADBOLT_TEST_REDIS_PORT).
// Not a Deno test: the name matches neither `*_test.ts` nor `*.test.ts`.
// `ioredis` and `redis` resolve from the repo's node_modules (see .ci/run).
import { test } from "node:test";
import process from "node:process";
import { Redis } from "ioredis";
import { createClient } from "redis";
import { type ClientUnderTest, CORE_CASES } from "../_core_cases.ts";

const port = Number(process.env.DEADBOLT_TEST_REDIS_PORT);
if (!Number.isInteger(port) || port <= 0) {
  throw new Error(
    "Cannot run the Node tests as DEADBOLT_TEST_REDIS_PORT must name a running redis-server's port: run them through `deno test -A tests/node_test.ts`",
  );
}
const url = `redis://127.0.0.1:${port}`;

const CLIENTS: ClientUnderTest[] = [
  {
    name: "ioredis 6 on Node",
    wakesOnRelease: true,
    connect: async () => {
      const redis = new Redis(url, { lazyConnect: true });
      await redis.connect();
      return {
        client: redis,
        command: (command, ...args) => redis.call(command, ...args),
        close: async () => void await redis.quit(),
      };
    },
  },
  {
    name: "node-redis 6 on Node",
    wakesOnRelease: true,
    connect: async () => {
      const redis = await createClient({ url }).connect();
      return {
        client: redis,
        command: (...args) => redis.sendCommand(args),
        close: () => redis.close(),
      };
    },
  },
];

for (const under of CLIENTS) {
  for (const { name, run } of CORE_CASES) {
    test(`${name} (${under.name})`, () => run(under));
  }
}
