import { LockKeyError } from "./errors.ts";
import type { LockKeys } from "./keys.ts";
import type { Lease, LeaseOptions, Renewal } from "./_lease.ts";
import { settle } from "./_settle.ts";
import type { WaitSettings } from "./options.ts";
import type { Handover } from "./_telemetry.ts";
import type { StopSignal } from "./_stop.ts";

/** A handle's validated settings: its lease's, and its default wait. */
export type LifecycleSettings =
  & Pick<
    LeaseOptions,
    | "ttl"
    | "autoExtend"
    | "renewInterval"
    | "retryDelay"
    | "maxRetryDelay"
    | "commandTimeout"
  >
  & WaitSettings
  & {
    /** The `deadbolt.lock.name` attribute of telemetry; `""` for none. */
    telemetryName: string;
  };

/**
 * Starts the lease of a grant: the winning token, the send time of the
 * request that won it (monotonic ms), the fence, if one was issued, and
 * how it passed from a previous holder, if it did.
 */
export type Grant = (
  token: string,
  sent: number,
  fence?: number,
  handover?: Handover,
) => Lease;

/** How long a call may take. */
export interface CallBounds {
  /** Give up after this many ms. */
  timeout: number;
  /** Let the process exit while it waits (a renewal in the background). */
  background?: boolean;
}

/** What a kind of lock does in Redis, for its `Lifecycle` (`_lifecycle.ts`). */
export interface Store {
  /** The kind of client, for telemetry's `deadbolt.client` (see `clientKind`). */
  readonly clientKind: string;
  /**
   * Whether its calls run in Redis in the order they are sent (the
   * client's `ordered`; every client's, on several servers).
   */
  readonly ordered?: boolean;
  /**
   * Waits by `wait` for the lock; once it is granted, calls `grant` (before
   * resolving). Rejects with a `LockTimeoutError` when the wait
   * ran out, with `signal.reason` when called off, or with what failed.
   * Nothing it set or opened outlives a failure.
   */
  acquire(wait: WaitSettings, signal: StopSignal, grant: Grant): Promise<void>;
  /** Renews the hold of `token` to `ttl` ms. */
  extend(token: string, ttl: number, bounds: CallBounds): Promise<Renewal>;
  /**
   * Releases the hold of `token`, whose `lease` has just ended; `valid`
   * tells whether the lease was still valid. Resolves `true` when the hold
   * was there to release.
   */
  release(token: string, lease: Lease, valid: boolean): Promise<boolean>;
  /**
   * Takes over the hold of `token`, renewing it; once it is found, calls
   * `grant` and resolves `true`; `false` when the key does not hold it.
   */
  adopt?(token: string, signal: StopSignal, grant: Grant): Promise<boolean>;
  /**
   * Told when `lease` ended without a release: lost (before the handle's
   * signal aborts), or detached for another handle to adopt.
   */
  lost?(lease: Lease): void;
  /**
   * Sends at once what this process has yet to tell Redis of the current
   * hold (eager handovers wait for the next turn of the event loop), so
   * that a command from elsewhere with its token finds it: called when the
   * hold's token is read.
   */
  reveal?(): void;
}

/**
 * Bounds a Redis call by `timeout` ms and `signal` (see `settle`); a call
 * past its time rejects with a `TimeoutError` naming the `kind` of lock and
 * its `name`. `background` lets the process exit meanwhile.
 */
export function boundedCall(
  call: Promise<unknown>,
  kind: string,
  name: string,
  timeout: number,
  signal?: StopSignal,
  background = false,
): Promise<unknown> {
  return settle(call, {
    timeout,
    signal,
    background,
    onTimeout: () =>
      new DOMException(
        `Redis did not answer within ${timeout} ms (${kind} '${name}')`,
        "TimeoutError",
      ),
  });
}

/**
 * The error of an acquisition that found a key it did not write: the lock's
 * key of another type, or a fence counter that is not a safe integer.
 */
export function foreignKeyError(
  action: string,
  keys: Pick<LockKeys, "lock" | "fence">,
  status: "wrong type" | "bad fence",
): LockKeyError {
  const { lock, fence } = keys;
  return status === "wrong type"
    ? new LockKeyError(
      lock,
      `${action} as its key '${lock}' holds a value of another type; deadbolt leaves it alone`,
    )
    : new LockKeyError(
      fence,
      `${action} as its fence counter '${fence}' is not an integer below 2^53 - 1`,
    );
}
