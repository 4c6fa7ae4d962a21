import type { ScriptClient } from "./client.ts";
import type { Owner } from "./scripts.ts";
import type { Subscribe } from "./_subscriber.ts";
import { now } from "./_timers.ts";
import { WaitLine } from "./_line.ts";
import { WakeUps } from "./_wakeups.ts";
import { Seat } from "./_seat.ts";
import type { StopSignal } from "./_stop.ts";

/**
 * The waiters in this process for one lock on one client: a
 * {@linkcode WaitLine} whose head alone contends in Redis, sleeping between
 * attempts, woken by releases (here, or elsewhere through {@linkcode WakeUps}).
 * While it sleeps, the head may stand ready to be handed the lock by a
 * holder of this process. What a release does with that is the handover
 * protocol, in `_handover.ts`, which states the rules.
 */
export class LocalQueue {
  #line: WaitLine;
  #client: ScriptClient;
  // Created on the first watch(): most queues never need one.
  #wakeUps: WakeUps | undefined;
  #sleeper: Sleeper<Offer> | undefined;
  #woken = false;
  #reading: { pttl: number; at: number } | undefined;
  #holder: Holder | undefined;
  #seat: Seat | undefined;
  #quietUntil = 0;
  #later: ReturnType<typeof setTimeout> | undefined;
  #onEmpty: () => void;

  /**
   * @param client The client whose waiters this queue holds.
   * @param onEmpty Called when the queue has neither waiters nor a holder.
   */
  constructor(client: ScriptClient, onEmpty: () => void) {
    this.#onEmpty = onEmpty;
    this.#client = client;
    this.#line = new WaitLine(this);
  }

  /** For its {@linkcode WaitLine}: the head has left. */
  headLeft(): void {
    this.#woken = false;
  }

