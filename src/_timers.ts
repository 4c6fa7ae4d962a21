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
export function setBackgroundTimeout(callback: () => void, ms: number): Timer {
  const timer = setTimeout(callback, ms);
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
  const { timeout, onTimeout, signal, background = false, onAbandon } = options;
  if (timeout === Infinity && !signal) return promise;
  return new Promise<T>((resolve, reject) => {
    let done = false;
    let timer: Timer | undefined;
    const finish = (): boolean => {
      if (done) return false;
      done = true;
      if (timer !== undefined) clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      return true;
    };
    const abandon = (reason: unknown) => {
      if (!finish()) return;
      onAbandon?.();
      reject(reason);
    };
    const onAbort = () => abandon(signal!.reason);
    promise.then(
      (value) => finish() && resolve(value),
      (error) => finish() && reject(error),
    );
    if (signal?.aborted) return abandon(signal.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    if (timeout !== Infinity) {
      const fire = () => abandon(onTimeout());
      timer = background
        ? setBackgroundTimeout(fire, timeout)
        : setTimeout(fire, timeout);
    }
  });
}
