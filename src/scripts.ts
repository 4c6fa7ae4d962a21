import { describeReply, toIntegers } from "./_run_script.ts";
import { LINE, PUBLISH_RELEASE } from "./_line_scripts.ts";

/** A Lua script and its SHA-1, computed once with Web Crypto. */
export interface LuaScript {
  /** The script's source. */
  readonly source: string;
  /** Its SHA-1 in hex, once {@linkcode runScript} has computed it. */
  sha?: string;
  /**
   * Always sent with `EVAL`, so that it runs before whatever the process
   * sends next on the client: a `NOSCRIPT` answer to `EVALSHA` (after a
   * restart, a failover or `SCRIPT FLUSH`) would send it again only after
   * those. A line's LEAVE then came after the process's next attempt,
   * which found the process's own seat still in line and was refused; an
   * extension (a renewal, `extend()`) could run after one sent later,
   * which a lease on an `ordered` client counts on (`_extensions.ts`).
   * Extensions are sent every few seconds at most: their bytes cost nothing
   * that matters.
   */
  readonly inOrder?: boolean;
}

// Every script replies with integers only: Lua booleans and numeric strings
// come back differently from different clients (and over RESP2 and RESP3).

/**
 * Lua run before any write when `fencing` is true: returns {3, 0} (or an
 * ACL error) when the fence counter KEYS[2] cannot give a safe next value. A
 * fence above 2^53 - 2 is refused because a Lua number (a double) would
 * round its successor. Refusing before the write matters: Lua does not
 * roll back.
 */
export const CHECK_FENCE = `if fencing then
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
 * KEYS: lock, fence counter, and (for every `Lock`; Redlock passes neither)
 * the line of waiting processes and when their seats lapse. ARGV: token, ttl
 * in ms, "1" to issue a fence, the caller's seat ("" for one attempt, which
 * does not take a place in line), how long (ms) a place in line lasts
 * unless its process asks again, and the patience (ms): a free lock goes to
 * anyone while the first seat in line has waited less than that, and then
 * only to the first seat (its process's head asks with it).
 * Replies {1, fence} granted (fence 0 unless fencing; the seat leaves the
 * line), {0, ms} not granted (the seat then takes or keeps its place): held
 * by another owner for `ms` more (-1: no expiry), or free but promised to
 * the first seat for at most `ms`; {2, 0} the lock key holds another type,
 * {3, 0} the fence counter is not a safe integer.
 */
export const ACQUIRE: LuaScript = {
  source: `local fencing = ARGV[3] == '1'
${CHECK_FENCE}
local holder = redis.pcall('GET', KEYS[1])
if type(holder) == 'table' then return {2, 0} end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if fencing then return {1, tonumber(redis.call('GET', KEYS[2]) or '0')} end
  return {1, 0}
end
local lined = KEYS[3] and redis.pcall('EXISTS', KEYS[3]) == 1
if holder == false and not lined then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if fencing then return {1, redis.call('INCR', KEYS[2])} end
  return {1, 0}
end
if not KEYS[3] then return {0, redis.call('PTTL', KEYS[1])} end
-- Someone waits, or the lock is held: the line's Lua, from here on only.
${LINE}
local seat = ARGV[4]
local promised = -1
if holder == false then
  local _, now = clock()
  if now then
    local ahead, lapse = patient_ahead(seat, 1, now, tonumber(ARGV[6]))
    if ahead > 0 then promised = math.max(1, lapse - now) end
  end
  if promised < 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    if seat ~= '' then leave_line(seat) end
    if fencing then return {1, redis.call('INCR', KEYS[2])} end
    return {1, 0}
  end
end
if seat ~= '' then join(seat, ARGV[5]) end
if holder == false then return {0, promised} end
return {0, redis.call('PTTL', KEYS[1])}`,
};

/** {@linkcode ACQUIRE}'s reply. */
export type AcquireReply =
  | { readonly status: "granted"; readonly fence: number }
  | { readonly status: "held"; readonly pttl: number }
  | { readonly status: "wrong type" | "bad fence" };

/**
 * Reads {@linkcode ACQUIRE}'s reply: granted with its fence (0 without
 * fencing), held by another owner (or promised to the first in line) for
 * `pttl` more ms (-1: the key has no expiry), the key of `wrong type`, or a
 * `bad fence` counter.
 */
export function readAcquire(reply: unknown): AcquireReply {
  const [code, value] = toIntegers(reply, 2);
  if (code === 1) return { status: "granted", fence: value };
  if (code === 0) return { status: "held", pttl: value };
  if (code === 2) return WRONG_TYPE;
  if (code === 3) return BAD_FENCE;
  throw unexpected("acquire", reply);
}

const WRONG_TYPE = { status: "wrong type" } as const;
const BAD_FENCE = { status: "bad fence" } as const;

/**
 * Passes a lock from its holder straight to a waiter in the same process, in
 * one round trip: KEYS: lock, fence counter, line of waiting processes.
 * ARGV: the holder's token, the waiter's token, the waiter's ttl in ms, "1"
 * to issue a fence. Replies {1, fence, waiting} handed over (also when run
 * again after it did: the key holds the waiter's token, whose ttl then
 * counts from this run), where waiting
 * is 1 when other processes wait in line, {0, 0, 0}
 * the key is gone, {-1, 0, 0} another owner holds it (both left alone),
 * {3, 0, 0} the fence counter is unusable (the holder's key is then deleted,
 * as a release would).
 */
export const HANDOVER: LuaScript = {
  source: `local holder = redis.pcall('GET', KEYS[1])
