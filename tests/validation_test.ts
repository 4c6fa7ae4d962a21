import assert from "node:assert/strict";
import { Lock } from "../mod.ts";
import { startRedis } from "./_redis.ts";
import { DbRedisShape, type RespClient } from "./_resp.ts";
import { CountingClient } from "./_util.ts";

/** Asserts that the server holds no key and never ran a script (nor any command but our own checks). */
async function assertUntouched(side: RespClient): Promise<void> {
  assert.equal(await side.send("DBSIZE"), 0, "no key exists");
  const stats = String(await side.send("INFO", "commandstats"));
  const commands = [...stats.matchAll(/^cmdstat_([^:]+):/gm)].map((m) => m[1]);
  assert.ok(
    !commands.includes("eval") && !commands.includes("evalsha"),
    `no EVAL/EVALSHA reached the server: ${commands}`,
  );
  for (const command of commands) {
    assert.ok(
      ["info", "dbsize"].includes(command),
      `only the test's own checks reached the server, not ${command}`,
    );
  }
}

type ErrorClass = TypeErrorConstructor | RangeErrorConstructor;

/** One bad input: what to pass, which class it must throw, and what the message must say. */
interface Case {
  what: string;
  name?: unknown;
  options?: unknown;
  client?: unknown;
  error: ErrorClass;
  says: string[];
}

/** Returns an `assert.throws`/`rejects` validator for `c`. */
function expect(c: Pick<Case, "what" | "error" | "says">) {
  return (error: unknown): true => {
    assert.ok(error instanceof Error, `${c.what}: threw ${String(error)}`);
    assert.equal(
      error.constructor,
      c.error,
      `${c.what}: expected ${c.error.name}, got ${error.name}: ${error.message}`,
    );
    for (const part of c.says) {
      assert.ok(
        error.message.includes(part),
        `${c.what}: message ${JSON.stringify(error.message)} lacks ${
          JSON.stringify(part)
        }`,
      );
    }
    return true;
  };
}

const NAME = "report";
const LONG = "x".repeat(1025);
const SUPPORTED = ["Redis client", "@db/redis", "ioredis", "node-redis"];

const nameCases: Case[] = [
  [
    'name ""',
    "",
    TypeError,
    ["'name'", "non-empty string", 'current value is ""'],
  ],
  ["name 42", 42, TypeError, ["'name'", "current value is 42"]],
  ["name null", null, TypeError, ["'name'", "current value is null"]],
  [
    "name undefined",
    undefined,
    TypeError,
    ["'name'", "current value is undefined"],
  ],
  [
    "name {}",
    { toString: () => NAME },
    TypeError,
    ["'name'", "current value is an object (Object)"],
  ],
  [
    "name Symbol",
    Symbol(NAME),
    TypeError,
    ["'name'", "current value is Symbol(report)"],
  ],
  [
    "name lone high surrogate",
    "\uD800",
    TypeError,
    ["'name'", "lone surrogate", 'current value is "\\ud800"'],
  ],
  [
    "name lone low surrogate",
    "a\uDFFFb",
    TypeError,
    ["'name'", "lone surrogate", 'current value is "a\\udfffb"'],
  ],
  ["name of 1025 bytes", LONG, RangeError, ["'name'", "1025 bytes", "1024"]],
  [
    "name of 1026 UTF-8 bytes in 513 characters",
    "é".repeat(513),
    RangeError,
    ["'name'", "1026 bytes"],
  ],
].map(([what, name, error, says]) => ({ what, name, error, says }) as Case);

