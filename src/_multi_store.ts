import type { ScriptClient } from "./client.ts";
import { backoff } from "./backoff.ts";
import { LockKeyError, LockTimeoutError } from "./errors.ts";
import { keySlot, type LockKeys } from "./keys.ts";
import { Lease, type Renewal, RENEWED } from "./_lease.ts";
import {
  boundedCall,
  type CallBounds,
  type Grant,
  type Store,
} from "./_store.ts";
import { existingQueue } from "./_queue.ts";
import { type Waiting, waitInLine } from "./_waiting.ts";
import { unwatched } from "./_wakeups.ts";
import { runScript } from "./_run_script.ts";
import {
  ACQUIRE_ALL,
  type AllReply,
  EXTEND_ALL,
  readAll,
  readAllOwner,
  RELEASE_ALL,
} from "./_multi_scripts.ts";
import { delay, now } from "./_timers.ts";
import { PATIENCE_MS } from "./_seat.ts";
import type { MultiLockSettings, WaitSettings } from "./options.ts";
import { clientKind } from "./_client_kind.ts";
import type { StopSignal } from "./_stop.ts";

const noop = (): void => {};

/** The keys one script call covers: one hash slot's (on one server, all). */
interface Group {
  readonly keys: string[];
  readonly channels: string[];
  /** The keys' lines of waiting processes, and when their seats lapse. */
  readonly lines: string[];
}

/**
 * A `MultiLock`'s Redis side: the keys of several locks under one token.
 * Each attempt takes the groups in a global order (by slot, then by key),
 * each group in one script that takes all its keys or none; when a group is
 * busy, the groups taken so far are given back before the wait, so no
 * caller holds some keys while it waits for others: no deadlock between
 * callers asking for overlapping sets in any order.
 */
export class MultiStore implements Store {
  readonly #client: ScriptClient;
  readonly #label: string;
  readonly #lineKey: string;
  readonly #groups: Group[];
  readonly #locks: LockKeys[];
  readonly #settings: MultiLockSettings;

