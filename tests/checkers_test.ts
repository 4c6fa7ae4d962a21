import assert from "node:assert/strict";
import {
  checkAtMost,
  checkCounter,
  checkFencedRegister,
  checkLossSignalled,
  checkReadersWriters,
  checkUniqueFences,
  checkValidityWindows,
  type Event,
  fencedWrite,
  readRegister,
  sharedNow,
} from "./_checkers.ts";
import { startRedis } from "./_redis.ts";
import { RespError } from "./_resp.ts";

// Each checker must pass a good history and catch the bad one that differs
// from it in one event: a checker that passes everything proves nothing.

type Extra = Partial<Omit<Event, "proc" | "op" | "type" | "t">>;

function event(
  proc: string,
  op: Event["op"],
  type: Event["type"],
  t: number,
  extra: Extra = {},
): Event {
  return { proc, op, type, t, ...extra };
}

/** A write to the register `r` with `fence`, invoked at `from`, completed at `to`. */
function write(
  proc: string,
  fence: number,
  from: number,
  to: number,
  type: Event["type"] = "ok",
): Event[] {
  return [
    event(proc, "write", "invoke", from, { key: "r", fence, value: fence }),
    event(proc, "write", type, to, { key: "r", fence }),
  ];
}

/** A grant: acquire [from, granted], lease until validUntil, release invoked at released. */
function grant(
  proc: string,
  fence: number,
  times: {
    from: number;
    granted: number;
    validUntil: number;
    released?: number;
  },
): Event[] {
  const token = `${proc}-${fence}`;
  const events = [
    event(proc, "acquire", "invoke", times.from),
    event(proc, "acquire", "ok", times.granted, {
      token,
      fence,
      validUntil: times.validUntil,
    }),
  ];
  if (times.released !== undefined) {
    events.push(
      event(proc, "release", "invoke", times.released, { token }),
      event(proc, "release", "ok", times.released + 1, { token, value: 1 }),
    );
  }
  return events;
}

const kinds = (verdict: { violations: { kind: string }[] }) =>
  verdict.violations.map((v) => v.kind).sort();

Deno.test("checkFencedRegister() passes rising fences and counts rejected and unknown writes", () => {
  const history = [
    ...write("a", 1, 0, 1),
    ...write("b", 2, 2, 3),
    ...write("a", 1, 4, 5, "fail"), // a stale writer, refused
    ...write("c", 5, 6, 7),
    ...write("b", 6, 8, 9, "info"),
  ];
  const verdict = checkFencedRegister(history, { key: "r" });
  assert.deepEqual(verdict, {
    ok: true,
    violations: [],
    accepted: 3,
    rejected: 1,
    indeterminate: 1,
  });
  // Concurrent writes have no real-time order: either may land first.
  const concurrent = [...write("a", 4, 0, 10), ...write("b", 3, 1, 9)];
  assert.equal(checkFencedRegister(concurrent).ok, true);
  // Writes to other keys are ignored when a key is given.
  const other = write("a", 1, 10, 11).map((e) => ({ ...e, key: "s" }));
  assert.equal(
    checkFencedRegister([...history, ...other], { key: "r" }).accepted,
    3,
  );
});

Deno.test("checkFencedRegister() flags a stale write that was accepted, and a fence accepted twice", () => {
  const stale = [...write("a", 2, 0, 1), ...write("b", 1, 5, 6)];
  const verdict = checkFencedRegister(stale);
  assert.equal(verdict.ok, false);
  assert.deepEqual(kinds(verdict), ["order"]);
  assert.match(verdict.violations[0].message, /fence 1 \(b\).*fence 2 \(a\)/);

  const twice = [...write("a", 3, 0, 1), ...write("b", 3, 5, 6)];
  assert.deepEqual(kinds(checkFencedRegister(twice)), ["duplicate"]);
  // Even when the two writes overlap in time.
  const overlapping = [...write("a", 3, 0, 6), ...write("b", 3, 1, 5)];
  assert.deepEqual(kinds(checkFencedRegister(overlapping)), ["duplicate"]);
  // Closer than the clock tolerance: not ordered, so not flagged.
  const close = [...write("a", 2, 0, 1), ...write("b", 1, 1.5, 2)];
  assert.equal(checkFencedRegister(close, { tolerance: 1 }).ok, true);
  assert.equal(checkFencedRegister(close, { tolerance: 0 }).ok, false);
});

