import type { ScriptClient } from "./client.ts";
import { backoff } from "./backoff.ts";
import {
  LockKeyError,
  LockReplicationError,
  LockTimeoutError,
} from "./errors.ts";
import type { LockKeys } from "./keys.ts";
import { Lease, type Renewal, RENEWED } from "./_lease.ts";
import type { CallBounds, Grant, Store } from "./_lifecycle.ts";
import { type Handed, type LocalQueue, localQueue } from "./_queue.ts";
import { existingQueue } from "./_queue.ts";
import { releaseHold } from "./_handover.ts";
import { unwatched } from "./_wakeups.ts";
import { runScript, toIntegers } from "./_run_script.ts";
import {
  ACQUIRE,
  type AcquireReply,
  ADOPT,
  EXTEND,
  type Owner,
  readAcquire,
  readAdopt,
  readOwner,
  RELEASE,
} from "./scripts.ts";
import { delay, now, settle } from "./_timers.ts";
import type { LockSettings, WaitSettings } from "./options.ts";

// Added to a waiting mark's lifetime, so it outlasts the waiter's sleep.
const MARK_MARGIN_MS = 20;

const noop = (): void => {};

/** Why a hold is lost, by who held its key when deadbolt looked. */
const LOST_BECAUSE: Record<Exclude<Owner, "ours">, string> = {
  gone: "its key expired or was deleted",
  taken: "another owner holds its key",
};

/**
 * A `Lock`'s Redis side: one client (a server, or a cluster through a
 * cluster client) and the scripts of `scripts.ts`. Waiters of one process
 * line up in a {@linkcode LocalQueue} and pass the lock on by the handover
 * protocol of `_handover.ts`.
 */
export class RedisStore implements Store {
  /** The client, as adapted. */
  readonly client: ScriptClient;
  /** The lock's keys. */
  readonly keys: LockKeys;
  #name: string;
  #settings: LockSettings;

  /** The store of the lock `name`; validated settings. */
  constructor(
    client: ScriptClient,
    name: string,
    keys: LockKeys,
    settings: LockSettings,
  ) {
    this.client = client;
    this.#name = name;
    this.keys = keys;
    this.#settings = settings;
  }

  async acquire(
    wait: WaitSettings,
    signal: AbortSignal,
    grant: Grant,
  ): Promise<void> {
    const started = now();
    const deadline = started + wait.timeout;
    // One attempt (tryAcquire) does not line up: it may barge in, as a
    // non-blocking try is expected to.
    const queue = wait.timeout > 0
      ? localQueue(this.client, this.keys.lock)
      : undefined;
    const waiting = { wait, signal, grant, started, deadline, queue };
    try {
      const entered = queue?.enter(signal, deadline) ?? true;
      // When the first attempt goes out right away, `started` is its send time.
      let firstSend = started;
      if (entered !== true) {
        if (!await entered) {
          throw new LockTimeoutError(
            this.#name,
            now() - started,
            queue!.remainingTtl(),
          );
        }
        firstSend = now();
      }
      try {
        const lease = await this.#contend(waiting, firstSend);
        queue?.hold(lease);
      } finally {
        queue?.leave();
      }
    } catch (error) {
      // A wait that fails leaves nothing open behind it (see release).
      await unwatched(this.client);
      throw error;
    }
  }

  async extend(
    token: string,
    ttl: number,
    bounds: CallBounds,
  ): Promise<Renewal> {
    const call = runScript(this.client, EXTEND, [this.keys.lock], [
      token,
      String(ttl),
    ]);
    const owner = readOwner(await this.settle(call, bounds));
    return owner === "ours"
      ? RENEWED
      : { renewed: false, lost: LOST_BECAUSE[owner] };
  }

  async release(token: string, lease: Lease, valid: boolean): Promise<boolean> {
    try {
      return await releaseHold(this, token, lease, valid);
    } finally {
      // A wake-up connection that a wait on this client opened is closed
      // by now: nothing deadbolt opened outlives the call.
      const closing = unwatched(this.client);
      if (closing) await closing;
    }
  }

  async adopt(
    token: string,
    signal: AbortSignal,
    grant: Grant,
  ): Promise<boolean> {
    const { ttl, fencing } = this.#settings;
    const sent = now();
    const call = runScript(this.client, ADOPT, [
      this.keys.lock,
      this.keys.fence,
    ], [
      token,
      String(ttl),
    ]);
    const reply = readAdopt(await this.settle(call, { signal }));
    // Too late to leave any validity: the hold stays as it was, to expire.
    if (reply.status !== "ours" || !Lease.fresh(sent, ttl)) return false;
    grant(token, sent, fencing ? reply.fence : undefined);
    return true;
  }

  lost(lease: Lease): void {
    existingQueue(this.client, this.keys.lock)?.lost(lease);
  }

  /** Deletes the key if it holds `token`, in the background. */
  forget(token: string): void {
    runScript(this.client, RELEASE, [this.keys.lock], [token]).then(noop, noop);
  }

  /** Bounds `call` by `commandTimeout` (see {@linkcode settle}). */
  settle(
    call: Promise<unknown>,
    bounds: Partial<CallBounds> & { signal?: AbortSignal } = {},
  ): Promise<unknown> {
    const timeout = bounds.timeout ?? this.#settings.commandTimeout;
    return settle(call, {
      timeout,
      signal: bounds.signal,
      background: bounds.background,
      onTimeout: () =>
        new DOMException(
          `Redis did not answer within ${timeout} ms (lock '${this.#name}')`,
          "TimeoutError",
        ),
    });
  }

