import assert from "node:assert/strict";
import { Cluster } from "npm:ioredis@6";
import { createCluster } from "npm:redis@6";
import {
  Lock,
  type LockHandle,
  LockLostError,
  LockReplicationError,
  MultiLock,
  ReadWriteLock,
  type RedisClient,
  Semaphore,
} from "../mod.ts";
import { keySlot, lockKeys } from "../src/keys.ts";
import {
  type ClusterNode,
  type RedisCluster,
  startCluster,
} from "./_cluster.ts";
import { startRedis } from "./_redis.ts";
import {
  checkFencedRegister,
  type Event,
  fencedWrite,
  readRegister,
  sharedNow,
} from "./_checkers.ts";
import { abortedAt, sleep, slowBackoff, until, within } from "./_util.ts";

// deadbolt on a real Redis Cluster (3 masters, 3 replicas on loopback) with
// the two Node cluster clients passed as they are: slots, sharded wake-ups,
// slot migration and failover.

/** A cluster client as a test uses it: the client, and how to close it. */
interface ClusterClient extends AsyncDisposable {
  readonly label: string;
  readonly client: RedisClient;
}

type Connect = (cluster: RedisCluster) => Promise<ClusterClient>;

// ioredis ends each slot-refresh connection with a timer (disconnectTimeout)
// that only its socket's close clears; after a node was killed, one may
// still be closing when quit() resolves: keep it short, and outwait it.
const IOREDIS_DISCONNECT_MS = 100;

async function ioredisCluster(cluster: RedisCluster): Promise<ClusterClient> {
  const client = new Cluster(cluster.startupNodes, {
    redisOptions: { disconnectTimeout: IOREDIS_DISCONNECT_MS },
  });
  // A killed node makes it emit errors while it finds the new topology.
  client.on("error", () => {});
  client.on("node error", () => {});
  await client.ping();
  return {
    label: "ioredis Cluster",
    client,
    async [Symbol.asyncDispose]() {
      await client.quit().catch(() => client.disconnect());
      if (cluster.nodes.some((node) => !node.up)) {
        await sleep(IOREDIS_DISCONNECT_MS + 50);
      }
    },
  };
}

// node-redis sleeps between reconnects to a dead node on a timer that
// close() cannot cancel: keep it short, and outwait it after closing.
const NODE_REDIS_RECONNECT_MS = 100;

async function nodeRedisCluster(cluster: RedisCluster): Promise<ClusterClient> {
  const client = createCluster({
    rootNodes: cluster.rootNodes,
    defaults: { socket: { reconnectStrategy: () => NODE_REDIS_RECONNECT_MS } },
  });
  client.on("error", () => {});
  await client.connect();
  return {
    label: "node-redis createCluster",
    client,
    async [Symbol.asyncDispose]() {
      await client.close().catch(() => client.destroy());
      if (cluster.nodes.some((node) => !node.up)) {
        await sleep(NODE_REDIS_RECONNECT_MS + 50);
      }
    },
  };
}

const CONNECTS: Connect[] = [ioredisCluster, nodeRedisCluster];
const labelOf = (connect: Connect) =>
  connect === ioredisCluster ? "ioredis Cluster" : "node-redis createCluster";

/** A small deterministic PRNG (mulberry32), so a failing name can be reproduced. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const utf8Length = (text: string) => new TextEncoder().encode(text).length;

/**
 * Lock names that could pull a lock's keys apart on a cluster if the hash
 * tag were built naively: braces anywhere (`{}` is an empty tag Redis
 * ignores, a leading `}` closes a tag early), escapes, colons and the keys'
 * own suffixes, astral characters, and names at the 1024-byte limit.
 */
function trickyNames(count: number): string[] {
  const names = [
    "}",
    "}x",
    "}}",
    "{",
    "{}",
    "a{}b",
    "{}a",
    "a{}",
    "}{",
    "{a}",
    "{a}b{c}",
    "x}:fence",
    ":released",
    "a}:released",
    "%",
    "%7D",
    "%25",
    "%7D%25}",
    "🔒",
    "}🔒{",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "👩‍👩‍👧‍👦",
    "é", // e + combining accent
    "\0",
    "\r\n",
    "}".repeat(300),
    "🔒".repeat(256), // 1024 bytes
  ];
  const random = prng(0xc1a57e);
  const parts = [
    ..."{}:%x7D25 é中",
    "{}",
    "}{",
    ":fence",
    ":released",
    "%7D",
    "%25",
    "🔒",
    "𝔘",
    "😀",
    "\u{10FFFD}",
  ];
  while (names.length < count) {
    const long = random() < 0.1;
    const length = long ? 100 + Math.floor(random() * 300) : 1 +
      Math.floor(random() * 10);
    let name = random() < 0.2 ? "}" : "";
    for (let i = 0; i < length; i++) {
      name += parts[Math.floor(random() * parts.length)];
    }
    while (utf8Length(name) > 1024) name = name.slice(0, -2);
    if (name.isWellFormed() && name !== "") names.push(name);
  }
  return [...new Set(names)];
}

