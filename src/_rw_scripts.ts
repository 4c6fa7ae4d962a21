import type { LockKeys } from "./keys.ts";
import type { HoldScripts } from "./_hold_scripts.ts";
import {
  expireWithLast,
  EXTEND_PERMIT,
  markKey,
  MAX_PARALLEL,
  NOW,
  prune,
  readPermit,
  readPermitOwner,
  RELEASE_PERMIT,
} from "./_permit_scripts.ts";
import {
  CHECK_FENCE,
  EXTEND,
  type LuaScript,
  readOwner,
  RELEASE,
} from "./scripts.ts";
import { LINE } from "./_line_scripts.ts";
import { PATIENCE_MS } from "./_seat.ts";
import type { ReadWriteLockSettings } from "./options.ts";

// A read-write lock is a writer key (the writer's token, with its lease as
// its expiry, as a Lock's key) and a sorted set of readers (each token
// scored by the end of its lease on Redis' clock, as a semaphore's
// permits). A writer is granted only when no reader's lease runs and no
// other writer holds the key; a reader only when no writer holds it and no
// writer waits (the waiting mark, set by a writer turned away, until its
// next attempt): so writers do not starve, and a reader and a writer are
// never granted at once. Fences count writers.

/**
 * KEYS: writer, readers, the writer-waiting mark, fence counter. ARGV:
 * token, ttl in ms. Replies {1, fence} granted (fence: the last writer's,
 * 0 if none), {0, ms} a writer holds or waits (ms: until the writer's lease
 * or mark ends), {2, 0} a key holds another type.
 */
export const ACQUIRE_READ: LuaScript = {
  source: `${NOW}
local writer = redis.pcall('GET', KEYS[1])
if type(writer) == 'table' then return {2, 0} end
${prune("KEYS[2]")}
local ttl = tonumber(ARGV[2])
local fence = redis.pcall('GET', KEYS[4])
if type(fence) ~= 'string' or not string.match(fence, '^%d+$') then fence = '0' end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  if writer then return {0, redis.call('PTTL', KEYS[1])} end
  local waits = redis.pcall('GET', KEYS[3])
  if type(waits) == 'string' then return {0, redis.call('PTTL', KEYS[3])} end
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
${expireWithLast("KEYS[2]")}
return {1, tonumber(fence)}`,
};

/**
 * KEYS: writer, fence counter, the line of waiting processes and when their
 * seats lapse (as a lock's, see `LINE`), readers, and for a waiter the
 * writer-waiting mark. ARGV: token, ttl in ms, "1" to issue a fence, for a
 * waiter how long (ms) the mark and its place in line last, the caller's
 * seat ("" for one attempt), and the patience (ms). Replies {1, fence}
 * granted (the seat leaves the line), {0, ms} not granted (the mark is then
 * set, the seat takes or keeps its place): held by a writer, or readers (ms
 * until the first lease in the way ends), or free but promised to a writer
 * first in line (ms until its place lapses); {2, 0} a key holds another
 * type, {3, 0} the fence counter is not a safe integer.
 */
export const ACQUIRE_WRITE: LuaScript = {
  source: `local fencing = ARGV[3] == '1'
${CHECK_FENCE}
${NOW}
local writer = redis.pcall('GET', KEYS[1])
if type(writer) == 'table' then return {2, 0} end
if writer == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if fencing then return {1, tonumber(redis.call('GET', KEYS[2]) or '0')} end
  return {1, 0}
end
${prune("KEYS[5]")}
local seat = ARGV[5]
local free = not writer and redis.call('ZCARD', KEYS[5]) == 0
local lined = redis.pcall('EXISTS', KEYS[3]) == 1
if free and not lined then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if KEYS[6] then redis.call('DEL', KEYS[6]) end
  if fencing then return {1, redis.call('INCR', KEYS[2])} end
  return {1, 0}
end
-- Someone waits, or the lock is held: the line's Lua, from here on only.
${LINE}
local promised = -1
if free then
  local ahead, lapse = patient_ahead(seat, 1, now, tonumber(ARGV[6]))
  if ahead > 0 then promised = math.max(1, lapse - now) end
  if promised < 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    if KEYS[6] then redis.call('DEL', KEYS[6]) end
    if seat ~= '' then leave_line(seat) end
    if fencing then return {1, redis.call('INCR', KEYS[2])} end
    return {1, 0}
  end
end
if KEYS[6] then redis.call('SET', KEYS[6], '1', 'PX', ARGV[4]) end
if seat ~= '' then join(seat, ARGV[4]) end
if promised >= 0 then return {0, promised} end
if writer then return {0, redis.call('PTTL', KEYS[1])} end
local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}`,
};

