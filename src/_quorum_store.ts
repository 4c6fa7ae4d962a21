import type { ScriptClient } from "./client.ts";
import { backoff } from "./backoff.ts";
import { LockKeyError, LockQuorumError, LockTimeoutError } from "./errors.ts";
import { Lease, type Renewal, RENEWED } from "./_lease.ts";
import type { CallBounds, Grant, Store } from "./_store.ts";
import { round, type Tally } from "./_quorum.ts";
import { runScript } from "./_run_script.ts";
import {
  ACQUIRE,
  type AcquireReply,
  EXTEND,
  type Owner,
  readAcquire,
  readOwner,
  RELEASE,
} from "./scripts.ts";
import { delay, now } from "./_timers.ts";
import type { LockSettings, WaitSettings } from "./options.ts";
import { clientKind } from "./_client_kind.ts";
import type { StopSignal } from "./_stop.ts";

const noop = (): void => {};
const isGranted = (reply: AcquireReply) => reply.status === "granted";
const isOurs = (owner: Owner) => owner === "ours";

/**
 * A `Redlock`'s Redis side: a quorum (⌊N/2⌋ + 1) of independent masters.
 * Every call goes to all of them at once, and a round of calls is decided
 * as soon as a quorum agrees or too few servers are left to.
 */
export class QuorumStore implements Store {
  /** How many servers must grant or renew the lock. */
  readonly quorum: number;
  #clients: ScriptClient[];
  #name: string;
  #key: string;
  #settings: Pick<LockSettings, "ttl" | "commandTimeout">;

  /** The store of the lock `name`, whose key is `key` on every server. */
  constructor(
    clients: ScriptClient[],
    name: string,
    key: string,
    settings: Pick<LockSettings, "ttl" | "commandTimeout">,
  ) {
    this.#clients = clients;
    this.quorum = Math.floor(clients.length / 2) + 1;
    this.#name = name;
    this.#key = key;
    this.#settings = settings;
  }

