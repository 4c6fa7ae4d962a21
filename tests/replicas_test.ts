import assert from "node:assert/strict";
import { Redis } from "npm:ioredis@6";
import { createClient } from "npm:redis@6";
import { Lock, LockLostError, LockReplicationError } from "../mod.ts";
import { type RedisServer, startRedis } from "./_redis.ts";
import { DbRedisShape, type RespClient } from "./_resp.ts";
import { Redis as Upstash } from "npm:@upstash/redis@1";

// `waitReplicas` against a real primary and replica; and what happens to a
// lock when a replica that never got its key is promoted (F14).

/** Starts a primary and a replica, and resolves once replication is online. */
async function replicated(): Promise<
  { primary: RedisServer; replica: RedisServer } & AsyncDisposable
> {
  const primary = await startRedis({
    args: ["--repl-diskless-sync-delay", "0"],
  });
  const replica = await startRedis({
    args: ["--replicaof", "127.0.0.1", String(primary.port)],
  });
  await using side = await primary.connect();
  const deadline = performance.now() + 10_000;
  while (
    !/slave0:.*state=online/.test(
      String(await side.send("INFO", "replication")),
    )
  ) {
    assert.ok(performance.now() < deadline, "replication did not come online");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return {
    primary,
    replica,
    async [Symbol.asyncDispose]() {
      await replica.stop();
      await primary.stop();
    },
  };
}

async function client(
  server: RedisServer,
): Promise<DbRedisShape & AsyncDisposable> {
  const conn: RespClient = await server.connect();
  return Object.assign(new DbRedisShape(conn), {
    async [Symbol.asyncDispose]() {
      await conn[Symbol.asyncDispose]();
    },
  });
}

/**
 * The @db/redis shape plus its `wait(numreplicas, timeout)`; `released`
 * resolves once a release script (one argument: the token) has answered.
 */
function withWait(conn: RespClient) {
  const redis = new DbRedisShape(conn);
  const { promise: released, resolve } = Promise.withResolvers<void>();
  const watch = <T>(args: unknown[], reply: Promise<T>) => {
    if (args.length === 1) reply.then(() => resolve(), () => {});
    return reply;
  };
  return {
    released,
    eval: (script: string, keys: string[], args: string[]) =>
      watch(args, redis.eval(script, keys, args)),
    evalsha: (sha: string, keys: string[], args: string[]) =>
      watch(args, redis.evalsha(sha, keys, args)),
    deadbolt: {
      wait: (numreplicas: number, timeout: number) =>
        conn.send("WAIT", numreplicas, timeout),
    },
  };
}

Deno.test("waitReplicas acquires once a replica has acknowledged the lock's write", async () => {
  await using servers = await replicated();
  await using conn = await servers.primary.connect();
  await using onReplica = await servers.replica.connect();
  await using lock = await Lock.acquire(withWait(conn), "replicated", {
    waitReplicas: 1,
    fencing: true,
  });
  // WAIT returned, so the replica already has both writes.
  assert.equal(await onReplica.send("GET", lock.key), lock.token);
  assert.equal(await onReplica.send("GET", "deadbolt:{replicated}:fence"), "1");
});

Deno.test("waitReplicas fails with LockReplicationError and leaves no key when no replica acknowledges", async () => {
  await using servers = await replicated();
  await using conn = await servers.primary.connect();
  await using side = await servers.primary.connect();
  servers.replica.signal("SIGSTOP");
  try {
    const started = performance.now();
    const redis = withWait(conn);
    const error = await Lock.acquire(redis, "replicated", {
      waitReplicas: 1,
      replicaTimeout: 200,
    }).then(() => assert.fail("acquired without a replica"), (e) => e);
    assert.ok(error instanceof LockReplicationError, String(error));
    assert.equal(error.acknowledged, 0);
    assert.equal(error.required, 1);
    assert.ok(performance.now() - started < 1_000);
    await redis.released;
    assert.equal(await side.send("EXISTS", "deadbolt:{replicated}"), 0);
  } finally {
    servers.replica.signal("SIGCONT");
  }
});

Deno.test("waitReplicas needs a client that can send WAIT", () => {
  // Nothing is sent: the check comes before any request.
  const upstash = new Upstash({ url: "http://127.0.0.1:1", token: "t" });
  assert.throws(
    () => new Lock(upstash, "x", { waitReplicas: 1 }),
    (error) => error instanceof TypeError && /waitReplicas/.test(error.message),
  );
});

Deno.test("a replica promoted without the lock's key grants it again; the old holder is told before validUntil (F14)", async () => {
  await using servers = await replicated();
  await using onPrimary = await client(servers.primary);
  // Cut replication while the replica is frozen, so the lock's write can
  // reach neither its socket nor, after the primary dies, a resync.
  servers.replica.signal("SIGSTOP");
  {
    await using side = await servers.primary.connect();
    await side.send("CLIENT", "KILL", "TYPE", "replica");
  }
  const holder = await Lock.acquire(onPrimary, "failover", {
    ttl: 600,
    commandTimeout: 200,
  });
  servers.primary.signal("SIGKILL");
  servers.replica.signal("SIGCONT");
  await using promoted = await client(servers.replica);
  const onReplica = await servers.replica.connect();
  await onReplica.send("REPLICAOF", "NO", "ONE");
  await onReplica[Symbol.asyncDispose]();
  // The promoted replica never saw the key: a second holder gets the lock.
  // This is the documented failover non-promise; only fencing guards it.
  await using second = await Lock.acquire(promoted, "failover", { timeout: 0 });
  assert.ok(second.held);
  // The old holder cannot renew on its dead primary and says so in time.
  const lostAt = await new Promise<number>((resolve) =>
    holder.signal.aborted
      ? resolve(performance.now())
      : holder.signal.addEventListener("abort", () =>
        resolve(performance.now()))
  );
  assert.ok(lostAt <= holder.validUntil);
  assert.ok(holder.signal.reason instanceof LockLostError);
  await assert.rejects(holder.release());
});

Deno.test("waitReplicas works with ioredis and node-redis passed as they are", async () => {
  await using servers = await replicated();
  await using onReplica = await servers.replica.connect();
  const ioredis = new Redis(servers.primary.port, "127.0.0.1");
  const nodeRedis = await createClient({ url: servers.primary.url }).connect();
  try {
    for (const redis of [ioredis, nodeRedis]) {
      await using lock = await Lock.acquire(redis, "replicated", {
        waitReplicas: 1,
      });
      assert.equal(await onReplica.send("GET", lock.key), lock.token);
    }
  } finally {
    await ioredis.quit();
    await nodeRedis.close();
  }
});
