import assert from "node:assert/strict";
import { Redis as Ioredis6 } from "npm:ioredis@6";
import { Redis as Ioredis5 } from "npm:ioredis@5";
import { createClient as createNodeRedis6 } from "npm:redis@6";
import { createClient as createNodeRedis5 } from "npm:redis@5";
import { GlideClient, Logger } from "npm:@valkey/valkey-glide@2";
import {
  fromDbRedis,
  fromGlide,
  fromIoredis,
  fromNodeRedis,
  fromUpstash,
  Lock,
  LockTimeoutError,
  type RedisClient,
  type ScriptClient,
} from "../mod.ts";
import { type RedisServer, startRedis } from "./_redis.ts";
import { DbRedisShape, RespClient } from "./_resp.ts";
import { openUpstash } from "./_upstash.ts";

// Bun's RedisClient is tested under Bun itself: see bun_test.ts.

const HOST = "127.0.0.1";
const url = (port: number) => `redis://${HOST}:${port}`;

/** A connected client under test, and how to close it. */
interface Opened<C> {
  client: C;
  close(): Promise<void>;
}

/** One client library (or one configuration of it) that deadbolt must accept. */
interface ClientCase {
  name: string;
  /** Whether it reconnects by itself when the server restarts. */
  reconnects: boolean;
  /** Opens a client on `port`, as it is and through its explicit adapter. */
  open(port: number): Promise<Opened<RedisClient> & { adapted: ScriptClient }>;
}

/** Ties a client type to its adapter, so both are type-checked against the library's. */
function clientCase<C extends RedisClient>(
  name: string,
  reconnects: boolean,
  open: (port: number) => Promise<Opened<C>>,
  adapter: (client: C) => ScriptClient,
): ClientCase {
  return {
    name,
    reconnects,
    open: async (port) => {
      const opened = await open(port);
      return { ...opened, adapted: adapter(opened.client) };
    },
  };
}

async function openIoredis<C extends Ioredis6 | Ioredis5>(
  redis: C,
): Promise<Opened<C>> {
  // Without a listener ioredis logs connection errors during a restart.
  redis.on("error", () => {});
  await redis.ping();
  return { client: redis, close: async () => void await redis.quit() };
}

async function openNodeRedis<
  C extends
    | ReturnType<typeof createNodeRedis6>
    | ReturnType<typeof createNodeRedis5>,
>(client: C): Promise<Opened<C>> {
  // node-redis throws an unhandled 'error' event on a dropped connection.
  client.on("error", () => {});
  await client.connect();
  return { client, close: () => client.close() };
}

async function openShape<S>(
  port: number,
  Shape: new (resp: RespClient) => S,
): Promise<Opened<S>> {
  const resp = await RespClient.connect(port);
  return {
    client: new Shape(resp),
    close: () => resp[Symbol.asyncDispose](),
  };
}

// GLIDE's native core logs every server error reply (NOSCRIPT included) as a
// warning on stderr; the tests assert on those errors instead.
Logger.setLoggerConfig("error");

async function openGlide(port: number): Promise<Opened<GlideClient>> {
  const glide = await GlideClient.createClient({
    addresses: [{ host: HOST, port }],
  });
  return { client: glide, close: () => Promise.resolve(glide.close()) };
}

const CLIENTS: ClientCase[] = [
  clientCase(
    "ioredis 6 (RESP3)",
    true,
    (port) => openIoredis(new Ioredis6({ host: HOST, port })),
    fromIoredis,
  ),
  clientCase(
    "ioredis 6 with protocol: 2",
    true,
    (port) => openIoredis(new Ioredis6({ host: HOST, port, protocol: 2 })),
    fromIoredis,
  ),
  clientCase(
    "ioredis 5",
    true,
    (port) => openIoredis(new Ioredis5({ host: HOST, port })),
    fromIoredis,
  ),
  clientCase(
    "node-redis 6 (RESP3)",
    true,
    (port) => openNodeRedis(createNodeRedis6({ url: url(port) })),
    fromNodeRedis,
  ),
  clientCase(
    "node-redis 6 with RESP: 2",
    true,
    (port) => openNodeRedis(createNodeRedis6({ url: url(port), RESP: 2 })),
    fromNodeRedis,
  ),
  clientCase(
    "node-redis 5",
    true,
    (port) => openNodeRedis(createNodeRedis5({ url: url(port) })),
    fromNodeRedis,
  ),
  clientCase(
    "@db/redis shape",
    false,
    (port) => openShape(port, DbRedisShape),
    fromDbRedis,
  ),
  // HTTP has no connection to lose: a restart only empties the script cache.
  clientCase("@upstash/redis", true, openUpstash, fromUpstash),
  // GLIDE reports NOSCRIPT as "NoScriptError: No matching script…", so the
  // SCRIPT FLUSH and restart steps check the fallback's case-blind match.
  clientCase("Valkey GLIDE", true, openGlide, fromGlide),
];

/** The client passed as it is (shape detection), then through its adapter. */
async function eachWay(
  t: Deno.TestContext,
  server: RedisServer,
  scenario: (client: RedisClient, name: string) => Promise<void>,
): Promise<void> {
  for (const kase of CLIENTS) {
    await t.step(kase.name, async () => {
      const opened = await kase.open(server.port);
      try {
        await scenario(opened.client, `${kase.name} as it is`);
        await scenario(opened.adapted, `${kase.name} adapted`);
      } finally {
        await opened.close();
      }
    });
  }
}

