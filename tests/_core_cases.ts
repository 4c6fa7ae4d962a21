/**
 * The core behaviours every runtime and client must show, written once and
 * run by each runtime's own test runner: `deno test` (tests/matrix_test.ts),
 * `node --test` (tests/node/), `bun test` (tests/bun/). Runtime-neutral on
 * purpose: only `node:assert/strict`, `node:process`, Web APIs and the
 * library, with each runtime passing in how to open a connection with its
 * client and, for the fault cases, a redis-server of the case's own to kill
 * or stop. Locks are disposed with try/finally and
 * `lock[Symbol.asyncDispose]()`, so the cases parse on runtimes without
 * `await using`.
 *
 * @module
 */

import assert from "node:assert/strict";
import process from "node:process";
import { Lock, LockKeyError, LockLostError, LockTimeoutError } from "../mod.ts";
import type { RedisClient } from "../mod.ts";
import { lockKeys } from "../src/keys.ts";
import { abortedAt, lineUp, sleep, until, within } from "./_util.ts";
import { semaphoreCases } from "./_semaphore_cases.ts";

/** One connection of the client under test. */
export interface Connection {
  /** The client handed to the lock, as users pass it (no adapter). */
  readonly client: RedisClient;
  /** Sends one raw command on this connection, for checks from the side. */
  command(...args: string[]): Promise<unknown>;
  /** Closes the connection, also once its server is dead. */
  close(): Promise<void>;
}

/** A redis-server of one fault case's own, which the case kills or stops. */
export interface SpareServer {
  /** The loopback port it listens on. */
  readonly port: number;
  /** Its PID: the case sends it SIGKILL, or SIGSTOP then SIGCONT. */
  readonly pid: number;
}

/**
 * The environment variable in which a Deno parent passes the spare servers
 * it started to a Node or Bun runner: `port:pid` pairs, comma-separated.
 */
export const SPARE_SERVERS_ENV = "DEADBOLT_TEST_SPARE_SERVERS";

/**
 * Hands out the servers listed in `list` (the value of
 * {@linkcode SPARE_SERVERS_ENV}), each once; rejects when none is left.
 */
export function spareServersFrom(
  list: string | undefined,
): () => Promise<SpareServer> {
  const servers = (list ?? "").split(",").filter(Boolean).map((pair) => {
    const [port, pid] = pair.split(":").map(Number);
    return { port, pid };
  });
  return () => {
    const server = servers.shift();
    return server ? Promise.resolve(server) : Promise.reject(
      new Error(
        `Cannot run a fault case as no spare redis-server is left in ${SPARE_SERVERS_ENV}: the parent test must start one per fault case and client`,
      ),
    );
  };
}

/** A Redis client library on one runtime, as the cases see it. */
export interface ClientUnderTest {
  /** For test titles and lock names, such as `ioredis 6 on Node`. */
  readonly name: string;
  /**
   * Whether the library wakes a waiter by pub/sub when a holder elsewhere
   * releases (the client can open a subscriber); if not, the waiter's
   * backoff finds the lock free.
   */
  readonly wakesOnRelease: boolean;
  /** Opens a connection to the test server, or to the server on `port`. */
  connect(port?: number): Promise<Connection>;
  /**
   * Hands out a running redis-server that no other case uses, for a case
   * that kills or stops it; the runner stops it afterwards. Cases with
   * `needsSpareServer` fail without it.
   */
  spareServer?(): Promise<SpareServer>;
  /**
   * How many timers are pending in this process now, for the check that a
   * fault case leaves none behind. Where it is missing the runner checks
   * otherwise (Deno: its test sanitizers, on in deno.json).
   */
  activeTimers?(): number;
}

/** One behaviour, run once per client. */
export interface CoreCase {
  /** The behaviour in plain words; the runner appends the client's name. */
  readonly name: string;
  /** Whether it kills or stops a server: it needs `spareServer()`. */
  readonly needsSpareServer?: boolean;
  /** Runs the case; rejects when the behaviour is broken. */
  run(under: ClientUnderTest): Promise<void>;
}

/** How long a waiter may take to get a released lock on a loaded machine. */
const HANDOFF_MS = 1_000;

/**
 * Opens `count` connections (to the server on `port`, else the test
 * server), runs `body`, then closes them all.
 */
