/**
 * deadbolt's metrics and spans as the real OpenTelemetry SDK receives them
 * through the API's global registration: written once, run by `deno test`
 * (tests/telemetry_test.ts) and `node --test` (tests/node/telemetry.node.ts).
 * Runtime-neutral as tests/_core_cases.ts is: locks are disposed by hand.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  Lock,
  LockKeyError,
  LockLostError,
  LockTimeoutError,
  MultiLock,
  ReadWriteLock,
  Redlock,
  Semaphore,
} from "../mod.ts";
import type { Connection } from "./_core_cases.ts";
import { type Otel, total } from "./_otel.ts";
import { abortedAt, lineUp, sleep, within } from "./_util.ts";

/** A runtime with a client library and the SDK, as the cases see it. */
export interface TelemetryUnderTest {
  /** What `deadbolt.client` says for this client. */
  readonly clientKind: string;
  /** Opens a connection to the test server. */
  connect(): Promise<Connection>;
  /** Registers the SDK globally, until disposed of. */
  register(): Otel;
}

/** One behaviour, run with a fresh connection and SDK. */
export interface TelemetryCase {
  readonly name: string;
  /** `under` opens more connections, as other processes would have. */
  run(
    connection: Connection,
    otel: Otel,
    clientKind: string,
    under: TelemetryUnderTest,
  ): Promise<void>;
}

/** Runs `kase` under `under`: connects, registers, and cleans up after. */
export async function runTelemetryCase(
  kase: TelemetryCase,
  under: TelemetryUnderTest,
): Promise<void> {
  const connection = await under.connect();
  try {
    const otel = under.register();
    try {
      await kase.run(connection, otel, under.clientKind, under);
    } finally {
      await otel[Symbol.asyncDispose]();
    }
  } finally {
    await connection.close();
  }
}

const KIND = "deadbolt.lock.kind";
const OUTCOME = "deadbolt.acquire.outcome";

async function released(lock: Lock): Promise<void> {
  await lock[Symbol.asyncDispose]();
}

