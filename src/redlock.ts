import {
  type RedisClient,
  type ScriptClient,
  toScriptClient,
} from "./client.ts";
import { backoff } from "./backoff.ts";
import {
  LockKeyError,
  LockLostError,
  LockQuorumError,
  LockTimeoutError,
} from "./errors.ts";
import { lockKeys } from "./keys.ts";
import { ACQUIRE, EXTEND, RELEASE, runScript, toIntegers } from "./scripts.ts";
import { delay, now } from "./_timers.ts";
import { Lease } from "./_lease.ts";
import { round, type Tally } from "./_quorum.ts";
import {
  checkBoolean,
  checkInteger,
  checkName,
  checkOptionKeys,
  MAX_TIMER_MS,
} from "./_validate.ts";
import {
  ACQUIRE_KEYS,
  type AcquireOptions,
  acquireSettings,
  LOCK_KEYS,
  type LockOptions,
  lockSettings,
  MIN_TTL,
  type WaitSettings,
} from "./options.ts";

/** Options of a {@linkcode Redlock}: those of a `Lock` that apply to independent masters. */
export interface RedlockOptions
  extends Omit<LockOptions, "fencing" | "waitReplicas" | "replicaTimeout"> {
  /**
   * Only `false`: a `Redlock` issues no fencing tokens, and `true` is refused
   * with a `TypeError`. Independent masters keep independent counters, and
   * the largest fence of one quorum need not exceed that of an earlier one,
   * so no fence taken across them is strictly increasing. For fencing
   * tokens, use `Lock` with `fencing: true` on one Redis or a Redis Cluster.
   *
   * @default {false}
   */
  fencing?: false;
}

type RedlockSettings = Required<Omit<RedlockOptions, "fencing">>;

const noop = (): void => {};
// Lock options a Redlock refuses by name, with the reason, rather than as typos.
const NOT_OFFERED = ["waitReplicas", "replicaTimeout"];
const STATIC_ACQUIRE_KEYS = [...ACQUIRE_KEYS, ...LOCK_KEYS];
const STATIC_TRY_KEYS = [...LOCK_KEYS, "signal"];

/**
 * A lock held on a quorum of independent Redis masters, after the Redlock
 * algorithm described in the Redis documentation: one attempt sends the
 * acquire script to every server at once and succeeds when a majority
 * (⌊N/2⌋ + 1) granted it with validity left; otherwise it deletes what it
 * got, by token, on every server and retries after a jittered backoff. It
 * keeps working while a minority of the servers is down or paused, and it
 * has the `Lock` experience: `await using`, a lease renewed (on a quorum)
 * while held, and a `signal` that aborts with {@linkcode LockLostError}
 * before `validUntil` when a quorum can no longer be renewed.
 *
 * Guarantee: no two handles hold one name at once, as long as the servers
 * keep what they acknowledged, their clocks run at about the same rate
 * (drift under 1% of `ttl`), and no holder pauses past its validity. Caveat:
 * a server restarted without persistence forgets the lock, so a second
 * client can then make a quorum with it; keep a restarted server out for at
 * least the longest `ttl` in use (delayed restart), or run it with
 * `appendonly yes` and `appendfsync always`. A `Redlock` issues no fencing
 * tokens (see `fencing`).
 *
 * A round waits for a silent server at most `commandTimeout`, and only when
 * its answer decides the outcome. Set `commandTimeout` well below `ttl`: a
 * client that queues commands while it reconnects (ioredis by default) is
 * silent, not failing, when its server is down.
 *
 * @example Scoped, on five independent masters
 * ```ts ignore
 * import { Redis } from "npm:ioredis";
 * import { Redlock } from "@deadbolt/deadbolt";
 *
 * const masters = [6379, 6380, 6381, 6382, 6383].map((port) => new Redis({ port }));
 * {
 *   await using lock = await Redlock.acquire(masters, "nightly-report", { ttl: 30_000 });
 *   await fetch("https://example.com/report", { method: "POST", signal: lock.signal });
 * } // released on every server here
 * ```
 */
