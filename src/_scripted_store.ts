import type { ScriptClient } from "./client.ts";
import { backoff } from "./backoff.ts";
import { LockTimeoutError } from "./errors.ts";
import { Lease, type Renewal, RENEWED } from "./_lease.ts";
import {
  boundedCall,
  type CallBounds,
  foreignKeyError,
  type Grant,
  type Store,
} from "./_store.ts";
import {
  type Crowd,
  crowdOf,
  type CrowdOffer,
  type CrowdWant,
  existingCrowd,
} from "./_crowd.ts";
import type { TransferReply } from "./_permit_scripts.ts";
import { MAX_HANDOVERS } from "./_handover.ts";
import { unwatched } from "./_wakeups.ts";
import { runScript } from "./_run_script.ts";
import type { LuaScript, Owner } from "./scripts.ts";
import { delay, now } from "./_timers.ts";
import { placeFor } from "./_seat.ts";
import type { WaitSettings } from "./options.ts";
import { clientKind } from "./_client_kind.ts";

const noop = (): void => {};

// Per crowd: the run of handovers so far, and whether the last one found
// other processes in line.
const turns = new WeakMap<
  Crowd,
  { handovers: number; waitingElsewhere: boolean }
>();

/** What an acquire script answered, read. */
export type GrantReply =
  | { readonly status: "granted"; readonly fence: number }
  | { readonly status: "busy"; readonly freeIn: number }
  | { readonly status: "wrong type" | "bad fence" };

/** One script call: the script, its keys and its arguments. */
export interface ScriptCall {
  readonly script: LuaScript;
  readonly keys: string[];
  readonly args: string[];
}

/**
 * What a kind of hold does in Redis, for a {@linkcode ScriptedStore}: a
 * semaphore's permit, a read or a write hold of a read-write lock.
 */
export interface HoldScripts {
  /** For messages: `semaphore`, `read lock`, `write lock`. */
  readonly kind: string;
  /** The key whose local line waiters of one process share. */
  readonly lineKey: string;
  /** How many waiters of one process may ask Redis at once. */
  readonly parallel: number;
  /** Whether a release lets every waiter in (readers), not one. */
  readonly wakeAll: boolean;
  /** The channel a release publishes on, which wakes waiters. */
  readonly channel: string;
  /** The keys a foreign value is reported at (`LockKeyError`). */
  readonly keys: { readonly lock: string; readonly fence: string };
  /**
   * One attempt for `token`; for a waiter (not one attempt), `place` is its
   * process's seat and how long (ms) a place in line (or a waiter's mark)
   * lasts.
   */
  acquire(token: string, place: Place | undefined): ScriptCall;
  /** Takes `seat` out of line, for kinds whose waiters take places in one. */
  leave?(seat: string): ScriptCall;
  /**
   * Hands the hold of `from` to a sleeping waiter of this process, for
   * kinds that can (a semaphore's permit); read with `readTransfer`.
   */
  transfer?(from: string, to: CrowdWant): ScriptCall;
  /** Reads the transfer script's reply. */
  readTransfer?(reply: unknown): TransferReply;
  /** Reads the acquire script's reply. */
  readGrant(reply: unknown): GrantReply;
  /** Renews the hold of `token` to `ttl` ms. */
  extend(token: string, ttl: number): ScriptCall;
  /** Releases the hold of `token`, waking waiters; `quiet`: do not publish. */
  release(token: string, quiet: boolean): ScriptCall;
  /** Reads an extend or release reply. */
  readOwner(reply: unknown): Owner;
  /** Why a hold is lost, by what `extend` found. */
  lost(owner: Exclude<Owner, "ours">): string;
}

/** A waiter's seat in line, and how long its place lasts (ms). */
export interface Place {
  readonly seat: string;
  readonly ms: number;
}

/** The settings a scripted store uses. */
export interface ScriptedSettings {
  readonly ttl: number;
  readonly fencing: boolean;
  readonly commandTimeout: number;
  /** A semaphore's limit, for a waiter's offer to be handed a permit. */
  readonly limit?: number;
}

/**
 * The Redis side of holds made of a few scripts on one client (a
 * semaphore's permits, a read-write lock's holds). Waiters of one process
 * line up in a {@linkcode Crowd}, up to `parallel` of them asking Redis at
 * once; a release in this process wakes the ones that sleep, and a release
 * elsewhere wakes them by pub/sub where the client can subscribe.
 */
