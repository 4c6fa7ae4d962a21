import { type Deferred, deferred } from "./_deferred.ts";
import { now } from "./_timers.ts";
import { MAX_TIMER_MS } from "./_validate.ts";
import type { StopSignal } from "./_stop.ts";

/**
 * Waiters in arrival order: first come, first served. The first `capacity`
 * (one, for a lock) are at the head and may go on; the others wait for their
 * turn, or give up (abort, deadline), or are taken out of line behind the
 * head to be given a `G` (a hold, handed over by a release).
 */
export class WaitLine<G = never> {
  #waiters: Deferred<G | undefined>[] = [];
  // Waiters taken out of line to be given a `G` (see `take`); made on the
  // first take (a lock's line never has one).
  #taken: Set<Deferred<G | undefined>> | undefined;
  #owner: LineOwner;
  #capacity: number;

  /** A line whose changes `owner` hears of, `capacity` waiters at its head. */
  constructor(owner: LineOwner, capacity = 1) {
    this.#owner = owner;
    this.#capacity = capacity;
  }

  /** How many wait, the head included. */
  get size(): number {
    return this.#waiters.length + (this.#taken?.size ?? 0);
  }

  /**
   * Joins the line: `true` at once when this waiter is at its head, else a
   * promise of `true` once it is; rejects with `signal.reason` on abort, or
   * resolves `false` when `deadline` passes first (the waiter has then left).
   */
  enter(signal: StopSignal, deadline: number): true | Promise<boolean> {
    return this.join(signal, deadline).ready as true | Promise<boolean>;
  }

  /**
   * Joins the line as {@linkcode enter} does, and returns the turn that
   * {@linkcode leave} takes (where more than one waiter is at the head).
   * A waiter {@linkcode give}n a `G` resolves with it (it has then left).
   */
  join(
    signal: StopSignal,
    deadline: number,
  ): { ready: true | Promise<boolean | G>; turn: Turn<G> } {
    const turn = deferred<G | undefined>();
    this.#waiters.push(turn);
    const ready = this.#waiters.length <= this.#capacity ||
      this.#await(turn, signal, deadline);
    return { ready, turn };
  }

  /** A waiter at the head (the first, by default) leaves, letting the next in. */
  leave(turn: Turn<G> | undefined = this.#waiters[0]): void {
    this.#remove(turn);
  }

  /**
   * Takes a waiter behind the head out of the line, to be {@linkcode give}n
   * a `G`: it cannot reach the head meanwhile. `false` when it is at the
   * head, gone, or taken already. {@linkcode untake} puts it back.
   */
  take(turn: Turn<G>): boolean {
    const index = this.#waiters.indexOf(turn);
    if (index < this.#capacity) return false;
    this.#waiters.splice(index, 1);
    (this.#taken ??= new Set()).add(turn);
    return true;
  }

  /** Gives `value` to the waiter {@linkcode take}n: `false` if it has given up since. */
  give(turn: Turn<G>, value: G): boolean {
    if (!this.#taken?.delete(turn)) return false;
    turn.resolve(value);
    if (this.size === 0) this.#owner.emptied();
    return true;
  }

  /**
   * Puts a waiter {@linkcode take}n back, first behind the head (at the
   * head, if there is room there).
   */
  untake(turn: Turn<G>): void {
    if (!this.#taken?.delete(turn)) return;
    this.#waiters.splice(this.#capacity, 0, turn);
    if (this.#waiters.indexOf(turn) < this.#capacity) turn.resolve(undefined);
  }

  async #await(
    turn: Deferred<G | undefined>,
    signal: StopSignal,
    deadline: number,
  ): Promise<boolean | G> {
    if (signal.aborted) {
      this.#remove(turn);
      throw signal.reason;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gaveUp = deferred<"late">();
    // A waiter that gives up behind the head (or taken) leaves at once, so
    // that nothing is given to it from then on.
    const giveUp = () => {
      if (this.#taken?.delete(turn)) {
        if (this.size === 0) this.#owner.emptied();
      } else if (this.#waiters.indexOf(turn) >= this.#capacity) {
        this.#remove(turn);
      }
    };
    const onAbort = () => {
      giveUp();
      gaveUp.reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    // Re-armed in steps: setTimeout fires at once past 2^31 - 1 ms, and a
    // timer may fire a fraction of a millisecond early.
    const arm = () => {
      const left = deadline - now();
      timer = left > MAX_TIMER_MS ? setTimeout(arm, MAX_TIMER_MS) : setTimeout(
        () => {
          if (now() < deadline) return arm();
          giveUp();
          gaveUp.resolve("late");
        },
        Math.max(0, left),
      );
    };
    if (deadline !== Infinity) arm();
    try {
      const outcome = await Promise.race([turn.promise, gaveUp.promise]);
      if (outcome === undefined) return true;
      if (outcome !== "late") return outcome;
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

  #remove(waiter: Deferred<G | undefined> | undefined): void {
    const index = waiter ? this.#waiters.indexOf(waiter) : -1;
    if (index < 0) return;
    this.#waiters.splice(index, 1);
    if (index === 0) this.#owner.headLeft();
    // The waiter that moved up to the head's last place goes on.
    if (index < this.#capacity) {
      this.#waiters[this.#capacity - 1]?.resolve(undefined);
    }
    if (this.size === 0) this.#owner.emptied();
  }
}

/** A waiter's place in a {@linkcode WaitLine}. */
export type Turn<G> = Deferred<G | undefined>;

/** What a {@linkcode WaitLine} tells its owner. */
export interface LineOwner {
  /** The head has left; the next one is told after this. */
  headLeft(): void;
  /** The last waiter has left. */
  emptied(): void;
}
