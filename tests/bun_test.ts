import assert from "node:assert/strict";
import { CORE_CASES } from "./_core_cases.ts";
import { startRedis } from "./_redis.ts";
import { ROOT, runAgainst, versionOf } from "./_runtime.ts";

// The "./" makes bun take them as paths, not as name filters.
const BUN_TESTS = ["./tests/bun/core.bun.ts", "./tests/bun/clients.bun.ts"];
const BUN_VERSION = "1.4.5";

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
  const [bun, ...prefix] = await findBun();
  // bun test reports on stderr; both streams go into the log.
  const { code, log } = await runAgainst(server.port, bun, [
    ...prefix,
    "test",
    ...BUN_TESTS,
  ]);
  assert.equal(code, 0, `bun test failed:\n${log}`);
  const passed = Number(/^\s*(\d+) pass$/m.exec(log)?.[1] ?? 0);
  const ran = Number(/^Ran (\d+) tests? across/m.exec(log)?.[1] ?? -1);
  assert.equal(passed, ran, `bun test passed ${passed} of ${ran}:\n${log}`);
  assert.ok(passed > CORE_CASES.length, `bun test ran too few tests:\n${log}`);
  assert.match(log, /^\s*0 fail$/m, `bun test reported failures:\n${log}`);
});
