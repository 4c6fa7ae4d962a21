import type { ScriptClient } from "./client.ts";
import { LockTimeoutError } from "./errors.ts";
import { Lease, type Renewal, RENEWED } from "./_lease.ts";
import {
  boundedCall,
  type CallBounds,
  type Grant,
  type Store,
} from "./_store.ts";
import {
  type Crowd,
  crowdOf,
  type CrowdOffer,
  existingCrowd,
} from "./_crowd.ts";
import type { TransferReply } from "./_permit_scripts.ts";
import { MAX_HANDOVERS } from "./_handover.ts";
import { unwatched } from "./_wakeups.ts";
import { runScript } from "./_run_script.ts";
import { now } from "./_timers.ts";
import type { WaitSettings } from "./options.ts";
import { clientKind } from "./_client_kind.ts";
import { contendInCrowd, termsOf } from "./_crowd_contend.ts";
import type {
  HoldScripts,
  ScriptCall,
  ScriptedSettings,
} from "./_hold_scripts.ts";
import type { StopSignal } from "./_stop.ts";

/**
 * The Redis side of holds made of a few scripts on one client (a
 * semaphore's permits, a read-write lock's holds). Waiters of one process
 * line up in a {@linkcode Crowd}, up to `parallel` of them asking Redis at
 * once; a release in this process wakes the ones that sleep, and a release
 * elsewhere wakes them by pub/sub where the client can subscribe.
 */
export class ScriptedStore implements Store {
  /** The client, as adapted. */
  readonly client: ScriptClient;
  /** The name of the semaphore or read-write lock. */
  readonly name: string;
  /** What the kind of hold does in Redis. */
  readonly scripts: HoldScripts;
  /** The validated settings. */
  readonly settings: ScriptedSettings;

  /** The store of `name`'s holds of one kind. */
  constructor(
    client: ScriptClient,
    name: string,
    scripts: HoldScripts,
    settings: ScriptedSettings,
  ) {
    this.client = client;
    this.name = name;
    this.scripts = scripts;
    this.settings = settings;
  }

  get clientKind(): string {
    return clientKind(this.client);
  }

  get ordered(): boolean {
    return this.client.deadbolt?.ordered === true;
  }

  async acquire(
    wait: WaitSettings,
    signal: StopSignal,
    granted: Grant,
  ): Promise<void> {
    // Every hold granted is the crowd's until released or lost.
    const grant: Grant = (...args) => this.#crowd().hold(granted(...args));
    const started = now();
    const deadline = started + wait.timeout;
    // One attempt (timeout 0) does not line up.
    const crowd = wait.timeout > 0 ? this.#crowd() : undefined;
    const terms = termsOf(this);
    // One token for the whole wait, as handed over or asked with: a
    // handover whose answer was lost is then found the waiter's own.
    let token = crypto.randomUUID();
    try {
      for (;;) {
        const entry = crowd?.join(
          signal,
          deadline,
          terms && { token, ...terms },
        );
        if (entry && entry.ready !== true) {
          const ready = await entry.ready;
          if (ready === false) {
            throw new LockTimeoutError(
              this.name,
              now() - started,
              crowd!.remainingTtl(),
            );
          }
          // Handed a hold behind the head by a release in this process.
          if (ready !== true) {
            if (Lease.fresh(ready.sent, this.settings.ttl)) {
              grant(token, ready.sent, undefined, "local");
              return;
            }
            // Too late to leave any validity: free it, and line up again
            // with a new token (the line was left with the handover).
            this.forget(token);
            token = crypto.randomUUID();
            continue;
          }
        }
        try {
          await contendInCrowd(
            this,
            token,
            wait,
            signal,
            grant,
            started,
            deadline,
            crowd,
          );
          return;
        } finally {
          if (entry) crowd!.leave(entry.turn);
        }
      }
    } catch (error) {
      // A wait that fails leaves nothing open behind it.
      await unwatched(this.client);
      throw error;
    }
  }

  async extend(
    token: string,
    ttl: number,
    bounds: CallBounds,
  ): Promise<Renewal> {
    const owner = this.scripts.readOwner(
      await this.settle(
        this.run(this.scripts.extend(token, ttl)),
        undefined,
        bounds.timeout,
        bounds.background,
      ),
    );
    if (owner === "ours") return RENEWED;
    return { renewed: false, lost: this.scripts.lost(owner) };
  }

  /**
   * How many holds of this kind and name this process has on this client
   * now: a waiter refused meanwhile can wait for one of them to be handed
   * over, or released.
   */
  heldHere(): number {
    return existingCrowd(this.client, this.scripts.lineKey)?.holding ?? 0;
  }

