import type { ScriptClient } from "./client.ts";
import type { Subscribe } from "./_subscriber.ts";
import { now } from "./_timers.ts";
import { type Turn, WaitLine } from "./_line.ts";
import { WakeUps } from "./_wakeups.ts";
import { Seat } from "./_seat.ts";
import type { Deliver, Handed, Sleeper } from "./_queue.ts";
import type { Lease } from "./_lease.ts";
import type { StopSignal } from "./_stop.ts";

/**
 * The waiters of this process for a hold that several may have at once (a
 * semaphore's permits, a read-write lock's reads), on one client: in
 * arrival order, with up to `capacity` of them asking Redis at once (a
 * lock's `LocalQueue` lets one). A release in this process, or one
 * elsewhere heard by pub/sub, wakes a waiter that sleeps between attempts
 * (every one, for readers); a release that can hand its hold over gives it
 * to a sleeper, or else to the first waiter behind the head (see
 * {@linkcode takeOffer}).
 */
export class Crowd {
  /**
   * The run of handovers in this process so far, whether the last one
   * found other processes in line, and whether the last release in this
   * process handed its hold over (`passing`).
   */
  readonly turns = { handovers: 0, waitingElsewhere: false, passing: false };
  #line: WaitLine<Handed>;
  // The holds of this process taken through the crowd's stores, not yet
  // released or lost: the crowd stays registered while there are any.
  #holds = new Set<Lease>();
  #client: ScriptClient;
  #sleepers = new Set<Sleeper<CrowdOffer>>();
  // The offers of waiters behind the head, in line order.
  #queued = new Map<Turn<Handed>, CrowdOffer>();
  #wakes = 0;
  #wakeUps: WakeUps | undefined;
  #reading: { pttl: number; at: number } | undefined;
  #onEmpty: () => void;
  #wakeAll: boolean;
  #seat: Seat | undefined;

  /**
   * Waiters of `client`, `capacity` at a time (see {@linkcode wake} for
   * `wakeAll`); `onEmpty` once none is left.
   */
  constructor(
    client: ScriptClient,
    capacity: number,
    wakeAll: boolean,
    onEmpty: () => void,
  ) {
    this.#client = client;
    this.#onEmpty = onEmpty;
    this.#wakeAll = wakeAll;
    this.#line = new WaitLine(this, capacity);
  }

  /** For its {@linkcode WaitLine}. */
  headLeft(): void {}

