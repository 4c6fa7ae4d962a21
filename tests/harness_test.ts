import assert from "node:assert/strict";
import { freePort, startRedis } from "./_redis.ts";
import {
  DbRedisShape,
  ErrorReplyError,
  type RespClient,
  RespError,
} from "./_resp.ts";
import { startUpstash } from "./_upstash.ts";
import { errors, Redis as Upstash } from "npm:@upstash/redis@1";

const { UpstashError } = errors;

const TIMED_OUT = Symbol("timed out");

/** Settles with `promise`, or with TIMED_OUT if it has not settled within `ms`. */
async function within<T>(
  promise: Promise<T>,
  ms: number,
): Promise<T | typeof TIMED_OUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<typeof TIMED_OUT>((resolve) =>
    timer = setTimeout(() => resolve(TIMED_OUT), ms)
  );
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

async function infoField(
  client: RespClient,
  field: string,
): Promise<string | undefined> {
  const info = String(await client.send("INFO", "server"));
  return new RegExp(`^${field}:(.*?)\r?$`, "m").exec(info)?.[1];
}

Deno.test("startRedis() starts a loopback redis-server that answers as its own pid", async () => {
  const server = await startRedis();
  try {
    assert.equal(server.url, `redis://127.0.0.1:${server.port}`);
    assert.ok((await Deno.stat(server.dir)).isDirectory);
    await using client = await server.connect();
    assert.equal(await infoField(client, "process_id"), String(server.pid));
    assert.deepEqual(await client.send("CONFIG", "GET", "save"), ["save", ""]);
    assert.equal(
      await client.send("DEBUG", "SLEEP", 0),
      "OK",
      "DEBUG is enabled for local fault tests",
    );
  } finally {
    await server.stop();
  }
  await server.stop(); // idempotent
  await assert.rejects(Deno.stat(server.dir), Deno.errors.NotFound);
});

Deno.test("RespClient decodes strings, integers, nil, arrays and error replies", async () => {
  const server = await startRedis();
  try {
    await using client = await server.connect();
    assert.equal(await client.send("SET", "k", "v", "PX", 60_000), "OK");
    assert.equal(await client.send("GET", "k"), "v");
    assert.equal(await client.send("GET", "missing"), null);
    assert.equal(await client.send("INCR", "n"), 1);
    assert.equal(await client.send("INCRBY", "n", -5), -4);
    const pttl = await client.send("PTTL", "k");
    assert.ok(
      typeof pttl === "number" && pttl > 59_000 && pttl <= 60_000,
      `PTTL ${pttl}`,
    );
    assert.equal(await client.send("PTTL", "missing"), -2);
    assert.equal(await client.send("RPUSH", "list", "a", "b", "ü\r\n"), 3);
    assert.deepEqual(await client.send("LRANGE", "list", 0, -1), [
      "a",
      "b",
      "ü\r\n",
    ]);
    assert.deepEqual(await client.send("LRANGE", "missing", 0, -1), []);
    assert.deepEqual(
      await client.send("EVAL", "return {1, {'x', false}, 'y'}", 0),
      [1, ["x", null], "y"],
    );
    assert.equal(await client.send("BLPOP", "missing", 0.01), null); // RESP2 null array
    assert.equal(
      await client.send("ECHO", new TextEncoder().encode("bytes")),
      "bytes",
    );
    await assert.rejects(client.send("INCR", "k"), (error) => {
      assert.ok(error instanceof RespError);
      assert.equal(
        error.message,
        "ERR value is not an integer or out of range",
      );
      return true;
    });
    assert.equal(
      await client.send("PING"),
      "PONG",
      "an error reply must not desynchronise replies",
    );
  } finally {
    await server.stop();
  }
});

Deno.test("RespClient matches 100 pipelined concurrent sends to replies in order", async () => {
  const server = await startRedis();
  try {
    await using client = await server.connect();
    const sends = Array.from(
      { length: 100 },
      (_, i) => client.send("ECHO", `${i}:${"x".repeat(i * 100)}`),
    );
    const replies = await Promise.all(sends);
    assert.deepEqual(
      replies,
      Array.from({ length: 100 }, (_, i) => `${i}:${"x".repeat(i * 100)}`),
    );
    const counts = await Promise.all(
      Array.from({ length: 100 }, () => client.send("INCR", "c")),
    );
    assert.deepEqual(counts, Array.from({ length: 100 }, (_, i) => i + 1));
  } finally {
    await server.stop();
  }
});

