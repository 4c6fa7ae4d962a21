import process from "node:process";
import { setTimeout as delay } from "node:timers/promises";
import type { Redis } from "npm:ioredis@6";
import type { TopArgs } from "./args.ts";
import {
  closeRedis,
  connectRedis,
  describeError,
  RedisUnavailableError,
} from "./connect.ts";
import { ExitCode } from "./exit_codes.ts";
import { formatDuration } from "./reporter.ts";

/** One lock as `deadbolt top` shows it. */
export interface LockRow {
  /** The lock's name, decoded from its key. */
  name: string;
  /** The first 8 characters of the holder's token; `null` when free. */
  token: string | null;
  /** The last fence issued for the name; `null` when none was. */
  fence: number | null;
  /** The holder's lease left, in ms: `null` when free, `-1` with no expiry. */
  leaseMs: number | null;
  /** Processes in the lock's line in Redis (waiting, each with a seat). */
  line: number;
  /** Connections subscribed to its release channel (waiters to wake). */
  subscribers: number;
}

/** One view: every lock under the prefix that is held or waited for. */
export interface TopView {
  /** When it was read (ISO 8601). */
  at: string;
  prefix: string;
  /** The servers scanned: one, or every master of a Cluster. */
  servers: number;
  /** Keys the scans returned. */
  scanned: number;
  /** Whether a server had more keys than `--max-keys` (the view is partial). */
  truncated: boolean;
  /** Most contended first. */
  locks: LockRow[];
}

/**
 * `deadbolt top`: the locks under a prefix, most contended first, refreshed
 * every `--interval` until SIGINT or SIGTERM (or once, with `--once`).
 * Returns 0, or 69 when Redis fails.
 */
export async function topCommand(args: TopArgs): Promise<number> {
  let servers: Redis[] = [];
  try {
    servers = await openServers(args.redis);
    const stop = stopSignal(args.once);
    try {
      for (let first = true; first || !stop.signal.aborted; first = false) {
        const view = await readView(servers, args);
        process.stdout.write(render(view, args, first));
        if (args.once) break;
        await sleep(args.interval, stop.signal);
      }
    } finally {
      stop.dispose();
    }
    return ExitCode.OK;
  } catch (error) {
    process.stderr.write(
      `deadbolt: ${
        error instanceof RedisUnavailableError
          ? error.message
          : `Redis failed: ${describeError(error)}`
      }\n`,
    );
    return ExitCode.UNAVAILABLE;
  } finally {
    await Promise.all(servers.map(closeRedis));
  }
}

// The server at `url`, or every master of the Cluster it belongs to.
async function openServers(url: string): Promise<Redis[]> {
  const first = await connectRedis(url);
  try {
    const info = String(await first.info("cluster"));
    if (!/^cluster_enabled:1/m.test(info)) return [first];
    const masters = mastersOf(String(await first.call("CLUSTER", "NODES")));
    const servers: Redis[] = [];
    try {
      for (const { host, port } of masters) {
        const at = new URL(url);
        at.hostname = host;
        at.port = String(port);
        servers.push(await connectRedis(at.href));
      }
    } catch (error) {
      await Promise.all(servers.map(closeRedis));
      throw error;
    }
    await closeRedis(first);
    return servers;
  } catch (error) {
    await closeRedis(first);
    throw error;
  }
}

/** The connected masters in `CLUSTER NODES` output. */
export function mastersOf(nodes: string): { host: string; port: number }[] {
  const masters = [];
  for (const line of nodes.split("\n")) {
    const [, address, flags, , , , , state] = line.split(" ");
    if (!address || !flags?.split(",").includes("master")) continue;
    if (flags.includes("fail") || state !== "connected") continue;
    const match = /^(.*):(\d+)@/.exec(address);
    if (match) masters.push({ host: match[1], port: Number(match[2]) });
  }
  return masters;
}

async function readView(servers: Redis[], args: TopArgs): Promise<TopView> {
  const reads = await Promise.all(
    servers.map((redis) => readServer(redis, args)),
  );
  const locks = reads.flatMap((read) => read.locks).sort(byContention);
  return {
    at: new Date().toISOString(),
    prefix: args.prefix,
    servers: servers.length,
    scanned: reads.reduce((sum, read) => sum + read.scanned, 0),
    truncated: reads.some((read) => read.truncated),
    locks,
  };
}