/** Rejects with a LockTimeoutError for `name`, with a numeric remaining TTL. */
const isTimeout = (name: string) => (error: unknown) =>
  error instanceof LockTimeoutError && error.lockName === name &&
  Number.isInteger(error.remainingTtl) && error.remainingTtl > 0;

Deno.test("Lock grants, fences, excludes and releases with every client, as it is and adapted", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  await eachWay(t, server, async (client, name) => {
    for (const fence of [1, 2]) {
      await using lock = await Lock.acquire(client, name, { fencing: true });
      assert.equal(lock.fence, fence);
      assert.equal(lock.held, true);
      assert.equal(await side.send("GET", lock.key), lock.token);
      assert.equal(await side.send("GET", `${lock.key}:fence`), String(fence));

      assert.equal(await Lock.tryAcquire(client, name), null);
      await assert.rejects(
        Lock.acquire(client, name, { timeout: 50 }),
        isTimeout(name),
      );
      assert.equal(await side.send("GET", lock.key), lock.token);

      assert.equal(await lock.release(), true);
      assert.equal(lock.held, false);
      assert.equal(await side.send("EXISTS", lock.key), 0);
      assert.equal(await lock.release(), false);
    }
  });
});

Deno.test("Lock falls back from EVALSHA to EVAL after SCRIPT FLUSH with every client", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  const cachedScripts = async () =>
    /^number_of_cached_scripts:(\d+)/m.exec(
      String(await side.send("INFO", "memory")),
    )?.[1];
  await eachWay(t, server, async (client, name) => {
    assert.equal(await side.send("SCRIPT", "FLUSH"), "OK");
    await using lock = await Lock.acquire(client, name, { autoExtend: false });
    assert.equal(await side.send("GET", lock.key), lock.token);
    assert.equal(await cachedScripts(), "1", "EVAL loaded the acquire script");

    assert.equal(await side.send("SCRIPT", "FLUSH"), "OK");
    assert.equal(await lock.release(), true);
    assert.equal(await side.send("EXISTS", lock.key), 0);
    assert.equal(await cachedScripts(), "1", "EVAL loaded the release script");
  });
});

Deno.test("Lock.acquire() works again after a server restart emptied the script cache", async (t) => {
  for (const kase of CLIENTS) {
    await t.step(kase.name, async () => {
      await using server = await startRedis();
      const name = `restart ${kase.name}`;
      let opened = await kase.open(server.port);
      try {
        const before = await Lock.acquire(opened.client, name, {
          fencing: true,
        });
        assert.equal(before.fence, 1);
        if (kase.reconnects) {
          await server.restart();
          // No persistence: the key went with the old process, so release()
          // finds nothing of ours (EVALSHA → NOSCRIPT → EVAL on the new one).
          assert.equal(await before.release(), false);
        } else {
          assert.equal(await before.release(), true);
          await server.restart();
          await opened.close();
          opened = await kase.open(server.port);
        }
        await using after = await Lock.acquire(opened.client, name, {
          fencing: true,
        });
        assert.equal(after.fence, 1, "a fresh server starts the fence anew");
        await using side = await server.connect();
        assert.equal(await side.send("GET", after.key), after.token);
        assert.equal(await after.release(), true);
        assert.equal(await side.send("EXISTS", after.key), 0);
      } finally {
        await opened.close();
      }
    });
  }
});

Deno.test("Lock reads numbers from ioredis with stringNumbers: true", async (t) => {
  await using server = await startRedis();
  const options = { host: HOST, port: server.port, stringNumbers: true };
  const clients = [
    ["ioredis 6", () => openIoredis(new Ioredis6(options))],
    ["ioredis 5", () => openIoredis(new Ioredis5(options))],
  ] as const;
  for (const [label, open] of clients) {
    await t.step(label, async () => {
      const { client, close } = await open();
      try {
        const name = `stringNumbers ${label}`;
        assert.equal(
          await client.incr(`probe ${label}`),
          "1",
          "numbers as strings",
        );
        await using lock = await Lock.acquire(client, name, {
          fencing: true,
        });
        assert.equal(lock.fence, 1);
        await assert.rejects(
          Lock.acquire(client, name, { timeout: 0 }),
          isTimeout(name),
        );
        assert.equal(await lock.release(), true);
      } finally {
        await close();
      }
    });
  }
});

Deno.test("Lock rejects an unsupported client with a TypeError that lists the supported clients", async () => {
  const supported = [
    "@db/redis",
    "@upstash/redis",
    "ioredis",
    "node-redis",
    "Bun's RedisClient",
    "Valkey GLIDE",
  ];
  const lists = (error: unknown) =>
    error instanceof TypeError &&
    supported.every((name) => error.message.includes(name));
  const unsupported: unknown[] = [
    {},
    { get() {}, set() {} },
    { send() {} }, // Bun's client also has duplicate()
    null,
    undefined,
    "redis://127.0.0.1:6379",
    6379,
  ];
  for (const client of unsupported) {
    assert.throws(() => new Lock(client as RedisClient, "x"), lists);
    await assert.rejects(Lock.acquire(client as RedisClient, "x"), lists);
    await assert.rejects(Lock.tryAcquire(client as RedisClient, "x"), lists);
  }
});