/** The value of `key` on `node`, or the MOVED error's text when `node` does not serve it. */
async function getOn(node: ClusterNode, key: string): Promise<unknown> {
  return await node.send("GET", key).catch((error) => String(error.message));
}

/** Asserts `key` holds `value` on the master that serves it, and that the other masters redirect to it. */
async function assertOnOwner(
  cluster: RedisCluster,
  key: string,
  value: string | null,
): Promise<void> {
  const owner = await cluster.masterFor(key);
  assert.equal(await owner.send("GET", key), value, `${key} on its master`);
  for (const master of await cluster.masters()) {
    if (master === owner) continue;
    assert.match(
      String(await getOn(master, key)),
      new RegExp(`^MOVED \\d+ 127\\.0\\.0\\.1:${owner.port}$`),
    );
  }
}

/** A name whose lock lives on `master`, and on no other lock of `taken`. */
async function nameOn(
  cluster: RedisCluster,
  master: ClusterNode,
  stem: string,
): Promise<string> {
  for (let i = 0;; i++) {
    const name = `${stem}-${i}`;
    if (await cluster.masterFor(lockKeys("deadbolt:", name).lock) === master) {
      return name;
    }
  }
}

/** Errors the cluster has answered with a given prefix (`INFO errorstats`), summed over every running node. */
async function errorCount(
  cluster: RedisCluster,
  code: string,
): Promise<number> {
  let total = 0;
  for (const node of cluster.nodes.filter((node) => node.up)) {
    const stats = String(await node.send("INFO", "errorstats"));
    total += Number(
      new RegExp(`errorstat_${code}:count=(\\d+)`).exec(stats)?.[1] ?? 0,
    );
  }
  return total;
}

/**
 * Runs `fn` with `Math.random` pinned near 1, so every full-jitter backoff
 * waits (almost) its whole bound: a waiter that gets the lock sooner than
 * that was woken.
 */
async function withSlowBackoff<T>(fn: () => Promise<T>): Promise<T> {
  using _ = slowBackoff();
  return await fn();
}