// Most processes in line first, then most subscribers, held before free.
function byContention(a: LockRow, b: LockRow): number {
  return b.line - a.line || b.subscribers - a.subscribers ||
    Number(b.token !== null) - Number(a.token !== null) ||
    (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

// The glob characters SCAN's MATCH gives a meaning to, escaped.
const globEscape = (text: string) => text.replace(/[*?[\]\\]/g, "\\$&");

// `%25` is `%` and `%7D` is `}` in a key's tag (see src/keys.ts).
const decodeName = (tag: string) =>
  tag.replace(/%25|%7D/g, (code) => code === "%25" ? "%" : "}");

/**
 * Scans one server for the lock keys and lines under the prefix (a bounded
 * `SCAN`, never `KEYS`), then reads each name's lock in one pipeline.
 */
async function readServer(
  redis: Redis,
  args: TopArgs,
): Promise<{ locks: LockRow[]; scanned: number; truncated: boolean }> {
  const head = `${args.prefix}{`;
  const tags = new Set<string>();
  let cursor = "0";
  let scanned = 0;
  do {
    const [next, keys] = await redis.scan(
      cursor,
      "MATCH",
      `${globEscape(head)}*`,
      "COUNT",
      args.scanCount,
    );
    cursor = next;
    scanned += keys.length;
    for (const key of keys) {
      const close = key.indexOf("}", head.length);
      const suffix = key.slice(close + 1);
      // The lock key itself, or its line: held, or waited for.
      if (close > head.length && (suffix === "" || suffix === ":line")) {
        tags.add(key.slice(head.length, close));
      }
    }
  } while (cursor !== "0" && scanned < args.maxKeys);
  const names = [...tags];
  const pipeline = redis.pipeline();
  for (const tag of names) {
    const lock = `${head}${tag}}`;
    pipeline.get(lock).pttl(lock).get(`${lock}:fence`).zcard(`${lock}:line`)
      .call("PUBSUB", "NUMSUB", `${lock}:released`)
      .call("PUBSUB", "SHARDNUMSUB", `${lock}:released`);
  }
  const replies = names.length > 0 ? (await pipeline.exec()) ?? [] : [];
  const locks = names.map((tag, i) => {
    const reply = (n: number) => {
      const [error, value] = replies[i * 6 + n] ?? [null, null];
      // SHARDNUMSUB is unknown before Redis 7: no sharded subscribers.
      if (error && n === 5) return ["", 0];
      if (error) throw error;
      return value;
    };
    const token = reply(0) as string | null;
    const pttl = Number(reply(1));
    const fence = reply(2) as string | null;
    const numsub = (n: number) => Number((reply(n) as unknown[])[1] ?? 0);
    return {
      name: decodeName(tag),
      token: token === null ? null : token.slice(0, 8),
      fence: fence === null ? null : Number(fence),
      leaseMs: pttl === -2 ? null : pttl,
      line: Number(reply(3)),
      subscribers: numsub(4) + numsub(5),
    };
  });
  return { locks, scanned, truncated: cursor !== "0" };
}

const COLUMNS = ["NAME", "TOKEN", "FENCE", "LEASE", "LINE", "SUBSCRIBED"];

function render(view: TopView, args: TopArgs, first: boolean): string {
  if (args.json) return `${JSON.stringify(view)}\n`;
  const rows = view.locks.map((row) => [
    row.name,
    row.token ?? "-",
    row.fence === null ? "-" : String(row.fence),
    row.leaseMs === null
      ? "free"
      : row.leaseMs === -1
      ? "no expiry"
      : formatDuration(row.leaseMs),
    String(row.line),
    String(row.subscribers),
  ]);
  const widths = COLUMNS.map((title, i) =>
    Math.max(title.length, ...rows.map((row) => row[i].length))
  );
  const line = (cells: string[]) =>
    cells.map((cell, i) => cell.padEnd(widths[i])).join("  ").trimEnd();
  const heading = `deadbolt top — ${view.locks.length} lock(s) under ${
    JSON.stringify(view.prefix)
  } on ${view.servers} server(s), ${view.at}${
    view.truncated ? " (partial: --max-keys reached)" : ""
  }`;
  // On a terminal each view replaces the last; in a pipe they follow.
  const clear = !args.once && process.stdout.isTTY ? "\x1b[H\x1b[2J" : "";
  const gap = first || clear ? "" : "\n";
  return `${clear}${gap}${heading}\n${
    [line(COLUMNS), ...rows.map(line)].join("\n")
  }\n`;
}

// Aborts on SIGINT or SIGTERM, which end a live view with exit code 0.
function stopSignal(once: boolean) {
  const controller = new AbortController();
  const stop = () => controller.abort();
  const signals = once ? [] : ["SIGINT", "SIGTERM"] as const;
  for (const name of signals) process.on(name, stop);
  return {
    signal: controller.signal,
    dispose: () => {
      for (const name of signals) process.off(name, stop);
    },
  };
}

// Resolves after `ms`, or at once when `signal` aborts.
const sleep = (ms: number, signal: AbortSignal): Promise<void> =>
  delay(ms, undefined, { signal }).catch(() => {});
