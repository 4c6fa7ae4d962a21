/**
 * Lock holders as OS processes, for tests that pause, kill or race real
 * processes. Run as a child: `deno run -A tests/_holder.ts <mode> <port> <name> …`;
 * it reports events as one JSON object per line on stdout. Imported by a test,
 * it gives `spawnHolder()`, which runs such a child and reads those lines.
 *
 * Modes:
 * - `counter <port> <name> <iterations>`: ioredis; each iteration pauses
 *   0–2 ms, acquires `name` with fencing, GETs `<name>:count`, pauses 0–2 ms,
 *   SETs it + 1, releases, and prints
 *   `{ event: "section", fence, read, start, end, validUntil }`.
 * - `pause <port> <name> <ttl>`: ioredis; acquires with auto-extension, prints
 *   `{ event: "acquired", token }`, waits for `lock.signal` to abort, then
 *   prints `{ event: "lost", reason, held, extended, released }`.
 * - `crash <port> <name> <ttl>`: acquires, prints `acquired`, waits forever.
 * - `forget <port> <name> <ttl>`: `DbRedisShape` over a `RespClient`; acquires,
 *   closes the connection, prints `acquired` and returns without releasing.
 * - `abandon <port> <name> <ttl> <keepAlive>`: as `forget`, then keeps the
 *   process alive `keepAlive` ms with a ref'd timer while renewals fail, and
 *   prints `{ event: "done", held, aborted, reason }`.
 *
 * @module
 */

import { Redis } from "npm:ioredis@6";
import { Lock } from "../mod.ts";
import { DbRedisShape, RespClient } from "./_resp.ts";

/** One JSON line a holder printed. */
export type HolderEvent = { event: string; [field: string]: unknown };

/** How a holder process ended. */
export interface HolderExit {
  /** Exit code (128 + n when killed by signal n). */
  code: number;
  /** The signal that killed it, if any. */
  signal: Deno.Signal | null;
  /** Everything it wrote to stderr. */
  stderr: string;
  /** The lines it printed that no `next()` call consumed, in order. */
  rest: HolderEvent[];
}

/** A running holder process; dispose kills it (if still running) and reaps it. */
export interface Holder extends AsyncDisposable {
  /** Its process id, for `Deno.kill`. */
  readonly pid: number;
  /** The next line it prints, parsed; rejects after `ms` or if it exits first. */
  next(ms?: number): Promise<HolderEvent>;
  /** Waits (up to `ms`) for it to exit and collects what is left. */
  exit(ms?: number): Promise<HolderExit>;
}

const HOLDER = new URL("./_holder.ts", import.meta.url);
const ROOT = new URL("../", import.meta.url);

/** Starts `deno run -A tests/_holder.ts <mode> ...args` with piped stdout and stderr. */
export function spawnHolder(mode: string, args: (string | number)[]): Holder {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", HOLDER.href, mode, ...args.map(String)],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: HolderEvent[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  const stdout = (async () => {
    let buffer = "";
    const push = (line: string) => {
      if (line === "") return;
      try {
        lines.push(JSON.parse(line));
      } catch {
        lines.push({ event: "unparsed", text: line });
      }
    };
    for await (
      const chunk of child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      buffer += chunk;
      const parts = buffer.split("\n");
      buffer = parts.pop()!;
      parts.forEach(push);
      wake?.();
    }
    push(buffer);
    ended = true;
    wake?.();
  })();
  const stderr = new Response(child.stderr).text();
  const status = child.status;
  let exited = false;
  status.then(() => exited = true);

  const withDeadline = async <T>(
    what: string,
    ms: number,
    work: Promise<T>,
  ): Promise<T> => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(new Error(`holder ${mode} did not ${what} within ${ms} ms`)),
        ms,
      );
    });
    try {
      return await Promise.race([work, late]);
    } finally {
      clearTimeout(timer);
    }
  };

  const holder: Holder = {
    pid: child.pid,
    next(ms = 10_000) {
      return withDeadline(
        "print a line",
        ms,
        (async () => {
          while (lines.length === 0) {
            if (ended) {
              throw new Error(
                `holder ${mode} exited without printing a line; stderr:\n${await stderr}`,
              );
            }
            await new Promise<void>((resolve) => wake = resolve);
            wake = undefined;
          }
          return lines.shift()!;
        })(),
      );
    },
    async exit(ms = 10_000) {
      const { code, signal } = await withDeadline("exit", ms, status);
      await stdout;
      return { code, signal, stderr: await stderr, rest: lines.splice(0) };
    },
    async [Symbol.asyncDispose]() {
      if (!exited) {
        for (const sig of ["SIGCONT", "SIGKILL"] as const) {
          try {
            child.kill(sig);
          } catch {
            // It exited between the check and the signal.
          }
        }
      }
      await Promise.all([status, stdout, stderr]);
    },
  };
  return holder;
}

