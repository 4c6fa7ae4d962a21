import type { ScriptClient } from "./client.ts";
import type { Subscribe } from "./_subscriber.ts";
import { type Deferred, deferred } from "./_deferred.ts";
import { now } from "./_timers.ts";
import { reportSubscriberError } from "./diagnostics.ts";
import { MAX_TIMER_MS } from "./_validate.ts";

/**
 * Waiters in this process for one lock on one client, in arrival order.
 *
 * Only the head contends in Redis; the others wait for their turn, so N local
 * waiters cost the server what one does, and they are served first come,
 * first served. A release made in this process hands the lock straight to
 * a sleeping head (one round trip, see {@linkcode LocalQueue.take}) or wakes
 * it; where the client can subscribe, a release elsewhere wakes it too.
 */
export class LocalQueue {
  #waiters: Deferred<void>[] = [];
  #sleeper: Sleeper | undefined;
  #handovers = 0;
  #woken = false;
  #onEmpty: () => void;
  #onUnwatch: (stopped: Promise<void>) => void;
  #unwatch: Promise<(() => Promise<void>) | undefined> | undefined;
  #watching: AbortController | undefined;
  #reading: { pttl: number; at: number } | undefined;
  #holder: Holder | undefined;
  #quietUntil = 0;
  #later: ReturnType<typeof setTimeout> | undefined;

  /**
   * The handle in this process that took the lock through this queue and has
   * not released it yet: a new head then waits to be handed the lock instead
   * of asking Redis first. The queue stays registered while it has one.
   */
  get holder(): Holder | undefined {
    return this.#holder;
  }

  /**
   * Set by {@linkcode take} when it refused a handover to let other
   * processes in: the releaser then wakes the local head a little later.
   */
  yielding = false;

  /**
   * Whether the last handover found a waiter's mark: some waiter (in
   * another process, most likely) was turned away lately. Only then does
   * {@linkcode take} stop a run of handovers; with nobody waiting elsewhere,
   * yielding would only cost time.
   */
  waitingElsewhere = false;

  /**
   * Eager handovers sent and not yet answered. Past
   * {@linkcode MAX_UNANSWERED}, a handover waits for its answer: a chain of
   * eager handovers runs in microtasks, and waiting for the network is what
   * lets the event loop (timers, other I/O) take its turn.
   */
  unanswered = 0;

  /**
   * @param onEmpty Called when the queue has neither waiters nor a holder.
   * @param onUnwatch Given the end of each wake-up subscription.
   */
  constructor(
    onEmpty: () => void,
    onUnwatch: (stopped: Promise<void>) => void,
  ) {
    this.#onEmpty = onEmpty;
    this.#onUnwatch = onUnwatch;
  }

  /** Records the holder's remaining lease (a PTTL) as the head just read it. */
  noteRemaining(pttl: number): void {
    this.#reading = { pttl, at: now() };
  }

