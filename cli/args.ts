import { Lock } from "../mod.ts";

// The bounds of a lock's ttl (`LockOptions.ttl`); `--timeout` has the upper one.
const MIN_TTL = 10;
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Bad command-line arguments: `deadbolt` prints the message and exits 64. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Options every command that talks to Redis takes. */
export interface ConnectionArgs {
  /** The lock's name. */
  name: string;
  /** `redis://` or `rediss://` URL. */
  redis: string;
  /** The lock keys' prefix. */
  prefix: string;
  /** Print nothing but errors (and, for `status`, nothing at all). */
  quiet: boolean;
  /** Print what happens, even when stderr is not a terminal. */
  verbose: boolean;
}

/** `deadbolt run <name> [options] -- <command> [args…]`. */
export interface RunArgs extends ConnectionArgs {
  kind: "run";
  /** The lease, in ms. */
  ttl: number;
  /** How long to wait for the lock, in ms: 0 one attempt, Infinity forever. */
  timeout: number;
  /** Grace between SIGTERM and SIGKILL when the lock is lost, in ms. */
  killAfter: number;
  /** Give the command a fencing token in `DEADBOLT_FENCE`. */
  fencing: boolean;
  /** Run the command through `/bin/sh -c`. */
  shell: boolean;
  /** With `--limit`: hold one of this many permits (a semaphore), not the lock. */
  limit?: number;
  /** The command and its arguments: everything after `--`. */
  command: string[];
}

/** `deadbolt status <name>`. */
export interface StatusArgs extends ConnectionArgs {
  kind: "status";
  /** With `--limit`: report the semaphore's permits against this limit. */
  limit?: number;
  /** With `--rw`: report the read-write lock's readers and writer. */
  rw?: boolean;
}

/** `deadbolt release <name> --token <token>`. */
export interface ReleaseArgs extends ConnectionArgs {
  kind: "release";
  /** The holder's token, as the command got it in `DEADBOLT_TOKEN`. */
  token: string;
}

/** `deadbolt top`: the locks under a prefix, live. */
export interface TopArgs {
  kind: "top";
  /** `redis://` or `rediss://` URL: one server, or any node of a Cluster. */
  redis: string;
  /** The lock keys' prefix. */
  prefix: string;
  /** Print one view and exit. */
  once: boolean;
  /** Print JSON (one document per view) instead of a table. */
  json: boolean;
  /** Time between views, in ms. */
  interval: number;
  /** The `COUNT` of each `SCAN` call. */
  scanCount: number;
  /** The most keys one view scans per server. */
  maxKeys: number;
}

/** What the command line asks for. */
export type Args =
  | RunArgs
  | StatusArgs
  | ReleaseArgs
  | TopArgs
  | { kind: "help"; command?: CommandName }
  | { kind: "version" };

/** The subcommands. */
export type CommandName = "run" | "status" | "release" | "top";

const COMMANDS: readonly CommandName[] = ["run", "status", "release", "top"];

/** The default `--redis` when `REDIS_URL` is not set. */
export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379";

// Each option: whether it takes a value, and the commands that accept it.
const OPTIONS: Record<string, { value: boolean; commands: CommandName[] }> = {
  "--redis": { value: true, commands: ["run", "status", "release", "top"] },
  "--prefix": { value: true, commands: ["run", "status", "release", "top"] },
  "--quiet": { value: false, commands: ["run", "status", "release"] },
  "--verbose": { value: false, commands: ["run", "status", "release"] },
  "--ttl": { value: true, commands: ["run"] },
  "--timeout": { value: true, commands: ["run"] },
  "--no-wait": { value: false, commands: ["run"] },
  "--kill-after": { value: true, commands: ["run"] },
  "--fencing": { value: false, commands: ["run"] },
  "--shell": { value: false, commands: ["run"] },
  "--limit": { value: true, commands: ["run", "status"] },
  "--rw": { value: false, commands: ["status"] },
  "--token": { value: true, commands: ["release"] },
  "--once": { value: false, commands: ["top"] },
  "--json": { value: false, commands: ["top"] },
  "--interval": { value: true, commands: ["top"] },
  "--count": { value: true, commands: ["top"] },
  "--max-keys": { value: true, commands: ["top"] },
};
const SHORT: Record<string, string> = {
  "-n": "--no-wait",
  "-q": "--quiet",
  "-v": "--verbose",
  "-h": "--help",
  "-V": "--version",
};

