import type { ScriptClient } from "./client.ts";
import type { Subscribe } from "./_subscriber.ts";
import { reportSubscriberError } from "./diagnostics.ts";
import { atNextTurn } from "./_timers.ts";

/**
 * One queue's wake-up subscriptions: from the first `watch()` until
 * `stop()`, every message on a channel watched (a release, here or
 * elsewhere) calls that watch's `onMessage`. A lock's queue watches its one
 * channel; a `MultiLock`'s, the channel of each name that turned it away,
 * so that the release of whichever is busy now is heard. It never delays a
 * waiter. A release made while a subscription is being set up goes unheard,
 * so once it is set up `onLive` is called (in a microtask of its own): the
 * queue may then have its head ask again rather than sleep out its backoff.
 * If it fails, that is reported on `diagnostics` and the head keeps its
 * backoff.
 */
export class WakeUps {
  #client: ScriptClient;
  #unsubscribes = new Map<
    string,
    Promise<(() => Promise<void>) | undefined>
  >();
  #watching: AbortController | undefined;
  #live = false;

  /** Wake-ups of a queue of `client`. */
  constructor(client: ScriptClient) {
    this.#client = client;
  }

  /** Subscribes to `channel`, unless already subscribed to it. */
  watch(
    subscribe: Subscribe,
    channel: string,
    onMessage: (message?: string) => void,
    onLive: () => void,
  ): void {
    if (this.#unsubscribes.has(channel)) return;
    const watching = this.#watching ??= new AbortController();
    // Heard only until stop(): the connection may close a turn later.
    const listener = (message?: string) => {
      if (this.#watching === watching) onMessage(message);
    };
    let subscribed: Promise<(() => Promise<void>) | undefined>;
    try {
      // A hook of one's own may throw, or return no promise.
      subscribed = Promise.resolve(
        subscribe(channel, listener, watching.signal),
      );
    } catch (error) {
      subscribed = Promise.reject(error);
    }
    this.#unsubscribes.set(
      channel,
      subscribed.then(
        (unsubscribe) => {
          if (this.#watching === watching) {
            this.#live = true;
            // Apart, so that what it does can never lose `unsubscribe`.
            queueMicrotask(() => {
              if (this.#watching === watching) onLive();
            });
          }
          return unsubscribe;
        },
        (error) => {
          if (!watching.signal.aborted) reportSubscriberError(error);
          return undefined;
        },
      ),
    );
  }

  /** Whether a subscription is set up: a release now is heard. */
  get live(): boolean {
    return this.#live;
  }

  /**
   * Ends the subscriptions (one still being set up is called off); the end
   * is recorded until done, for {@linkcode unwatched}.
   */
  stop(): void {
    this.#live = false;
    this.#watching?.abort(STOPPED);
    this.#watching = undefined;
    if (this.#unsubscribes.size === 0) return;
    const unsubscribes = [...this.#unsubscribes.values()];
    this.#unsubscribes.clear();
    // At the next turn of the event loop: the grant that ended the wait
    // resolves first (closing the connection took 60-80 us in its way).
    const stopped = new Promise<void>((resolve) => atNextTurn(resolve)).then(
      () =>
        Promise.all(
          unsubscribes.map((unsubscribe) =>
            unsubscribe.then((stop) => stop?.()).catch(() => {})
          ),
        ),
    ).then(() => {}, () => {});
    let pending = stopping.get(this.#client);
    if (!pending) stopping.set(this.#client, pending = new Set());
    const each = pending;
    each.add(stopped);
    stopped.then(() => each.delete(stopped));
  }
}

// Why a subscription being set up is called off: made once, since an
// abort() without a reason makes a DOMException and captures a stack each
// time (4 us warm, tens cold, on the path from a grant to its caller).
const STOPPED = new DOMException(
  "deadbolt no longer waits on this channel",
  "AbortError",
);

// Wake-up subscriptions of each client still being stopped.
const stopping = new WeakMap<ScriptClient, Set<Promise<void>>>();

/** How long a call waits for wake-up subscriptions to be gone, at most. */
const UNWATCH_BOUND_MS = 3_000;

/**
 * Resolves once every wake-up subscription of `client` that has ended is
 * gone, connection and all: the calls that end a wait await it, so that
 * nothing deadbolt opened outlives them. `undefined` when none is being
 * stopped (the common case costs no promise).
 */
export function unwatched(client: ScriptClient): Promise<void> | undefined {
  const pending = stopping.get(client);
  if (!pending?.size) return undefined;
  // Bounded: a hook of the user's own might never finish.
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, UNWATCH_BOUND_MS);
    Promise.all(pending).then(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
