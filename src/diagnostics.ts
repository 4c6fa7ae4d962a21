/**
 * Events about deadbolt's own machinery: things that never change a lock's
 * outcome, but that an operator wants to see. Listen with
 * `diagnostics.addEventListener(type, listener)`.
 *
 * - `"subscribererror"` ({@linkcode SubscriberErrorEvent}): the connection
 *   deadbolt opened for wake-ups failed to open, to subscribe, or reported
 *   an error (say, the server went away). Waiters are unaffected but for
 *   latency: they keep polling with backoff, as they always do, until the
 *   client library reconnects and subscribes again.
 *
 * @example Log wake-up trouble
 * ```ts
 * import { diagnostics, SubscriberErrorEvent } from "@deadbolt/deadbolt";
 *
 * diagnostics.addEventListener("subscribererror", (event) => {
 *   if (event instanceof SubscriberErrorEvent) {
 *     console.warn("deadbolt wake-ups degraded:", event.error);
 *   }
 * });
 * ```
 */
export const diagnostics: EventTarget = new EventTarget();

/**
 * The connection deadbolt opened for wake-ups failed; waiters fall back to
 * backoff meanwhile. Dispatched on {@linkcode diagnostics}.
 */
export class SubscriberErrorEvent extends Event {
  /** What the client library reported. */
  readonly error: unknown;

  /**
   * Constructs a new instance.
   *
   * @param error What the client library reported.
   */
  constructor(error: unknown) {
    super("subscribererror");
    this.error = error;
  }
}

/** Dispatches a {@linkcode SubscriberErrorEvent}. */
export function reportSubscriberError(error: unknown): void {
  diagnostics.dispatchEvent(new SubscriberErrorEvent(error));
}
