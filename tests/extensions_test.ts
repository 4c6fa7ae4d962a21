import assert from "node:assert/strict";
import { Lease, RENEWED, validity } from "../src/_lease.ts";
import { now } from "../src/_timers.ts";
import { until, within } from "./_util.ts";

// What a lease keeps of its extensions (`_extensions.ts`) must not grow
// with the length of the hold: a hold renewed every few seconds for weeks
// makes hundreds of thousands of them.

/**
 * How many references the objects reachable from `root` hold to other
 * objects (the memory an extension keeps alive, whatever its fields).
 */
function referencesFrom(root: object): number {
  const seen = new Set<object>();
  const stack: object[] = [root];
  let references = 0;
  while (stack.length > 0) {
    const value = stack.pop()!;
    if (seen.has(value)) continue;
    seen.add(value);
    for (const field of Object.values(value)) {
      if (typeof field !== "object" || field === null) continue;
      references++;
      stack.push(field);
    }
  }
  return references;
}

/**
 * A lease that renews only when told to (no timer but its loss alarm), on
 * a client that runs calls in the order sent, or not.
 */
function quietLease(ordered = true): Lease {
  return new Lease(now(), {
    ordered,
    ttl: 60_000,
    autoExtend: false,
    renewInterval: 20_000,
    retryDelay: 5,
    maxRetryDelay: 1_000,
    commandTimeout: 1_000,
    extend: () => Promise.resolve(RENEWED),
    onLost: () => {},
  });
}

Deno.test("extend() in a loop: an extension keeps alive no more than the few it follows", () => {
  const lease = quietLease();
  try {
    for (let i = 0; i < 2_000; i++) {
      lease.extended(lease.extending(now(), 60_000));
    }
    const next = lease.extending(now(), 60_000);
    const kept = referencesFrom(next);
    assert.ok(kept <= 10, `the 2001st extension keeps ${kept} references`);
    lease.extended(next);
  } finally {
    lease.end();
  }
});

for (const ordered of [true, false]) {
  Deno.test(`renewals that keep failing (${ordered ? "" : "un"}ordered client): what an extension keeps grows no faster than their number`, () => {
    const lease = quietLease(ordered);
    try {
      for (let i = 0; i < 2_000; i++) {
        lease.unanswered(lease.extending(now(), 60_000));
      }
      const next = lease.extending(now(), 60_000);
      const kept = referencesFrom(next);
      // Each failed one may still count (it may have run), once.
      assert.ok(kept <= 3 * 2_000, `after 2000 failures, ${kept} references`);
      lease.extended(next);
      const after = lease.extending(now(), 60_000);
      const left = referencesFrom(after);
      assert.ok(left <= 10, `once one ran, ${left} references`);
      lease.extended(after);
    } finally {
      lease.end();
    }
  });
}

Deno.test("a renewal given up on where calls overtake each other ends the lease no sooner than the renewal that ran after it", () => {
  const lease = quietLease(false);
  try {
    const sent = now();
    lease.unanswered(lease.extending(sent, 60_000));
    const later = sent + 10_000;
    lease.extended(lease.extending(later, 60_000));
    // Run last, the one given up on ran after the later one went out.
    assert.equal(lease.validUntil, later + validity(60_000));
  } finally {
    lease.end();
  }
});

Deno.test("after a renewal given up on where calls overtake each other, a longer extend() still has the lease renewed before it runs out", async () => {
  // The renewal given up on may run after the extend, and cut the key back
  // to its ttl: the lease must be renewed within that, not lost.
  const calls: number[] = [];
  const called: (() => void)[] = [];
  let lost: string | undefined;
  const lease = new Lease(now(), {
    ordered: false,
    ttl: 1_000,
    autoExtend: true,
    renewInterval: 300,
    retryDelay: 5,
    maxRetryDelay: 10,
    commandTimeout: 1_000,
    extend: () => {
      calls.push(now());
      called.shift()?.();
      return calls.length === 1
        ? Promise.reject(new DOMException("timed out", "TimeoutError"))
        : Promise.resolve(RENEWED);
    },
    onLost: (message) => lost = message,
  });
  const nthCall = (n: number) =>
    calls.length >= n ? Promise.resolve() : new Promise<void>((resolve) => {
      called.push(() => calls.length >= n && resolve());
    });
  try {
    await within(nthCall(1), 3_000, "the first renewal");
    const before = lease.validUntil;
    await within(nthCall(2), 3_000, "its retry");
    await until(
      () => Promise.resolve(lease.validUntil > before),
      3_000,
      "the retry's answer",
    );
    const sent = now();
    lease.extended(lease.extending(sent, 10_000));
    assert.ok(
      lease.validUntil <= sent + validity(1_000),
      `valid ${Math.round(lease.validUntil - sent)} ms after the extend`,
    );
    await within(nthCall(3), 3_000, "a renewal after the extend");
    assert.equal(lost, undefined);
    assert.ok(calls[2] < sent + validity(1_000), "renewed in time");
  } finally {
    lease.end();
  }
});
