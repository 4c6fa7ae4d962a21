import assert from "node:assert/strict";
import net from "node:net";
import { Cluster, Redis } from "npm:ioredis@6";
import { createClient } from "npm:redis@6";
import { Lock, LockTimeoutError } from "../mod.ts";
import { sharedSubscriber } from "../src/_subscriber.ts";
import { startCluster } from "./_cluster.ts";
import { freePort, startRedis } from "./_redis.ts";
import { evalClient, lineUp, until, within } from "./_util.ts";

// The wake-up connection's edges: one that never finishes opening, a wait
// called off by release(), channels left and rejoined, stale readings.

/**
 * A TCP listener that accepts connections and never answers; `open` counts
 * those the other side has not closed.
 */
function blackhole() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted: Deno.Conn[] = [];
  const reading: Promise<void>[] = [];
  let open = 0;
  // Reads until the other side closes (what it sends goes unanswered).
  const drain = async (conn: Deno.Conn) => {
    open++;
    try {
      const buffer = new Uint8Array(1024);
      while (await conn.read(buffer) !== null) {
        // unanswered
      }
    } catch {
      // reset, or closed here
    } finally {
      open--;
    }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        accepted.push(conn);
        reading.push(drain(conn));
      }
    } catch {
      // closed
    }
  })();
  return {
    port: listener.addr.port,
    get open() {
      return open;
    },
    async [Symbol.asyncDispose]() {
      listener.close();
      for (const conn of accepted) {
        try {
          conn.close();
        } catch {
          // closed by the other side's end already
        }
      }
      await accepting;
      await Promise.all(reading);
    },
  };
}

/**
 * A TCP listener that never accepts, its accept queue filled: the kernel
 * drops every further SYN (no SYN-ACK, no RST), so a connect to it stays
 * pending, as to a host behind a firewall that drops packets.
 */
async function droppingSyns() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  const queued: net.Socket[] = [];
  const connected = (socket: net.Socket) =>
    new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 250);
      socket.once("connect", () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  try {
    // Completed on loopback at once while the queue has room.
    for (let i = 0; i < 10_000; i++) {
      const socket = net.createConnection({ host: "127.0.0.1", port });
      socket.on("error", () => {});
      if (!await connected(socket)) {
        socket.destroy();
        break;
      }
      queued.push(socket);
    }
  } catch (error) {
    for (const socket of queued) socket.destroy();
    listener.close();
    throw error;
  }
  return {
    port,
    [Symbol.dispose]() {
      for (const socket of queued) socket.destroy();
      listener.close();
    },
  };
}

/**
 * Records every TCP socket that a Node client opens (through
 * `net.createConnection`, as ioredis does) until disposed.
 */
function trackSockets() {
  const sockets: net.Socket[] = [];
  const create = net.createConnection;
  const tracking = (...args: Parameters<typeof net.createConnection>) => {
    const socket = create(...args);
    sockets.push(socket);
    return socket;
  };
  // deno-lint-ignore no-explicit-any
  (net as any).createConnection = tracking;
  return {
    /** Sockets opened since, and not yet destroyed. */
    open: () => sockets.filter((socket) => !socket.destroyed).length,
    [Symbol.dispose]() {
      // deno-lint-ignore no-explicit-any
      (net as any).createConnection = create;
    },
  };
}

Deno.test("a wake-up connection that never finishes opening neither hangs the wait nor any later release() (ioredis, stalled subscriber)", async () => {
  await using server = await startRedis();
  await using hole = blackhole();
  await using side = await server.connect();
  const waiter = new Redis(server.port, "127.0.0.1");
  // deadbolt's subscriber goes to a server that accepts and never answers.
  const duplicate = waiter.duplicate.bind(waiter);
  waiter.duplicate = (options) =>
    duplicate({ ...options, port: hole.port, connectTimeout: 60_000 });
  try {
    const holder = await Lock.acquire(evalClient(side), "stalled-sub");
    await assert.rejects(
      within(
        Lock.acquire(waiter, "stalled-sub", { timeout: 300 }),
        2_500,
        "the timeout",
      ),
      LockTimeoutError,
    );
    const other = await Lock.acquire(waiter, "other");
    assert.equal(await within(other.release(), 2_500, "a release"), true);
    assert.equal(await holder.release(), true);
  } finally {
    await waiter.quit();
  }
});

