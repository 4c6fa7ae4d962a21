import assert from "node:assert/strict";
import { Redis, type RedisOptions } from "npm:ioredis@6";
import { createClient } from "npm:redis@6";
import {
  fromDbRedis,
  fromIoredis,
  fromNodeRedis,
  Lock,
  LockLostError,
  LockTimeoutError,
  type RedisClient,
  type ScriptClient,
} from "../mod.ts";
import { freePort, type RedisServer, startRedis } from "./_redis.ts";
import { DbRedisShape, type RespClient } from "./_resp.ts";
import {
  abortedAt,
  lineUp,
  type ScriptKind,
  scriptKind,
  sleep,
  until,
  within,
} from "./_util.ts";

// Server-side faults (reliability.md (b), F8–F35), each injected by the
// server's own means: stopping or restarting it, DEBUG SLEEP, SIGSTOP,
// CLIENT PAUSE, PEXPIRE and SCRIPT FLUSH from a side connection, memory
// limits, replicas, ACL users and TLS.

const HOST = "127.0.0.1";
// Room for a loaded 2-core machine, small next to the bounds under test.
const SLACK = 250;
// "Promptly": far below the 5 s timeout and commandTimeout the calls get.
const PROMPT = 1_000;

/** Runs `start` and returns its rejection and how long it took; fails if it resolves. */
async function rejection(
  start: () => Promise<unknown>,
): Promise<{ error: unknown; ms: number }> {
  const started = performance.now();
  let value: unknown;
  try {
    value = await start();
  } catch (error) {
    return { error, ms: performance.now() - started };
  }
  return assert.fail(`resolved with ${value} instead of rejecting`);
}

const message = (error: unknown) => String((error as Error)?.message);
const isTimeoutError = (error: unknown) =>
  error instanceof DOMException && error.name === "TimeoutError";

// --- Clients -----------------------------------------------------------------

/** A connected client as users pass it, and what the tests need around it. */
interface Opened {
  client: RedisClient;
  /** The same client through its explicit adapter, for wrapping. */
  adapted: ScriptClient;
  /** Resolves once the client has seen its connection drop. */
  dropped: Promise<void>;
  close(): Promise<void>;
}

// ioredis arms a `disconnectTimeout` timer when told to disconnect a socket
// that is already gone, and nothing clears it: keep it short and wait it out.
const DISCONNECT_TIMEOUT = 20;

function newIoredis(port: number, options: RedisOptions = {}): Redis {
  const redis = new Redis({
    host: HOST,
    port,
    disconnectTimeout: DISCONNECT_TIMEOUT,
    ...options,
  });
  // Without a listener ioredis logs every failed reconnect.
  redis.on("error", () => {});
  return redis;
}

async function closeIoredis(redis: Redis): Promise<void> {
  if (redis.status === "ready") {
    await redis.quit();
    return;
  }
  redis.disconnect();
  await sleep(DISCONNECT_TIMEOUT + 10);
}

async function openIoredis(
  port: number,
  options: RedisOptions = {},
): Promise<Opened & { redis: Redis }> {
  const redis = newIoredis(port, options);
  const dropped = new Promise<void>((r) => redis.once("close", () => r()));
  // Not ping(): with enableOfflineQueue: false it fails until connected.
  const ready = new Promise((r) => redis.once("ready", r));
  await within(ready, 5_000, "ioredis connecting");
  return {
    redis,
    client: redis,
    adapted: fromIoredis(redis),
    dropped,
    close: () => closeIoredis(redis),
  };
}

const RECONNECT_DELAY = 50;

/** node-redis with a fixed reconnect delay, so closing can wait it out. */
function newNodeRedis(port: number, disableOfflineQueue = false) {
  let retryEnds = 0;
  const client = createClient({
    disableOfflineQueue,
    socket: {
      host: HOST,
      port,
      reconnectStrategy: () => {
        retryEnds = performance.now() + RECONNECT_DELAY;
        return RECONNECT_DELAY;
      },
    },
  });
  // node-redis throws an unhandled 'error' event on a dropped connection.
  client.on("error", () => {});
  const close = async () => {
    if (client.isReady) return void await client.close();
    client.destroy();
    // destroy() does not cancel a pending reconnect delay; let it run out.
    await sleep(Math.max(0, retryEnds - performance.now()) + 10);
  };
  return { client, close };
}

async function openNodeRedis(
  port: number,
  disableOfflineQueue = false,
): Promise<Opened> {
  const { client, close } = newNodeRedis(port, disableOfflineQueue);
  const dropped = new Promise<void>((r) => client.once("error", () => r()));
  await client.connect();
  return { client, adapted: fromNodeRedis(client), dropped, close };
}

async function openDbRedis(server: RedisServer): Promise<Opened> {
  const resp = await server.connect();
  const client = new DbRedisShape(resp);
  return {
    client,
    adapted: fromDbRedis(client),
    dropped: resp.closed,
    close: () => resp[Symbol.asyncDispose](),
  };
}

/** The three client shapes most tests run with. */
const CLIENTS: [string, (server: RedisServer) => Promise<Opened>][] = [
  ["ioredis", (server) => openIoredis(server.port)],
  ["node-redis", (server) => openNodeRedis(server.port)],
  ["@db/redis shape", openDbRedis],
];

// --- Observing the library's script calls -------------------------------------

type Kind = ScriptKind;

/** One settled script call. */
interface Settled {
  kind: Kind;
  method: "eval" | "evalsha";
  reply?: unknown;
  error?: unknown;
}

/** A client that forwards to `inner` and reports every settled script call. */
class Observed implements ScriptClient {
  readonly log: Settled[] = [];
  #inner: ScriptClient;
  #waiters = new Set<(settled: Settled) => boolean>();

  constructor(inner: ScriptClient) {
    this.#inner = inner;
  }

  eval(script: string, keys: string[], args: string[]): Promise<unknown> {
    return this.#watch("eval", script, this.#inner.eval(script, keys, args));
  }

