import { backoff } from "./backoff.ts";
import { LockReplicationError, LockTimeoutError } from "./errors.ts";
import { Lease } from "./_lease.ts";
import { foreignKeyError } from "./_store.ts";
import type { Handed } from "./_queue.ts";
import type { Waiting } from "./_waiting.ts";
import type { RedisStore } from "./_redis_store.ts";
import { runScript, toIntegers } from "./_run_script.ts";
import { ACQUIRE, type AcquireReply, readAcquire } from "./scripts.ts";
import { LEAVE } from "./_line_scripts.ts";
import { grantedByRedis } from "./_handover.ts";
import { delay, now } from "./_timers.ts";
import { PATIENCE_MS, placeFor } from "./_seat.ts";
import type { Handover } from "./_telemetry.ts";
import type { StopSignal } from "./_stop.ts";

const noop = (): void => {};
const PATIENCE = String(PATIENCE_MS);

/**
 * Asks Redis until the lock is granted, sleeping between attempts (at the
 * head of its local queue, where it may be handed the lock); returns the
 * lease.
 */
export async function contend(
  store: RedisStore,
  waiting: Waiting,
): Promise<Lease> {
  const { wait, signal, deadline, queue } = waiting;
  let { firstSend } = waiting;
  const { ttl, fencing, waitReplicas } = store.settings;
  const { lock, fence, released, line, seats } = store.keys;
  const keys = [lock, fence, line, seats];
  // A waiter (not one attempt) takes a place in line when turned away.
  const seat = queue ? queue.seat.id : "";
  let leave: (() => void) | undefined;
  let token = crypto.randomUUID();
  const want = () => ({
    token,
    ttl,
    fencing,
    eager: !fencing && waitReplicas === 0,
  });
  const subscribe = store.client.deadbolt?.subscribe;
  // Whether someone held the lock before: a grant then is a handover.
  let refused = false;
  if (queue?.holder) {
    refused = true;
    // A hold of this process: wait to be handed the lock, rather than ask
    // Redis now (its release would come while we asked). If its lease
    // ends without a release (lost, or run out), the queue wakes us.
    if (subscribe) queue.watch(subscribe, released);
    const pause = Math.min(wait.maxRetryDelay, deadline - now());
    const handed = await queue.sleep(pause, signal, want());
    if (handed) {
      const lease = await adoptHanded(store, waiting, token, handed);
      if (lease) return lease;
      token = crypto.randomUUID();
    }
    firstSend = now();
  }
  for (let attempt = 0;; attempt++) {
    // Called off after a wake-up ended its sleep (or its turn came), in the
    // same tick: an attempt now could only take a lock nobody would hold.
    if (signal.aborted) throw signal.reason;
    const sent = attempt === 0 ? firstSend : now();
    // The place lasts until this waiter's next attempt at the latest.
    const place = placeFor(wait, attempt);
    const call = runScript(store.client, ACQUIRE, keys, [
      token,
      String(ttl),
      fencing ? "1" : "0",
      seat,
      String(place),
      PATIENCE,
    ]);
    let reply: AcquireReply;
    try {
      reply = readAcquire(await store.settle(call, signal));
    } catch (error) {
      // The SET may have landed before the failure, or may land after an
      // abandoned call: delete it (by token) once the call has settled.
      const forget = () => store.forget(token);
      call.then(forget, forget);
      // So may the seat's place in line, unread: the seat gives it up
      // when the queue empties (its LEAVE goes after this call).
      if (queue) queue.seat.place(leave ??= leaveLine(store, seat));
      throw error;
    }
    if (queue && reply.status === "granted") {
      queue.seat.granted();
      grantedByRedis(queue);
    }
    if (queue && reply.status === "held") {
      queue.seat.place(leave ??= leaveLine(store, seat));
    }
    if (reply.status === "granted") {
      let lease = adoptGrant(store, waiting, token, {
        sent,
        fence: reply.fence,
      }, refused ? "remote" : undefined);
      // Awaited only when it is a promise (replicas to wait for): an await
      // costs a turn of the microtask queue even on a value.
      if (lease instanceof Promise) lease = await lease;
      if (lease) return lease;
      // The grant arrived with no validity left: retry afresh.
      token = crypto.randomUUID();
    } else if (reply.status === "held") refused = true;
    else {
      throw foreignKeyError(
        `Cannot acquire lock ${JSON.stringify(store.name)}`,
        store.keys,
        reply.status,
      );
    }
    const pttl = reply.status === "held" ? reply.pttl : undefined;
    const left = deadline - now();
    if (left <= 0) {
      if (pttl === undefined) {
        throw new DOMException(
          `Cannot acquire lock ${
            JSON.stringify(store.name)
          } as Redis answered too slowly to leave any of the ${ttl} ms lease`,
          "TimeoutError",
        );
      }
      throw new LockTimeoutError(store.name, now() - waiting.started, pttl);
    }
    let pause = backoff(attempt, wait.retryDelay, wait.maxRetryDelay);
    if (pttl !== undefined && pttl >= 0) pause = Math.min(pause, pttl);
    if (pttl !== undefined && queue) {
      queue.noteRemaining(pttl);
      if (subscribe) queue.watch(subscribe, released);
    }
    pause = Math.min(pause, left);
    const handed = queue
      ? await queue.sleep(pause, signal, want())
      : await delay(pause, signal);
    if (handed) {
      const lease = await adoptHanded(store, waiting, token, handed);
      if (lease) return lease;
      token = crypto.randomUUID();
    }
  }
}