// ---- the child side ----

function emit(event: HolderEvent): void {
  console.log(JSON.stringify(event));
}

function describe(reason: unknown): { name: string; message: string } {
  const error = reason as Error;
  return { name: error?.name, message: error?.message };
}

const aborted = (signal: AbortSignal): Promise<void> =>
  new Promise((resolve) =>
    signal.aborted
      ? resolve()
      : signal.addEventListener("abort", () => resolve(), { once: true })
  );

const pauseUpTo = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, Math.random() * ms));

async function counter(port: number, name: string, iterations: number) {
  const redis = new Redis({ host: "127.0.0.1", port });
  const countKey = `${name}:count`;
  try {
    for (let i = 0; i < iterations; i++) {
      // Think time between sections: without it the releasing process wins
      // the free lock again before any backing-off waiter looks, and the
      // processes barely interleave.
      if (i > 0) await pauseUpTo(2);
      await using lock = await Lock.acquire(redis, name, {
        timeout: 60_000,
        fencing: true,
      });
      const start = performance.now();
      const read = Number(await redis.get(countKey) ?? "0");
      await pauseUpTo(2);
      await redis.set(countKey, String(read + 1));
      const end = performance.now();
      emit({
        event: "section",
        fence: lock.fence,
        read,
        start,
        end,
        validUntil: lock.validUntil,
      });
    }
  } finally {
    await redis.quit();
  }
}

async function pause(port: number, name: string, ttl: number) {
  const redis = new Redis({ host: "127.0.0.1", port });
  try {
    const lock = await Lock.acquire(redis, name, { ttl, autoExtend: true });
    emit({ event: "acquired", token: lock.token });
    await aborted(lock.signal);
    const reason = describe(lock.signal.reason);
    const held = lock.held;
    const extended = await lock.extend();
    const released = await lock.release();
    emit({ event: "lost", reason, held, extended, released });
  } finally {
    await redis.quit();
  }
}

async function crash(port: number, name: string, ttl: number) {
  const redis = new Redis({ host: "127.0.0.1", port });
  const lock = await Lock.acquire(redis, name, { ttl });
  emit({ event: "acquired", token: lock.token });
  // The ioredis socket keeps the process alive until the test kills it.
}

async function forget(port: number, name: string, ttl: number) {
  const connection = await RespClient.connect(port);
  const lock = await Lock.acquire(new DbRedisShape(connection), name, {
    ttl,
    autoExtend: true,
  });
  connection.close();
  await connection.closed;
  emit({ event: "acquired", token: lock.token });
  return lock;
}

async function abandon(
  port: number,
  name: string,
  ttl: number,
  keepAlive: number,
) {
  const lock = await forget(port, name, ttl);
  await new Promise((resolve) => setTimeout(resolve, keepAlive));
  emit({
    event: "done",
    held: lock.held,
    aborted: lock.signal.aborted,
    reason: describe(lock.signal.reason),
  });
}

async function main([mode, port, name, ...rest]: string[]): Promise<void> {
  const numbers = [Number(port), ...rest.map(Number)] as const;
  switch (mode) {
    case "counter":
      return await counter(numbers[0], name, numbers[1]);
    case "pause":
      return await pause(numbers[0], name, numbers[1]);
    case "crash":
      return await crash(numbers[0], name, numbers[1]);
    case "forget":
      return void await forget(numbers[0], name, numbers[1]);
    case "abandon":
      return await abandon(numbers[0], name, numbers[1], numbers[2]);
    default:
      throw new Error(`Unknown holder mode: ${mode}`);
  }
}

if (import.meta.main) await main(Deno.args);