  evalsha(sha1: string, keys: string[], args: string[]): Promise<unknown> {
    return this.#watch(
      "evalsha",
      sha1,
      this.#inner.evalsha!(sha1, keys, args),
    );
  }

  /** Resolves with the next call of `kind` that settles and passes `test`. */
  next(
    kind: Kind,
    test: (s: Settled) => boolean = () => true,
  ): Promise<Settled> {
    return new Promise((resolve) => {
      const waiter = (settled: Settled) => {
        if (settled.kind !== kind || !test(settled)) return false;
        resolve(settled);
        return true;
      };
      this.#waiters.add(waiter);
    });
  }

  count(kind: Kind): number {
    return this.log.filter((s) => s.kind === kind).length;
  }

  #watch(
    method: Settled["method"],
    script: string,
    call: Promise<unknown>,
  ): Promise<unknown> {
    const kind = scriptKind(script);
    const record = (settled: Settled) => {
      this.log.push(settled);
      for (const waiter of this.#waiters) {
        if (waiter(settled)) this.#waiters.delete(waiter);
      }
    };
    call.then(
      (reply) => record({ kind, method, reply }),
      (error) => record({ kind, method, error }),
    );
    return call;
  }
}

const ok = (s: Settled) => s.error === undefined;
const renewed = (s: Settled) => s.reply === 1 || s.reply === 1n;

// --- F8 ------------------------------------------------------------------------

/** A client that cannot reach Redis, and the error it reports. */
interface DownCase {
  name: string;
  open(server: RedisServer): Promise<Opened>;
  /** deadbolt's commandTimeout for the case; the client errors before it unless queued. */
  commandTimeout: number;
  expect(error: unknown): boolean;
}

const DOWN_CASES: DownCase[] = [
  {
    name: "ioredis with maxRetriesPerRequest: 0",
    open: (server) => openIoredis(server.port, { maxRetriesPerRequest: 0 }),
    commandTimeout: 5_000,
    expect: (error) => (error as Error).name === "MaxRetriesPerRequestError",
  },
  {
    name: "ioredis with enableOfflineQueue: false",
    open: (server) => openIoredis(server.port, { enableOfflineQueue: false }),
    commandTimeout: 5_000,
    expect: (error) => /enableOfflineQueue/.test(message(error)),
  },
  {
    name: "node-redis with disableOfflineQueue: true",
    open: (server) => openNodeRedis(server.port, true),
    commandTimeout: 5_000,
    expect: (error) => /client is offline/.test(message(error)),
  },
  {
    name: "@db/redis shape",
    open: openDbRedis,
    commandTimeout: 5_000,
    expect: (error) => /RESP connection closed/.test(message(error)),
  },
  // These clients queue commands while reconnecting; only deadbolt's
  // commandTimeout bounds the wait, and it is a TimeoutError, not a
  // LockTimeoutError.
  {
    name: "ioredis with its offline queue (default)",
    open: (server) => openIoredis(server.port),
    commandTimeout: 300,
    expect: isTimeoutError,
  },
  {
    name: "node-redis with its offline queue (default)",
    open: (server) => openNodeRedis(server.port),
    commandTimeout: 300,
    expect: isTimeoutError,
  },
];

/** Asserts acquire() and tryAcquire() both reject promptly with `expect`. */
async function assertRefused(
  client: RedisClient,
  expect: (error: unknown) => boolean,
  commandTimeout: number,
): Promise<void> {
  const bound = Math.min(PROMPT, commandTimeout + SLACK);
  for (
    const attempt of [
      () => Lock.acquire(client, "down", { timeout: 5_000, commandTimeout }),
      () => Lock.tryAcquire(client, "down", { commandTimeout }),
    ]
  ) {
    // tryAcquire() resolving null ("held elsewhere") fails here too.
    const { error, ms } = await rejection(attempt);
    assert.ok(!(error instanceof LockTimeoutError), String(error));
    assert.ok(expect(error), `unexpected error: ${error}`);
    assert.ok(ms < bound, `took ${ms} ms (bound ${bound} ms)`);
    if (isTimeoutError(error)) {
      assert.ok(ms >= commandTimeout - 5, `gave up after ${ms} ms`);
    }
  }
}

Deno.test("Redis down at acquire rejects promptly with the client's own error, never LockTimeoutError or null (F8)", async (t) => {
  for (const kase of DOWN_CASES) {
    await t.step(`server stopped: ${kase.name}`, async () => {
      await using server = await startRedis();
      const opened = await kase.open(server);
      try {
        // Control: the same client locks fine while the server is up.
        const lock = await Lock.acquire(opened.client, "down");
        assert.equal(await lock.release(), true);
        await server.stop();
        await opened.dropped;
        await assertRefused(opened.client, kase.expect, kase.commandTimeout);
      } finally {
        await opened.close();
      }
    });
  }

  await t.step(
    "nothing listening: ioredis that gives up reconnecting",
    async () => {
      const redis = newIoredis(freePort(), { retryStrategy: () => null });
      try {
        await assertRefused(
          redis,
          (error) => /Connection is closed/.test(message(error)),
          5_000,
        );
      } finally {
        await closeIoredis(redis);
      }
    },
  );

  await t.step(
    "nothing listening: ioredis with maxRetriesPerRequest: 0",
    async () => {
      const redis = newIoredis(freePort(), { maxRetriesPerRequest: 0 });
      try {
        await assertRefused(
          redis,
          (error) => (error as Error).name === "MaxRetriesPerRequestError",
          5_000,
        );
      } finally {
        await closeIoredis(redis);
      }
    },
  );

  await t.step(
    "nothing listening: node-redis with disableOfflineQueue: true",
    async () => {
      const { client, close } = newNodeRedis(freePort(), true);
      const refused = new Promise((r) => client.once("error", r));
      // connect() keeps retrying (and pending) while nothing listens.
      const connecting = client.connect().catch(() => {});
      try {
        assert.match(message(await refused), /ECONNREFUSED/);
        await assertRefused(
          client,
          (error) => /client is offline/.test(message(error)),
          5_000,
        );
      } finally {
        await close();
        await connecting;
      }
    },
  );
  // The @db/redis shape cannot exist without a connection (Deno.connect
  // refuses first), so there is no deadbolt call to make for it here.
});

// --- F9 ------------------------------------------------------------------------

