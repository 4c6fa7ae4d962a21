/**
 * What calls off one acquisition: `release()` while it waits, or the
 * caller's `signal`.
 *
 * An `AbortController` per acquisition, with its `AbortSignal` (an
 * `EventTarget`), cost 5–6% of an uncontended acquire and release on a
 * loopback connection, in Node and in Deno alike; a {@linkcode Stop} is a
 * plain object with the few members the waits use.
 *
 * @module
 */

/** A listener of {@linkcode StopSignal}'s `abort`: a function, or an object with `handleEvent`. */
export type StopListener = (() => void) | { handleEvent(): void };

/**
 * The part of `AbortSignal` that deadbolt's waits use: an `AbortSignal` is
 * one, and so is a {@linkcode Stop}.
 */
export interface StopSignal {
  /** Whether it has been called off. */
  readonly aborted: boolean;
  /** Why, once it has. */
  readonly reason: unknown;
  /** Throws `reason` if it has been called off. */
  throwIfAborted(): void;
  /** Calls `listener` once, when called off. */
  addEventListener(
    type: "abort",
    listener: StopListener,
    options: { once: true },
  ): void;
  /** Forgets `listener`. */
  removeEventListener(type: "abort", listener: StopListener): void;
}

/**
 * A {@linkcode StopSignal} that `abort()` calls off, and that follows the
 * caller's `AbortSignal`, if any, until `unfollow()`.
 */
export class Stop implements StopSignal {
  aborted = false;
  reason: unknown = undefined;
  // Most waits have one listener at a time: an array only for more.
  #listener: StopListener | undefined;
  #more: StopListener[] | undefined;
  #followed: AbortSignal | undefined;

  /** A stop that also aborts when `signal` does (with its reason). */
  constructor(signal?: AbortSignal) {
    if (signal === undefined) return;
    if (signal.aborted) {
      this.aborted = true;
      this.reason = signal.reason;
      return;
    }
    this.#followed = signal;
    signal.addEventListener("abort", this, { once: true });
  }

  /** Stops following the caller's signal (the acquisition has ended). */
  unfollow(): void {
    this.#followed?.removeEventListener("abort", this);
    this.#followed = undefined;
  }

  /**
   * Calls it off with `reason`, once: each listener is called once. The
   * caller's signal, if it has aborted, gives its own reason (as with
   * `AbortSignal.any`, even when one of its listeners calls this first).
   */
  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    const followed = this.#followed;
    this.reason = followed?.aborted ? followed.reason : reason;
    this.unfollow();
    const first = this.#listener;
    const more = this.#more;
    this.#listener = this.#more = undefined;
    if (first !== undefined) call(first);
    if (more !== undefined) { for (const listener of more) call(listener); }
  }

  // The followed signal's abort event.
  handleEvent(): void {
    this.abort(this.#followed?.reason);
  }

  throwIfAborted(): void {
    if (this.aborted) throw this.reason;
  }

  addEventListener(
    _type: "abort",
    listener: StopListener,
    _options: { once: true },
  ): void {
    if (this.aborted) return;
    if (this.#listener === undefined) this.#listener = listener;
    else (this.#more ??= []).push(listener);
  }

  removeEventListener(_type: "abort", listener: StopListener): void {
    if (this.#listener === listener) {
      this.#listener = this.#more?.shift();
      return;
    }
    const index = this.#more?.indexOf(listener) ?? -1;
    if (index >= 0) this.#more!.splice(index, 1);
  }
}

// Calls a listener as an EventTarget would: what it throws is reported (as
// uncaught) without keeping the other listeners from being called.
function call(listener: StopListener): void {
  try {
    if (typeof listener === "function") listener();
    else listener.handleEvent();
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
}
