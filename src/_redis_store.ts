import type { ScriptClient } from "./client.ts";
import type { LockKeys } from "./keys.ts";
import { Lease, type Renewal, RENEWED } from "./_lease.ts";
import {
  boundedCall,
  type CallBounds,
  type Grant,
  type Store,
} from "./_store.ts";
import { existingQueue } from "./_queue.ts";
import { waitInLine } from "./_waiting.ts";
import { releaseHold } from "./_handover.ts";
import { sendHandovers } from "./_handover_run.ts";
import { contend } from "./_contend.ts";
import { unwatched } from "./_wakeups.ts";
import { runScript } from "./_run_script.ts";
import {
  ADOPT,
  EXTEND,
  type Owner,
  readAdopt,
  readOwner,
  RELEASE,
} from "./scripts.ts";
import { now } from "./_timers.ts";
import type { LockSettings, WaitSettings } from "./options.ts";
import { clientKind } from "./_client_kind.ts";
import type { StopSignal } from "./_stop.ts";

const noop = (): void => {};

/** Why a hold is lost, by who held its key when deadbolt looked. */
const LOST_BECAUSE: Record<Exclude<Owner, "ours">, string> = {
  gone: "its key expired or was deleted",
  taken: "another owner holds its key",
};

/**
 * A `Lock`'s Redis side: one client (a server, or a cluster through a
 * cluster client) and the scripts of `scripts.ts`. Waiters of one process
 * line up in a `LocalQueue` (`_queue.ts`) and pass the lock on by the handover
 * protocol of `_handover.ts`.
 */
export class RedisStore implements Store {
  /** The client, as adapted. */
  readonly client: ScriptClient;
  /** The lock's keys. */
  readonly keys: LockKeys;
  /** The lock's name. */
  readonly name: string;
  /** The lock's validated settings. */
  readonly settings: LockSettings;

  /** The store of the lock `name`; validated settings. */
  constructor(
    client: ScriptClient,
    name: string,
    keys: LockKeys,
    settings: LockSettings,
  ) {
    this.client = client;
    this.name = name;
    this.keys = keys;
    this.settings = settings;
  }

  get clientKind(): string {
    return clientKind(this.client);
  }

  get ordered(): boolean {
    return this.client.deadbolt?.ordered === true;
  }

  acquire(
    wait: WaitSettings,
    signal: StopSignal,
    grant: Grant,
  ): Promise<void> {
    // Until released or lost, a new head waits to be handed the lock.
    return waitInLine(
      this.client,
      this.name,
      this.keys.lock,
      wait,
      signal,
      grant,
      true,
      (waiting) => contend(this, waiting),
    );
  }

  async extend(
    token: string,
    ttl: number,
    bounds: CallBounds,
  ): Promise<Renewal> {
    sendHandovers(this);
    const call = runScript(this.client, EXTEND, [this.keys.lock], [
      token,
      String(ttl),
    ]);
    const owner = readOwner(
      await this.settle(call, undefined, bounds.timeout, bounds.background),
    );
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
    signal: StopSignal,
    grant: Grant,
  ): Promise<boolean> {
    const { ttl, fencing } = this.settings;
    sendHandovers(this);
    const sent = now();
    const call = runScript(this.client, ADOPT, [
      this.keys.lock,
      this.keys.fence,
    ], [
      token,
      String(ttl),
    ]);
    const reply = readAdopt(await this.settle(call, signal));
    // Too late to leave any validity: the hold stays as it was, to expire.
    if (reply.status !== "ours" || !Lease.fresh(sent, ttl)) return false;
    grant(token, sent, fencing ? reply.fence : undefined);
    return true;
  }

  lost(lease: Lease): void {
    sendHandovers(this);
    existingQueue(this.client, this.keys.lock)?.lost(lease);
  }

  reveal(): void {
    sendHandovers(this);
  }

  /**
   * Deletes the key if it holds `token`, in the background: a grant nobody
   * took (its waiter gave up, its call was abandoned, it came too late).
   * Freeing it wakes waiters as a release does, by its message elsewhere and
   * directly here, or they would sleep out their backoff beside a free lock.
   */
  forget(token: string): void {
    sendHandovers(this);
    const { lock, released, line, seats } = this.keys;
    runScript(this.client, RELEASE, [lock, released, line, seats], [token])
      .then((reply) => {
        if (readOwner(reply) === "ours") {
          existingQueue(this.client, lock)?.wake();
        }
      })
      .catch(noop);
  }

  /** Bounds `call` by `timeout`, `commandTimeout` by default (see `boundedCall`). */
  settle(
    call: Promise<unknown>,
    signal?: StopSignal,
    timeout: number = this.settings.commandTimeout,
    background = false,
  ): Promise<unknown> {
    return boundedCall(call, "lock", this.name, timeout, signal, background);
  }
}
