import type { ScriptClient } from "./client.ts";
import type { LockKeys } from "./keys.ts";
import { Lease, validity } from "./_lease.ts";
import { deferred } from "./_deferred.ts";
import { existingQueue, type LocalQueue, type Offer } from "./_queue.ts";
import { runScript } from "./_run_script.ts";
import { joinRun, type RunState, sendHandovers } from "./_handover_run.ts";
import {
  HANDOVER,
  type HandoverReply,
  type Owner,
  readHandover,
  readOwner,
  RELEASE,
} from "./scripts.ts";
import { now } from "./_timers.ts";

/**
 * The handover protocol: how a lock passes between waiters, in one process
 * that shares a client and across processes. Its rules:
 *
 * 1. **First come, first served.** Waiters for one lock on one client line
 *    up in a {@linkcode LocalQueue}; only its head asks Redis, so N local
 *    waiters cost the server what one does. Across processes, the head asks
 *    with its queue's seat, and a refused seat takes a place in the lock's
 *    line in Redis (`LockKeys.line`), which it keeps while its process asks
 *    again in time (a new head keeps its queue's place). A free lock goes to
 *    the first seat in line (see `ACQUIRE`). A one-off attempt (`tryAcquire`)
 *    takes no place, and gets a free lock only when nobody is in line.
 * 2. **Handover.** While the head sleeps between attempts it stands ready
 *    to be handed the lock. A release in this process then runs one script
 *    that moves the key from the holder's token to the head's (with a new
 *    fence when the head wants one) instead of deleting it: one round trip
 *    from holder to holder, no wake-up, no retry. A new head behind a
 *    holder of this process waits for its release instead of asking Redis.
 * 3. **Eager handover.** The head starts before Redis answers when all of
 *    these hold: it wants no fence (only Redis issues fences) and no
 *    replica acknowledgement; the client runs calls in the order they are
 *    sent (`ordered`), so the head's own commands follow the handover; the
 *    releasing hold was still valid; and that validity covers the head's
 *    whole `ttl` from some moment on, from which the head's validity then
 *    counts. Redis's answer renews the head's lease from the handover's
 *    time, or ends it as lost when the key was no longer the holder's; with
 *    no answer, the head renews at once to find out, and the release that
 *    handed it over returns `false` (it must not be retried). The script
 *    goes out at the next turn of the event loop, or before any other
 *    command this process sends with a holder's token (a release, a
 *    renewal, a handover, a `forget`, an adoption, a loss, a read of the
 *    token): eager handovers made meanwhile (a run of short holds) go out
 *    as one script, and every holder of the run is told its answer (see
 *    `_handover_run.ts`).
 * 4. **Unanswered cap.** At most {@linkcode MAX_UNANSWERED} eager handovers
 *    may await Redis's answer; past that, a handover waits for its answer.
 *    A chain of eager handovers runs in microtasks, and waiting for the
 *    network is what lets the event loop (timers, other I/O) take its turn.
 * 5. **Taking turns with other processes.** After {@linkcode MAX_HANDOVERS}
 *    handovers in a row, if the last one found other processes in line, the
 *    next release deletes the key instead: the first process in line (woken
 *    by pub/sub) gets it, and this process's head, which asks only
 *    `YIELD_MS` later, takes a place at the back.
 *    Processes that keep waiting thus take turns of up to
 *    `MAX_HANDOVERS + 1` holds each. A grant by Redis (the lock went
 *    through it: a yield, a loss, a release with no head ready) starts the
 *    count over. With nobody in line, handing over goes on: yielding would
 *    only cost time.
 * 6. **Nothing is left behind.** A handover whose head has gone (aborted)
 *    meanwhile is deleted by token; one that failed makes the head retry
 *    with its token, which finds the key its own if the handover landed. A
 *    seat whose queue empties without the lock leaves the line; one whose
 *    process died lapses (see `_contend.ts`).
 */

/** How many releases in a row may hand the lock over locally (rule 5). */
export const MAX_HANDOVERS = 16;

/**
 * How many eager handovers may await Redis's answer (rule 4). 16: with 32
 * workers on one lock and zero-work sections, 16–19% more sections per
 * second than 8 (interleaved, Node 24 and Deno), with as many event-loop
 * turns (`queue_test.ts`); 32 chains twice as long between turns.
 */
export const MAX_UNANSWERED = 16;

// How long, after a yielding release, the processes in line get to ask
// before the local head does (they hear of the release by pub/sub within a
// round trip; the first may not have waited the patience yet).
const YIELD_MS = 2;

/** What a release needs of the lock's store. */
export interface HoldStore {
  /** The client the hold was taken on. */
  readonly client: ScriptClient;
  /** The lock's keys. */
  readonly keys: LockKeys;
  /** Bounds a call by `commandTimeout`. */
  settle(call: Promise<unknown>): Promise<unknown>;
  /** Deletes the key if it holds `token`, in the background. */
  forget(token: string): void;
}

/**
 * Releases the hold of `token`, whose `lease` has just ended: hands the
 * lock to the local head when the rules allow it, else deletes the key if
 * it holds `token` and wakes the local head. `valid` tells whether the
 * lease was still valid. Resolves `true` when the key was the hold's.
 */
