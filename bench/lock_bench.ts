/**
 * Lock throughput on a local redis-server that this suite starts and stops.
 *
 * Run: `deno task bench` (or `deno bench --allow-all bench/`).
 *
 * Groups compare like with like inside one run, since the machines are noisy:
 * - `uncontended`: one acquire + release cycle, per client.
 * - `library`: the library's own CPU per acquire + release, with a client
 *   that answers at once (no Redis): what it adds to the two round trips.
 * - `contended, zero-work` and `contended, 1 ms`: 2, 8 or 32 tasks in one
 *   process race for one lock; one iteration is every task getting it once.
 * - `telemetry`: the uncontended cycle with OpenTelemetry's SDK registered
 *   or not (see docs/observing.md).
 * - `handoff`: a holder on one connection releases, a waiter on another
 *   (standing for another process, woken by pub/sub) acquires.
 * At the end it prints the Redis commands per acquisition the contended
 * runs sent (script calls counted on the client; 1.0 is the least a lock
 * that records each grant in Redis can send).
 */

import { metrics, trace } from "npm:@opentelemetry/api@1.9.1";
import {
  MeterProvider,
  MetricReader,
} from "npm:@opentelemetry/sdk-metrics@2.12.1";
import {
  BasicTracerProvider,
  SimpleSpanProcessor,
} from "npm:@opentelemetry/sdk-trace-base@2.12.1";
import { Redis } from "npm:ioredis@6";
import { createClient } from "npm:redis@6";
import { fromIoredis, Lock, type ScriptClient } from "../mod.ts";
import { startRedis } from "../tests/_redis.ts";
import { DbRedisShape } from "../tests/_resp.ts";

const server = await startRedis();

const ioredis = new Redis(server.port, "127.0.0.1");
const nodeRedis = await createClient({ url: server.url }).connect();
const dbRedis = new DbRedisShape(await server.connect());

let round = 0;
const uniqueName = () => `bench-${round++}`;

Deno.bench({
  name: "acquire + release (ioredis 6)",
  group: "uncontended",
  baseline: true,
  async fn() {
    const lock = await Lock.acquire(ioredis, "uncontended");
    await lock.release();
  },
});

// The floor: the same two round trips without the library (no token check
// on delete, no validity, no renewal), to show what the library costs.
Deno.bench({
  name: "raw SET NX PX + DEL, no library (ioredis 6)",
  group: "uncontended",
  async fn() {
    await ioredis.set("raw", "token", "PX", 30_000, "NX");
    await ioredis.del("raw");
  },
});

Deno.bench({
  name: "acquire + release (node-redis 6)",
  group: "uncontended",
  async fn() {
    const lock = await Lock.acquire(nodeRedis, "uncontended");
    await lock.release();
  },
});

Deno.bench({
  name: "acquire + release (@db/redis shape)",
  group: "uncontended",
  async fn() {
    const lock = await Lock.acquire(dbRedis, "uncontended");
    await lock.release();
  },
});

Deno.bench({
  name: "acquire + release, fencing on (ioredis 6)",
  group: "uncontended",
  async fn() {
    const lock = await Lock.acquire(ioredis, "uncontended", { fencing: true });
    await lock.release();
  },
});

Deno.bench({
  name: "await using, a new name each time (ioredis 6)",
  group: "uncontended",
  async fn() {
    await using _lock = await Lock.acquire(ioredis, uniqueName());
  },
});

const _holder = await Lock.acquire(ioredis, "held", { ttl: 600_000 });
Deno.bench({
  name: "tryAcquire of a held lock (ioredis 6)",
  group: "uncontended",
  async fn() {
    await Lock.tryAcquire(ioredis, "held");
  },
});

// Counts script calls on the contended runs' client.
let calls = 0;
let acquisitions = 0;
const counted = fromIoredis(ioredis);
const counting: ScriptClient = {
  deadbolt: counted.deadbolt,
  eval: (script, keys, args) => (calls++, counted.eval(script, keys, args)),
  evalsha: (sha, keys, args) => (calls++, counted.evalsha!(sha, keys, args)),
};

async function contend(tasks: number, section: number): Promise<void> {
  await Promise.all(
    Array.from({ length: tasks }, async () => {
      const lock = await Lock.acquire(counting, `contended-${tasks}`, {
        timeout: 60_000,
      });
      acquisitions++;
      if (section > 0) {
        await new Promise((resolve) => setTimeout(resolve, section));
      }
      await lock.release();
    }),
  );
}

for (const section of [0, 1]) {
  for (const tasks of [2, 8, 32]) {
    Deno.bench({
      name: `${tasks} tasks, one lock (ioredis 6)`,
      group: section === 0 ? "contended, zero-work" : "contended, 1 ms",
      baseline: tasks === 8,
      n: section === 0 ? 200 : 20,
      async fn() {
        await contend(tasks, section);
      },
    });
  }
}