Deno.test("Redis down at release rejects within commandTimeout, stops renewal, and keeps the body error under await using (F9)", async (t) => {
  const TTL = 300;
  const failing: [string, (server: RedisServer) => Promise<Opened>, RegExp][] =
    [
      [
        "ioredis with maxRetriesPerRequest: 0",
        (server) => openIoredis(server.port, { maxRetriesPerRequest: 0 }),
        /max retries per request/,
      ],
      [
        "node-redis with disableOfflineQueue: true",
        (server) => openNodeRedis(server.port, true),
        /client is offline/,
      ],
      ["@db/redis shape", openDbRedis, /RESP connection closed/],
    ];
  for (const [name, open, expected] of failing) {
    await t.step(
      `release() rejects with the client's error: ${name}`,
      async () => {
        await using server = await startRedis();
        const opened = await open(server);
        try {
          const client = new Observed(opened.adapted);
          const lock = await Lock.acquire(client, "job", { ttl: TTL });
          // Auto-extension is running before the fault.
          await within(client.next("extend", renewed), TTL, "a renewal");
          await server.stop();
          await opened.dropped;
          const { error, ms } = await rejection(() => lock.release());
          assert.match(message(error), expected);
          assert.ok(ms < PROMPT, `release() took ${ms} ms`);
          assert.equal(lock.held, false);
          // No renewal (nor release retry) runs after release() gave up.
          const calls = client.log.length;
          await sleep(TTL);
          assert.equal(client.log.length, calls, "calls after release()");
          assert.equal(client.count("release"), 1);
        } finally {
          await opened.close();
        }
      },
    );
  }

  await t.step(
    "release() on a client that queues rejects with TimeoutError after commandTimeout",
    async () => {
      await using server = await startRedis();
      const opened = await openIoredis(server.port);
      try {
        const client = new Observed(opened.adapted);
        const lock = await Lock.acquire(client, "job", {
          ttl: TTL,
          commandTimeout: 300,
        });
        await server.stop();
        await opened.dropped;
        const { error, ms } = await rejection(() => lock.release());
        assert.ok(isTimeoutError(error), String(error));
        assert.ok(ms >= 295 && ms < 300 + SLACK, `release() took ${ms} ms`);
        const calls = client.log.length;
        await sleep(TTL);
        assert.equal(client.log.length, calls, "calls after release()");
      } finally {
        await opened.close();
      }
    },
  );

  await t.step(
    "await using keeps the body error as SuppressedError.suppressed",
    async () => {
      await using server = await startRedis();
      const opened = await openIoredis(server.port, {
        maxRetriesPerRequest: 0,
      });
      try {
        const body = new Error("the job failed");
        const { error } = await rejection(async () => {
          await using _lock = await Lock.acquire(opened.client, "scoped");
          await server.stop();
          await opened.dropped;
          throw body;
        });
        assert.ok(error instanceof SuppressedError, String(error));
        assert.equal(error.suppressed, body);
        assert.equal((error.error as Error).name, "MaxRetriesPerRequestError");
      } finally {
        await opened.close();
      }
    },
  );

  await t.step(
    "a release() that failed can be called again once Redis is back",
    async () => {
      await using server = await startRedis({
        args: ["--appendonly", "yes", "--appendfsync", "always"],
      });
      const opened = await openIoredis(server.port, {
        maxRetriesPerRequest: 0,
        retryStrategy: () => 20,
      });
      try {
        const lock = await Lock.acquire(opened.client, "retry", {
          ttl: 10_000,
        });
        server.signal("SIGKILL");
        await opened.dropped;
        await assert.rejects(lock.release(), /max retries per request/);
        const ready = new Promise((r) => opened.redis.once("ready", r));
        await server.restart();
        await within(ready, 2_000, "the reconnect");
        await using side = await server.connect();
        assert.equal(await side.send("GET", lock.key), lock.token);
        assert.equal(await lock.release(), true);
        assert.equal(await side.send("EXISTS", lock.key), 0);
        assert.equal(await lock.release(), false);
      } finally {
        await opened.close();
      }
    },
  );
});

// --- F11, F12 ------------------------------------------------------------------

Deno.test("a restart without persistence loses the key; the holder learns it at its next renewal, fences restart at 1 (F11)", async () => {
  const TTL = 3_000;
  await using server = await startRedis();
  // A quick fixed reconnect, so the bound below is about deadbolt.
  const opened = await openIoredis(server.port, { retryStrategy: () => 20 });
  try {
    for (let i = 0; i < 2; i++) {
      const lock = await Lock.acquire(opened.client, "report", {
        fencing: true,
      });
      await lock.release();
    }
    await using a = await Lock.acquire(opened.client, "report", {
      ttl: TTL,
      fencing: true,
    });
    assert.equal(a.fence, 3);
    const lost = abortedAt(a.signal);
    await server.restart();
    const restarted = performance.now();
    {
      await using side = await server.connect();
      assert.equal(await side.send("EXISTS", a.key), 0, "key after restart");
    }
    const at = await within(lost, TTL, "the loss");
    assert.ok(
      at - restarted <= TTL / 3 + SLACK,
      `lost ${at - restarted} ms after the restart`,
    );
    assert.ok(at <= a.validUntil);
    assert.ok(a.signal.reason instanceof LockLostError);
    // Found gone by a renewal, not run out by the clock.
    assert.match(a.signal.reason.message, /expired or was deleted/);

    // The counter went with the data: B's fence is below A's. A resource
    // with a strict `fence > last` check refuses B (liveness, not safety);
    // the README lists restart without persistence as a non-promise.
    await using b = await Lock.acquire(opened.client, "report", {
      fencing: true,
      timeout: 0,
    });
    assert.equal(b.fence, 1);
    assert.ok(b.fence! < a.fence!);
    assert.equal(await a.release(), false);
    await using side = await server.connect();
    assert.equal(await side.send("GET", b.key), b.token);
    assert.equal(await b.release(), true);
  } finally {
    await opened.close();
  }
});

