import type { ScriptClient } from "./client.ts";
import { now } from "./_timers.ts";

/** A Lua script and its SHA-1, computed once with Web Crypto. */
export interface LuaScript {
  /** The script's source. */
  readonly source: string;
  /** Its SHA-1 in hex, once {@linkcode runScript} has computed it. */
  sha?: string;
}

// Every script replies with integers only: Lua booleans and numeric strings
// come back differently from different clients (and over RESP2 and RESP3).

// Run before any write when fencing, and returns {3, 0} (or an ACL error)
// when the fence counter cannot give a safe next value: a fence above
// 2^53 - 2 is refused because a Lua number (a double) would round its
// successor. Refusing before the write matters: Lua does not roll back.
const CHECK_FENCE = `if fencing then
  if redis.acl_check_cmd and not redis.acl_check_cmd('INCR', KEYS[2]) then
    return redis.error_reply('NOPERM this user may not INCR the fence counter')
  end
  local current = redis.pcall('GET', KEYS[2])
  if type(current) == 'table' then return {3, 0} end
  if current and not ((current == '0' or string.match(current, '^[1-9]%d*$'))
      and tonumber(current) < 9007199254740991) then
    return {3, 0}
  end
end`;

/**
 * KEYS: lock, fence counter, and for a waiter the waiting marker. ARGV:
 * token, ttl in ms, "1" to issue a fence, and for a waiter how long (ms) the
 * marker should last: until its next attempt at the latest. Replies
 * {1, fence} granted (fence 0 unless fencing), {0, pttl} held by another
 * owner (the marker is then set), {2, 0} the lock key holds another type,
 * {3, 0} the fence counter is not a safe integer.
 */
export const ACQUIRE: LuaScript = {
  source: `local fencing = ARGV[3] == '1'
${CHECK_FENCE}
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if fencing then return {1, redis.call('INCR', KEYS[2])} end
  return {1, 0}
end
local holder = redis.pcall('GET', KEYS[1])
if type(holder) == 'table' then return {2, 0} end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if fencing then return {1, tonumber(redis.call('GET', KEYS[2]) or '0')} end
  return {1, 0}
end
if KEYS[3] then redis.call('SET', KEYS[3], '1', 'PX', ARGV[4]) end
return {0, redis.call('PTTL', KEYS[1])}`,
};

/**
 * Passes a lock from its holder straight to a waiter in the same process, in
 * one round trip: KEYS: lock, fence counter, waiting marker. ARGV: the
 * holder's token, the waiter's token, the waiter's ttl in ms, "1" to issue a
 * fence. Replies {1, fence, waiting} handed over, where waiting is 1 when
 * the marker says a waiter was turned away lately (in any process), {0, 0, 0}
 * the key is gone, {-1, 0, 0} another owner holds it (both left alone),
 * {3, 0, 0} the fence counter is unusable (the holder's key is then deleted,
 * as a release would).
 */
export const HANDOVER: LuaScript = {
  source: `local holder = redis.pcall('GET', KEYS[1])
if holder ~= ARGV[1] then
  if holder == false then return {0, 0, 0} end
  return {-1, 0, 0}
end
local fencing = ARGV[4] == '1'
if fencing then
  local refused = (function()
${CHECK_FENCE}
  end)()
  if refused then
    redis.call('DEL', KEYS[1])
    return {refused[1], 0, 0}
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
-- GET, not EXISTS: the commands a least-privilege user needs stay few.
local waiting = redis.call('GET', KEYS[3]) and 1 or 0
if fencing then return {1, redis.call('INCR', KEYS[2]), waiting} end
return {1, 0, waiting}`,
};

/**
 * {@linkcode HANDOVER} without fencing, small enough to send with `EVAL`
 * every time (an eager handover must never take a NOSCRIPT detour, see
 * `Lock`): KEYS: lock, waiting marker. ARGV: the holder's token, the
 * waiter's token, the waiter's ttl in ms. Replies {1, 0, waiting} handed
 * over, {0, 0, 0} the key is gone, {-1, 0, 0} another owner holds it.
 */
export const EAGER_HANDOVER: LuaScript = {
  source: `local holder = redis.pcall('GET', KEYS[1])
if holder ~= ARGV[1] then
  if holder == false then return {0, 0, 0} end
  return {-1, 0, 0}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {1, 0, redis.call('GET', KEYS[2]) and 1 or 0}`,
};

/**
 * KEYS: lock. ARGV: token, ttl in ms. Replies 1 renewed, 0 the key is gone,
 * -1 another owner holds it. It never creates the key.
 */
export const EXTEND: LuaScript = {
  source: `local holder = redis.pcall('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder == false then return 0 end
return -1`,
};

/**
 * KEYS: lock, and optionally the channel that wakes waiters and the waiting
 * marker. ARGV: token. Replies 1 deleted our own key, 0 the key is gone, -1
 * another owner (or a key of another type) holds it and was left alone.
 * The wake-up is sharded (`SPUBLISH`, Redis 7 and later: on a cluster it
 * reaches only the lock's shard); it is a plain `PUBLISH` where the server
 * does not know `SPUBLISH`, and also when the sharded message reached nobody
 * while the marker says someone waits (a client that can only `SUBSCRIBE`,
 * such as `@db/redis`). Subscribers make the same choice (see
 * `_subscriber.ts`). All are `PCALL`s: a refused or lost message costs
 * waiters latency, never a release.
 */
export const RELEASE: LuaScript = {
  source: `local holder = redis.pcall('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if KEYS[2] then
    local sent = redis.pcall('SPUBLISH', KEYS[2], '')
    local waiting = KEYS[3] and redis.pcall('GET', KEYS[3])
    if type(sent) == 'table' or (sent == 0 and type(waiting) == 'string') then
      redis.pcall('PUBLISH', KEYS[2], '')
    end
  end
  return 1
end
if holder == false then return 0 end
return -1`,
};

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
 * A cluster's `TRYAGAIN` (see {@linkcode whileMigrating}) is retried.
 */
export function runScript(
  client: ScriptClient,
  script: LuaScript,
  keys: string[],
  args: string[],
): Promise<unknown> {
  return whileMigrating(async () => {
    if (client.evalsha) {
      script.sha ??= await sha1(script.source);
      try {
        return await client.evalsha(script.sha, keys, args);
      } catch (error) {
        // Not startsWith: @db/redis prefixes "-", and GLIDE renames the code
        // to "NoScriptError".
        if (!/noscript/i.test(messageOf(error))) throw error;
      }
    }
    return await client.eval(script.source, keys, args);
  });
}

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
  const items = Array.isArray(reply) ? reply : [reply];
  const numbers = items.map(toNumber);
  if (numbers.length !== length || !numbers.every(Number.isSafeInteger)) {
    throw new TypeError(
      `Cannot read the lock script's reply as it must be ${length} integer(s): current value is ${
        JSON.stringify(reply, (_, v) => typeof v === "bigint" ? String(v) : v)
      }`,
    );
  }
  return numbers;
}

function toNumber(value: unknown): number {
  if (typeof value === "number" || typeof value === "bigint") {
    return Number(value);
  }
  if (typeof value === "string" && /^-?\d+$/.test(value)) return Number(value);
  return NaN;
}
