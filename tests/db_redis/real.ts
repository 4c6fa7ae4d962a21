// deadbolt with the real @db/redis client. Run by tests/db_redis_test.ts as
//   deno test --allow-all --no-lock --import-map=<dir>/import_map.json tests/db_redis/real.ts
// where <dir> was made by tests/db_redis/setup.sh (it maps "@db/redis" and
// the client's jsr:@std imports to local files), against the redis-server
// that test started (port in DEADBOLT_TEST_REDIS_PORT). Not named *_test.ts,
// so the main suite, which has no import map, does not load it.
import assert from "node:assert/strict";
import { connect, type Redis } from "@db/redis";
import {
  fromDbRedis,
  Lock,
  LockReplicationError,
  LockTimeoutError,
  type RedisClient,
} from "../../mod.ts";
import { lockKeys } from "../../src/keys.ts";
import {
  type ClientUnderTest,
  CORE_CASES,
  SPARE_SERVERS_ENV,
  spareServersFrom,
} from "../_core_cases.ts";
import { until, within } from "../_util.ts";

const port = Number(Deno.env.get("DEADBOLT_TEST_REDIS_PORT"));
if (!Number.isInteger(port) || port <= 0) {
  throw new Error(
    "Cannot run the @db/redis tests as DEADBOLT_TEST_REDIS_PORT must name a running redis-server's port: run them through `deno test -A tests/db_redis_test.ts`",
  );
}
const options = { hostname: "127.0.0.1", port };
// The fault cases' own servers, started by the parent test.
const spareServer = spareServersFrom(Deno.env.get(SPARE_SERVERS_ENV));

/** A bound on any one lock operation; a broken lock fails, it does not hang. */
const LIMIT_MS = 5_000;
/** How long a woken waiter may take to get a released lock. */
const HANDOFF_MS = 1_000;

/** Opens real @db/redis connections, handed to deadbolt through `wrap`. */
function realClient(
  name: string,
  wakesOnRelease: boolean,
  wrap: (redis: Redis, port: number) => RedisClient,
): ClientUnderTest {
  return {
    name,
    wakesOnRelease,
    spareServer,
    connect: async (on = port) => {
      // No reconnection attempts: a fault case's dead server must not keep
      // the client retrying (and its timers pending) after the case.
      const redis = await connect({ ...options, port: on, maxRetryCount: 0 });
      return {
        client: wrap(redis, on),
        command: (command, ...args) => redis.sendCommand(command, args),
        close: () => Promise.resolve(redis.close()),
      };
    },
  };
}

const CLIENTS = [
  // Passed as it is: waiters poll with backoff.
  realClient("@db/redis as it is", false, (redis) => redis),
  // Wake-ups over a connection deadbolt opens with `connect` and closes.
  realClient(
    "@db/redis through fromDbRedis with connect",
    true,
    (redis, on) =>
      fromDbRedis(redis, {
        connect: () => connect({ ...options, port: on, maxRetryCount: 0 }),
      }),
  ),
];

for (const under of CLIENTS) {
  for (const { name, run } of CORE_CASES) {
    Deno.test(`${name} (${under.name})`, () =>
      within(run(under), 30_000, `${name} (${under.name})`));
  }
}

/** Subscribers of `channel` on the server. */
async function subscribers(side: Redis, channel: string): Promise<number> {
  const [, count] = await side.pubsubNumsub(channel);
  return Number(count);
}