Deno.test("a crash and restart with appendfsync always keeps the key and its PTTL, and the holder renews on (F12)", async () => {
  const TTL = 3_000;
  await using server = await startRedis({
    args: ["--appendonly", "yes", "--appendfsync", "always"],
  });
  const opened = await openIoredis(server.port, { retryStrategy: () => 20 });
  try {
    const client = new Observed(opened.adapted);
    await using a = await Lock.acquire(client, "durable", {
      ttl: TTL,
      fencing: true,
    });
    let before: number;
    {
      await using side = await server.connect();
      before = await side.send("PTTL", a.key) as number;
    }
    server.signal("SIGKILL");
    await opened.dropped;
    await server.restart();
    await using side = await server.connect();
    assert.equal(await side.send("GET", a.key), a.token, "key after restart");
    const after = await side.send("PTTL", a.key) as number;
    assert.ok(after > 0 && after <= before, `PTTL ${before} → ${after}`);

    // No second holder.
    const other = await openDbRedis(server);
    try {
      assert.equal(await Lock.tryAcquire(other.client, "durable"), null);
    } finally {
      await other.close();
    }

    // The next renewal goes through the reconnected client (EVALSHA on an
    // empty script cache → EVAL) and succeeds.
    await within(
      client.next("extend", renewed),
      TTL / 3 + SLACK * 2,
      "a renewal after the restart",
    );
    const renewedTo = await side.send("PTTL", a.key) as number;
    assert.ok(renewedTo > after, `PTTL ${after} → ${renewedTo}`);
    assert.equal(a.held, true);
    assert.equal(a.signal.aborted, false);
    assert.equal(await side.send("GET", a.key), a.token);

    assert.equal(await a.release(), true);
    // The fence counter survived too.
    await using b = await Lock.acquire(client, "durable", { fencing: true });
    assert.equal(b.fence, a.fence! + 1);
  } finally {
    await opened.close();
  }
});

// --- F20 -----------------------------------------------------------------------

/** The time one holder was entitled to the lock: [acquired, min(release, validUntil)]. */
interface Window {
  who: string;
  from: number;
  to: number;
}

function assertExclusive(windows: Window[]): void {
  for (const a of windows) {
    for (const b of windows) {
      if (a === b) continue;
      assert.ok(
        a.to <= b.from || b.to <= a.from,
        `${a.who} [${a.from.toFixed(1)}, ${
          a.to.toFixed(1)
        }] overlaps ${b.who} [${b.from.toFixed(1)}, ${b.to.toFixed(1)}]`,
      );
    }
  }
}

/**
 * Holder A (auto-extended) and waiters B and C, each on its own connection;
 * `stall` freezes the server for 2×ttl once both waiters have seen A hold.
 */
async function stallWhileHeld(
  server: RedisServer,
  stall: (ms: number) => Promise<void>,
): Promise<void> {
  const TTL = 300;
  const opened = await Promise.all([0, 1, 2].map(() => openDbRedis(server)));
  try {
    const [a, b, c] = opened.map((o) => new Observed(o.adapted));
    await using holder = await Lock.acquire(a, "stall", { ttl: TTL });
    const windows: Window[] = [];
    const held = performance.now();
    const lost = abortedAt(holder.signal);
    const waiter = async (client: Observed, who: string) => {
      const lock = await Lock.acquire(client, "stall", {
        ttl: TTL,
        timeout: 10_000,
      });
      const from = performance.now();
      await sleep(30);
      windows.push({
        who,
        from,
        to: Math.min(performance.now(), lock.validUntil),
      });
      assert.equal(await lock.release(), true, `${who} released its own`);
    };
    const seen = [b.next("acquire", ok), c.next("acquire", ok)];
    const waiting = [waiter(b, "B"), waiter(c, "C")];
    await within(Promise.all(seen), 1_000, "both waiters seeing A hold");
    await stall(2 * TTL);
    const at = await within(lost, 2 * TTL, "A's loss");
    await within(Promise.all(waiting), 5_000, "the waiters' turns");

    assert.ok(holder.signal.reason instanceof LockLostError);
    assert.ok(
      at <= holder.validUntil,
      `lost ${at - holder.validUntil} ms late`,
    );
    windows.push({ who: "A", from: held, to: holder.validUntil });
    for (const w of windows.filter((w) => w.who !== "A")) {
      assert.ok(w.from >= at, `${w.who} acquired before A's loss`);
    }
    assertExclusive(windows);
    assert.equal(await holder.release(), false);
    await using side = await server.connect();
    assert.equal(await side.send("EXISTS", holder.key), 0, "no resurrection");
  } finally {
    await Promise.all(opened.map((o) => o.close()));
  }
}

Deno.test("a stalled server loses the holder by its validUntil and never yields two overlapping holders (F20)", async (t) => {
  await t.step("DEBUG SLEEP for 2×ttl", async () => {
    await using server = await startRedis();
    await using staller = await server.connect();
    await stallWhileHeld(server, async (ms) => {
      await staller.send("DEBUG", "SLEEP", String(ms / 1_000));
    });
  });
  await t.step("SIGSTOP of redis-server for 2×ttl", async () => {
    await using server = await startRedis();
    await stallWhileHeld(server, async (ms) => {
      server.signal("SIGSTOP");
      try {
        await sleep(ms);
      } finally {
        server.signal("SIGCONT");
      }
    });
  });
});

// --- F21 -----------------------------------------------------------------------

/** The ids of the connections CLIENT LIST shows. */
async function clientIds(side: RespClient): Promise<Set<string>> {
  const list = String(await side.send("CLIENT", "LIST"));
  return new Set([...list.matchAll(/^id=(\d+) /gm)].map((match) => match[1]));
}