/** Options every constructor-like entry point (new Lock, Lock.acquire, Lock.tryAcquire) rejects. */
const optionCases: Case[] = [
  [{ prefix: "{" }, TypeError, ["'prefix'", 'current value is "{"']],
  [{ prefix: "}" }, TypeError, ["'prefix'", 'current value is "}"']],
  [{ prefix: "app{x}:" }, TypeError, ["'prefix'", '"app{x}:"']],
  [{ prefix: 42 }, TypeError, ["'prefix'", "current value is 42"]],
  [{ prefix: null }, TypeError, ["'prefix'", "current value is null"]],
  [{ prefix: "\uD800" }, TypeError, ["'prefix'", '"\\ud800"']],
  [{ prefix: LONG }, RangeError, ["'prefix'", "1025 bytes"]],
  [{ ttl: 0 }, RangeError, ["'ttl'", "current value is 0"]],
  [{ ttl: -1 }, RangeError, ["'ttl'", "current value is -1"]],
  [{ ttl: 9 }, RangeError, ["'ttl'", "from 10", "current value is 9"]],
  [{ ttl: 1.5 }, RangeError, ["'ttl'", "current value is 1.5"]],
  [{ ttl: NaN }, RangeError, ["'ttl'", "current value is NaN"]],
  [{ ttl: Infinity }, RangeError, ["'ttl'", "current value is Infinity"]],
  [{ ttl: -Infinity }, RangeError, ["'ttl'", "current value is -Infinity"]],
  [{ ttl: "1000" }, TypeError, ["'ttl'", 'current value is "1000"']],
  [{ ttl: 1000n }, TypeError, ["'ttl'", "current value is 1000n"]],
  [{ ttl: null }, TypeError, ["'ttl'", "current value is null"]],
  [{ ttl: 2 ** 31 }, RangeError, ["'ttl'", "current value is 2147483648"]],
  [{ timeout: -1 }, RangeError, ["'timeout'", "current value is -1"]],
  [{ timeout: 1.5 }, RangeError, ["'timeout'", "current value is 1.5"]],
  [{ timeout: NaN }, RangeError, ["'timeout'", "current value is NaN"]],
  [
    { timeout: -Infinity },
    RangeError,
    ["'timeout'", "current value is -Infinity"],
  ],
  [{ timeout: "10" }, TypeError, ["'timeout'", 'current value is "10"']],
  [{ retryDelay: 0 }, RangeError, ["'retryDelay'", "current value is 0"]],
  [{ retryDelay: 2.5 }, RangeError, ["'retryDelay'", "current value is 2.5"]],
  [
    { retryDelay: 100, maxRetryDelay: 50 },
    RangeError,
    ["'maxRetryDelay'", "from 100", "current value is 50"],
  ],
  [
    { maxRetryDelay: 2 ** 31 },
    RangeError,
    ["'maxRetryDelay'", "current value is 2147483648"],
  ],
  [
    { commandTimeout: 0 },
    RangeError,
    ["'commandTimeout'", "current value is 0"],
  ],
  [
    { commandTimeout: NaN },
    RangeError,
    ["'commandTimeout'", "current value is NaN"],
  ],
  [
    { autoExtend: "yes" },
    TypeError,
    ["'autoExtend'", 'current value is "yes"'],
  ],
  [{ autoExtend: 1 }, TypeError, ["'autoExtend'", "current value is 1"]],
  [{ fencing: 1 }, TypeError, ["'fencing'", "current value is 1"]],
  [{ fencing: "true" }, TypeError, ["'fencing'", 'current value is "true"']],
  [{ tll: 1000 }, TypeError, ["'tll'", "is not an option", "'ttl'"]],
  [
    { tll: 1000, timout: 5 },
    TypeError,
    ["'tll', 'timout'", "are not options"],
  ],
].map(([options, error, says]) =>
  ({
    what: `options ${
      Deno.inspect(options, { compact: true, breakLength: Infinity })
    }`,
    options,
    error,
    says,
  }) as Case
);

const notAnObject: Case[] = [
  ["fast", 'current value is "fast"'],
  [null, "current value is null"],
  [42, "current value is 42"],
  [[], "current value is an array"],
].map(([options, shown]) => ({
  what: `options ${String(options)}`,
  options,
  error: TypeError,
  says: ["'options'", shown as string],
}));

const clientCases: Case[] = [
  [{}, "an object (Object)"],
  [null, "current value is null"],
  ["redis://127.0.0.1:6379", "string redis://127.0.0.1:6379"],
  [{ get: () => Promise.resolve(null) }, "an object (Object)"],
].map(([client, shown]) => ({
  what: `client ${Deno.inspect(client)}`,
  client,
  error: TypeError,
  says: [...SUPPORTED, shown as string],
}));

/** Only `Lock.acquire` and `Lock.tryAcquire` take a signal. */
const signalCases: Case[] = [
  [{}, "an object (Object)"],
  ["abort", '"abort"'],
  [new AbortController(), "an object (AbortController)"],
  // Falsy, yet not absent: still a TypeError, not "no signal".
  [null, "null"],
  [0, "0"],
  [false, "false"],
].map(([signal, shown]) => ({
  what: `signal ${Deno.inspect(signal)}`,
  options: { signal },
  error: TypeError,
  says: ["'signal'", "an AbortSignal", `current value is ${shown}`],
}));

const constructorCases = [
  ...nameCases,
  ...optionCases,
  ...notAnObject,
  ...clientCases,
];