  /** The store of the locks `locks` (sorted by key, no duplicates). */
  constructor(
    client: ScriptClient,
    label: string,
    locks: LockKeys[],
    settings: MultiLockSettings,
  ) {
    this.#client = client;
    this.#label = label;
    this.#locks = locks;
    this.#settings = settings;
    this.#lineKey = `multi\u0000${
      locks.map(({ lock }) => lock).join("\u0000")
    }`;
    this.#groups = groupBySlot(locks, client.deadbolt?.cluster === true);
  }

  get clientKind(): string {
    return clientKind(this.#client);
  }

  get ordered(): boolean {
    return this.#client.deadbolt?.ordered === true;
  }

  acquire(
    wait: WaitSettings,
    signal: StopSignal,
    grant: Grant,
  ): Promise<void> {
    return waitInLine(
      this.#client,
      this.#label,
      this.#lineKey,
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
    const owners = await Promise.all(
      this.#groups.map(async ({ keys }) =>
        readAllOwner(
          await this.#settle(
            runScript(this.#client, EXTEND_ALL, keys, [token, String(ttl)]),
            undefined,
            bounds.timeout,
            bounds.background,
          ),
        )
      ),
    );
    if (owners.every((owner) => owner === "ours")) return RENEWED;
    return {
      renewed: false,
      lost: owners.includes("taken")
        ? "another owner holds a key of its set"
        : "a key of its set expired or was deleted",
    };
  }

  async release(token: string): Promise<boolean> {
    try {
      const owners = await Promise.all(
        this.#groups.map(async (group) =>
          readAllOwner(await this.#settle(this.#releaseGroup(group, token)))
        ),
      );
      // Waiters of this process, for the set or for one of its locks.
      existingQueue(this.#client, this.#lineKey)?.wake();
      for (const { lock } of this.#locks) {
        existingQueue(this.#client, lock)?.wake();
      }
      return owners.every((owner) => owner === "ours");
    } finally {
      const closing = unwatched(this.#client);
      if (closing) await closing;
    }
  }

  lost(): void {
    existingQueue(this.#client, this.#lineKey)?.wake();
  }

  // Attempts until every group is taken within one attempt.
  async #contend(
    { wait, signal, grant, queue, started, deadline }: Waiting,
  ): Promise<Lease> {
    const { ttl } = this.#settings;
    const subscribe = this.#client.deadbolt?.subscribe;
    // Whether a name was held at an attempt: a grant then is a handover.
    let refused = false;
    for (let attempt = 0;; attempt++) {
      const token = crypto.randomUUID();
      let firstSent = 0;
      let busy: { pttl: number; channel: string } | undefined;
      for (let i = 0; i < this.#groups.length && !busy; i++) {
        const group = this.#groups[i];
        const sent = now();
        const call = runScript(
          this.#client,
          ACQUIRE_ALL,
          [...group.keys, ...group.lines],
          [token, String(ttl), String(PATIENCE_MS)],
        );
        let reply: AllReply;
        try {
          reply = readAll(await this.#settle(call, signal));
        } catch (error) {
          // The groups taken before this one (on a cluster, other masters)
          // are given back now; this one once its call has settled, since
          // its script may still run.
          for (const taken of this.#groups.slice(0, i)) {
            this.#releaseGroup(taken, token).then(noop, noop);
          }
          const forget = () =>
            this.#releaseGroup(group, token).then(noop, noop);
          call.then(forget, forget);
          throw error;
        }
        if (i === 0) firstSent = sent;
        if (reply.status === "held") {
          refused = true;
          busy = { pttl: reply.pttl, channel: group.channels[reply.index] };
        } else if (reply.status === "wrong type") {
          // This group took nothing; the groups taken before it (on a
          // cluster, other masters) are given back before the error, as
          // when busy (awaited, within commandTimeout).
          await this.#giveBack(token, this.#groups.slice(0, i));
          const key = group.keys[reply.index];
          throw new LockKeyError(
            key,
            `Cannot acquire the locks ${this.#label} as the key '${key}' holds a value of another type; deadbolt leaves it alone`,
          );
        }
      }
      if (!busy) {
        // Valid from the first group's send time: its keys expire first.
        if (Lease.fresh(firstSent, ttl)) {
          return grant(
            token,
            firstSent,
            undefined,
            refused ? "remote" : undefined,
          );
        }
        // Too late to leave any validity: give it back, and wait as if
        // turned away (within the deadline, as a lock does).
        this.#forget(token);
        const left = deadline - now();
        if (left <= 0) {
          throw new DOMException(
            `Cannot acquire the locks ${this.#label} as Redis answered too slowly to leave any of the ${ttl} ms lease`,
            "TimeoutError",
          );
        }
        const pause = backoff(attempt, wait.retryDelay, wait.maxRetryDelay);
        if (queue) await queue.sleep(Math.min(pause, left), signal);
        else await delay(Math.min(pause, left), signal);
        continue;
      }
      // Hold nothing while waiting: give back the groups taken (awaited,
      // within commandTimeout, so that a failed attempt leaves no key).
      if (this.#groups.length > 1) await this.#giveBack(token);
      const left = deadline - now();
      if (left <= 0) {
        throw new LockTimeoutError(this.#label, now() - started, busy.pttl);
      }
      let pause = backoff(attempt, wait.retryDelay, wait.maxRetryDelay);
      if (busy.pttl >= 0) pause = Math.min(pause, Math.max(1, busy.pttl));
      if (queue) {
        queue.noteRemaining(busy.pttl);
        if (subscribe) queue.watch(subscribe, busy.channel);
      }
      pause = Math.min(pause, left);
      if (queue) await queue.sleep(pause, signal);
      else await delay(pause, signal);
    }
  }

  #releaseGroup({ keys, channels }: Group, token: string): Promise<unknown> {
    return runScript(this.#client, RELEASE_ALL, [...keys, ...channels], [
      token,
    ]);
  }

  async #giveBack(token: string, groups = this.#groups): Promise<void> {
    await Promise.all(
      groups.map((group) =>
        this.#settle(this.#releaseGroup(group, token)).catch(noop)
      ),
    );
  }

  #forget(token: string): void {
    for (const group of this.#groups) {
      this.#releaseGroup(group, token).then(noop, noop);
    }
  }

  #settle(
    call: Promise<unknown>,
    signal?: StopSignal,
    timeout: number = this.#settings.commandTimeout,
    background = false,
  ): Promise<unknown> {
    return boundedCall(call, "locks", this.#label, timeout, signal, background);
  }
}

// One group per hash slot on a cluster, taken by slot; else one group.
function groupBySlot(locks: LockKeys[], cluster: boolean): Group[] {
  const bySlot = new Map<number, { locks: LockKeys[] }>();
  for (const keys of locks) {
    const slot = cluster ? keySlot(keys.lock) : 0;
    let group = bySlot.get(slot);
    if (!group) bySlot.set(slot, group = { locks: [] });
    group.locks.push(keys);
  }
  return [...bySlot.entries()].sort(([a], [b]) => a - b).map((
    [, { locks }],
  ) => ({
    keys: locks.map((k) => k.lock),
    channels: locks.map((k) => k.released),
    lines: [...locks.map((k) => k.line), ...locks.map((k) => k.seats)],
  }));
}