Deno.test("CLIENT KILL of the library's connection mid-script leaves neither two holders nor an orphan (F19)", async (t) => {
  for (const [label, open] of CLIENTS) {
    await t.step(label, async () => {
      await using server = await startRedis();
      await using side = await server.connect();
      const before = await clientIds(side);
      const opened = await open(server);
      try {
        // Make sure the client's connection exists, then find it.
        assert.equal(
          await Lock.tryAcquire(opened.client, "warm-up").then((lock) =>
            lock?.release()
          ),
          true,
        );
        const ours = [...await clientIds(side)].filter((id) => !before.has(id));
        assert.equal(ours.length, 1, `connections: ${ours}`);
        // Hold the acquire script in the server's queue, then kill the
        // connection it came on.
        await side.send("CLIENT", "PAUSE", "300", "WRITE");
        const acquiring = Lock.acquire(opened.client, "killed", {
          ttl: 2_000,
          timeout: 5_000,
          commandTimeout: 1_000,
        }).then((lock) => lock, (error) => error as Error);
        await sleep(50);
        await side.send("CLIENT", "KILL", "ID", ours[0]);
        const outcome = await within(acquiring, 3_000, "the acquire to settle");
        // A second owner may take the lock only once the first is no owner.
        const other = newIoredis(server.port);
        try {
          if (outcome instanceof Lock) {
            // A client that reconnects and resends got the grant itself.
            assert.equal(await side.send("GET", outcome.key), outcome.token);
            assert.equal(await Lock.tryAcquire(other, "killed"), null);
            assert.equal(await outcome.release(), true);
          } else {
            assert.ok(!(outcome instanceof LockTimeoutError), String(outcome));
          }
          // Whatever the outcome, no orphan outlives its lease: a new
          // acquirer gets the lock within the TTL.
          const started = performance.now();
          await using next = await Lock.acquire(other, "killed", {
            timeout: 3_000,
          });
          assert.ok(next.held);
          assert.ok(performance.now() - started < 2_000 + SLACK);
        } finally {
          await closeIoredis(other);
        }
      } finally {
        await opened.close();
      }
    });
  }
});

Deno.test("CLIENT PAUSE WRITE cannot hold acquire() past timeout + commandTimeout, and the late grant is deleted (F21)", async (t) => {
  const TIMEOUT = 200;
  const COMMAND_TIMEOUT = 500;
  const options = { timeout: TIMEOUT, commandTimeout: COMMAND_TIMEOUT };
  await using server = await startRedis();
  await using side = await server.connect();
  const opened = await openDbRedis(server);
  try {
    const client = new Observed(opened.adapted);
    // Load the scripts, so the stuck call is the acquire itself, not NOSCRIPT.
    await (await Lock.acquire(client, "paused")).release();

    await t.step("a free lock, its attempt stuck", async () => {
      await side.send("CLIENT", "PAUSE", 10_000, "WRITE");
      const late = client.next("acquire");
      const cleanup = client.next("release");
      try {
        const { error, ms } = await rejection(() =>
          Lock.acquire(client, "paused", options)
        );
        assert.ok(isTimeoutError(error), String(error));
        assert.ok(ms >= COMMAND_TIMEOUT - 5, `settled after ${ms} ms`);
        assert.ok(ms <= TIMEOUT + COMMAND_TIMEOUT + SLACK, `took ${ms} ms`);
        assert.equal(await side.send("EXISTS", "deadbolt:{paused}"), 0);
      } finally {
        await side.send("CLIENT", "UNPAUSE");
      }
      // The stuck SET lands after the pause, and is deleted by its token.
      const grant = await within(late, 1_000, "the late grant");
      assert.equal(Number((grant.reply as number[])[0]), 1, "late SET landed");
      const released = await within(cleanup, 1_000, "the cleanup");
      assert.equal(Number(released.reply), 1, "the late grant was deleted");
      assert.equal(await side.send("EXISTS", "deadbolt:{paused}"), 0);
    });

    await t.step("a held lock, a retry stuck", async () => {
      const holderConn = await openDbRedis(server);
      try {
        await using holder = await Lock.acquire(holderConn.client, "paused", {
          ttl: 10_000,
          autoExtend: false,
        });
        const firstSeen = client.next("acquire");
        const waiting = rejection(() =>
          Lock.acquire(client, "paused", options)
        );
        await firstSeen;
        await side.send("CLIENT", "PAUSE", 10_000, "WRITE");
        const cleanup = client.next("release");
        let outcome: { error: unknown; ms: number };
        try {
          outcome = await waiting;
        } finally {
          await side.send("CLIENT", "UNPAUSE");
        }
        const { error, ms } = outcome;
        assert.ok(ms <= TIMEOUT + COMMAND_TIMEOUT + SLACK, `took ${ms} ms`);
        // Seen held, then an attempt stuck: a TimeoutError for the stuck
        // call, or LockTimeoutError if every attempt before the deadline
        // still got its answer.
        if (!(error instanceof LockTimeoutError)) {
          assert.ok(isTimeoutError(error), String(error));
          // The stuck attempt answers "held" after the pause; its
          // compare-delete leaves the holder's key alone.
          const released = await within(cleanup, 1_000, "the cleanup");
          assert.equal(Number(released.reply), -1);
        }
        assert.equal(await side.send("GET", holder.key), holder.token);
        assert.equal(await holder.release(), true);
      } finally {
        await holderConn.close();
      }
    });
  } finally {
    await opened.close();
  }
});

// --- F22 -----------------------------------------------------------------------

Deno.test("server clock jumps emulated with PEXPIRE: forward is detected at the next renewal, backward keeps timeouts honest (F22)", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  const opened = await openDbRedis(server);
  try {
    await t.step("forward: PEXPIRE key 1 on a held lock", async () => {
      const TTL = 600;
      await using lock = await Lock.acquire(opened.client, "forward", {
        ttl: TTL,
      });
      const lost = abortedAt(lock.signal);
      assert.equal(await side.send("PEXPIRE", lock.key, 1), 1);
      const jumped = performance.now();
      const at = await within(lost, TTL, "the loss");
      assert.ok(
        at - jumped <= TTL / 3 + SLACK,
        `lost ${at - jumped} ms after the jump`,
      );
      assert.ok(at <= lock.validUntil);
      assert.match(lock.signal.reason.message, /expired or was deleted/);
      // No resurrection, also over the next renewal periods.
      await sleep((TTL / 3) * 2);
      assert.equal(await side.send("EXISTS", lock.key), 0);
      assert.equal(await lock.release(), false);
    });

    await t.step(
      "backward: PEXPIRE key 10×ttl on a lock held without autoExtend",
      async () => {
        const TTL = 300;
        const TIMEOUT = 500;
        await using a = await Lock.acquire(opened.client, "backward", {
          ttl: TTL,
          autoExtend: false,
        });
        const lost = abortedAt(a.signal);
        assert.equal(await side.send("PEXPIRE", a.key, 10 * TTL), 1);
        const b = await openDbRedis(server);
        try {
          const { error, ms } = await rejection(() =>
            Lock.acquire(b.client, "backward", { timeout: TIMEOUT })
          );
          assert.ok(error instanceof LockTimeoutError, String(error));
          assert.ok(ms >= TIMEOUT && ms <= TIMEOUT + SLACK, `waited ${ms} ms`);
          assert.ok(error.remainingTtl > TTL, `PTTL ${error.remainingTtl}`);
          // A's own clock still ends its validity on time.
          const at = await lost;
          assert.ok(at <= a.validUntil, `lost ${at - a.validUntil} ms late`);
          // The key still holds A's token: release deletes it.
          assert.equal(await a.release(), true);
          assert.equal(await side.send("EXISTS", a.key), 0);
          const next = await Lock.tryAcquire(b.client, "backward");
          assert.ok(next?.held);
          assert.equal(await next.release(), true);
        } finally {
          await b.close();
        }
      },
    );
  } finally {
    await opened.close();
  }
});