export class ScriptedStore implements Store {
  readonly #client: ScriptClient;
  readonly #name: string;
  readonly #scripts: HoldScripts;
  readonly #settings: ScriptedSettings;

  /** The store of `name`'s holds of one kind. */
  constructor(
    client: ScriptClient,
    name: string,
    scripts: HoldScripts,
    settings: ScriptedSettings,
  ) {
    this.#client = client;
    this.#name = name;
    this.#scripts = scripts;
    this.#settings = settings;
  }

  get clientKind(): string {
    return clientKind(this.#client);
  }

  async acquire(
    wait: WaitSettings,
    signal: AbortSignal,
    grant: Grant,
  ): Promise<void> {
    const started = now();
    const deadline = started + wait.timeout;
    // One attempt (timeout 0) does not line up.
    const crowd = wait.timeout > 0
      ? crowdOf(
        this.#client,
        this.#scripts.lineKey,
        this.#scripts.parallel,
        this.#scripts.wakeAll,
      )
      : undefined;
    try {
      const entry = crowd?.join(signal, deadline);
      if (entry && entry.ready !== true && !await entry.ready) {
        throw new LockTimeoutError(
          this.#name,
          now() - started,
          crowd!.remainingTtl(),
        );
      }
      try {
        await this.#contend(wait, signal, grant, started, deadline, crowd);
      } finally {
        if (entry) crowd!.leave(entry.turn);
      }
    } catch (error) {
      // A wait that fails leaves nothing open behind it.
      await unwatched(this.#client);
      throw error;
    }
  }

  async extend(
    token: string,
    ttl: number,
    bounds: CallBounds,
  ): Promise<Renewal> {
    const owner = this.#scripts.readOwner(
      await this.#settle(
        this.#run(this.#scripts.extend(token, ttl)),
        undefined,
        bounds.timeout,
        bounds.background,
      ),
    );
    if (owner === "ours") return RENEWED;
    return { renewed: false, lost: this.#scripts.lost(owner) };
  }

  async release(
    token: string,
    _lease: Lease,
    valid: boolean,
  ): Promise<boolean> {
    try {
      const crowd = existingCrowd(this.#client, this.#scripts.lineKey);
      const offer = valid && crowd ? this.#takeTurn(crowd) : undefined;
      if (offer) {
        const handed = await this.#handOver(token, offer, crowd!);
        if (handed !== undefined) return handed;
      }
      let reply: unknown;
      try {
        reply = await this.#settle(
          this.#run(this.#scripts.release(token, false)),
        );
      } finally {
        // The sleeper whose offer could not be taken up asks once the
        // permit is free (it is the longest sleeper, whom a release wakes).
        if (offer) offer.deliver(null);
        else crowd?.wake();
      }
      return this.#scripts.readOwner(reply) === "ours";
    } finally {
      // Nothing deadbolt opened outlives the call.
      const closing = unwatched(this.#client);
      if (closing) await closing;
    }
  }

  // The longest sleeper's offer, if this release may hand the hold over:
  // after MAX_HANDOVERS in a row while other processes are in line, one
  // release goes through Redis, where a process that has waited is
  // promised the permit (as a lock's turns, rule 5 of `_handover.ts`).
  #takeTurn(crowd: Crowd): CrowdOffer | undefined {
    if (!this.#scripts.transfer) return undefined;
    let turn = turns.get(crowd);
    if (!turn) {
      turns.set(crowd, turn = { handovers: 0, waitingElsewhere: false });
    }
    if (turn.handovers >= MAX_HANDOVERS && turn.waitingElsewhere) {
      turn.handovers = 0;
      turn.waitingElsewhere = false;
      return undefined;
    }
    const offer = crowd.takeOffer();
    if (offer) turn.handovers++;
    return offer;
  }

  // Hands the hold of `token` to `offer`'s sleeper: `true` handed, `false`
  // the hold was gone, `undefined` not handed: release it as usual, then
  // answer the offer.
  async #handOver(
    token: string,
    offer: CrowdOffer,
    crowd: Crowd,
  ): Promise<boolean | undefined> {
    const sent = now();
    let reply: TransferReply;
    try {
      reply = this.#scripts.readTransfer!(
        await this.#settle(this.#run(this.#scripts.transfer!(token, offer))),
      );
    } catch (error) {
      offer.deliver(null);
      throw error;
    }
    if (reply.status === "gone") {
      offer.deliver(null);
      return false;
    }
    // Its own limit reached, or a foreign key: a plain release decides.
    if (reply.status !== "handed") return undefined;
    turns.get(crowd)!.waitingElsewhere = reply.waiting;
    // The sleeper has gone (aborted) meanwhile: its permit is freed.
    if (!offer.deliver({ sent, fence: 0 })) this.#forget(offer.token);
    return true;
  }

