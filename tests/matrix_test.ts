import { Cluster, Redis as Ioredis6 } from "npm:ioredis@6";
import { Redis as Ioredis5 } from "npm:ioredis@5";
import { createClient as createNodeRedis6, createCluster } from "npm:redis@6";
import { createClient as createNodeRedis5 } from "npm:redis@5";
import { GlideClient, Logger } from "npm:@valkey/valkey-glide@2";
import type { RedisClient } from "../mod.ts";
import {
  type ClientUnderTest,
  type Connection,
  CORE_CASES,
} from "./_core_cases.ts";
import { type RedisCluster, startCluster } from "./_cluster.ts";
import { type RedisServer, startRedis } from "./_redis.ts";
import { connectDbRedisShape, RespClient } from "./_resp.ts";
import { openUpstash } from "./_upstash.ts";
import { sleep } from "./_util.ts";

// The conformance matrix under Deno: every case of tests/_core_cases.ts for
// every client deadbolt accepts, each passed to the library as it is (no
// adapter). Node 24 and Bun run the same cases (node_test.ts, bun_test.ts).
//
// One Deno.test per client and case, each with a redis-server of its own:
// Deno (2.9) sanitizes whole tests only, never a t.step (a step that leaves
// a timer or a socket behind passes), so a test per case is what makes the
// sanitizers (on in deno.json) check that no case, the fault cases most of
// all, leaves an op, a timer or a resource behind.

const HOST = "127.0.0.1";

/** A client library (or one configuration of it) as the matrix opens it. */
interface MatrixClient {
  /** Its name in test titles. */
  readonly name: string;
  /** Whether deadbolt wakes its waiters by pub/sub (see ClientUnderTest). */
  readonly wakesOnRelease: boolean;
  /**
   * Opens a client on `port`; `close` leaves no socket or timer of the
   * client's behind, also once the server is dead.
   */
  open(port: number): Promise<{ client: RedisClient; close(): Promise<void> }>;
}

// ioredis' disconnect() starts a timer (`disconnectTimeout`, 2 s by
// default) to destroy a socket that does not close, cleared by that
// socket's 'close' (AbstractConnector.disconnect in ioredis 5 and 6); on a
// connection between reconnection attempts the socket has closed already,
// so the timer runs its full length. It is kept short and outwaited.
const IOREDIS_DISCONNECT_MS = 50;

function ioredis(
  name: string,
  create: (port: number) => Ioredis6 | Ioredis5,
): MatrixClient {
  return {
    name,
    wakesOnRelease: true,
    open: async (port) => {
      const redis = create(port);
      // As ioredis asks: without a listener it logs every connection error.
      redis.on("error", () => {});
      await redis.connect();
      return {
        client: redis,
        // quit() on a dead server would wait for a reconnection that never
        // comes; disconnect() drops it at once.
        close: async () => {
          if (redis.status === "ready") return void await redis.quit();
          redis.disconnect();
          await sleep(IOREDIS_DISCONNECT_MS + 50); // ioredis' own timer
        },
      };
    },
  };
}

const ioredisOptions = (port: number) => ({
  host: HOST,
  port,
  lazyConnect: true,
  disconnectTimeout: IOREDIS_DISCONNECT_MS,
});

// node-redis sleeps between reconnection attempts on a timer that neither
// close() nor destroy() cancels (`await setTimeout(retryIn)` from
// node:timers/promises, in its socket.js): a short fixed delay, outwaited
// after a destroy().
const NODE_REDIS_RECONNECT_MS = 50;

interface NodeRedisOptions {
  url: string;
  socket: { reconnectStrategy: () => number };
}

function nodeRedis(
  name: string,
  createClient: (
    options: NodeRedisOptions,
  ) =>
    | ReturnType<typeof createNodeRedis6>
    | ReturnType<typeof createNodeRedis5>,
): MatrixClient {
  return {
    name,
    wakesOnRelease: true,
    open: async (port) => {
      const redis = createClient({
        url: `redis://${HOST}:${port}`,
        socket: { reconnectStrategy: () => NODE_REDIS_RECONNECT_MS },
      });
      // As node-redis asks: without a listener a dropped connection's
      // 'error' event is thrown.
      redis.on("error", () => {});
      await redis.connect();
      return {
        client: redis,
        // close() waits for pending commands, which a dead server never
        // answers; destroy() rejects them at once.
        close: async () => {
          if (redis.isReady) return await redis.close();
          redis.destroy();
          await sleep(NODE_REDIS_RECONNECT_MS + 50); // node-redis' own timer
        },
      };
    },
  };
}

const GLIDE_REQUEST_TIMEOUT_MS = 2_000;

// GLIDE's native core logs every server error reply (NOSCRIPT included) as
// a warning on stderr.
Logger.setLoggerConfig("error");

