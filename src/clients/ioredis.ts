import type { ScriptClient } from "../client.ts";
import { keySlot } from "../keys.ts";
import {
  type OpenSubscriber,
  shardedFirst,
  sharedSubscriber,
} from "../_subscriber.ts";
import { bindWait, closeWithin, connectOrClose } from "./_shared.ts";
import { withKind } from "../_client_kind.ts";

/** The part of an ioredis 5 or 6 client (or `Cluster`) that deadbolt uses. */
export interface IoredisClient {
  /** `EVAL` with variadic keys and arguments. */
  eval(
    script: string,
    numkeys: number,
    ...keysAndArgs: string[]
  ): Promise<unknown>;
  /** `EVALSHA` with variadic keys and arguments. */
  evalsha(
    sha1: string,
    numkeys: number,
    ...keysAndArgs: string[]
  ): Promise<unknown>;
  /** Present on ioredis only; used to tell it apart from other clients. */
  defineCommand(name: string, definition: { lua: string }): unknown;
  /** `WAIT`, for the `waitReplicas` option. */
  wait?(numreplicas: number, timeout: number): Promise<unknown>;
  /**
   * A new connection (or, for a `Cluster`, a new cluster client) with the
   * same options and the given overrides, for pub/sub wake-ups.
   */
  duplicate?(...options: never[]): IoredisSubscriber;
  /** `true` on an ioredis `Cluster`. */
  readonly isCluster?: boolean;
  /** A `Cluster`'s slot table: the `host:port` of each slot's nodes, master first. */
  readonly slots?: readonly (readonly string[] | undefined)[];
  /** A `Cluster`'s node connections. */
  nodes?(role: "master"): IoredisNode[];
  /**
   * The client's options; deadbolt reads `keyPrefix`, and a `Cluster`'s
   * `redisOptions`, which its duplicate for wake-ups starts from.
   */
  readonly options?: {
    readonly keyPrefix?: string;
    readonly redisOptions?: object;
  };
}

/** One node connection of an ioredis `Cluster`. */
export interface IoredisNode {
  /** The node's address. */
  readonly options: { readonly host?: string; readonly port?: number };
  /** `WAIT`, for the `waitReplicas` option. */
  wait(numreplicas: number, timeout: number): Promise<unknown>;
}

/** The part of an ioredis connection (a duplicate) used to subscribe. */
export interface IoredisSubscriber {
  /** `"wait"`, `"connecting"`, `"ready"`, `"reconnecting"`, `"end"`, … */
  readonly status: string;
  /** Connects; resolves once ioredis is ready (its ready check answered). */
  connect(): Promise<unknown>;
  /** `SUBSCRIBE`. */
  subscribe(channel: string): Promise<unknown>;
  /** `UNSUBSCRIBE`. */
  unsubscribe(channel: string): Promise<unknown>;
  /** `SSUBSCRIBE` (ioredis 5.3 and later). */
  ssubscribe?(channel: string): Promise<unknown>;
  /** `SUNSUBSCRIBE` (ioredis 5.3 and later). */
  sunsubscribe?(channel: string): Promise<unknown>;
  /**
   * Listens for plain (`message`) and sharded (`smessage`) messages, for
   * errors (`error`), for each (re)connection being ready (`ready`) and for
   * the end of the connection (`end`). Typed as ioredis' overloads allow:
   * the listener gets the channel and the payload for messages, the error
   * for `error`, nothing for `ready` and `end`.
   */
  on(
    event: "message" | "smessage" | "error" | "ready" | "end",
    listener: (channel: string, message?: string) => void,
  ): unknown;
  /** Removes a listener added with `on`. */
  off(event: "end", listener: () => void): unknown;
  /** Closes the connection and stops reconnecting. */
  disconnect(): void;
}

/**
 * Adapts an ioredis 5 or 6 client (or `Cluster`). Waiters are woken by
 * pub/sub over one extra connection (`client.duplicate()`), open only while
 * some lock of this process is waited for through this client: it is
 * connected and ready before it subscribes, its errors are listened to
 * (reported as a {@linkcode SubscriberErrorEvent}, never unhandled), and it
 * is closed, socket and timers gone, before the call that ended the wait
 * (or `release()`) resolves.
 *
 * @param client A connected ioredis client.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { Redis } from "npm:ioredis";
 * import { fromIoredis, Lock } from "@deadbolt/deadbolt";
 *
 * const redis = fromIoredis(new Redis());
 * await using lock = await Lock.acquire(redis, "report");
 * ```
 */
