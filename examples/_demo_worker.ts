/**
 * One worker process of `deno task demo` (started by examples/demo.ts, not by
 * hand). It takes the lock over and over, with fencing and auto-extension,
 * and in each critical section writes its fence to a fenced register: a Redis
 * hash that a small Lua script updates only when the fence is higher than the
 * last one written. It reports every step as one JSON line on stdout, with
 * `at` in epoch milliseconds (`performance.timeOrigin + performance.now()`,
 * which agrees across processes of one machine to well under a millisecond).
 *
 * Arguments: `<id> <lock name> <key prefix> <register key> <ttl ms>`; the
 * Redis URL comes in `DEADBOLT_DEMO_URL` (so a password never shows in `ps`).
 * Commands on stdin, one a line: `start`, `stall` (hold the next acquisition
 * until `go`, so the demo can pause or kill it mid-hold), `go`, `stop`
 * (finish the current section, then exit). End of stdin without `stop`
 * means the demo is gone: the worker exits at once.
 *
 * @module
 */

import { Redis } from "npm:ioredis@6";
import { Lock, LockTimeoutError } from "../mod.ts";

// Writes ARGV[1] (the fence) only if it is above the register's last fence.
// Replies {1, previous fence} when written, {0, current fence} when refused.
const FENCED_WRITE =
  `local current = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) <= current then return {0, current} end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'writer', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'writes', 1)
return {1, current}`;

const [id, name, prefix, registerKey, ttlArg] = Deno.args;
const ttl = Number(ttlArg);
const clock = (): number => performance.timeOrigin + performance.now();
const emit = (event: Record<string, unknown>): void =>
  console.log(JSON.stringify({ at: clock(), ...event }));
const between = (min: number, max: number): number =>
  min + Math.random() * (max - min);

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

// ---- commands from the demo ----

const stopping = new AbortController();
let started!: () => void;
const start = new Promise<void>((resolve) => started = resolve);
let stallNext = false;
let proceed: (() => void) | undefined;

async function readCommands(): Promise<void> {
  let buffer = "";
  for await (
    const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())
  ) {
    buffer += chunk;
    const lines = buffer.split("\n");
    buffer = lines.pop()!;
    for (const line of lines) {
      if (line === "start") started();
      else if (line === "stall") stallNext = true;
      else if (line === "go") proceed?.();
      else if (line === "stop") stopping.abort();
    }
  }
  // The demo is gone (it would have sent `stop`): a held lock expires by TTL.
  if (!stopping.signal.aborted) Deno.exit(3);
}

// ---- the work ----

async function section(redis: Redis): Promise<void> {
  const lock = new Lock(redis, name, { ttl, fencing: true, prefix });
  const asked = clock();
  const contended = !await lock.tryAcquire();
  if (contended) {
    emit({ event: "wait" });
    try {
      await lock.acquire({ timeout: 30_000, signal: stopping.signal });
    } catch (error) {
      if (stopping.signal.aborted) return;
      if (!(error instanceof LockTimeoutError)) throw error;
      emit({ event: "timeout", waited: clock() - asked });
      return;
    }
  }
  const granted = clock();
  const fence = lock.fence!;
  const stall = stallNext;
  stallNext = false;
  // Listen before saying "acquired": the demo may freeze this process right
  // after that line, and on resume the signal aborts at the first look.
  const lost = () =>
    emit({ event: "lost", fence, reason: String(lock.signal.reason?.message) });
  if (lock.signal.aborted) lost();
  else lock.signal.addEventListener("abort", lost, { once: true });
  emit({
    event: "acquired",
    at: granted,
    fence,
    waited: granted - asked,
    contended,
    stall,
  });

  // The work: a short sleep, or (when told to stall) until the demo says go.
  if (stall) await new Promise<void>((resolve) => proceed = resolve);
  else await new Promise((resolve) => setTimeout(resolve, between(50, 150)));

  // No `lock.signal` check before the write, on purpose: a process frozen
  // between its check and its write cannot tell. The fence is what stops a
  // stale write.
  const [written, current] = await redis.eval(
    FENCED_WRITE,
    1,
    registerKey,
    String(fence),
    id,
  ) as [number, number];
  emit({ event: "write", fence, accepted: written === 1, current });

  // The hold ends when release() is called, or at validUntil if lost first.
  // The event is stamped with the call, so that it sorts before the grant
  // that may reach the next holder before release() returns here.
  const at = clock();
  const end = Math.min(at, performance.timeOrigin + lock.validUntil);
  const released = await lock.release();
  emit({ event: "released", at, fence, end, released });
}

async function main(): Promise<void> {
  const url = Deno.env.get("DEADBOLT_DEMO_URL")!;
  const redis = new Redis(url, { lazyConnect: true });
  // Failed commands reject on their own; this only stops ioredis from
  // printing each reconnection attempt.
  redis.on("error", () => {});
  // Unreadable stdin means the demo is gone, as its end does.
  readCommands().catch(() => Deno.exit(3));
  try {
    await redis.connect();
    emit({ event: "ready", pid: Deno.pid });
    await start;
    while (!stopping.signal.aborted) {
      await section(redis);
      await sleep(between(200, 1_000), stopping.signal);
    }
    emit({ event: "done" });
  } catch (error) {
    emit({ event: "error", reason: String((error as Error)?.message) });
    Deno.exitCode = 1;
  } finally {
    redis.disconnect();
  }
  // stdin stays open until the demo reaps us; nothing else keeps us here.
  Deno.exit(Deno.exitCode);
}

await main();
