import { reportSubscriberError } from "./diagnostics.ts";

/** One subscriber connection, as a client adapter opens it. */
export interface SubscriberConnection {
  /** Subscribes to `channel`. */
  subscribe(channel: string): Promise<unknown>;
  /** Unsubscribes from `channel`. */
  unsubscribe(channel: string): Promise<unknown>;
  /**
   * Closes the connection; resolves once its socket is closed and the client
   * library holds no timer for it any more.
   */
  close(): Promise<void>;
}

/** What an adapter's {@linkcode OpenSubscriber} is given. */
export interface SubscriberEvents {
  /** Call with the channel of every message, and its payload. */
  deliver(channel: string, message?: string): void;
  /**
   * Call with every error the connection reports (an `'error'` event): it
   * is reported, never thrown; waiters keep their backoff meanwhile.
   */
  fail(error: unknown): void;
  /**
   * Aborts when deadbolt no longer wants the connection while it is still
   * opening (on a stalled server a ready check may never answer): the
   * adapter must then close what it opened and reject.
   */
  signal: AbortSignal;
}

/** Opens a subscriber connection, resolving once it is ready for commands. */
export type OpenSubscriber = (
  events: SubscriberEvents,
) => Promise<SubscriberConnection>;

/**
 * Calls `listener` on every message to `channel`; resolves with a function
 * that stops it, which resolves once the subscription, and any connection
 * opened for it, is gone. When `signal` aborts before it has resolved (the
 * wait ended while a connection was still opening), it undoes what it
 * started and rejects. See {@linkcode sharedSubscriber}.
 */
export type Subscribe = (
  channel: string,
  listener: Listener,
  signal: AbortSignal,
) => Promise<() => Promise<void>>;

/**
 * Called with each message's payload: a release names the seat whose
 * process it wakes, or nobody (empty, or no payload: every waiter wakes).
 */
export type Listener = (message?: string) => void;

interface Opening {
  connection: Promise<SubscriberConnection>;
  abort: AbortController;
}

/**
 * Shares one subscriber connection among every channel a process waits on
 * through one client: opened on the first subscription, closed when the last
 * one ends (its stop function resolves once the connection is closed), so a
 * process that no longer waits holds no extra connection, socket or timer.
 */
export function sharedSubscriber(open: OpenSubscriber): Subscribe {
  const listeners = new Map<string, Set<Listener>>();
  // Each channel's SUBSCRIBE, once sent: settled when the server answered.
  const subscribed = new Map<string, Promise<unknown>>();
  // UNSUBSCRIBEs still on their way: a new SUBSCRIBE to the channel goes
  // after it, or the server would end up unsubscribed.
  const unsubscribing = new Map<string, Promise<unknown>>();
  let current: Opening | undefined;

  const start = (): Opening => {
    const abort = new AbortController();
    const connection = open({
      deliver: (channel, message) => {
        for (const listener of listeners.get(channel) ?? []) listener(message);
      },
      fail: (error) => reportSubscriberError(error),
      signal: abort.signal,
    });
    // Whoever awaits it handles a failure; this only keeps it from being
    // unhandled when nobody does.
    connection.catch(() => {});
    return { connection, abort };
  };

  const close = async (opening: Opening): Promise<void> => {
    opening.abort.abort(CLOSED);
    const connection = await opening.connection.catch(() => undefined);
    // Closing unsubscribes from everything; no UNSUBSCRIBE first, which a
    // stalled server would never answer.
    await connection?.close().catch(reportSubscriberError);
  };

  return async (channel, listener, signal) => {
    signal.throwIfAborted();
    let channelListeners = listeners.get(channel);
    if (!channelListeners) listeners.set(channel, channelListeners = new Set());
    channelListeners.add(listener);
    const opening = current ??= start();
    let ready = subscribed.get(channel);
    if (!ready) {
      const after = unsubscribing.get(channel) ?? Promise.resolve();
      ready = after.then(() => opening.connection).then((connection) =>
        connection.subscribe(channel)
      );
      ready.catch(() => {}); // each waiter awaits it below
      subscribed.set(channel, ready);
    }
    const stop = async (): Promise<void> => {
      if (!channelListeners!.delete(listener)) return;
      if (channelListeners!.size > 0) return;
      listeners.delete(channel);
      const wasSubscribed = subscribed.get(channel);
      subscribed.delete(channel);
      if (listeners.size === 0 && current === opening) {
        current = undefined;
        return await close(opening);
      }
      // Other channels still use the connection: unsubscribe in the
      // background (nobody needs to wait for it, and a stalled server would
      // keep them waiting).
      if (!wasSubscribed) return;
      const unsubscribed = wasSubscribed.then(
        async () => await (await opening.connection).unsubscribe(channel),
        () => {}, // never subscribed: nothing to undo
      ).catch(reportSubscriberError).finally(() => {
        if (unsubscribing.get(channel) === unsubscribed) {
          unsubscribing.delete(channel);
        }
      });
      unsubscribing.set(channel, unsubscribed);
    };
    try {
      await untilAborted(ready, signal);
    } catch (error) {
      await stop();
      throw error;
    }
    return stop;
  };
}

// Why a connection being opened is called off: made once (see
// `_wakeups.ts`: an abort() without a reason captures a stack each time).
const CLOSED = new DOMException(
  "deadbolt no longer needs this connection",
  "AbortError",
);

/** Settles with `promise`, or rejects with `signal.reason` once it aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() =>
      signal.removeEventListener("abort", onAbort)
    );
  });
}

/** Subscribe and unsubscribe commands of one kind (plain or sharded). */
export interface ChannelCommands {
  /** `SUBSCRIBE` or `SSUBSCRIBE`. */
  subscribe(channel: string): Promise<unknown>;
  /** `UNSUBSCRIBE` or `SUNSUBSCRIBE`. */
  unsubscribe(channel: string): Promise<unknown>;
}

/**
 * Subscribes with sharded pub/sub (`SSUBSCRIBE`) when the client has it, and
 * with plain `SUBSCRIBE` once the server turns out not to know `SSUBSCRIBE`
 * (Redis 6). The release script makes the same choice when it publishes, so
 * both sides agree on every server; on a cluster, sharded messages reach only
 * the lock's shard instead of every node.
 */
export function shardedFirst(
  sharded: ChannelCommands | undefined,
  plain: ChannelCommands,
): ChannelCommands & {
  /** Subscribes again to every channel, as before (after a reconnection). */
  resubscribe(): Promise<void>;
} {
  let preferred = sharded ?? plain;
  const used = new Map<string, ChannelCommands>();
  return {
    async subscribe(channel) {
      const commands = preferred;
      try {
        await commands.subscribe(channel);
        used.set(channel, commands);
      } catch (error) {
        const message = String((error as Error | undefined)?.message);
        if (commands === plain || !/unknown command/i.test(message)) {
          throw error;
        }
        preferred = plain;
        await plain.subscribe(channel);
        used.set(channel, plain);
      }
    },
    async unsubscribe(channel) {
      const commands = used.get(channel);
      used.delete(channel);
      await commands?.unsubscribe(channel);
    },
    async resubscribe() {
      await Promise.all(
        [...used].map(([channel, commands]) => commands.subscribe(channel)),
      );
    },
  };
}