Deno.test("Lock on a Redis Cluster of 3 masters and 3 replicas", async (t) => {
  await using cluster = await startCluster();

  await t.step(
    "every key of a lock maps to one slot, for any name and prefix (CLUSTER KEYSLOT)",
    async () => {
      const names = trickyNames(400);
      assert.ok(names.length >= 350, `${names.length} names`);
      assert.ok(names.some((name) => name.startsWith("}")));
      assert.ok(names.some((name) => utf8Length(name) > 900));
      const prefixes = ["deadbolt:", "", "app:v2:", "%", "🔒:", "a b:"];
      const dummy = { eval: () => Promise.resolve(0) };
      const keys: string[] = [];
      for (const name of names) {
        for (const prefix of prefixes) {
          const { lock, fence, released, line, seats } = lockKeys(
            prefix,
            name,
          );
          assert.equal(new Lock(dummy, name, { prefix }).key, lock);
          keys.push(lock, fence, released, line, seats);
        }
      }
      const slots = await cluster.keyslots(keys);
      // keySlot(), which routes WAIT on cluster clients, agrees with Redis.
      assert.deepEqual(keys.map(keySlot), slots);
      const perName = keys.length / names.length;
      const distinct = new Set<number>();
      for (let i = 0; i < names.length; i++) {
        const mine = slots.slice(i * perName, (i + 1) * perName);
        const [slot] = mine;
        assert.ok(
          Number.isInteger(slot),
          `slot of ${keys[i * perName]}: ${slot}`,
        );
        // The tag is the name alone, so the prefix does not move the slot.
        assert.ok(
          mine.every((s) => s === slot),
          `the keys of ${JSON.stringify(names[i])} are in slots ${mine}: ${
            JSON.stringify(keys.slice(i * perName, (i + 1) * perName))
          }`,
        );
        distinct.add(slot);
      }
      // The names really spread over the slots (the tag is not a constant).
      assert.ok(distinct.size > names.length * 0.9, `${distinct.size} slots`);
      // And the scripts, whose declared keys must share a slot, run for them.
      await using io = await ioredisCluster(cluster);
      for (const name of names.filter((_, i) => i % 8 === 0)) {
        await using lock = await Lock.acquire(io.client, name, {
          fencing: true,
        });
        assert.equal(lock.fence, 1);
      }
    },
  );

  for (const connect of CONNECTS) {
    await t.step(
      labelOf(connect) +
        ": acquire, extend, release and fencing on every master, keys on the lock's master",
      async () => {
        await using io = await connect(cluster);
        const masters = await cluster.masters();
        assert.equal(masters.length, 3);
        for (const master of masters) {
          const name = await nameOn(cluster, master, `basic-${io.label}`);
          const { fence } = lockKeys("deadbolt:", name);
          const lock = await Lock.acquire(io.client, name, {
            fencing: true,
            ttl: 5_000,
          });
          assert.equal(await cluster.masterFor(lock.key), master);
          await assertOnOwner(cluster, lock.key, lock.token);
          await assertOnOwner(cluster, fence, "1");
          assert.equal(lock.fence, 1);
          assert.equal(await Lock.tryAcquire(io.client, name), null);
          const before = Number(await master.send("PTTL", lock.key));
          assert.equal(await lock.extend(20_000), true);
          assert.ok(
            Number(await master.send("PTTL", lock.key)) > before + 5_000,
          );
          assert.equal(await lock.release(), true);
          await assertOnOwner(cluster, lock.key, null);
          await assertOnOwner(cluster, fence, "1");
          await using again = await Lock.acquire(io.client, name, {
            fencing: true,
          });
          assert.equal(again.fence, 2);
          assert.equal(lock.signal.aborted, false);
        }
      },
    );
  }

  for (const connect of CONNECTS) {
    await t.step(
      labelOf(connect) +
        ": waiters on two clients each get the lock in turn, never two at once, fences rising",
      async () => {
        await using first = await connect(cluster);
        await using second = await connect(cluster);
        const name = `contended-${first.label}`;
        let inside = 0;
        let lastFence = 0;
        const grants: number[] = [];
        await Promise.all(
          Array.from({ length: 6 }, async (_, worker) => {
            const { client } = worker % 2 ? second : first;
            for (let round = 0; round < 3; round++) {
              const lock = await Lock.acquire(client, name, {
                fencing: true,
                ttl: 2_000,
                timeout: 30_000,
              });
              inside++;
              assert.equal(inside, 1, "two holders at once");
              assert.ok(
                lock.fence! > lastFence,
                `fence ${lock.fence} after ${lastFence}`,
              );
              lastFence = lock.fence!;
              grants.push(worker);
              await sleep(2);
              assert.equal(lock.signal.aborted, false);
              inside--;
              assert.equal(await lock.release(), true);
            }
          }),
        );
        assert.equal(grants.length, 18);
        assert.equal(lastFence, 18);
      },
    );
  }

  for (const connect of CONNECTS) {
    await t.step(
      labelOf(connect) +
        ": a waiter is woken by a sharded message on the lock's shard, not by a broadcast",
      async () => {
        await using holderClient = await connect(cluster);
        await using waiterClient = await connect(cluster);
        const name = `wake-${holderClient.label}`;
        const { released } = lockKeys("deadbolt:", name);
        const holder = await Lock.acquire(holderClient.client, name, {
          ttl: 30_000,
        });
        const owner = await cluster.masterFor(holder.key);
        const shard = [owner, ...await cluster.replicasOf(owner)];
        const cancel = new AbortController();
        await withSlowBackoff(async () => {
          // Backoff bound 2 s and pinned jitter: its next try is ~2 s away.
          const waiting = Lock.acquire(waiterClient.client, name, {
            retryDelay: 2_000,
            maxRetryDelay: 2_000,
            timeout: 20_000,
            signal: cancel.signal,
          });
          const settled = waiting.then(
            (lock) => ({ lock, at: performance.now() }),
            (error) => ({ error, at: performance.now() }),
          );
          try {
            const shardSubscribers = async () => {
              let count = 0;
              for (const node of shard) {
                const [, n] = await node.send(
                  "PUBSUB",
                  "SHARDNUMSUB",
                  released,
                ) as [string, number];
                count += n;
              }
              return count;
            };
            await until(
              async () => await shardSubscribers() >= 1,
              5_000,
              `a sharded subscription to ${released} on the lock's shard`,
            );
            for (const node of cluster.nodes) {
              const [, global] = await node.send(
                "PUBSUB",
                "NUMSUB",
                released,
              ) as [string, number];
              assert.equal(global, 0, `plain subscribers on ${node.port}`);
            }
            const releasedAt = performance.now();
            assert.equal(await holder.release(), true);
            const result = await within(settled, 5_000, "the waiter's grant");
            if ("error" in result) throw result.error;
            await using _lock = result.lock;
            const took = result.at - releasedAt;
            assert.ok(
              took < 500,
              `granted ${took.toFixed(0)} ms after release`,
            );
          } finally {
            cancel.abort();
            await settled;
          }
        });
        // The waiter's subscription ends with its wait.
        await until(
          async () =>
            (await owner.send("PUBSUB", "SHARDNUMSUB", released) as [
              string,
              number,
            ])[1] === 0,
          5_000,
          "the unsubscription",
        );
      },
    );
  }
});