async function withConnections<T>(
  under: ClientUnderTest,
  count: number,
  body: (...connections: Connection[]) => Promise<T>,
  port?: number,
): Promise<T> {
  const connections: Connection[] = [];
  try {
    for (let i = 0; i < count; i++) {
      connections.push(await under.connect(port));
    }
    return await body(...connections);
  } finally {
    await Promise.all(connections.map((connection) => connection.close()));
  }
}

/** Runs `body` with `lock`, then disposes of it as `await using` would. */
async function holding<T>(
  lock: Lock,
  body: (lock: Lock) => Promise<T>,
): Promise<T> {
  try {
    return await body(lock);
  } finally {
    await lock[Symbol.asyncDispose]();
  }
}

/** Tracks whether a promise has settled, without consuming its outcome. */
function track<T>(
  promise: Promise<T>,
): { promise: Promise<T>; settled(): boolean } {
  let settled = false;
  const settle = () => {
    settled = true;
  };
  promise.then(settle, settle);
  return { promise, settled: () => settled };
}

/** Subscribers of `channel`, plain or sharded (the library may use either). */
async function subscribers(side: Connection, channel: string): Promise<number> {
  const count = async (subcommand: string) => {
    try {
      const reply = await side.command("PUBSUB", subcommand, channel);
      return Number((reply as unknown[])[1]);
    } catch {
      return 0; // SHARDNUMSUB needs Redis 7
    }
  };
  return await count("NUMSUB") + await count("SHARDNUMSUB");
}

const str = (reply: unknown): string | null =>
  reply === null || reply === undefined ? null : String(reply);

/**
 * `commandTimeout` in the dead-server case: clients that queue commands while
 * they reconnect (ioredis, node-redis, Bun's) fail the call after it.
 */
const DEAD_COMMAND_TIMEOUT_MS = 1_000;
/** `commandTimeout` in the stalled-server case. */
const STALL_COMMAND_TIMEOUT_MS = 300;
/** The waiter's backoff bound in the fault cases: its next attempt comes this soon. */
const FAULT_RETRY_MS = 100;
/**
 * What a failed wait may take past its last attempt's `commandTimeout`:
 * closing its wake-up connection (node-redis outwaits a reconnection delay
 * of up to 500 ms there), on a loaded machine.
 */
const SETTLE_MARGIN_MS = 1_500;
/** The waiter's timeout in the fault cases, far above what they must take. */
const FAULT_WAIT_MS = 10_000;
/** How long a call may take once a stalled server resumes. */
const RECOVERY_MS = 5_000;
/** How long the pending timers may take to come back to their count before a fault case. */
const TIMERS_BACK_MS = 2_000;

/**
 * Resolves once a waiter for `name` waits in Redis: subscribed to the
 * release channel where releases wake waiters, else turned away (its
 * process has a place in the lock's line).
 */
async function waiterWaits(
  under: ClientUnderTest,
  side: Connection,
  name: string,
): Promise<void> {
  const keys = lockKeys("deadbolt:", name);
  if (under.wakesOnRelease) {
    await until(
      async () => await subscribers(side, keys.released) > 0,
      5_000,
      `the waiter subscribes to ${keys.released}`,
    );
  } else {
    await until(
      async () => Number(await side.command("EXISTS", keys.line)) === 1,
      5_000,
      `the waiter is turned away (it takes a place in ${keys.line})`,
    );
  }
}

/** The fault case's server, which must come from the runner. */
function spareServer(under: ClientUnderTest): Promise<SpareServer> {
  assert.ok(
    under.spareServer,
    `${under.name}: the runner offers no spare server for a fault case`,
  );
  return under.spareServer();
}

/**
 * Resolves once no more timers are pending than `before` (counted before the
 * case); fails after TIMERS_BACK_MS. Without a count (Deno) it is the test
 * sanitizers that check.
 */
async function timersBack(
  under: ClientUnderTest,
  before: number | undefined,
): Promise<void> {
  if (before === undefined || !under.activeTimers) return;
  const deadline = performance.now() + TIMERS_BACK_MS;
  for (;;) {
    const pending = under.activeTimers();
    if (pending <= before) return;
    assert.ok(
      performance.now() < deadline,
      `${
        pending - before
      } timer(s) left pending ${TIMERS_BACK_MS} ms after the case (${before} before it)`,
    );
    await sleep(10);
  }
}

/**
 * Runs `body` and fails if anything went unhandled meanwhile (a rejection
 * nobody handled, an error thrown from an event listener or an `'error'`
 * event nobody listens to), on every runtime alike.
 */
