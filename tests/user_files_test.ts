import assert from "node:assert/strict";
import { startRedis } from "./_redis.ts";
import { runAgainst } from "./_runtime.ts";

/** What `deno test` reported for a user's file. */
interface Outcome {
  code: number;
  passed: number;
  failed: number;
  /** Deno's sanitizer findings: "- A timer was started in this test, …". */
  leaks: string[];
  /** "[ioredis] Unhandled error event: …" and the like. */
  unhandled: string[];
}

/**
 * Runs a user's test file (tests/user/) with `deno test`, as its user
 * would, against the server on `port`, and checks what it reported;
 * `--no-lock` as the files pin ioredis 6.1.0 while deno.lock has 6.0.0.
 */
async function assertDenoTest(
  port: number,
  file: string,
  expected: Pick<Outcome, "passed">,
  env: Record<string, string> = {},
): Promise<void> {
  const { code, log } = await runAgainst(port, Deno.execPath(), [
    "test",
    "--no-lock",
    "--allow-all",
    file,
  ], { env });
  const [, passed = -1, failed = -1] =
    /^(?:ok|FAILED) \| (\d+) passed \| (\d+) failed/m.exec(log)?.map(Number) ??
      [];
  const outcome: Outcome = {
    code,
    passed,
    failed,
    leaks: log.match(/^\s+- .+(?:started|opened).*$/gm) ?? [],
    unhandled: log.match(/^.*Unhandled.*$/gm) ?? [],
  };
  assert.deepEqual(
    outcome,
    { code: 0, failed: 0, leaks: [], unhandled: [], ...expected },
    `deno test gave ${JSON.stringify(outcome, null, 2)}\n${log}`,
  );
}

Deno.test("a user's sanitized Deno tests of contended locks find no timer left by deadbolt (ioredis 6 on Deno)", async () => {
  await using server = await startRedis();
  await assertDenoTest(server.port, "tests/user/ioredis_sanitizers.user.ts", {
    passed: 51, // 50 rounds, then the test that closes the clients
  });
});

Deno.test("a user's sanitized Deno test whose server dies mid-wait finds no timer left by deadbolt (ioredis 6 on Deno)", async () => {
  // The user's file kills this server.
  await using server = await startRedis();
  await assertDenoTest(
    server.port,
    "tests/user/ioredis_server_dies.user.ts",
    { passed: 1 },
    { DEADBOLT_TEST_REDIS_PID: String(server.pid) },
  );
});

Deno.test("waiters arriving one after another on a new client are all woken by a release, with no unhandled error event (ioredis 5 on Deno)", async () => {
  await using server = await startRedis();
  await assertDenoTest(server.port, "tests/user/ioredis_many_waiters.user.ts", {
    passed: 6, // 5 rounds, then the test that closes the holder's client
  });
});