Deno.test("Lock stays correct while the slot of a held or contended lock migrates to another master", async (t) => {
  await using cluster = await startCluster();

  for (const connect of CONNECTS) {
    await t.step(
      labelOf(connect) +
        ": the holder extends through ASK and MOVED, releases, and the fence counter moves along",
      async () => {
        await using io = await connect(cluster);
        const name = `moving-${io.label}`;
        const { fence } = lockKeys("deadbolt:", name);
        const lock = await Lock.acquire(io.client, name, {
          fencing: true,
          ttl: 5_000,
        });
        const [slot] = await cluster.keyslots([lock.key]);
        const from = await cluster.masterFor(lock.key);
        const to = (await cluster.masters()).find((m) => m !== from)!;
        const extended: boolean[] = [];
        const ask = await errorCount(cluster, "ASK");
        await cluster.migrateSlot(slot, to, {
          batch: 1,
          // The keys move one at a time: extend before each move…
          beforeBatch: async () => void extended.push(await lock.extend()),
          // …and once both sit on the target, before it owns the slot (ASK).
          beforeCommit: async () => void extended.push(await lock.extend()),
        });
        assert.deepEqual(extended, [true, true, true]);
        assert.ok(
          await errorCount(cluster, "ASK") > ask,
          "no ASK was answered",
        );
        assert.equal(await cluster.masterFor(lock.key), to);
        await assertOnOwner(cluster, lock.key, lock.token);
        await assertOnOwner(cluster, fence, "1");
        assert.equal(await lock.extend(), true); // MOVED, then the new master
        assert.equal(await lock.release(), true);
        assert.equal(lock.signal.aborted, false);
        await assertOnOwner(cluster, lock.key, null);
        await using next = await Lock.acquire(io.client, name, {
          fencing: true,
        });
        assert.equal(next.fence, 2);
      },
    );
  }

  for (const connect of CONNECTS) {
    await t.step(
      labelOf(connect) +
        ": a release sent while the slot is half-moved completes once the move does",
      async () => {
        await using io = await connect(cluster);
        const name = `release-moving-${io.label}`;
        const lock = await Lock.acquire(io.client, name, { ttl: 10_000 });
        const [slot] = await cluster.keyslots([lock.key]);
        const from = await cluster.masterFor(lock.key);
        const to = (await cluster.masters()).find((m) => m !== from)!;
        let releasing: Promise<boolean | Error> | undefined;
        await cluster.migrateSlot(slot, to, {
          beforeCommit: async () => {
            // Both keys are on the target, the slot not yet: Redis answers
            // TRYAGAIN to the release's two keys (lock, channel) until it is.
            const refused = await errorCount(cluster, "TRYAGAIN");
            let settled = false;
            releasing = lock.release().catch((error) => error)
              .finally(() => settled = true);
            await until(
              async () =>
                settled || await errorCount(cluster, "TRYAGAIN") > refused,
              5_000,
              "the release's first answer",
            );
          },
        });
        // node-redis does not retry TRYAGAIN (ioredis does, 16 times 100 ms
        // apart, then gives up): deadbolt retries it until the move is done.
        assert.equal(await releasing, true);
        await assertOnOwner(cluster, lock.key, null);
      },
    );
  }

  for (const connect of CONNECTS) {
    await t.step(
      labelOf(connect) +
        ": waiters keep their turns while the slot moves: no double grant, no lost release",
      async () => {
        await using resource = await startRedis();
        await using register = await resource.connect();
        await using first = await connect(cluster);
        await using second = await connect(cluster);
        const name = `contended-moving-${first.label}`;
        const registerKey = "register";
        const events: Event[] = [];
        const errors: unknown[] = [];
        let inside = 0;
        let overlaps = 0;
        let grants = 0;
        const started = Promise.withResolvers<void>();
        const workers = Array.from({ length: 6 }, async (_, worker) => {
          const { client } = worker % 2 ? second : first;
          const proc = `w${worker}`;
          for (let round = 0; round < 5; round++) {
            let lock: Lock;
            try {
              lock = await Lock.acquire(client, name, {
                fencing: true,
                ttl: 3_000,
                timeout: 30_000,
              });
            } catch (error) {
              errors.push(error);
              continue;
            }
            if (++inside > 1) overlaps++;
            if (++grants === 3) started.resolve();
            try {
              const fence = lock.fence!;
              events.push({
                proc,
                op: "write",
                type: "invoke",
                t: sharedNow(),
                fence,
                key: registerKey,
                value: fence,
              });
              const applied = await fencedWrite(
                register,
                registerKey,
                fence,
                fence,
              );
              events.push({
                proc,
                op: "write",
                type: applied ? "ok" : "fail",
                t: sharedNow(),
                fence,
                key: registerKey,
              });
              if (lock.signal.aborted) errors.push(lock.signal.reason);
            } finally {
              inside--;
            }
            await lock.release().catch((error) => errors.push(error));
          }
        });
        let finished = false;
        const done = Promise.all(workers).finally(() => finished = true);
        await within(
          Promise.race([started.promise, done]),
          10_000,
          "three grants",
        );
        const [slot] = await cluster.keyslots([
          lockKeys("deadbolt:", name).lock,
        ]);
        const from = await cluster.masterFor(lockKeys("deadbolt:", name).lock);
        const to = (await cluster.masters()).find((m) => m !== from)!;
        // At each step of the move, wait until a lock call met the half-moved
        // slot (TRYAGAIN), so the waiters really contend through it.
        const trafficMeetsMove = async () => {
          const refused = await errorCount(cluster, "TRYAGAIN");
          await until(
            async () =>
              finished || await errorCount(cluster, "TRYAGAIN") > refused,
            5_000,
            "a lock call during the move",
          );
        };
        await cluster.migrateSlot(slot, to, {
          batch: 1,
          beforeBatch: trafficMeetsMove,
          beforeCommit: trafficMeetsMove,
        });
        await within(done, 60_000, "every waiter's five turns");
        // An acquire or release that meets the half-moved slot is answered
        // TRYAGAIN and retried (see the step above).
        assert.deepEqual(errors.map(String), []);
        assert.equal(overlaps, 0);
        assert.equal(grants, 30);
        const { applied } = await readRegister(register, registerKey);
        const verdict = checkFencedRegister(events, {
          key: registerKey,
          applied,
        });
        assert.ok(verdict.ok, JSON.stringify(verdict.violations));
        assert.equal(verdict.accepted, 30);
        assert.equal(
          await cluster.masterFor(lockKeys("deadbolt:", name).lock),
          to,
        );
      },
    );
  }
});