  /** For its {@linkcode WaitLine}: the last waiter has left. */
  emptied(): void {
    this.#reading = undefined;
    this.#seat?.vacate();
    this.#wakeUps?.stop();
    this.#wakeUps = undefined;
    if (this.#holds.size === 0) this.#onEmpty();
  }

  /** Records a hold of this process, until {@linkcode ended}; returns it. */
  hold(lease: Lease): Lease {
    this.#holds.add(lease);
    return lease;
  }

  /** A hold has been released or lost. */
  ended(lease: Lease): void {
    if (!this.#holds.delete(lease)) return;
    if (this.#holds.size === 0 && this.#line.size === 0) this.#onEmpty();
  }

  /** How many holds of this process there are now. */
  get holding(): number {
    return this.#holds.size;
  }

  /** The crowd's seat in the line in Redis, made on first use. */
  get seat(): Seat {
    return this.#seat ??= new Seat();
  }

  /**
   * Joins the line (see {@linkcode WaitLine.join}). With `want`, a waiter
   * behind the head stands ready to be handed a hold: it then resolves with
   * that handover, having left the line.
   */
  join(
    signal: StopSignal,
    deadline: number,
    want?: CrowdWant,
  ): {
    ready: true | Promise<boolean | Handed>;
    turn: Turn<Handed>;
  } {
    const entry = this.#line.join(signal, deadline);
    if (entry.ready === true || !want) return entry;
    const { turn } = entry;
    const offer: CrowdOffer = {
      ...want,
      deliver: (handed) => {
        if (handed) return this.#line.give(turn, handed);
        // Not handed after all: it is back in line, and may be offered again.
        this.#line.untake(turn);
        return false;
      },
    };
    this.#queued.set(turn, offer);
    const drop = () => this.#queued.delete(turn);
    entry.ready.then(drop, drop);
    return entry;
  }

  /** `turn` leaves the line, letting the next waiter ask. */
  leave(turn: Turn<Handed>): void {
    this.#line.leave(turn);
  }

  /** How many wait, those asking Redis included. */
  get size(): number {
    return this.#line.size;
  }

  /** Whether some waiter sleeps between attempts now. */
  get sleeping(): boolean {
    return this.#sleepers.size > 0;
  }

  /** How many wake-ups there have been: read before an attempt, for `sleep`. */
  get wakes(): number {
    return this.#wakes;
  }

  /**
   * Sleeps up to `ms`, or until a wake-up; at once when one came since
   * {@linkcode wakes} read `seen` (during the attempt). With `want`, the
   * sleeper stands ready to be handed a hold by a release in this process
   * (see {@linkcode takeOffer}): the sleep then resolves with that grant.
   */
  sleep(
    ms: number,
    signal: StopSignal,
    seen: number,
    want?: CrowdWant,
  ): Promise<Handed | undefined> {
    if (signal.aborted) return Promise.reject(signal.reason);
    if (this.#wakes !== seen) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      const stop = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        this.#sleepers.delete(sleeper);
      };
      const end = (handed?: Handed) => {
        stop();
        resolve(handed);
      };
      const onAbort = () => {
        stop();
        reject(signal.reason);
      };
      const sleeper: Sleeper<CrowdOffer> = { taken: false, end };
      sleeper.offer = want && {
        ...want,
        deliver: (handed) => {
          if (!this.#sleepers.has(sleeper)) return false;
          end(handed ?? undefined);
          return true;
        },
      };
      // Once a release has taken the offer, only its answer (or an abort)
      // ends the sleep: a retry now would race the handover.
      const timer = setTimeout(() => sleeper.taken || end(), Math.max(0, ms));
      this.#sleepers.add(sleeper);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * Takes the offer of the longest sleeper that stands ready to be handed
   * a hold, or else of the first waiter behind the head that does: from now
   * on only the offer's answer (or an abort) ends its wait. `undefined`
   * when none does. Sleepers come first: they have waited longest, and
   * the head's waiters that are asking Redis now are left to their answer.
   */
  takeOffer(): CrowdOffer | undefined {
    for (const sleeper of this.#sleepers) {
      if (sleeper.taken || !sleeper.offer) continue;
      sleeper.taken = true;
      return sleeper.offer;
    }
    for (const [turn, offer] of this.#queued) {
      if (this.#line.take(turn)) return offer;
    }
    return undefined;
  }

  /**
   * Tells sleepers that a hold was just released (here or elsewhere): the
   * longest sleeper, since one release frees one permit and waking every
   * sleeper would send attempts bound to fail; or, with `wakeAll` (readers,
   * whom one writer's release lets in together), every one. A waiter
   * mid-attempt sees it too (`wakes`).
   */
  wake(): void {
    this.#wakes++;
    for (const sleeper of [...this.#sleepers]) {
      if (sleeper.taken) continue;
      sleeper.end();
      if (!this.#wakeAll) return;
    }
  }

  /**
   * Wakes the sleepers on every message to `channel` that names the crowd's
   * seat, or nobody, until the crowd empties.
   */
  watch(subscribe: Subscribe, channel: string): void {
    this.#wakeUps ??= new WakeUps(this.#client);
    // A message that names another process's seat is its turn, not ours.
    // Once set up, a release elsewhere made meanwhile went unheard: ask.
    this.#wakeUps.watch(
      subscribe,
      channel,
      (message) => {
        if (!message || message === this.#seat?.id) this.wake();
      },
      () => this.wake(),
    );
  }

  /** Whether the crowd hears releases elsewhere by pub/sub now. */
  get listening(): boolean {
    return this.#wakeUps?.live ?? false;
  }

  /** Records how long until a hold in the way ends, as just read. */
  noteRemaining(pttl: number): void {
    this.#reading = { pttl, at: now() };
  }

  /** That time, counted down to now; `NaN` when nothing was read yet. */
  remainingTtl(): number {
    const reading = this.#reading;
    if (!reading) return NaN;
    if (reading.pttl < 0) return reading.pttl;
    return Math.max(0, Math.round(reading.pttl - (now() - reading.at)));
  }
}

/** The terms a waiter is handed a hold on (a semaphore caller counts against its own limit). */
export interface CrowdTerms {
  /** Its lease length, in ms. */
  readonly ttl: number;
  /** Its own limit. */
  readonly limit: number;
}

/**
 * What a sleeper needs to be handed a hold: its token and its terms (one
 * that wants a fence is never handed one: only an acquisition issues it).
 */
export interface CrowdWant extends CrowdTerms {
  /** The sleeper's token. */
  readonly token: string;
}

/**
 * A waiter's offer, taken by a release that hands it a hold. `deliver(null)`
 * returns whether it woke a sleeper (a waiter behind the head just stays).
 */
export interface CrowdOffer extends CrowdWant, Deliver {}

const crowds = new WeakMap<ScriptClient, Map<string, Crowd>>();

/**
 * The crowd for `key` on `client`, created on first use (with the
 * `capacity` of the call that creates it), dropped when it has neither
 * waiters nor holds.
 */
export function crowdOf(
  client: ScriptClient,
  key: string,
  capacity: number,
  wakeAll: boolean,
): Crowd {
  let byKey = crowds.get(client);
  if (!byKey) crowds.set(client, byKey = new Map());
  let crowd = byKey.get(key);
  if (!crowd) {
    const map = byKey;
    const made: Crowd = crowd = new Crowd(client, capacity, wakeAll, () => {
      if (map.get(key) === made) map.delete(key);
    });
    byKey.set(key, crowd);
  }
  return crowd;
}

/** The crowd for `key` on `client`, if any waiter has one now. */
export function existingCrowd(
  client: ScriptClient,
  key: string,
): Crowd | undefined {
  return crowds.get(client)?.get(key);
}
