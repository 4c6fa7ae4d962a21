import type { ScriptClient } from "../client.ts";
import { keySlot } from "../keys.ts";
import {
  type OpenSubscriber,
  shardedFirst,
  sharedSubscriber,
} from "../_subscriber.ts";
import { bindWait, connectOrClose } from "./_shared.ts";
import { withKind } from "../_client_kind.ts";

/** The keys-and-arguments option of node-redis' `eval` and `evalSha`. */
export interface NodeRedisEvalOptions {
  /** The script's `KEYS`. */
  keys: string[];
  /** The script's `ARGV`. */
  arguments: string[];
}

/** The part of a node-redis 5 or 6 client (or cluster) that deadbolt uses. */
export interface NodeRedisClient {
  /** `EVAL` with keys and arguments in an options object. */
  eval(script: string, options: NodeRedisEvalOptions): Promise<unknown>;
  /** `EVALSHA` with keys and arguments in an options object. */
  evalSha(sha1: string, options: NodeRedisEvalOptions): Promise<unknown>;
  /** `WAIT`, for the `waitReplicas` option. */
  wait?(numreplicas: number, timeout: number): Promise<unknown>;
  /** The client's options, which its duplicate for wake-ups starts from. */
  readonly options?: { readonly socket?: object };
  /** A new client with the same options and the given overrides, for pub/sub wake-ups. */
  duplicate?(overrides?: never): NodeRedisSubscriber;
  /**
   * Present on a cluster (`createCluster`) only: the master of a slot. A
   * cluster subscribes with its own sharded subscribers and sends `WAIT` to
   * the master of the lock's slot.
   */
  getSlotMaster?(slot: number): unknown;
  /** A cluster's connection to one node. */
  nodeClient?(node: never): unknown;
  /** `SSUBSCRIBE` on a cluster. */
  sSubscribe?(
    channel: string,
    listener: (message: unknown) => void,
  ): Promise<unknown>;
  /** `SUNSUBSCRIBE` on a cluster. */
  sUnsubscribe?(
    channel: string,
    listener: (message: unknown) => void,
  ): Promise<unknown>;
  /** `SUBSCRIBE` on a cluster. */
  subscribe?(
    channel: string,
    listener: (message: unknown) => void,
  ): Promise<unknown>;
  /** `UNSUBSCRIBE` on a cluster. */
  unsubscribe?(
    channel: string,
    listener: (message: unknown) => void,
  ): Promise<unknown>;
}

/** The part of a node-redis client (a duplicate) used to subscribe. */
export interface NodeRedisSubscriber {
  /** Connects; resolves once the client is ready. */
  connect(): Promise<unknown>;
  /** Listens for connection errors. */
  on(event: "error", listener: (error: unknown) => void): unknown;
  /** `SUBSCRIBE` with a listener. */
  subscribe(
    channel: string,
    listener: (message: unknown) => void,
  ): Promise<unknown>;
  /** `UNSUBSCRIBE`. */
  unsubscribe(channel: string): Promise<unknown>;
  /** `SSUBSCRIBE` with a listener. */
  sSubscribe?(
    channel: string,
    listener: (message: unknown) => void,
  ): Promise<unknown>;
  /** `SUNSUBSCRIBE`. */
  sUnsubscribe?(channel: string): Promise<unknown>;
  /** Closes the socket at once (node-redis 5 and 6). */
  destroy?(): unknown;
  /** Closes the socket at once (node-redis 4). */
  disconnect?(): Promise<unknown>;
}

