import assert from "node:assert/strict";
import { Lock } from "../mod.ts";
import { Alarm } from "../src/_deadlines.ts";
import { startRedis } from "./_redis.ts";
import { DbRedisShape } from "./_resp.ts";
import { within } from "./_util.ts";

// Every deadline of the process (a call's bound, a lease's renewal or loss
// deadline) waits on one timer, set for the earliest; none is left once
// the last is met (Deno's sanitizers, on here, count every timer).

/** An alarm that records when it rang, and a promise of that. */
function alarm(): { alarm: Alarm; rang: Promise<number>; rung: () => boolean } {
  let ring!: (at: number) => void;
  let rung = false;
  const rang = new Promise<number>((resolve) => ring = resolve);
  return {
    alarm: new Alarm(() => {
      rung = true;
      ring(performance.now());
    }),
    rang,
    rung: () => rung,
  };
}

/** Runs `work` counting the timers set meanwhile (by anyone). */
async function countingTimers(work: () => Promise<void>): Promise<number> {
  const original = globalThis.setTimeout;
  let count = 0;
  globalThis.setTimeout = ((...args: Parameters<typeof setTimeout>) => {
    count++;
    return original(...args);
  }) as typeof setTimeout;
  try {
    await work();
  } finally {
    globalThis.setTimeout = original;
  }
  return count;
}

Deno.test("alarms on one timer ring in time order, each no earlier than it was set for", async () => {
  const start = performance.now();
  const late = alarm(), early = alarm(), middle = alarm();
  late.alarm.set(start + 60);
  early.alarm.set(start + 20);
  middle.alarm.set(start + 40);
  const times = await within(
    Promise.all([early.rang, middle.rang, late.rang]),
    2_000,
    "all three alarms",
  );
  assert.ok(times[0] <= times[1] && times[1] <= times[2], `${times}`);
  assert.ok(times[0] >= start + 20, `early rang at +${times[0] - start}`);
  assert.ok(times[1] >= start + 40, `middle rang at +${times[1] - start}`);
  assert.ok(times[2] >= start + 60, `late rang at +${times[2] - start}`);
});

Deno.test("an alarm moved earlier rings earlier, one moved later rings later, a cleared one never", async () => {
  const start = performance.now();
  const sooner = alarm(), later = alarm(), cleared = alarm();
  sooner.alarm.set(start + 1_000);
  later.alarm.set(start + 20);
  cleared.alarm.set(start + 40);
  sooner.alarm.set(start + 20);
  later.alarm.set(start + 120);
  cleared.alarm.clear();
  const soonerAt = await within(sooner.rang, 500, "the alarm moved earlier");
  assert.ok(soonerAt < start + 500, `rang at +${soonerAt - start}`);
  assert.equal(later.rung(), false, "the alarm moved later rang early");
  const laterAt = await within(later.rang, 2_000, "the alarm moved later");
  assert.ok(laterAt >= start + 120, `rang at +${laterAt - start}`);
  assert.equal(cleared.rung(), false, "a cleared alarm rang");
});

Deno.test("an alarm beyond setTimeout's range (2^31 ms) neither rings at once nor holds back an earlier one", async () => {
  const start = performance.now();
  const far = alarm(), near = alarm();
  far.alarm.set(start + 2 ** 31 + 10_000);
  near.alarm.set(start + 30);
  await within(near.rang, 2_000, "the near alarm");
  const after = alarm();
  after.alarm.set(performance.now() + 30);
  await within(after.rang, 2_000, "a second near alarm");
  assert.equal(far.rung(), false, "an alarm 2^31 ms away rang at once");
  far.alarm.clear();
});

Deno.test("an uncontended acquire and release set one timer, not one per Redis call and one per lease", async (t) => {
  await using server = await startRedis();
  await using conn = await server.connect();
  const redis = new DbRedisShape(conn);
  await (await Lock.acquire(redis, "one-timer")).release(); // loads the scripts
  // The default lease renews after its call's bound (10 s, 5 s); a 10 s
  // lease renews before it (3.3 s), which must not move the timer.
  for (const ttl of [30_000, 10_000]) {
    await t.step(`ttl ${ttl} ms`, async () => {
      const rounds = 20;
      let released = 0;
      const timers = await within(
        countingTimers(async () => {
          for (let round = 0; round < rounds; round++) {
            const lock = await Lock.acquire(redis, "one-timer", { ttl });
            if (await lock.release()) released++;
          }
        }),
        5_000,
        `${rounds} acquisitions and releases`,
      );
      assert.equal(released, rounds);
      // One more: within()'s own. Three a round before: each call's bound
      // and the lease's alarm.
      assert.ok(timers <= rounds + 1, `${timers} timers for ${rounds} rounds`);
    });
  }
});