Deno.test("checkFencedRegister() checks the register's own log against the history", () => {
  const history = [...write("a", 1, 0, 1), ...write("b", 2, 2, 3)];
  assert.equal(checkFencedRegister(history, { applied: [1, 2] }).ok, true);
  assert.deepEqual(
    kinds(checkFencedRegister(history, { applied: [2, 1] })),
    ["log-order"],
  );
  assert.deepEqual(
    kinds(checkFencedRegister(history, { applied: [1] })),
    ["log-missing"],
  );
  assert.deepEqual(
    kinds(checkFencedRegister(history, { applied: [1, 2, 7] })),
    ["phantom"],
  );
  // A write of unknown outcome may be in the log.
  const unknown = [...history, ...write("c", 3, 4, 5, "info")];
  assert.equal(checkFencedRegister(unknown, { applied: [1, 2, 3] }).ok, true);
});

Deno.test("checkCounter() reports acknowledged − final as lost updates", () => {
  assert.deepEqual(checkCounter(5, 5), {
    ok: true,
    final: 5,
    acknowledged: 5,
    indeterminate: 0,
    lost: 0,
    lostAtMost: 0,
  });
  const lost = checkCounter(3, 5);
  assert.equal(lost.ok, false);
  assert.equal(lost.lost, 2);
  // An unacknowledged SET that landed (its process was killed) is no loss…
  assert.equal(checkCounter(6, 5, 1).ok, true);
  // …but it may hide one, which lostAtMost shows.
  assert.deepEqual(
    [checkCounter(5, 5, 1).ok, checkCounter(5, 5, 1).lostAtMost],
    [true, 1],
  );
  // More increments than writes: something else wrote the counter.
  assert.equal(checkCounter(7, 5, 1).ok, false);
});

Deno.test("checkValidityWindows() passes back-to-back grants and flags overlapping ones", () => {
  const good = [
    ...grant("a", 1, { from: 0, granted: 1, validUntil: 400, released: 50 }),
    ...grant("b", 2, { from: 2, granted: 52, validUntil: 450, released: 80 }),
    ...grant("a", 3, { from: 60, granted: 82, validUntil: 480 }),
  ];
  const verdict = checkValidityWindows(good);
  assert.equal(verdict.ok, true);
  assert.equal(verdict.grants, 3);
  assert.deepEqual(
    verdict.windows.map((w) => [w.start, w.end]),
    [[1, 50], [52, 80], [82, 480]],
  );

  const overlap = [
    ...grant("a", 1, { from: 0, granted: 1, validUntil: 400, released: 50 }),
    ...grant("b", 2, { from: 2, granted: 30, validUntil: 430, released: 60 }),
  ];
  const bad = checkValidityWindows(overlap);
  assert.deepEqual(kinds(bad), ["overlap"]);
  assert.match(bad.violations[0].message, /b \(fence 2\).*20\.000 ms/);
  // A window that started inside an earlier, long one is caught even when a
  // shorter window lies between them.
  const nested = [
    ...grant("a", 1, { from: 0, granted: 1, validUntil: 400, released: 300 }),
    ...grant("b", 2, { from: 2, granted: 10, validUntil: 400, released: 20 }),
    ...grant("c", 3, { from: 3, granted: 200, validUntil: 600, released: 250 }),
  ];
  assert.equal(checkValidityWindows(nested).violations.length, 2);
});

Deno.test("checkValidityWindows() ends a paused holder's window at its validUntil, and counts extensions", () => {
  // a was paused past its lease: it invoked release at 900, long after its
  // validUntil (400); b was granted at 410 once the key expired. No overlap.
  const paused = [
    ...grant("a", 1, { from: 0, granted: 1, validUntil: 400, released: 900 }),
    ...grant("b", 2, { from: 5, granted: 410, validUntil: 800, released: 500 }),
  ];
  assert.equal(checkValidityWindows(paused).ok, true);
  // Had a renewed its lease to 700 (reported by a later event of its grant),
  // b's grant at 410 overlaps.
  const renewed = [
    ...paused,
    event("a", "write", "invoke", 350, { token: "a-1", validUntil: 700 }),
  ];
  assert.deepEqual(kinds(checkValidityWindows(renewed)), ["overlap"]);
  // A grant without validUntil cannot be checked: flagged, not skipped.
  const malformed = [event("a", "acquire", "ok", 1, { token: "x" })];
  assert.deepEqual(kinds(checkValidityWindows(malformed)), ["malformed"]);
});

