/**
 * deadbolt side by side with the Redis locks people use from npm, on one
 * redis-server that this script starts and stops.
 *
 * Usage: `deno run -A bench/compare/compare.ts [--rounds N] [--seconds S] [--handoffs H] [--own-handoffs H] [--runtime node [--node PATH]]`
 *   --rounds N    rounds (default 3); each round runs every workload for
 *                 every library, in an order rotated by one each round, so
 *                 machine noise hits all alike (within a round, uncontended
 *                 runs take turns in 10 slices, handoffs one by one)
 *   --seconds S   measuring window: S for uncontended, 2·S for each contended
 *                 workload (default 1)
 *   --handoffs H  handoffs per peer library over all rounds (default 60)
 *   --own-handoffs H  handoffs over all rounds for deadbolt's rows and the
 *                 references without a library (default 300): a p99 of 60
 *                 is nearly their maximum, and these rows take milliseconds
 *                 each where a peer's take up to 300
 *   --runtime node  run the comparison under Node 24 instead (Deno still
 *                 runs the redis-server; see `_under_node.ts`)
 * With the defaults a run takes about three minutes on 2 cores. It prints
 * Markdown tables on stdout and progress on stderr.
 *
 * Workloads:
 * 1. Uncontended: one client, acquire + release in a loop; ops/s.
 * 2. Handoff across processes: worker A holds, worker B waits (both are
 *    `_handoff_worker.ts` processes); A notes the time and releases, B notes
 *    the time it acquires. The latency is B's time minus A's, on the shared
 *    clock `performance.timeOrigin + performance.now()`. Two references
 *    without a library (`HANDOFF_REFERENCES`) show the least a handoff by a
 *    pub/sub message costs here: a message and one round trip, or a message
 *    alone.
 * 3. and 4. 32 async workers in this process on one key, sharing one ioredis
 *    client, with a zero-work or a 1 ms critical section: critical sections
 *    per second, Redis commands per acquisition, acquisitions per worker
 *    (least/most) and the p99 wait.
 * 5. and 6. The same for semaphores (limit 4).
 * 7. Fairness across processes: 4 processes × 4 workers on one key, each
 *    process with its own connection (`../_fairness.ts`), zero-work and 1 ms
 *    sections, for deadbolt and the best-placed peer of the tables above
 *    (redis-semaphore's Mutex), and for both semaphores (limit 4):
 *    acquisitions least/most per process and per worker.
 * 8. Handoff across processes for both semaphores with one permit.
 *
 * Library versions and retry policies are in `_libraries.ts`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  args,
  type Child,
  isDeno,
  platform,
  readText,
  runtimeLabel,
  spawnScript,
} from "../_runtime.ts";
import { fromIoredis } from "../../mod.ts";
import { lockKeys } from "../../src/keys.ts";
import { ACQUIRE, RELEASE } from "../../src/scripts.ts";
import { runScript, toIntegers } from "../../src/_run_script.ts";
import { PATIENCE_MS, placeFor } from "../../src/_seat.ts";
import { fairnessRun, spread } from "../_fairness.ts";
import {
  type Contender,
  HANDOFF_REFERENCES,
  HANDOFF_SEMAPHORE_VARIANTS,
  LIMIT,
  readLines,
  Redis,
  SEMAPHORE_VARIANTS,
  sleep,
  TTL,
  type Variant,
  variant,
  VARIANTS,
} from "./_libraries.ts";

const { values: flags } = parseArgs({
  args,
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "1" },
    handoffs: { type: "string", default: "60" },
    "own-handoffs": { type: "string", default: "300" },
    runtime: { type: "string", default: "deno" },
    node: { type: "string" },
    port: { type: "string" },
  },
});
if (isDeno && flags.runtime === "node") {
  const { underNode } = await import("./_under_node.ts");
  Deno.exit(await underNode(args));
}
const ROUNDS = positive("rounds", flags.rounds);
const SECONDS = positive("seconds", flags.seconds);
const HANDOFFS = positive("handoffs", flags.handoffs);
const OWN_HANDOFFS = positive("own-handoffs", flags["own-handoffs"]);
const WORKERS = 32;
const SLICES = 10;

function positive(name: string, text: string): number {
  const value = Number(text);
  if (!(value > 0)) {
    throw new RangeError(
      `Cannot run the comparison as '--${name}' must be a positive number: current value is ${text}`,
    );
  }
  return value;
}

// ---------------------------------------------------------------- measuring

const now = (): number => performance.now();
const progress = (text: string): void => console.error(text);

async function connect(port: number): Promise<Redis> {
  const redis = new Redis(port, "127.0.0.1");
  await new Promise((resolve) => redis.once("ready", resolve));
  return redis;
}

/** Counts the commands a client sends, pipelined or not, scripts as one. */
function countCommands(redis: Redis): { sent: number } {
  const counter = { sent: 0 };
  const send = redis.sendCommand.bind(redis);
  redis.sendCommand = ((...args: Parameters<typeof send>) => {
    counter.sent++;
    return send(...args);
  }) as typeof redis.sendCommand;
  return counter;
}

