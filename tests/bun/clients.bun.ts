// Run by bun_test.ts under `bun test`, against the redis-server it started
// (port in DEADBOLT_TEST_REDIS_PORT). Not a Deno test: the name matches
// neither `*_test.ts` nor `*.test.ts`.
import { test } from "bun:test";
import assert from "node:assert/strict";
// @ts-ignore: Bun's built-in module; Deno's checker cannot resolve it.
import { RedisClient } from "bun";
import {
  fromBunRedis,
  Lock,
  LockTimeoutError,
  type RedisClient as AnyRedisClient,
} from "../../mod.ts";

const port = Number(process.env.DEADBOLT_TEST_REDIS_PORT);
if (!Number.isInteger(port) || port <= 0) {
  throw new Error(
    "Cannot run the Bun client tests as DEADBOLT_TEST_REDIS_PORT must name a running redis-server's port: run them through `deno test -A tests/bun_test.ts`",
  );
}
const url = `redis://127.0.0.1:${port}`;

/** A client for the lock and a side connection for assertions, both closed after `body`. */
async function withClients(
  body: (client: RedisClient, side: RedisClient) => Promise<void>,
): Promise<void> {
  const client = new RedisClient(url);
  const side = new RedisClient(url);
  try {
    await body(client, side);
  } finally {
    client.close();
    side.close();
  }
}

const WAYS: [string, (client: RedisClient) => AnyRedisClient][] = [
  ["as it is", (client) => client],
  ["through fromBunRedis()", (client) => fromBunRedis(client)],
];

for (const [way, wrap] of WAYS) {
  test(`Lock grants, fences, excludes and releases with Bun's RedisClient ${way}`, async () => {
    await withClients(async (bun, side) => {
      const client = wrap(bun);
      const name = `bun ${way}`;
      for (const fence of [1, 2]) {
        await using lock = await Lock.acquire(client, name, { fencing: true });
        assert.equal(lock.fence, fence);
        assert.equal(await side.send("GET", [lock.key]), lock.token);

        assert.equal(await Lock.tryAcquire(client, name), null);
        await assert.rejects(
          Lock.acquire(client, name, { timeout: 50 }),
          (error: unknown) =>
            error instanceof LockTimeoutError && error.lockName === name &&
            error.remainingTtl > 0,
        );

        assert.equal(await lock.release(), true);
        assert.equal(await side.send("EXISTS", [lock.key]), 0);
        assert.equal(await lock.release(), false);
      }
    });
  });
}

test("await using releases a lock taken with Bun's RedisClient on scope exit", async () => {
  await withClients(async (client, side) => {
    let key = "";
    {
      await using lock = await Lock.acquire(client, "bun scope", {
        fencing: true,
      });
      key = lock.key;
      assert.equal(await side.send("GET", [key]), lock.token);
      await using other = await Lock.tryAcquire(client, "bun scope");
      assert.equal(other, null);
    }
    assert.equal(await side.send("EXISTS", [key]), 0);

    await assert.rejects(async () => {
      await using lock = await Lock.acquire(client, "bun scope");
      assert.equal(await side.send("GET", [key]), lock.token);
      throw new Error("critical section failed");
    }, /critical section failed/);
    assert.equal(await side.send("EXISTS", [key]), 0);
  });
});

test("Lock falls back from EVALSHA to EVAL after SCRIPT FLUSH with Bun's RedisClient", async () => {
  await withClients(async (client, side) => {
    const cachedScripts = async () =>
      /^number_of_cached_scripts:(\d+)/m.exec(
        String(await side.send("INFO", ["memory"])),
      )?.[1];
    for (const [way, wrap] of WAYS) {
      assert.equal(await side.send("SCRIPT", ["FLUSH"]), "OK");
      await using lock = await Lock.acquire(wrap(client), `bun flush ${way}`, {
        autoExtend: false,
      });
      assert.equal(await side.send("GET", [lock.key]), lock.token);
      assert.equal(
        await cachedScripts(),
        "1",
        "EVAL loaded the acquire script",
      );

      assert.equal(await side.send("SCRIPT", ["FLUSH"]), "OK");
      assert.equal(await lock.release(), true);
      assert.equal(await side.send("EXISTS", [lock.key]), 0);
      assert.equal(
        await cachedScripts(),
        "1",
        "EVAL loaded the release script",
      );
    }
  });
});
