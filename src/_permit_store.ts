import type { ScriptClient } from "./client.ts";
import { backoff } from "./backoff.ts";
import { LockTimeoutError } from "./errors.ts";
import type { LockKeys } from "./keys.ts";
import { Lease, type Renewal, RENEWED } from "./_lease.ts";
import {
  boundedCall,
  type CallBounds,
  foreignKeyError,
  type Grant,
  type Store,
} from "./_store.ts";
import { existingQueue } from "./_queue.ts";
import { type Waiting, waitInLine } from "./_waiting.ts";
import { unwatched } from "./_wakeups.ts";
import { runScript } from "./_run_script.ts";
import {
  ACQUIRE_PERMIT,
  EXTEND_PERMIT,
  type PermitReply,
  readPermit,
  readPermitOwner,
  RELEASE_PERMIT,
} from "./_permit_scripts.ts";
import { delay, now } from "./_timers.ts";
import type { SemaphoreSettings, WaitSettings } from "./options.ts";

// Added to a waiting mark's lifetime, so it outlasts the waiter's sleep.
const MARK_MARGIN_MS = 20;

const noop = (): void => {};

/**
 * A `Semaphore`'s Redis side: one client and the permit scripts. Waiters of
 * one process line up in a `LocalQueue` (only its head asks Redis; the
 * next one asks as soon as the head has its permit), a release in this
 * process wakes the head, and a release elsewhere wakes it by pub/sub where
 * the client can subscribe.
 */
export class PermitStore implements Store {
  readonly #client: ScriptClient;
  readonly #keys: LockKeys;
  readonly #name: string;
  readonly #settings: SemaphoreSettings;

  /** The store of the semaphore `name`; `keys.lock` is its permits' key. */
  constructor(
    client: ScriptClient,
    name: string,
    keys: LockKeys,
    settings: SemaphoreSettings,
  ) {
    this.#client = client;
    this.#name = name;
    this.#keys = keys;
    this.#settings = settings;
  }

  acquire(
    wait: WaitSettings,
    signal: AbortSignal,
    grant: Grant,
  ): Promise<void> {
    return waitInLine(
      this.#client,
      this.#name,
      this.#keys.lock,
      wait,
      signal,
      grant,
      false,
      (waiting) => this.#contend(waiting),
    );
  }

  async extend(
    token: string,
    ttl: number,
    bounds: CallBounds,
  ): Promise<Renewal> {
    const call = runScript(this.#client, EXTEND_PERMIT, [this.#keys.lock], [
      token,
      String(ttl),
    ]);
    const owner = readPermitOwner(
      await this.#settle(call, undefined, bounds.timeout, bounds.background),
    );
    if (owner === "ours") return RENEWED;
    return {
      renewed: false,
      lost: owner === "gone"
        ? "its permit's lease ended, or the permit was deleted"
        : "its key holds a value of another type",
    };
  }

  async release(token: string): Promise<boolean> {
    const { lock, released, waiting } = this.#keys;
    try {
      const reply = await this.#settle(
        runScript(this.#client, RELEASE_PERMIT, [lock, released, waiting], [
          token,
        ]),
      );
      existingQueue(this.#client, lock)?.wake();
      return readPermitOwner(reply) === "ours";
    } finally {
      // Nothing deadbolt opened outlives the call.
      const closing = unwatched(this.#client);
      if (closing) await closing;
    }
  }

  lost(): void {
    // A permit whose lease ended is free, or will be when Redis sees it.
    existingQueue(this.#client, this.#keys.lock)?.wake();
  }

  // Asks Redis for a permit until granted, sleeping between attempts.
  async #contend(
    { wait, signal, grant, queue, started, deadline }: Waiting,
  ): Promise<Lease> {
    const { ttl, limit, fencing } = this.#settings;
    const { lock, fence, released, waiting } = this.#keys;
    const keys = queue ? [lock, fence, waiting] : [lock, fence];
    const subscribe = this.#client.deadbolt?.subscribe;
    let token = crypto.randomUUID();
    for (let attempt = 0;; attempt++) {
      const sent = now();
      const mark = Math.ceil(
        Math.min(wait.maxRetryDelay, wait.retryDelay * 2 ** attempt),
      ) + MARK_MARGIN_MS;
      const call = runScript(this.#client, ACQUIRE_PERMIT, keys, [
        token,
        String(ttl),
        String(limit),
        fencing ? "1" : "0",
        String(mark),
      ]);
      let reply: PermitReply;
      try {
        reply = readPermit(await this.#settle(call, signal));
      } catch (error) {
        // The permit may have been granted before the failure, or may be
        // after an abandoned call: free it (by token) once the call settled.
        const forget = () => this.#forget(token);
        call.then(forget, forget);
        throw error;
      }
      if (reply.status === "granted") {
        if (Lease.fresh(sent, ttl)) {
          return grant(token, sent, fencing ? reply.fence : undefined);
        }
        // No validity left: free it and retry afresh.
        this.#forget(token);
        token = crypto.randomUUID();
      } else if (reply.status !== "full") {
        throw foreignKeyError(
          `Cannot acquire a permit of semaphore ${JSON.stringify(this.#name)}`,
          this.#keys,
          reply.status,
        );
      }
      const nextEnd = reply.status === "full" ? reply.nextEnd : undefined;
      const left = deadline - now();
      if (left <= 0) {
        if (nextEnd === undefined) {
          throw new DOMException(
            `Cannot acquire a permit of semaphore ${
              JSON.stringify(this.#name)
            } as Redis answered too slowly to leave any of the ${ttl} ms lease`,
            "TimeoutError",
          );
        }
        throw new LockTimeoutError(this.#name, now() - started, nextEnd);
      }
      let pause = backoff(attempt, wait.retryDelay, wait.maxRetryDelay);
      if (nextEnd !== undefined) {
        pause = Math.min(pause, Math.max(1, nextEnd));
        if (queue) {
          queue.noteRemaining(nextEnd);
          if (subscribe) queue.watch(subscribe, released);
        }
      }
      pause = Math.min(pause, left);
      if (queue) await queue.sleep(pause, signal);
      else await delay(pause, signal);
    }
  }

  #forget(token: string): void {
    runScript(this.#client, RELEASE_PERMIT, [this.#keys.lock], [token])
      .then(noop, noop);
  }

  #settle(
    call: Promise<unknown>,
    signal?: AbortSignal,
    timeout: number = this.#settings.commandTimeout,
    background = false,
  ): Promise<unknown> {
    return boundedCall(
      call,
      "semaphore",
      this.#name,
      timeout,
      signal,
      background,
    );
  }
}