/**
 * Server-side command count from `INFO commandstats`: calls plus rejected
 * calls of every command but INFO. It counts commands run inside Lua
 * scripts too (an EVALSHA that runs GET and SET counts 3).
 */
function serverCalls(info: string): number {
  let total = 0;
  for (const match of info.matchAll(/^cmdstat_([^:]+):(.*)$/gm)) {
    if (match[1] === "info") continue;
    for (const field of ["calls", "rejected_calls"]) {
      const value = new RegExp(`(?:^|,)${field}=(\\d+)`).exec(match[2]);
      if (value) total += Number(value[1]);
    }
  }
  return total;
}

/** The hand-written floor: SET NX PX, then a compare-and-delete by EVALSHA. */
const FLOOR: Variant = {
  id: "floor",
  library: "no library: SET NX PX + EVALSHA compare-and-delete",
  policy: "reference, not a lock library",
  peer: false,
  interval: 0,
  open(redis) {
    const script =
      'if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0';
    const sha = redis.script("LOAD", script) as Promise<string>;
    return (key) => ({
      async acquire() {
        const token = crypto.randomUUID();
        if (await redis.set(key, token, "PX", TTL, "NX") !== "OK") {
          throw new Error(`'${key}' is held; the floor never waits`);
        }
        return { release: async () => redis.evalsha(await sha, 1, key, token) };
      },
    });
  },
  gaveUp: () => false,
};

/**
 * deadbolt's own acquire and release scripts, sent directly (no Lock, no
 * lease, no timers), with the keys and arguments a `Lock` sends (a waiter's
 * seat, its place and the patience): what the Lua costs against the floor,
 * and what the library adds on top.
 */
const SCRIPTS_ONLY: Variant = {
  id: "scripts",
  library: "deadbolt's scripts alone (no Lock object)",
  policy: "reference, not a lock library",
  peer: false,
  interval: 0,
  open(redis) {
    const client = fromIoredis(redis);
    const seat = crypto.randomUUID();
    const place = String(
      placeFor({ timeout: TTL, retryDelay: 5, maxRetryDelay: 1_000 }, 0),
    );
    return (key) => {
      const { lock, fence, released, line, seats } = lockKeys(
        "deadbolt:",
        key,
      );
      return {
        async acquire() {
          const token = crypto.randomUUID();
          const [granted] = toIntegers(
            await runScript(client, ACQUIRE, [lock, fence, line, seats], [
              token,
              String(TTL),
              "0",
              seat,
              place,
              String(PATIENCE_MS),
            ]),
            2,
          );
          if (granted !== 1) throw new Error(`'${key}' is held`);
          return {
            release: () =>
              runScript(client, RELEASE, [lock, released, line, seats], [
                token,
              ]),
          };
        },
      };
    };
  },
  gaveUp: () => false,
};

interface Uncontended {
  ops: number;
  seconds: number;
  perRound: number[];
}

/**
 * One round of the uncontended workload: each variant gets its own client
 * and key, and the round's `ms` per variant is cut into `SLICES` slices
 * taken in turn, so a burst of load on the machine hits them all alike.
 */