const CLIENTS: MatrixClient[] = [
  ioredis("ioredis 6 (RESP3)", (port) => new Ioredis6(ioredisOptions(port))),
  ioredis(
    "ioredis 6 with protocol: 2",
    (port) => new Ioredis6({ ...ioredisOptions(port), protocol: 2 }),
  ),
  ioredis("ioredis 5", (port) => new Ioredis5(ioredisOptions(port))),
  nodeRedis("node-redis 6", (options) => createNodeRedis6(options)),
  nodeRedis("node-redis 5", (options) => createNodeRedis5(options)),
  {
    // It reconnects by itself; deadbolt sends it no SUBSCRIBE. Its own
    // requestTimeout (250 ms by default) is set above the stalled-server
    // case's commandTimeout (300 ms), so that deadbolt's bound is what
    // ends the wait there; with the default, GLIDE's own error (also named
    // TimeoutError, but no DOMException) would come first.
    name: "Valkey GLIDE",
    wakesOnRelease: false,
    open: async (port) => {
      const glide = await GlideClient.createClient({
        addresses: [{ host: HOST, port }],
        requestTimeout: GLIDE_REQUEST_TIMEOUT_MS,
      });
      return { client: glide, close: () => Promise.resolve(glide.close()) };
    },
  },
  {
    // The real client over HTTP to a local Upstash REST endpoint in front of
    // the server (tests/_upstash.ts); `retry: false` so that a refused call
    // fails at once. No pub/sub: waiters back off.
    name: "@upstash/redis",
    wakesOnRelease: false,
    open: openUpstash,
  },
  {
    // The stand-in with @db/redis' exact signatures (tests/_resp.ts), passed
    // as it is: deadbolt calls only eval/evalsha on it, so waiters back off.
    name: "@db/redis stand-in",
    wakesOnRelease: false,
    open: async (port) => {
      const client = await connectDbRedisShape(port);
      return { client, close: () => Promise.resolve(client.close()) };
    },
  },
];

/** A connection of `kind` on `port`, with a RESP side connection for checks. */
async function connect(kind: MatrixClient, port: number): Promise<Connection> {
  const side = await RespClient.connect(port);
  try {
    const { client, close } = await kind.open(port);
    return {
      client,
      command: (command, ...args) => side.send(command, ...args),
      close: async () => {
        await close();
        await side[Symbol.asyncDispose]();
      },
    };
  } catch (error) {
    await side[Symbol.asyncDispose]();
    throw error;
  }
}

// hz 100: redis-server acts on SIGTERM at its next cron tick, so a test's
// servers stop in a few ms instead of up to 100 (hz 10).
const SERVER_ARGS = { args: ["--hz", "100"] };

for (const kind of CLIENTS) {
  for (const kase of CORE_CASES) {
    Deno.test(`${kase.name} (${kind.name} on Deno)`, async () => {
      await using server = await startRedis(SERVER_ARGS);
      const spares: RedisServer[] = [];
      const under: ClientUnderTest = {
        name: `${kind.name} on Deno`,
        wakesOnRelease: kind.wakesOnRelease,
        connect: (port = server.port) => connect(kind, port),
        spareServer: async () => {
          const spare = await startRedis(SERVER_ARGS);
          spares.push(spare);
          return { port: spare.port, pid: spare.pid };
        },
      };
      try {
        await kase.run(under);
      } finally {
        await Promise.all(spares.map((spare) => spare.stop()));
      }
    });
  }
}

// The cluster clients on one real 3+3 cluster: every case but the fault
// ones, whose single server to kill or stop a cluster does not have (a
// master's death is a failover, tested in cluster_test.ts). Checks go to the
// master of the key's slot (of the channel's, for PUBSUB: deadbolt
// subscribes with SSUBSCRIBE there). One test for both, as a cluster takes
// seconds to start: the sanitizers check it as a whole.

/** A cluster client of `kind` with checks sent to the slot's master. */
async function clusterConnection(
  cluster: RedisCluster,
  open: () => Promise<{ client: RedisClient; close(): Promise<void> }>,
): Promise<Connection> {
  const { client, close } = await open();
  return {
    client,
    command: async (command, ...args) => {
      const key = command.toUpperCase() === "PUBSUB" ? args[1] : args[0];
      return await (await cluster.masterFor(key)).send(command, ...args);
    },
    close,
  };
}

// ioredis ends each slot-refresh connection with a disconnectTimeout timer
// that only its socket's close clears: kept short (see cluster_test.ts).
const CLUSTER_CLIENTS: [
  string,
  (cluster: RedisCluster) => Promise<{
    client: RedisClient;
    close(): Promise<void>;
  }>,
][] = [
  ["ioredis Cluster", async (cluster) => {
    const client = new Cluster(cluster.startupNodes, {
      redisOptions: { disconnectTimeout: IOREDIS_DISCONNECT_MS },
    });
    client.on("error", () => {});
    client.on("node error", () => {});
    await client.ping();
    return {
      client,
      close: async () => void await client.quit(),
    };
  }],
  ["node-redis createCluster", async (cluster) => {
    const client = createCluster({ rootNodes: cluster.rootNodes });
    client.on("error", () => {});
    await client.connect();
    return { client, close: () => client.close() };
  }],
];

Deno.test("the core cases but the fault ones hold with ioredis Cluster and node-redis createCluster on a 3+3 cluster", async (t) => {
  await using cluster = await startCluster();
  for (const [name, open] of CLUSTER_CLIENTS) {
    const under: ClientUnderTest = {
      name: `${name} on Deno`,
      wakesOnRelease: true,
      connect: () => clusterConnection(cluster, () => open(cluster)),
    };
    for (const kase of CORE_CASES.filter((kase) => !kase.needsSpareServer)) {
      await t.step(`${kase.name} (${under.name})`, () => kase.run(under));
    }
  }
});
