/**
 * Runs another runtime's test command (node --test, bun test) against a
 * redis-server this suite started, for `node_test.ts` and `bun_test.ts`;
 * `startAgainst` runs a script the test talks to while it runs;
 * `startSpareServers` starts the servers their fault cases kill or stop.
 *
 * @module
 */

import { SPARE_SERVERS_ENV } from "./_core_cases.ts";
import { startRedis } from "./_redis.ts";

/** The repository's root, where the other runtimes run. */
export const ROOT = decodeURIComponent(
  new URL("../", import.meta.url).pathname,
);

const RUN_TIMEOUT_MS = 120_000;
const NODE_MAJOR = 24;

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
 * Node >= 24 (which strips types and parses `await using`): `node` on PATH
 * if it is recent enough, else the repo's `node_modules/.bin/node`, else
 * `undefined`.
 */
export async function recentNode(): Promise<string | undefined> {
  const recent = (version: string | undefined) =>
    Number(/^v(\d+)\./.exec(version ?? "")?.[1] ?? 0) >= NODE_MAJOR;
  if (recent(await versionOf("node"))) return "node";
  const local = `${ROOT}node_modules/.bin/node`;
  return recent(await versionOf(local)) ? local : undefined;
}

/** Options of `runAgainst` and `startAgainst`. */
export interface RunOptions {
  /** More environment variables for the child. */
  env?: Record<string, string>;
}

/** `command args…` in the root, with the server's port in the environment. */
function childCommand(
  port: number,
  command: string,
  args: string[],
  options: RunOptions,
  signal?: AbortSignal,
): Deno.Command {
  return new Deno.Command(command, {
    args,
    cwd: ROOT,
    env: {
      DEADBOLT_TEST_REDIS_PORT: String(port),
      NO_COLOR: "1",
      ...options.env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal,
  });
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
  options: RunOptions = {},
): Promise<{ code: number; log: string }> {
  const kill = new AbortController();
  const timer = setTimeout(() => kill.abort(), RUN_TIMEOUT_MS);
  const output = await childCommand(port, command, args, options, kill.signal)
    .output().finally(() => clearTimeout(timer));
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return {
    code: output.code,
    log: `$ ${[command, ...args].join(" ")}\n` +
      `${decode(output.stdout)}${decode(output.stderr)}`,
  };
}

/** How a child started by `startAgainst` ended. */
export interface ChildResult {
  /** Its exit code (137 when killed). */
  code: number;
  /** Whether it was killed for not exiting in time. */
  killed: boolean;
  /** What it printed on stdout. */
  stdout: string;
  /** What it printed on stderr. */
  stderr: string;
  /** The command line and both streams, for assertion messages. */
  log: string;
}

/** A child started by `startAgainst`; dispose kills it if it still runs. */
export interface RunningChild extends AsyncDisposable {
  /** Resolves once the child has printed `line`; rejects if it exits first or after `ms`. */
  waitForLine(line: string, ms: number): Promise<void>;
  /** Awaits its exit, killing it (SIGKILL) if it runs `ms` longer. */
  finish(ms: number): Promise<ChildResult>;
}

/**
 * Starts `command args…` like `runAgainst`, for a test that acts while the
 * child runs: it reads the child's stdout lines, then awaits its exit.
 */
export function startAgainst(
  port: number,
  command: string,
  args: string[],
  options: RunOptions = {},
): RunningChild {
  const child = childCommand(port, command, args, options).spawn();
  let stdout = "";
  let stderr = "";
  let printed = Promise.withResolvers<void>();
  const read = async (
    stream: ReadableStream<Uint8Array>,
    add: (text: string) => void,
  ) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      add(text);
      printed.resolve();
      printed = Promise.withResolvers<void>();
    }
  };
  let ended = false;
  const exited = Promise.all([
    read(child.stdout, (text) => stdout += text),
    read(child.stderr, (text) => stderr += text),
    child.status,
  ]).then(([, , status]) => {
    ended = true;
    return status;
  });
  let killed = false;
  const kill = () => {
    if (ended) return;
    try {
      child.kill("SIGKILL");
      killed = true;
    } catch {
      // It exited meanwhile.
    }
  };
  const log = () => `$ ${[command, ...args].join(" ")}\n${stdout}${stderr}`;
  const finish = async (ms: number): Promise<ChildResult> => {
    const timer = setTimeout(kill, ms);
    const { code } = await exited.finally(() => clearTimeout(timer));
    return { code, killed, stdout, stderr, log: log() };
  };
  return {
    async waitForLine(line, ms) {
      let late = false;
      const { promise: timeUp, resolve } = Promise.withResolvers<void>();
      const timer = setTimeout(() => {
        late = true;
        resolve();
      }, ms);
      try {
        while (!stdout.split("\n").includes(line)) {
          if (ended || late) {
            throw new Error(
              `the child ${
                ended ? "exited" : `ran ${ms} ms`
              } without printing '${line}':\n${log()}`,
            );
          }
          await Promise.race([printed.promise, exited, timeUp]);
        }
      } finally {
        clearTimeout(timer);
      }
    },
    finish,
    async [Symbol.asyncDispose]() {
      await finish(0);
    },
  };
}

/** redis-servers for another runtime's fault cases; dispose stops them. */
export interface SpareServers extends AsyncDisposable {
  /** The environment variable that names them to the runner (`port:pid,…`). */
  readonly env: Record<string, string>;
}

/**
 * Starts `count` redis-servers for the fault cases of `tests/_core_cases.ts`
 * run under Node or Bun (one per fault case and client: each is killed or
 * stopped), to pass to `runAgainst` as `env`.
 */
export async function startSpareServers(count: number): Promise<SpareServers> {
  const started = await Promise.allSettled(
    Array.from({ length: count }, () => startRedis()),
  );
  const servers = started.flatMap((result) =>
    result.status === "fulfilled" ? [result.value] : []
  );
  const stop = async () => {
    await Promise.all(servers.map((server) => server.stop()));
  };
  const failed = started.find((result) => result.status === "rejected");
  if (failed) {
    await stop();
    throw (failed as PromiseRejectedResult).reason;
  }
  return {
    env: {
      [SPARE_SERVERS_ENV]: servers.map(({ port, pid }) => `${port}:${pid}`)
        .join(","),
    },
    [Symbol.asyncDispose]: stop,
  };
}
