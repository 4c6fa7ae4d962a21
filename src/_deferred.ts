/** A promise with its resolve and reject functions. */
export interface Deferred<T> {
  /** The promise. */
  promise: Promise<T>;
  /** Resolves it. */
  resolve(value: T): void;
  /** Rejects it. */
  reject(reason: unknown): void;
}

/** `Promise.withResolvers()`, which Node has only from version 22 on. */
export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<T>((yes, no) => {
    resolve = yes;
    reject = no;
  });
  return { promise, resolve, reject };
}