/** What `lock.acquire(options)` rejects on a valid handle. */
const acquireCases: Case[] = [
  ...optionCases.filter((c) =>
    ["timeout", "retryDelay", "maxRetryDelay"].some((key) =>
      Object.hasOwn(c.options as object, key)
    )
  ),
  ...signalCases,
  ...notAnObject,
  {
    what: "lock option ttl",
    options: { ttl: 1000 },
    error: TypeError,
    says: ["'ttl'", "is not an option"],
  },
  {
    what: "unknown tll",
    options: { tll: 1000 },
    error: TypeError,
    says: ["'tll'", "is not an option"],
  },
];

/** What `lock.extend(ttl)` rejects. */
const extendCases: Case[] = [
  [0, RangeError, "0"],
  [-1, RangeError, "-1"],
  [9, RangeError, "9"],
  [1.5, RangeError, "1.5"],
  [NaN, RangeError, "NaN"],
  [Infinity, RangeError, "Infinity"],
  [-Infinity, RangeError, "-Infinity"],
  [2 ** 31, RangeError, "2147483648"],
  ["1000", TypeError, '"1000"'],
  [1000n, TypeError, "1000n"],
  [null, TypeError, "null"],
].map(([ttl, error, shown]) => ({
  what: `extend(${Deno.inspect(ttl)})`,
  options: ttl,
  error: error as ErrorClass,
  says: ["'ttl'", `current value is ${shown}`],
}));

Deno.test("Lock rejects every bad input of the table with TypeError/RangeError before any Redis command", async (t) => {
  await using server = await startRedis();
  await using connection = await server.connect();
  await using side = await server.connect();
  const counting = new CountingClient(new DbRedisShape(connection));
  const args = (c: Case) =>
    [
      "client" in c ? c.client : counting,
      "name" in c ? c.name : NAME,
      c.options,
    ] as [never, never, never];

  await t.step("new Lock()", () => {
    for (const c of constructorCases) {
      assert.throws(() => new Lock(...args(c)), expect(c));
    }
    const signal = new AbortController().signal;
    assert.throws(
      () => new Lock(counting, NAME, { signal } as never),
      expect({
        what: "signal in new Lock()",
        error: TypeError,
        says: ["'signal' is not an option"],
      }),
    );
  });

  for (const method of ["acquire", "tryAcquire"] as const) {
    await t.step(`Lock.${method}()`, async () => {
      for (const c of [...constructorCases, ...signalCases]) {
        await assert.rejects(Lock[method](...args(c)), expect(c));
      }
    });
  }

  await t.step(
    "lock.acquire(), lock.tryAcquire() and lock.extend() on a valid handle",
    async () => {
      const lock = new Lock(counting, NAME);
      for (const c of acquireCases) {
        await assert.rejects(lock.acquire(c.options as never), expect(c));
      }
      await assert.rejects(
        lock.tryAcquire({ timeout: 0 } as never),
        expect({
          what: "tryAcquire({ timeout })",
          error: TypeError,
          says: ["'timeout' is not an option"],
        }),
      );
      // The range check comes first, before "this handle does not hold it".
      for (const c of extendCases) {
        await assert.rejects(lock.extend(c.options as never), expect(c));
      }
      assert.equal(lock.held, false);
    },
  );

  assert.equal(counting.calls, 0, "no script call left the library");
  await assertUntouched(side);
});

Deno.test("lock.acquire() and lock.extend() with bad input on a held lock send nothing and leave its lease alone", async () => {
  await using server = await startRedis();
  await using connection = await server.connect();
  await using side = await server.connect();
  const counting = new CountingClient(new DbRedisShape(connection));
  await using lock = await Lock.acquire(counting, NAME, {
    ttl: 60_000,
    autoExtend: false,
  });
  const sent = counting.calls;
  const before = await side.send("PTTL", lock.key) as number;
  for (const c of extendCases) {
    await assert.rejects(lock.extend(c.options as never), expect(c));
  }
  // Bad options win over "already held": the caller learns about the typo.
  for (const c of acquireCases) {
    await assert.rejects(lock.acquire(c.options as never), expect(c));
  }
  assert.equal(counting.calls, sent, "no script call for bad input");
  assert.equal(lock.held, true);
  assert.equal(await side.send("GET", lock.key), lock.token);
  const after = await side.send("PTTL", lock.key) as number;
  assert.ok(after <= before, `lease not renewed: ${before} → ${after} ms`);
  assert.equal(await lock.release(), true);
  assert.equal(await side.send("DBSIZE"), 0);
});