const UNITS: Record<string, number> = {
  "": 1,
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
};

/**
 * Reads a duration as whole milliseconds: a number with an optional unit,
 * `ms`, `s`, `m` or `h` (`500ms`, `30s`, `1.5s`, `2m`), where a bare number
 * is milliseconds.
 *
 * @throws {UsageError} when `text` is not such a duration.
 */
export function parseDuration(option: string, text: string): number {
  const match = /^(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)?$/.exec(text.trim());
  if (!match) {
    throw new UsageError(
      `${option} must be a duration such as 500ms, 30s, 2m or 1h (a bare number is milliseconds): current value is ${
        JSON.stringify(text)
      }`,
    );
  }
  return Math.round(Number(match[1]) * UNITS[match[2] ?? ""]);
}

function inRange(option: string, ms: number, min: number, text: string) {
  if (ms < min || ms > MAX_TIMER_MS) {
    throw new UsageError(
      `${option} must be from ${min} ms to ${MAX_TIMER_MS} ms: current value is ${
        JSON.stringify(text)
      }`,
    );
  }
  return ms;
}

// A semaphore's limit: a whole number from 1 to 2^31 - 1 (`Semaphore`'s).
function parseLimit(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const limit = Number(text);
  if (!/^\d+$/.test(text) || limit < 1 || limit > MAX_TIMER_MS) {
    throw new UsageError(
      `--limit must be a whole number from 1 to ${MAX_TIMER_MS}: current value is ${
        JSON.stringify(text)
      }`,
    );
  }
  return limit;
}

function checkRedisUrl(url: string, source: string): string {
  let protocol: string | undefined;
  try {
    protocol = new URL(url).protocol;
  } catch {
    // Reported below.
  }
  if (protocol !== "redis:" && protocol !== "rediss:") {
    throw new UsageError(
      `${source} must be a redis:// or rediss:// URL: current value is ${
        JSON.stringify(url)
      }`,
    );
  }
  return url;
}

function redisUrl(
  values: Map<string, string>,
  env: Record<string, string | undefined>,
): string {
  return values.has("--redis")
    ? checkRedisUrl(values.get("--redis")!, "--redis")
    : env.REDIS_URL
    ? checkRedisUrl(env.REDIS_URL, "REDIS_URL")
    : DEFAULT_REDIS_URL;
}

// A whole number from `min` to `max`, for --count and --max-keys.
function parseCount(
  option: string,
  text: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    throw new UsageError(
      `${option} must be a whole number from ${min} to ${max}: current value is ${
        JSON.stringify(text)
      }`,
    );
  }
  return value;
}

// `deadbolt top`: no name; a prefix, and how often and how much to scan.
function topArgs(
  name: string | undefined,
  values: Map<string, string>,
  flags: Set<string>,
  env: Record<string, string | undefined>,
): TopArgs {
  if (name !== undefined) {
    throw new UsageError(
      `'top' takes no lock name (it shows every lock under --prefix): remove ${
        JSON.stringify(name)
      }`,
    );
  }
  const prefix = values.get("--prefix") ?? "deadbolt:";
  usage(() => Lock.keys("x", { prefix }));
  const intervalText = values.get("--interval");
  return {
    kind: "top",
    redis: redisUrl(values, env),
    prefix,
    once: flags.has("--once"),
    json: flags.has("--json"),
    interval: intervalText === undefined ? 1_000 : inRange(
      "--interval",
      parseDuration("--interval", intervalText),
      100,
      intervalText,
    ),
    scanCount: parseCount("--count", values.get("--count"), 500, 1, 100_000),
    maxKeys: parseCount(
      "--max-keys",
      values.get("--max-keys"),
      100_000,
      1,
      10_000_000,
    ),
  };
}

function usage<T>(check: () => T): T {
  try {
    return check();
  } catch (error) {
    if (error instanceof TypeError || error instanceof RangeError) {
      throw new UsageError(error.message);
    }
    throw error;
  }
}

/**
 * Parses `deadbolt`'s arguments (without the program name).
 *
 * @param argv The arguments.
 * @param env The environment, for `REDIS_URL`.
 * @returns What to do.
 * @throws {UsageError} on anything it cannot make sense of.
 */