// --- F24 -----------------------------------------------------------------------

Deno.test("SCRIPT FLUSH between renewals and before release changes nothing for the holder (F24)", async (t) => {
  const TTL = 300;
  const FLUSHES = 4;
  await using server = await startRedis();
  await using side = await server.connect();
  for (const [name, open] of CLIENTS) {
    await t.step(name, async () => {
      const opened = await open(server);
      try {
        const client = new Observed(opened.adapted);
        await using lock = await Lock.acquire(client, `flush ${name}`, {
          ttl: TTL,
        });
        for (let i = 0; i < FLUSHES; i++) {
          assert.equal(await side.send("SCRIPT", "FLUSH"), "OK");
          // The renewal after a flush falls back to EVAL and succeeds.
          await within(
            client.next("extend", (s) => s.method === "eval" && renewed(s)),
            TTL / 3 + SLACK,
            `the renewal after flush ${i + 1}`,
          );
          assert.equal(await side.send("GET", lock.key), lock.token);
          const pttl = await side.send("PTTL", lock.key) as number;
          assert.ok(pttl > TTL / 2 && pttl <= TTL, `PTTL ${pttl}`);
        }
        assert.equal(lock.held, true);
        assert.equal(lock.signal.aborted, false);
        assert.equal(await side.send("SCRIPT", "FLUSH"), "OK");
        assert.equal(await lock.release(), true);
        assert.equal(await side.send("EXISTS", lock.key), 0);
        // Every EVALSHA that failed did so with NOSCRIPT, and nothing else.
        for (const s of client.log.filter((s) => s.error !== undefined)) {
          assert.match(message(s.error), /NOSCRIPT/i);
        }
      } finally {
        await opened.close();
      }
    });
  }
});

// --- F31 -----------------------------------------------------------------------

/** Asserts that every client's acquire() and tryAcquire() reject with the server's `refusal`. */
async function assertServerRefuses(
  t: Deno.TestContext,
  server: RedisServer,
  refusal: RegExp,
  options: { fencing?: boolean } = {},
): Promise<void> {
  await using side = await server.connect();
  const keys = await side.send("DBSIZE");
  for (const [name, open] of CLIENTS) {
    await t.step(name, async () => {
      const opened = await open(server);
      try {
        for (
          const attempt of [
            () => Lock.acquire(opened.client, "refused", options),
            () => Lock.tryAcquire(opened.client, "refused", options),
          ]
        ) {
          const { error, ms } = await rejection(attempt);
          assert.ok(!(error instanceof LockTimeoutError), String(error));
          assert.match(message(error), refusal);
          assert.ok(ms < PROMPT, `took ${ms} ms`);
        }
      } finally {
        await opened.close();
      }
    });
  }
  assert.equal(await side.send("DBSIZE"), keys, "no key written");
}

Deno.test("a server that refuses writes surfaces OOM, READONLY and NOREPLICAS as themselves, never LockTimeoutError (F31)", async (t) => {
  await t.step("OOM under noeviction", async (t) => {
    await using server = await startRedis({
      args: ["--maxmemory-policy", "noeviction"],
    });
    await using side = await server.connect();
    for (let i = 0; i < 20; i++) {
      await side.send("SET", `filler:${i}`, "x".repeat(100_000));
    }
    await side.send("CONFIG", "SET", "maxmemory", "1mb");
    await assertServerRefuses(t, server, /^-?OOM /);
    await t.step("with fencing", async (t) => {
      await assertServerRefuses(t, server, /^-?OOM /, { fencing: true });
    });
  });
  await t.step("READONLY on a replica", async (t) => {
    await using primary = await startRedis();
    await using replica = await startRedis({
      args: ["--replicaof", HOST, String(primary.port)],
    });
    await assertServerRefuses(t, replica, /^-?READONLY /);
  });
  await t.step(
    "NOREPLICAS with min-replicas-to-write 1 and no replica",
    async (t) => {
      await using server = await startRedis({
        args: ["--min-replicas-to-write", "1"],
      });
      await assertServerRefuses(t, server, /^-?NOREPLICAS /);
    },
  );
});

Deno.test("eviction of the lock key under memory pressure is detected at the holder's next renewal (F31)", async () => {
  const TTL = 3_000;
  const VALUE = "x".repeat(50_000);
  await using server = await startRedis({
    args: ["--maxmemory-policy", "volatile-ttl"],
  });
  await using side = await server.connect();
  const opened = await openDbRedis(server);
  try {
    await using lock = await Lock.acquire(opened.client, "evicted", {
      ttl: TTL,
    });
    const lost = abortedAt(lock.signal);
    // Longer-lived volatile keys: volatile-ttl evicts the lock key first.
    for (let i = 0; i < 20; i++) {
      await side.send("SET", `filler:${i}`, VALUE, "PX", 600_000);
    }
    const info = String(await side.send("INFO", "memory"));
    const used = Number(/^used_memory:(\d+)/m.exec(info)![1]);
    await side.send("CONFIG", "SET", "maxmemory", used - 300_000);
    let i = 20;
    while (await side.send("EXISTS", lock.key) === 1) {
      assert.ok(i < 200, "the lock key was never evicted");
      await side.send("SET", `filler:${i++}`, VALUE, "PX", 600_000);
    }
    const evicted = performance.now();
    assert.ok(
      /^evicted_keys:[1-9]/m.test(String(await side.send("INFO", "stats"))),
    );
    const at = await within(lost, TTL, "the loss");
    assert.ok(
      at - evicted <= TTL / 3 + SLACK,
      `lost ${at - evicted} ms after the eviction`,
    );
    assert.ok(at <= lock.validUntil);
    assert.match(lock.signal.reason.message, /expired or was deleted/);
    assert.equal(await side.send("EXISTS", lock.key), 0, "no resurrection");
    assert.equal(await lock.release(), false);
  } finally {
    await opened.close();
  }
});

