import { backoff } from "./backoff.ts";
import { LockTimeoutError } from "./errors.ts";
import { Lease } from "./_lease.ts";
import { foreignKeyError, type Grant } from "./_store.ts";
import type { Crowd, CrowdTerms, CrowdWant } from "./_crowd.ts";
import type { Handed } from "./_queue.ts";
import type { GrantReply } from "./_hold_scripts.ts";
import type { ScriptedStore } from "./_scripted_store.ts";
import { delay, now } from "./_timers.ts";
import { longestPlace, placeFor } from "./_seat.ts";
import type { WaitSettings } from "./options.ts";
import type { StopSignal } from "./_stop.ts";

const noop = (): void => {};

/**
 * Asks Redis for a hold of `store`'s kind until granted, sleeping between
 * attempts (in `crowd`, where a release in this process may hand it one);
 * returns the lease.
 */
export async function contendInCrowd(
  store: ScriptedStore,
  firstToken: string,
  wait: WaitSettings,
  signal: StopSignal,
  grant: Grant,
  started: number,
  deadline: number,
  crowd: Crowd | undefined,
): Promise<Lease> {
  const { ttl, fencing } = store.settings;
  const subscribe = store.client.deadbolt?.subscribe;
  let token = firstToken;
  const terms = termsOf(store);
  const want = (token: string): CrowdWant | undefined =>
    terms && { token, ...terms };
  // For kinds with a line: gives the crowd's place up, once it empties
  // (a writer's, its mark with it: readers here may go on).
  const leave = store.scripts.leave;
  const seat = crowd?.seat;
  const leaveLine = seat && leave
    ? () => store.run(leave(seat.id)).then(() => store.wakeOtherKind(), noop)
    : undefined;
  // Starts the lease of a hold handed over in this process; `undefined`
  // when it came too late to leave any validity (then freed).
  const adopt = (handed: Handed): Lease | undefined => {
    if (Lease.fresh(handed.sent, ttl)) {
      return grant(token, handed.sent, undefined, "local");
    }
    store.forget(token);
    token = crypto.randomUUID();
  };
  // While releases in this process pass holds on from holder to holder, a
  // waiter that reaches the head sleeps first, ready to be handed one: an
  // attempt now would find every permit held. A release that does not
  // hand over wakes it (as one elsewhere does, by pub/sub, once watched).
  if (crowd?.turns.passing && terms) {
    const pause = Math.min(wait.retryDelay, deadline - now());
    const handed = await crowd.sleep(pause, signal, crowd.wakes, want(token));
    const lease = handed && adopt(handed);
    if (lease) return lease;
    // Nothing came: holds no longer pass on here.
    if (!handed) crowd.turns.passing = false;
  }
  // Whether the hold was busy at an attempt: a grant then is a handover.
  let refused = false;
  for (let attempt = 0;; attempt++) {
    // Called off after a wake-up ended its sleep (or its turn came), in the
    // same tick: an attempt now could only take a hold nobody would keep.
    if (signal.aborted) throw signal.reason;
    const sent = now();
    // Patient: a hold of this process will be handed over, or its release
    // wake a sleeper, and a release elsewhere wakes it by pub/sub (heard
    // now). Turned away, it sleeps until then, and keeps its place as long.
    const patient = !!crowd && !!terms && crowd.listening &&
      store.heldHere() > 0;
    const place = seat
      ? {
        seat: seat.id,
        ms: patient ? longestPlace(wait) : placeFor(wait, attempt),
      }
      : undefined;
    // Wake-ups that come during the attempt cut the next sleep short.
    const seen = crowd?.wakes ?? 0;
    const call = store.run(store.scripts.acquire(token, place));
    let reply: GrantReply;
    try {
      reply = store.scripts.readGrant(await store.settle(call, signal));
    } catch (error) {
      // The hold may have been granted before the failure, or may be
      // after an abandoned call: free it (by token) once the call settled.
      const forget = () => store.forget(token);
      call.then(forget, forget);
      // So may the seat's place in line, unread: the seat gives it up when
      // the crowd empties (its LEAVE goes after this call).
      if (leaveLine) seat!.place(leaveLine);
      throw error;
    }
    if (reply.status === "busy") refused = true;
    if (leaveLine && reply.status === "busy") {
      // Several of the crowd may ask at once: a grant to one does not
      // tell whether another took a place since, so the place is given
      // up whenever the crowd empties.
      seat!.place(leaveLine);
    }
    if (reply.status === "granted") {
      if (Lease.fresh(sent, ttl)) {
        return grant(
          token,
          sent,
          fencing ? reply.fence : undefined,
          refused ? "remote" : undefined,
        );
      }
      // No validity left: free it and retry afresh.
      store.forget(token);
      token = crypto.randomUUID();
    } else if (reply.status !== "busy") {
      throw foreignKeyError(
        `Cannot acquire ${store.scripts.kind} ${JSON.stringify(store.name)}`,
        store.scripts.keys,
        reply.status,
      );
    }
    const freeIn = reply.status === "busy" ? reply.freeIn : undefined;
    const left = deadline - now();
    if (left <= 0) {
      if (freeIn === undefined) {
        throw new DOMException(
          `Cannot acquire ${store.scripts.kind} ${
            JSON.stringify(store.name)
          } as Redis answered too slowly to leave any of the ${ttl} ms lease`,
          "TimeoutError",
        );
      }
      throw new LockTimeoutError(store.name, now() - started, freeIn);
    }
    let pause = backoff(attempt, wait.retryDelay, wait.maxRetryDelay);
    if (freeIn !== undefined) {
      if (freeIn >= 0) pause = Math.min(pause, Math.max(1, freeIn));
      if (crowd) {
        crowd.noteRemaining(freeIn);
        if (subscribe) crowd.watch(subscribe, store.scripts.channel);
      }
    }
    // Asking again before a wake-up would be refused.
    if (patient && freeIn !== undefined) {
      pause = wait.maxRetryDelay;
      if (freeIn >= 0) pause = Math.min(pause, Math.max(1, freeIn));
    }
    pause = Math.min(pause, left);
    if (!crowd) {
      await delay(pause, signal);
      continue;
    }
    const handed = await crowd.sleep(pause, signal, seen, want(token));
    const lease = handed && adopt(handed);
    if (lease) return lease;
  }
}

/**
 * The terms on which a waiter of `store` stands ready to be handed a hold:
 * none unless the kind can (a semaphore's permit), nor for a waiter that
 * wants a fence (only an acquisition issues one).
 */
export function termsOf(store: ScriptedStore): CrowdTerms | undefined {
  const { ttl, fencing, limit } = store.settings;
  if (!store.scripts.transfer || fencing || limit === undefined) {
    return undefined;
  }
  return { ttl, limit };
}