/** Records when `lock.signal` aborts, for comparing with `validUntil`. */
function lossClock(lock: Lock): { at: number | undefined } {
  const clock: { at: number | undefined } = { at: undefined };
  lock.signal.addEventListener("abort", () => clock.at = performance.now(), {
    once: true,
  });
  return clock;
}

/**
 * Renews `lock` until Redis answers (the client may still be finding the
 * new master): true when renewed, false when the loss was signalled.
 */
async function renewAfterFailover(lock: LockHandle): Promise<boolean> {
  return await within(
    (async () => {
      for (;;) {
        if (lock.signal.aborted) return false;
        try {
          return await lock.extend();
        } catch {
          await sleep(50);
        }
      }
    })(),
    20_000,
    "an answer to the holder's renewal",
  );
}

/**
 * Tries for the lock every 50 ms until stopped, and records whether the
 * holder's signal had aborted at the moment of any grant.
 */
function contend(client: RedisClient, name: string, holder: Lock) {
  const stop = new AbortController();
  const result: { lock?: Lock; holderAborted?: boolean } = {};
  const running = (async () => {
    while (!stop.signal.aborted) {
      const lock = await Lock.tryAcquire(client, name, {
        fencing: true,
        commandTimeout: 1_000,
      }).catch(() => null);
      if (lock) {
        result.lock = lock;
        result.holderAborted = holder.signal.aborted;
        return;
      }
      await sleep(50);
    }
  })();
  return {
    result,
    /** Resolves once it got the lock, or was stopped. */
    done: running,
    async stop() {
      stop.abort();
      await running;
    },
  };
}