  /** For its {@linkcode WaitLine}: the last waiter has left. */
  emptied(): void {
    clearTimeout(this.#later);
    this.#quietUntil = 0;
    this.#reading = undefined;
    this.#seat?.vacate();
    this.#wakeUps?.stop();
    if (!this.#holder) this.#onEmpty();
  }

  /**
   * The lease of the hold in this process that was taken through this
   * queue and not released yet: a new head then waits to be handed the lock
   * instead of asking Redis first. The queue stays registered while it has one.
   */
  get holder(): Holder | undefined {
    return this.#holder;
  }

  /** The queue's seat in the lock's line in Redis, made on first use. */
  get seat(): Seat {
    return this.#seat ??= new Seat();
  }

  /** How many wait in line, the head included. */
  get size(): number {
    return this.#line.size;
  }

  /** Joins the line (see {@linkcode WaitLine.enter}). */
  enter(signal: StopSignal, deadline: number): true | Promise<boolean> {
    return this.#line.enter(signal, deadline);
  }

  /** The head leaves the line, handing the turn to the next waiter. */
  leave(): void {
    this.#line.leave();
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
   * The head took the lock, under `lease`: until it is released or lost, a
   * new head waits to be handed the lock. A reading of an earlier holder's
   * lease no longer applies.
   */
  hold(lease: Holder): void {
    this.#holder = lease;
    this.#reading = undefined;
  }

  /**
   * The hold under `lease` is being released (the release hands the lock
   * over or wakes the head itself).
   */
  vacate(lease: Holder): void {
    if (this.#holder !== lease) return;
    this.#holder = undefined;
    if (this.#line.size === 0) this.#onEmpty();
  }

  /**
   * The hold under `lease` ended without a release (lost, or run out): the
   * head, which sleeps waiting to be handed the lock, asks Redis now instead.
   */
  lost(lease: Holder): void {
    if (this.#holder !== lease) return;
    this.vacate(lease);
    this.wake();
  }

  /**
   * Sleeps up to `ms` at the head, waking early when a release calls
   * {@linkcode wake} (also one that came during the attempt). With `want`,
   * the head stands ready to be handed the lock (see {@linkcode takeOffer}):
   * the sleep then resolves with that grant.
   */
  sleep(
    ms: number,
    signal: StopSignal,
    want?: Want,
  ): Promise<Handed | undefined> {
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
      const end = (handed?: Handed) => {
        stop();
        resolve(handed);
      };
      const onAbort = () => {
        stop();
        reject(signal.reason);
      };
      const sleeper: Sleeper<Offer> = { taken: false, end };
      sleeper.offer = want && {
        ...want,
        deliver: (handed) => {
          if (this.#sleeper !== sleeper) return false;
          end(handed ?? undefined);
          return true;
        },
      };
      // Once a holder has taken the offer, only its answer (or an abort)
      // ends the sleep: a retry now would race the handover.
      const timer = setTimeout(() => sleeper.taken || end(), Math.max(0, ms));
      this.#sleeper = sleeper;
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Whether the head sleeps between attempts now. */
  get sleeping(): boolean {
    return this.#sleeper !== undefined;
  }

  /** Whether the head sleeps with an offer that no holder has taken yet. */
  get offered(): boolean {
    return !!this.#sleeper?.offer && !this.#sleeper.taken;
  }

  /**
   * Takes the sleeping head's offer to be handed the lock: from now on only
   * the offer's answer (or an abort) ends its sleep. `undefined` when there
   * is none (see {@linkcode offered}).
   */
  takeOffer(): Offer | undefined {
    const sleeper = this.#sleeper;
    if (!sleeper?.offer || sleeper.taken) return undefined;
    sleeper.taken = true;
    return sleeper.offer;
  }

  /**
   * Wakes the head on every message to `channel` that names this queue's
   * seat, or nobody, until the queue empties; and once the subscription is
   * set up, unless a hold of this process has the lock (only its release,
   * handed over here, can free it): a release elsewhere made meanwhile went
   * unheard.
   */
  watch(subscribe: Subscribe, channel: string): void {
    this.#wakeUps ??= new WakeUps(this.#client);
    this.#wakeUps.watch(
      subscribe,
      channel,
      (message) => {
        if (!message || message === this.#seat?.id) this.wake();
      },
      () => {
        if (!this.#holder) this.wake();
      },
    );
  }

  /**
   * Wakes the head only after `ms`, ignoring wake-ups until then (so that
   * waiters elsewhere, told at once by pub/sub, get to ask first). Nothing,
   * when nobody waits: a timer set then would outlive the release that set
   * it (its waiter gave up meanwhile), and nobody would clear it.
   */
  wakeLater(ms: number): void {
    if (this.#line.size === 0) return;
    this.#quietUntil = now() + ms;
    clearTimeout(this.#later);
    this.#later = setTimeout(() => {
      this.#quietUntil = 0;
      this.wake();
    }, ms);
  }

  /**
   * Tells the head that the lock was just released (here or elsewhere):
   * one asleep asks now, one whose attempt is on its way asks again at once.
   * Nothing, when nobody waits: the next head asks Redis first anyway.
   */
  wake(): void {
    if (this.#line.size === 0) return;
    if (this.#quietUntil > 0 && now() < this.#quietUntil) return;
    const sleeper = this.#sleeper;
    if (!sleeper) this.#woken = true;
    else if (!sleeper.taken) sleeper.end();
  }
}

/** The lease of a hold taken through a queue. */
export interface Holder {
  /** Until when (monotonic ms) its ownership is guaranteed. */
  readonly validUntil: number;
}

/** What a head needs to be handed a lock: its token and lease settings. */
export interface Want {
  /** The head's token. */
  readonly token: string;
  /** The head's lease length, in ms. */
  readonly ttl: number;
  /** Whether the head wants a fence. */
  readonly fencing: boolean;
  /**
   * Whether the head may start before Redis confirms the handover: it
   * wants no fence (which only Redis issues) and no replica acknowledgement.
   */
  readonly eager: boolean;
}

/** A handover's outcome, as the head receives it. */
export interface Handed {
  /**
   * When the handover script was sent (monotonic ms); for an eager
   * handover, the time from which the holder's lease still covers the
   * head's whole ttl.
   */
  readonly sent: number;
  /** The fence issued, or 0. */
  readonly fence: number;
  /** For an eager handover: the script, still on its way to Redis. */
  readonly confirmation?: Confirmation;
}

/** An eager handover's script, sent on the holder's connection. */
export interface Confirmation {
  /**
   * When the lock was handed over (monotonic ms), at or before the
   * script's sending (it may wait for the next turn of the event loop).
   */
  readonly sent: number;
  /**
   * Who held the key when it ran: `ours` (the holder's, now the head's),
   * nobody (`gone`), or another owner (`taken`).
   */
  readonly owner: Promise<Owner>;
}

/** How a sleeper's standing offer to be handed a hold is answered. */
export interface Deliver {
  /**
   * Gives the sleeper the handover's outcome, or `null` to make it retry.
   * Returns `false` when it has gone (aborted) meanwhile: the caller must
   * then free the hold it handed over.
   */
  deliver(handed: Handed | null): boolean;
}

/** A sleeping head's standing offer to be handed the lock. */
export interface Offer extends Want, Deliver {}

/**
 * One waiter asleep between attempts (a lock's head, or one of a crowd),
 * with its offer; once a release has `taken` it, only its answer (or an
 * abort) ends the sleep.
 */
export interface Sleeper<O> {
  offer?: O;
  taken: boolean;
  end(handed?: Handed): void;
}

const queues = new WeakMap<ScriptClient, Map<string, LocalQueue>>();

/** The queue for `key` on `client`, created on first use, dropped when empty. */
export function localQueue(client: ScriptClient, key: string): LocalQueue {
  let byKey = queues.get(client);
  if (!byKey) queues.set(client, byKey = new Map());
  let queue = byKey.get(key);
  if (!queue) {
    const map = byKey;
    queue = new LocalQueue(client, () => map.delete(key));
    byKey.set(key, queue);
  }
  return queue;
}

/** The queue for `key` on `client`, if any waiter or holder has one now. */
export function existingQueue(
  client: ScriptClient,
  key: string,
): LocalQueue | undefined {
  return queues.get(client)?.get(key);
}
