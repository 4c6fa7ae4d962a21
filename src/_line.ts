import { type Deferred, deferred } from "./_deferred.ts";
import { now } from "./_timers.ts";
import { MAX_TIMER_MS } from "./_validate.ts";

/**
 * Waiters in arrival order: first come, first served. The first `capacity`
 * (one, for a lock) are at the head and may go on; the others wait for their
 * turn, or give up (abort, deadline).
 */
export class WaitLine {
  #waiters: Deferred<void>[] = [];
  #owner: LineOwner;
  #capacity: number;

  /** A line whose changes `owner` hears of, `capacity` waiters at its head. */
  constructor(owner: LineOwner, capacity = 1) {
    this.#owner = owner;
    this.#capacity = capacity;
  }

  /** How many wait, the head included. */
  get size(): number {
    return this.#waiters.length;
  }

  /**
   * Joins the line: `true` at once when this waiter is at its head, else a
   * promise of `true` once it is; rejects with `signal.reason` on abort, or
   * resolves `false` when `deadline` passes first (the waiter has then left).
   */
  enter(signal: AbortSignal, deadline: number): true | Promise<boolean> {
    return this.join(signal, deadline).ready;
  }

  /**
   * Joins the line as {@linkcode enter} does, and returns the turn that
   * {@linkcode leave} takes (where more than one waiter is at the head).
   */
  join(
    signal: AbortSignal,
    deadline: number,
  ): { ready: true | Promise<boolean>; turn: Deferred<void> } {
    const turn = deferred<void>();
    this.#waiters.push(turn);
    const ready = this.#waiters.length <= this.#capacity ||
      this.#await(turn, signal, deadline);
    return { ready, turn };
  }

  /** A waiter at the head (the first, by default) leaves, letting the next in. */
  leave(turn: Deferred<void> | undefined = this.#waiters[0]): void {
    this.#remove(turn);
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
        Math.max(0, left),
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

  #remove(waiter: Deferred<void> | undefined): void {
    const index = waiter ? this.#waiters.indexOf(waiter) : -1;
    if (index < 0) return;
    this.#waiters.splice(index, 1);
    if (index === 0) this.#owner.headLeft();
    // The waiter that moved up to the head's last place goes on.
    if (index < this.#capacity) this.#waiters[this.#capacity - 1]?.resolve();
    if (this.#waiters.length === 0) this.#owner.emptied();
  }
}

/** What a {@linkcode WaitLine} tells its owner. */
export interface LineOwner {
  /** The head has left; the next one is told after this. */
  headLeft(): void;
  /** The last waiter has left. */
  emptied(): void;
}
