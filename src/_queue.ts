import type { ScriptClient } from "./client.ts";
import type { Subscribe } from "./_subscriber.ts";
import { now } from "./_timers.ts";
import { MAX_TIMER_MS } from "./_validate.ts";

/**
 * Waiters in this process for one lock on one client, in arrival order.
 *
 * Only the head contends in Redis; the others wait for their turn, so N local
 * waiters cost the server what one does, and they are served first come,
 * first served. A release made in this process wakes the head at once, so a
 * local handoff costs a round trip instead of a backoff sleep; where the
 * client can subscribe, a release in another process wakes it too.
 */
export class LocalQueue {
  #waiters: PromiseWithResolvers<void>[] = [];
  #wake: (() => void) | undefined;
  #woken = false;
  #onEmpty: () => void;
  #unwatch: Promise<(() => Promise<void>) | undefined> | undefined;

  /** The holder's remaining lease as the last head saw it (for timeouts). */
  remainingTtl = -1;

  constructor(onEmpty: () => void) {
    this.#onEmpty = onEmpty;
  }

  /**
   * Joins the queue: `true` at once when this waiter is at its head, else a
   * promise of `true` once it is; rejects with `signal.reason` on abort, or
   * resolves `false` when `deadline` passes first (the waiter has then left).
   */
  enter(signal: AbortSignal, deadline: number): true | Promise<boolean> {
    const turn = Promise.withResolvers<void>();
    this.#waiters.push(turn);
    return this.#waiters.length === 1 || this.#await(turn, signal, deadline);
  }

  async #await(
    turn: PromiseWithResolvers<void>,
    signal: AbortSignal,
    deadline: number,
  ): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gaveUp = Promise.withResolvers<"late">();
    const onAbort = () => gaveUp.reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    // Re-armed in steps: setTimeout fires at once past 2^31 - 1 ms.
    const arm = () => {
      const left = deadline - now();
      timer = left > MAX_TIMER_MS
        ? setTimeout(arm, MAX_TIMER_MS)
        : setTimeout(() => gaveUp.resolve("late"), left);
    };
    if (deadline !== Infinity) arm();
    try {
      if (await Promise.race([turn.promise, gaveUp.promise]) !== "late") {
        return true;
      }
      this.#remove(turn);
      return false;
    } catch (error) {
      this.#remove(turn);
      throw error;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
    }
  }

  /** Leaves the head of the queue, handing the turn to the next waiter. */
  leave(): void {
    this.#remove(this.#waiters[0]);
  }

  /**
   * Sleeps up to `ms` at the head, waking early when a release in this
   * process calls {@linkcode wake} (also one that came during the attempt).
   */
  sleep(ms: number, signal: AbortSignal): Promise<void> {
    if (this.#woken) {
      this.#woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        this.#wake = undefined;
      };
      const onAbort = () => {
        done();
        reject(signal.reason);
      };
      const timer = setTimeout(() => {
        done();
        resolve();
      }, ms);
      this.#wake = () => {
        done();
        resolve();
      };
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * Wakes the head on every message to `channel` from now until the queue
   * empties. It does not wait for the subscription: until it is set up, a
   * release costs the head a backoff sleep, as without one.
   */
  watch(subscribe: Subscribe, channel: string): void {
    this.#unwatch ??= subscribe(channel, () => this.wake()).catch(() =>
      undefined
    );
  }

  /** Tells the head that the lock was just released (here or elsewhere). */
  wake(): void {
    if (this.#wake) this.#wake();
    else this.#woken = true;
  }

  #remove(waiter: PromiseWithResolvers<void> | undefined): void {
    const index = waiter ? this.#waiters.indexOf(waiter) : -1;
    if (index < 0) return;
    this.#waiters.splice(index, 1);
    if (index === 0) {
      this.#woken = false;
      this.#waiters[0]?.resolve();
    }
    if (this.#waiters.length === 0) {
      this.#onEmpty();
      this.#unwatch?.then((stop) => stop?.()).catch(() => {});
      this.#unwatch = undefined;
    }
  }
}

const queues = new WeakMap<ScriptClient, Map<string, LocalQueue>>();

/** The queue for `key` on `client`, created on first use, dropped when empty. */
export function localQueue(client: ScriptClient, key: string): LocalQueue {
  let byKey = queues.get(client);
  if (!byKey) queues.set(client, byKey = new Map());
  let queue = byKey.get(key);
  if (!queue) {
    const map = byKey;
    queue = new LocalQueue(() => map.delete(key));
    byKey.set(key, queue);
  }
  return queue;
}

/** Wakes the head waiter for `key` on `client`, if any waits in this process. */
export function wakeLocal(client: ScriptClient, key: string): void {
  queues.get(client)?.get(key)?.wake();
}
