import { settle } from "./_settle.ts";
import type { StopSignal } from "./_stop.ts";

/**
 * What the servers of one round have answered so far: for each, its reply
 * (as read), its error (a timeout included), or nothing yet. Once the
 * round has resolved, late answers no longer change it.
 */
export class Tally<R> {
  /** Per server: its reply, when it answered. */
  readonly replies: (R | undefined)[];
  /** Per server: why it failed, when it did. */
  readonly failures: unknown[];
  #failed: boolean[];

  /** An empty tally of `servers` servers. */
  constructor(servers: number) {
    this.replies = new Array(servers).fill(undefined);
    this.failures = new Array(servers).fill(undefined);
    this.#failed = new Array(servers).fill(false);
  }

  /** How many servers have neither answered nor failed. */
  get pending(): number {
    return this.replies.filter((reply, i) =>
      reply === undefined && !this.#failed[i]
    ).length;
  }

  /** The errors of the servers that failed, in server order. */
  get errors(): unknown[] {
    return this.failures.filter((_, i) => this.#failed[i]);
  }

  /** How many servers replied with a reply that `matches`. */
  count(matches: (reply: R) => boolean): number {
    return this.replies.filter((reply) => reply !== undefined && matches(reply))
      .length;
  }

  /** Whether server `i` had neither answered nor failed when the round ended. */
  isPending(i: number): boolean {
    return this.replies[i] === undefined && !this.#failed[i];
  }

  /** Records server `i`'s reply. */
  answer(i: number, reply: R): void {
    this.replies[i] = reply;
  }

  /** Records server `i`'s failure. */
  fail(i: number, error: unknown): void {
    this.#failed[i] = true;
    this.failures[i] = error;
  }
}

/** How {@linkcode round} waits for its calls. */
export interface RoundOptions<R> {
  /** Give up on the servers that have not answered after this many ms (`Infinity`: never). */
  timeout: number;
  /** The error a server that did not answer in time fails with. */
  onTimeout: (server: number) => unknown;
  /** Reads one server's reply; what it throws counts as that server's failure. */
  parse: (reply: unknown, server: number) => R;
  /** Stop waiting as soon as this holds for the tally so far. */
  enough?: (tally: Tally<R>) => boolean;
  /** Rejects the round with its reason as soon as it aborts. */
  signal?: StopSignal;
  /** Let the process exit while the round waits. */
  background?: boolean;
}

/**
 * Waits for calls sent to every server at once, until `enough` holds, every
 * server has answered or failed, or the time is up (the servers still
 * silent then fail with `onTimeout`). The time limit and the signal are
 * {@linkcode settle}'s; every call keeps a handler, so a late rejection is
 * never unhandled, and answers after the round has ended change nothing.
 */
export async function round<R>(
  calls: readonly Promise<unknown>[],
  options: RoundOptions<R>,
): Promise<Tally<R>> {
  const { parse, enough = () => false } = options;
  const tally = new Tally<R>(calls.length);
  let done = false;
  const decided = new Promise<void>((resolve) => {
    const check = () => {
      if (tally.pending === 0 || enough(tally)) {
        done = true;
        resolve();
      }
    };
    calls.forEach((call, i) => {
      call.then(
        (reply) => {
          if (done) return;
          try {
            tally.answer(i, parse(reply, i));
          } catch (error) {
            tally.fail(i, error);
          }
          check();
        },
        (error) => {
          if (done) return;
          tally.fail(i, error);
          check();
        },
      );
    });
    check();
  });
  const timedOut = Symbol("timed out");
  try {
    await settle(decided, { ...options, onTimeout: () => timedOut });
  } catch (error) {
    if (error !== timedOut) throw error;
    for (let i = 0; i < calls.length; i++) {
      if (tally.isPending(i)) tally.fail(i, options.onTimeout(i));
    }
  } finally {
    done = true;
  }
  return tally;
}