Deno.test("a wake-up connection whose server never answers its handshake is closed once the wait has ended (node-redis)", async () => {
  await using server = await startRedis();
  await using hole = blackhole();
  await using side = await server.connect();
  const waiter = createClient({
    socket: { host: "127.0.0.1", port: server.port },
  });
  waiter.on("error", () => {});
  await waiter.connect();
  // deadbolt's subscriber goes to a server that accepts and never answers.
  const duplicate = waiter.duplicate.bind(waiter);
  // deno-lint-ignore no-explicit-any
  (waiter as any).duplicate = (overrides: any) =>
    duplicate({
      ...overrides,
      socket: { ...overrides?.socket, host: "127.0.0.1", port: hole.port },
    });
  try {
    const holder = await Lock.acquire(evalClient(side), "unanswered-sub");
    await assert.rejects(
      within(
        Lock.acquire(waiter, "unanswered-sub", { timeout: 300 }),
        5_000,
        "the timeout",
      ),
      LockTimeoutError,
    );
    // Before: node-redis' connect() never settled, deadbolt waited for it
    // before closing, and the socket stayed open (a process that could not
    // exit).
    await until(
      () => Promise.resolve(hole.open === 0),
      3_000,
      "the unanswered wake-up connection closed",
    );
    assert.equal(await holder.release(), true);
  } finally {
    await waiter.close();
  }
});

Deno.test("a wake-up connection whose connect never completes (SYN dropped) is closed before the wait's end resolves (node-redis)", async () => {
  using dropping = await droppingSyns();
  await using server = await startRedis();
  await using side = await server.connect();
  // Its default connectTimeout (5 s).
  const waiter = createClient({
    socket: { host: "127.0.0.1", port: server.port },
  });
  waiter.on("error", () => {});
  await within(waiter.connect(), 2_000, "the waiter's connect");
  // deadbolt's subscriber goes to a server that never completes the connect.
  const duplicate = waiter.duplicate.bind(waiter);
  // deno-lint-ignore no-explicit-any
  (waiter as any).duplicate = (overrides: any) =>
    duplicate({
      ...overrides,
      socket: { ...overrides?.socket, host: "127.0.0.1", port: dropping.port },
    });
  try {
    const holder = await within(
      Lock.acquire(evalClient(side), "dropped-sub"),
      2_000,
      "the holder's acquire",
    );
    using sockets = trackSockets();
    await assert.rejects(
      within(
        Lock.acquire(waiter, "dropped-sub", { timeout: 300 }),
        2_500,
        "the timeout",
      ),
      LockTimeoutError,
    );
    // Before: destroy() cannot reach a socket still connecting; it stayed
    // until node-redis' connectTimeout, 5 s after it was opened.
    assert.equal(sockets.open(), 0, "wake-up sockets still open");
    assert.equal(await within(holder.release(), 2_000, "the release"), true);
  } finally {
    await within(waiter.close(), 2_000, "the waiter's close");
  }
});

Deno.test("a wake-up connection that is refused neither hangs the wait nor leaves it reconnecting (node-redis)", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const waiter = createClient({ url: server.url });
  waiter.on("error", () => {});
  await waiter.connect();
  // deadbolt's subscriber goes to a port where nothing listens.
  const refused = freePort();
  const duplicate = waiter.duplicate.bind(waiter);
  // deno-lint-ignore no-explicit-any
  (waiter as any).duplicate = (overrides: any) =>
    duplicate({
      ...overrides,
      socket: { ...overrides?.socket, host: "127.0.0.1", port: refused },
    });
  try {
    const holder = await Lock.acquire(evalClient(side), "refused-sub");
    await assert.rejects(
      within(
        Lock.acquire(waiter, "refused-sub", { timeout: 300 }),
        2_500,
        "the timeout",
      ),
      LockTimeoutError,
    );
    assert.equal(await holder.release(), true);
  } finally {
    await waiter.close();
  }
});