Deno.test("a contended Lock.acquire() with the client as it is times out with LockTimeoutError and leaves the connection a client", async () => {
  using holderRedis = await connect(options);
  using waiterRedis = await connect(options);
  const name = "job";
  await using held = await within(
    Lock.acquire(holderRedis, name),
    LIMIT_MS,
    "the uncontended acquire",
  );
  await assert.rejects(
    within(
      Lock.acquire(waiterRedis, name, { timeout: 100 }),
      LIMIT_MS,
      "the contended acquire's timeout",
    ),
    (error) => {
      assert.ok(error instanceof LockTimeoutError, String(error));
      assert.equal(error.lockName, name);
      return true;
    },
  );
  // deadbolt must not have called the client's own subscribe(), which
  // would have turned this connection into a subscriber.
  assert.equal(await waiterRedis.ping(), "PONG");
  assert.equal(await waiterRedis.get(held.key), held.token);
  assert.equal(
    await subscribers(waiterRedis, lockKeys("deadbolt:", name).released),
    0,
  );
  assert.equal(await within(held.release(), LIMIT_MS, "the release"), true);
  assert.equal(await waiterRedis.exists(held.key), 0);
});

Deno.test("fromDbRedis(redis, { connect }) wakes a waiter whose backoff is 10 s within 1 s of the release, and closes its subscriber", async () => {
  using holderRedis = await connect(options);
  using waiterRedis = await connect(options);
  using side = await connect(options);
  let opened = 0;
  const waiter = fromDbRedis(waiterRedis, {
    connect: () => {
      opened++;
      return connect(options);
    },
  });
  const name = "wake";
  const channel = lockKeys("deadbolt:", name).released;
  // A backoff of up to 10 s might still land within the second after a
  // release (about 1 time in 10); three rounds make a pass without wake-ups
  // about 1 in 1000.
  for (let round = 1; round <= 3; round++) {
    const holder = await within(
      Lock.acquire(holderRedis, name, { ttl: 30_000 }),
      LIMIT_MS,
      `round ${round}: the holder's acquire`,
    );
    let settled = false;
    const stop = new AbortController(); // ends the wait if the test fails
    const waiting = Lock.acquire(waiter, name, {
      ttl: 30_000,
      timeout: 20_000,
      retryDelay: 10_000,
      maxRetryDelay: 10_000,
      signal: stop.signal,
    }).finally(() => settled = true);
    try {
      await until(
        async () => await subscribers(side, channel) === 1,
        LIMIT_MS,
        `round ${round}: the waiter's subscription to ${channel}`,
      );
      assert.equal(settled, false, `round ${round}: granted while held`);
      const released = performance.now();
      assert.equal(
        await within(holder.release(), LIMIT_MS, "the holder's release"),
        true,
      );
      const next = await within(
        waiting,
        HANDOFF_MS,
        `round ${round}: the woken waiter's grant`,
      );
      const handoff = performance.now() - released;
      assert.ok(handoff < HANDOFF_MS, `round ${round}: took ${handoff} ms`);
      assert.equal(await side.get(next.key), next.token);
      // Nobody waits any more: the subscriber connection is gone already.
      assert.equal(await subscribers(side, channel), 0);
      assert.equal(await within(next.release(), LIMIT_MS, "release"), true);
    } finally {
      stop.abort();
      await within(holder.release(), LIMIT_MS, "the holder's last release");
      await within(
        waiting.then((lock) => lock.release(), () => false),
        LIMIT_MS,
        "the waiter's last release",
      );
    }
  }
  assert.equal(opened, 3, "one subscriber connection per wait");
  assert.equal(await waiterRedis.ping(), "PONG");
});

Deno.test("fromDbRedis(redis) sends WAIT for waitReplicas: with no replica the acquire rejects with LockReplicationError and leaves no key", async () => {
  using redis = await connect(options);
  const name = "replicated";
  await assert.rejects(
    within(
      Lock.acquire(fromDbRedis(redis), name, {
        waitReplicas: 1,
        replicaTimeout: 50,
      }),
      LIMIT_MS,
      "the acquire waiting for a replica",
    ),
    (error) => {
      assert.ok(error instanceof LockReplicationError, String(error));
      assert.equal(error.acknowledged, 0, "WAIT's integer reply, read");
      assert.equal(error.required, 1);
      return true;
    },
  );
  await until(
    async () => await redis.exists(lockKeys("deadbolt:", name).lock) === 0,
    LIMIT_MS,
    "the unreplicated key's deletion",
  );
});
