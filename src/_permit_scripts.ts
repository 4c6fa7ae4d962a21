import type { LockKeys } from "./keys.ts";
import { toIntegers } from "./_run_script.ts";
import type { GrantReply, HoldScripts } from "./_hold_scripts.ts";
import { CHECK_FENCE, type LuaScript, type Owner } from "./scripts.ts";
import { LEAVE, LINE, PUBLISH_RELEASE } from "./_line_scripts.ts";
import { PATIENCE_MS } from "./_seat.ts";
import type { SemaphoreSettings } from "./options.ts";

// A semaphore's permits are one sorted set: each holder's token, scored by
// the moment (Redis' own clock, ms) its lease ends. Every script first drops
// the permits whose lease has ended, so a holder that died frees its permit
// when its lease ends, never earlier, and never another holder's. The key
// itself expires with the last lease, so an idle semaphore leaves nothing.
// Scripts read the clock with TIME (Redis 7 replicates scripts by effects).

/** Lua: `now`, Redis' clock in ms. */
export const NOW = `local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)`;

/**
 * Lua: refuses a `key` (`KEYS[n]`) of another type than a sorted set with
 * {2, 0}, then drops its ended leases.
 */
export const prune = (key: string): string =>
  `local kind = redis.call('TYPE', ${key})['ok']
if kind ~= 'zset' and kind ~= 'none' then return {2, 0} end
redis.call('ZREMRANGEBYSCORE', ${key}, '-inf', now)`;

/** Lua: makes the sorted set `key` (`KEYS[n]`) expire with its last lease. */
export const expireWithLast = (key: string): string =>
  `local last = redis.call('ZRANGE', ${key}, -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', ${key}, last[2]) end`;

/**
 * KEYS: permits, fence counter, the line of waiting processes and when their
 * seats lapse (as a lock's, see `LINE`). ARGV: token, ttl in ms, limit, "1"
 * to issue a fence, the caller's seat ("" for one attempt), how long (ms) its
 * place in line lasts, and the patience (ms). Grants a permit while fewer
 * than `limit` leases run, but not one promised to a process ahead in line
 * (each that has waited the patience is promised one of the free permits).
 * Replies {1, fence} granted (fence 0 unless fencing; a token that holds a
 * permit already renews it; the seat leaves the line), {0, ms} none free for
 * this caller (the seat then takes or keeps its place): the first lease
 * ends, or the first promise lapses, in `ms`; {2, 0} the key holds another
 * type, {3, 0} the fence counter is not a safe integer.
 */
export const ACQUIRE_PERMIT: LuaScript = {
  source: `local fencing = ARGV[4] == '1'
${CHECK_FENCE}
${NOW}
${prune("KEYS[1]")}
local ttl = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  ${expireWithLast("KEYS[1]")}
  if fencing then return {1, tonumber(redis.call('GET', KEYS[2]) or '0')} end
  return {1, 0}
end
local seat = ARGV[5]
local free = tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1])
local lined = redis.pcall('EXISTS', KEYS[3]) == 1
if free > 0 and not lined then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  ${expireWithLast("KEYS[1]")}
  if fencing then return {1, redis.call('INCR', KEYS[2])} end
  return {1, 0}
end
-- Someone waits, or every permit is held: the line's Lua, from here on only.
${LINE}
local promised = -1
if free > 0 then
  local ahead, lapse = patient_ahead(seat, free, now, tonumber(ARGV[7]))
  if ahead >= free then promised = math.max(1, lapse - now) end
  if promised < 0 then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
    ${expireWithLast("KEYS[1]")}
    if seat ~= '' then leave_line(seat) end
    if fencing then return {1, redis.call('INCR', KEYS[2])} end
    return {1, 0}
  end
end
if seat ~= '' then join(seat, ARGV[6]) end
if promised >= 0 then return {0, promised} end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}`,
};

/**
 * KEYS: permits. ARGV: token, ttl in ms. Renews the token's permit to `ttl`
 * ms from now if its lease has not ended. Replies 1 renewed, 0 the permit
 * is gone (its lease ended, or it was released), -1 the key holds another
 * type (left alone). It never grants a permit.
 */
export const EXTEND_PERMIT: LuaScript = {
  source: `${NOW}
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then return -1 end
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not ends or tonumber(ends) <= now then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
${expireWithLast("KEYS[1]")}
return 1`,
  inOrder: true,
};

/**
 * KEYS: permits, and optionally the channel that wakes waiters, a key that
 * exists while someone waits (a semaphore's line, a writer's mark) and, for
 * a semaphore, when the line's seats lapse. ARGV: token. Frees the token's permit and, if its lease was still
 * running, wakes waiters as a lock's release does (see `PUBLISH_RELEASE`).
 * Replies 1 freed a running permit, 0 there was none, -1 the key holds
 * another type (left alone).
 */
export const RELEASE_PERMIT: LuaScript = {
  source: `${NOW}
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then return -1 end
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if not ends or tonumber(ends) <= now then return 0 end
if KEYS[2] then
${PUBLISH_RELEASE}
end
return 1`,
};

