// What `deadbolt top` shows, read from Redis: every reachable master of a
// Cluster, each scanned with a bounded SCAN, then each lock read in one
// pipeline. Rendering and the live loop are in top.ts.
import type { Redis } from "npm:ioredis@6";
import type { TopArgs } from "./args.ts";
import {
  closeRedis,
  connectRedis,
  redactUrl,
  RedisUnavailableError,
} from "./connect.ts";

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
  /**
   * Whether the view is partial: a server had more keys than `--max-keys`
   * walks, or a master of the Cluster could not be reached.
   */
  truncated: boolean;
  /** Most contended first. */
  locks: LockRow[];
}

// The server at `url`, or every reachable master of the Cluster it
// belongs to; how many masters could not be reached.
export async function openServers(
  url: string,
): Promise<{ servers: Redis[]; unreachable: number }> {
  const first = await connectRedis(url);
  try {
    const info = String(await first.info("cluster"));
    if (!/^cluster_enabled:1/m.test(info)) {
      return { servers: [first], unreachable: 0 };
    }
    const seedHost = new URL(url).hostname;
    const { masters, unreachable } = mastersOf(
      String(await first.call("CLUSTER", "NODES")),
      seedHost,
    );
    if (masters.length === 0) {
      throw new RedisUnavailableError(
        `the cluster at ${redactUrl(url)} lists no reachable master`,
      );
    }
    const servers: Redis[] = [];
    try {
      for (const { host, port } of masters) {
        const at = new URL(url);
        at.hostname = host.includes(":") ? `[${host}]` : host;
        at.port = String(port);
        servers.push(await connectRedis(at.href));
      }
    } catch (error) {
      await Promise.all(servers.map(closeRedis));
      throw error;
    }
    await closeRedis(first);
    return { servers, unreachable };
  } catch (error) {
    await closeRedis(first);
    throw error;
  }
}

/**
 * The masters in `CLUSTER NODES` output that can be reached (neither
 * failed nor disconnected), and how many others there are. A node's
 * announced hostname (Redis 7) is preferred to its IP; a node that does not
 * know its own IP yet is at `seedHost`.
 */
function mastersOf(
  nodes: string,
  seedHost: string,
): { masters: { host: string; port: number }[]; unreachable: number } {
  const masters = [];
  let unreachable = 0;
  for (const line of nodes.split("\n")) {
    const [, address, flags, , , , , state] = line.split(" ");
    const flagList = flags?.split(",") ?? [];
    if (!address || !flagList.includes("master")) continue;
    const match = /^(.*):(\d+)@\d+(?:,(.*))?$/.exec(address);
    if (
      !match || flagList.includes("fail") || flagList.includes("noaddr") ||
      state !== "connected"
    ) {
      unreachable++;
      continue;
    }
    const host = match[3] || match[1] || seedHost;
    masters.push({ host, port: Number(match[2]) });
  }
  return { masters, unreachable };
}

export async function readView(
  servers: Redis[],
  unreachable: number,
  args: TopArgs,
): Promise<TopView> {
  const reads = await Promise.all(
    servers.map((redis) => readServer(redis, args)),
  );
  const locks = reads.flatMap((read) => read.locks).sort(byContention);
  return {
    at: new Date().toISOString(),
    prefix: args.prefix,
    servers: servers.length,
    scanned: reads.reduce((sum, read) => sum + read.scanned, 0),
    truncated: unreachable > 0 || reads.some((read) => read.truncated),
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
  // SCAN walks about COUNT keys per call, matching or not: the calls, not
  // the matches, bound what a view costs the server.
  const calls = Math.ceil(args.maxKeys / args.scanCount);
  for (let call = 0; call < calls; call++) {
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
    if (cursor === "0") break;
  }
  const names = [...tags];
  const pipeline = redis.pipeline();
  for (const tag of names) {
    const lock = `${head}${tag}}`;
    pipeline.get(lock).pttl(lock).get(`${lock}:fence`).zcard(`${lock}:line`)
      .call("PUBSUB", "NUMSUB", `${lock}:released`)
      .call("PUBSUB", "SHARDNUMSUB", `${lock}:released`);
  }
  const replies = names.length > 0 ? (await pipeline.exec()) ?? [] : [];
  const locks: LockRow[] = [];
  names.forEach((tag, i) => {
    const results = replies.slice(i * 6, i * 6 + 6);
    // A key of another type under the prefix is not deadbolt's: skipped.
    if (results.some(([error]) => /^WRONGTYPE/.test(messageOf(error)))) return;
    const reply = (n: number) => {
      const [error, value] = results[n] ?? [null, null];
      // SHARDNUMSUB is unknown before Redis 7: no sharded subscribers.
      if (error && n === 5) return ["", 0];
      if (error) throw error;
      return value;
    };
    const token = reply(0) as string | null;
    const pttl = Number(reply(1));
    const fence = reply(2) as string | null;
    const numsub = (n: number) => Number((reply(n) as unknown[])[1] ?? 0);
    // The commands are not atomic: a key that expired between GET and
    // PTTL (or was taken between them) shows as free, not half held.
    const held = token !== null && pttl !== -2;
    locks.push({
      name: decodeName(tag),
      token: held ? token.slice(0, 8) : null,
      fence: fence === null ? null : Number(fence),
      leaseMs: held ? pttl : null,
      line: Number(reply(3)),
      subscribers: numsub(4) + numsub(5),
    });
  });
  return { locks, scanned, truncated: cursor !== "0" };
}

const messageOf = (error: unknown): string =>
  error instanceof Error ? error.message : "";