Deno.test("an ioredis Cluster's wake-up connection is gone at once after the wait, also on a node slow to close its side (default disconnectTimeout)", async () => {
  // A stalled master is never failed over meanwhile.
  await using cluster = await startCluster({ nodeTimeout: 30_000 });
  const name = "cluster-slow-close";
  const master = await cluster.masterFor(Lock.keys(name).lock);
  await using side = await master.server.connect();
  // The user's own options: ioredis' default disconnectTimeout (2 s).
  const waiter = new Cluster(cluster.startupNodes);
  waiter.on("error", () => {});
  waiter.on("node error", () => {});
  let stopped = false;
  try {
    const holder = await within(
      Lock.acquire(evalClient(side), name),
      2_000,
      "the holder's acquire",
    );
    // The waiter's own connection to the lock's master, opened before.
    assert.equal(
      await within(Lock.tryAcquire(waiter, name), 5_000, "the waiter's try"),
      null,
    );
    using sockets = trackSockets();
    const waiting = Lock.acquire(waiter, name, { timeout: 10_000 });
    waiting.catch(() => {});
    await until(
      async () =>
        (await side.send("PUBSUB", "SHARDNUMSUB", Lock.keys(name).released) as [
          string,
          number,
        ])[1] === 1,
      5_000,
      "the waiter's sharded subscription",
    );
    assert.ok(sockets.open() > 0);
    assert.equal(await within(holder.release(), 2_000, "the release"), true);
    const lock = await within(waiting, 2_000, "the grant");
    // Before the wake-up connection starts closing (at the next turn), its
    // server stops answering: it will not close its side.
    master.signal("SIGSTOP");
    stopped = true;
    // Before: each of its sockets was destroyed by ioredis' 2 s disconnect
    // timer, which kept the process alive until then.
    await until(
      () => Promise.resolve(sockets.open() === 0),
      1_000,
      "the close of the wake-up connection's sockets",
    );
    master.signal("SIGCONT");
    stopped = false;
    assert.equal(await within(lock.release(), 2_000, "the release"), true);
  } finally {
    if (stopped) master.signal("SIGCONT");
    await within(waiter.quit(), 5_000, "the waiter's quit");
  }
});

Deno.test("release() that calls off a waiting acquire() resolves once the wait's connection is closed (ioredis)", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const connections = async () =>
    String(await side.send("CLIENT", "LIST")).trim().split("\n").length;
  const redis = new Redis(server.port, "127.0.0.1");
  try {
    const holder = await Lock.acquire(evalClient(side), "called-off");
    const baseline = await connections();
    const lock = new Lock(redis, "called-off");
    const waiting = lock.acquire({ timeout: 20_000 });
    waiting.catch(() => {});
    await until(
      async () => await connections() > baseline,
      5_000,
      "the waiter's subscriber connection",
    );
    assert.equal(await within(lock.release(), 2_500, "the release"), false);
    // At once, no polling: the release resolved after the close.
    assert.equal(await connections(), baseline);
    await assert.rejects(
      waiting,
      (error) => (error as Error).name === "AbortError",
    );
    assert.equal(await holder.release(), true);
  } finally {
    await redis.quit();
  }
});

Deno.test("a channel left and joined again at once stays subscribed: the new SUBSCRIBE goes after the UNSUBSCRIBE", async () => {
  const sent: string[] = [];
  const subscribe = sharedSubscriber(() =>
    Promise.resolve({
      subscribe: (channel: string) => {
        sent.push(`SUBSCRIBE ${channel}`);
        return Promise.resolve();
      },
      unsubscribe: (channel: string) => {
        sent.push(`UNSUBSCRIBE ${channel}`);
        return Promise.resolve();
      },
      close: () => Promise.resolve(),
    })
  );
  const signal = new AbortController().signal;
  const stopA = await subscribe("a", () => {}, signal);
  const stopB = await subscribe("b", () => {}, signal);
  // "b" keeps the connection open; "a" is left and joined again at once.
  const left = stopA();
  const stopA2 = await subscribe("a", () => {}, signal);
  await left;
  await until(() => Promise.resolve(sent.length >= 4), 1_000, "4 commands");
  assert.deepEqual(sent, [
    "SUBSCRIBE a",
    "SUBSCRIBE b",
    "UNSUBSCRIBE a",
    "SUBSCRIBE a",
  ]);
  await stopA2();
  await stopB();
});

Deno.test("a queued waiter that times out after the head took the lock reports the new holder's lease, not the old one's", async () => {
  await using server = await startRedis();
  await using conn = await server.connect();
  await using other = await server.connect();
  const client = evalClient(conn);
  const remote = await Lock.acquire(evalClient(other), "stale", {
    ttl: 600_000,
  });
  const first = Lock.acquire(client, "stale", {
    ttl: 5_000,
    timeout: 10_000,
    maxRetryDelay: 20,
  });
  const late = [1, 2].map(() =>
    Lock.acquire(client, "stale", { timeout: 1_000 }).then(
      () => assert.fail("granted while held"),
      (error) => error,
    )
  );
  // The head has read the remote holder's 600 s lease by now.
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(await remote.release(), true);
  const head = await within(first, 2_000, "the head's grant");
  try {
    for (const error of await within(Promise.all(late), 3_000, "timeouts")) {
      assert.ok(error instanceof LockTimeoutError, String(error));
      assert.ok(
        error.remainingTtl <= 5_000,
        `remainingTtl ${error.remainingTtl}`,
      );
    }
  } finally {
    await head.release();
  }
});