const failoverStep = (name: string, fn: () => Promise<void>) => ({
  name,
  fn,
  // A killed node's admin connection is reopened in a step and closed with
  // the cluster; the test itself still checks for leaks.
  sanitizeResources: false,
  sanitizeOps: false,
});

Deno.test("Lock survives the kill of its master on the promoted replica, or signals the loss; never a second owner beside an unsignalled holder", async (t) => {
  await using cluster = await startCluster();
  const masters = await cluster.masters();
  // A lease longer than the failover usually survives it; a shorter one
  // runs out while the cluster elects the replica.
  const cases = [
    { connect: ioredisCluster, ttl: 6_000 },
    { connect: nodeRedisCluster, ttl: 6_000 },
    { connect: ioredisCluster, ttl: 1_000 },
  ];
  for (const [index, { connect, ttl }] of cases.entries()) {
    await t.step(failoverStep(`${labelOf(connect)}, ttl ${ttl}`, async () => {
      await using io = await connect(cluster);
      await using other = await ioredisCluster(cluster);
      const master = masters[index];
      const name = await nameOn(cluster, master, `killed-${io.label}-${ttl}`);
      const holder = await Lock.acquire(io.client, name, {
        fencing: true,
        ttl,
      });
      const lost = lossClock(holder);
      await cluster.synced(master);
      const contender = contend(other.client, name, holder);
      try {
        const promoted = await cluster.kill(master);
        if (await renewAfterFailover(holder)) {
          // Survived: the replica had the key, and the holder still owns it.
          assert.equal(await promoted.send("GET", holder.key), holder.token);
          assert.equal(await promoted.send("GET", `${holder.key}:fence`), "1");
          assert.equal(contender.result.lock, undefined);
          await contender.stop();
          assert.equal(await holder.release(), true);
          await using next = await Lock.acquire(other.client, name, {
            fencing: true,
            timeout: 15_000,
          });
          // Rising, not necessarily by one: a contender's attempt abandoned
          // during the failover may land later, take a fence and be undone.
          assert.ok(next.fence! > holder.fence!, `fence ${next.fence}`);
        } else {
          // Lost: said in time, and nobody got it before it was said.
          assert.ok(holder.signal.reason instanceof LockLostError);
          assert.ok(lost.at! <= holder.validUntil);
          await within(contender.done, 20_000, "a new owner");
          assert.equal(contender.result.holderAborted, true);
          assert.ok(contender.result.lock!.fence! > holder.fence!);
        }
      } finally {
        await contender.stop();
        await contender.result.lock?.release().catch(() => false);
        await holder.release().catch(() => false);
      }
    }));
  }
});

Deno.test("Lock on a promoted replica that missed the lock's write: a second owner gets it and the fence repeats, the first is told before validUntil (documented)", async () => {
  await using cluster = await startCluster();
  await using io = await ioredisCluster(cluster);
  await using other = await ioredisCluster(cluster);
  const [master] = await cluster.masters();
  const replica = await cluster.replicaOf(master);
  const name = await nameOn(cluster, master, "lagging");
  // Freeze the replica and cut its link, so the lock's writes reach only
  // the master, which then dies.
  replica.signal("SIGSTOP");
  let frozen = true;
  try {
    await master.send("CLIENT", "KILL", "TYPE", "replica");
    const holder = await Lock.acquire(io.client, name, {
      fencing: true,
      ttl: 6_000,
      commandTimeout: 500,
    });
    const lost = lossClock(holder);
    const promoted = await cluster.kill(master, {
      onKilled: () => {
        replica.signal("SIGCONT");
        frozen = false;
      },
    });
    assert.equal(promoted, replica);
    assert.equal(await promoted.send("EXISTS", holder.key), 0);
    // The failover non-promise, made visible: a second owner, same fence.
    await using second = await within(
      Lock.acquire(other.client, name, { fencing: true, timeout: 15_000 }),
      20_000,
      "the second acquire",
    );
    assert.equal(second.fence, holder.fence);
    // The first holder learns it at its next renewal, before validUntil.
    await abortedAt(holder.signal, 10_000);
    assert.ok(holder.signal.reason instanceof LockLostError);
    assert.ok(lost.at! <= holder.validUntil);
    // Its release leaves the new owner's key alone.
    assert.equal(await holder.release().catch(() => false), false);
    assert.equal(await promoted.send("GET", second.key), second.token);
  } finally {
    if (frozen) replica.signal("SIGCONT");
  }
});