export function fromIoredis(client: IoredisClient): ScriptClient {
  const cluster = client.isCluster === true;
  return withKind("ioredis", {
    eval: (script, keys, args) =>
      client.eval(script, keys.length, ...keys, ...args),
    evalsha: (sha1, keys, args) =>
      client.evalsha(sha1, keys.length, ...keys, ...args),
    deadbolt: {
      // A Cluster may resend a redirected call after later ones.
      ordered: !cluster,
      cluster,
      ...(cluster ? { wait: clusterWait(client) } : bindWait(client)),
      ...(typeof client.duplicate === "function" && {
        subscribe: sharedSubscriber(openSubscriber(client, cluster)),
      }),
    },
  });
}

function openSubscriber(
  client: IoredisClient,
  cluster: boolean,
): OpenSubscriber {
  return async ({ deliver, fail, signal }) => {
    const duplicate = client.duplicate!.bind(client) as (
      ...options: unknown[]
    ) => IoredisSubscriber;
    // lazyConnect: connect() below resolves after ioredis' ready check, so
    // SUBSCRIBE never races it. A Cluster subscribes to sharded channels only
    // through its own per-shard subscribers, which shardedSubscribers turns
    // on. disconnectTimeout 0: a close does not leave ioredis a 2 s timer
    // for a server that is slow to close its side; a Cluster's node
    // connections and sharded subscribers take it from its redisOptions
    // (merged here: ioredis 5's duplicate replaces them). autoResubscribe off:
    // ioredis resubscribes after a reconnection without handling the
    // promise, which a close at that moment rejects (unhandled, fatal on
    // Deno); deadbolt resubscribes itself on "ready", handling the errors.
    const subscriber = cluster
      ? duplicate([], {
        shardedSubscribers: true,
        lazyConnect: true,
        redisOptions: { ...client.options?.redisOptions, disconnectTimeout: 0 },
      })
      : duplicate({
        lazyConnect: true,
        disconnectTimeout: 0,
        autoResubscribe: false,
      });
    // ioredis puts its keyPrefix on the script's keys (so the release
    // publishes on the prefixed channel) and on SSUBSCRIBE's channel, not on
    // SUBSCRIBE's; messages come with the prefixed name.
    const prefix = client.options?.keyPrefix ?? "";
    const unprefixed = (channel: string, message?: unknown) =>
      deliver(
        channel.startsWith(prefix) ? channel.slice(prefix.length) : channel,
        message === undefined ? undefined : String(message),
      );
    // Until connect() settles, its rejection says what went wrong.
    let connected = false;
    subscriber.on("error", (error: unknown) => connected && fail(error));
    subscriber.on("message", unprefixed);
    subscriber.on("smessage", unprefixed);
    const close = () => closeSubscriber(subscriber);
    await connectOrClose(
      signal,
      () => subscriber.connect(),
      () => subscriber.disconnect(),
      close,
    );
    connected = true;
    const commands = shardedFirst(
      subscriber.ssubscribe && {
        subscribe: (channel) => subscriber.ssubscribe!(channel),
        unsubscribe: (channel) => subscriber.sunsubscribe!(channel),
      },
      {
        subscribe: (channel) => subscriber.subscribe(prefix + channel),
        unsubscribe: (channel) => subscriber.unsubscribe(prefix + channel),
      },
    );
    if (!cluster) {
      subscriber.on("ready", () => commands.resubscribe().catch(fail));
    }
    return { ...commands, close };
  };
}

// Resolves once ioredis says the connection ended ("end": its socket is
// closed, its timers cleared). A connection that was between reconnection
// attempts has no socket: ioredis 5 and 6.0 never say "end" for it, and
// arm their disconnectTimeout timer (0 here) on the closed socket anyway,
// so that case ends a timer tick later, after that timer has fired.
function closeSubscriber(subscriber: IoredisSubscriber): Promise<void> {
  if (subscriber.status === "end") return Promise.resolve();
  return closeWithin((ended) => {
    subscriber.on("end", ended);
    const idle = subscriber.status === "reconnecting";
    subscriber.disconnect();
    let tick: ReturnType<typeof setTimeout> | undefined;
    if (subscriber.status === "end") ended();
    else if (idle) tick = setTimeout(ended, 1);
    return () => {
      clearTimeout(tick);
      subscriber.off("end", ended);
    };
  });
}

// WAIT has no key, so a Cluster would send it to any node: send it to the
// master of the key's slot instead, over the connection that ran the script.
function clusterWait(
  client: IoredisClient,
): (numreplicas: number, timeout: number, key: string) => Promise<unknown> {
  return (numreplicas, timeout, key) => {
    const address = client.slots?.[keySlot(key)]?.[0];
    const node = client.nodes?.("master").find(({ options }) =>
      `${options.host}:${options.port}` === address
    );
    if (!node) {
      return Promise.reject(
        new Error(
          `Cannot send WAIT as the cluster knows no master for key '${key}' (slot ${
            keySlot(key)
          })`,
        ),
      );
    }
    return node.wait(numreplicas, timeout);
  };
}
