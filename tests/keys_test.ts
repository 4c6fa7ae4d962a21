import assert from "node:assert/strict";
import { Lock } from "../mod.ts";
import { lockKeys } from "../src/keys.ts";
import { startRedis } from "./_redis.ts";
import { DbRedisShape, type RespClient } from "./_resp.ts";

const PREFIXES = ["deadbolt:", "", "app:v2:"];

/** The part of `key` Redis Cluster hashes: the text between the first `{` and the first `}` after it, if non-empty. */
function hashTag(key: string): string {
  const open = key.indexOf("{");
  if (open === -1) return key;
  const close = key.indexOf("}", open + 1);
  if (close === -1 || close === open + 1) return key;
  return key.slice(open + 1, close);
}

/** Inverts the documented encoding (`%` → `%25`, `}` → `%7D`); throws on anything else. */
function decode(tag: string): string {
  return tag.replace(/%(25|7D|.{0,2})/g, (escape, code) => {
    if (code === "25") return "%";
    if (code === "7D") return "}";
    throw new Error(`stray escape ${JSON.stringify(escape)} in ${tag}`);
  });
}

/** A small deterministic PRNG (mulberry32), so a failing name can be reproduced. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Names that stress the encoding: every string of up to 3 characters over the
 * escape alphabet, hand-picked collisions-in-waiting, and seeded random
 * strings that mix escapes, braces, `:fence` and multi-byte characters.
 */
function generateNames(): string[] {
  const alphabet = ["%", "}", "{", "7", "D", "2", "5", "x"];
  const names = [""];
  for (let length = 1, layer = [""]; length <= 3; length++) {
    layer = layer.flatMap((prefix) => alphabet.map((c) => prefix + c));
    names.push(...layer);
  }
  names.push(
    "%7D",
    "%257D",
    "%25",
    "%2525",
    "%%7D",
    "}%7D",
    "%7D}",
    "}x",
    "}",
    "}}",
    "{}",
    "{}x",
    "x{}",
    "x}",
    "a}:fence",
    "a:fence",
    "a}:fence}",
    ":fence",
    "}:fence",
    "nightly-report",
    "a b",
    "cr\rlf\n",
    "nul\0",
    "🔒",
    "é",
  );
  const random = prng(0xdeadb017);
  const parts = [..."%}{7D25x:é🔒 \0\n", ":fence", "%7D", "%25", "}x"];
  for (let i = 0; i < 3000; i++) {
    let name = "";
    const length = Math.floor(random() * 12);
    for (let j = 0; j < length; j++) {
      name += parts[Math.floor(random() * parts.length)];
    }
    names.push(name);
  }
  return [...new Set(names)];
}

const NAMES = generateNames();

/** Sends all `commands` at once (RespClient pipelines them) and returns the replies in order. */
function pipeline(
  side: RespClient,
  commands: string[][],
): Promise<unknown[]> {
  return Promise.all(commands.map(([cmd, ...args]) => side.send(cmd, ...args)));
}

Deno.test("Lock maps an ordinary name to deadbolt:{name}, its fence counter to deadbolt:{name}:fence, its channel to deadbolt:{name}:released and its line of waiting processes to deadbolt:{name}:line and :seats", async () => {
  await using server = await startRedis();
  await using connection = await server.connect();
  await using side = await server.connect();
  const client = new DbRedisShape(connection);
  for (const name of ["nightly-report", "my_lock", "user:42:email", "a b"]) {
    assert.deepEqual(lockKeys("deadbolt:", name), {
      lock: `deadbolt:{${name}}`,
      fence: `deadbolt:{${name}}:fence`,
      released: `deadbolt:{${name}}:released`,
      line: `deadbolt:{${name}}:line`,
      seats: `deadbolt:{${name}}:seats`,
    });
    assert.deepEqual(lockKeys("app:", name), {
      lock: `app:{${name}}`,
      fence: `app:{${name}}:fence`,
      released: `app:{${name}}:released`,
      line: `app:{${name}}:line`,
      seats: `app:{${name}}:seats`,
    });
    assert.equal(new Lock(client, name).key, `deadbolt:{${name}}`);
    assert.equal(new Lock(client, name, { prefix: "" }).key, `{${name}}`);
  }
  // The same keys in Redis: the token under the lock key, 1 in the counter.
  await using lock = await Lock.acquire(client, "nightly-report", {
    fencing: true,
  });
  assert.equal(lock.fence, 1);
  assert.equal(
    await side.send("GET", "deadbolt:{nightly-report}"),
    lock.token,
  );
  assert.equal(await side.send("GET", "deadbolt:{nightly-report}:fence"), "1");
  assert.equal(await side.send("DBSIZE"), 2);
});

