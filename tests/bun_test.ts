import assert from "node:assert/strict";
import { CORE_CASES } from "./_core_cases.ts";
import { startRedis } from "./_redis.ts";
import { ROOT, runAgainst, startSpareServers, versionOf } from "./_runtime.ts";

// The "./" makes bun take them as paths, not as name filters.
const BUN_TESTS = ["./tests/bun/core.bun.ts", "./tests/bun/clients.bun.ts"];
const BUN_VERSION = "1.4.5";
/** The tests of tests/bun/clients.bun.ts. */
const CLIENT_TESTS = 4;

/**
 * The command that runs Bun, in this order: `bun` on PATH (a developer's
 * install), then the repo's `node_modules/.bin/bun` (CI's `npm install bun`),
 * then `npx --yes bun@<BUN_VERSION>`, which fetches it from the npm registry.
 */
async function findBun(): Promise<string[]> {
  if (await versionOf("bun") !== undefined) return ["bun"];
  const local = `${ROOT}node_modules/.bin/bun`;
  if (await versionOf(local) !== undefined) return [local];
  return ["npx", "--yes", `bun@${BUN_VERSION}`];
}

Deno.test("Lock passes the core cases and works with Bun's built-in RedisClient under bun test", async () => {
  await using server = await startRedis();
  // Each fault case kills or stops a server of its own.
  await using spares = await startSpareServers(
    CORE_CASES.filter((kase) => kase.needsSpareServer).length,
  );
  const [bun, ...prefix] = await findBun();
  // bun test reports on stderr; both streams go into the log.
  const { code, log } = await runAgainst(server.port, bun, [
    ...prefix,
    "test",
    ...BUN_TESTS,
  ], { env: spares.env });
  assert.equal(code, 0, `bun test failed:\n${log}`);
  const passed = Number(/^\s*(\d+) pass$/m.exec(log)?.[1] ?? 0);
  const ran = Number(/^Ran (\d+) tests? across/m.exec(log)?.[1] ?? -1);
  assert.equal(passed, ran, `bun test passed ${passed} of ${ran}:\n${log}`);
  assert.equal(
    passed,
    CORE_CASES.length + CLIENT_TESTS,
    `bun test ran another number of tests:\n${log}`,
  );
  assert.match(log, /^\s*0 fail$/m, `bun test reported failures:\n${log}`);
});
