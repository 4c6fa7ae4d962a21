// Run by bun_test.ts under `bun test`, against the redis-server it started
// (port in DEADBOLT_TEST_REDIS_PORT), with one spare server per fault case
// (DEADBOLT_TEST_SPARE_SERVERS): the shared core cases with Bun's built-in
// RedisClient. Not a Deno test: the name matches neither `*_test.ts` nor
// `*.test.ts`.
import { test } from "bun:test";
import process from "node:process";
// @ts-ignore: Bun's built-in module; Deno's checker cannot resolve it.
import { RedisClient } from "bun";
import {
  type ClientUnderTest,
  CORE_CASES,
  SPARE_SERVERS_ENV,
  spareServersFrom,
} from "../_core_cases.ts";

const testPort = Number(process.env.DEADBOLT_TEST_REDIS_PORT);
if (!Number.isInteger(testPort) || testPort <= 0) {
  throw new Error(
    "Cannot run the Bun tests as DEADBOLT_TEST_REDIS_PORT must name a running redis-server's port: run them through `deno test -A tests/bun_test.ts`",
  );
}

// Bun's process.getActiveResourcesInfo() lists nothing (Bun 1.4.5), so the
// fault cases count timers here instead: every timer set through the global
// setTimeout (all of deadbolt's, unref'd ones included) until it fires or is
// cleared. Bun's RedisClient keeps its own timers in native code, where
// neither count sees them.
const pendingTimers = new Set<unknown>();
const { setTimeout: set, clearTimeout: clear } = globalThis;
globalThis.setTimeout = ((
  callback: (...args: unknown[]) => void,
  ms?: number,
  ...args: unknown[]
) => {
  const timer = set(
    (...passed: unknown[]) => {
      pendingTimers.delete(timer);
      callback(...passed);
    },
    ms,
    ...args,
  );
  pendingTimers.add(timer);
  return timer;
}) as typeof setTimeout;
globalThis.clearTimeout = ((timer?: ReturnType<typeof setTimeout>) => {
  pendingTimers.delete(timer);
  clear(timer);
}) as typeof clearTimeout;

const bun: ClientUnderTest = {
  name: "Bun's RedisClient",
  // The library does not subscribe through Bun's client: waiters back off.
  wakesOnRelease: false,
  connect: async (port = testPort) => {
    const redis = new RedisClient(`redis://127.0.0.1:${port}`);
    await redis.connect();
    return {
      client: redis,
      command: (command: string, ...args: string[]) =>
        redis.send(command, args),
      close: () => Promise.resolve(redis.close()),
    };
  },
  spareServer: spareServersFrom(process.env[SPARE_SERVERS_ENV]),
  activeTimers: () => pendingTimers.size,
};

for (const { name, run } of CORE_CASES) {
  test(`${name} (${bun.name})`, () => run(bun));
}