Deno.test("checkUniqueFences() passes rising fences and flags repeated or out-of-order ones", () => {
  const good = [
    ...grant("a", 1, { from: 0, granted: 1, validUntil: 400, released: 10 }),
    ...grant("b", 2, { from: 0, granted: 12, validUntil: 400, released: 20 }),
    ...grant("a", 3, { from: 15, granted: 22, validUntil: 400 }),
  ];
  assert.deepEqual(checkUniqueFences(good), {
    ok: true,
    violations: [],
    grants: 3,
  });
  const repeated = [
    ...grant("a", 1, { from: 0, granted: 1, validUntil: 400, released: 10 }),
    ...grant("b", 1, { from: 0, granted: 12, validUntil: 400 }),
  ];
  assert.deepEqual(kinds(checkUniqueFences(repeated)), ["duplicate"]);
  const backwards = [
    ...grant("a", 5, { from: 0, granted: 1, validUntil: 400, released: 10 }),
    ...grant("b", 4, { from: 11, granted: 12, validUntil: 400 }),
  ];
  assert.deepEqual(kinds(checkUniqueFences(backwards)), ["order"]);
  const missing = [event("a", "acquire", "invoke", 0), {
    ...event("a", "acquire", "ok", 1),
    token: "t",
  }];
  assert.deepEqual(kinds(checkUniqueFences(missing)), ["malformed"]);
});

Deno.test("checkLossSignalled() passes a loss signalled by the end of a late release, and flags a silent one", () => {
  /** A release of `token` invoked at `t`, returning at `t + 1`. */
  const release = (token: string, t: number, validUntil: number) => [
    event("a", "release", "invoke", t, { token, fence: 1, validUntil }),
    event("a", "release", "ok", t + 1, { token, value: 0 }),
  ];
  const lost = (token: string, t: number) =>
    event("a", "lost", "info", t, { token });
  const good = [
    ...release("t1", 100, 400), // in time: no loss needed
    lost("t2", 899), // paused past its lease: learned on resume…
    ...release("t2", 900, 400),
    ...release("t3", 900, 400), // …or while releasing
    lost("t3", 900.5),
    event("a", "release", "invoke", 900, { token: "t4", validUntil: 400 }),
  ]; // t4 never returned (killed): skipped
  assert.deepEqual(checkLossSignalled(good), {
    ok: true,
    violations: [],
    expired: 3,
  });
  // Late, and no loss by the time release() returned: silent.
  for (
    const bad of [release("t1", 900, 400), [
      ...release("t1", 900, 400),
      lost("t1", 905),
    ]]
  ) {
    const verdict = checkLossSignalled(bad);
    assert.deepEqual(kinds(verdict), ["silent"]);
    assert.match(verdict.violations[0].message, /500\.0 ms after/);
  }
});

Deno.test("fencedWrite() on a real server applies rising fences and rejects stale and equal ones", async () => {
  await using server = await startRedis();
  await using resource = await server.connect();
  const results = [];
  for (const [fence, value] of [[1, 10], [3, 30], [2, 20], [3, 31], [4, 40]]) {
    results.push(await fencedWrite(resource, "reg", fence, value));
  }
  assert.deepEqual(results, [1, 1, 0, 0, 1]);
  assert.deepEqual(await readRegister(resource, "reg"), {
    fence: 4,
    value: 40,
    applied: [1, 3, 4],
  });
  await assert.rejects(
    fencedWrite(resource, "reg", 1.5, 0),
    (error: Error) =>
      error instanceof RespError &&
      /fence must be an integer/.test(error.message),
  );
  // The history of those writes passes the checker, the log included; the
  // same history claiming the stale write was accepted does not.
  const history = [[1, "ok"], [3, "ok"], [2, "fail"], [3, "fail"], [4, "ok"]]
    .flatMap(([fence, type], i) =>
      write("p", fence as number, 10 * i, 10 * i + 5, type as Event["type"])
    );
  const { applied } = await readRegister(resource, "reg");
  assert.equal(checkFencedRegister(history, { applied }).ok, true);
  history[5] = { ...history[5], type: "ok" };
  assert.deepEqual(kinds(checkFencedRegister(history, { applied })), [
    "log-missing",
    "order",
  ]);
});