/**
 * KEYS: permits, the line of waiting processes. ARGV: the releasing token,
 * the receiving token, its ttl in ms, its limit. Hands the releasing token's
 * running permit to the receiving token (a waiter of the same process that
 * wants no fence), if the receiver's own limit allows one more once this
 * permit is freed. Replies {1, waiting} handed (waiting 1 when processes
 * are in line), {0, 0} the releasing token holds no running permit, {2, 0}
 * the receiver's limit is reached, {4, 0} the key holds another type; but
 * for a handover, nothing is changed.
 */
export const TRANSFER_PERMIT: LuaScript = {
  source: `${NOW}
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then return {4, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {0, 0} end
if redis.call('ZCARD', KEYS[1]) - 1 >= tonumber(ARGV[4]) then return {2, 0} end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
${expireWithLast("KEYS[1]")}
return {1, redis.pcall('EXISTS', KEYS[2]) == 1 and 1 or 0}`,
};

/** {@linkcode TRANSFER_PERMIT}'s outcome. */
export type TransferReply =
  | { readonly status: "handed"; readonly waiting: boolean }
  | { readonly status: "gone" | "full" | "wrong type" };

/** Reads {@linkcode TRANSFER_PERMIT}'s reply. */
export function readTransfer(reply: unknown): TransferReply {
  const [code, waiting] = toIntegers(reply, 2);
  if (code === 1) return { status: "handed", waiting: waiting === 1 };
  if (code === 0) return { status: "gone" };
  if (code === 2) return { status: "full" };
  if (code === 4) return { status: "wrong type" };
  throw new TypeError(
    `Cannot read the transfer-permit script's reply: current value is ${code}`,
  );
}

/**
 * Reads {@linkcode ACQUIRE_PERMIT}'s reply: granted with its fence, `busy`
 * with the time until the first lease ends, the key of `wrong type`, or a
 * `bad fence` counter.
 */
export function readPermit(reply: unknown): GrantReply {
  const [code, value] = toIntegers(reply, 2);
  if (code === 1) return { status: "granted", fence: value };
  if (code === 0) return { status: "busy", freeIn: value };
  if (code === 2) return { status: "wrong type" };
  if (code === 3) return { status: "bad fence" };
  throw new TypeError(
    `Cannot read the acquire-permit script's reply: current value is ${code}`,
  );
}

/**
 * Reads {@linkcode EXTEND_PERMIT}'s or {@linkcode RELEASE_PERMIT}'s reply as
 * an {@linkcode Owner}: the token's running permit (`ours`), none (`gone`),
 * or a key of another type (`taken`).
 */
export function readPermitOwner(reply: unknown): Owner {
  const [code] = toIntegers(reply, 1);
  if (code === 1) return "ours";
  if (code === 0) return "gone";
  if (code === -1) return "taken";
  throw new TypeError(
    `Cannot read the permit script's reply: current value is ${code}`,
  );
}

/**
 * The mark of a waiter turned away (a semaphore's, a writer's):
 * `<prefix>{<name>}:waiting`, with a short expiry. A release publishes
 * plainly as well when it stands; a writer's stops new readers.
 */
export const markKey = (keys: LockKeys): string => `${keys.lock}:waiting`;

/** The most waiters of one process that ask Redis at once for one name. */
export const MAX_PARALLEL = 16;

/**
 * The scripts of a semaphore's permits on its keys (`keys.lock` is the
 * permits' sorted set), for a `ScriptedStore`.
 */
export function permitScripts(
  keys: LockKeys,
  { limit, ttl, fencing }: Pick<SemaphoreSettings, "limit" | "ttl" | "fencing">,
): HoldScripts {
  const { lock, fence, released, line, seats } = keys;
  return {
    kind: "semaphore",
    lineKey: lock,
    // As many as there are permits (within reason).
    parallel: Math.min(limit, MAX_PARALLEL),
    wakeAll: false,
    channel: released,
    keys,
    acquire: (token, place) => ({
      script: ACQUIRE_PERMIT,
      keys: [lock, fence, line, seats],
      args: [
        token,
        String(ttl),
        String(limit),
        fencing ? "1" : "0",
        place?.seat ?? "",
        String(place?.ms ?? 0),
        String(PATIENCE_MS),
      ],
    }),
    leave: (seat) => ({ script: LEAVE, keys: [line, seats], args: [seat] }),
    transfer: (from, to) => ({
      script: TRANSFER_PERMIT,
      keys: [lock, line],
      args: [from, to.token, String(to.ttl), String(to.limit)],
    }),
    readTransfer,
    readGrant: readPermit,
    extend: (token, ttl) => ({
      script: EXTEND_PERMIT,
      keys: [lock],
      args: [token, String(ttl)],
    }),
    release: (token) => ({
      script: RELEASE_PERMIT,
      keys: [lock, released, line, seats],
      args: [token],
    }),
    readOwner: readPermitOwner,
    lost: (owner) =>
      owner === "gone"
        ? "its permit's lease ended, or the permit was deleted"
        : "its key holds a value of another type",
  };
}