export function releaseHold(
  store: HoldStore,
  token: string,
  lease: Lease,
  valid: boolean,
): Promise<boolean> {
  const queue = existingQueue(store.client, store.keys.lock);
  if (!queue) return deleteKey(store, token);
  queue.vacate(lease);
  const turn = nextTurn(queue);
  if (turn === "yield") return deleteKey(store, token, queue, YIELD_MS);
  if (!turn) return deleteKey(store, token, queue);
  return handOver(store, token, turn, queue, valid ? lease : undefined);
}

const noop = (): void => {};

// Per queue: the run of handovers so far, whether the last one found other
// processes in line, and the eager handovers awaiting Redis.
class Turns implements RunState {
  handovers = 0;
  waitingElsewhere = false;
  unanswered = 0;
}

const turns = new WeakMap<LocalQueue, Turns>();

function turnsOf(queue: LocalQueue): Turns {
  let state = turns.get(queue);
  if (!state) turns.set(queue, state = new Turns());
  return state;
}

/**
 * A head of `queue` was granted the lock by Redis: the lock went through
 * Redis, so the next run of handovers in a row (rule 5) counts from 0.
 */
export function grantedByRedis(queue: LocalQueue): void {
  const state = turns.get(queue);
  if (!state) return;
  state.handovers = 0;
  state.waitingElsewhere = false;
}

// Rules 2 and 5: the head's offer, "yield" when this release must go
// through Redis to let other processes in, or nothing.
function nextTurn(queue: LocalQueue): Offer | "yield" | undefined {
  if (!queue.offered) return undefined;
  const state = turnsOf(queue);
  if (state.handovers >= MAX_HANDOVERS && state.waitingElsewhere) {
    state.handovers = 0;
    state.waitingElsewhere = false;
    return "yield";
  }
  state.handovers++;
  return queue.takeOffer();
}

async function handOver(
  store: HoldStore,
  token: string,
  offer: Offer,
  queue: LocalQueue,
  lease: Lease | undefined,
): Promise<boolean> {
  const state = turnsOf(queue);
  const sent = now();
  if (
    lease && offer.eager && store.client.deadbolt?.ordered &&
    state.unanswered < MAX_UNANSWERED
  ) {
    // Rule 3: from `from` on, the holder's lease covers the head's ttl.
    const from = Math.min(sent, lease.validUntil - validity(offer.ttl));
    if (Lease.fresh(from, offer.ttl)) {
      return await handOverEagerly(store, token, offer, queue, sent, from);
    }
  }
  const { lock, fence, line } = store.keys;
  sendHandovers(store);
  const call = runScript(
    store.client,
    HANDOVER,
    [lock, fence, line],
    [token, offer.token, String(offer.ttl), offer.fencing ? "1" : "0"],
  );
  let reply: HandoverReply;
  try {
    reply = readHandover(await store.settle(call));
  } catch (error) {
    // The script may have run, or may run yet: a waiter that has gone
    // would hold the lock with nobody to release it. (One still here asks
    // again with the same token, and gets what the script gave it.)
    if (!offer.deliver(null)) {
      const forget = () => store.forget(offer.token);
      call.then(forget, forget);
    }
    throw error;
  }
  state.waitingElsewhere = reply.status === "handed" && reply.waiting;
  if (reply.status === "handed") {
    if (!offer.deliver({ sent, fence: reply.fence })) store.forget(offer.token);
    return true;
  }
  offer.deliver(null);
  // A bad fence counter: the script deleted the holder's key instead.
  return reply.status === "bad fence";
}

async function handOverEagerly(
  store: HoldStore,
  token: string,
  offer: Offer,
  queue: LocalQueue,
  sent: number,
  from: number,
): Promise<boolean> {
  const owner = deferred<Owner>();
  // Handled here too: the head may drop the confirmation unread.
  owner.promise.catch(noop);
  if (
    !offer.deliver({
      sent: from,
      fence: 0,
      confirmation: { sent, owner: owner.promise },
    })
  ) {
    // The head has gone (aborted) meanwhile: release as usual.
    return await deleteKey(store, token, queue);
  }
  const state = turnsOf(queue);
  state.unanswered++;
  try {
    const reply = await joinRun(store, state, token, offer, owner);
    return reply.status === "handed";
  } catch {
    // Unanswered, but handed over: the lock is the new holder's now, whose
    // renewal tells whether the key became its own. This release must not
    // be retried (it would delete the key under the new holder), and does
    // not claim the key was its own.
    return false;
  }
}

// Deletes the key if it holds `token`, publishing the release, then wakes
// the local head (after `quiet` ms, when yielding).
function deleteKey(
  store: HoldStore,
  token: string,
  queue?: LocalQueue,
  quiet = 0,
): Promise<boolean> {
  const { lock, released, line, seats } = store.keys;
  sendHandovers(store);
  return store.settle(
    runScript(store.client, RELEASE, [lock, released, line, seats], [token]),
  ).then((reply) => {
    if (quiet > 0) queue?.wakeLater(quiet);
    else queue?.wake();
    return readOwner(reply) === "ours";
  });
}