Deno.test("RespClient.close() rejects pending sends, later sends, and is idempotent", async () => {
  const server = await startRedis();
  try {
    const client = await server.connect();
    const blocked = client.send("BLPOP", "never", 0);
    client.close();
    client.close();
    await assert.rejects(blocked, /connection closed/);
    await assert.rejects(client.send("PING"), /connection closed/);
    await client.closed;
  } finally {
    await server.stop();
  }
});

Deno.test("DbRedisShape.evalsha() of an unknown sha rejects with ErrorReplyError '-NOSCRIPT …'", async () => {
  const server = await startRedis();
  try {
    await using client = await server.connect();
    const redis = new DbRedisShape(client);
    assert.equal(
      await redis.eval("return #KEYS + #ARGV", ["a", "b"], [
        "x",
        1,
        new Uint8Array([0x79]),
      ]),
      5,
    );
    await assert.rejects(redis.evalsha("0".repeat(40), [], []), (error) => {
      assert.ok(error instanceof ErrorReplyError);
      assert.match(error.message, /^-NOSCRIPT /);
      return true;
    });
    const sha = String(await client.send("SCRIPT", "LOAD", "return ARGV[1]"));
    assert.equal(await redis.evalsha(sha, [], ["hi"]), "hi");
  } finally {
    await server.stop();
  }
});

Deno.test("the local Upstash server gives the real @upstash/redis Upstash's replies: JSON-parsed strings, UpstashError on NOSCRIPT", async () => {
  await using server = await startRedis();
  await using rest = await startUpstash(server.port);
  const redis = new Upstash({ url: rest.url, token: rest.token, retry: false });
  assert.equal(await redis.eval("return '123'", [], []), 123);
  assert.equal(await redis.eval("return 'abc'", [], []), "abc");
  assert.deepEqual(await redis.eval("return {'1', '{\"a\":2}', 3}", [], []), [
    1,
    { a: 2 },
    3,
  ]);
  assert.equal(await redis.eval("return 7", [], []), 7);
  await assert.rejects(redis.evalsha("0".repeat(40), [], []), (error) => {
    assert.ok(error instanceof UpstashError, String(error));
    assert.match(error.message, /NOSCRIPT/);
    return true;
  });
  const wrong = new Upstash({ url: rest.url, token: "wrong", retry: false });
  await assert.rejects(wrong.eval("return 1", [], []));
});

Deno.test("a SIGSTOPped server does not answer until SIGCONT", async () => {
  const server = await startRedis();
  try {
    await using client = await server.connect();
    server.signal("SIGSTOP");
    const ping = client.send("PING");
    assert.equal(await within(ping, 300), TIMED_OUT);
    server.signal("SIGCONT");
    assert.equal(await within(ping, 5_000), "PONG");
  } finally {
    await server.stop();
  }
});

Deno.test("restart() starts a new pid on the same port, dir and args", async () => {
  const server = await startRedis({
    args: ["--appendonly", "yes", "--appendfsync", "always"],
  });
  try {
    const { port, pid, dir } = server;
    await using before = await server.connect();
    assert.equal(await before.send("SET", "survives", "yes"), "OK");
    await server.restart();
    assert.equal(server.port, port);
    assert.equal(server.dir, dir);
    assert.notEqual(server.pid, pid);
    await assert.rejects(before.send("PING"), /connection closed/);
    await using after = await server.connect();
    assert.equal(await infoField(after, "process_id"), String(server.pid));
    assert.equal(
      await after.send("GET", "survives"),
      "yes",
      "AOF args must survive restart",
    );
  } finally {
    await server.stop();
  }
});

Deno.test("pending sends reject with 'connection closed' when the server is SIGKILLed", async () => {
  const server = await startRedis();
  try {
    await using client = await server.connect();
    const blocked = client.send("BLPOP", "never", 0);
    server.signal("SIGKILL");
    await assert.rejects(blocked, /connection closed/);
    await client.closed;
  } finally {
    await server.stop();
  }
});

Deno.test("two startRedis() calls get different ports and pids", async () => {
  const first = await startRedis();
  try {
    const second = await startRedis();
    try {
      assert.notEqual(first.port, second.port);
      assert.notEqual(first.pid, second.pid);
      assert.notEqual(first.dir, second.dir);
    } finally {
      await second.stop();
    }
  } finally {
    await first.stop();
  }
});

Deno.test("freePort() returns a loopback port that can be bound", () => {
  const port = freePort();
  assert.ok(port > 0 && port < 65_536);
  Deno.listen({ hostname: "127.0.0.1", port }).close();
});

Deno.test("startRedis() rejects with redis-server's own message on bad arguments", async () => {
  await assert.rejects(
    startRedis({ args: ["--no-such-directive", "1"] }),
    /Cannot start redis-server: .*Bad directive/s,
  );
});