  // Asks Redis until granted, sleeping between attempts; returns the lease.
  async #contend(waiting: Waiting, firstSend: number): Promise<Lease> {
    const { wait, signal, deadline, queue } = waiting;
    const { ttl, fencing, waitReplicas } = this.#settings;
    const { lock, fence, released } = this.keys;
    // A waiter (not one attempt) leaves a mark when turned away, so that a
    // holder handing the lock over in its own process yields to it.
    const keys = queue ? [lock, fence, this.keys.waiting] : [lock, fence];
    let token = crypto.randomUUID();
    const want = () => ({
      token,
      ttl,
      fencing,
      eager: !fencing && waitReplicas === 0,
    });
    const subscribe = this.client.deadbolt?.subscribe;
    if (queue?.holder) {
      // A hold of this process: wait to be handed the lock, rather than ask
      // Redis now (its release would come while we asked). If its lease
      // ends without a release (lost, or run out), the queue wakes us.
      if (subscribe) queue.watch(subscribe, released);
      const pause = Math.min(wait.maxRetryDelay, deadline - now());
      const handed = await queue.sleep(pause, signal, want());
      if (handed) {
        const lease = await this.#adopt(waiting, token, handed);
        if (lease) return lease;
        token = crypto.randomUUID();
      }
      firstSend = now();
    }
    for (let attempt = 0;; attempt++) {
      const sent = attempt === 0 ? firstSend : now();
      // The mark lasts until this waiter's next attempt at the latest.
      const mark = Math.ceil(
        Math.min(wait.maxRetryDelay, wait.retryDelay * 2 ** attempt),
      ) + MARK_MARGIN_MS;
      const call = runScript(this.client, ACQUIRE, keys, [
        token,
        String(ttl),
        fencing ? "1" : "0",
        String(mark),
      ]);
      let reply: AcquireReply;
      try {
        reply = readAcquire(await this.settle(call, { signal }));
      } catch (error) {
        // The SET may have landed before the failure, or may land after an
        // abandoned call: delete it (by token) once the call has settled.
        const forget = () => this.forget(token);
        call.then(forget, forget);
        throw error;
      }
      if (reply.status === "granted") {
        const lease = await this.#adopt(waiting, token, {
          sent,
          fence: reply.fence,
        });
        if (lease) return lease;
        // The grant arrived with no validity left: retry afresh.
        token = crypto.randomUUID();
      } else if (reply.status !== "held") {
        throw this.#keyError(reply.status);
      }
      const pttl = reply.status === "held" ? reply.pttl : undefined;
      const left = deadline - now();
      if (left <= 0) {
        if (pttl === undefined) {
          throw new DOMException(
            `Cannot acquire lock ${
              JSON.stringify(this.#name)
            } as Redis answered too slowly to leave any of the ${ttl} ms lease`,
            "TimeoutError",
          );
        }
        throw new LockTimeoutError(this.#name, now() - waiting.started, pttl);
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
        const lease = await this.#adopt(waiting, token, handed);
        if (lease) return lease;
        token = crypto.randomUUID();
      }
    }
  }

  /**
   * Starts the lease of a grant to `token`; `undefined` when it came with
   * no validity left (it is then deleted by token: use a new one).
   */
  async #adopt(
    waiting: Waiting,
    token: string,
    handed: Handed,
  ): Promise<Lease | undefined> {
    const { ttl, fencing, waitReplicas } = this.#settings;
    if (waitReplicas > 0) await this.#awaitReplicas(token, waiting.signal);
    if (!Lease.fresh(handed.sent, ttl)) {
      this.forget(token);
      return undefined;
    }
    const lease = waiting.grant(
      token,
      handed.sent,
      fencing ? handed.fence : undefined,
    );
    const confirmation = handed.confirmation;
    if (confirmation) {
      // Handed over before Redis answered: the answer renews the lease from
      // the script's send time, or ends it if the holder's key was gone.
      confirmation.owner.then((owner) => {
        if (owner === "ours") lease.extended(confirmation.sent, ttl);
        else {
          lease.lose(
            owner === "gone"
              ? "its key was gone when it was handed over"
              : "another owner held its key when it was handed over",
          );
        }
      }, noop);
    }
    return lease;
  }

  // WAIT must follow the script on the same connection, since it counts the
  // replicas that have every write that connection made so far.
  async #awaitReplicas(token: string, signal: AbortSignal): Promise<void> {
    const { waitReplicas, replicaTimeout, commandTimeout } = this.#settings;
    let acknowledged: number;
    try {
      const call = this.client.deadbolt!.wait!(
        waitReplicas,
        replicaTimeout,
        this.keys.lock,
      );
      [acknowledged] = toIntegers(
        await this.settle(call, {
          signal,
          timeout: commandTimeout + replicaTimeout,
        }),
        1,
      );
    } catch (error) {
      this.forget(token);
      throw error;
    }
    if (acknowledged < waitReplicas) {
      this.forget(token);
      throw new LockReplicationError(this.#name, acknowledged, waitReplicas);
    }
  }

  #keyError(status: "wrong type" | "bad fence"): LockKeyError {
    const action = `Cannot acquire lock ${JSON.stringify(this.#name)}`;
    const { lock, fence } = this.keys;
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
}

// One acquire()'s wait.
interface Waiting {
  readonly wait: WaitSettings;
  readonly signal: AbortSignal;
  readonly grant: Grant;
  readonly started: number;
  readonly deadline: number;
  readonly queue: LocalQueue | undefined;
}