  /**
   * The holder's remaining lease as last known, counted down to now: the
   * lease of a holder in this process, else the head's last reading; `-1`
   * when the key has no expiry; `NaN` when nothing is known yet (a wait
   * shorter than the head's first round trip).
   */
  remainingTtl(): number {
    if (this.#holder) {
      return Math.max(0, Math.round(this.#holder.validUntil - now()));
    }
    const reading = this.#reading;
    if (!reading) return NaN;
    if (reading.pttl < 0) return reading.pttl;
    return Math.max(0, Math.round(reading.pttl - (now() - reading.at)));
  }

  /**
   * `lock` took the lock through this queue: until it releases or loses
   * it, a new head waits to be handed the lock. A reading of an earlier
   * holder's lease no longer applies.
   */
  hold(lock: Holder): void {
    this.#holder = lock;
    this.#reading = undefined;
  }

  /**
   * Joins the queue: `true` at once when this waiter is at its head, else a
   * promise of `true` once it is; rejects with `signal.reason` on abort, or
   * resolves `false` when `deadline` passes first (the waiter has then left).
   */
  enter(signal: AbortSignal, deadline: number): true | Promise<boolean> {
    const turn = deferred<void>();
    this.#waiters.push(turn);
    return this.#waiters.length === 1 || this.#await(turn, signal, deadline);
  }

  async #await(
    turn: Deferred<void>,
    signal: AbortSignal,
    deadline: number,
  ): Promise<boolean> {
    if (signal.aborted) {
      this.#remove(turn);
      throw signal.reason;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gaveUp = deferred<"late">();
    const onAbort = () => gaveUp.reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    // Re-armed in steps: setTimeout fires at once past 2^31 - 1 ms, and a
    // timer may fire a fraction of a millisecond early.
    const arm = () => {
      const left = deadline - now();
      timer = left > MAX_TIMER_MS ? setTimeout(arm, MAX_TIMER_MS) : setTimeout(
        () => now() < deadline ? arm() : gaveUp.resolve("late"),
        left,
      );
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
   * With `want`, a holder releasing in this process may hand the lock over
   * instead (see {@linkcode take}): the sleep then resolves with that grant.
   */
  sleep(
    ms: number,
    signal: AbortSignal,
    want?: Want,
  ): Promise<Grant | undefined> {
    if (signal.aborted) return Promise.reject(signal.reason);
    if (this.#woken) {
      this.#woken = false;
      return Promise.resolve(undefined);
    }
    return new Promise((resolve, reject) => {
      const stop = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        if (this.#sleeper === sleeper) this.#sleeper = undefined;
      };
      const end = (grant?: Grant) => {
        stop();
        resolve(grant);
      };
      const onAbort = () => {
        stop();
        reject(signal.reason);
      };
      const sleeper: Sleeper = { taken: false, end };
      sleeper.offer = want && {
        ...want,
        deliver: (grant) => {
          if (this.#sleeper !== sleeper) return false;
          end(grant ?? undefined);
          return true;
        },
      };
      // Once a holder has taken the offer, only its answer (or an abort)
      // ends the sleep: a retry now would race the handover.
      const timer = setTimeout(() => sleeper.taken || end(), ms);
      this.#sleeper = sleeper;
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * For a holder releasing in this process: the sleeping head's offer to be
   * handed the lock, or `undefined` when nobody sleeps at the head with one,
   * or when the last {@linkcode MAX_HANDOVERS} releases or more were
   * handovers and a waiter elsewhere is known (this one then goes through
   * Redis, so other processes get their chance).
   */
  take(): Offer | undefined {
    const sleeper = this.#sleeper;
    this.yielding = false;
    if (!sleeper?.offer || sleeper.taken) return undefined;
    if (this.#handovers >= MAX_HANDOVERS && this.waitingElsewhere) {
      this.#handovers = 0;
      this.waitingElsewhere = false;
      this.yielding = true;
      return undefined;
    }
    this.#handovers++;
    sleeper.taken = true;
    return sleeper.offer;
  }

  /**
   * Wakes the head on every message to `channel` from now until the queue
   * empties. It does not wait for the subscription: until it is set up, a
   * release costs the head a backoff sleep, as without one; if it fails,
   * that is reported on `diagnostics` and the head keeps its backoff.
   */
  watch(subscribe: Subscribe, channel: string): void {
    if (this.#unwatch) return;
    const watching = this.#watching = new AbortController();
    this.#unwatch = subscribe(channel, () => this.wake(), watching.signal)
      .catch((error) => {
        if (!watching.signal.aborted) reportSubscriberError(error);
        return undefined;
      });
  }

  /**
   * After a release that refused a handover (see {@linkcode yielding}):
   * wakes the head only after `ms`, ignoring wake-ups until then, so waiters
   * in other processes, told at once by pub/sub, get to ask first.
   */
  wakeLater(ms: number): void {
    this.#quietUntil = now() + ms;
    clearTimeout(this.#later);
    this.#later = setTimeout(() => {
      this.#quietUntil = 0;
      this.wake();
    }, ms);
  }

  /** Tells the head that the lock was just released (here or elsewhere). */
  wake(): void {
    if (this.#quietUntil > 0 && now() < this.#quietUntil) return;
    const sleeper = this.#sleeper;
    if (!sleeper) this.#woken = true;
    else if (!sleeper.taken) sleeper.end();
  }

  #remove(waiter: Deferred<void> | undefined): void {
    const index = waiter ? this.#waiters.indexOf(waiter) : -1;
    if (index < 0) return;
    this.#waiters.splice(index, 1);
    if (index === 0) {
      this.#woken = false;
      this.#waiters[0]?.resolve();
    }
    if (this.#waiters.length === 0) {
      clearTimeout(this.#later);
      this.#quietUntil = 0;
      this.#reading = undefined;
      const unwatch = this.#unwatch;
      this.#unwatch = undefined;
      // A subscription still being set up is called off.
      this.#watching?.abort();
      this.#watching = undefined;
      if (unwatch) {
        this.#onUnwatch(unwatch.then((stop) => stop?.()).catch(() => {}));
      }
      if (!this.#holder) this.#onEmpty();
    }
  }

  /**
   * `lock` no longer holds through this queue: it is releasing (and will
   * hand the lock over or wake the head itself).
   */
  vacate(lock: Holder): void {
    if (this.#holder !== lock) return;
    this.#holder = undefined;
    if (this.#waiters.length === 0) this.#onEmpty();
  }

  /**
   * `lock`'s lease ended without a release (lost, or run out): the head,
   * which sleeps waiting to be handed the lock, asks Redis now instead.
   */
  lost(lock: Holder): void {
    if (this.#holder !== lock) return;
    this.vacate(lock);
    this.wake();
  }
}

/**
 * How many releases in a row may hand the lock to a local waiter before one
 * goes through Redis: bounds how long other processes can be passed over.
 */
export const MAX_HANDOVERS = 16;

/** See {@linkcode LocalQueue.unanswered}. */
export const MAX_UNANSWERED = 8;

/** A handle holding the lock through a queue. */
export interface Holder {
  /** Until when (monotonic ms) its ownership is guaranteed. */
  readonly validUntil: number;
}

/** What a waiter needs to be handed a lock: its token and lease settings. */
export interface Want {
  /** The waiter's token. */
  readonly token: string;
  /** The waiter's lease length, in ms. */
  readonly ttl: number;
  /** Whether the waiter wants a fence. */
  readonly fencing: boolean;
  /**
   * Whether the waiter may start before Redis confirms the handover: it
   * wants no fence (which only Redis issues) and no replica acknowledgement.
   */
  readonly eager: boolean;
}

/** A handover's outcome: the send time of the script and the fence. */
export interface Grant {
  /**
   * When the handover script was sent (monotonic ms); for an eager
   * handover, the time from which the holder's lease still covers the
   * waiter's whole ttl.
   */
  readonly sent: number;
  /** The fence issued, or 0. */
  readonly fence: number;
  /** For an eager handover: the script, still on its way to Redis. */
  readonly pending?: PendingHandover;
}

/** An eager handover's script, sent on the holder's connection. */
export interface PendingHandover {
  /** When it was sent (monotonic ms). */
  readonly sent: number;
  /** Its code: 1 handed over, 0 the key was gone, -1 another owner held it. */
  readonly code: Promise<number>;
}

/** A sleeping head's standing offer to be handed the lock. */
export interface Offer extends Want {
  /**
   * Gives the head the handover's outcome: a grant, or `null` to make it
   * retry. Returns `false` when the head has gone (aborted) meanwhile: the
   * caller must then delete the key it handed over.
   */
  deliver(grant: Grant | null): boolean;
}

interface Sleeper {
  offer?: Offer;
  taken: boolean;
  end(grant?: Grant): void;
}

const queues = new WeakMap<ScriptClient, Map<string, LocalQueue>>();
// Wake-up subscriptions of each client still being stopped.
const stopping = new WeakMap<ScriptClient, Set<Promise<void>>>();

/** The queue for `key` on `client`, created on first use, dropped when empty. */
export function localQueue(client: ScriptClient, key: string): LocalQueue {
  let byKey = queues.get(client);
  if (!byKey) queues.set(client, byKey = new Map());
  let queue = byKey.get(key);
  if (!queue) {
    const map = byKey;
    queue = new LocalQueue(
      () => map.delete(key),
      (stopped) => {
        let pending = stopping.get(client);
        if (!pending) stopping.set(client, pending = new Set());
        const each = pending;
        each.add(stopped);
        stopped.then(() => each.delete(stopped));
      },
    );
    byKey.set(key, queue);
  }
  return queue;
}

/**
 * Resolves once every wake-up subscription of `client`'s queues that has
 * ended is gone, connection and all: the calls that end a wait await it, so
 * that nothing deadbolt opened outlives them. `undefined` when none is
 * being stopped (the common case costs no promise).
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

/** How long a call waits for wake-up subscriptions to be gone, at most. */
const UNWATCH_BOUND_MS = 3_000;

/** The queue for `key` on `client`, if any waiter has one now. */
export function existingQueue(
  client: ScriptClient,
  key: string,
): LocalQueue | undefined {
  return queues.get(client)?.get(key);
}