  // The masters' clients are usually of one kind: the first one's.
  get clientKind(): string {
    return clientKind(this.#clients[0]);
  }

  get ordered(): boolean {
    return this.#clients.every((client) => client.deadbolt?.ordered === true);
  }

  async acquire(
    wait: WaitSettings,
    signal: StopSignal,
    grant: Grant,
  ): Promise<void> {
    const { ttl } = this.#settings;
    const servers = this.#clients.length;
    const started = now();
    const deadline = started + wait.timeout;
    // Whether another owner held it at an attempt: a grant then is a handover.
    let refused = false;
    for (let attempt = 0;; attempt++) {
      // A new token per attempt: a late delete of the last attempt's keys
      // must not hit this one's.
      const token = crypto.randomUUID();
      const sent = now();
      const calls = this.#clients.map((client) =>
        runScript(client, ACQUIRE, [this.#key], [token, String(ttl), "0"])
      );
      let tally: Tally<AcquireReply>;
      try {
        tally = await this.#round(calls, {
          parse: (reply, server) => this.#readGrant(reply, server),
          success: isGranted,
          signal,
        });
      } catch (error) {
        this.#forget(token, calls);
        throw error;
      }
      if (tally.count(isGranted) >= this.quorum && Lease.fresh(sent, ttl)) {
        this.#deleteLateGrants(
          grant(token, sent, undefined, refused ? "remote" : undefined),
          token,
          calls,
          tally,
        );
        return;
      }
      // Awaited (within commandTimeout) so the next attempt meets a clean slate.
      await this.#round(this.#forget(token, calls, tally), {
        parse: readOwner,
        success: isOurs,
        signal,
        enough: () => false,
      });
      const { errors } = tally;
      if (errors.length > servers - this.quorum) {
        throw this.#quorumError("acquire", errors);
      }
      // With few enough failures, a quorum was out of reach because other
      // owners held the key on some servers (or a grant came too late).
      const held = tally.replies.flatMap((reply) =>
        reply?.status === "held" ? [reply.pttl] : []
      );
      if (held.length > 0) refused = true;
      const left = deadline - now();
      if (left <= 0) {
        if (held.length > 0) {
          throw new LockTimeoutError(
            this.#name,
            now() - started,
            shortestLease(held),
          );
        }
        throw new DOMException(
          `Cannot acquire lock ${
            JSON.stringify(this.#name)
          } as its servers answered too slowly to leave any of the ${ttl} ms lease`,
          "TimeoutError",
        );
      }
      let pause = backoff(attempt, wait.retryDelay, wait.maxRetryDelay);
      const expiry = shortestLease(held);
      if (expiry >= 0) pause = Math.min(pause, expiry);
      await delay(Math.min(pause, left), signal);
    }
  }

  /**
   * Renews the hold on every server; lost when too many servers no longer
   * hold it for a quorum to be possible. Rejects with a
   * {@linkcode LockQuorumError} when failed servers left it undecided.
   */
  async extend(
    token: string,
    ttl: number,
    bounds: CallBounds,
  ): Promise<Renewal> {
    const tally = await this.#round(
      this.#clients.map((client) =>
        runScript(client, EXTEND, [this.#key], [token, String(ttl)])
      ),
      { parse: readOwner, success: isOurs, ...bounds },
    );
    if (tally.count(isOurs) >= this.quorum) return RENEWED;
    const servers = this.#clients.length;
    const gone = tally.count((owner) => owner === "gone");
    const taken = tally.count((owner) => owner === "taken");
    if (gone + taken > servers - this.quorum) {
      return {
        renewed: false,
        lost: `${
          gone + taken
        } of its ${servers} servers no longer hold its key (${gone} expired or deleted, ${taken} held by another owner), so no quorum of ${this.quorum} can renew it`,
      };
    }
    throw this.#quorumError("extend", tally.errors);
  }

  /**
   * Deletes the hold on every server. A minority of failed servers is no
   * error: their copies expire with the lease.
   */
  async release(token: string): Promise<boolean> {
    const tally = await this.#round(
      this.#clients.map((client) =>
        runScript(client, RELEASE, [this.#key], [token])
      ),
      { parse: readOwner, success: isOurs },
    );
    if (tally.count(isOurs) >= this.quorum) return true;
    const { errors } = tally;
    if (errors.length > this.#clients.length - this.quorum) {
      throw this.#quorumError("release", errors);
    }
    return false;
  }

  #readGrant(reply: unknown, server: number): AcquireReply {
    const read = readAcquire(reply);
    if (read.status === "wrong type") {
      throw new LockKeyError(
        this.#key,
        `Cannot acquire lock ${
          JSON.stringify(this.#name)
        } as its key '${this.#key}' on the server of clients[${server}] holds a value of another type; deadbolt leaves it alone`,
      );
    }
    return read;
  }

  /**
   * Deletes, by token, what an attempt may have set: on each server that
   * did not turn it away, once its call has settled (a late SET must not
   * outlive its delete). Returns the deletes on the servers that granted
   * it, worth waiting for; the others run in the background.
   */
  #forget(
    token: string,
    calls: Promise<unknown>[],
    tally?: Tally<AcquireReply>,
  ): Promise<unknown>[] {
    return calls.flatMap((call, i) => {
      const status = tally?.replies[i]?.status;
      if (status === "held") return [];
      const remove = () =>
        runScript(this.#clients[i], RELEASE, [this.#key], [token]);
      const deleted = call.then(remove, remove);
      deleted.then(noop, noop);
      return status === "granted" ? [deleted] : [];
    });
  }

  // A server that answers after the grant holds our key too: release() and
  // renewals reach it, but if the lease has ended by then, delete it.
  #deleteLateGrants(
    lease: Lease,
    token: string,
    calls: Promise<unknown>[],
    tally: Tally<AcquireReply>,
  ): void {
    calls.forEach((call, i) => {
      if (!tally.isPending(i)) return;
      const late = () => {
        if (!lease.isActive()) {
          runScript(this.#clients[i], RELEASE, [this.#key], [token])
            .then(noop, noop);
        }
      };
      call.then(late, late);
    });
  }

  /**
   * One round of calls, bounded by `commandTimeout`; unless told `enough`,
   * it stops waiting once a quorum replied with `success` or too few
   * servers are left to, so a silent server delays only a round that needs
   * its answer.
   */
  #round<R>(
    calls: Promise<unknown>[],
    options: {
      parse: (reply: unknown, server: number) => R;
      success: (reply: R) => boolean;
      enough?: (tally: Tally<R>) => boolean;
      signal?: StopSignal;
    } & Partial<CallBounds>,
  ): Promise<Tally<R>> {
    const { success, timeout = this.#settings.commandTimeout } = options;
    return round(calls, {
      enough: (tally) =>
        tally.count(success) >= this.quorum ||
        tally.count(success) + tally.pending < this.quorum,
      ...options,
      timeout,
      onTimeout: (server) =>
        new DOMException(
          `The Redis server of clients[${server}] did not answer within ${
            Math.round(timeout)
          } ms (lock '${this.#name}')`,
          "TimeoutError",
        ),
    });
  }

  #quorumError(
    operation: "acquire" | "extend" | "release",
    errors: unknown[],
  ): LockQuorumError {
    const servers = this.#clients.length;
    return new LockQuorumError(
      this.#name,
      operation,
      servers - errors.length,
      servers,
      this.quorum,
      {
        cause: new AggregateError(
          errors,
          `${errors.length} of ${servers} Redis servers failed`,
        ),
      },
    );
  }
}

/** The shortest remaining lease among `leases` (ms), ignoring keys without expiry; -1 when none. */
function shortestLease(leases: number[]): number {
  const expiring = leases.filter((ms) => ms >= 0);
  return expiring.length > 0 ? Math.min(...expiring) : -1;
}