/**
 * Adapts a node-redis 5 or 6 client (or a `createCluster` cluster). Waiters
 * are woken by pub/sub over one extra connection (`client.duplicate()`),
 * open only while some lock of this process is waited for through this
 * client: its errors are listened to (reported as a
 * {@linkcode SubscriberErrorEvent}; node-redis would otherwise throw them
 * as an unhandled `'error'` event and end the process), and it is closed,
 * socket and reconnection timer gone, before the call that ended the wait
 * (or `release()`) resolves. A cluster subscribes through its own pub/sub
 * connections.
 *
 * @param client A connected node-redis client.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { createClient } from "npm:redis";
 * import { fromNodeRedis, Lock } from "@deadbolt/deadbolt";
 *
 * const redis = fromNodeRedis(await createClient().connect());
 * await using lock = await Lock.acquire(redis, "report");
 * ```
 */
export function fromNodeRedis(client: NodeRedisClient): ScriptClient {
  const base = {
    eval: (script: string, keys: string[], args: string[]) =>
      client.eval(script, { keys, arguments: args }),
    evalsha: (sha1: string, keys: string[], args: string[]) =>
      client.evalSha(sha1, { keys, arguments: args }),
  };
  if (typeof client.getSlotMaster === "function") {
    // A cluster may resend a redirected call after later ones.
    return withKind("node-redis", {
      ...base,
      deadbolt: { ordered: false, cluster: true, ...cluster(client) },
    });
  }
  return withKind("node-redis", {
    ...base,
    deadbolt: {
      ordered: true,
      ...bindWait(client),
      ...(typeof client.duplicate === "function" && {
        subscribe: sharedSubscriber(openSubscriber(client)),
      }),
    },
  });
}

// Reconnection delays of the wake-up connection (ms): short, since waiters
// poll meanwhile, and known, so a close can outwait the pending one.
const retryDelay = (retries: number) => Math.min(50 * 2 ** retries, 500);

// How long a close waits for the wake-up connection's connect() to settle
// before destroying it anyway: well within the 3 s for which the call that
// ended the wait awaits the close.
const HANDSHAKE_BOUND_MS = 1_000;

// How long the wake-up connection's TCP (or TLS) connect may take, at most:
// destroy() reaches only a connected socket, so one still connecting (its SYN
// dropped) is closed by node-redis' own connectTimeout alone. Short of the
// handshake bound, so that connect() has settled, socket closed, by the time a
// close gives up waiting for it.
const CONNECT_BOUND_MS = 800;

// The duplicate's connectTimeout: the client's own when shorter (node-redis
// takes 0 for none, and defaults to 5 s).
function connectTimeout(socket: object | undefined): number {
  const own = (socket as { connectTimeout?: unknown } | undefined)
    ?.connectTimeout;
  return typeof own === "number" && own > 0 && own < CONNECT_BOUND_MS
    ? own
    : CONNECT_BOUND_MS;
}

// Resolves once `promise` settles, or after `ms`, whichever comes first.
function settledWithin(promise: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    promise.then(done, done);
  });
}

