import type { WaitSettings } from "./options.ts";

/**
 * How long (ms, on Redis' clock) the first process in line may wait before
 * a free hold is promised to it alone. Until then a free hold goes to
 * whoever asks first, so that a process whose waiters keep coming back
 * (they ask again as soon as their release is answered) does not hand the
 * lock to another process at every turn: measured with `bench/fairness.ts`
 * (4 processes of 4 workers), a strict line (0) cost a third of the
 * zero-work throughput; 30 ms kept every process within 10% of the others
 * at 1 ms sections for 6% of the throughput (see docs/decisions.md).
 */
export const PATIENCE_MS = 30;

// Added to how long a place in line lasts, so that it outlasts the head's
// sleep and its next round trip, even on a busy event loop. A process that
// died holds a free hold up for at most this much past its last backoff.
const SEAT_MARGIN_MS = 100;

/**
 * How long (ms) a place in line lasts after attempt number `attempt`: until
 * the head's next attempt is due at the latest (its backoff), plus a margin.
 */
export function placeFor(wait: WaitSettings, attempt: number): number {
  return Math.ceil(
    Math.min(wait.maxRetryDelay, wait.retryDelay * 2 ** attempt),
  ) + SEAT_MARGIN_MS;
}

/** How long a place lasts for a waiter that sleeps `maxRetryDelay` if turned away. */
export function longestPlace(wait: WaitSettings): number {
  return Math.ceil(wait.maxRetryDelay) + SEAT_MARGIN_MS;
}

// Seat ids: unique to this process (a random prefix) and to the seat (a
// count), without a random number per seat (one per uncontended wait).
const PROCESS = crypto.randomUUID();
let seats = 0;

/**
 * A process's place in a lock's line in Redis (`LockKeys.line`): one per
 * local queue (a `Lock`'s) or crowd (a semaphore's), shared by its heads, so
 * a new head keeps the place of the one before. Redis gives the seat a place
 * when it turns a head away and takes it back with a grant; a seat that
 * still has one when its queue empties gives it up, and one whose process
 * died lapses in Redis.
 */
export class Seat {
  /** The seat's id, as its heads ask with it. */
  readonly id: string = `${PROCESS}:${++seats}`;
  #placed = false;
  #leave: (() => void) | undefined;

  /** Redis turned a head away: the seat has a place, which `leave` gives up. */
  place(leave: () => void): void {
    this.#placed = true;
    this.#leave = leave;
  }

  /** Redis granted a head: its place went with the grant. */
  granted(): void {
    this.#placed = false;
  }

  /** Nobody of the queue waits any more: the place goes to the next process. */
  vacate(): void {
    if (!this.#placed) return;
    this.#placed = false;
    this.#leave?.();
  }
}