Deno.test("Lock.acquire() with an already-aborted signal rejects with exactly signal.reason and sends nothing", async (t) => {
  await using server = await startRedis();
  await using connection = await server.connect();
  await using side = await server.connect();
  const counting = new CountingClient(new DbRedisShape(connection));
  const reasons: [string, AbortSignal][] = [
    ["a custom reason", AbortSignal.abort(new Error("shutting down"))],
    ["a non-Error reason", AbortSignal.abort("stop")],
    ["the default AbortError", AbortSignal.abort()],
  ];
  for (const [what, signal] of reasons) {
    await t.step(what, async () => {
      const isReason = (error: unknown) => error === signal.reason;
      await assert.rejects(Lock.acquire(counting, NAME, { signal }), isReason);
      await assert.rejects(
        Lock.tryAcquire(counting, NAME, { signal }),
        isReason,
      );
      const lock = new Lock(counting, NAME);
      await assert.rejects(lock.acquire({ signal }), isReason);
      await assert.rejects(lock.tryAcquire({ signal }), isReason);
      assert.equal(lock.held, false);
    });
  }
  assert.equal(counting.calls, 0);
  await assertUntouched(side);
});

Deno.test("Lock accepts every valid edge value and acquires and releases with it on a real server", async (t) => {
  await using server = await startRedis();
  await using connection = await server.connect();
  await using side = await server.connect();
  const counting = new CountingClient(new DbRedisShape(connection));

  /** Acquires `name` with `options`, checks Redis holds our token, releases, checks the key is gone. */
  async function roundTrip(
    name: string,
    options: Parameters<typeof Lock.acquire>[2] = {},
  ): Promise<Lock> {
    const lock = await Lock.acquire(counting, name, options);
    try {
      assert.equal(lock.name, name);
      assert.equal(lock.held, true);
      assert.equal(await side.send("GET", lock.key), lock.token);
    } finally {
      assert.equal(await lock.release(), true, `released ${lock.key}`);
    }
    assert.equal(await side.send("EXISTS", lock.key), 0);
    return lock;
  }

  await t.step("ttl 10 (the smallest)", async () => {
    await roundTrip(NAME, { ttl: 10 });
  });
  await t.step("ttl 2^31 - 1 (the largest timer delay)", async () => {
    const lock = await Lock.acquire(counting, NAME, { ttl: 2 ** 31 - 1 });
    const pttl = await side.send("PTTL", lock.key) as number;
    assert.ok(pttl > 2 ** 31 - 1 - 60_000, `PTTL ${pttl}`);
    assert.equal(await lock.release(), true);
  });
  await t.step("timeout 0 and timeout Infinity", async () => {
    await roundTrip(NAME, { timeout: 0 });
    await roundTrip(NAME, { timeout: Infinity });
    const lock = new Lock(counting, NAME);
    await lock.acquire({ timeout: Infinity, retryDelay: 1, maxRetryDelay: 1 });
    assert.equal(await lock.release(), true);
  });
  await t.step(
    "commandTimeout Infinity and the retry delay bounds",
    async () => {
      await roundTrip(NAME, { commandTimeout: Infinity });
      await roundTrip(NAME, { retryDelay: 1, maxRetryDelay: 1 });
      await roundTrip(NAME, {
        retryDelay: 2 ** 31 - 1,
        maxRetryDelay: 2 ** 31 - 1,
      });
    },
  );
  await t.step('prefix ""', async () => {
    const lock = await roundTrip(NAME, { prefix: "" });
    assert.equal(lock.key, `{${NAME}}`);
  });
  await t.step(
    "names with {, :, spaces, CR/LF, NUL, emoji and 1024 bytes",
    async () => {
      const names = [
        "{",
        "a{b",
        "{}",
        "}x",
        "a:b:c",
        "with spaces ",
        " ",
        "cr\rlf\n",
        "nul\0byte",
        "\0",
        "emoji 🔒",
        "🔒",
        "%7D",
        "%",
        "x".repeat(1024),
        "é".repeat(512),
      ];
      const keys = new Set<string>();
      for (const name of names) {
        keys.add((await roundTrip(name, { fencing: true })).key);
      }
      assert.equal(keys.size, names.length, "distinct names, distinct keys");
      // Each name also got its fence counter, and nothing else was left.
      assert.equal(await side.send("DBSIZE"), names.length);
    },
  );
  await t.step(
    "Lock.tryAcquire() and new Lock() with the same edges",
    async () => {
      const lock = await Lock.tryAcquire(counting, "nul\0🔒{", {
        ttl: 10,
        timeout: 0,
        prefix: "",
      });
      assert.ok(lock);
      assert.equal(await lock.release(), true);
      const handle = new Lock(counting, "}", {
        ttl: 2 ** 31 - 1,
        timeout: Infinity,
      });
      assert.equal(await handle.tryAcquire(), true);
      assert.equal(await handle.extend(10_000), true);
      assert.equal(await handle.release(), true);
    },
  );
});
