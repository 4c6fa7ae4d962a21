import { toIntegers } from "./_run_script.ts";
import type { LuaScript, Owner } from "./scripts.ts";
import { LINE } from "./_line_scripts.ts";

// A multi-lock holds the keys of several locks under one token: each key
// exactly as a Lock's (so Lock handles of the same names exclude it, and it
// excludes them). One script call covers the keys of one hash slot (on one
// server, all of them): it takes every key or none.

/**
 * KEYS: the locks' keys, then their lines of waiting processes, then when
 * those lines' seats lapse (n of each). ARGV: token, ttl in ms, patience
 * (ms). Takes every key, or none if any holds another owner's token or is
 * free but promised to a process that has waited in its line the patience
 * (see `LINE`; a set takes no place in line). Replies {1, 0, 0} taken (a
 * key that holds this token already is renewed), {0, ms, i} KEYS[i], the
 * first key found in the way, is held for `ms` more or promised for at most
 * `ms`, {2, 0, i} KEYS[i] holds another type.
 */
export const ACQUIRE_ALL: LuaScript = {
  source: `local n = #KEYS / 3
local lined = {}
for i = 1, n do
  local holder = redis.pcall('GET', KEYS[i])
  if type(holder) == 'table' then return {2, 0, i} end
  if holder and holder ~= ARGV[1] then
    return {0, redis.call('PTTL', KEYS[i]), i}
  end
  if not holder and redis.pcall('EXISTS', KEYS[n + i]) == 1 then
    lined[#lined + 1] = i
  end
end
if #lined > 0 then
  -- Some free name has processes in line: the line's Lua, only then.
${LINE}
  local _, now = clock()
  if now then
    for _, i in ipairs(lined) do
      line_key, seats_key = KEYS[n + i], KEYS[2 * n + i]
      local ahead, lapse = patient_ahead('', 1, now, tonumber(ARGV[3]))
      if ahead > 0 then return {0, math.max(1, lapse - now), i} end
    end
  end
end
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
end
return {1, 0, 0}`,
};

/**
 * KEYS: the locks' keys. ARGV: token, ttl in ms. Renews every key if every
 * key holds the token. Replies 1 renewed, 0 a key is gone, -1 a key holds
 * another owner's token or another type (nothing renewed).
 */
export const EXTEND_ALL: LuaScript = {
  source: `for _, key in ipairs(KEYS) do
  local holder = redis.pcall('GET', key)
  if holder ~= ARGV[1] then
    if holder == false then return 0 end
    return -1
  end
end
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[2]) end
return 1`,
  inOrder: true,
};

/**
 * KEYS: the locks' keys, then their release channels (as many). ARGV:
 * token. Deletes every key that holds the token, publishing on its channel
 * (sharded, plainly where the server has no `SPUBLISH`). Replies 1 every key
 * was the token's, 0 some were not (those are left alone).
 */
export const RELEASE_ALL: LuaScript = {
  source: `local n = #KEYS / 2
local all = 1
for i = 1, n do
  if redis.pcall('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    local sent = redis.pcall('SPUBLISH', KEYS[n + i], '')
    if type(sent) == 'table' then redis.pcall('PUBLISH', KEYS[n + i], '') end
  else
    all = 0
  end
end
return all`,
};

/** {@linkcode ACQUIRE_ALL}'s reply. */
export type AllReply =
  | { readonly status: "taken" }
  | { readonly status: "held"; readonly pttl: number; readonly index: number }
  | { readonly status: "wrong type"; readonly index: number };

/** Reads {@linkcode ACQUIRE_ALL}'s reply (`index`: 0-based). */
export function readAll(reply: unknown): AllReply {
  const [code, pttl, index] = toIntegers(reply, 3);
  if (code === 1) return { status: "taken" };
  if (code === 0) return { status: "held", pttl, index: index - 1 };
  if (code === 2) return { status: "wrong type", index: index - 1 };
  throw new TypeError(
    `Cannot read the acquire-all script's reply: current value is ${code}`,
  );
}

/** Reads {@linkcode EXTEND_ALL}'s or {@linkcode RELEASE_ALL}'s reply. */
export function readAllOwner(reply: unknown): Owner {
  const [code] = toIntegers(reply, 1);
  if (code === 1) return "ours";
  if (code === 0) return "gone";
  if (code === -1) return "taken";
  throw new TypeError(
    `Cannot read the multi-lock script's reply: current value is ${code}`,
  );
}
