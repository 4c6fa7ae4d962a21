// Run by bun_test.ts under `bun test`, against the redis-server it started
// (port in DEADBOLT_TEST_REDIS_PORT): the shared core cases with Bun's
// built-in RedisClient. Not a Deno test: the name matches neither
// `*_test.ts` nor `*.test.ts`.
import { test } from "bun:test";
import process from "node:process";
// @ts-ignore: Bun's built-in module; Deno's checker cannot resolve it.
import { RedisClient } from "bun";
import { type ClientUnderTest, CORE_CASES } from "../_core_cases.ts";

const port = Number(process.env.DEADBOLT_TEST_REDIS_PORT);
if (!Number.isInteger(port) || port <= 0) {
  throw new Error(
    "Cannot run the Bun tests as DEADBOLT_TEST_REDIS_PORT must name a running redis-server's port: run them through `deno test -A tests/bun_test.ts`",
  );
}
const url = `redis://127.0.0.1:${port}`;

const bun: ClientUnderTest = {
  name: "Bun's RedisClient",
  // The library does not subscribe through Bun's client: waiters back off.
  wakesOnRelease: false,
  connect: async () => {
    const redis = new RedisClient(url);
    await redis.connect();
    return {
      client: redis,
      command: (command: string, ...args: string[]) =>
        redis.send(command, args),
      close: () => Promise.resolve(redis.close()),
    };
  },
};

for (const { name, run } of CORE_CASES) {
  test(`${name} (${bun.name})`, () => run(bun));
}
