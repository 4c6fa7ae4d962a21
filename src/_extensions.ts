/**
 * Which of a lease's scripts may have set its key's expiry last, for
 * `Lease`: the grant and every extension (a renewal, an `extend()`).
 *
 * The key's expiry is set by whichever script Redis ran last, and neither
 * the order of the answers nor (on pooled clients) that of the sends says
 * which that was: a renewal whose answer is late lands after an `extend()`
 * to a shorter ttl that Redis ran after it, and two scripts on two
 * connections of a pool run in either order. So every script that may have
 * run last counts, and ownership is guaranteed until the soonest of their
 * ends. One answered as run rules out those answered before it went out:
 * Redis ran them before it.
 *
 * @module
 */

/**
 * One script that set, or may set, the key's expiry: until when the key
 * holds if Redis ran it last.
 */
export interface Extension {
  /** When it went out (monotonic ms). */
  sent: number;
  /** `sent` plus the validity of its ttl. */
  until: number;
  /** Answered, or given up on (it may have run all the same). */
  settled: boolean;
  /** The extensions settled when it went out: Redis ran them before it. */
  readonly follows: readonly Extension[];
}

/** The scripts that may have set a key's expiry last. */
export class Extensions {
  /** The grant, settled from the start (its answer made the lease). */
  readonly grant: Extension;
  #known: Extension[];

  /** Starts from the grant, sent at `sent`, valid until `until`. */
  constructor(sent: number, until: number) {
    this.grant = { sent, until, settled: true, follows: [] };
    this.#known = [this.grant];
  }

  /** An extension goes out at `sent`, valid until `until` if it runs last. */
  add(sent: number, until: number): Extension {
    const extension: Extension = {
      sent,
      until,
      settled: false,
      follows: this.#known.filter((known) => known.settled),
    };
    this.#known.push(extension);
    return extension;
  }

  /**
   * `extension` ran: the ones settled before it went out no longer count.
   * Those in flight then may have run after it (on pooled clients).
   */
  ran(extension: Extension): void {
    extension.settled = true;
    this.#known = this.#known.filter((known) =>
      !extension.follows.includes(known)
    );
  }

  /** Whether `extension` may still have run last. */
  counts(extension: Extension): boolean {
    return this.#known.includes(extension);
  }

  /** Until when the key holds, whichever of them ran last. */
  validUntil(): number {
    let until = Infinity;
    for (const known of this.#known) until = Math.min(until, known.until);
    return until;
  }

  /**
   * The settled one that ends soonest, which the next renewal is due by
   * (one still in flight is waited for).
   */
  soonestSettled(): Extension | undefined {
    let soonest: Extension | undefined;
    for (const known of this.#known) {
      if (known.settled && (!soonest || known.until < soonest.until)) {
        soonest = known;
      }
    }
    return soonest;
  }
}