export function parseArgs(
  argv: readonly string[],
  env: Record<string, string | undefined> = {},
): Args {
  const dashes = argv.indexOf("--");
  const head = dashes === -1 ? argv : argv.slice(0, dashes);
  const tail = dashes === -1 ? undefined : argv.slice(dashes + 1);
  const positional: string[] = [];
  const values = new Map<string, string>();
  const flags = new Set<string>();
  for (let i = 0; i < head.length; i++) {
    const arg = head[i];
    if (!arg.startsWith("-") || arg === "-") {
      positional.push(arg);
      continue;
    }
    const equals = arg.indexOf("=");
    const option = SHORT[arg] ??
      (arg.startsWith("--") && equals > 0 ? arg.slice(0, equals) : arg);
    if (option === "--help" || option === "--version") {
      flags.add(option);
      continue;
    }
    const spec = OPTIONS[option];
    if (!spec) throw new UsageError(`unknown option ${JSON.stringify(arg)}`);
    if (!spec.value) {
      if (equals > 0 && arg.startsWith("--")) {
        throw new UsageError(`${option} takes no value`);
      }
      flags.add(option);
    } else if (equals > 0 && arg.startsWith("--")) {
      values.set(option, arg.slice(equals + 1));
    } else if (i + 1 < head.length) {
      values.set(option, head[++i]);
    } else {
      throw new UsageError(`${option} needs a value`);
    }
  }

  const [command, name, ...extra] = positional;
  if (command === "help") {
    const topic = name as CommandName | undefined;
    if (topic !== undefined && !COMMANDS.includes(topic)) {
      throw new UsageError(`unknown command ${JSON.stringify(topic)}`);
    }
    return { kind: "help", command: topic };
  }
  if (command !== undefined && !COMMANDS.includes(command as CommandName)) {
    throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
  const kind = command as CommandName | undefined;
  if (flags.has("--help")) return { kind: "help", command: kind };
  if (flags.has("--version")) return { kind: "version" };
  if (kind === undefined) throw new UsageError("missing a command");

  for (const option of [...flags, ...values.keys()]) {
    if (!OPTIONS[option].commands.includes(kind)) {
      throw new UsageError(`${option} is not an option of '${kind}'`);
    }
  }
  if (kind === "top") return topArgs(name, values, flags, env);
  if (name === undefined) {
    throw new UsageError(`missing the lock's name: deadbolt ${kind} <name>`);
  }
  if (kind === "run" && tail === undefined) {
    throw new UsageError(
      "missing '--' before the command: deadbolt run <name> [options] -- <command> [args…]",
    );
  }
  if (extra.length > 0) {
    throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`);
  }
  if (tail !== undefined && kind !== "run") {
    throw new UsageError(`'${kind}' runs no command: remove '--'`);
  }
  if (flags.has("--quiet") && flags.has("--verbose")) {
    throw new UsageError("--quiet and --verbose exclude each other");
  }

  const redis = redisUrl(values, env);
  const prefix = values.get("--prefix") ?? "deadbolt:";
  // The library's own checks of the name and the prefix.
  usage(() => Lock.keys(name, { prefix }));
  const connection: ConnectionArgs = {
    name,
    redis,
    prefix,
    quiet: flags.has("--quiet"),
    verbose: flags.has("--verbose"),
  };

  const limit = parseLimit(values.get("--limit"));
  if (kind === "status") {
    if (limit !== undefined && flags.has("--rw")) {
      throw new UsageError("--limit and --rw exclude each other");
    }
    return {
      kind,
      ...connection,
      ...(limit !== undefined && { limit }),
      ...(flags.has("--rw") && { rw: true }),
    };
  }
  if (kind === "release") {
    const token = values.get("--token");
    if (!token) throw new UsageError("release needs --token <token>");
    return { kind, ...connection, token };
  }

  if (!tail || tail.length === 0) {
    throw new UsageError("missing the command after '--'");
  }
  const duration = (option: string, fallback: number, min: number) => {
    const text = values.get(option);
    if (text === undefined) return fallback;
    return inRange(option, parseDuration(option, text), min, text);
  };
  if (flags.has("--no-wait") && values.has("--timeout")) {
    throw new UsageError("--no-wait and --timeout exclude each other");
  }
  return {
    kind,
    ...connection,
    ttl: duration("--ttl", 30_000, MIN_TTL),
    timeout: flags.has("--no-wait")
      ? 0
      : values.has("--timeout")
      ? duration("--timeout", 0, 0)
      : Infinity,
    killAfter: duration("--kill-after", 5_000, 0),
    fencing: flags.has("--fencing"),
    shell: flags.has("--shell"),
    command: tail,
    ...(limit !== undefined && { limit }),
  };
}
