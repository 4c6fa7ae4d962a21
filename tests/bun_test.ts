import assert from "node:assert/strict";
import { CORE_CASES } from "./_core_cases.ts";
import { startRedis } from "./_redis.ts";

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname);
// The "./" makes bun take them as paths, not as name filters.
const BUN_TESTS = ["./tests/bun/core.bun.ts", "./tests/bun/clients.bun.ts"];
const BUN_VERSION = "1.4.5";
const RUN_TIMEOUT_MS = 120_000;

/** Whether `command --version` runs at all (false when it is not found). */
async function runs(command: string): Promise<boolean> {
  try {
    const { success } = await new Deno.Command(command, {
      args: ["--version"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/**
 * The command that runs Bun, in this order: `bun` on PATH (a developer's
 * install), then the repo's `node_modules/.bin/bun` (CI's `npm install bun`),
 * then `npx --yes bun@<BUN_VERSION>`, which fetches it from the npm registry.
 */
async function findBun(): Promise<string[]> {
  if (await runs("bun")) return ["bun"];
  const local = `${ROOT}node_modules/.bin/bun`;
  if (await runs(local)) return [local];
  return ["npx", "--yes", `bun@${BUN_VERSION}`];
}

Deno.test("Lock passes the core cases and works with Bun's built-in RedisClient under bun test", async () => {
  await using server = await startRedis();
  const [bun, ...prefix] = await findBun();
  const kill = new AbortController();
  const timer = setTimeout(() => kill.abort(), RUN_TIMEOUT_MS);
  const output = await new Deno.Command(bun, {
    args: [...prefix, "test", ...BUN_TESTS],
    cwd: ROOT,
    env: { DEADBOLT_TEST_REDIS_PORT: String(server.port), NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: kill.signal,
  }).output().finally(() => clearTimeout(timer));
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  // bun test reports on stderr; both streams go into the failure message.
  const log = `$ ${[bun, ...prefix, "test", ...BUN_TESTS].join(" ")}\n` +
    `${decode(output.stdout)}${decode(output.stderr)}`;
  assert.equal(output.code, 0, `bun test failed:\n${log}`);
  const passed = Number(/^\s*(\d+) pass$/m.exec(log)?.[1] ?? 0);
  const ran = Number(/^Ran (\d+) tests? across/m.exec(log)?.[1] ?? -1);
  assert.equal(passed, ran, `bun test passed ${passed} of ${ran}:\n${log}`);
  assert.ok(passed > CORE_CASES.length, `bun test ran too few tests:\n${log}`);
  assert.match(log, /^\s*0 fail$/m, `bun test reported failures:\n${log}`);
});