// --- F34 -----------------------------------------------------------------------

/** Runs `job(i)` for i in [0, count) with `concurrency` in flight. */
async function pool(
  count: number,
  concurrency: number,
  job: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) await job(next++);
    }),
  );
}

// Names whose keys need encoding, next to plain ones.
const SHAPES = ["job", "}job", "{job}", "%7Djob", "job}:fence", "ü job"];
const nameOf = (i: number) => `${SHAPES[i % SHAPES.length]}${i}`;

Deno.test("100 000 names acquired and released leave no key behind, and fencing leaves exactly one counter per name (F34)", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  const opened = await openIoredis(server.port);
  try {
    await t.step("100 000 names without fencing → DBSIZE 0", async () => {
      let released = 0;
      await pool(100_000, 200, async (i) => {
        const lock = await Lock.acquire(opened.client, nameOf(i));
        if (await lock.release()) released++;
      });
      assert.equal(released, 100_000);
      assert.equal(await side.send("DBSIZE"), 0);
    });
    await t.step(
      "2 000 names with fencing, twice → 2 000 counters at 2",
      async () => {
        const N = 2_000;
        for (let round = 1; round <= 2; round++) {
          await pool(N, 200, async (i) => {
            const lock = await Lock.acquire(opened.client, nameOf(i), {
              fencing: true,
            });
            assert.equal(lock.fence, round);
            assert.equal(await lock.release(), true);
          });
        }
        assert.equal(await side.send("DBSIZE"), N);
        const keys = await side.send("KEYS", "*") as string[];
        assert.equal(keys.length, N);
        assert.ok(keys.every((key) => key.endsWith(":fence")));
        for (const i of [0, 1, 2, 3, 4, 5, N - 1]) {
          const fenceKey = `${new Lock(opened.client, nameOf(i)).key}:fence`;
          assert.equal(await side.send("GET", fenceKey), "2", fenceKey);
          assert.equal(await side.send("PTTL", fenceKey), -1, "never expires");
        }
      },
    );
  } finally {
    await opened.close();
  }
});

// --- F35 -----------------------------------------------------------------------

// What the scripts call, beside the script commands themselves: the lock's
// and the line's (processes waiting in arrival order).
const LOCK_COMMANDS = "+get +set +pexpire +pttl +incr +del";
const SCRIPT_COMMANDS =
  `${LOCK_COMMANDS} +exists +time +zadd +zrange +zscore +zrem`;
// Wake-on-release: the release script publishes, a waiter subscribes, both
// with sharded pub/sub on Redis 7; the release also publishes plainly when a
// waiter is known and the sharded message reached nobody (for clients that
// can only SUBSCRIBE).
const WAKE_COMMANDS =
  "+spublish +publish +ssubscribe +sunsubscribe &deadbolt:*";

async function addUser(
  side: RespClient,
  name: string,
  commands: string,
): Promise<void> {
  const rules =
    `reset on >secret ~deadbolt:* -@all +eval +evalsha +script|load +ping ${commands}`;
  await side.send("ACL", "SETUSER", name, ...rules.split(" "));
}

