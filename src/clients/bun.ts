import type { ScriptClient } from "../client.ts";
import { withKind } from "../_client_kind.ts";

/** The part of Bun's built-in `RedisClient` (Bun ≥ 1.2.9) that deadbolt uses. */
export interface BunRedisClient {
  /** Sends a raw command; arguments must be strings. */
  send(command: string, args: string[]): Promise<unknown>;
  /** Present on Bun's client; used to tell it apart from other clients. */
  duplicate(): unknown;
}

/**
 * Adapts Bun's built-in `RedisClient` through `send`, which exists since
 * Bun 1.2.9. Waiters in other processes poll with backoff (no wake-ups).
 *
 * @param client A Bun `RedisClient`.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { RedisClient } from "bun";
 * import { fromBunRedis, Lock } from "@deadbolt/deadbolt";
 *
 * const redis = fromBunRedis(new RedisClient("redis://localhost:6379"));
 * await using lock = await Lock.acquire(redis, "report");
 * ```
 */
export function fromBunRedis(client: BunRedisClient): ScriptClient {
  return withKind("bun", {
    eval: (script, keys, args) =>
      client.send("EVAL", [script, String(keys.length), ...keys, ...args]),
    evalsha: (sha1, keys, args) =>
      client.send("EVALSHA", [sha1, String(keys.length), ...keys, ...args]),
    deadbolt: {
      ordered: true,
      wait: (numreplicas, timeout) =>
        client.send("WAIT", [String(numreplicas), String(timeout)]),
    },
  });
}
