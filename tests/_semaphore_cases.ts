/**
 * The cases of the semaphore, the read-write lock and the multi-lock in the
 * conformance matrix: `_core_cases.ts` adds them
 * to `CORE_CASES`, so they run for every client under Deno, Node and Bun and
 * on the 3+3 cluster. They get the runner's helpers as arguments (a type-only
 * import, so no import cycle).
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  Lock,
  LockLostError,
  MultiLock,
  ReadWriteLock,
  Semaphore,
} from "../mod.ts";
import type { ClientUnderTest, Connection, CoreCase } from "./_core_cases.ts";
import { abortedAt, lineUp, until, within } from "./_util.ts";

/** What the semaphore cases borrow from `_core_cases.ts`. */
export interface CaseHelpers {
  withConnections<T>(
    under: ClientUnderTest,
    count: number,
    body: (...connections: Connection[]) => Promise<T>,
  ): Promise<T>;
  subscribers(side: Connection, channel: string): Promise<number>;
  handoffMs: number;
}

/** The semaphore's cases, built on the runner's helpers. */
export function semaphoreCases(
  { withConnections, subscribers, handoffMs }: CaseHelpers,
): CoreCase[] {
  return [
    {
      name:
        "Semaphore grants at most limit permits across connections, and a released permit goes to a waiter at once",
      run: (under) =>
        withConnections(under, 3, async (a, b, side) => {
          const name = `${under.name} permits`;
          const options = { limit: 2, ttl: 10_000 };
          const first = await Semaphore.acquire(a.client, name, options);
          const second = await Semaphore.acquire(b.client, name, options);
          try {
            assert.equal(Number(await side.command("ZCARD", first.key)), 2);
            assert.equal(
              await Semaphore.tryAcquire(a.client, name, options),
              null,
            );
            // Where the client is woken by pub/sub, a long backoff proves
            // the wake-up; else a short one is what makes it prompt.
            const wake = under.wakesOnRelease;
            const waiting = Semaphore.acquire(b.client, name, {
              ...options,
              timeout: 20_000,
              ...(wake
                ? { retryDelay: 10_000, maxRetryDelay: 10_000 }
                : { maxRetryDelay: 100 }),
            });
            if (wake) {
              await until(
                async () =>
                  await subscribers(side, `${first.key}:released`) > 0,
                5_000,
                "the waiter subscribes",
              );
            } else {
              await lineUp(b.client, name, 1, 5_000, first.key);
            }
            const released = performance.now();
            assert.equal(await first.release(), true);
            const third = await within(waiting, handoffMs, "the handoff");
            const handoff = performance.now() - released;
            try {
              assert.ok(handoff < handoffMs, `handoff took ${handoff} ms`);
              assert.ok(third.held);
              assert.equal(Number(await side.command("ZCARD", third.key)), 2);
            } finally {
              assert.equal(await third.release(), true);
            }
          } finally {
            await first.release();
            await second.release();
          }
          assert.equal(Number(await side.command("EXISTS", first.key)), 0);
        }),
    },
    {
      name:
        "a permit whose holder stops renewing is lost, says so, and frees its place; fences keep increasing",
      run: (under) =>
        withConnections(under, 3, async (a, b, side) => {
          const name = `${under.name} permit lease`;
          const quiet = await Semaphore.acquire(a.client, name, {
            limit: 1,
            ttl: 300,
            autoExtend: false,
            fencing: true,
          });
          const reason = await within(
            abortedAt(quiet.signal).then(() => quiet.signal.reason),
            2_000,
            "the loss",
          );
          assert.ok(reason instanceof LockLostError, String(reason));
          const next = await within(
            Semaphore.acquire(b.client, name, {
              limit: 1,
              fencing: true,
              timeout: 5_000,
              maxRetryDelay: 50,
            }),
            6_000,
            "the freed permit",
          );
          try {
            assert.ok(
              next.fence! > quiet.fence!,
              `${next.fence} after ${quiet.fence}`,
            );
            assert.equal(Number(await side.command("ZCARD", next.key)), 1);
          } finally {
            assert.equal(await next.release(), true);
            assert.equal(await quiet.release(), false);
          }
        }),
    },
    {
      name:
        "ReadWriteLock: readers share across connections, a writer waits for them and gets the lock at once after the last release",
      run: (under) =>
        withConnections(under, 3, async (a, b, side) => {
          const name = `${under.name} rw`;
          const first = await ReadWriteLock.read(a.client, name);
          const second = await ReadWriteLock.read(b.client, name);
          try {
            assert.equal(Number(await side.command("ZCARD", first.key)), 2);
            const wake = under.wakesOnRelease;
            const writing = ReadWriteLock.write(b.client, name, {
              timeout: 20_000,
              ...(wake
                ? { retryDelay: 10_000, maxRetryDelay: 10_000 }
                : { maxRetryDelay: 100 }),
            });
            const writerKey = first.key.replace(/:readers$/, "");
            if (wake) {
              await until(
                async () =>
                  await subscribers(side, `${writerKey}:released`) > 0,
                5_000,
                "the writer subscribes",
              );
            } else {
              await lineUp(b.client, name, 1, 5_000, writerKey);
            }
            assert.equal(
              await new ReadWriteLock(a.client, name).reader().tryAcquire(),
              false,
              "a reader barged in while a writer waits",
            );
            assert.equal(await first.release(), true);
            const released = performance.now();
            assert.equal(await second.release(), true);
            const writer = await within(writing, handoffMs, "the writer");
            const handoff = performance.now() - released;
            try {
              assert.ok(handoff < handoffMs, `handoff took ${handoff} ms`);
              assert.equal(
                String(await side.command("GET", writer.key)),
                writer.token,
              );
            } finally {
              assert.equal(await writer.release(), true);
            }
          } finally {
            await first.release();
            await second.release();
          }
        }),
    },
    {
      name:
        "MultiLock takes every name or none across connections (on a cluster, one slot at a time), and a waiter gets the set once the last name is free",
      run: (under) =>
        withConnections(under, 3, async (a, b, side) => {
          const names = ["x", "y", "z"].map((n) => `${under.name} multi ${n}`);
          const blocker = await Lock.acquire(b.client, names[1]);
          try {
            assert.equal(await MultiLock.tryAcquire(a.client, names), null);
            for (const name of [names[0], names[2]]) {
              const key = Lock.keys(name).lock;
              assert.equal(Number(await side.command("EXISTS", key)), 0);
            }
            const waiting = MultiLock.acquire(a.client, names, {
              timeout: 20_000,
              maxRetryDelay: 100,
            });
            await lineUp(
              a.client,
              names[0],
              1,
              5_000,
              `multi\u0000${
                names.map((n) => Lock.keys(n).lock).sort().join("\u0000")
              }`,
            );
            assert.equal(await blocker.release(), true);
            const all = await within(waiting, handoffMs, "the whole set");
            try {
              for (const key of all.keys) {
                assert.equal(String(await side.command("GET", key)), all.token);
              }
            } finally {
              assert.equal(await all.release(), true);
            }
          } finally {
            await blocker.release();
          }
        }),
    },
  ];
}