/** Runs `openssl <args>` in `dir`; throws with its stderr when it fails. */
async function openssl(dir: string, args: string): Promise<void> {
  const output = await new Deno.Command("openssl", {
    args: args.split(" "),
    cwd: dir,
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!output.success) {
    const stderr = new TextDecoder().decode(output.stderr);
    throw new Error(`openssl ${args} failed: ${stderr}`);
  }
}

/** A throwaway CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA. */
async function makeCertificates(dir: string): Promise<void> {
  const key = "-newkey rsa:2048 -nodes";
  await openssl(
    dir,
    `req -x509 -days 1 ${key} -keyout ca.key -out ca.crt -subj /CN=ca`,
  );
  await openssl(
    dir,
    `req -x509 -days 1 ${key} -keyout wrong.key -out wrong.crt -subj /CN=wrong`,
  );
  await openssl(
    dir,
    `req ${key} -keyout server.key -out server.csr -subj /CN=${HOST}`,
  );
  await Deno.writeTextFile(`${dir}/ext.cnf`, `subjectAltName=IP:${HOST}\n`);
  await openssl(
    dir,
    "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial " +
      "-out server.crt -days 1 -extfile ext.cnf",
  );
}

const hasOpenssl = await new Deno.Command("openssl", { args: ["version"] })
  .output().then((output) => output.success, () => false);

Deno.test("least privilege: an ACL user with only the scripts' commands locks with fencing; TLS works and a wrong CA fails closed (F35)", async (t) => {
  await t.step("ACL", async (t) => {
    await using server = await startRedis();
    await using side = await server.connect();
    await addUser(side, "locker", `${SCRIPT_COMMANDS} ${WAKE_COMMANDS}`);
    await addUser(side, "noincr", SCRIPT_COMMANDS.replace(" +incr", ""));
    await addUser(side, "nowake", SCRIPT_COMMANDS);
    await addUser(side, "noline", LOCK_COMMANDS);
    // enableReadyCheck runs INFO, which these users may not.
    const user = (username: string) =>
      openIoredis(server.port, {
        username,
        password: "secret",
        enableReadyCheck: false,
      });

    await t.step(
      "acquire, renew, extend, contend and release with fencing",
      async () => {
        const opened = await user("locker");
        try {
          const client = new Observed(opened.adapted);
          for (const fence of [1, 2]) {
            const lock = await Lock.acquire(client, "acl", {
              ttl: 300,
              fencing: true,
            });
            assert.equal(lock.fence, fence);
            await within(client.next("extend", renewed), 300, "a renewal");
            assert.equal(await lock.extend(), true);
            assert.equal(await Lock.tryAcquire(client, "acl"), null);
            await assert.rejects(
              Lock.acquire(client, "acl", { timeout: 30 }),
              LockTimeoutError,
            );
            assert.equal(await lock.release(), true);
          }
          // A waiter of another process takes a place in line.
          const held = await Lock.acquire(client, "acl");
          const other = await user("locker");
          try {
            const waiter = Lock.acquire(other.client, "acl", {
              timeout: 5_000,
            });
            await until(
              async () =>
                Number(await side.send("EXISTS", "deadbolt:{acl}:line")) === 1,
              5_000,
              "the waiter takes a place in line",
            );
            assert.equal(await held.release(), true);
            const next = await within(waiter, 5_000, "the waiter's grant");
            assert.equal(await next.release(), true);
          } finally {
            await other.close();
          }
          assert.equal(await side.send("EXISTS", "deadbolt:{acl}"), 0);
          assert.deepEqual(await side.send("ACL", "LOG"), [], "nothing denied");
        } finally {
          await opened.close();
        }
      },
    );

    await t.step(
      "without pub/sub rights, locking works and waiters fall back to backoff",
      async () => {
        const holder = await user("nowake");
        const waiter = await user("nowake");
        try {
          await side.send("ACL", "LOG", "RESET");
          const lock = await Lock.acquire(holder.client, "nowake");
          const waiting = Lock.acquire(waiter.client, "nowake", {
            timeout: 5_000,
          });
          await sleep(100);
          // The release's SPUBLISH (and PUBLISH) is refused inside a PCALL:
          // still released.
          assert.equal(await lock.release(), true);
          await using next = await waiting;
          assert.ok(next.held);
          const denied = (await side.send("ACL", "LOG") as string[][])
            .map((entry) => entry[entry.indexOf("object") + 1]);
          assert.ok(denied.length > 0, "publish was not even tried");
          assert.ok(
            denied.every((object) =>
              /^(s?publish|s?subscribe|deadbolt:)/.test(object)
            ),
            `denied: ${denied}`,
          );
        } finally {
          await holder.close();
          await waiter.close();
        }
      },
    );

    await t.step(
      "without the line's commands, locking and waiting work (processes race instead of taking turns)",
      async () => {
        const holder = await user("noline");
        const waiter = await user("noline");
        try {
          const lock = await Lock.acquire(holder.client, "noline");
          const waiting = Lock.acquire(waiter.client, "noline", {
            timeout: 5_000,
          });
          await lineUp(waiter.client, "noline", 1);
          assert.equal(await lock.release(), true);
          const next = await within(waiting, 5_000, "the waiter's grant");
          assert.equal(await next.release(), true);
          assert.equal(
            Number(await side.send("EXISTS", "deadbolt:{noline}:line")),
            0,
          );
        } finally {
          await holder.close();
          await waiter.close();
        }
      },
    );

    await t.step(
      "a key outside ~deadbolt:* is refused with NOPERM",
      async () => {
        const opened = await user("locker");
        try {
          const { error } = await rejection(() =>
            Lock.acquire(opened.client, "acl", { prefix: "other:" })
          );
          assert.ok(!(error instanceof LockTimeoutError));
          assert.match(message(error), /^NOPERM /);
        } finally {
          await opened.close();
        }
      },
    );

    await t.step(
      "without +incr, fencing fails with the server's error and leaves no key",
      async () => {
        const opened = await user("noincr");
        try {
          const client = new Observed(opened.adapted);
          const cleanup = client.next("release");
          const { error } = await rejection(() =>
            Lock.acquire(client, "noincr", { fencing: true })
          );
          assert.ok(!(error instanceof LockTimeoutError));
          // Redis 7.0 words a script's ACL refusal this way; 7.2+ says NOPERM.
          assert.match(message(error), /can't run this command|NOPERM/);
          // The script checks INCR's permission before its SET (Lua does not
          // roll back), so the failed attempt's compare-delete finds no key.
          assert.equal(
            Number((await within(cleanup, 1_000, "cleanup")).reply),
            0,
          );
          assert.equal(await side.send("EXISTS", "deadbolt:{noincr}"), 0);
          assert.equal(await side.send("EXISTS", "deadbolt:{noincr}:fence"), 0);
          // Without fencing the script calls no INCR.
          const lock = await Lock.acquire(client, "noincr");
          assert.equal(await lock.release(), true);
        } finally {
          await opened.close();
        }
      },
    );
  });

  // Only if openssl is missing: the certificates are made at run time.
  await t.step({
    name: "TLS with a throwaway CA; a wrong CA fails closed",
    ignore: !hasOpenssl,
    fn: async () => {
      const dir = await Deno.makeTempDir({ prefix: "deadbolt-tls-" });
      try {
        await makeCertificates(dir);
        const tlsPort = freePort();
        await using server = await startRedis({
          args: [
            ["--tls-port", String(tlsPort)],
            ["--tls-cert-file", `${dir}/server.crt`],
            ["--tls-key-file", `${dir}/server.key`],
            ["--tls-ca-cert-file", `${dir}/ca.crt`],
            ["--tls-auth-clients", "no"],
          ].flat(),
        });
        await using side = await server.connect();

        const ca = await Deno.readTextFile(`${dir}/ca.crt`);
        const good = await openIoredis(tlsPort, { tls: { ca } });
        try {
          const lock = await Lock.acquire(good.client, "tls", {
            fencing: true,
          });
          assert.equal(lock.fence, 1);
          assert.equal(await side.send("GET", lock.key), lock.token);
          assert.equal(await lock.release(), true);
        } finally {
          await good.close();
        }

        const wrong = await Deno.readTextFile(`${dir}/wrong.crt`);
        const errors: unknown[] = [];
        const redis = newIoredis(tlsPort, {
          tls: { ca: wrong },
          retryStrategy: () => null,
        });
        redis.on("error", (error) => errors.push(error));
        try {
          const { error, ms } = await rejection(() =>
            Lock.acquire(redis, "tls", { timeout: 5_000 })
          );
          assert.ok(!(error instanceof LockTimeoutError), String(error));
          assert.match(message(error), /Connection is closed/);
          assert.ok(ms < PROMPT, `took ${ms} ms`);
          assert.ok(
            errors.some((e) => /certificate/.test(message(e))),
            `no certificate error among ${errors}`,
          );
        } finally {
          await closeIoredis(redis);
        }
        assert.equal(await side.send("DBSIZE"), 1, "only the fence counter");
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
});