if holder == ARGV[2] then
  -- Run twice (a client resent it after a reconnect, or a release retried
  -- after its call timed out): handed over already, and nobody has taken the
  -- lock since, so the counter is the waiter's fence. The waiter counts its
  -- lease from this call: so does the key.
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  local waiting = redis.pcall('EXISTS', KEYS[3]) == 1 and 1 or 0
  if ARGV[4] == '1' then
    return {1, tonumber(redis.call('GET', KEYS[2]) or '0'), waiting}
  end
  return {1, 0, waiting}
end
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
local waiting = redis.pcall('EXISTS', KEYS[3])
if waiting ~= 1 then waiting = 0 end
if fencing then return {1, redis.call('INCR', KEYS[2]), waiting} end
return {1, 0, waiting}`,
};

/**
 * {@linkcode HANDOVER} without fencing, small enough to send with `EVAL`
 * every time (an eager handover must never take a NOSCRIPT detour, see
 * `Lock`): KEYS: lock, line of waiting processes. ARGV: the holder's token, the
 * waiter's token, the waiter's ttl in ms. Replies {1, 0, waiting} handed
 * over (also when run again after it did, the ttl then counting from that
 * run), {0, 0, 0} the key is gone,
 * {-1, 0, 0} another owner holds it.
 */
export const EAGER_HANDOVER: LuaScript = {
  source: `local holder = redis.pcall('GET', KEYS[1])
if holder == ARGV[2] then
  -- Run twice: handed over already; the lease counts from this call.
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, 0, redis.pcall('EXISTS', KEYS[2]) == 1 and 1 or 0}
end
if holder ~= ARGV[1] then
  if holder == false then return {0, 0, 0} end
  return {-1, 0, 0}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {1, 0, redis.pcall('EXISTS', KEYS[2]) == 1 and 1 or 0}`,
};

/** {@linkcode HANDOVER}'s or {@linkcode EAGER_HANDOVER}'s reply. */
export type HandoverReply =
  | {
    readonly status: "handed";
    readonly fence: number;
    readonly waiting: boolean;
  }
  | { readonly status: Exclude<Owner, "ours"> | "bad fence" };

/**
 * Reads a handover's reply: handed over (with the fence, and whether a
 * waiter's mark was found), the holder's key `gone` or `taken` by another
 * owner (both left alone), or a `bad fence` counter (the key then deleted).
 */
export function readHandover(reply: unknown): HandoverReply {
  const [code, fence, waiting] = toIntegers(reply, 3);
  if (code === 1) return { status: "handed", fence, waiting: waiting === 1 };
  if (code === 0) return GONE;
  if (code === -1) return TAKEN;
  if (code === 3) return BAD_FENCE;
  throw unexpected("handover", reply);
}

const GONE = { status: "gone" } as const;
const TAKEN = { status: "taken" } as const;

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
  inOrder: true,
};

/**
 * Who held a lock's key when {@linkcode EXTEND} or {@linkcode RELEASE} ran:
 * the caller's token (`ours`: renewed, or deleted), nobody (`gone`), or
 * another owner, or a value of another type (`taken`; left alone).
 */
export type Owner = "ours" | "gone" | "taken";

/** Reads {@linkcode EXTEND}'s or {@linkcode RELEASE}'s reply. */
export function readOwner(reply: unknown): Owner {
  const [code] = toIntegers(reply, 1);
  if (code === 1) return "ours";
  if (code === 0) return "gone";
  if (code === -1) return "taken";
  throw unexpected("extend or release", reply);
}

/**
 * Takes over a hold by its token, for another handle (another process,
 * most likely): KEYS: lock, fence counter. ARGV: token, ttl in ms. Renews
 * the key to `ttl` if it holds the token, and reads the fence it was issued
 * (the counter's value: no grant can have come since). Replies {1, fence}
 * (fence 0 when the counter is missing or unusable), {0, 0} the key is
 * gone, {-1, 0} another owner holds it. It never creates the key.
 */
export const ADOPT: LuaScript = {
  source: `local holder = redis.pcall('GET', KEYS[1])
if holder ~= ARGV[1] then
  if holder == false then return {0, 0} end
  return {-1, 0}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local fence = redis.pcall('GET', KEYS[2])
if type(fence) ~= 'string' or not string.match(fence, '^%d+$')
    or tonumber(fence) >= 9007199254740991 then
  return {1, 0}
end
return {1, tonumber(fence)}`,
};

/** {@linkcode ADOPT}'s reply: the hold was the token's, with its fence, or not. */
export type AdoptReply =
  | { readonly status: "ours"; readonly fence: number }
  | { readonly status: Exclude<Owner, "ours"> };

/** Reads {@linkcode ADOPT}'s reply. */
export function readAdopt(reply: unknown): AdoptReply {
  const [code, fence] = toIntegers(reply, 2);
  if (code === 1) return { status: "ours", fence };
  if (code === 0) return GONE;
  if (code === -1) return TAKEN;
  throw unexpected("adopt", reply);
}

/**
 * KEYS: lock, and optionally the channel that wakes waiters, the line of
 * waiting processes and when their seats lapse. ARGV: token. Replies 1
 * deleted our own key (and woke waiters, see `PUBLISH_RELEASE`: the first
 * process in line, or every process's), 0 the key is gone, -1 another owner (or a key of another
 * type) holds it and was left alone. Subscribers pick the sharded or the
 * plain channel the same way (see `_subscriber.ts`).
 */
export const RELEASE: LuaScript = {
  source: `local holder = redis.pcall('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if KEYS[2] then
${PUBLISH_RELEASE}
  end
  return 1
end
if holder == false then return 0 end
return -1`,
};

function unexpected(script: string, reply: unknown): TypeError {
  return new TypeError(
    `Cannot read the ${script} script's reply: current value is ${
      describeReply(reply)
    }`,
  );
}