async function uncontendedRound(
  port: number,
  variants: Variant[],
  round: number,
  ms: number,
): Promise<Map<string, { ops: number; seconds: number }>> {
  const runs = await Promise.all(variants.map(async (v) => {
    const redis = await connect(port);
    const lock = v.open(redis)(`uncontended:${v.id}:${round}`);
    await (await lock.acquire()).release(); // loads scripts, warms the JIT
    return { v, redis, lock, ops: 0, seconds: 0 };
  }));
  try {
    for (let slice = 0; slice < SLICES; slice++) {
      for (const run of runs) {
        const start = now();
        const end = start + ms / SLICES;
        while (now() < end) {
          await (await run.lock.acquire()).release();
          run.ops++;
        }
        run.seconds += (now() - start) / 1000;
      }
    }
    return new Map(runs.map((run) => [run.v.id, run]));
  } finally {
    await Promise.all(runs.map((run) => run.redis.quit()));
  }
}

interface Contended {
  acquisitions: number;
  seconds: number;
  sent: number;
  server: number;
  waits: number[];
  gaveUp: number;
  /** Least and most acquisitions of one worker, per round. */
  spread: { least: number; most: number }[];
}

async function contended(
  port: number,
  side: Redis,
  v: Variant,
  key: string,
  ms: number,
  section: number,
): Promise<Omit<Contended, "spread"> & { least: number; most: number }> {
  const redis = await connect(port);
  try {
    const counter = countCommands(redis);
    const open = v.open(redis);
    const contenders = Array.from({ length: WORKERS }, () => open(key));
    await (await contenders[0].acquire()).release();

    const counts = new Array<number>(WORKERS).fill(0);
    const waits: number[] = [];
    let gaveUp = 0;
    let stopped = false;
    const serverBefore = serverCalls(await side.info("commandstats"));
    const sentBefore = counter.sent;
    const start = now();
    const end = start + ms;
    let sentAtEnd = 0;
    let serverAtEnd: Promise<number> = Promise.resolve(0);
    // Closes the window once: when its timer fires, or when a worker finds
    // the time past its end first (a fast lock can run its workers through
    // the end before the event loop gets to the timer).
    const close = () => {
      if (stopped) return;
      stopped = true;
      sentAtEnd = counter.sent;
      serverAtEnd = side.info("commandstats").then(serverCalls);
    };
    const timer = setTimeout(close, ms);

    const work = async (worker: number, lock: Contender): Promise<void> => {
      while (!stopped) {
        const wanted = now();
        let held;
        while (!held && !(stopped && now() > end)) {
          try {
            held = await lock.acquire();
          } catch (error) {
            if (!v.gaveUp(error)) throw error;
            gaveUp++;
          }
        }
        const got = now();
        if (got > end) close();
        if (!held || got > end) {
          // Still waiting when the window closed: its wait is at least this.
          if (end > wanted) waits.push(end - wanted);
          await held?.release();
          return;
        }
        waits.push(got - wanted);
        counts[worker]++;
        if (section > 0) await sleep(section);
        await held.release();
      }
    };
    await Promise.all(contenders.map((lock, i) => work(i, lock)));
    clearTimeout(timer);
    const acquisitions = counts.reduce((a, b) => a + b, 0);
    return {
      acquisitions,
      seconds: ms / 1000,
      sent: sentAtEnd - sentBefore,
      server: (await serverAtEnd) - serverBefore,
      waits,
      gaveUp,
      least: Math.min(...counts),
      most: Math.max(...counts),
    };
  } finally {
    await redis.quit();
  }
}

/** A `_handoff_worker.ts` process, spoken to in JSON lines. */
class Worker implements AsyncDisposable {
  #child: Child;
  #lines: AsyncGenerator<string>;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #name: string;

