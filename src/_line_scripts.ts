import type { LuaScript } from "./scripts.ts";

// The line of waiting processes in Redis, in Lua shared by the scripts of
// every kind of lock (see `_seat.ts` for the process's side): a sorted set
// of seats by arrival and one of when each place lapses, under the lock's
// hash tag (`LockKeys.line` and `LockKeys.seats`).

/**
 * Lua for the line of waiting processes, `line_key` (seats scored by
 * arrival on Redis' clock, in µs) and `seats_key` (seats scored by when they
 * lapse, in ms): `KEYS[3]` and `KEYS[4]` unless a script points them at
 * another lock's line. `patient_ahead(seat, n, now, patience)` walks the
 * first `n` seats
 * whose process still waits (dropping the ones that lapsed), up to `seat`,
 * and counts those that have waited `patience` ms or more: each is promised
 * one of `n` free holds; it returns the count, the earliest lapse among
 * them, and the first of them. `join(seat, ms)` takes a place at the back,
 * or keeps the one it has, and keeps it for `ms`. Either key of another type, or an ACL user without
 * the line's commands (`EXISTS TIME ZADD ZRANGE ZSCORE ZREM`), disables the
 * line (nobody waits in it): that costs fairness, never a lock.
 */
export const LINE = `local line_key, seats_key = KEYS[3], KEYS[4]
local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end
local function patient_ahead(seat, n, now, patience)
  local count, lapse, first, seen, i = 0, nil, nil, 0, 0
  for _ = 1, 32 + n do
    if seen >= n then break end
    local entry = redis.pcall('ZRANGE', line_key, i, i, 'WITHSCORES')
    if failed(entry) or not entry[1] or entry[1] == seat then break end
    local lapses = redis.pcall('ZSCORE', seats_key, entry[1])
    if failed(lapses) then return 0, nil, nil end
    if lapses and tonumber(lapses) > now then
      seen = seen + 1
      i = i + 1
      if now - tonumber(entry[2]) / 1000 >= patience then
        count = count + 1
        first = first or entry[1]
        if not lapse or tonumber(lapses) < lapse then lapse = tonumber(lapses) end
      end
    else
      if failed(redis.pcall('ZREM', line_key, entry[1])) then
        return 0, nil, nil
      end
      if lapses then redis.pcall('ZREM', seats_key, entry[1]) end
    end
  end
  return count, lapse, first
end
local function leave_line(seat)
  redis.pcall('ZREM', line_key, seat)
  redis.pcall('ZREM', seats_key, seat)
end
local function clock()
  local t = redis.pcall('TIME')
  if failed(t) then return nil end
  return t, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function join(seat, ms)
  local t, now = clock()
  if not t then return end
  local arrival = t[1] .. string.format('%06d', tonumber(t[2]))
  if failed(redis.pcall('ZADD', seats_key, string.format('%d', now + ms), seat)) then
    return
  end
  if failed(redis.pcall('ZADD', line_key, 'NX', arrival, seat)) then
    redis.pcall('ZREM', seats_key, seat)
    return
  end
  for _, key in ipairs({line_key, seats_key}) do
    if redis.call('PTTL', key) < tonumber(ms) then
      redis.call('PEXPIRE', key, ms)
    end
  end
end`;

/**
 * KEYS: the line of waiting processes and when their seats lapse. ARGV: a
 * seat. Takes the seat out of line (its process no longer waits). Replies 1.
 */
export const LEAVE: LuaScript = {
  source: `redis.pcall('ZREM', KEYS[1], ARGV[1])
redis.pcall('ZREM', KEYS[2], ARGV[1])
return 1`,
  inOrder: true,
};

/**
 * Lua run by a release that freed a hold, to wake waiters: publishes on
 * `KEYS[2]` with `SPUBLISH`, and also with `PUBLISH` where the server does
 * not know `SPUBLISH`, or where the sharded message reached nobody while
 * `KEYS[3]` exists (someone waits: a client that can only `SUBSCRIBE`, such
 * as `@db/redis`, may be among them). With `KEYS[4]` (`KEYS[3]` is then a
 * line, see {@linkcode LINE}), the message names the first seat in line,
 * and only that process's waiters wake: the freed hold is its turn (promised
 * to it once it has waited the patience). Others in line sleep on, so a
 * release costs one attempt, not one per waiting process; a process first in
 * line that cannot hear messages takes its turn at its next backoff attempt.
 * An empty message (nobody in line) wakes every process's waiters. A block
 * of its own: {@linkcode LINE} is defined in it only when someone waits, so
 * a release nobody waits for does not pay for it.
 */
export const PUBLISH_RELEASE = `do
  local waiting, turn = false, ''
  if KEYS[3] and redis.pcall('EXISTS', KEYS[3]) == 1 then
    waiting = true
    if KEYS[4] then
${LINE}
      local _, now = clock()
      if now then
        local _, _, first = patient_ahead('', 1, now, 0)
        turn = first or ''
      end
    end
  end
  local sent = redis.pcall('SPUBLISH', KEYS[2], turn)
  if type(sent) == 'table' or (sent == 0 and waiting) then
    redis.pcall('PUBLISH', KEYS[2], turn)
  end
end`;