export class Redlock implements AsyncDisposable {
  /** The lock's name, as given. */
  readonly name: string;
  /** The Redis key that holds the owner's token on every server: `<prefix>{<name>}`. */
  readonly key: string;
  /** How many servers must grant or renew the lock: ⌊servers / 2⌋ + 1. */
  readonly quorum: number;

  #clients: ScriptClient[];
  #settings: RedlockSettings;
  #token: string = crypto.randomUUID();
  // The current or last acquisition's lease; ended once released or lost.
  #lease: Lease | undefined;
  // Granted and not yet released: release() must ask the servers.
  #acquired = false;
  #pending: AbortController | undefined;
  #controller = new AbortController();

  /**
   * Creates a lock handle; nothing is sent until `acquire()`.
   *
   * @param clients One client per independent Redis master (an odd number
   * of at least 3 is the point; 1 works), each as it is. Different objects
   * must reach different servers: deadbolt cannot tell two connections to
   * one server apart.
   * @param name The lock's name: 1 to 1024 UTF-8 bytes, any characters.
   * @param options Lease, key prefix and default wait options.
   * @throws {TypeError} when `clients` is not an array of supported clients,
   * the name is not a non-empty well-formed string, an option has the wrong
   * type or is unknown, or `fencing` is `true`.
   * @throws {RangeError} when `clients` is empty or holds one client twice,
   * or a number is out of range.
   */
  constructor(
    clients: readonly RedisClient[],
    name: string,
    options: RedlockOptions = {},
  ) {
    checkOptionKeys("Cannot lock", options, LOCK_KEYS);
    this.name = checkName("Cannot lock", "name", name);
    const action = `Cannot lock ${JSON.stringify(name)}`;
    this.#settings = redlockSettings(action, options);
    this.#clients = checkClients(action, clients);
    this.quorum = Math.floor(this.#clients.length / 2) + 1;
    this.key = lockKeys(this.#settings.prefix, name).lock;
  }

  /**
   * Acquires the lock `name` on a quorum of `clients`, waiting up to
   * `timeout` ms for it.
   *
   * @param clients One client per independent Redis master.
   * @param name The lock's name.
   * @param options Lock and wait options.
   * @returns The held lock; dispose or release it.
   * @throws {LockTimeoutError} when other owners kept a quorum out of reach
   * for the whole wait.
   * @throws {LockQuorumError} at once, when so many servers failed that no
   * quorum was possible.
   * @throws {TypeError} on bad input, before any Redis command.
   * @throws {RangeError} on an out-of-range input, before any Redis command.
   *
   * @example Usage
   * ```ts ignore
   * import { Redlock } from "@deadbolt/deadbolt";
   *
   * await using lock = await Redlock.acquire([a, b, c], "nightly-report", { timeout: 5_000 });
   * ```
   */
  static async acquire(
    clients: readonly RedisClient[],
    name: string,
    options: RedlockOptions & AcquireOptions = {},
  ): Promise<Redlock> {
    checkOptionKeys("Cannot lock", options, STATIC_ACQUIRE_KEYS);
    const { signal, ...lockOptions } = options;
    const lock = new Redlock(clients, name, lockOptions);
    await lock.acquire({ signal });
    return lock;
  }

  /**
   * Makes one attempt to acquire the lock `name` on a quorum of `clients`.
   *
   * @param clients One client per independent Redis master.
   * @param name The lock's name.
   * @param options Lock options, and a `signal` that cancels the attempt.
   * @returns The held lock, or `null` when other owners keep a quorum out of
   * reach, so `await using lock = await Redlock.tryAcquire(…)` works either way.
   * @throws {LockQuorumError} when so many servers failed that no quorum was possible.
   *
   * @example Usage
   * ```ts ignore
   * import { Redlock } from "@deadbolt/deadbolt";
   *
   * await using lock = await Redlock.tryAcquire([a, b, c], "nightly-report");
   * if (!lock) console.log("someone else is on it");
   * ```
   */
  static async tryAcquire(
    clients: readonly RedisClient[],
    name: string,
    options: RedlockOptions & Pick<AcquireOptions, "signal"> = {},
  ): Promise<Redlock | null> {
    checkOptionKeys("Cannot lock", options, STATIC_TRY_KEYS);
    const { signal, ...lockOptions } = options;
    const lock = new Redlock(clients, name, lockOptions);
    return await lock.tryAcquire({ signal }) ? lock : null;
  }

  /** The token that marks this handle's ownership on the servers, from `crypto.randomUUID()`; new for each attempt. */
  get token(): string {
    return this.#token;
  }

  /** Whether this handle owns the lock now: acquired, not released, not lost, and its validity not run out. */
  get held(): boolean {
    return this.#lease?.active ?? false;
  }

  /**
   * Aborts with a {@linkcode LockLostError} when ownership can no longer be
   * guaranteed (a quorum can no longer be renewed in time), before
   * `validUntil` passes. It does not abort on `release()`. A handle acquired
   * again after a loss gets a new signal.
   */
  get signal(): AbortSignal {
    this.#lease?.active; // past its validity, reading it aborts the signal
    return this.#controller.signal;
  }

  /**
   * The monotonic time (`performance.now()` ms) until which ownership is
   * guaranteed: send time of the last attempt or renewal that a quorum
   * granted, plus `ttl`, minus 1% of `ttl` + 2 ms for clock drift. `0`
   * before acquiring.
   */
  get validUntil(): number {
    return this.#lease?.validUntil ?? 0;
  }

  /**
   * Waits up to `timeout` ms for the lock.
   *
   * @param options Wait options; defaults come from the constructor.
   * @returns When the lock is held on a quorum, with validity left.
   * @throws {LockTimeoutError} when other owners kept a quorum out of reach
   * for the whole wait.
   * @throws {LockQuorumError} at once, when so many servers failed that no
   * quorum was possible.
   * @throws {Error} when this handle already holds the lock or is acquiring it.
   * @throws {TypeError} on bad options, before any Redis command.
   * @throws {RangeError} on an out-of-range option, before any Redis command.
   */
  async acquire(options: AcquireOptions = {}): Promise<void> {
    const action = `Cannot acquire lock ${JSON.stringify(this.name)}`;
    const { signal, ...wait } = acquireSettings(
      action,
      options,
      this.#settings,
    );
    if (this.#pending) {
      throw new Error(`${action} as an acquire() of this handle is pending`);
    }
    if (this.held) {
      throw new Error(
        `${action} as this handle holds it already (not reentrant)`,
      );
    }
    signal?.throwIfAborted();
    const cancel = new AbortController();
    this.#pending = cancel;
    try {
      // A lost lease may still sit on some servers under our old token; a
      // failure here leaves it to expire, as it blocks nobody for long.
      if (this.#acquired) await this.#release().catch(noop);
      await this.#contend(
        action,
        wait,
        signal ? AbortSignal.any([signal, cancel.signal]) : cancel.signal,
      );
    } finally {
      this.#pending = undefined;
    }
  }

  /**
   * Makes one attempt to acquire the lock.
   *
   * @param options A `signal` that cancels the attempt.
   * @returns `true` when the lock is now held, `false` when other owners
   * keep a quorum out of reach.
   * @throws {LockQuorumError} when so many servers failed that no quorum was possible.
   */
  async tryAcquire(
    options: Pick<AcquireOptions, "signal"> = {},
  ): Promise<boolean> {
    checkOptionKeys(
      `Cannot acquire lock ${JSON.stringify(this.name)}`,
      options,
      ["signal"],
    );
    try {
      await this.acquire({ signal: options.signal, timeout: 0 });
      return true;
    } catch (error) {
      if (error instanceof LockTimeoutError) return false;
      throw error;
    }
  }

  /**
   * Renews the lease to `ttl` ms from now on every server that still holds
   * this handle's token; it succeeds when a quorum renewed it. It never
   * creates the key again.
   *
   * @param ttl The new lease length in ms; the lock's `ttl` by default.
   * @returns `true` when a quorum renewed it; `false` when ownership was
   * lost (then `signal` has aborted) or the lock was released meanwhile.
   * @throws {LockQuorumError} when too many servers failed to tell; the
   * lease then stands until `validUntil`.
   * @throws {Error} when this handle has not acquired the lock or has released it.
   * @throws {RangeError} when `ttl` is out of range.
   */
  async extend(ttl: number = this.#settings.ttl): Promise<boolean> {
    const action = `Cannot extend lock ${JSON.stringify(this.name)}`;
    checkInteger(action, "ttl", ttl, MIN_TTL, MAX_TIMER_MS);
    if (!this.#acquired) {
      throw new Error(`${action} as this handle does not hold it`);
    }
    if (!this.held) return false;
    const lease = this.#lease!;
    const sent = now();
    const code = await this.#extend(
      lease,
      this.#token,
      ttl,
      this.#settings.commandTimeout,
    );
    if (!lease.active || code !== 1) return false;
    lease.extended(sent, ttl);
    return true;
  }

  /**
   * Stops renewal and deletes the key, on every server, where it still
   * holds this handle's token; it never touches another owner's key. A
   * minority of failed servers does not make it throw: their copies expire
   * with the lease. Calling it again is a no-op; calling it while
   * `acquire()` waits cancels that wait.
   *
   * @returns `true` when a quorum of servers deleted this handle's key (so
   * it was held until now); `false` when the lease had expired, other
   * owners hold the key, or there was nothing to release.
   * @throws {LockQuorumError} when so many servers failed that fewer than a
   * quorum could answer; a later `release()` tries again.
   */
  async release(): Promise<boolean> {
    this.#pending?.abort(
      new DOMException(
        `Lock '${this.name}' was released while acquire() waited`,
        "AbortError",
      ),
    );
    return await this.#release();
  }