/**
 * KEYS: the line of waiting writers' processes, when their seats lapse, the
 * writer-waiting mark, and the channel that wakes waiters. ARGV: a seat.
 * Takes a writer's seat out of line (its process no longer waits); when no
 * writer is left in line, takes the mark away too and says so on the
 * channel (as a release does, see `PUBLISH_RELEASE`), so that readers it
 * kept out need not wait for it to lapse. Replies 1.
 */
export const LEAVE_WRITE: LuaScript = {
  source: `redis.pcall('ZREM', KEYS[1], ARGV[1])
redis.pcall('ZREM', KEYS[2], ARGV[1])
if redis.pcall('ZCARD', KEYS[1]) == 0 and redis.pcall('DEL', KEYS[3]) == 1 then
  local sent = redis.pcall('SPUBLISH', KEYS[4], '')
  if type(sent) == 'table' or sent == 0 then redis.pcall('PUBLISH', KEYS[4], '') end
end
return 1`,
  inOrder: true,
};

/** The readers' sorted set of the read-write lock whose keys are `keys`. */
export const readersKey = (keys: LockKeys): string => `${keys.lock}:readers`;

/** The scripts of a read-write lock's read holds, for a `ScriptedStore`. */
export function readScripts(
  keys: LockKeys,
  { ttl }: Pick<ReadWriteLockSettings, "ttl">,
): HoldScripts {
  const { lock, fence, released } = keys;
  const waiting = markKey(keys);
  const readers = readersKey(keys);
  return {
    kind: "read lock",
    lineKey: readers,
    // Readers hold together: several may ask at once.
    parallel: MAX_PARALLEL,
    wakeAll: true,
    alsoWakes: lock,
    channel: released,
    keys: { lock: readers, fence },
    acquire: (token) => ({
      script: ACQUIRE_READ,
      keys: [lock, readers, waiting, fence],
      args: [token, String(ttl)],
    }),
    readGrant: readPermit,
    extend: (token, ttl) => ({
      script: EXTEND_PERMIT,
      keys: [readers],
      args: [token, String(ttl)],
    }),
    release: (token) => ({
      script: RELEASE_PERMIT,
      keys: [readers, released, waiting],
      args: [token],
    }),
    readOwner: readPermitOwner,
    lost: (owner) =>
      owner === "gone"
        ? "its read lease ended, or it was deleted"
        : "its key holds a value of another type",
  };
}

/** The scripts of a read-write lock's write holds, for a `ScriptedStore`. */
export function writeScripts(
  keys: LockKeys,
  { ttl, fencing }: Pick<ReadWriteLockSettings, "ttl" | "fencing">,
): HoldScripts {
  const { lock, fence, released, line, seats } = keys;
  const waiting = markKey(keys);
  const readers = readersKey(keys);
  return {
    kind: "write lock",
    lineKey: lock,
    parallel: 1,
    wakeAll: false,
    alsoWakes: readers,
    channel: released,
    keys,
    // A writer turned away marks the lock until its next attempt is due,
    // and takes a place in line for its process.
    acquire: (token, place) => ({
      script: ACQUIRE_WRITE,
      keys: place === undefined
        ? [lock, fence, line, seats, readers]
        : [lock, fence, line, seats, readers, waiting],
      args: [
        token,
        String(ttl),
        fencing ? "1" : "0",
        String(place?.ms ?? 0),
        place?.seat ?? "",
        String(PATIENCE_MS),
      ],
    }),
    leave: (seat) => ({
      script: LEAVE_WRITE,
      keys: [line, seats, waiting, released],
      args: [seat],
    }),
    readGrant: readPermit,
    extend: (token, ttl) => ({
      script: EXTEND,
      keys: [lock],
      args: [token, String(ttl)],
    }),
    release: (token) => ({
      script: RELEASE,
      keys: [lock, released, waiting],
      args: [token],
    }),
    readOwner,
    lost: (owner) =>
      owner === "gone"
        ? "its key expired or was deleted"
        : "another owner holds its key",
  };
}
