// Run by node_test.ts under `node --test` (Node >= 24, which strips types),
// against the redis-server it started (port in DEADBOLT_TEST_REDIS_PORT),
// with one spare server per fault case and client (DEADBOLT_TEST_SPARE_SERVERS).
// Not a Deno test: the name matches neither `*_test.ts` nor `*.test.ts`.
// `ioredis`, `redis` and their 5.x releases under the aliases `ioredis5` and
// `redis5` resolve from the repo's node_modules (see .ci/run).
import { test } from "node:test";
import process from "node:process";
import { Redis as Ioredis6 } from "ioredis";
import { Redis as Ioredis5 } from "ioredis5";
import { createClient as createNodeRedis6 } from "redis";
import { createClient as createNodeRedis5 } from "redis5";
import {
  type ClientUnderTest,
  type Connection,
  CORE_CASES,
  SPARE_SERVERS_ENV,
  spareServersFrom,
} from "../_core_cases.ts";

const testPort = Number(process.env.DEADBOLT_TEST_REDIS_PORT);
if (!Number.isInteger(testPort) || testPort <= 0) {
  throw new Error(
    "Cannot run the Node tests as DEADBOLT_TEST_REDIS_PORT must name a running redis-server's port: run them through `deno test -A tests/node_test.ts`",
  );
}
const url = (port = testPort) => `redis://127.0.0.1:${port}`;
const spareServer = spareServersFrom(process.env[SPARE_SERVERS_ENV]);

// Timers that keep Node running: unref'd ones (deadbolt's lease renewal)
// are not listed, nor would they hold a process open.
const activeTimers = () =>
  process.getActiveResourcesInfo().filter((type) => type === "Timeout").length;

// node-redis sleeps between reconnection attempts on a timer that neither
// close() nor destroy() cancels (`await setTimeout(retryIn)` from
// node:timers/promises, in its socket.js): after its server died, a user's
// client leaves it pending for up to its strategy's delay. A short fixed
// delay keeps that within the fault cases' 2 s wait for the timers to go;
// deadbolt's own wake-up connection outwaits its delay when it closes.
const NODE_REDIS_RECONNECT_MS = 100;

// ioredis' disconnect() starts a timer (`disconnectTimeout`, 2 s by default)
// to destroy a socket that does not close, cleared by that socket's 'close'
// (AbstractConnector.disconnect in ioredis 5 and 6); on a connection that
// is between reconnection attempts the socket has closed already, so the
// timer runs its full length. A short one keeps it within the fault cases'
// 2 s wait for the timers to go.
const IOREDIS_DISCONNECT_MS = 100;

type Ioredis = typeof Ioredis6 | typeof Ioredis5;

function ioredis(Redis: Ioredis) {
  return async (port?: number): Promise<Connection> => {
    const redis = new Redis(url(port), {
      lazyConnect: true,
      disconnectTimeout: IOREDIS_DISCONNECT_MS,
    });
    // As ioredis asks: without a listener it logs every connection error.
    redis.on("error", () => {});
    await redis.connect();
    return {
      client: redis,
      command: (command, ...args) => redis.call(command, ...args),
      // quit() on a dead server would wait for a reconnection that never
      // comes; disconnect() drops it at once.
      close: async () => {
        if (redis.status === "ready") await redis.quit();
        else redis.disconnect();
      },
    };
  };
}

type CreateClient = typeof createNodeRedis6 | typeof createNodeRedis5;

function nodeRedis(createClient: CreateClient) {
  return async (port?: number): Promise<Connection> => {
    const redis = createClient({
      url: url(port),
      socket: { reconnectStrategy: () => NODE_REDIS_RECONNECT_MS },
    });
    // As node-redis asks: without a listener a dropped connection's 'error'
    // event is thrown.
    redis.on("error", () => {});
    await redis.connect();
    return {
      client: redis,
      command: (...args) => redis.sendCommand(args),
      // close() waits for pending commands, which a dead server never
      // answers; destroy() rejects them at once.
      close: async () => {
        if (redis.isReady) await redis.close();
        else redis.destroy();
      },
    };
  };
}

const client = (
  name: string,
  connect: ClientUnderTest["connect"],
): ClientUnderTest => ({
  name,
  wakesOnRelease: true,
  connect,
  spareServer,
  activeTimers,
});

const CLIENTS = [
  client("ioredis 6 on Node", ioredis(Ioredis6)),
  client("ioredis 5 on Node", ioredis(Ioredis5)),
  client("node-redis 6 on Node", nodeRedis(createNodeRedis6)),
  client("node-redis 5 on Node", nodeRedis(createNodeRedis5)),
];

for (const under of CLIENTS) {
  for (const { name, run } of CORE_CASES) {
    test(`${name} (${under.name})`, () => run(under));
  }
}
