/**
 * Runs another runtime's test command (node --test, bun test) against a
 * redis-server this suite started, for `node_test.ts` and `bun_test.ts`.
 *
 * @module
 */

/** The repository's root, where the other runtimes run. */
export const ROOT = decodeURIComponent(
  new URL("../", import.meta.url).pathname,
);

const RUN_TIMEOUT_MS = 120_000;

/** What `command --version` prints, or `undefined` when it does not run. */
export async function versionOf(command: string): Promise<string | undefined> {
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

/**
 * Runs `command args…` in the root with the server's port in
 * `DEADBOLT_TEST_REDIS_PORT`, killed after two minutes; resolves with its
 * exit code and a log of the command line and both output streams.
 */
export async function runAgainst(
  port: number,
  command: string,
  args: string[],
): Promise<{ code: number; log: string }> {
  const kill = new AbortController();
  const timer = setTimeout(() => kill.abort(), RUN_TIMEOUT_MS);
  const output = await new Deno.Command(command, {
    args,
    cwd: ROOT,
    env: { DEADBOLT_TEST_REDIS_PORT: String(port), NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: kill.signal,
  }).output().finally(() => clearTimeout(timer));
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return {
    code: output.code,
    log: `$ ${[command, ...args].join(" ")}\n` +
      `${decode(output.stdout)}${decode(output.stderr)}`,
  };
}