Deno.test("sharedNow() of a child process agrees with the parent's within 1 ms", async () => {
  // Ping-pong over pipes: the child's reading c is taken between our t0 and
  // t1, so its clock offset δ satisfies c − t1 ≤ δ ≤ c − t0.
  const module = new URL("./_checkers.ts", import.meta.url).href;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { sharedNow } from ${JSON.stringify(module)};
       for await (const _ of Deno.stdin.readable) console.log(sharedNow());`,
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let low = -Infinity, high = Infinity;
  try {
    for (let i = 0; i < 20; i++) {
      const t0 = sharedNow();
      await writer.write(new Uint8Array([10]));
      const { value } = await reader.read();
      const t1 = sharedNow();
      const c = Number(value);
      low = Math.max(low, c - t1);
      high = Math.min(high, c - t0);
    }
  } finally {
    await writer.close();
    await reader.cancel();
    await child.status;
  }
  assert.ok(low <= high, `no consistent offset: [${low}, ${high}]`);
  assert.ok(
    Math.max(Math.abs(low), Math.abs(high)) < 1,
    `offset in [${low}, ${high}] ms`,
  );
});

Deno.test("checkAtMost() passes `limit` overlapping permits and flags one more", () => {
  const two = [
    ...grant("a", 1, { from: 0, granted: 1, validUntil: 100, released: 50 }),
    ...grant("b", 2, { from: 0, granted: 2, validUntil: 100, released: 60 }),
    // Starts as `a` ends: a permit handed on, not a third at once.
    ...grant("c", 3, { from: 40, granted: 50, validUntil: 200, released: 90 }),
  ];
  const ok = checkAtMost(two, 2, { tolerance: 0 });
  assert.equal(ok.ok, true, JSON.stringify(ok.violations));
  assert.equal(ok.most, 2);
  const three = [
    ...two,
    ...grant("d", 4, { from: 0, granted: 10, validUntil: 100, released: 30 }),
  ];
  const bad = checkAtMost(three, 2, { tolerance: 0 });
  assert.equal(bad.ok, false);
  assert.equal(bad.most, 3);
  assert.match(
    bad.violations[0].message,
    /3 permits valid at once \(limit 2\)/,
  );
});

Deno.test("checkReadersWriters() lets readers overlap and flags a writer beside a reader or another writer", () => {
  const mode = (events: Event[], m: "read" | "write") =>
    events.map((e) =>
      e.op === "acquire" && e.type === "ok" ? { ...e, mode: m } : e
    );
  const readers = [
    ...mode(
      grant("r1", 0, { from: 0, granted: 1, validUntil: 100, released: 50 }),
      "read",
    ),
    ...mode(
      grant("r2", 0, { from: 0, granted: 2, validUntil: 100, released: 60 }),
      "read",
    ),
  ];
  const afterwards = mode(
    grant("w1", 1, { from: 0, granted: 61, validUntil: 200, released: 90 }),
    "write",
  );
  assert.equal(
    checkReadersWriters([...readers, ...afterwards], { tolerance: 0 }).ok,
    true,
  );
  const beside = mode(
    grant("w2", 2, { from: 0, granted: 55, validUntil: 200, released: 95 }),
    "write",
  );
  const bad = checkReadersWriters([...readers, ...afterwards, ...beside], {
    tolerance: 0,
  });
  assert.equal(bad.ok, false);
  // w2 overlaps r2 (55..60) and w1 (61..90), each reported once.
  assert.equal(bad.violations.length, 2, JSON.stringify(bad.violations));
});