/** The telemetry cases. */
export const TELEMETRY_CASES: readonly TelemetryCase[] = [
  {
    name:
      "a contended run counts every acquisition, wait, hold and handover, in metrics and spans",
    async run({ client }, otel, clientKind) {
      const options = { telemetryName: "report", timeout: 5_000 };
      const workers = 3, rounds = 5;
      await within(
        Promise.all(Array.from({ length: workers }, async () => {
          for (let i = 0; i < rounds; i++) {
            const lock = await Lock.acquire(client, "report", options);
            await sleep(1);
            await released(lock);
          }
        })),
        10_000,
        "the contended run",
      );
      const all = workers * rounds;
      const mine = {
        [KIND]: "lock",
        "deadbolt.client": clientKind,
        "deadbolt.lock.name": "report",
      };
      const acquisitions = await otel.points("deadbolt.lock.acquisitions");
      assert.equal(total(acquisitions.points, mine), all);
      const wait = await otel.points("deadbolt.lock.wait.duration");
      assert.equal(wait.unit, "s");
      assert.equal(
        total(wait.points, { ...mine, [OUTCOME]: "acquired" }),
        all,
      );
      const hold = await otel.points("deadbolt.lock.hold.duration");
      assert.equal(
        total(hold.points, { ...mine, "deadbolt.hold.end": "released" }),
        all,
      );
      // One client: waiters line up in this process and are handed the
      // lock; the first acquisition found it free.
      const handovers = await otel.points("deadbolt.lock.handovers");
      const handed = total(handovers.points, mine);
      assert.ok(handed >= 1 && handed < all, `${handed} handovers of ${all}`);
      for (const { attributes } of handovers.points) {
        assert.ok(
          ["local", "eager", "remote"].includes(
            attributes["deadbolt.handover.type"] as string,
          ),
        );
      }
      const waiters = await otel.points("deadbolt.lock.waiters");
      assert.equal(total(waiters.points), 0);
      const spans = otel.spans();
      assert.equal(spans.filter((s) => s.name === "acquire lock").length, all);
      const holds = spans.filter((s) => s.name === "hold lock");
      assert.equal(holds.length, all);
      for (const span of holds) {
        assert.equal(span.attributes["deadbolt.client"], clientKind);
        assert.equal(span.attributes["deadbolt.hold.end"], "released");
      }
    },
  },
  {
    name: "the waiters gauge counts the acquire() calls waiting now",
    async run({ client }, otel) {
      const holder = await Lock.acquire(client, "gauge");
      const waiters = [1, 2].map(() =>
        Lock.acquire(client, "gauge", { timeout: 5_000 })
      );
      await lineUp(client, "gauge", 2);
      const waiting = await otel.points("deadbolt.lock.waiters");
      assert.equal(waiting.unit, "{waiter}");
      assert.equal(total(waiting.points, { [KIND]: "lock" }), 2);
      await released(holder);
      for (const waiter of waiters) {
        await released(await within(waiter, 5_000, "a waiter's acquisition"));
      }
      const after = await otel.points("deadbolt.lock.waiters");
      assert.equal(total(after.points), 0);
    },
  },
  {
    name:
      "a timeout, a busy try, a cancelled wait and an error each have their outcome",
    async run({ client, command }, otel) {
      const holder = await Lock.acquire(client, "busy");
      try {
        await assert.rejects(
          Lock.acquire(client, "busy", { timeout: 50 }),
          LockTimeoutError,
        );
        assert.equal(await Lock.tryAcquire(client, "busy"), null);
        const controller = new AbortController();
        const cancelled = Lock.acquire(client, "busy", {
          signal: controller.signal,
        });
        await lineUp(client, "busy", 1);
        controller.abort();
        await assert.rejects(within(cancelled, 5_000, "the cancelled wait"), {
          name: "AbortError",
        });
        // A foreign key at a lock's name: an error, with its type.
        await command("HSET", "deadbolt:{foreign}", "field", "value");
        await assert.rejects(Lock.acquire(client, "foreign"), LockKeyError);
      } finally {
        await released(holder);
      }
      const waiters = (await otel.points("deadbolt.lock.waiters")).points;
      assert.equal(total(waiters), 0, "no waiter left counted");
      const wait = (await otel.points("deadbolt.lock.wait.duration")).points;
      assert.equal(total(wait, { [OUTCOME]: "timeout" }), 1);
      assert.equal(total(wait, { [OUTCOME]: "busy" }), 1);
      assert.equal(total(wait, { [OUTCOME]: "cancelled" }), 1);
      assert.equal(
        total(wait, { [OUTCOME]: "error", "error.type": "LockKeyError" }),
        1,
      );
      // A refused try is no timeout.
      const timeouts = await otel.points("deadbolt.lock.timeouts");
      assert.equal(total(timeouts.points), 1);
      const timedOut = otel.spans().find((s) =>
        s.name === "acquire lock" && s.attributes[OUTCOME] === "timeout"
      );
      assert.ok(timedOut, "a span for the timed-out wait");
      assert.equal(timedOut.status.code, 2);
      assert.equal(timedOut.attributes["error.type"], "LockTimeoutError");
    },
  },
  {
    name:
      "a lost hold counts the loss, ends its span as an error, and says whether Redis revoked it (at a renewal or the release) or it expired",
    async run({ client, command }, otel) {
      const revoked = await Lock.acquire(client, "revoked", {
        ttl: 2_000,
        renewInterval: 50,
      });
      await command("DEL", revoked.key);
      await abortedAt(revoked.signal);
      assert.ok(revoked.signal.reason instanceof LockLostError);
      await released(revoked);
      const expired = await Lock.acquire(client, "expired", {
        ttl: 100,
        autoExtend: false,
      });
      await abortedAt(expired.signal);
      await released(expired);
      // Taken behind its back and first noticed at the release.
      const taken = await Lock.acquire(client, "taken");
      await command("SET", taken.key, "another-owner", "PX", "60000");
      assert.equal(await taken.release(), false);

      const losses = (await otel.points("deadbolt.lock.losses")).points;
      assert.equal(total(losses, { "deadbolt.loss.reason": "revoked" }), 2);
      assert.equal(total(losses, { "deadbolt.loss.reason": "expired" }), 1);
      const hold = (await otel.points("deadbolt.lock.hold.duration")).points;
      assert.equal(total(hold, { "deadbolt.hold.end": "lost" }), 3);
      assert.equal(total(hold, { "deadbolt.hold.end": "released" }), 0);
      const lost = otel.spans().filter((s) => s.name === "hold lock");
      assert.equal(lost.length, 3);
      for (const span of lost) {
        assert.equal(span.status.code, 2);
        const event = span.events.find((e) => e.name === "deadbolt.lock.lost");
        assert.ok(event, "a deadbolt.lock.lost event");
        assert.match(String(event.attributes?.["deadbolt.loss.message"]), /./);
      }
    },
  },
  {
    name:
      "background renewals are counted on time, and late after a blocked event loop",
    async run({ client }, otel) {
      const lock = await Lock.acquire(client, "renewed", {
        ttl: 1_000,
        renewInterval: 100,
      });
      try {
        const renewals = async (outcome: string) =>
          total((await otel.points("deadbolt.lock.renewals")).points, {
            "deadbolt.renewal.outcome": outcome,
          });
        const deadline = performance.now() + 5_000;
        while (await renewals("on_time") < 2 && performance.now() < deadline) {
          await sleep(20);
        }
        assert.ok(await renewals("on_time") >= 2, "two renewals on time");
        assert.equal(await renewals("late"), 0);
        // Blocked for 600 ms, the next renewal goes out with about 350 ms
        // of the lease left, less than half of the 850 ms that one on time
        // leaves.
        const blocked = performance.now();
        while (performance.now() - blocked < 600) {
          // the event loop is blocked
        }
        while (await renewals("late") < 1 && performance.now() < deadline) {
          await sleep(20);
        }
        assert.ok(await renewals("late") >= 1, "a late renewal");
        assert.equal(await renewals("failed"), 0);
        assert.equal(lock.held, true);
      } finally {
        await released(lock);
      }
    },
  },
  {
    name:
      "each kind and the client are named, and the lock's name only when asked for",
    async run({ client }, otel, clientKind) {
      const lock = new Lock(client, "plain");
      const semaphore = new Semaphore(client, "pool", {
        limit: 2,
        telemetryName: "pool",
      });
      await lock.acquire();
      await lock.release();
      await semaphore.acquire();
      await semaphore.release();
      const acquisitions = (await otel.points("deadbolt.lock.acquisitions"))
        .points;
      assert.deepEqual(
        acquisitions.map(({ attributes }) => attributes).sort((a, b) =>
          String(a[KIND]).localeCompare(String(b[KIND]))
        ),
        [
          { [KIND]: "lock", "deadbolt.client": clientKind },
          {
            [KIND]: "semaphore",
            "deadbolt.client": clientKind,
            "deadbolt.lock.name": "pool",
          },
        ],
      );
      assert.deepEqual(
        otel.spans().map((s) => s.name).sort(),
        ["acquire lock", "acquire semaphore", "hold lock", "hold semaphore"],
      );
    },
  },
  {
    name:
      "a handover is counted by its type: local within a process, remote across connections",
    async run({ client }, otel, _clientKind, under) {
      // Fenced, so that the handover waits for Redis (never eager).
      const local = { telemetryName: "local", fencing: true, timeout: 5_000 };
      const holder = await Lock.acquire(client, "local", local);
      const waiter = Lock.acquire(client, "local", local);
      await lineUp(client, "local", 1);
      await released(holder);
      const handed = await within(waiter, 5_000, "the local handover");
      assert.equal(handed.fence, holder.fence! + 1);
      await released(handed);

      const other = await under.connect();
      try {
        const remote = { telemetryName: "remote", timeout: 5_000 };
        const first = await Lock.acquire(client, "remote", remote);
        const second = Lock.acquire(other.client, "remote", remote);
        await lineUp(other.client, "remote", 1);
        await released(first);
        await released(await within(second, 5_000, "the remote grant"));
      } finally {
        await other.close();
      }
      const handovers = (await otel.points("deadbolt.lock.handovers")).points;
      const of = (name: string, type: string) =>
        total(handovers, {
          "deadbolt.lock.name": name,
          "deadbolt.handover.type": type,
        });
      assert.deepEqual(
        [of("local", "local"), of("local", "eager"), of("local", "remote")],
        [1, 0, 0],
      );
      assert.deepEqual(
        [of("remote", "remote"), of("remote", "local"), of("remote", "eager")],
        [1, 0, 0],
      );
      const holds = otel.spans().filter((s) => s.name === "hold lock");
      const fenced = holds.filter((s) => "deadbolt.lock.fence" in s.attributes);
      assert.deepEqual(
        fenced.map((s) => s.attributes["deadbolt.lock.fence"]),
        [holder.fence, handed.fence],
      );
      assert.equal(
        fenced[1].attributes["deadbolt.handover.type"],
        "local",
      );
    },
  },
  {
    name:
      "a detached hold ends as detached, and its adoption is a hold without a wait",
    async run({ client }, otel) {
      const lock = await Lock.acquire(client, "passed-on");
      const token = lock.detach();
      const adopted = await Lock.adopt(client, "passed-on", token);
      assert.ok(adopted, "adopted");
      await released(adopted);
      const hold = (await otel.points("deadbolt.lock.hold.duration")).points;
      assert.equal(total(hold, { "deadbolt.hold.end": "detached" }), 1);
      assert.equal(total(hold, { "deadbolt.hold.end": "released" }), 1);
      const acquisitions = await otel.points("deadbolt.lock.acquisitions");
      assert.equal(total(acquisitions.points), 2);
      const wait = await otel.points("deadbolt.lock.wait.duration");
      assert.equal(total(wait.points), 1);
    },
  },
  {
    name:
      "Redlock, MultiLock and a ReadWriteLock's holds are named by kind, in metrics and spans",
    async run({ client }, otel) {
      const redlock = await Redlock.acquire([client], "quorum");
      await redlock.release();
      const multi = await MultiLock.acquire(client, ["left", "right"]);
      await multi.release();
      const reader = await ReadWriteLock.read(client, "table");
      await reader.release();
      const writer = await ReadWriteLock.write(client, "table");
      await writer.release();
      const acquisitions = (await otel.points("deadbolt.lock.acquisitions"))
        .points;
      for (const kind of ["redlock", "multi", "read", "write"]) {
        assert.equal(total(acquisitions, { [KIND]: kind }), 1, kind);
      }
      assert.deepEqual(
        otel.spans().filter((s) => s.name.startsWith("acquire ")).map((s) =>
          s.name
        ),
        [
          "acquire lock",
          "acquire locks",
          "acquire read lock",
          "acquire write lock",
        ],
      );
    },
  },
];