  lost(): void {
    // A hold whose lease ended is free, or will be when Redis sees it.
    existingCrowd(this.#client, this.#scripts.lineKey)?.wake();
  }

  // Asks Redis until granted, sleeping between attempts.
  async #contend(
    wait: WaitSettings,
    signal: AbortSignal,
    grant: Grant,
    started: number,
    deadline: number,
    crowd: Crowd | undefined,
  ): Promise<Lease> {
    const { ttl, fencing, limit } = this.#settings;
    const subscribe = this.#client.deadbolt?.subscribe;
    let token = crypto.randomUUID();
    // A sleeper stands ready to be handed a permit, unless it wants a fence
    // (only an acquisition issues one).
    const handable = !!this.#scripts.transfer && !fencing &&
      limit !== undefined;
    const want = (token: string): CrowdWant | undefined =>
      handable ? { token, ttl, limit: limit! } : undefined;
    // For kinds with a line: gives the crowd's place up, once it empties.
    const leave = this.#scripts.leave;
    const seat = crowd?.seat;
    const leaveLine = seat && leave
      ? () => this.#run(leave(seat.id)).then(noop, noop)
      : undefined;
    // Whether the hold was busy at an attempt: a grant then is a handover.
    let refused = false;
    for (let attempt = 0;; attempt++) {
      const sent = now();
      const place = seat
        ? { seat: seat.id, ms: placeFor(wait, attempt) }
        : undefined;
      // Wake-ups that come during the attempt cut the next sleep short.
      const seen = crowd?.wakes ?? 0;
      const call = this.#run(this.#scripts.acquire(token, place));
      let reply: GrantReply;
      try {
        reply = this.#scripts.readGrant(await this.#settle(call, signal));
      } catch (error) {
        // The hold may have been granted before the failure, or may be
        // after an abandoned call: free it (by token) once the call settled.
        const forget = () => this.#forget(token);
        call.then(forget, forget);
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
        this.#forget(token);
        token = crypto.randomUUID();
      } else if (reply.status !== "busy") {
        throw foreignKeyError(
          `Cannot acquire ${this.#scripts.kind} ${JSON.stringify(this.#name)}`,
          this.#scripts.keys,
          reply.status,
        );
      }
      const freeIn = reply.status === "busy" ? reply.freeIn : undefined;
      const left = deadline - now();
      if (left <= 0) {
        if (freeIn === undefined) {
          throw new DOMException(
            `Cannot acquire ${this.#scripts.kind} ${
              JSON.stringify(this.#name)
            } as Redis answered too slowly to leave any of the ${ttl} ms lease`,
            "TimeoutError",
          );
        }
        throw new LockTimeoutError(this.#name, now() - started, freeIn);
      }
      let pause = backoff(attempt, wait.retryDelay, wait.maxRetryDelay);
      if (freeIn !== undefined) {
        if (freeIn >= 0) pause = Math.min(pause, Math.max(1, freeIn));
        if (crowd) {
          crowd.noteRemaining(freeIn);
          if (subscribe) crowd.watch(subscribe, this.#scripts.channel);
        }
      }
      pause = Math.min(pause, left);
      if (!crowd) {
        await delay(pause, signal);
        continue;
      }
      const handed = await crowd.sleep(pause, signal, seen, want(token));
      if (!handed) continue;
      if (Lease.fresh(handed.sent, ttl)) {
        return grant(token, handed.sent, undefined, "local");
      }
      // Handed too late to leave any validity: free it, retry afresh.
      this.#forget(token);
      token = crypto.randomUUID();
    }
  }

  #run({ script, keys, args }: ScriptCall): Promise<unknown> {
    return runScript(this.#client, script, keys, args);
  }

  #forget(token: string): void {
    this.#run(this.#scripts.release(token, true)).then(noop, noop);
  }

  #settle(
    call: Promise<unknown>,
    signal?: AbortSignal,
    timeout: number = this.#settings.commandTimeout,
    background = false,
  ): Promise<unknown> {
    return boundedCall(
      call,
      this.#scripts.kind,
      this.#name,
      timeout,
      signal,
      background,
    );
  }
}
