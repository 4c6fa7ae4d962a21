import process from "node:process";
import { setTimeout as delay } from "node:timers/promises";
import type { Redis } from "npm:ioredis@6";
import type { TopArgs } from "./args.ts";
import { closeRedis, describeError, RedisUnavailableError } from "./connect.ts";
import { openServers, readView, type TopView } from "./top_view.ts";
import { ExitCode } from "./exit_codes.ts";
import { formatDuration } from "./reporter.ts";

/**
 * `deadbolt top`: the locks under a prefix, most contended first, refreshed
 * every `--interval` until SIGINT or SIGTERM (or once, with `--once`).
 * Returns 0, or 69 when Redis fails.
 */
export async function topCommand(args: TopArgs): Promise<number> {
  let servers: Redis[] = [];
  try {
    const opened = await openServers(args.redis);
    servers = opened.servers;
    const unreachable = opened.unreachable;
    if (args.once) {
      process.stdout.write(
        render(await readView(servers, unreachable, args), args, true),
      );
      return ExitCode.OK;
    }
    const stop = stopSignal();
    try {
      for (let first = true; !stop.signal.aborted; first = false) {
        // Ctrl-C ends the view even while a server does not answer.
        const reading = readView(servers, unreachable, args).catch((error) =>
          error instanceof Error ? error : new Error(String(error))
        );
        const view = await unlessAborted(reading, stop.signal);
        if (!view) break;
        if (view instanceof Error) {
          // A failover or a resharding passes: try again at the next view.
          process.stderr.write(
            `deadbolt: Redis failed: ${describeError(view)} (trying again in ${
              formatDuration(args.interval)
            })\n`,
          );
        } else process.stdout.write(render(view, args, first));
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
    view.truncated
      ? " (partial: --max-keys reached, or a master unreachable)"
      : ""
  }`;
  // On a terminal each view replaces the last; in a pipe they follow.
  const clear = !args.once && process.stdout.isTTY ? "\x1b[H\x1b[2J" : "";
  const gap = first || clear ? "" : "\n";
  return `${clear}${gap}${heading}\n${
    [line(COLUMNS), ...rows.map(line)].join("\n")
  }\n`;
}

// Aborts on SIGINT or SIGTERM, which end a live view with exit code 0.
function stopSignal() {
  const controller = new AbortController();
  const stop = () => controller.abort();
  const signals = ["SIGINT", "SIGTERM"] as const;
  for (const name of signals) process.on(name, stop);
  return {
    signal: controller.signal,
    dispose: () => {
      for (const name of signals) process.off(name, stop);
    },
  };
}

// Settles as `promise` does, or with `undefined` as soon as `signal` aborts.
function unlessAborted<T>(
  promise: Promise<T>,
  signal: AbortSignal,
): Promise<T | undefined> {
  if (signal.aborted) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const onAbort = () => resolve(undefined);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() =>
      signal.removeEventListener("abort", onAbort)
    );
  });
}

// Resolves after `ms`, or at once when `signal` aborts.
const sleep = (ms: number, signal: AbortSignal): Promise<void> =>
  delay(ms, undefined, { signal }).catch(() => {});