Deno.test("a line of another type never fails an acquire, a wait or a release: nobody is in line", async () => {
  await using server = await startRedis();
  await using conn = await server.connect();
  const client = evalClient(conn);
  for (const key of ["line", "seats"]) {
    await conn.send("RPUSH", `deadbolt:{marked}:${key}`, "x");
    const lock = await Lock.acquire(client, "marked");
    const waiter = Lock.acquire(client, "marked", { timeout: 5_000 });
    await lineUp(client, "marked", 1);
    assert.equal(await lock.release(), true);
    const next = await within(waiter, 5_000, "the waiter's grant");
    assert.equal(await next.release(), true);
    assert.equal(await conn.send("EXISTS", lock.key), 0);
    assert.equal(await conn.send("DEL", `deadbolt:{marked}:${key}`), 1);
  }
});

Deno.test("after its wake-up connection is killed, a waiter is woken by a later release once it has reconnected (ioredis)", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const subscriberIds = async () =>
    String(await side.send("CLIENT", "LIST")).trim().split("\n")
      .filter((line) => /cmd=s?subscribe/.test(line))
      .map((line) => /id=(\d+)/.exec(line)![1]);
  const shardSubscribers = async () =>
    Number(
      (await side.send(
        "PUBSUB",
        "SHARDNUMSUB",
        "deadbolt:{killed-sub}:released",
      ) as [string, number])[1],
    );
  const redis = new Redis(server.port, "127.0.0.1");
  try {
    const holder = await Lock.acquire(evalClient(side), "killed-sub");
    // Backoff waits of 10 s: only a wake-up makes the handoff prompt.
    const waiting = Lock.acquire(redis, "killed-sub", {
      timeout: 20_000,
      retryDelay: 10_000,
      maxRetryDelay: 10_000,
    });
    await until(
      async () => await shardSubscribers() === 1,
      5_000,
      "the subscription",
    );
    const [id] = await subscriberIds();
    await side.send("CLIENT", "KILL", "ID", id);
    await until(
      async () => (await subscriberIds()).some((other) => other !== id),
      5_000,
      "a new subscriber connection",
    );
    await until(
      async () => await shardSubscribers() === 1,
      5_000,
      "the subscription again",
    );
    assert.equal(await holder.release(), true);
    const next = await within(waiting, 2_000, "the woken waiter's grant");
    assert.equal(await next.release(), true);
  } finally {
    await redis.quit();
  }
});

Deno.test("a release made while the wake-up subscription was being set up is caught as soon as it is set up, not at the end of a backoff sleep", async () => {
  await using server = await startRedis();
  await using conn = await server.connect();
  await using side = await server.connect();
  // A subscription that is set up only when the test says so, and then
  // hears nothing: the release comes before it.
  let setUp!: () => void;
  const settingUp = new Promise<void>((resolve) => setUp = resolve);
  let asked!: () => void;
  const subscribing = new Promise<void>((resolve) => asked = resolve);
  const client = {
    ...evalClient(conn),
    deadbolt: {
      subscribe: async () => {
        asked();
        await settingUp;
        return async () => {};
      },
    },
  };
  const holder = await Lock.acquire(evalClient(side), "missed-release");
  // Every backoff sleep at its longest: a second.
  const random = Math.random;
  Math.random = () => 0.999;
  try {
    const waiting = Lock.acquire(client, "missed-release", {
      timeout: 10_000,
      retryDelay: 1_000,
      maxRetryDelay: 1_000,
    });
    await within(subscribing, 2_000, "the subscription's start");
    assert.equal(await holder.release(), true);
    const since = performance.now();
    setUp();
    await using lock = await within(waiting, 2_000, "the grant");
    const took = performance.now() - since;
    // Without a wake-up once subscribed, up to a second (the backoff).
    assert.ok(took < 250, `acquired ${Math.round(took)} ms after set-up`);
    assert.equal(await side.send("GET", lock.key), lock.token);
  } finally {
    Math.random = random;
  }
});

