/**
 * Small helpers shared by the tests.
 *
 * @module
 */

import { Lock, type RedisClient, type ScriptClient } from "../mod.ts";
import { toScriptClient } from "../src/client.ts";
import { existingQueue } from "../src/_queue.ts";
import { existingCrowd } from "../src/_crowd.ts";
import type { RespClient } from "./_resp.ts";
import type { Redis } from "npm:ioredis@6";
import {
  ACQUIRE,
  ADOPT,
  EAGER_HANDOVER,
  EXTEND,
  HANDOVER,
  type LuaScript,
  RELEASE,
} from "../src/scripts.ts";
import { LEAVE } from "../src/_line_scripts.ts";

/** Which of deadbolt's scripts a call runs. */
export type ScriptKind =
  | "acquire"
  | "extend"
  | "release"
  | "handover"
  | "adopt"
  | "leave";

const SCRIPTS: [ScriptKind, LuaScript][] = [
  ["acquire", ACQUIRE],
  ["extend", EXTEND],
  ["release", RELEASE],
  ["handover", HANDOVER],
  ["handover", EAGER_HANDOVER],
  ["adopt", ADOPT],
  ["leave", LEAVE],
];

/**
 * Tells which script a client call runs from what the client is given: the
 * source (`eval`) or its SHA-1 (`evalsha`, computed before the first call).
 */
export function scriptKind(sourceOrSha: string): ScriptKind {
  const found = SCRIPTS.find(([, script]) =>
    script.source === sourceOrSha || script.sha === sourceOrSha
  );
  if (!found) throw new Error(`not one of deadbolt's scripts: ${sourceOrSha}`);
  return found[0];
}

/**
 * Pins `Math.random` near 1 until disposed, so that every full-jitter
 * backoff waits (almost) its whole bound: a waiter that gets the lock sooner
 * than that was woken.
 */
export function slowBackoff(): Disposable {
  const random = Math.random;
  Math.random = () => 0.999;
  return { [Symbol.dispose]: () => Math.random = random };
}

/** Resolves after `ms` (only for waiting out real time, never to synchronize). */
export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/**
 * Settles with `promise`, or rejects naming `what` after `ms`: a broken lock
 * must fail a test, not hang it.
 */
export async function within<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} did not happen within ${ms} ms`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Resolves once `condition` holds, polling every 10 ms (for server state no
 * event announces); rejects naming `what` after `ms`.
 */
export async function until(
  condition: () => Promise<boolean>,
  ms: number,
  what: string,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await condition())) {
    if (performance.now() > deadline) {
      throw new Error(`${what} did not happen within ${ms} ms`);
    }
    await sleep(10);
  }
}

/**
 * Waits until `count` waiters of this process line up for the lock `name`
 * on `client` (its head included), with the head asleep between attempts
 * (a lock's head then stands ready to be handed the lock): the moment a
 * test may release. `key` is
 * the lock's key (a semaphore's for a semaphore).
 */
export async function lineUp(
  client: RedisClient,
  name: string,
  count: number,
  ms = 5_000,
  key = Lock.keys(name).lock,
): Promise<void> {
  await until(
    () => {
      const scriptClient = toScriptClient(client);
      const queue = existingQueue(scriptClient, key) ??
        existingCrowd(scriptClient, key);
      return Promise.resolve(
        queue !== undefined && queue.size >= count && queue.sleeping,
      );
    },
    ms,
    `${count} waiter(s) lining up for '${name}'`,
  );
}

/** Resolves with the monotonic time at which `signal` aborts; fails after `ms`. */
export function abortedAt(signal: AbortSignal, ms = 5_000): Promise<number> {
  if (signal.aborted) return Promise.resolve(performance.now());
  const { promise, resolve } = Promise.withResolvers<number>();
  const onAbort = () => resolve(performance.now());
  signal.addEventListener("abort", onAbort, { once: true });
  return within(promise, ms, "the abort of lock.signal").finally(() =>
    signal.removeEventListener("abort", onAbort)
  );
}

/** A client that forwards to a real one and counts every script call. */
export class CountingClient implements ScriptClient {
  /** Script calls forwarded so far. */
  calls = 0;
  #inner: ScriptClient;

  constructor(inner: ScriptClient) {
    this.#inner = inner;
  }

  eval(script: string, keys: string[], args: string[]): Promise<unknown> {
    this.calls++;
    return this.#inner.eval(script, keys, args);
  }

  evalsha(sha1: string, keys: string[], args: string[]): Promise<unknown> {
    this.calls++;
    return this.#inner.evalsha!(sha1, keys, args);
  }
}

/**
 * A plain client with nothing but `eval`, over one RESP connection: the
 * smallest `ScriptClient`, with no hooks (so waiters back off).
 */
export function evalClient(conn: RespClient): ScriptClient {
  return {
    eval: (script, keys, args) =>
      conn.send("EVAL", script, keys.length, ...keys, ...args),
  };
}

/** One script call a recording test client saw, and how it settled. */
export interface RecordedCall {
  /** The call's first argument: the token, for every deadbolt script. */
  token: string;
  /** Monotonic time the call was handed to the client. */
  at: number;
  reply: Promise<unknown>;
  settled: boolean;
  settledAt?: number;
  /** The reply's value; undefined when it rejected. */
  value?: unknown;
}

/**
 * Records a script call with arguments `args` whose reply is `reply`: the
 * record says when it was sent and, once it settles, when and with what.
 */
export function recordCall(
  args: string[],
  reply: Promise<unknown>,
): RecordedCall {
  const call: RecordedCall = {
    token: args[0],
    at: performance.now(),
    reply,
    settled: false,
  };
  const settle = (value?: unknown) => {
    call.settled = true;
    call.settledAt = performance.now();
    call.value = value;
  };
  reply.then(settle, () => settle());
  return call;
}

/**
 * Closes an ioredis client: one that a reset left reconnecting gets ready
 * first (up to 2 s), since its QUIT would leave a 2 s disconnect timer
 * behind; one that has ended is left alone, since disconnect() would leave
 * a timer for a socket it no longer has.
 */
export async function quitIoredis(redis: Redis): Promise<void> {
  if (redis.status !== "ready" && redis.status !== "end") {
    const { promise, resolve } = Promise.withResolvers<void>();
    const timer = setTimeout(resolve, 2_000);
    redis.once("ready", resolve);
    await promise;
    clearTimeout(timer);
    redis.off("ready", resolve);
  }
  if (redis.status === "ready") await redis.quit();
  else if (redis.status !== "end") redis.disconnect();
}