  /**
   * Stops renewal and releases the lock if this handle holds it, for
   * `await using`.
   *
   * @returns When released; rejects with {@linkcode LockQuorumError} when
   * too few servers answered.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }

  async #release(): Promise<boolean> {
    if (!this.#acquired) return false;
    this.#acquired = false;
    const lease = this.#lease;
    // A lease past its validity is lost, and says so, even when the loss is
    // first noticed here (say, after a long block of the event loop).
    lease?.active;
    lease?.end();
    const token = this.#token;
    const tally = await this.#round(
      this.#clients.map((client) =>
        runScript(client, RELEASE, [this.key], [token])
      ),
      readCode,
    );
    if (tally.count(1) >= this.quorum) return true;
    const { errors } = tally;
    if (errors.length > this.#clients.length - this.quorum) {
      // Let a later release() try again, unless the handle moved on.
      if (this.#lease === lease) this.#acquired = true;
      throw this.#quorumError("release", errors);
    }
    return false;
  }

  async #contend(
    action: string,
    wait: WaitSettings,
    signal: AbortSignal,
  ): Promise<void> {
    const { ttl } = this.#settings;
    const servers = this.#clients.length;
    const started = now();
    const deadline = started + wait.timeout;
    for (let attempt = 0;; attempt++) {
      // A new token per attempt: a late delete of the last attempt's keys
      // must not hit this one's.
      const token = crypto.randomUUID();
      const sent = now();
      const calls = this.#clients.map((client) =>
        runScript(client, ACQUIRE, [this.key], [token, String(ttl), "0"])
      );
      let tally: Tally;
      try {
        tally = await this.#round(
          calls,
          (reply, server) => this.#readGrant(action, reply, server),
          signal,
        );
      } catch (error) {
        this.#forget(token, calls);
        throw error;
      }
      if (tally.count(1) >= this.quorum && Lease.fresh(sent, ttl)) {
        this.#grant(token, sent, calls, tally);
        return;
      }
      // Awaited (within commandTimeout) so the next attempt meets a clean slate.
      await this.#round(
        this.#forget(token, calls, tally),
        readCode,
        signal,
        undefined,
        false,
        () => false,
      );
      const { errors } = tally;
      if (errors.length > servers - this.quorum) {
        throw this.#quorumError("acquire", errors);
      }
      // With few enough failures, a quorum was out of reach because other
      // owners held the key on some servers (or a grant came too late).
      const held = tally.replies.filter((reply) => reply?.[0] === 0)
        .map((reply) => reply![1]);
      const left = deadline - now();
      if (left <= 0) {
        if (held.length > 0) {
          throw new LockTimeoutError(
            this.name,
            now() - started,
            shortestLease(held),
          );
        }
        throw new DOMException(
          `${action} as its servers answered too slowly to leave any of the ${ttl} ms lease`,
          "TimeoutError",
        );
      }
      let pause = backoff(attempt, wait.retryDelay, wait.maxRetryDelay);
      const expiry = shortestLease(held);
      if (expiry >= 0) pause = Math.min(pause, expiry);
      await delay(Math.min(pause, left), signal);
    }
  }

  #readGrant(action: string, reply: unknown, server: number): number[] {
    const [code, value] = toIntegers(reply, 2);
    if (code === 2) {
      throw new LockKeyError(
        this.key,
        `${action} as its key '${this.key}' on the server of clients[${server}] holds a value of another type; deadbolt leaves it alone`,
      );
    }
    if (code !== 0 && code !== 1) {
      throw new TypeError(`${action} as the acquire script replied ${code}`);
    }
    return [code, value];
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
    tally?: Tally,
  ): Promise<unknown>[] {
    return calls.flatMap((call, i) => {
      const code = tally?.replies[i]?.[0];
      if (code === 0) return [];
      const remove = () =>
        runScript(this.#clients[i], RELEASE, [this.key], [token]);
      const deleted = call.then(remove, remove);
      deleted.then(noop, noop);
      return code === 1 ? [deleted] : [];
    });
  }

  #grant(
    token: string,
    sent: number,
    calls: Promise<unknown>[],
    tally: Tally,
  ): void {
    this.#token = token;
    this.#acquired = true;
    if (this.#controller.signal.aborted) {
      this.#controller = new AbortController();
    }
    const controller = this.#controller;
    const { ttl, autoExtend, retryDelay, maxRetryDelay, commandTimeout } =
      this.#settings;
    const lease: Lease = new Lease(sent, {
      ttl,
      autoExtend,
      retryDelay,
      maxRetryDelay,
      commandTimeout,
      extend: (ttl, timeout) => this.#extend(lease, token, ttl, timeout, true),
      onLost: (message, cause) => {
        controller.abort(
          new LockLostError(
            this.name,
            message,
            cause === undefined ? undefined : { cause },
          ),
        );
      },
    });
    this.#lease = lease;
    // A server that answers after the grant holds our key too: release() and
    // renewals reach it, but if the lease has ended by then, delete it.
    calls.forEach((call, i) => {
      if (!tally.isPending(i)) return;
      const late = () => {
        if (!lease.active) {
          runScript(this.#clients[i], RELEASE, [this.key], [token])
            .then(noop, noop);
        }
      };
      call.then(late, late);
    });
  }

  /**
   * Sends the extend script to every server. Resolves with 1 when a quorum
   * renewed the lease, 0 or -1 when too many servers no longer hold it for a
   * quorum to be possible (the lease is then lost); rejects with a
   * {@linkcode LockQuorumError} when failed servers left it undecided.
   */
  async #extend(
    lease: Lease,
    token: string,
    ttl: number,
    timeout: number,
    background = false,
  ): Promise<number> {
    const tally = await this.#round(
      this.#clients.map((client) =>
        runScript(client, EXTEND, [this.key], [token, String(ttl)])
      ),
      readCode,
      undefined,
      timeout,
      background,
    );
    if (tally.count(1) >= this.quorum) return 1;
    const servers = this.#clients.length;
    const gone = tally.count(0);
    const taken = tally.count(-1);
    if (gone + taken > servers - this.quorum) {
      lease.lose(
        `${
          gone + taken
        } of its ${servers} servers no longer hold its key (${gone} expired or deleted, ${taken} held by another owner), so no quorum of ${this.quorum} can renew it`,
      );
      return taken > 0 ? -1 : 0;
    }
    throw this.#quorumError("extend", tally.errors);
  }

  /**
   * One round of calls, bounded by `commandTimeout`; it stops waiting once
   * its outcome is decided, so a silent server delays only a round that
   * needs its answer.
   */
  #round(
    calls: Promise<unknown>[],
    parse: (reply: unknown, server: number) => number[],
    signal?: AbortSignal,
    timeout: number = this.#settings.commandTimeout,
    background = false,
    // Decided: a quorum replied 1, or too few servers are left to.
    enough = (tally: Tally) =>
      tally.count(1) >= this.quorum ||
      tally.count(1) + tally.pending < this.quorum,
  ): Promise<Tally> {
    return round(calls, {
      timeout,
      parse,
      signal,
      background,
      enough,
      onTimeout: (server) =>
        new DOMException(
          `The Redis server of clients[${server}] did not answer within ${
            Math.round(timeout)
          } ms (lock '${this.name}')`,
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
      this.name,
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

const readCode = (reply: unknown): number[] => toIntegers(reply, 1);

/** The shortest remaining lease among `leases` (ms), ignoring keys without expiry; -1 when none. */
function shortestLease(leases: number[]): number {
  const expiring = leases.filter((ms) => ms >= 0);
  return expiring.length > 0 ? Math.min(...expiring) : -1;
}

/** Validates the options: a `Lock`'s, without fencing and replicas. */
function redlockSettings(
  action: string,
  options: RedlockOptions,
): RedlockSettings {
  const record = options as Record<string, unknown>;
  for (const key of NOT_OFFERED) {
    if (record[key] !== undefined) {
      throw new TypeError(
        `${action} as '${key}' is not an option of Redlock: its servers are independent masters, and a quorum of them (not replicas) keeps the lock`,
      );
    }
  }
  if (
    options.fencing !== undefined &&
    checkBoolean(action, "fencing", options.fencing)
  ) {
    throw new TypeError(
      `${action} as 'fencing' must be false for a Redlock: current value is true. Independent masters cannot issue one strictly increasing counter (the largest fences of two quorums are not ordered), so a fence would look monotonic without being so; for fencing tokens, use Lock with fencing: true on one Redis or a Redis Cluster`,
    );
  }
  const {
    fencing: _fencing,
    waitReplicas: _waitReplicas,
    replicaTimeout: _replicaTimeout,
    ...settings
  } = lockSettings(action, options);
  return settings;
}

/** Validates `clients`: a non-empty array of distinct supported clients. */
function checkClients(action: string, clients: unknown): ScriptClient[] {
  if (!Array.isArray(clients)) {
    throw new TypeError(
      `${action} as 'clients' must be an array of Redis clients, one per independent master: current value is ${
        clients === null ? "null" : typeof clients
      }`,
    );
  }
  if (clients.length === 0) {
    throw new RangeError(
      `${action} as 'clients' must hold at least one Redis client: current value is an empty array`,
    );
  }
  const seen = new Map<ScriptClient, number>();
  const adapted: ScriptClient[] = [];
  for (let i = 0; i < clients.length; i++) {
    let client: ScriptClient;
    try {
      client = toScriptClient(clients[i]);
    } catch (error) {
      throw new TypeError(
        `${action} as 'clients[${i}]' is not a supported Redis client: ${
          (error as Error).message
        }`,
        { cause: error },
      );
    }
    const twin = seen.get(client);
    if (twin !== undefined) {
      throw new RangeError(
        `${action} as 'clients' must hold distinct clients, one per master: clients[${twin}] and clients[${i}] are the same object`,
      );
    }
    seen.set(client, i);
    adapted.push(client);
  }
  return adapted;
}