  constructor(name: string, port: number) {
    this.#name = name;
    this.#child = spawnScript(
      new URL("./_handoff_worker.ts", import.meta.url),
      [String(port)],
    );
    this.#lines = readLines(this.#child.stdout);
    this.#stdin = this.#child.stdin.getWriter();
  }

  send(command: Record<string, unknown>): Promise<void> {
    return this.#stdin.write(
      new TextEncoder().encode(JSON.stringify(command) + "\n"),
    );
  }

  /** The next line, which must be `event`; fails after 60 s or if the worker exits. */
  async next(event: string): Promise<Record<string, number>> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${this.#name}: no '${event}' within 60 s`)),
        60_000,
      );
    });
    try {
      const line = await Promise.race([this.#lines.next(), timeout]);
      if (line.done) throw new Error(`${this.#name} exited before '${event}'`);
      const message = JSON.parse(line.value);
      if (message.event !== event) {
        throw new Error(
          `${this.#name}: expected '${event}', got ${line.value}`,
        );
      }
      return message;
    } finally {
      clearTimeout(timer);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.send({ op: "exit" });
      await this.#stdin.close();
    } catch {
      // It has exited already; there is nothing left to tell it.
    }
    for await (const _ of this.#lines) {
      // Drain stdout so the process can finish writing and exit.
    }
    await this.#child.status;
  }
}

interface Handoff {
  latencies: number[];
  gaveUp: number;
}

/** One handoff from `holder` to `waiter`: the latency in ms, and how often the waiter's policy gave up. */
async function handoff(
  holder: Worker,
  waiter: Worker,
  v: Variant,
  key: string,
): Promise<{ latency: number; gaveUp: number }> {
  await holder.send({ op: "hold", id: v.id, key });
  await holder.next("held");
  await waiter.send({ op: "wait", id: v.id, key });
  await waiter.next("waiting");
  await holder.send({ op: "release", after: 5 + Math.random() * v.interval });
  const released = await holder.next("released");
  const acquired = await waiter.next("acquired");
  return { latency: acquired.at - released.at, gaveUp: acquired.gaveUp };
}

// ---------------------------------------------------------------- reporting

