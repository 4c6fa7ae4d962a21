import type { ScriptClient } from "./client.ts";
import { LockTimeoutError } from "./errors.ts";
import type { Lease } from "./_lease.ts";
import type { Grant } from "./_store.ts";
import { type LocalQueue, localQueue } from "./_queue.ts";
import { unwatched } from "./_wakeups.ts";
import { now } from "./_timers.ts";
import type { WaitSettings } from "./options.ts";
import type { StopSignal } from "./_stop.ts";

/** One wait, as its head starts asking Redis. */
export interface Waiting {
  /** The wait's settings. */
  readonly wait: WaitSettings;
  /** Calls the wait off. */
  readonly signal: StopSignal;
  /** Starts the lease of the grant. */
  readonly grant: Grant;
  /** The process's line for this lock; none for one attempt. */
  readonly queue: LocalQueue | undefined;
  /** When the wait began (monotonic ms). */
  readonly started: number;
  /** When it gives up (monotonic ms). */
  readonly deadline: number;
  /** When the first attempt goes out: the start, or reaching the head. */
  readonly firstSend: number;
}

/**
 * One wait of a lock `name` (its key `key`) on `client`, shared by the
 * stores of one client: lines up in this process's queue (one attempt,
 * `timeout` 0, does not: it may barge in, as a non-blocking try is expected
 * to), runs `contend` at the head, and leaves the line. With `hold`, the
 * lease won is the queue's holder (a new head waits to be handed the lock).
 * A wait that times out in line rejects with a {@linkcode LockTimeoutError};
 * a wait that fails leaves nothing open behind it (its wake-up connection
 * is closed first).
 */
export async function waitInLine(
  client: ScriptClient,
  name: string,
  key: string,
  wait: WaitSettings,
  signal: StopSignal,
  grant: Grant,
  hold: boolean,
  contend: (waiting: Waiting) => Promise<Lease>,
): Promise<void> {
  const started = now();
  const deadline = started + wait.timeout;
  const queue = wait.timeout > 0 ? localQueue(client, key) : undefined;
  try {
    const entered = queue?.enter(signal, deadline) ?? true;
    // When the first attempt goes out right away, `started` is its send time.
    let firstSend = started;
    if (entered !== true) {
      if (!await entered) {
        throw new LockTimeoutError(
          name,
          now() - started,
          queue!.remainingTtl(),
        );
      }
      firstSend = now();
    }
    try {
      const lease = await contend({
        wait,
        signal,
        grant,
        queue,
        started,
        deadline,
        firstSend,
      });
      if (hold) queue?.hold(lease);
    } finally {
      queue?.leave();
    }
  } catch (error) {
    await unwatched(client);
    throw error;
  }
}
