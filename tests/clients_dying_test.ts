import assert from "node:assert/strict";
import { lockKeys } from "../src/keys.ts";
import { type RedisServer, startRedis } from "./_redis.ts";
import { recentNode, startAgainst } from "./_runtime.ts";
import { sleep } from "./_util.ts";

// The waiter's acquire settles within timeout (10 s) + commandTimeout (5 s).
const EXIT_WITHIN_MS = 25_000;

/** Resolves once some connection subscribes to `channel`, plain or sharded. */
async function subscribed(server: RedisServer, channel: string) {
  await using side = await server.connect();
  const deadline = performance.now() + 10_000;
  for (;;) {
    let count = 0;
    for (const kind of ["NUMSUB", "SHARDNUMSUB"]) {
      count += Number(
        (await side.send("PUBSUB", kind, channel) as [
          string,
          number,
        ])[1],
      );
    }
    if (count > 0) return;
    assert.ok(performance.now() < deadline, `nobody subscribed to ${channel}`);
    await sleep(10);
  }
}

for (const client of ["node-redis", "ioredis"]) {
  Deno.test(`a waiter's process survives its Redis server dying mid-wait: acquire rejects and Node exits by itself (${client} 6 on Node 24)`, async () => {
    const node = await recentNode();
    assert.ok(node, "Cannot run Node >= 24: see node_test.ts");
    await using server = await startRedis();
    const name = `server dies ${client}`;
    await using child = startAgainst(server.port, node, [
      "tests/node/server_dies.node.ts",
      client,
      name,
    ]);
    await child.waitForLine("waiting", 10_000);
    await subscribed(server, lockKeys("deadbolt:", name).released);
    server.signal("SIGKILL");

    const { code, killed, stdout, stderr, log } = await child.finish(
      EXIT_WITHIN_MS,
    );
    const outcome = {
      unhandled: stderr.match(/^.*Unhandled.*$/gm) ?? [],
      exitedByItself: !killed,
      code,
      waitEnded: /^result rejected /m.test(stdout),
    };
    assert.deepEqual(
      outcome,
      { unhandled: [], exitedByItself: true, code: 0, waitEnded: true },
      `Node gave ${JSON.stringify(outcome, null, 2)}\n${log}`,
    );
  });
}

for (const client of ["ioredis", "ioredis5", "node-redis", "node-redis5"]) {
  Deno.test(`a wake-up connection called off while it opens is closed at once and keeps nothing open: Node exits by itself (${client} on Node 24)`, async () => {
    const node = await recentNode();
    assert.ok(node, "Cannot run Node >= 24: see node_test.ts");
    await using server = await startRedis();
    await using child = startAgainst(server.port, node, [
      "tests/node/called_off.node.ts",
      client,
    ]);
    const { code, killed, stdout, log } = await child.finish(10_000);
    const slowest = Number(stdout.match(/^slowest (\d+)$/m)?.[1] ?? NaN);
    assert.deepEqual(
      { exitedByItself: !killed, code },
      { exitedByItself: true, code: 0 },
      log,
    );
    // A call-off that waited for the client's own give-up (or deadbolt's
    // 2-3 s bounds) would show here.
    assert.ok(slowest < 500, `a call-off took ${slowest} ms\n${log}`);
  });
}
