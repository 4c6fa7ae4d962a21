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