async function nothingUnhandled(body: () => Promise<void>): Promise<void> {
  const unhandled: unknown[] = [];
  const onUnhandled = (error: unknown) => void unhandled.push(error);
  process.on("unhandledRejection", onUnhandled);
  process.on("uncaughtException", onUnhandled);
  let failure: unknown;
  try {
    await body();
  } catch (error) {
    failure = error;
  } finally {
    process.off("unhandledRejection", onUnhandled);
    process.off("uncaughtException", onUnhandled);
  }
  assert.deepEqual(
    unhandled.map((error) => String((error as Error)?.stack ?? error)),
    [],
    `unhandled during the case${failure ? `, which failed: ${failure}` : ""}`,
  );
  if (failure !== undefined) throw failure;
}

/** Settles with `promise`'s rejection; fails if it resolves. */
const rejection = (promise: Promise<unknown>, what: string) =>
  promise.then(
    () => assert.fail(`${what} resolved`),
    (error: unknown) => error,
  );

/** The lock's cases, in the order the runners register them. */
const LOCK_CASES: readonly CoreCase[] = [
  {
    name: "Lock.acquire() sets the key to the token and release() removes it",
    run: (under) =>
      withConnections(under, 2, async (a, side) => {
        const name = `${under.name} acquire`;
        const lock = await Lock.acquire(a.client, name, { ttl: 10_000 });
        await holding(lock, async () => {
          assert.equal(lock.held, true);
          assert.equal(lock.key, lockKeys("deadbolt:", name).lock);
          assert.equal(str(await side.command("GET", lock.key)), lock.token);
          const pttl = Number(await side.command("PTTL", lock.key));
          assert.ok(pttl > 0 && pttl <= 10_000, `PTTL ${pttl}`);
          assert.equal(await lock.release(), true);
          assert.equal(Number(await side.command("EXISTS", lock.key)), 0);
          assert.equal(lock.held, false);
          assert.equal(lock.signal.aborted, false, "release is no loss");
        });

        // Disposal releases too: the key is gone when it settles.
        const scoped = await Lock.acquire(a.client, name);
        await holding(scoped, async () => {
          assert.equal(
            str(await side.command("GET", scoped.key)),
            scoped.token,
          );
        });
        assert.equal(Number(await side.command("EXISTS", scoped.key)), 0);
      }),
  },
  {
    name: "release() returns true once, then false without touching the key",
    run: (under) =>
      withConnections(under, 2, async (a, side) => {
        const name = `${under.name} release twice`;
        const lock = await Lock.acquire(a.client, name);
        assert.equal(await lock.release(), true);
        assert.equal(await lock.release(), false);

        // The second call must not delete a key someone else holds now.
        const next = await Lock.acquire(a.client, name);
        await holding(next, async () => {
          assert.equal(await lock.release(), false);
          assert.equal(str(await side.command("GET", next.key)), next.token);
        });
      }),
  },
  {
    name: "a waiter gets the lock right after release()",
    run: (under) =>
      withConnections(under, 3, async (a, b, side) => {
        const name = `${under.name} handoff`;
        const channel = lockKeys("deadbolt:", name).released;
        const ways = [["same client", a], ["another connection", b]] as const;
        for (const [way, waiterConnection] of ways) {
          const holder = await Lock.acquire(a.client, name, { ttl: 30_000 });
          // Where a release elsewhere wakes the waiter, its backoff is made
          // far longer than HANDOFF_MS, so a prompt grant proves the wake-up;
          // else a short backoff bound is what makes it prompt.
          const wake = waiterConnection !== a && under.wakesOnRelease;
          const waiting = track(
            Lock.acquire(waiterConnection.client, name, {
              ttl: 30_000,
              timeout: 20_000,
              ...(wake
                ? { retryDelay: 10_000, maxRetryDelay: 10_000 }
                : { maxRetryDelay: 100 }),
            }),
          );
          try {
            if (wake) {
              await until(
                async () => await subscribers(side, channel) > 0,
                5_000,
                `${way}: the waiter subscribes to ${channel}`,
              );
            } else {
              await lineUp(waiterConnection.client, name, 1);
            }
            assert.equal(
              waiting.settled(),
              false,
              `${way}: granted while held`,
            );
            const released = performance.now();
            assert.equal(await holder.release(), true);
            const next = await within(
              waiting.promise,
              HANDOFF_MS,
              `${way}: the handoff`,
            );
            const handoff = performance.now() - released;
            await holding(next, async () => {
              assert.equal(
                str(await side.command("GET", next.key)),
                next.token,
              );
              assert.ok(
                handoff < HANDOFF_MS,
                `${way}: handoff took ${handoff} ms`,
              );
            });
          } finally {
            await holder.release();
            await waiting.promise.then((lock) => lock.release(), () => {});
          }
        }
      }),
  },
  {
    name:
      "Lock.acquire() times out with LockTimeoutError and the holder's remaining TTL",
    run: (under) =>
      withConnections(under, 3, async (a, b, side) => {
        const name = `${under.name} timeout`;
        const holder = await Lock.acquire(a.client, name, { ttl: 10_000 });
        await holding(holder, async () => {
          const started = performance.now();
          const error = await Lock.acquire(b.client, name, { timeout: 300 })
            .then(() => assert.fail("granted while held"), (error) => error);
          const elapsed = performance.now() - started;
          assert.ok(error instanceof LockTimeoutError, String(error));
          assert.equal(error.lockName, name);
          assert.ok(
            error.remainingTtl > 0 && error.remainingTtl <= 10_000,
            `remainingTtl ${error.remainingTtl}`,
          );
          assert.ok(error.waited >= 300, `waited ${error.waited} ms`);
          assert.ok(elapsed < 300 + HANDOFF_MS, `settled after ${elapsed} ms`);
          assert.equal(await Lock.tryAcquire(b.client, name), null);
          assert.equal(
            str(await side.command("GET", holder.key)),
            holder.token,
          );
        });
      }),
  },
  {
    name:
      "Lock.acquire() rejects with signal.reason when aborted while waiting",
    run: (under) =>
      withConnections(under, 3, async (a, b, side) => {
        const name = `${under.name} abort`;
        const holder = await Lock.acquire(a.client, name, { ttl: 10_000 });
        await holding(holder, async () => {
          const controller = new AbortController();
          const waiting = track(
            Lock.acquire(b.client, name, {
              signal: controller.signal,
              timeout: 20_000,
            }),
          );
          await lineUp(b.client, name, 1);
          assert.equal(waiting.settled(), false, "granted while held");
          const reason = new Error("shutting down");
          controller.abort(reason);
          const error = await within(
            waiting.promise.then(() => undefined, (error) => error),
            HANDOFF_MS,
            "the rejection of the aborted wait",
          );
          assert.equal(error, reason);

          const early = new Error("aborted before the call");
          await assert.rejects(
            Lock.acquire(b.client, name, { signal: AbortSignal.abort(early) }),
            (error) => error === early,
          );
          assert.equal(
            str(await side.command("GET", holder.key)),
            holder.token,
          );
        });
      }),
  },
  {
    name: "auto-extension keeps a 300 ms lease alive past 1 s",
    run: (under) =>
      withConnections(under, 2, async (a, side) => {
        const lock = await Lock.acquire(a.client, `${under.name} extend`, {
          ttl: 300,
        });
        await holding(lock, async () => {
          const token = lock.token;
          await sleep(1_100); // real time for three leases to run out
          assert.equal(lock.signal.aborted, false, String(lock.signal.reason));
          assert.equal(lock.held, true);
          assert.equal(lock.token, token);
          assert.equal(str(await side.command("GET", lock.key)), token);
          const pttl = Number(await side.command("PTTL", lock.key));
          assert.ok(pttl > 0 && pttl <= 300, `PTTL ${pttl}`);
          assert.equal(await lock.release(), true);
        });
      }),
  },
  {
    name:
      "lock.signal aborts with LockLostError when the key is deleted or overwritten",
    run: (under) =>
      withConnections(under, 2, async (a, side) => {
        for (const way of ["deleted", "overwritten"]) {
          const lock = await Lock.acquire(
            a.client,
            `${under.name} lost ${way}`,
            {
              ttl: 300,
            },
          );
          await holding(lock, async () => {
            if (way === "deleted") await side.command("DEL", lock.key);
            else await side.command("SET", lock.key, "intruder", "PX", "10000");
            const at = await abortedAt(lock.signal, 3_000);
            assert.ok(
              at <= lock.validUntil,
              `${way}: aborted ${at - lock.validUntil} ms after validUntil`,
            );
            assert.ok(
              lock.signal.reason instanceof LockLostError,
              String(lock.signal.reason),
            );
            assert.equal(lock.held, false);
            assert.equal(await lock.release(), false);
            assert.equal(
              str(await side.command("GET", lock.key)),
              way === "deleted" ? null : "intruder",
              `${way}: the key was recreated or deleted by the lost holder`,
            );
            await side.command("DEL", lock.key); // the intruder's
          });
        }
      }),
  },
  {
    name: "fencing issues strictly increasing fences across acquisitions",
    run: (under) =>
      withConnections(under, 3, async (a, b, side) => {
        const name = `${under.name} fencing`;
        const fences: number[] = [];
        for (const connection of [a, b, a, b]) {
          const lock = await Lock.acquire(connection.client, name, {
            fencing: true,
          });
          await holding(lock, async () => {
            assert.equal(typeof lock.fence, "number");
            const fence = lock.fence!;
            assert.ok(
              fences.every((earlier) => earlier < fence),
              `fence ${fence} after ${fences}`,
            );
            fences.push(fence);
            const counter = await side.command(
              "GET",
              lockKeys("deadbolt:", name).fence,
            );
            assert.equal(Number(counter), fence);
          });
        }
        const plain = await Lock.acquire(a.client, name);
        await holding(plain, () => {
          assert.equal(plain.fence, undefined);
          return Promise.resolve();
        });
      }),
  },
  {
    name:
      "Lock.acquire() and tryAcquire() reject at once with LockKeyError on a key of another type, and leave it as it was",
    run: (under) =>
      withConnections(under, 2, async (a, side) => {
        const name = `${under.name} foreign type`;
        const keys = lockKeys("deadbolt:", name);
        await side.command("RPUSH", keys.lock, "not", "a lock");
        try {
          const calls = [
            [
              "Lock.acquire()",
              () =>
                Lock.acquire(a.client, name, {
                  timeout: FAULT_WAIT_MS,
                  fencing: true,
                }),
            ],
            [
              "Lock.tryAcquire()",
              () => Lock.tryAcquire(a.client, name, { fencing: true }),
            ],
          ] as const;
          for (const [call, attempt] of calls) {
            // At once: well before the 10 s timeout a waiter would wait.
            const error = await within(
              rejection(attempt(), `${call} on a list`),
              HANDOFF_MS,
              `${call}'s rejection on a list`,
            );
            assert.ok(error instanceof LockKeyError, `${call}: ${error}`);
            assert.equal(error.key, keys.lock);
          }
          assert.equal(str(await side.command("TYPE", keys.lock)), "list");
          const items = await side.command("LRANGE", keys.lock, "0", "-1");
          assert.deepEqual((items as unknown[]).map(String), ["not", "a lock"]);
          assert.equal(Number(await side.command("PTTL", keys.lock)), -1);
          assert.equal(
            Number(
              await side.command("EXISTS", keys.fence, keys.line, keys.seats),
            ),
            0,
            "no fence issued, no place in line left",
          );
        } finally {
          await side.command("DEL", keys.lock);
        }
      }),
  },
  {
    name:
      "a waiter whose Redis server dies gets the client's error, not LockTimeoutError, soon after commandTimeout, leaving nothing unhandled or pending",
    needsSpareServer: true,
    run: (under) =>
      nothingUnhandled(async () => {
        const timers = under.activeTimers?.();
        const server = await spareServer(under);
        const name = `${under.name} server dies`;
        // Clients that queue commands while they reconnect settle after it.
        const commandTimeout = DEAD_COMMAND_TIMEOUT_MS;
        await withConnections(under, 3, async (a, b, side) => {
          // The holder's release on the dead server gives up sooner.
          const holder = await within(
            Lock.acquire(a.client, name, {
              ttl: 30_000,
              commandTimeout: STALL_COMMAND_TIMEOUT_MS,
            }),
            HANDOFF_MS,
            "the holder's acquire",
          );
          const waiting = track(
            Lock.acquire(b.client, name, {
              timeout: FAULT_WAIT_MS,
              maxRetryDelay: FAULT_RETRY_MS,
              commandTimeout,
            }),
          );
          try {
            await waiterWaits(under, side, name);
            assert.equal(waiting.settled(), false, "granted while held");
            process.kill(server.pid, "SIGKILL");
            const killed = performance.now();
            // Its next attempt comes within FAULT_RETRY_MS and fails within
            // commandTimeout; the outer bound lets a LockTimeoutError show.
            const bound = FAULT_RETRY_MS + commandTimeout + SETTLE_MARGIN_MS;
            const error = await within(
              rejection(waiting.promise, "the wait on a dead server"),
              FAULT_WAIT_MS + bound,
              "the end of the wait on a dead server",
            );
            const elapsed = Math.round(performance.now() - killed);
            assert.ok(
              !(error instanceof LockTimeoutError),
              `the wait ended with ${error}`,
            );
            assert.ok(
              elapsed <= bound,
              `the wait ended ${elapsed} ms after the server died, with ${error}`,
            );
          } finally {
            // On a dead server, release() ends the lease (its renewal timer
            // with it), then rejects or finds nothing to release.
            await within(
              holder.release().catch(() => false),
              STALL_COMMAND_TIMEOUT_MS + SETTLE_MARGIN_MS,
              "the holder's release on a dead server",
            );
            await within(
              waiting.promise.then((lock) => lock.release(), () => false)
                .catch(() => false),
              FAULT_WAIT_MS + commandTimeout + SETTLE_MARGIN_MS,
              "the end of the wait",
            );
          }
          assert.equal(holder.held, false);
        }, server.port);
        await timersBack(under, timers);
      }),
  },
  {
    name:
      "a waiter whose Redis server stalls gets a TimeoutError after commandTimeout, not LockTimeoutError, and the clients work again once it resumes",
    needsSpareServer: true,
    run: (under) =>
      nothingUnhandled(async () => {
        const timers = under.activeTimers?.();
        const server = await spareServer(under);
        const name = `${under.name} server stalls`;
        const commandTimeout = STALL_COMMAND_TIMEOUT_MS;
        await withConnections(under, 3, async (a, b, side) => {
          const holder = await within(
            Lock.acquire(a.client, name, { ttl: 30_000 }),
            HANDOFF_MS,
            "the holder's acquire",
          );
          try {
            const waiting = track(
              Lock.acquire(b.client, name, {
                timeout: FAULT_WAIT_MS,
                maxRetryDelay: FAULT_RETRY_MS,
                commandTimeout,
              }),
            );
            let stopped = false;
            try {
              await waiterWaits(under, side, name);
              assert.equal(waiting.settled(), false, "granted while held");
              process.kill(server.pid, "SIGSTOP");
              stopped = true;
              const at = performance.now();
              const bound = FAULT_RETRY_MS + commandTimeout + SETTLE_MARGIN_MS;
              const error = await within(
                rejection(waiting.promise, "the wait on a stalled server"),
                FAULT_WAIT_MS + bound,
                "the end of the wait on a stalled server",
              );
              const elapsed = Math.round(performance.now() - at);
              assert.ok(
                error instanceof DOMException &&
                  error.name === "TimeoutError",
                `the wait ended with ${error}`,
              );
              assert.match(error.message, new RegExp(`${commandTimeout} ms`));
              assert.ok(
                elapsed <= bound,
                `the wait ended ${elapsed} ms after the server stalled`,
              );
            } finally {
              if (stopped) process.kill(server.pid, "SIGCONT");
              await within(
                waiting.promise.then((lock) => lock.release(), () => false)
                  .catch(() => false),
                FAULT_WAIT_MS + commandTimeout + SETTLE_MARGIN_MS,
                "the end of the wait",
              );
            }
            // Resumed: the holder releases, and each client takes the lock
            // and releases it again, on the same connections.
            assert.equal(
              await within(holder.release(), RECOVERY_MS, "the release"),
              true,
            );
            for (const connection of [b, a]) {
              const again = await within(
                Lock.acquire(connection.client, name, { timeout: RECOVERY_MS }),
                RECOVERY_MS + HANDOFF_MS,
                "an acquire after the server resumed",
              );
              await holding(again, async () => {
                assert.equal(
                  str(await side.command("GET", again.key)),
                  again.token,
                );
                assert.equal(
                  await within(again.release(), RECOVERY_MS, "its release"),
                  true,
                );
              });
            }
          } finally {
            await within(
              holder.release().catch(() => false),
              RECOVERY_MS,
              "the holder's release",
            );
          }
        }, server.port);
        await timersBack(under, timers);
      }),
  },
];

/** Every case of the matrix: the lock's, then the semaphore's. */
export const CORE_CASES: readonly CoreCase[] = [
  ...LOCK_CASES,
  ...semaphoreCases({ withConnections, subscribers, handoffMs: HANDOFF_MS }),
];