Deno.test("Lock with waitReplicas: 1 on a cluster waits for the replica of the lock's own master, so the key survives a kill of that master", async (t) => {
  await using cluster = await startCluster();
  const masters = await cluster.masters();
  for (const [index, connect] of CONNECTS.entries()) {
    await t.step(failoverStep(labelOf(connect), async () => {
      await using io = await connect(cluster);
      await using other = await ioredisCluster(cluster);
      const master = masters[index];
      const replica = await cluster.replicaOf(master);
      const name = await nameOn(cluster, master, `replicated-${io.label}`);
      const key = lockKeys("deadbolt:", name).lock;
      // The other masters' replicas are fine: a WAIT sent to any of them
      // would count one replica and let this acquire through.
      replica.signal("SIGSTOP");
      try {
        const error = await Lock.acquire(io.client, name, {
          waitReplicas: 1,
          replicaTimeout: 300,
        }).then(() => assert.fail("acquired without the replica"), (e) => e);
        assert.ok(error instanceof LockReplicationError, String(error));
        await until(
          async () => await master.send("EXISTS", key) === 0,
          5_000,
          "the unacknowledged key's removal",
        );
      } finally {
        replica.signal("SIGCONT");
      }
      await cluster.ready();

      const holder = await Lock.acquire(io.client, name, {
        waitReplicas: 1,
        fencing: true,
        ttl: 10_000,
      });
      try {
        // No synced() here: WAIT already guaranteed the replica has it.
        const promoted = await cluster.kill(master);
        assert.equal(promoted, replica);
        assert.equal(await promoted.send("GET", holder.key), holder.token);
        assert.equal(await promoted.send("GET", `${holder.key}:fence`), "1");
        assert.equal(await renewAfterFailover(holder), true);
        assert.equal(await Lock.tryAcquire(other.client, name), null);
        assert.equal(await holder.release(), true);
        await using next = await Lock.acquire(other.client, name, {
          fencing: true,
        });
        assert.equal(next.fence, 2);
      } finally {
        await holder.release().catch(() => false);
      }
    }));
  }
});

Deno.test("Lock survives a manual failover (CLUSTER FAILOVER, and TAKEOVER) of its master", async (t) => {
  await using cluster = await startCluster();
  let shard = 0;
  for (const connect of CONNECTS) {
    for (const mode of [undefined, "TAKEOVER"] as const) {
      await t.step(
        failoverStep(
          `${labelOf(connect)}, CLUSTER FAILOVER ${mode ?? "(coordinated)"}`,
          async () => {
            await using io = await connect(cluster);
            await using other = await ioredisCluster(cluster);
            const master = (await cluster.masters())[shard++ % 3];
            const replica = await cluster.replicaOf(master);
            const name = await nameOn(
              cluster,
              master,
              `manual-${io.label}-${mode}`,
            );
            const holder = await Lock.acquire(io.client, name, {
              fencing: true,
              ttl: 6_000,
            });
            // A coordinated failover waits for the replica to catch up; a
            // takeover does not, so let it catch up first.
            if (mode) await cluster.synced(master);
            await cluster.failover(replica, mode);
            assert.equal(await cluster.masterFor(holder.key), replica);
            assert.equal(await replica.send("GET", holder.key), holder.token);
            assert.equal(await renewAfterFailover(holder), true);
            assert.equal(await Lock.tryAcquire(other.client, name), null);
            assert.equal(holder.signal.aborted, false);
            assert.equal(await holder.release(), true);
            await using next = await Lock.acquire(other.client, name, {
              fencing: true,
            });
            assert.equal(next.fence, 2);
          },
        ),
      );
    }
  }
});

