/**
 * Full-jitter exponential backoff, as in the seed: the n-th wait (from 0) is
 * uniform in `[0, min(maxDelay, initialDelay · 2^n))`. Jitter spreads waiters
 * that were turned away at the same moment, so they do not retry in lockstep.
 *
 * @param attempt How many waits came before this one.
 * @param initialDelay The bound of the first wait, in ms.
 * @param maxDelay The largest bound, in ms.
 * @param random A source of uniform numbers in `[0, 1)`.
 * @returns How long to wait, in ms.
 */
export function backoff(
  attempt: number,
  initialDelay: number,
  maxDelay: number,
  random: () => number = Math.random,
): number {
  // 2^attempt overflows to Infinity past ~1024 attempts; min() keeps it sane.
  return random() * Math.min(maxDelay, initialDelay * 2 ** attempt);
}
