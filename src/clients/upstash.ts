import type { ScriptClient } from "../client.ts";
import { withKind } from "../_client_kind.ts";

/** The part of an `@upstash/redis` client that deadbolt uses. */
export interface UpstashClient {
  /** `EVAL` over HTTP, with keys and arguments as arrays. */
  eval(script: string, keys: string[], args: string[]): Promise<unknown>;
  /** `EVALSHA` over HTTP, with keys and arguments as arrays. */
  evalsha(sha1: string, keys: string[], args: string[]): Promise<unknown>;
}

/**
 * Adapts an `@upstash/redis` client. Its `eval(script, keys, args)` already
 * has deadbolt's shape, so passing the client itself works too; this binds
 * `eval` and `evalsha` and nothing else (Upstash's `subscribe` is an HTTP
 * event stream of its own, which deadbolt leaves alone). Waiters poll with
 * backoff; calls are not `ordered` (HTTP requests may overtake each other).
 * deadbolt's scripts reply with integers only, so Upstash's automatic JSON
 * deserialization does not change them.
 *
 * @param client An `@upstash/redis` client.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { Redis } from "npm:@upstash/redis";
 * import { fromUpstash, Lock } from "@deadbolt/deadbolt";
 *
 * await using lock = await Lock.acquire(fromUpstash(Redis.fromEnv()), "report");
 * ```
 */
export function fromUpstash(client: UpstashClient): ScriptClient {
  return withKind("upstash", {
    eval: (script, keys, args) => client.eval(script, keys, args),
    evalsha: (sha1, keys, args) => client.evalsha(sha1, keys, args),
  });
}