function percentile(values: number[], p: number): number {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

const integer = (x: number): string => Math.round(x).toLocaleString("en-US");
const ms = (x: number): string =>
  `${x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0)} ms`;
const decimal = (x: number): string => x.toFixed(x < 10 ? 2 : 1);

function ratio(value: number, best: number): string {
  const r = value / best;
  if (!Number.isFinite(r)) return "—";
  return `${r < 10 ? r.toFixed(2) : r < 100 ? r.toFixed(1) : r.toFixed(0)}×`;
}

/** The best peer value of a metric: the largest if `higher` is better, else the smallest. */
function bestPeer(
  rows: { v: Variant; value: number }[],
  higher: boolean,
): number {
  const values = rows.filter((row) => row.v.peer).map((row) => row.value);
  return higher ? Math.max(...values) : Math.min(...values);
}

function table(headers: string[], rows: string[][]): string {
  const align = headers.map((_, i) => (i < 2 ? "---" : "---:"));
  return [headers, align, ...rows].map((cells) => `| ${cells.join(" | ")} |`)
    .join("\n");
}

const name = (v: Variant): string => v.peer ? v.library : `**${v.library}**`;

// ---------------------------------------------------------------- main

const cpu = (await readText("/proc/cpuinfo"))
  .match(/^model name\s*:\s*(.*)$/m)?.[1] ?? "unknown CPU";

// Under Node, the Deno side (`--runtime node`) runs the server.
await using server = flags.port
  ? { port: Number(flags.port), [Symbol.asyncDispose]: async () => {} }
  : await (await import("../../tests/_redis.ts")).startRedis();
const side = await connect(server.port);
const redisVersion =
  (await side.info("server")).match(/^redis_version:(\S+)/m)?.[1] ??
    "unknown";
const started = now();
const timerMs = await (async () => {
  let sleeps = 0;
  const start = now();
  while (now() - start < 500) {
    await sleep(1);
    sleeps++;
  }
  return (now() - start) / sleeps;
})();

const holder = new Worker("worker A", server.port);
const waiter = new Worker("worker B", server.port);
await Promise.all([holder.next("ready"), waiter.next("ready")]);

const uncontendedResults = new Map<string, Uncontended>();
const handoffResults = new Map<string, Handoff>();
const contendedResults = [
  new Map<string, Contended>(),
  new Map<string, Contended>(),
];
// The semaphore rows: limit LIMIT, zero-work and 1 ms sections.
const semaphoreResults = [
  new Map<string, Contended>(),
  new Map<string, Contended>(),
];
const SECTIONS = [0, 1];
// The fairness rows: the locks compared, and per section and lock the
// rounds' sections/s and spreads.
const FAIR_IDS = [
  "deadbolt",
  "semaphore",
  "deadbolt-semaphore",
  "peer-semaphore",
];
const fairResults = new Map<
  string,
  { rate: number[]; perProcess: number[]; perWorker: number[]; waits: number[] }
>();
// Script calls per second on one client, one at a time and with WORKERS in
// flight, measured each round between the uncontended and contended
// workloads.
const callRates: { sequential: number; pipelined: number }[] = [];

/**
 * The ceilings for a lock that records every grant in Redis with one script
 * call (a one-line script by EVALSHA, the least a grant costs): how many
 * such calls one client completes per second when each waits for the one
 * before (a handoff that waits for Redis), and when `WORKERS` loops keep
 * calls in flight on the one connection (handoffs that do not wait).
 */
async function callRate(
  port: number,
  ms: number,
): Promise<{ sequential: number; pipelined: number }> {
  const redis = await connect(port);
  try {
    const sha = await redis.script("LOAD", "return 1") as string;
    const run = async (loops: number) => {
      let calls = 0;
      const start = now();
      await Promise.all(
        Array.from({ length: loops }, async () => {
          while (now() - start < ms / 2) {
            await redis.evalsha(sha, 0);
            calls++;
          }
        }),
      );
      return calls / ((now() - start) / 1000);
    };
    return { sequential: await run(1), pipelined: await run(WORKERS) };
  } finally {
    await redis.quit();
  }
}

/** Adds one round's run to the totals of variant `id`. */
function addUp(
  totals: Map<string, Contended>,
  id: string,
  r: Awaited<ReturnType<typeof contended>>,
): void {
  const total = totals.get(id) ?? {
    acquisitions: 0,
    seconds: 0,
    sent: 0,
    server: 0,
    waits: [],
    gaveUp: 0,
    spread: [],
  };
  total.acquisitions += r.acquisitions;
  total.seconds += r.seconds;
  total.sent += r.sent;
  total.server += r.server;
  for (const wait of r.waits) total.waits.push(wait);
  total.gaveUp += r.gaveUp;
  total.spread.push({ least: r.least, most: r.most });
  totals.set(id, total);
}

const rotate = <T>(list: readonly T[], by: number): T[] =>
  list.slice(by % list.length).concat(list.slice(0, by % list.length));

/**
 * One round of the contended workload for `variants` (each section in
 * turn), added to `results`; keys start with `prefix`, progress lines with
 * `label`.
 */
async function contendedRuns(
  variants: readonly Variant[],
  results: Map<string, Contended>[],
  prefix: string,
  label: string,
  round: number,
): Promise<void> {
  for (const [i, section] of SECTIONS.entries()) {
    for (const v of rotate(variants, round)) {
      const r = await contended(
        server.port,
        side,
        v,
        `${prefix}:${section}:${v.id}:${round}`,
        2 * SECONDS * 1000,
        section,
      );
      addUp(results[i], v.id, r);
      progress(
        `  ${label}${WORKERS} workers, ${section} ms ${v.id}: ${
          integer(r.acquisitions / r.seconds)
        } cs/s, ${r.least}–${r.most} per worker`,
      );
    }
  }
}

for (let round = 0; round < ROUNDS; round++) {
  progress(`round ${round + 1}/${ROUNDS}`);
  const uncontendedRun = await uncontendedRound(
    server.port,
    rotate([...VARIANTS, SCRIPTS_ONLY, FLOOR], round),
    round,
    SECONDS * 1000,
  );
  for (const [id, r] of uncontendedRun) {
    const total = uncontendedResults.get(id) ??
      { ops: 0, seconds: 0, perRound: [] };
    total.ops += r.ops;
    total.seconds += r.seconds;
    total.perRound.push(r.ops / r.seconds);
    uncontendedResults.set(id, total);
    progress(`  uncontended ${id}: ${integer(r.ops / r.seconds)} ops/s`);
  }
  // Handoffs take turns across variants too; the first of each variant in
  // a round loads its scripts and warms up, and is not counted.
  // Peers stop at their count; deadbolt's rows and the references go on,
  // still taking turns with each other.
  const perRound = Math.ceil(HANDOFFS / ROUNDS);
  const ownPerRound = Math.ceil(OWN_HANDOFFS / ROUNDS);
  for (let i = 0; i <= Math.max(perRound, ownPerRound); i++) {
    for (
      const v of rotate(
        [...VARIANTS, ...HANDOFF_SEMAPHORE_VARIANTS, ...HANDOFF_REFERENCES],
        round,
      )
    ) {
      if (i > (v.peer ? perRound : ownPerRound)) continue;
      const r = await handoff(holder, waiter, v, `handoff:${v.id}:${round}`);
      if (i === 0) continue;
      const total = handoffResults.get(v.id) ?? { latencies: [], gaveUp: 0 };
      total.latencies.push(r.latency);
      total.gaveUp += r.gaveUp;
      handoffResults.set(v.id, total);
    }
  }
  progress(
    `  ${perRound} handoffs for each peer, ${ownPerRound} for deadbolt and the references`,
  );
  const rate = await callRate(server.port, SECONDS * 1000);
  callRates.push(rate);
  progress(
    `  script calls: ${integer(rate.sequential)}/s one at a time, ${
      integer(rate.pipelined)
    }/s with ${WORKERS} in flight`,
  );
  await contendedRuns(VARIANTS, contendedResults, "contended", "", round);
  await contendedRuns(
    SEMAPHORE_VARIANTS,
    semaphoreResults,
    "semaphore",
    `semaphore (limit ${LIMIT}), `,
    round,
  );
  for (const section of SECTIONS) {
    for (const id of rotate(FAIR_IDS, round)) {
      const r = await fairnessRun(
        server.port,
        id,
        `fair:${section}:${id}:${round}`,
        section,
        { ms: 2 * SECONDS * 1000 },
      );
      const key = `${id}\0${section}`;
      const total = fairResults.get(key) ??
        { rate: [], perProcess: [], perWorker: [], waits: [] };
      const acquisitions = r.perWorker.reduce((a, b) => a + b, 0);
      total.rate.push(acquisitions / (2 * SECONDS));
      total.perProcess.push(spread(r.perProcess));
      total.perWorker.push(spread(r.perWorker));
      for (const wait of r.waits) total.waits.push(wait);
      fairResults.set(key, total);
      progress(
        `  4 processes × 4 workers, ${section} ms ${id}: ${
          integer(acquisitions / (2 * SECONDS))
        } cs/s, per process ${r.perProcess.join("/")}`,
      );
    }
  }
}

await holder[Symbol.asyncDispose]();
await waiter[Symbol.asyncDispose]();
await side.quit();
const elapsed = (now() - started) / 1000;

const command = [
  "deno run -A bench/compare/compare.ts",
  ...(isDeno ? args : ["--runtime", "node"]),
].join(" ");
const out: string[] = [];
out.push(
  `## deadbolt and its peers, side by side`,
  "",
  `- Date: ${new Date().toISOString().replace(/\.\d+Z$/, "Z")}`,
  `- Machine: ${cpu}, ${navigator.hardwareConcurrency} cores, ${platform}`,
  `- ${runtimeLabel}; redis-server ${redisVersion} on loopback; ioredis 6 for every library`,
  `- Command: \`${command}\` (${ROUNDS} round${
    ROUNDS === 1 ? "" : "s"
  }, library order rotated each round; ${elapsed.toFixed(0)} s)`,
  `- Same lease for all: TTL ${
    integer(TTL)
  } ms. Ratios are value ÷ best peer's value (deadbolt and the two reference rows are not peers).`,
  "",
);

{
  const rows = [...VARIANTS, SCRIPTS_ONLY, FLOOR].map((v) => {
    const r = uncontendedResults.get(v.id)!;
    return { v, value: r.ops / r.seconds, r };
  });
  const best = bestPeer(rows, true);
  out.push(
    `### 1. Uncontended acquire + release, one client (${SECONDS} s per round)`,
    "",
    table(
      [
        "library",
        "retry policy",
        "ops/s",
        "× best peer (higher is better)",
        "per round",
      ],
      rows.map(({ v, value, r }) => [
        name(v),
        v.policy,
        integer(value),
        ratio(value, best),
        r.perRound.map(integer).join(", "),
      ]),
    ),
    "",
  );
}

/** A handoff table: latency from release in A to acquired in B. */
function handoffTable(title: string, variants: readonly Variant[]): void {
  const rows = variants.map((v) => {
    const r = handoffResults.get(v.id)!;
    return {
      v,
      p50: percentile(r.latencies, 50),
      p99: percentile(r.latencies, 99),
      r,
    };
  });
  const best50 = bestPeer(rows.map((r) => ({ ...r, value: r.p50 })), false);
  const best99 = bestPeer(rows.map((r) => ({ ...r, value: r.p99 })), false);
  out.push(
    title,
    "",
    table(
      [
        "library",
        "retry policy",
        "p50",
        "× best peer (lower is better)",
        "p99",
        "× best peer",
        "handoffs",
        "gave up",
      ],
      rows.map(({ v, p50, p99, r }) => [
        name(v),
        v.policy,
        ms(p50),
        ratio(p50, best50),
        ms(p99),
        ratio(p99, best99),
        String(r.latencies.length),
        String(r.gaveUp),
      ]),
    ),
    "",
    "A holds for 5 ms + a uniform share of the waiter's retry interval after B has begun to wait, then notes the time and calls release(); B notes the time its acquire resolves.",
    "",
  );
}

handoffTable(
  "### 2. Handoff latency across processes (release in A → acquired in B)",
  [...VARIANTS, ...HANDOFF_REFERENCES],
);

/** A contended table's rows: each variant's totals, per acquisition. */
function contendedRows(
  variants: readonly Variant[],
  totals: Map<string, Contended>,
) {
  return variants.map((v) => {
    const r = totals.get(v.id)!;
    // The worst round: the least fair spread of acquisitions over workers.
    const worst = r.spread.toSorted((a, b) =>
      a.least / a.most - b.least / b.most
    )[0];
    return {
      v,
      r,
      rate: r.acquisitions / r.seconds,
      sent: r.sent / r.acquisitions,
      server: r.server / r.acquisitions,
      fairness: worst.least / worst.most,
      worst,
      p99: percentile(r.waits, 99),
    };
  });
}

for (const [i, section] of SECTIONS.entries()) {
  const rows = contendedRows(VARIANTS, contendedResults[i]);
  const best = {
    rate: bestPeer(rows.map((r) => ({ ...r, value: r.rate })), true),
    sent: bestPeer(rows.map((r) => ({ ...r, value: r.sent })), false),
    fairness: bestPeer(rows.map((r) => ({ ...r, value: r.fairness })), true),
    p99: bestPeer(rows.map((r) => ({ ...r, value: r.p99 })), false),
  };
  out.push(
    `### ${3 + i}. ${WORKERS} workers on one key, ${
      section === 0 ? "zero-work" : `${section} ms`
    } critical section (${2 * SECONDS} s per round)`,
    "",
    table(
      [
        "library",
        "retry policy",
        "critical sections/s",
        "× best peer ↑",
        "commands/acq.",
        "× best peer ↓",
        "server calls/acq.",
        "least/most per worker (worst round)",
        "× best peer ↑",
        "p99 wait",
        "× best peer ↓",
        "gave up",
      ],
      rows.map((r) => [
        name(r.v),
        r.v.policy,
        integer(r.rate),
        ratio(r.rate, best.rate),
        decimal(r.sent),
        ratio(r.sent, best.sent),
        decimal(r.server),
        `${r.fairness.toFixed(2)} (${r.worst.least}–${r.worst.most})`,
        ratio(r.fairness, best.fairness),
        ms(r.p99),
        ratio(r.p99, best.p99),
        String(r.r.gaveUp),
      ]),
    ),
    "",
  );
  if (section === 0) {
    const mean = (pick: (r: typeof callRates[number]) => number) =>
      callRates.reduce((sum, r) => sum + pick(r), 0) / callRates.length;
    const sequential = mean((r) => r.sequential);
    const pipelined = mean((r) => r.pipelined);
    out.push(
      `Ceilings: a lock that writes every grant's token to Redis in one script call per grant can reach what one client completes: ${
        integer(sequential)
      } calls/s one at a time (${
        ratio(sequential, best.rate)
      } the best peer: if each handoff waits for Redis) and ${
        integer(pipelined)
      } calls/s with ${WORKERS} in flight (${
        ratio(pipelined, best.rate)
      } the best peer: with one call per grant at all). deadbolt's handovers within a process do not wait for the answer, and those made within one turn of the event loop go out as one script (commands/acq. below 1). 5× the best peer would need ${
        integer(5 * best.rate)
      } grants/s.`,
      "",
    );
  }
  if (section > 0) {
    out.push(
      `A ${section} ms \`setTimeout\` takes ${
        timerMs.toFixed(2)
      } ms on this machine (measured before the rounds), which caps this workload near ${
        integer(1000 / timerMs)
      } critical sections/s whatever the lock.`,
      "",
    );
  }
}
for (const [i, section] of SECTIONS.entries()) {
  const rows = contendedRows(SEMAPHORE_VARIANTS, semaphoreResults[i]);
  const peer = rows.find((r) => r.v.peer)!;
  out.push(
    `### ${5 + i}. Semaphore, limit ${LIMIT}: ${WORKERS} workers on one name, ${
      section === 0 ? "zero-work" : `${section} ms`
    } critical section (${2 * SECONDS} s per round)`,
    "",
    table(
      [
        "library",
        "retry policy",
        "critical sections/s",
        "× peer ↑",
        "commands/acq.",
        "least/most per worker (worst round)",
        "p99 wait",
        "gave up",
      ],
      rows.map((r) => [
        name(r.v),
        r.v.policy,
        integer(r.rate),
        ratio(r.rate, peer.rate),
        decimal(r.sent),
        `${r.fairness.toFixed(2)} (${r.worst.least}–${r.worst.most})`,
        ms(r.p99),
        String(r.r.gaveUp),
      ]),
    ),
    "",
  );
}
{
  const mean = (values: number[]) =>
    values.reduce((a, b) => a + b, 0) / values.length;
  const rows = SECTIONS.flatMap((section) =>
    FAIR_IDS.map((id) => ({
      section,
      v: variant(id),
      r: fairResults.get(`${id}\0${section}`)!,
    }))
  );
  out.push(
    `### 7. Fairness across processes: 4 processes × 4 workers on one lock (or one semaphore, limit ${LIMIT}), each process with its own connection (${
      2 * SECONDS
    } s per round)`,
    "",
    table(
      [
        "library",
        "section",
        "critical sections/s",
        "least/most per process (worst round)",
        "least/most per worker (worst round)",
        "p99 wait",
      ],
      rows.map(({ section, v, r }) => [
        name(v),
        section === 0 ? "zero-work" : `${section} ms`,
        integer(mean(r.rate)),
        `${mean(r.perProcess).toFixed(2)} (${
          Math.min(...r.perProcess).toFixed(2)
        })`,
        `${mean(r.perWorker).toFixed(2)} (${
          Math.min(...r.perWorker).toFixed(2)
        })`,
        ms(percentile(r.waits, 99)),
      ]),
    ),
    "",
  );
}
handoffTable(
  "### 8. Semaphore handoff across processes, limit 1 (release in A → acquired in B)",
  HANDOFF_SEMAPHORE_VARIANTS,
);
out.push(
  "Commands/acq.: commands the client sent (a script call counts 1) ÷ acquisitions in the window. Server calls/acq.: the `INFO commandstats` delta (calls + rejected calls, INFO excluded) ÷ acquisitions; it also counts the commands scripts run inside Redis. Waits run from wanting the lock to holding it, across retry policies giving up; a wait still open when the window closes counts up to the close. Gave up: times a retry policy gave up (a timeout or retry count) and the worker asked again.",
);
console.log(out.join("\n"));
