import type { StopSignal } from "./_stop.ts";

type Immediate = (callback: () => void) => unknown;
const { setImmediate, clearImmediate } = globalThis as {
  setImmediate?: Immediate;
  clearImmediate?: (id: unknown) => void;
};

/**
 * Calls `callback` at the next turn of the event loop, after the microtasks
 * queued meanwhile and any I/O that is ready; returns what cancels it.
 * `setImmediate` where the runtime has it (Node, Bun, and Deno 2.9 at
 * least): a `setTimeout(…, 0)` waits for the timer's granularity, 1 ms in
 * Node and 2 ms in Deno on the benchmark machine (see docs/decisions.md).
 * Elsewhere (older Deno, Workers) that timer stands in.
 */
export function atNextTurn(callback: () => void): () => void {
  if (setImmediate && clearImmediate) {
    const id = setImmediate(callback);
    return () => clearImmediate(id);
  }
  const timer = setTimeout(callback, 0);
  return () => clearTimeout(timer);
}

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