// Takes `seat` out of `store`'s line, in the background.
const leaveLine = (store: RedisStore, seat: string) => (): void => {
  const { line, seats } = store.keys;
  runScript(store.client, LEAVE, [line, seats], [seat]).then(noop, noop);
};

// Adopts a handover of this process: made before Redis answered, or after.
const adoptHanded = (
  store: RedisStore,
  waiting: Waiting,
  token: string,
  handed: Handed,
): Lease | undefined | Promise<Lease | undefined> =>
  adoptGrant(
    store,
    waiting,
    token,
    handed,
    handed.confirmation ? "eager" : "local",
  );

/**
 * Starts the lease of a grant to `token`; `undefined` when it came with
 * no validity left (it is then deleted by token: use a new one). Waits for
 * replicas first when `waitReplicas` asks for them; else it is synchronous
 * (most grants: no promise of its own).
 */
function adoptGrant(
  store: RedisStore,
  waiting: Waiting,
  token: string,
  handed: Handed,
  // How it came: `undefined` when nobody held it before.
  handover: Handover | undefined,
): Lease | undefined | Promise<Lease | undefined> {
  if (store.settings.waitReplicas > 0) {
    return awaitReplicas(store, token, waiting.signal).then(() =>
      startLease(store, waiting, token, handed, handover)
    );
  }
  return startLease(store, waiting, token, handed, handover);
}

function startLease(
  store: RedisStore,
  waiting: Waiting,
  token: string,
  handed: Handed,
  handover: Handover | undefined,
): Lease | undefined {
  const { ttl, fencing } = store.settings;
  if (!Lease.fresh(handed.sent, ttl)) {
    store.forget(token);
    return undefined;
  }
  const lease = waiting.grant(
    token,
    handed.sent,
    fencing ? handed.fence : undefined,
    handover,
  );
  const confirmation = handed.confirmation;
  if (confirmation) {
    // Handed over before Redis answered: the answer renews the lease from
    // the handover's time (no later than the script's sending), or ends it
    // if the holder's key was gone. With no answer, a renewal at once tells
    // (it runs after the script, on the same connection).
    confirmation.owner.then((owner) => {
      if (owner === "ours") lease.confirmed(confirmation.sent, ttl);
      else {
        lease.lose(
          owner === "gone"
            ? "its key was gone when it was handed over"
            : "another owner held its key when it was handed over",
        );
      }
    }, () => lease.renewNow());
  }
  return lease;
}

// WAIT must follow the script on the same connection, since it counts the
// replicas that have every write that connection made so far.
async function awaitReplicas(
  store: RedisStore,
  token: string,
  signal: StopSignal,
): Promise<void> {
  const { waitReplicas, replicaTimeout, commandTimeout } = store.settings;
  let acknowledged: number;
  try {
    const call = store.client.deadbolt!.wait!(
      waitReplicas,
      replicaTimeout,
      store.keys.lock,
    );
    [acknowledged] = toIntegers(
      await store.settle(call, signal, commandTimeout + replicaTimeout),
      1,
    );
  } catch (error) {
    store.forget(token);
    throw error;
  }
  if (acknowledged < waitReplicas) {
    store.forget(token);
    throw new LockReplicationError(store.name, acknowledged, waitReplicas);
  }
}
