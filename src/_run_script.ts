import type { ScriptClient } from "./client.ts";
import type { LuaScript } from "./scripts.ts";
import { now } from "./_timers.ts";

const encoder = new TextEncoder();

async function sha1(source: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", encoder.encode(source));
  return Array.from(
    new Uint8Array(digest),
    (byte) => byte.toString(16).padStart(2, "0"),
  )
    .join("");
}

/**
 * Runs a script with `EVALSHA`, and with `EVAL` (which also loads it) when
 * the server answers `NOSCRIPT`: after a restart, a failover or `SCRIPT FLUSH`.
 * A script `inOrder` always goes with `EVAL`. A cluster's `TRYAGAIN` (see
 * {@linkcode whileMigrating}) is retried.
 */
export function runScript(
  client: ScriptClient,
  script: LuaScript,
  keys: string[],
  args: string[],
): Promise<unknown> {
  if (script.inOrder) {
    return whileMigrating(() => client.eval(script.source, keys, args));
  }
  // The usual case, one promise deep: the script's SHA-1 is known.
  if (client.evalsha && script.sha) {
    let call: Promise<unknown>;
    try {
      // A client of one's own may throw, or return a thenable.
      call = Promise.resolve(client.evalsha(script.sha, keys, args));
    } catch (error) {
      call = Promise.reject(error);
    }
    return call.catch((error) => {
      if (isNoScript(error)) {
        return whileMigrating(() => client.eval(script.source, keys, args));
      }
      if (/TRYAGAIN/.test(messageOf(error))) {
        return runSlowly(client, script, keys, args);
      }
      throw error;
    });
  }
  return runSlowly(client, script, keys, args);
}

// runScript's first call of a script, or its retries while a slot migrates.
// A script whose SHA-1 is not known yet goes out with EVAL at once (which
// also loads it) while the SHA-1 is computed for the next calls: waiting
// for Web Crypto first would let later calls on the client overtake this
// one (a line's LEAVE overtaken by the next attempt, which then found the
// process's own seat still in line).
function runSlowly(
  client: ScriptClient,
  script: LuaScript,
  keys: string[],
  args: string[],
): Promise<unknown> {
  return whileMigrating(async () => {
    if (client.evalsha) {
      if (script.sha) {
        try {
          return await client.evalsha(script.sha, keys, args);
        } catch (error) {
          if (!isNoScript(error)) throw error;
        }
      } else learnSha(script);
    }
    return await client.eval(script.source, keys, args);
  });
}

const learning = new WeakSet<LuaScript>();

// Computes `script.sha` in the background, once.
function learnSha(script: LuaScript): void {
  if (learning.has(script)) return;
  learning.add(script);
  sha1(script.source).then((sha) => script.sha = sha, () => {
    learning.delete(script);
  });
}

// Not startsWith: @db/redis prefixes "-", and GLIDE renames the code to
// "NoScriptError".
const isNoScript = (error: unknown): boolean =>
  /noscript/i.test(messageOf(error));

// How long a call is retried while its slot migrates.
const MIGRATING_MS = 5_000;

/**
 * Runs `call` again while a cluster answers `TRYAGAIN`: during a slot
 * migration, a script whose keys are split between the two masters (some
 * moved, some not yet, such as a fence counter or a channel that does not
 * exist) is refused without running, and the move takes milliseconds. Up to
 * 5 s, with a backoff from 5 to 100 ms; then the error stands.
 */
export async function whileMigrating<T>(call: () => Promise<T>): Promise<T> {
  const started = now();
  for (let attempt = 0;; attempt++) {
    try {
      return await call();
    } catch (error) {
      if (
        !/TRYAGAIN/.test(messageOf(error)) ||
        now() - started > MIGRATING_MS
      ) {
        throw error;
      }
      await new Promise((resolve) =>
        setTimeout(resolve, Math.min(100, 5 * 2 ** attempt))
      );
    }
  }
}

function messageOf(error: unknown): string {
  return String((error as Error | undefined)?.message);
}

/**
 * Reads an integer reply, or an array of them, as numbers.
 *
 * @throws {TypeError} when the reply is not made of integers (a client that
 * rewrites replies, or a proxy in the way).
 */
export function toIntegers(reply: unknown, length: number): number[] {
  // Most clients answer numbers already: read those as they are.
  if (Array.isArray(reply) && reply.length === length && allSafe(reply)) {
    return reply;
  }
  const items = Array.isArray(reply) ? reply : [reply];
  const numbers = items.map(toNumber);
  if (numbers.length !== length || !numbers.every(Number.isSafeInteger)) {
    throw new TypeError(
      `Cannot read the lock script's reply as it must be ${length} integer(s): current value is ${
        describeReply(reply)
      }`,
    );
  }
  return numbers;
}

function allSafe(items: unknown[]): items is number[] {
  for (const item of items) if (!Number.isSafeInteger(item)) return false;
  return true;
}

function toNumber(value: unknown): number {
  if (typeof value === "number" || typeof value === "bigint") {
    return Number(value);
  }
  if (typeof value === "string" && /^-?\d+$/.test(value)) return Number(value);
  return NaN;
}

/** A reply as JSON, bigints included, for error messages. */
export function describeReply(reply: unknown): string {
  return JSON.stringify(
    reply,
    (_, v) => typeof v === "bigint" ? String(v) : v,
  );
}
