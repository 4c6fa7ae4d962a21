import assert from "node:assert/strict";
import { Cluster, Redis } from "npm:ioredis@6";
import { Lock } from "../mod.ts";
import type { TopView } from "../cli/top_view.ts";
import { cli, CliProcess } from "./_cli.ts";
import { startCluster } from "./_cluster.ts";
import { startRedis } from "./_redis.ts";
import { DbRedisShape } from "./_resp.ts";
import { quitIoredis, until, within } from "./_util.ts";

// `deadbolt top` as a subprocess, against a real server with locks held,
// waited for and expiring.

const viewOf = (stdout: string): TopView => JSON.parse(stdout);

/** A live `top` on `url`, every 100 ms, once it has shown its first view. */
async function liveTop(url: string): Promise<CliProcess> {
  const top = CliProcess.start(["top", "--interval", "100ms", "--redis", url]);
  try {
    assert.match(await top.line(5_000), /^deadbolt top — 0 lock/);
    return top;
  } catch (error) {
    await top[Symbol.asyncDispose]();
    throw error;
  }
}

Deno.test("deadbolt top --once --json shows held, waited-for and expiring locks, most contended first", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const conn = await server.connect();
  const holderClient = new DbRedisShape(conn);
  // The waiter is on a client of its own, as another process would be: it
  // takes a place in the lock's line and subscribes to its releases.
  const waiterClient = new Redis(server.port, "127.0.0.1");
  try {
    const busy = await Lock.acquire(holderClient, "busy", { fencing: true });
    const quiet = await Lock.acquire(holderClient, "quiet");
    const odd = await Lock.acquire(holderClient, "a}b%c");
    await side.send(
      "SET",
      "deadbolt:{short}",
      "token-of-a-short-hold",
      "PX",
      "400",
    );
    // A key of another application under another prefix stays out.
    await side.send("SET", "other:{busy}", "x");
    const waiter = Lock.acquire(waiterClient, "busy", { timeout: 10_000 });
    await until(
      async () => await side.send("ZCARD", "deadbolt:{busy}:line") === 1,
      5_000,
      "the waiter's place in line",
    );

    const once = await cli(["top", "--once", "--json", "--redis", server.url]);
    assert.equal(once.code, 0, once.stderr);
    const view = viewOf(once.stdout);
    assert.equal(view.prefix, "deadbolt:");
    assert.equal(view.servers, 1);
    assert.equal(view.truncated, false);
    assert.deepEqual(
      view.locks.map((lock) => lock.name),
      ["busy", "a}b%c", "quiet", "short"],
    );
    const [first] = view.locks;
    assert.equal(first.token, busy.token.slice(0, 8));
    assert.equal(first.fence, busy.fence);
    assert.equal(first.line, 1);
    assert.ok(first.subscribers >= 1, `${first.subscribers} subscribers`);
    assert.ok(first.leaseMs! > 20_000 && first.leaseMs! <= 30_000);
    const short = view.locks.find((lock) => lock.name === "short")!;
    assert.ok(short.leaseMs! > 0 && short.leaseMs! <= 400, `${short.leaseMs}`);
    assert.equal(short.fence, null);

    const table = await cli(["top", "--once", "--redis", server.url]);
    assert.equal(table.code, 0, table.stderr);
    const lines = table.stdout.trimEnd().split("\n");
    assert.match(lines[0], /^deadbolt top — 4 lock\(s\) under "deadbolt:"/);
    assert.match(
      lines[1],
      /^NAME\s+TOKEN\s+FENCE\s+LEASE\s+LINE\s+SUBSCRIBED$/,
    );
    assert.match(
      lines[2],
      new RegExp(`^busy\\s+${busy.token.slice(0, 8)}\\s+${busy.fence}\\s+\\d`),
    );
    assert.doesNotMatch(table.stdout, new RegExp(busy.token));

    // The short hold expires; the waiter gets "busy" once it is released.
    await until(
      async () => await side.send("EXISTS", "deadbolt:{short}") === 0,
      5_000,
      "the short hold's expiry",
    );
    await busy.release();
    await (await within(waiter, 5_000, "the waiter's acquisition")).release();
    await Promise.all([quiet.release(), odd.release()]);
    const after = viewOf(
      (await cli(["top", "--once", "--json", "--redis", server.url])).stdout,
    );
    assert.deepEqual(after.locks, []);
  } finally {
    holderClient.close();
    await conn.closed;
    await quitIoredis(waiterClient);
  }
});

