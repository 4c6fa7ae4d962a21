/** A timer handle as returned by `setTimeout` on any runtime. */
export type Timer = ReturnType<typeof setTimeout>;

/** Milliseconds on the monotonic clock; wall-clock jumps do not move it. */
export const now = (): number => performance.now();

/**
 * Starts a timer that does not keep the process alive, where the runtime
 * allows: Node and Bun timers have `unref()`, Deno has `Deno.unrefTimer()`.
 * Both are feature-detected so the code stays runnable on Deno Deploy and
 * edge runtimes, where neither is needed.
 */
export function setBackgroundTimeout<A extends unknown[]>(
  callback: (...args: A) => void,
  ms: number,
  ...args: A
): Timer {
  const timer = setTimeout(callback, ms, ...args);
  const handle = timer as unknown as { unref?: () => void };
  if (typeof handle.unref === "function") {
    handle.unref();
  } else {
    const deno =
      (globalThis as { Deno?: { unrefTimer?: (id: number) => void } }).Deno;
    deno?.unrefTimer?.(timer as unknown as number);
  }
  return timer;
}

/**
 * Resolves after `ms`, or rejects with `signal.reason` as soon as the signal
 * aborts; the timer and the listener are gone either way.
 */
export function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    // A deadline already past is "now": Node warns of a negative delay.
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** How {@linkcode settle} bounds a pending Redis call. */
export interface SettleOptions {
  /** Give up after this many ms (`Infinity`: never). */
  timeout: number;
  /** The error to reject with when the time is up. */
  onTimeout: () => unknown;
  /** Give up as soon as this aborts, with its reason. */
  signal?: AbortSignal;
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
    // The bound itself listens (its `handleEvent`), and the timer passes it
    // on: one object per call rather than a closure for each part.
    signal?.addEventListener("abort", bound, { once: true });
    if (timeout !== Infinity) {
      bound.timer = options.background
        ? setBackgroundTimeout(timeUp, timeout, bound)
        : setTimeout(timeUp, timeout, bound);
    }
  });
}

// One pending call of `settle`: settled once, by the call, the signal or
// the timer, whichever comes first.
class Bound {
  timer: Timer | undefined;
  #done = false;
  #options: SettleOptions;
  #reject: (reason: unknown) => void;

  constructor(options: SettleOptions, reject: (reason: unknown) => void) {
    this.#options = options;
    this.#reject = reject;
  }

  // Ends the bounds: `false` when already settled.
  finish(): boolean {
    if (this.#done) return false;
    this.#done = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
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

  timeUp(): void {
    this.abandon(this.#options.onTimeout());
  }
}

const timeUp = (bound: Bound): void => bound.timeUp();