Deno.test("Semaphore permits and read-write holds renew through ASK and MOVED while their slot migrates, and release on the new master", async (t) => {
  await using cluster = await startCluster();
  for (const connect of CONNECTS) {
    await t.step(labelOf(connect), async () => {
      await using io = await connect(cluster);
      const name = `family-moving-${io.label}`;
      const permit = await Semaphore.acquire(io.client, name, {
        limit: 2,
        fencing: true,
        ttl: 5_000,
      });
      const rw = new ReadWriteLock(io.client, name, { ttl: 5_000 });
      const reader = await rw.read();
      // The semaphore's and the read-write lock's keys share the name's slot.
      const [slot, rwSlot] = await cluster.keyslots([permit.key, reader.key]);
      assert.equal(slot, rwSlot);
      const from = await cluster.masterFor(permit.key);
      const to = (await cluster.masters()).find((m) => m !== from)!;
      const extended: boolean[] = [];
      const extendBoth = async () => {
        extended.push(await permit.extend(), await reader.extend());
      };
      await cluster.migrateSlot(slot, to, {
        batch: 1,
        beforeBatch: extendBoth,
        beforeCommit: extendBoth,
      });
      assert.ok(extended.length >= 4);
      assert.deepEqual(extended.filter((ok) => !ok), [], "a renewal failed");
      assert.equal(await cluster.masterFor(permit.key), to);
      assert.equal(await permit.extend(), true); // MOVED, then the new master
      assert.equal(await reader.release(), true);
      await using writer = await rw.write({ timeout: 5_000 });
      assert.ok(writer.held);
      assert.equal(await permit.release(), true);
      assert.equal(permit.signal.aborted, false);
      assert.equal(reader.signal.aborted, false);
      await using next = await Semaphore.acquire(io.client, name, {
        limit: 1,
        fencing: true,
      });
      assert.equal(next.fence, 2);
    });
  }
});

Deno.test("Semaphore permits, read and write holds and multi-locks survive a coordinated failover of their master: renewed on the promoted replica, still exclusive, fences move on", async (t) => {
  await using cluster = await startCluster();
  let shard = 0;
  for (const connect of CONNECTS) {
    await t.step(
      failoverStep(labelOf(connect), async () => {
        await using io = await connect(cluster);
        await using other = await ioredisCluster(cluster);
        const master = (await cluster.masters())[shard++ % 3];
        const replica = await cluster.replicaOf(master);
        const name = await nameOn(
          cluster,
          master,
          `family-failover-${io.label}`,
        );
        const options = { fencing: true, ttl: 6_000 };
        const permit = await Semaphore.acquire(io.client, name, {
          ...options,
          limit: 1,
        });
        const writer = await ReadWriteLock.write(io.client, name, options);
        // A reader, and a multi-lock of two names, on the same master.
        const readName = await nameOn(cluster, master, `read-${name}`);
        const reader = await ReadWriteLock.read(io.client, readName, options);
        const names = [
          await nameOn(cluster, master, `multi-a-${name}`),
          await nameOn(cluster, master, `multi-b-${name}`),
        ];
        const set = await MultiLock.acquire(io.client, names, { ttl: 6_000 });
        await cluster.failover(replica);
        assert.equal(await cluster.masterFor(permit.key), replica);
        assert.equal(await cluster.masterFor(writer.key), replica);
        for (const hold of [permit, writer, reader, set]) {
          assert.equal(await renewAfterFailover(hold), true);
        }
        assert.equal(
          await new ReadWriteLock(other.client, readName).writer()
            .tryAcquire(),
          false,
          "a writer beside the reader",
        );
        for (const lockName of names) {
          assert.equal(
            await Lock.tryAcquire(other.client, lockName),
            null,
            "a lock of the set taken beside it",
          );
        }
        assert.equal(
          await Semaphore.tryAcquire(other.client, name, { limit: 1 }),
          null,
        );
        assert.equal(
          await new ReadWriteLock(other.client, name).reader().tryAcquire(),
          false,
        );
        for (const hold of [permit, writer, reader, set]) {
          assert.equal(hold.signal.aborted, false);
          assert.equal(await hold.release(), true);
        }
        await using next = await Semaphore.acquire(other.client, name, {
          limit: 1,
          fencing: true,
        });
        assert.equal(next.fence, 2);
      }),
    );
  }
});