Deno.test("deadbolt top refreshes every --interval until SIGINT, then exits 0", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  await side.send("SET", "deadbolt:{live}", "token", "PX", "60000");
  await using top = CliProcess.start([
    "top",
    "--interval",
    "200ms",
    "--redis",
    server.url,
  ]);
  const headings: string[] = [];
  while (headings.length < 2) {
    const line = await top.line(5_000);
    if (line.includes("deadbolt top —")) headings.push(line);
    else if (line.startsWith("live")) assert.match(line, /^live\s+token\s+-/);
  }
  top.kill("SIGINT");
  const { code, stderr } = await top.exit(5_000);
  assert.equal(code, 0, stderr);
});

Deno.test("deadbolt top scans every master of a Cluster from any one node", async () => {
  await using cluster = await startCluster({ replicasPerMaster: 0 });
  const client = new Cluster(cluster.startupNodes);
  try {
    const names = Array.from({ length: 12 }, (_, i) => `job-${i}`);
    const locks = await Promise.all(
      names.map((name) => Lock.acquire(client, name)),
    );
    const { code, stdout, stderr } = await cli([
      "top",
      "--once",
      "--json",
      "--redis",
      `redis://127.0.0.1:${cluster.nodes[1].port}`,
    ]);
    assert.equal(code, 0, stderr);
    const view = viewOf(stdout);
    assert.equal(view.servers, 3);
    assert.deepEqual(view.locks.map((lock) => lock.name).sort(), names.sort());
    await Promise.all(locks.map((lock) => lock.release()));
  } finally {
    await quitIoredis(client as unknown as Redis);
  }
});

Deno.test("deadbolt top bounds its scan with --max-keys, skips keys of other types, and takes a prefix with glob characters literally", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  for (let i = 0; i < 40; i++) {
    await side.send("SET", `deadbolt:{n${i}}`, `token-${i}`, "PX", "60000");
  }
  await side.send("HSET", "deadbolt:{a-hash}", "field", "value");
  await side.send("SET", "j*b:{literal}", "token", "PX", "60000");
  await side.send("SET", "jXb:{glob}", "token", "PX", "60000");
  const view = async (...args: string[]) => {
    const { code, stdout, stderr } = await cli([
      "top",
      "--once",
      "--json",
      "--redis",
      server.url,
      ...args,
    ]);
    assert.equal(code, 0, stderr);
    return viewOf(stdout);
  };
  const all = await view();
  assert.equal(all.truncated, false);
  assert.equal(all.locks.length, 40, "the hash is skipped");
  // 43 keys, 5 walked per call, at most 2 calls: a partial view.
  const partial = await view("--count", "5", "--max-keys", "10");
  assert.equal(partial.truncated, true);
  assert.ok(partial.scanned <= 20, `${partial.scanned} keys scanned`);
  const literal = await view("--prefix", "j*b:");
  assert.deepEqual(literal.locks.map((lock) => lock.name), ["literal"]);
});

Deno.test("deadbolt top ends on SIGINT even while its server does not answer", async () => {
  await using server = await startRedis();
  await using top = await liveTop(server.url);
  Deno.kill(server.pid, "SIGSTOP");
  try {
    // Nothing tells when top's next read is stuck on the stopped server:
    // three refreshes' time makes it all but certain.
    await new Promise((resolve) => setTimeout(resolve, 300));
    top.kill("SIGINT");
    const { code, stderr } = await top.exit(5_000);
    assert.equal(code, 0, stderr);
  } finally {
    Deno.kill(server.pid, "SIGCONT");
  }
});

Deno.test("a live deadbolt top outlives its server's death: it says so, tries again, and still ends on SIGINT", async () => {
  await using server = await startRedis();
  await using top = await liveTop(server.url);
  await server.stop();
  assert.match(
    await top.stderrLine(/Redis failed/, 5_000),
    /^deadbolt: Redis failed: .* \(trying again in 100 ms\)$/,
  );
  top.kill("SIGINT");
  const { code } = await top.exit(5_000);
  assert.equal(code, 0);
});

Deno.test("deadbolt top refuses a name and bad numbers (exit 64) before any Redis I/O", async () => {
  for (
    const args of [
      ["top", "report"],
      ["top", "--interval", "5ms"],
      ["top", "--count", "0"],
      ["top", "--max-keys", "x"],
      ["status", "report", "--once"],
    ]
  ) {
    // Port 1 answers nothing: a 64 here was decided before connecting.
    const { code, stderr } = await cli([
      ...args,
      "--redis",
      "redis://127.0.0.1:1",
    ]);
    assert.equal(code, 64, `${args.join(" ")}: ${stderr}`);
    assert.match(stderr, /^deadbolt: /);
  }
});
