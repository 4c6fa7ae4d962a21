import { type Deadline, schedule, unschedule } from "./_deadlines.ts";
import { now } from "./_timers.ts";
import type { StopSignal } from "./_stop.ts";

/** How {@linkcode settle} bounds a pending Redis call. */
export interface SettleOptions {
  /** Give up after this many ms (`Infinity`: never). */
  timeout: number;
  /** The error to reject with when the time is up. */
  onTimeout: () => unknown;
  /** Give up as soon as this aborts, with its reason. */
  signal?: StopSignal;
  /** Let the process exit while the call is pending. */
  background?: boolean;
  /** Called once if the call is given up on while still pending. */
  onAbandon?: () => void;
}

/**
 * Settles with `promise`, or rejects when the time is up or the signal aborts,
 * whichever comes first: a blackholed socket must not leave a call hanging.
 * An abandoned promise keeps a handler, so its late rejection is never
 * unhandled.
 */
export function settle<T>(
  promise: Promise<T>,
  options: SettleOptions,
): Promise<T> {
  const { timeout, signal } = options;
  if (timeout === Infinity && !signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const bound = new Bound(options, reject);
    promise.then(
      (value) => bound.finish() && resolve(value),
      (error) => bound.finish() && reject(error),
    );
    if (signal?.aborted) return bound.abandon(signal.reason);
    // The bound itself listens (its `handleEvent`) and is the deadline
    // (see `_deadlines.ts`): one object per call.
    signal?.addEventListener("abort", bound, { once: true });
    if (timeout !== Infinity) schedule(bound, now() + timeout);
  });
}

// One pending call of `settle`: settled once, by the call, the signal or
// the deadline, whichever comes first.
class Bound implements Deadline {
  at = Infinity;
  slot = -1;
  readonly keepAlive: boolean;
  #done = false;
  #options: SettleOptions;
  #reject: (reason: unknown) => void;

  constructor(options: SettleOptions, reject: (reason: unknown) => void) {
    this.#options = options;
    this.#reject = reject;
    this.keepAlive = !options.background;
  }

  // Ends the bounds: `false` when already settled.
  finish(): boolean {
    if (this.#done) return false;
    this.#done = true;
    unschedule(this);
    this.#options.signal?.removeEventListener("abort", this);
    return true;
  }

  abandon(reason: unknown): void {
    if (!this.finish()) return;
    this.#options.onAbandon?.();
    this.#reject(reason);
  }

  // The signal's abort event.
  handleEvent(): void {
    this.abandon(this.#options.signal!.reason);
  }

  // The time is up.
  due(): void {
    this.abandon(this.#options.onTimeout());
  }
}
