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
 * Redis ran them before it; and those it leaves, if they ran last, ran
 * after it, so no sooner than it went out. One given up on ran before any
 * sent after it, if at all, where calls run in the order sent (`ordered`);
 * elsewhere (a pool, HTTP) it may run yet, after any other, and counts as
 * one in flight that never answers.
 *
 * @module
 */

/**
 * One script that set, or may set, the key's expiry: until when the key
 * holds if Redis ran it last.
 */
export interface Extension {
  /**
   * When it went out (monotonic ms); once one sent later has run, when
   * that one went out (run last, it ran after that one).
   */
  sent: number;
  /** `sent` plus `span`. */
  until: number;
  /** The validity of its ttl (ms). */
  readonly span: number;
  /**
   * Answered, or given up on where calls run in the order sent (it may
   * have run all the same, before any sent after it).
   */
  settled: boolean;
  /**
   * The extensions settled when it went out: Redis ran them before it.
   * Emptied once it settles: kept, each extension would keep alive the
   * ones before it, every one the lease ever made.
   */
  follows: readonly Extension[];
  /** Given up on where calls may overtake each other: it may run yet. */
  adrift: boolean;
}

const NONE: readonly Extension[] = [];

/** The scripts that may have set a key's expiry last. */
export class Extensions {
  /** The grant, settled from the start (its answer made the lease). */
  readonly grant: Extension;
  #known: Extension[];
  #ordered: boolean;

  /**
   * Starts from the grant, sent at `sent`, valid for `span` ms; `ordered`
   * when the client runs calls in the order they are sent.
   */
  constructor(sent: number, span: number, ordered: boolean) {
    this.grant = extension(sent, span, true, NONE);
    this.#known = [this.grant];
    this.#ordered = ordered;
  }

  /** An extension goes out at `sent`, valid for `span` ms if it runs last. */
  add(sent: number, span: number): Extension {
    // Where calls run in the order sent, `ran` needs no list of followed.
    const follows = this.#ordered
      ? NONE
      : this.#known.filter((known) => known.settled);
    const added = extension(sent, span, false, follows);
    this.#known.push(added);
    return added;
  }

  /**
   * `extension` ran: the ones settled before it went out no longer count,
   * nor, where calls run in the order sent, any sent before it. Elsewhere
   * those in flight then may have run after it, so no sooner than it went
   * out.
   */
  ran(extension: Extension): void {
    const { follows, sent } = extension;
    extension.settled = true;
    extension.follows = NONE;
    if (this.#ordered) {
      // Every one sent before it, answered or not, ran before it: those
      // come before it in the list (gone already if a later one ran).
      const index = this.#known.indexOf(extension);
      if (index > 0) this.#known = this.#known.slice(index);
      return;
    }
    this.#known = this.#known.filter((known) => !follows.includes(known));
    for (const known of this.#known) {
      if (known.sent >= sent) continue;
      known.sent = sent;
      known.until = sent + known.span;
    }
  }

  /**
   * `extension` failed: it may have run all the same, and still counts;
   * where calls may overtake each other, it may run yet, after any other.
   */
  gaveUp(extension: Extension): void {
    extension.follows = NONE;
    if (this.#ordered) {
      extension.settled = true;
      return;
    }
    extension.adrift = true;
    // Of two adrift, one ending no later for a ttl no longer is all that
    // counts, now and after any extension runs.
    const covers = (one: Extension, other: Extension) =>
      one !== other && one.adrift && other.adrift &&
      one.until <= other.until && one.span <= other.span;
    this.#known = this.#known.some((known) => covers(known, extension))
      ? this.#known.filter((known) => known !== extension)
      : this.#known.filter((known) => !covers(extension, known));
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
   * When the next renewal is due, for a lease renewed `ahead` ms before its
   * end: by the soonest end of a settled one (one still in flight is waited
   * for), and by that of an adrift one, though not sooner than `interval`
   * after the renewal that moved it on (so that renewals do not storm).
   */
  renewalDue(ahead: number, interval: number): number {
    let due = Infinity;
    for (const known of this.#known) {
      if (known.settled) {
        due = Math.min(due, Math.max(known.sent, known.until - ahead));
      } else if (known.adrift) {
        due = Math.min(
          due,
          Math.max(known.sent + interval, known.until - ahead),
        );
      }
    }
    return due;
  }
}

const extension = (
  sent: number,
  span: number,
  settled: boolean,
  follows: readonly Extension[],
): Extension => ({
  sent,
  until: sent + span,
  span,
  settled,
  follows,
  adrift: false,
});