  // The crowd of this kind and name on this client, made if need be.
  #crowd(): Crowd {
    return crowdOf(
      this.client,
      this.scripts.lineKey,
      this.scripts.parallel,
      this.scripts.wakeAll,
    );
  }

  async release(
    token: string,
    lease: Lease,
    valid: boolean,
  ): Promise<boolean> {
    const crowd = existingCrowd(this.client, this.scripts.lineKey);
    crowd?.ended(lease);
    try {
      const offer = valid && crowd ? this.#takeTurn(crowd) : undefined;
      if (offer) {
        const handed = await this.#handOver(token, offer, crowd!);
        if (handed !== undefined) return handed;
      }
      let reply: unknown;
      try {
        reply = await this.settle(
          this.run(this.scripts.release(token)),
        );
      } finally {
        if (crowd) {
          crowd.turns.passing = false;
          // A sleeper whose offer could not be taken up asks once the
          // permit is free; otherwise the longest sleeper does.
          if (!offer?.deliver(null)) crowd.wake();
        }
        this.wakeOtherKind();
      }
      return this.scripts.readOwner(reply) === "ours";
    } finally {
      // Nothing deadbolt opened outlives the call.
      const closing = unwatched(this.client);
      if (closing) await closing;
    }
  }

  // The longest sleeper's offer, if this release may hand the hold over:
  // after MAX_HANDOVERS in a row while other processes are in line, one
  // release goes through Redis, where a process that has waited is
  // promised the permit (as a lock's turns, rule 5 of `_handover.ts`).
  #takeTurn(crowd: Crowd): CrowdOffer | undefined {
    if (!this.scripts.transfer) return undefined;
    const turn = crowd.turns;
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
    const call = this.run(this.scripts.transfer!(token, offer));
    let reply: TransferReply;
    try {
      reply = this.scripts.readTransfer!(await this.settle(call));
    } catch (error) {
      if (!offer.deliver(null)) {
        crowd.wake();
        // The script may have run, or may run yet: a waiter that has gone
        // would hold the permit with nobody to release it.
        const forget = () => this.forget(offer.token);
        call.then(forget, forget);
      }
      throw error;
    }
    if (reply.status === "gone") {
      if (!offer.deliver(null)) crowd.wake();
      return false;
    }
    // Its own limit reached, or a foreign key: a plain release decides.
    if (reply.status !== "handed") return undefined;
    crowd.turns.waitingElsewhere = reply.waiting;
    crowd.turns.passing = true;
    // The waiter has gone (aborted) meanwhile: its permit is freed, and
    // then another waiter woken.
    if (!offer.deliver({ sent, fence: 0 })) this.forget(offer.token);
    return true;
  }

  lost(lease: Lease): void {
    this.wakeOtherKind();
    const crowd = existingCrowd(this.client, this.scripts.lineKey);
    if (!crowd) return;
    crowd.ended(lease);
    crowd.turns.passing = false;
    // A hold whose lease ended is free, or will be when Redis sees it.
    crowd.wake();
  }

  /**
   * Wakes the waiters of the other kind of hold in this process (readers
   * for a writer's release, and back): on a client that cannot subscribe
   * they would sleep out their backoff, as a lock's would not.
   */
  wakeOtherKind(): void {
    const other = this.scripts.alsoWakes;
    if (other !== undefined) existingCrowd(this.client, other)?.wake();
  }

  /** Runs one script call. */
  run({ script, keys, args }: ScriptCall): Promise<unknown> {
    return runScript(this.client, script, keys, args);
  }

  /**
   * Frees the hold of `token`, in the background: a grant nobody took (its
   * waiter gave up, its call was abandoned, it came too late). Freeing it
   * wakes waiters as a release does, by its message elsewhere and through
   * the crowd here, or they would sleep out their backoff beside a free hold.
   */
  forget(token: string): void {
    const wake = () => {
      existingCrowd(this.client, this.scripts.lineKey)?.wake();
      this.wakeOtherKind();
    };
    this.run(this.scripts.release(token)).then(wake, wake);
  }

  /** Bounds `call` by `timeout`, `commandTimeout` by default (see `boundedCall`). */
  settle(
    call: Promise<unknown>,
    signal?: StopSignal,
    timeout: number = this.settings.commandTimeout,
    background = false,
  ): Promise<unknown> {
    return boundedCall(
      call,
      this.scripts.kind,
      this.name,
      timeout,
      signal,
      background,
    );
  }
}
