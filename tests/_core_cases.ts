/**
 * The core behaviours every runtime and client must show, written once and
 * run by each runtime's own test runner: `node --test` (tests/node/), `bun
 * test` (tests/bun/). Runtime-neutral on purpose: only `node:assert/strict`,
 * Web APIs and the library, with each runtime passing in how to open a
 * connection with its client. Locks are disposed with try/finally and
 * `lock[Symbol.asyncDispose]()`, so the cases parse on runtimes without
 * `await using`.
 *
 * @module
 */

import assert from "node:assert/strict";
import { Lock, LockLostError, LockTimeoutError } from "../mod.ts";
import type { RedisClient } from "../mod.ts";
import { lockKeys } from "../src/keys.ts";
import { abortedAt, sleep, within } from "./_util.ts";

/** One connection of the client under test. */
export interface Connection {
  /** The client handed to the lock, as users pass it (no adapter). */
  readonly client: RedisClient;
  /** Sends one raw command on this connection, for checks from the side. */
  command(...args: string[]): Promise<unknown>;
  /** Closes the connection. */
  close(): Promise<void>;
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
  /** Opens a connection to the test server. */
  connect(): Promise<Connection>;
}

/** One behaviour, run once per client. */
export interface CoreCase {
  /** The behaviour in plain words; the runner appends the client's name. */
  readonly name: string;
  /** Runs the case; rejects when the behaviour is broken. */
  run(under: ClientUnderTest): Promise<void>;
}

/** How long a waiter may take to get a released lock on a loaded machine. */
const HANDOFF_MS = 1_000;

/** Opens `count` connections, runs `body`, then closes them all. */
async function withConnections<T>(
  under: ClientUnderTest,
  count: number,
  body: (...connections: Connection[]) => Promise<T>,
): Promise<T> {
  const connections: Connection[] = [];
  try {
    for (let i = 0; i < count; i++) connections.push(await under.connect());
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

/** Resolves once `condition` holds, polling every 10 ms; fails after `ms`. */
async function until(
  condition: () => Promise<boolean>,
  ms: number,
  what: string,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await condition())) {
    assert.ok(performance.now() < deadline, `${what} within ${ms} ms`);
    await sleep(10);
  }
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

/** The shared cases, in the order the runners register them. */
export const CORE_CASES: readonly CoreCase[] = [
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
              await sleep(150); // real time for the waiter to find it held
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
          await sleep(100);
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
];
