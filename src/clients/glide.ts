import type { ScriptClient } from "../client.ts";
import { withKind } from "../_client_kind.ts";

/** The part of a Valkey GLIDE client (`GlideClient`) that deadbolt uses. */
export interface GlideClient {
  /** Sends a raw command. */
  customCommand(args: string[]): Promise<unknown>;
  /** Present on GLIDE only; used to tell it apart from other clients. */
  invokeScript(script: never, options?: never): Promise<unknown>;
}

/**
 * Adapts a Valkey GLIDE client through `customCommand`. Waiters in other
 * processes poll with backoff (no wake-ups).
 *
 * @param client A connected `GlideClient`.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { GlideClient } from "npm:@valkey/valkey-glide";
 * import { fromGlide, Lock } from "@deadbolt/deadbolt";
 *
 * const glide = await GlideClient.createClient({ addresses: [{ host: "localhost", port: 6379 }] });
 * await using lock = await Lock.acquire(fromGlide(glide), "report");
 * ```
 */
export function fromGlide(client: GlideClient): ScriptClient {
  const command = (
    name: string,
    first: string,
    keys: string[],
    args: string[],
  ) =>
    client.customCommand([name, first, String(keys.length), ...keys, ...args]);
  return withKind("glide", {
    eval: (script, keys, args) => command("EVAL", script, keys, args),
    evalsha: (sha1, keys, args) => command("EVALSHA", sha1, keys, args),
    deadbolt: {
      wait: (numreplicas, timeout) =>
        client.customCommand(["WAIT", String(numreplicas), String(timeout)]),
    },
  });
}