Deno.test("a waiter behind a holder of its own process asks Redis nothing while it waits, also once its wake-up subscription is set up", async () => {
  await using server = await startRedis();
  await using conn = await server.connect();
  let scripts = 0;
  const plain = evalClient(conn);
  let live!: () => void;
  const subscribed = new Promise<void>((resolve) => live = resolve);
  const client = {
    eval: (script: string, keys: string[], args: string[]) => {
      scripts++;
      return plain.eval(script, keys, args);
    },
    deadbolt: {
      subscribe: () => {
        live();
        return Promise.resolve(async () => {});
      },
    },
  };
  const holder = await Lock.acquire(client, "held-here");
  const waiting = Lock.acquire(client, "held-here", { timeout: 10_000 });
  await within(subscribed, 2_000, "the waiter's subscription");
  const before = scripts;
  // Only the holder's release can free the lock; it hands it over here.
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(scripts - before, 0, "scripts sent while the holder held");
  assert.equal(await holder.release(), true);
  await using lock = await within(waiting, 2_000, "the handover");
  assert.equal(lock.held, true);
});

Deno.test("a wait's grant reaches its caller before its wake-up subscription starts closing, which the next release still awaits", async () => {
  await using server = await startRedis();
  await using conn = await server.connect();
  await using side = await server.connect();
  const events: string[] = [];
  let closed!: () => void;
  const closing = new Promise<void>((resolve) => closed = resolve);
  const client = {
    ...evalClient(conn),
    deadbolt: {
      subscribe: () =>
        Promise.resolve(async () => {
          events.push("closing");
          // A connection that takes a while to close.
          await new Promise((resolve) => setTimeout(resolve, 50));
          events.push("closed");
          closed();
        }),
    },
  };
  const holder = await Lock.acquire(evalClient(side), "grant-first");
  const waiting = Lock.acquire(client, "grant-first", { timeout: 10_000 });
  // Released from another client: the waiter gets it from Redis.
  await until(
    async () => await side.send("EXISTS", "deadbolt:{grant-first}:line") === 1,
    2_000,
    "the waiter in line",
  );
  assert.equal(await holder.release(), true);
  const lock = await within(waiting, 2_000, "the grant");
  events.push("granted");
  // Closing the connection on the way to the caller cost it 60-80 us.
  assert.deepEqual(events, ["granted"]);
  assert.equal(await within(lock.release(), 2_000, "the release"), true);
  // Nothing deadbolt opened outlives the release that ends its use.
  assert.deepEqual(events, ["granted", "closing", "closed"]);
  await within(closing, 1_000, "the close");
});

Deno.test("a message heard between a wait's grant and the close of its subscription does not send the next waiter behind that holder to Redis", async () => {
  await using server = await startRedis();
  await using conn = await server.connect();
  await using side = await server.connect();
  let scripts = 0;
  const plain = evalClient(conn);
  // The waiters' subscription: its listener stays callable, as a real
  // connection's would until it is closed.
  let hear: ((message?: string) => void) | undefined;
  const client = {
    eval: (script: string, keys: string[], args: string[]) => {
      scripts++;
      return plain.eval(script, keys, args);
    },
    deadbolt: {
      subscribe: (_channel: string, listener: (message?: string) => void) => {
        hear = listener;
        return Promise.resolve(async () => {});
      },
    },
  };
  // Held elsewhere, so that the first waiter subscribes and gets it from Redis.
  const other = await Lock.acquire(evalClient(side), "late-message");
  const first = Lock.acquire(client, "late-message", { timeout: 10_000 });
  await until(
    () => Promise.resolve(hear !== undefined),
    2_000,
    "the first waiter's subscription",
  );
  assert.equal(await other.release(), true);
  const holder = await within(first, 2_000, "the first waiter's grant");
  // The release's message, heard in the same turn as the grant.
  hear!("");
  const before = scripts;
  const next = Lock.acquire(client, "late-message", { timeout: 10_000 });
  await new Promise((resolve) => setTimeout(resolve, 100));
  // Only the holder's release can free the lock: it hands it over here.
  assert.equal(scripts - before, 0, "scripts sent while this process held");
  assert.equal(await holder.release(), true);
  await using lock = await within(next, 2_000, "the handover");
  assert.equal(lock.held, true);
});