Deno.bench({
  name: "8 tasks, 8 different locks (ioredis 6)",
  group: "contended, zero-work",
  n: 200,
  async fn() {
    await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const lock = await Lock.acquire(ioredis, `spread-${i}`);
        await lock.release();
      }),
    );
  },
});

// A client that answers every script at once, as a grant or a release.
const instant: ScriptClient = {
  eval: (_script, _keys, args) =>
    Promise.resolve(args.length >= 3 ? [1, 0] : 1),
  evalsha: (_sha, _keys, args) =>
    Promise.resolve(args.length >= 3 ? [1, 0] : 1),
};

Deno.bench({
  name: "acquire + release, library CPU only (instant client)",
  group: "library",
  async fn() {
    const lock = await Lock.acquire(instant, "cpu");
    await lock.release();
  },
});

// The same cycle with cold caches, as in a real loop, where the process
// sleeps through each round trip while Redis runs: an 8 MB walk before the
// acquire and before the release evicts the library's code and data. The
// library's cold cost is the difference between these two rows (it is what
// an uncontended acquire + release adds to its round trips; see
// docs/benchmarks.md).
const evict = new Float64Array(1 << 20);
let walked = 0;
function walk(): void {
  let sum = 0;
  // One read per 64-byte line; the zeros keep the work the same each time.
  for (let i = 0; i < evict.length; i += 8) sum += evict[i];
  walked += sum;
}

Deno.bench({
  name: "cold caches: two 8 MB walks (subtract from the next row)",
  group: "library, cold",
  baseline: true,
  async fn() {
    walk();
    await Promise.resolve();
    walk();
    await Promise.resolve();
  },
});

Deno.bench({
  name: "cold caches: two 8 MB walks + acquire + release (instant client)",
  group: "library, cold",
  async fn() {
    walk();
    const lock = await Lock.acquire(instant, "cold");
    walk();
    await lock.release();
  },
});

// Telemetry: the same cycle with nothing registered, with the SDK's meter
// provider, and with its tracer provider too, registered around the timed
// part only (bench/telemetry.ts interleaves them for the ratios).
class Collected extends MetricReader {
  protected override onForceFlush = () => Promise.resolve();
  protected override onShutdown = () => Promise.resolve();
}
const meterProvider = new MeterProvider({ readers: [new Collected()] });
const tracerProvider = new BasicTracerProvider({
  spanProcessors: [
    new SimpleSpanProcessor({
      export: (_spans, done) => done({ code: 0 }),
      shutdown: () => Promise.resolve(),
    }),
  ],
});
for (
  const [mode, register] of [
    ["nothing registered", () => {}],
    ["SDK metrics", () => metrics.setGlobalMeterProvider(meterProvider)],
    ["SDK metrics and traces", () => {
      metrics.setGlobalMeterProvider(meterProvider);
      trace.setGlobalTracerProvider(tracerProvider);
    }],
  ] as const
) {
  Deno.bench({
    name: `acquire + release, ${mode} (ioredis 6)`,
    group: "telemetry",
    baseline: mode === "nothing registered",
    async fn(b) {
      register();
      b.start();
      const lock = await Lock.acquire(ioredis, "telemetry");
      await lock.release();
      b.end();
      metrics.disable();
      trace.disable();
    },
  });
}

// Handoff: the waiter's client stands for another process (no local queue
// is shared), so the release reaches it by pub/sub.
const waiterRedis = new Redis(server.port, "127.0.0.1");
Deno.bench({
  name: "release → acquired on another connection (ioredis 6, pub/sub)",
  group: "handoff",
  n: 200,
  async fn(b) {
    const holder = await Lock.acquire(ioredis, "handoff");
    const waiting = Lock.acquire(waiterRedis, "handoff", {
      timeout: 10_000,
      retryDelay: 1_000,
      maxRetryDelay: 1_000,
    });
    // Let the waiter be turned away and subscribe before the clock starts.
    await new Promise((resolve) => setTimeout(resolve, 5));
    b.start();
    await holder.release();
    const lock = await waiting;
    b.end();
    await lock.release();
  },
});

// Deno.bench has no teardown: close the clients, then kill the server.
globalThis.addEventListener("unload", () => {
  if (acquisitions > 0) {
    console.log(
      `contended runs: ${
        (calls / acquisitions).toFixed(2)
      } Redis commands per acquisition (${acquisitions} acquisitions)`,
    );
  }
  ioredis.disconnect();
  waiterRedis.disconnect();
  nodeRedis.destroy();
  dbRedis.close();
  server.signal("SIGKILL");
  Deno.removeSync(server.dir, { recursive: true });
});