function openSubscriber(client: NodeRedisClient): OpenSubscriber {
  return async ({ deliver, fail, signal }) => {
    // node-redis waits for a reconnection attempt with a timer nothing can
    // cancel; the strategy says how long, so a close can wait it out.
    let retryUntil = 0;
    let closing = false;
    const reconnectStrategy = (retries: number) => {
      if (signal.aborted || closing) return false;
      const delay = retryDelay(retries);
      retryUntil = performance.now() + delay;
      return delay;
    };
    const subscriber = client.duplicate!({
      socket: {
        ...client.options?.socket,
        reconnectStrategy,
        connectTimeout: connectTimeout(client.options?.socket),
      },
    } as never);
    // Until connect() settles, its rejection says what went wrong.
    let connected = false;
    subscriber.on("error", (error) => connected && fail(error));
    // Destroyed once connect() has settled: node-redis 5 loses a socket
    // destroyed while it is being opened (the connection comes up after
    // all, unseen, and keeps the process alive). But on a server that never
    // answers the handshake, connect() never settles: past a bound the
    // socket is open, and is destroyed all the same (connect() is then left
    // pending, which holds nothing); one still connecting has timed out by
    // then (CONNECT_BOUND_MS). Meanwhile `closing` stops any reconnection.
    const destroy = () => {
      try {
        if (subscriber.destroy) subscriber.destroy();
        else subscriber.disconnect?.().catch(() => {});
      } catch {
        // Closed already.
      }
    };
    let connecting: Promise<unknown> | undefined;
    const close = async () => {
      closing = true;
      if (connecting) await settledWithin(connecting, HANDSHAKE_BOUND_MS);
      destroy();
      const pending = retryUntil - performance.now();
      if (pending > 0) {
        await new Promise((resolve) => setTimeout(resolve, pending + 1));
      }
    };
    await connectOrClose(
      signal,
      () => connecting = subscriber.connect(),
      () => closing = true,
      close,
    );
    connected = true;
    return {
      ...shardedFirst(
        subscriber.sSubscribe && {
          subscribe: (channel) =>
            subscriber.sSubscribe!(
              channel,
              (message) => deliver(channel, text(message)),
            ),
          unsubscribe: (channel) => subscriber.sUnsubscribe!(channel),
        },
        {
          subscribe: (channel) =>
            subscriber.subscribe(
              channel,
              (message) => deliver(channel, text(message)),
            ),
          unsubscribe: (channel) => subscriber.unsubscribe(channel),
        },
      ),
      close,
    };
  };
}

// A node-redis cluster keeps its own pub/sub connections (one per shard for
// sharded channels), so it subscribes itself; WAIT goes to the master of the
// key's slot, over the connection the cluster sent the script on.
function cluster(
  cluster: NodeRedisClient,
): {
  wait(numreplicas: number, timeout: number, key: string): Promise<unknown>;
  subscribe?: ReturnType<typeof sharedSubscriber>;
} {
  type Commands = (
    channel: string,
    listener: (message: unknown) => void,
  ) => Promise<unknown>;
  const bound = (command: Commands | undefined) => command?.bind(cluster);
  const [sSubscribe, sUnsubscribe, subscribe, unsubscribe] = [
    bound(cluster.sSubscribe),
    bound(cluster.sUnsubscribe),
    bound(cluster.subscribe),
    bound(cluster.unsubscribe),
  ];
  return {
    wait: async (numreplicas, timeout, key) => {
      const node = cluster.getSlotMaster!(keySlot(key));
      const connection = await cluster.nodeClient!(node as never) as {
        wait(numreplicas: number, timeout: number): Promise<unknown>;
      };
      return await connection.wait(numreplicas, timeout);
    },
    ...(subscribe && unsubscribe && {
      subscribe: sharedSubscriber(({ deliver }) => {
        const listeners = new Map<string, (message: unknown) => void>();
        const listener = (channel: string) => {
          let each = listeners.get(channel);
          if (!each) {
            listeners.set(
              channel,
              each = (message) => deliver(channel, text(message)),
            );
          }
          return each;
        };
        const forget = (run: Commands) => (channel: string) => {
          const each = listener(channel);
          listeners.delete(channel);
          return run(channel, each);
        };
        const commands = shardedFirst(
          sSubscribe && sUnsubscribe && {
            subscribe: (channel) => sSubscribe(channel, listener(channel)),
            unsubscribe: forget(sUnsubscribe),
          },
          {
            subscribe: (channel) => subscribe(channel, listener(channel)),
            unsubscribe: forget(unsubscribe),
          },
        );
        // The cluster's pub/sub connections are its own, so closing ours
        // only unsubscribes what is left, without waiting for the answers
        // (a stalled node would hold a release up).
        return Promise.resolve({
          ...commands,
          close: () => {
            for (const channel of listeners.keys()) {
              commands.unsubscribe(channel).catch(() => {});
            }
            return Promise.resolve();
          },
        });
      }),
    }),
  };
}

// A message's payload as text (node-redis gives a Buffer in buffer mode).
const text = (message: unknown): string | undefined =>
  message === undefined ? undefined : String(message);
