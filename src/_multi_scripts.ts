import { toIntegers } from "./_run_script.ts";
import type { LuaScript, Owner } from "./scripts.ts";

// A multi-lock holds the keys of several locks under one token: each key
// exactly as a Lock's (so Lock handles of the same names exclude it, and it
// excludes them). One script call covers the keys of one hash slot (on one
// server, all of them): it takes every key or none.

/**
 * KEYS: the locks' keys. ARGV: token, ttl in ms. Takes every key, or none
 * if any holds another owner's token. Replies {1, 0, 0} taken (a key that
 * holds this token already is renewed), {0, pttl, i} KEYS[i], the first key
 * found held by another owner, has `pttl` ms left, {2, 0, i} KEYS[i] holds
 * another type.
 */
export const ACQUIRE_ALL: LuaScript = {
  source: `for i, key in ipairs(KEYS) do
  local holder = redis.pcall('GET', key)
  if type(holder) == 'table' then return {2, 0, i} end
  if holder and holder ~= ARGV[1] then
    return {0, redis.call('PTTL', key), i}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
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
