import assert from "node:assert/strict";
import { Lock, LockLostError } from "../mod.ts";
import { type RedisServer, startRedis } from "./_redis.ts";
import { DbRedisShape, type RespClient } from "./_resp.ts";
import { type HolderExit, spawnHolder } from "./_holder.ts";

/** One critical section a `counter` holder reported, and which child ran it. */
interface Section {
  child: number;
  fence: number;
  read: number;
  start: number;
  end: number;
  validUntil: number;
}

/** Asserts a holder ended by itself with code 0 and wrote nothing to stderr. */
function assertCleanExit(exit: HolderExit, who: string): void {
  assert.equal(exit.stderr, "", `${who} wrote to stderr`);
  assert.equal(exit.code, 0, `${who} exit code`);
}

/** Polls PTTL until the key is gone; an expiry is a server event we can only observe. */
async function keyGone(side: RespClient, key: string, ms: number) {
  const deadline = performance.now() + ms;
  while (await side.send("PTTL", key) !== -2) {
    assert.ok(
      performance.now() < deadline,
      `${key} still exists after ${ms} ms`,
    );
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** A lock client over its own connection, for the parent's contender. */
async function contender(server: RedisServer) {
  const connection = await server.connect();
  return { client: new DbRedisShape(connection), connection };
}

Deno.test("Lock.acquire() across 8 processes × 200 critical sections loses no update (F1)", async () => {
  const processes = 8, iterations = 200, total = processes * iterations;
  await using server = await startRedis();
  await using side = await server.connect();
  const holders = Array.from(
    { length: processes },
    () => spawnHolder("counter", [server.port, "counter", iterations]),
  );
  let exits: HolderExit[];
  try {
    exits = await Promise.all(holders.map((holder) => holder.exit(60_000)));
  } finally {
    await Promise.all(holders.map((holder) => holder[Symbol.asyncDispose]()));
  }
  exits.forEach((exit, i) => assertCleanExit(exit, `counter child ${i}`));

  assert.equal(await side.send("GET", "counter:count"), String(total));
  const lines = exits.flatMap((exit, child) =>
    exit.rest.map((line) => ({ ...line, child }))
  );
  assert.equal(lines.length, total);
  assert.ok(lines.every((line) => line.event === "section"));
  const sections = lines as unknown as Section[];
  const fences = sections.map((s) => s.fence);
  assert.ok(fences.every(Number.isSafeInteger), "every section has a fence");
  assert.equal(new Set(fences).size, total, "fences are distinct");

  // Clocks of different processes cannot be compared; the counter can. The
  // counter and the fence both start at 0, so a section that read n under
  // the lock was granted (n + 1)-th: fence order is grant order.
  const byFence = sections.toSorted((a, b) => a.fence - b.fence);
  byFence.forEach((s, i) =>
    assert.equal(s.read, s.fence - 1, `section #${i} of ${total}`)
  );
  // A run in which the processes rarely took turns would prove little.
  const handoffs =
    byFence.filter((s, i) => i > 0 && s.child !== byFence[i - 1].child).length;
  assert.ok(handoffs >= 10 * processes, `only ${handoffs} handoffs`);
  // Within one process the monotonic clock orders grants.
  for (let child = 0; child < processes; child++) {
    const own = sections.filter((s) => s.child === child)
      .toSorted((a, b) => a.start - b.start);
    for (let i = 1; i < own.length; i++) {
      assert.ok(own[i].fence > own[i - 1].fence, `child ${child} fences`);
      assert.ok(own[i].start >= own[i - 1].end, `child ${child} overlaps`);
    }
    assert.ok(own.every((s) => s.end < s.validUntil), "ended in the lease");
  }
});

Deno.test("Lock holder paused past its lease by SIGSTOP learns on resume and releases nothing (F3)", async () => {
  const ttl = 300;
  await using server = await startRedis();
  await using side = await server.connect();
  const { client, connection } = await contender(server);
  await using _connection = connection;
  await using a = spawnHolder("pause", [server.port, "paused", ttl]);
  const acquired = await a.next();
  assert.equal(acquired.event, "acquired");
  const key = "deadbolt:{paused}";
  assert.equal(await side.send("GET", key), acquired.token);

  Deno.kill(a.pid, "SIGSTOP");
  let stopped = true;
  try {
    await keyGone(side, key, 5 * ttl);
    await using b = await Lock.acquire(client, "paused", {
      ttl: 10_000,
      timeout: 0,
    });
    Deno.kill(a.pid, "SIGCONT");
    stopped = false;

    const lost = await a.next();
    assert.equal(lost.event, "lost");
    assert.deepEqual(lost.reason, {
      name: "LockLostError",
      message: new LockLostError(
        "paused",
        "its lease ran out before a renewal succeeded",
      ).message,
    });
    assert.equal(lost.held, false);
    assert.equal(lost.extended, false);
    assert.equal(lost.released, false);
    assertCleanExit(await a.exit(), "paused holder");

    assert.equal(await side.send("GET", key), b.token, "A deleted B's key");
    assert.ok(b.held);
    assert.ok(await side.send("PTTL", key) as number > 9_000, "A extended B");
    assert.equal(await b.release(), true);
  } finally {
    // Dispose kills it either way; a stopped child must not outlive a failure.
    if (stopped) Deno.kill(a.pid, "SIGCONT");
  }
  assert.equal(await side.send("EXISTS", key), 0);
});

Deno.test("Lock held by a crashed process frees after its TTL, not before (F2)", async () => {
  const ttl = 500;
  await using server = await startRedis();
  await using side = await server.connect();
  const { client, connection } = await contender(server);
  await using _connection = connection;
  await using child = spawnHolder("crash", [server.port, "crashed", ttl]);
  const acquired = await child.next();
  assert.equal(acquired.event, "acquired");
  const key = "deadbolt:{crashed}";

  Deno.kill(child.pid, "SIGKILL");
  const exit = await child.exit();
  assert.equal(exit.signal, "SIGKILL");
  const pttl = await side.send("PTTL", key) as number;
  const sampled = performance.now();
  assert.ok(pttl > 0 && pttl <= ttl, `PTTL after the kill: ${pttl}`);
  assert.equal(await side.send("GET", key), acquired.token);

  await using waiter = await Lock.acquire(client, "crashed", {
    ttl: 10_000,
    timeout: 3_000,
  });
  const waited = performance.now() - sampled;
  assert.ok(waited >= pttl - 5, `acquired after ${waited} ms, PTTL ${pttl}`);
  assert.ok(waited <= pttl + 300, `acquired after ${waited} ms, PTTL ${pttl}`);
  assert.equal(await side.send("GET", key), waiter.token);
});

Deno.test("Lock forgotten by a process does not keep it alive and produces no unhandled rejection (F28, F29)", async (t) => {
  const ttl = 1_000;
  await using server = await startRedis();
  await using side = await server.connect();

  await t.step(
    "the process exits on its own before the first renewal is due",
    async () => {
      await using child = spawnHolder("forget", [
        server.port,
        "forgotten",
        ttl,
      ]);
      const acquired = await child.next();
      assert.equal(acquired.event, "acquired");
      const since = performance.now();
      const exit = await child.exit();
      const took = performance.now() - since;
      assertCleanExit(exit, "forgetful holder");
      assert.ok(took < 500, `exited ${took} ms after acquiring (ttl ${ttl})`);
      // Not released, so the key outlives the process until its lease ends.
      assert.equal(
        await side.send("GET", "deadbolt:{forgotten}"),
        acquired.token,
      );
    },
  );

  await t.step(
    "renewals that fail with nobody listening lose the lock quietly",
    async () => {
      await using child = spawnHolder("abandon", [
        server.port,
        "abandoned",
        ttl,
        1_500,
      ]);
      assert.equal((await child.next()).event, "acquired");
      const done = await child.next();
      assert.deepEqual(done, {
        event: "done",
        held: false,
        aborted: true,
        reason: {
          name: "LockLostError",
          message: new LockLostError(
            "abandoned",
            "its lease ran out before a renewal succeeded",
          ).message,
        },
      });
      const exit = await child.exit();
      assert.doesNotMatch(exit.stderr, /Uncaught/);
      assertCleanExit(exit, "abandoned holder");
    },
  );
});