Deno.test("lockKeys() is injective, and no lock key is any name's fence key", () => {
  assert.ok(NAMES.length > 2500, `${NAMES.length} names`);
  for (const prefix of PREFIXES) {
    const locks = new Map<string, string>();
    const fences = new Map<string, string>();
    for (const name of NAMES) {
      const { lock, fence, released } = lockKeys(prefix, name);
      assert.equal(released, `${lock}:released`);
      const clash = locks.get(lock) ?? fences.get(fence);
      assert.equal(
        clash,
        undefined,
        `${JSON.stringify(name)} and ${JSON.stringify(clash)} share ${lock}`,
      );
      locks.set(lock, name);
      fences.set(fence, name);
      assert.ok(lock.startsWith(prefix));
      assert.equal(fence, `${lock}:fence`);
    }
    for (const [fence, name] of fences) {
      assert.equal(
        locks.get(fence),
        undefined,
        `the fence key of ${JSON.stringify(name)} is a lock key`,
      );
    }
  }
});

Deno.test("lockKeys() puts the whole encoded name in the hash tag of both keys, so the name can be read back", () => {
  for (const prefix of PREFIXES) {
    for (const name of NAMES.filter((name) => name !== "")) {
      const { lock, fence, released } = lockKeys(prefix, name);
      const tag = hashTag(lock);
      assert.equal(lock, `${prefix}{${tag}}`, `tag of ${JSON.stringify(name)}`);
      assert.equal(hashTag(fence), tag);
      assert.equal(hashTag(released), tag);
      assert.equal(decode(tag), name);
    }
  }
  // Without the encoding, `}x` would give the empty tag `{}`, which Redis ignores.
  assert.equal(hashTag("deadbolt:{}x}"), "deadbolt:{}x}");
  assert.equal(hashTag(lockKeys("deadbolt:", "}x").lock), "%7Dx");
});

Deno.test("Lock keys share a Redis Cluster slot with their fence keys for every name, including names starting with }", async () => {
  await using server = await startRedis({
    args: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
  });
  await using connection = await server.connect();
  await using side = await server.connect();
  const client = new DbRedisShape(connection);
  const names = NAMES.filter((name) => name !== ""); // Lock refuses ""
  const pairs = names.map((name) => {
    const key = new Lock(client, name).key;
    const { lock, fence } = lockKeys("deadbolt:", name);
    assert.equal(key, lock, `lock.key of ${JSON.stringify(name)}`);
    return [lock, fence];
  });
  const slots = await pipeline(
    side,
    pairs.flat().map((key) => ["CLUSTER", "KEYSLOT", key]),
  );
  for (let i = 0; i < names.length; i++) {
    const [lockSlot, fenceSlot] = [slots[2 * i], slots[2 * i + 1]];
    assert.equal(typeof lockSlot, "number");
    assert.equal(
      lockSlot,
      fenceSlot,
      `${JSON.stringify(names[i])}: ${pairs[i][0]} in slot ${lockSlot}, ${
        pairs[i][1]
      } in slot ${fenceSlot}`,
    );
  }
  assert.ok(names.some((name) => name.startsWith("}")));
  // The check can fail: the unencoded keys of `}x` land in different slots.
  const [naiveLock, naiveFence] = await pipeline(side, [
    ["CLUSTER", "KEYSLOT", "deadbolt:{}x}"],
    ["CLUSTER", "KEYSLOT", "deadbolt:{}x}:fence"],
  ]);
  assert.notEqual(naiveLock, naiveFence);
});

Deno.test("Lock.acquire() with fencing runs on a single-node Redis Cluster for names that start with } or hold braces", async () => {
  await using server = await startRedis({
    args: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
  });
  await using connection = await server.connect();
  await using side = await server.connect();
  assert.equal(
    await side.send("CLUSTER", "ADDSLOTSRANGE", 0, 16383),
    "OK",
  );
  // No event announces the cluster state (a fresh master waits ~2 s before
  // turning writable); poll it with a deadline.
  const deadline = Date.now() + 10_000;
  while (!/cluster_state:ok/.test(String(await side.send("CLUSTER", "INFO")))) {
    assert.ok(Date.now() < deadline, "cluster_state never became ok");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const client = new DbRedisShape(connection);
  // A script whose declared keys span two slots fails with CROSSSLOT here.
  for (const name of ["}x", "}", "{}", "}{", "%7D", "a}:fence", "🔒}"]) {
    for (const expected of [1, 2]) {
      await using lock = await Lock.acquire(client, name, { fencing: true });
      assert.equal(lock.fence, expected, `fence of ${JSON.stringify(name)}`);
      assert.equal(await side.send("GET", lock.key), lock.token);
    }
  }
});
