import type { StopSignal } from "./_stop.ts";

/** Milliseconds on the monotonic clock; wall-clock jumps do not move it. */
export const now = (): number => performance.now();

/**
 * Resolves after `ms`, or rejects with `signal.reason` as soon as the signal
 * aborts; the timer and the listener are gone either way.
 */
export function delay(ms: number, signal: StopSignal): Promise<void> {
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
