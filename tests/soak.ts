/**
 * A bounded soak with a random nemesis (F33):
 * `deno run -A tests/soak.ts [--seconds N | --minutes N] [--workers N] [--seed S] [--history FILE] [--no-proxy]`.
 *
 * It starts a lock redis-server and a separate, never-faulted resource
 * redis-server, `--workers` worker processes (`_soak_worker.ts`) contending
 * for one lock and, unless --no-proxy, routes the workers' lock connections
 * through a chaos proxy (`_chaos.ts`). Every 1–3 s the seeded nemesis
 * starts a round: it writes the round number to the resource (workers count
 * into that round's counter), lets running critical sections finish, and
 * injects one fault (or none), healing it within the round. At the end it
 * stops everything and prints the checkers' verdicts. The seed fixes the
 * nemesis's choices (faults, durations, whether to hit the lock holder);
 * which worker holds the lock at that moment is up to timing, so a replay
 * with `--seed` repeats the schedule, not the exact history.
 *
 * Hard invariants (exit code 1 when one fails): the fenced register never
 * accepted a stale fence; no fence was issued twice or out of grant order;
 * validity windows of different grants never overlap (the nemesis never
 * steps a clock); no worker printed "Uncaught" or died unless the nemesis
 * killed it; nothing hung (a worker silent for HANG_MS while not paused, a
 * worker that did not exit within SHUTDOWN_MS of SIGTERM, or a fault that
 * did not heal). Lost counter updates are reported per fault, as README's
 * "pauses longer than the validity left" allows them in faulted rounds only.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type RedisServer, startRedis } from "./_redis.ts";
import { ChaosProxy } from "./_chaos.ts";
import type { RespClient } from "./_resp.ts";
import {
  checkAtMost,
  checkCounter,
  checkFencedRegister,
  checkLossSignalled,
  checkReadersWriters,
  checkUniqueFences,
  checkValidityWindows,
  type Event,
  operations,
  readRegister,
  sharedNow,
} from "./_checkers.ts";
import {
  counterKey,
  REGISTER,
  ROUND,
  SEMAPHORE_LIMIT,
  TTL,
} from "./_soak_worker.ts";

const WORKER = new URL("./_soak_worker.ts", import.meta.url);
const ROOT = new URL("../", import.meta.url);
const LOCK_NAME = "soak";
/** A worker that prints nothing this long, while not paused, hangs. */
const HANG_MS = 10_000;
/** How long a worker may take to exit after SIGTERM. */
const SHUTDOWN_MS = 8_000;
/** Pause after a round starts, so sections that read the old round finish. */
const SETTLE_MS = 100;
/** A round ends at least this long after its fault healed. */
const GRACE_MS = 200;
/** Clock error tolerated between processes; calibration must stay within it. */
const TOLERANCE_MS = 1;

const sleep = (ms: number) =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/** mulberry32: a small seeded PRNG, so a run can be replayed from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Races `work` against a deadline; rejects with `what` when it passes. */
async function within<T>(ms: number, what: string, work: Promise<T>) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} (${ms} ms)`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---- workers ----

type Line = Event | { clock: number } | { done: string; clientErrors: number };

/** One incarnation of one worker slot. */
class WorkerProcess {
  readonly proc: string;
  readonly child: Deno.ChildProcess;
  readonly stderr: Promise<string>;
  readonly status: Promise<Deno.CommandStatus>;
  readonly reading: Promise<void>;
  lastSeen = sharedNow();
  /** SIGSTOPped or being killed by the nemesis: silence is expected. */
  quiet = false;
  killed = false;
  crashed = false;
  exited = false;
  hung = false;
  done = false;
  clientErrors = 0;
  /** Between its last acquire ok and release invoke, as far as we have read. */
  holding = false;
  /** Bounds of this process's clock offset from ours, by ping-pong. */
  offset = { low: -Infinity, high: Infinity };
  #first = Promise.withResolvers<void>();
  #clock: ((t: number) => void) | undefined;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;

  constructor(slot: number, incarnation: number, args: string[], sink: Sink) {
    const id = `${slot}.${incarnation}`;
    this.proc = `w${id}`;
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", WORKER.href, ...args, id],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.child.stdin.getWriter();
    this.stderr = new Response(this.child.stderr).text();
    this.status = this.child.status.then((status) => {
      this.exited = true;
      this.#first.reject(new Error(`${this.proc} exited before printing`));
      return status;
    });
    this.#first.promise.catch(() => {});
    this.reading = this.#read(sink);
  }

  async #read(sink: Sink): Promise<void> {
    let buffer = "";
    for await (
      const chunk of this.child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      this.lastSeen = sharedNow();
      buffer += chunk;
      const lines = buffer.split("\n");
      buffer = lines.pop()!;
      for (const text of lines) {
        if (text === "") continue;
        let line: Line;
        try {
          line = JSON.parse(text);
        } catch {
          sink.garbage.push(`${this.proc}: ${text}`);
          continue;
        }
        this.#first.resolve();
        if ("clock" in line) this.#clock?.(line.clock);
        else if ("done" in line) {
          this.done = true;
          this.clientErrors = line.clientErrors;
        } else {
          if (line.op === "acquire" && line.type === "ok") this.holding = true;
          if (line.op === "release" && line.type === "invoke") {
            this.holding = false;
          }
          sink.event(line);
        }
      }
    }
    if (buffer) sink.garbage.push(`${this.proc}: ${buffer}`);
  }

  /** Resolves at the first line the worker prints. */
  started(ms: number): Promise<void> {
    return within(ms, `${this.proc} did not start`, this.#first.promise);
  }

  /** Makes the worker busy-wait `ms` (a blocked event loop, F4). */
  async block(ms: number): Promise<void> {
    await this.#stdin.write(new TextEncoder().encode(`block ${ms}\n`));
  }

  /** Narrows this process's clock offset by `n` ping-pongs. */
  async calibrate(n: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      const reply = new Promise<number>((resolve) => this.#clock = resolve);
      const t0 = sharedNow();
      await this.#stdin.write(new TextEncoder().encode("ping\n"));
      const c = await within(
        5_000,
        `${this.proc} did not answer a ping`,
        reply,
      );
      const t1 = sharedNow();
      this.offset.low = Math.max(this.offset.low, c - t1);
      this.offset.high = Math.min(this.offset.high, c - t0);
    }
    this.#clock = undefined;
  }

  signal(sig: Deno.Signal): void {
    try {
      this.child.kill(sig);
    } catch {
      // It exited meanwhile.
    }
  }

  /** Closes stdin and sends SIGTERM; resolves with how it ended, or marks it hung. */
  async terminate(ms: number): Promise<Deno.CommandStatus> {
    await this.#stdin.close().catch(() => {});
    this.signal("SIGTERM");
    try {
      return await within(ms, `${this.proc} did not exit`, this.status);
    } catch {
      this.hung = true;
      this.signal("SIGKILL");
      return await this.status;
    }
  }

  /** SIGKILL, reaped. */
  async kill(): Promise<void> {
    this.killed = true;
    this.quiet = true;
    this.signal("SIGKILL");
    await this.#stdin.close().catch(() => {});
    await this.status;
    await this.reading;
  }
}

/** Where worker lines go. */
interface Sink {
  event(event: Event): void;
  garbage: string[];
}

// ---- the nemesis ----

type Fault =
  | "none"
  | "kill-worker"
  | "pause-worker"
  | "block-worker"
  | "pause-server"
  | "debug-sleep"
  | "script-flush"
  | "client-kill"
  | "proxy-blackhole"
  | "proxy-delay"
  | "proxy-drop-replies"
  | "proxy-reset";

const WEIGHTS: [Fault, number][] = [
  ["none", 1],
  ["kill-worker", 1],
  ["pause-worker", 1.5],
  ["block-worker", 1],
  ["pause-server", 1],
  ["debug-sleep", 1],
  ["script-flush", 0.7],
  ["client-kill", 0.7],
  ["proxy-blackhole", 0.7],
  ["proxy-delay", 0.5],
  ["proxy-drop-replies", 0.5],
  ["proxy-reset", 0.5],
];

interface Round {
  n: number;
  fault: Fault;
  detail: string;
  start: number;
  end: number;
}

interface Soak {
  random: () => number;
  lock: RedisServer;
  lockSide: RespClient;
  proxy: ChaosProxy | undefined;
  workers: WorkerProcess[];
  restart(slot: number): Promise<void>;
}

function pick(random: () => number, proxy: boolean): Fault {
  const menu = WEIGHTS.filter(([f]) => proxy || !f.startsWith("proxy-"));
  let x = random() * menu.reduce((sum, [, w]) => sum + w, 0);
  for (const [fault, weight] of menu) if ((x -= weight) < 0) return fault;
  return "none";
}

const between = (random: () => number, low: number, high: number) =>
  Math.round(low + random() * (high - low));

/** Injects `fault` and heals it; resolves with a description. Bounded in time. */
async function inject(soak: Soak, fault: Fault): Promise<string> {
  const { random, lock, lockSide, proxy, workers } = soak;
  // Worker faults hit the lock holder, when there is one, 3 times in 4:
  // that is where a pause or a crash matters.
  const holders = workers.filter((w) => w.holding && !w.exited);
  // Two draws every time, so the seed's stream does not depend on timing.
  const aim = random(), which = random();
  const chosen = holders.length > 0 && aim < 0.75
    ? holders[Math.floor(which * holders.length)]
    : workers[Math.floor(which * workers.length)];
  const slot = workers.indexOf(chosen);
  const worker = workers[slot];
  const role = worker.holding ? "holder" : "waiter";
  switch (fault) {
    case "none":
      return "";
    case "kill-worker": {
      await worker.kill();
      await soak.restart(slot);
      return `${role} ${worker.proc} → ${workers[slot].proc}`;
    }
    case "pause-worker": {
      const ms = between(random, 2 * TTL, 3 * TTL);
      worker.quiet = true;
      worker.signal("SIGSTOP");
      await sleep(ms);
      worker.signal("SIGCONT");
      worker.lastSeen = sharedNow();
      worker.quiet = false;
      return `${role} ${worker.proc} for ${ms} ms`;
    }
    case "block-worker": {
      const ms = between(random, 2 * TTL, 3 * TTL);
      worker.quiet = true;
      await worker.block(ms);
      await sleep(ms);
      worker.lastSeen = sharedNow();
      worker.quiet = false;
      return `${role} ${worker.proc}'s event loop for ${ms} ms`;
    }
    case "pause-server": {
      const ms = between(random, 50, 4 * TTL);
      lock.signal("SIGSTOP");
      try {
        await sleep(ms);
      } finally {
        lock.signal("SIGCONT");
      }
      return `${ms} ms`;
    }
    case "debug-sleep": {
      const ms = between(random, 50, 4 * TTL);
      await within(
        ms + 5_000,
        "DEBUG SLEEP did not return",
        lockSide.send("DEBUG", "SLEEP", (ms / 1000).toFixed(3)),
      );
      return `${ms} ms`;
    }
    case "script-flush":
      await within(5_000, "SCRIPT FLUSH", lockSide.send("SCRIPT", "FLUSH"));
      return "";
    case "client-kill": {
      const killed = await within(
        5_000,
        "CLIENT KILL",
        lockSide.send("CLIENT", "KILL", "TYPE", "normal"),
      );
      return `${killed} connections`;
    }
    case "proxy-blackhole": {
      const ms = between(random, TTL / 2, 3 * TTL);
      proxy!.set("blackhole");
      await sleep(ms);
      proxy!.set("pass");
      return `${ms} ms`;
    }
    case "proxy-delay": {
      const up = between(random, 0, TTL / 3),
        down = between(random, 0, TTL / 3);
      proxy!.delay(up, down);
      await sleep(between(random, 500, 1500));
      proxy!.delay(0, 0);
      return `up ${up} ms, down ${down} ms`;
    }
    case "proxy-drop-replies": {
      const ms = between(random, 50, TTL);
      proxy!.set("drop-replies");
      await sleep(ms);
      // Clients that match replies by order are out of step now.
      proxy!.reset();
      proxy!.set("pass");
      return `${ms} ms, then reset`;
    }
    case "proxy-reset":
      proxy!.reset();
      return "";
  }
}

// ---- main ----

interface Options {
  ms: number;
  workers: number;
  seed: number;
  history?: string;
  useProxy: boolean;
}

function options(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      seconds: { type: "string" },
      minutes: { type: "string" },
      workers: { type: "string", default: "4" },
      seed: { type: "string" },
      history: { type: "string" },
      "no-proxy": { type: "boolean", default: false },
    },
  });
  const number = (name: string, text: string, low: number, high: number) => {
    const value = Number(text);
    if (!Number.isFinite(value) || value < low || value > high) {
      throw new RangeError(
        `soak: --${name} must be a number from ${low} to ${high}: current value is ${text}`,
      );
    }
    return value;
  };
  const ms = values.minutes !== undefined
    ? number("minutes", values.minutes, 0.1, 24 * 60) * 60_000
    : number("seconds", values.seconds ?? "60", 5, 24 * 3600) * 1000;
  return {
    ms,
    workers: number("workers", values.workers, 1, 64),
    seed: values.seed !== undefined
      ? number("seed", values.seed, 0, 2 ** 32 - 1)
      : crypto.getRandomValues(new Uint32Array(1))[0],
    history: values.history,
    useProxy: !values["no-proxy"],
  };
}

async function main(args: string[]): Promise<number> {
  const opts = options(args);
  const began = sharedNow();
  const stamp = () =>
    `[${((sharedNow() - began) / 1000).toFixed(1).padStart(6)} s]`;
  const log = (text: string) => console.log(`${stamp()} ${text}`);
  log(
    `soak: ${
      opts.ms / 1000
    } s, ${opts.workers} workers, seed ${opts.seed} (replay: --seed ${opts.seed})`,
  );

  const history: Event[] = [];
  const sink: Sink = { event: (e) => history.push(e), garbage: [] };
  const failures: string[] = [];
  const fail = (text: string) => {
    failures.push(text);
    log(`FAIL ${text}`);
  };

  await using lock = await startRedis();
  await using resource = await startRedis();
  await using lockSide = await lock.connect();
  await using resourceSide = await resource.connect();
  const proxy = opts.useProxy ? await ChaosProxy.start(lock.port) : undefined;
  const target = proxy?.port ?? lock.port;
  log(
    `lock redis :${lock.port}, resource redis :${resource.port}, ${
      proxy ? `workers via chaos proxy :${proxy.port}` : "no chaos proxy"
    }`,
  );
  await resourceSide.send("SET", ROUND, 0);

  const workerArgs = [String(target), String(resource.port), LOCK_NAME];
  const incarnations: number[] = [];
  const all: WorkerProcess[] = [];
  const workers: WorkerProcess[] = [];
  const spawn = async (slot: number) => {
    incarnations[slot] = (incarnations[slot] ?? -1) + 1;
    const worker = new WorkerProcess(
      slot,
      incarnations[slot],
      workerArgs,
      sink,
    );
    workers[slot] = worker;
    all.push(worker);
    try {
      await worker.started(20_000);
      await worker.calibrate(5);
    } catch (error) {
      if (!worker.exited) fail(`hang: ${(error as Error).message}`);
      // else the watchdog reports the crash and restarts the slot
    }
  };
  // A crashed slot is restarted (a few times), so the soak keeps its load.
  let crashRestarts = 0;
  const restarting: Promise<void>[] = [];

  // Emergency brake: whatever happens, the soak ends.
  const hardDeadline = setTimeout(() => {
    console.error(`${stamp()} soak: hard deadline passed; killing everything`);
    for (const worker of all) {
      worker.signal("SIGCONT");
      worker.signal("SIGKILL");
    }
    lock.signal("SIGKILL");
    resource.signal("SIGKILL");
    Deno.exit(3);
  }, opts.ms + 90_000);

  const rounds: Round[] = [];
  let nemesisEnd = Infinity;
  try {
    await Promise.all(
      Array.from({ length: opts.workers }, (_, slot) => spawn(slot)),
    );
    log(`${opts.workers} workers started`);

    const watchdog = setInterval(() => {
      for (const worker of workers) {
        if (worker.exited && !worker.killed && !worker.crashed) {
          worker.crashed = true;
          fail(`crash: ${worker.proc} exited while the soak ran`);
          if (crashRestarts++ < 3) {
            restarting.push(spawn(workers.indexOf(worker)));
          }
        }
        if (worker.quiet || worker.exited || worker.hung) continue;
        const silent = sharedNow() - worker.lastSeen;
        if (silent > HANG_MS) {
          worker.hung = true;
          fail(
            `hang: ${worker.proc} printed nothing for ${silent.toFixed(0)} ms`,
          );
        }
      }
    }, 500);

    const soak: Soak = {
      random: prng(opts.seed),
      lock,
      lockSide,
      proxy,
      workers,
      restart: spawn,
    };
    const end = sharedNow() + opts.ms;
    try {
      for (let n = 1; sharedNow() < end - 500; n++) {
        const start = sharedNow();
        const length = Math.min(between(soak.random, 1000, 3000), end - start);
        const fault = pick(soak.random, proxy !== undefined);
        await resourceSide.send("SET", ROUND, n);
        const round: Round = { n, fault, detail: "", start, end: start };
        rounds.push(round);
        await sleep(SETTLE_MS);
        try {
          round.detail = await within(
            10_000 + 3 * TTL,
            `fault ${fault} did not heal`,
            inject(soak, fault),
          );
        } catch (error) {
          fail(`hang: ${(error as Error).message}`);
        }
        log(`round ${n}: ${fault} ${round.detail}`);
        // Effects of a fault (a resumed worker's stale write) belong to its
        // round: every round lasts until at least GRACE_MS after healing.
        await sleep(Math.max(start + length - sharedNow(), GRACE_MS));
        round.end = sharedNow();
      }
    } finally {
      nemesisEnd = sharedNow();
      clearInterval(watchdog);
      lock.signal("SIGCONT");
      for (const worker of workers) worker.signal("SIGCONT");
      proxy?.delay(0, 0);
      proxy?.set("pass");
    }

    await Promise.all(restarting);
    log("stopping workers");
    await Promise.all(workers.map(async (worker) => {
      const status = await worker.terminate(SHUTDOWN_MS);
      if (worker.hung) fail(`hang: ${worker.proc} did not exit after SIGTERM`);
      else if (!worker.crashed && (status.code !== 0 || !worker.done)) {
        fail(
          `crash: ${worker.proc} ended with code ${status.code}${
            worker.done ? "" : " without its done line"
          }`,
        );
      }
    }));
    await Promise.all(all.map((worker) => worker.reading));
  } finally {
    clearTimeout(hardDeadline);
    for (const worker of all) worker.signal("SIGKILL");
    await Promise.all(all.map((worker) => worker.status));
    await proxy?.close();
  }
  // Rounds end where the next begins; the last at shutdown.
  const stopped = sharedNow();
  rounds.forEach((round, i) => round.end = rounds[i + 1]?.start ?? stopped);

  // ---- verdicts ----
  const elapsed = (stopped - began) / 1000;
  console.log(
    `\n==== soak verdict (seed ${opts.seed}, ${elapsed.toFixed(1)} s) ====`,
  );
  for (const worker of all) {
    const stderr = await worker.stderr;
    if (/Uncaught/.test(stderr)) {
      fail(`unhandled rejection in ${worker.proc}:\n${stderr}`);
    } else if (stderr.trim() !== "" && !worker.killed) {
      console.log(`note: ${worker.proc} stderr:\n${stderr.trim()}`);
    }
  }
  if (sink.garbage.length > 0) {
    console.log(
      `note: ${sink.garbage.length} unparsed lines, first: ${sink.garbage[0]}`,
    );
  }

  const offsets = all.filter((w) => Number.isFinite(w.offset.low));
  const clockError = Math.max(
    0,
    ...offsets.map((w) =>
      Math.max(Math.abs(w.offset.low), Math.abs(w.offset.high))
    ),
  );
  const clockConsistent = offsets.every((w) =>
    w.offset.low <= TOLERANCE_MS && w.offset.high >= -TOLERANCE_MS
  );
  console.log(
    `clock: ${offsets.length} worker clocks agree with ours within ±${
      clockError.toFixed(3)
    } ms (ping-pong resolution), consistent with the ${TOLERANCE_MS} ms tolerance: ${
      clockConsistent ? "yes" : "NO"
    }`,
  );
  if (!clockConsistent) {
    fail("clock: a worker's clock offset exceeds the tolerance");
  }

  // Once every worker is gone and a lease has passed, nothing may be held:
  // no permit, read or write outlives its holder's lease.
  await new Promise((resolve) => setTimeout(resolve, TTL + 100));
  const [seconds, micros] = await lockSide.send("TIME") as [string, string];
  const serverNow = Number(seconds) * 1_000 +
    Math.floor(Number(micros) / 1_000);
  const live = async (key: string) =>
    Number(await lockSide.send("ZCOUNT", key, `(${serverNow}`, "+inf"));
  const leftover = {
    permits: await live(`deadbolt:semaphore:{${LOCK_NAME}}`),
    readers: await live(`deadbolt:rw:{${LOCK_NAME}}:readers`),
    writer: Number(await lockSide.send("EXISTS", `deadbolt:rw:{${LOCK_NAME}}`)),
    lock: Number(await lockSide.send("EXISTS", `deadbolt:{${LOCK_NAME}}`)),
  };
  const leaked = Object.entries(leftover).filter(([, n]) => n > 0);

  const register = await readRegister(resourceSide, REGISTER);
  // The lock's tasks are `w<id>` and `w<id>+`; `w<id>s` hold permits of the
  // semaphore, `w<id>r` holds of the read-write lock.
  const kindOf = (e: Event) =>
    e.proc.endsWith("s") ? "semaphore" : e.proc.endsWith("r") ? "rw" : "lock";
  const lockHistory = history.filter((e) => kindOf(e) === "lock");
  const semaphoreHistory = history.filter((e) => kindOf(e) === "semaphore");
  const rwHistory = history.filter((e) => kindOf(e) === "rw");
  const registerVerdict = checkFencedRegister(lockHistory, {
    key: REGISTER,
    applied: register.applied,
    tolerance: TOLERANCE_MS,
  });
  // Only the fencing tasks (`w<id>`, not `w<id>+`) take fences.
  const fences = checkUniqueFences(
    lockHistory.filter((event) => !event.proc.endsWith("+")),
    { tolerance: TOLERANCE_MS },
  );
  const windows = checkValidityWindows(lockHistory, {
    tolerance: TOLERANCE_MS,
  });
  const permits = checkAtMost(semaphoreHistory, SEMAPHORE_LIMIT, {
    tolerance: TOLERANCE_MS,
  });
  const readersWriters = checkReadersWriters(rwHistory, {
    tolerance: TOLERANCE_MS,
  });
  const writerFences = checkUniqueFences(
    rwHistory.filter((e) => e.op !== "acquire" || e.mode !== "read"),
    { tolerance: TOLERANCE_MS },
  );
  const losses = checkLossSignalled(history, { tolerance: TOLERANCE_MS });
  const show = (
    name: string,
    verdict: { ok: boolean; violations: { message: string }[] },
    detail: string,
  ) => {
    console.log(`${verdict.ok ? "PASS" : "FAIL"} ${name}: ${detail}`);
    for (const v of verdict.violations.slice(0, 10)) {
      console.log(`     ${v.message}`);
    }
    if (verdict.violations.length > 10) {
      console.log(`     … ${verdict.violations.length - 10} more`);
    }
    if (!verdict.ok) {
      failures.push(`${name}: ${verdict.violations.length} violations`);
    }
  };
  show(
    "fenced register",
    registerVerdict,
    `${registerVerdict.violations.length} violations; ${registerVerdict.accepted} accepted, ${registerVerdict.rejected} rejected as stale, ${registerVerdict.indeterminate} indeterminate; last fence ${register.fence}`,
  );
  show(
    "unique fences",
    fences,
    `${fences.grants} grants, ${fences.violations.length} duplicate or out-of-order fences`,
  );
  show(
    "validity windows",
    windows,
    `${windows.windows.length} windows of ${windows.grants} grants, ${windows.violations.length} overlaps`,
  );

  show(
    "semaphore permits",
    permits,
    `${permits.windows.length} windows of ${permits.grants} permits, at most ${permits.most} valid at once (limit ${SEMAPHORE_LIMIT}), ${permits.violations.length} over the limit`,
  );
  show(
    "readers and writers",
    readersWriters,
    `${readersWriters.windows.length} windows of ${readersWriters.grants} holds (${
      readersWriters.windows.filter((w) => w.mode === "write").length
    } writes), ${readersWriters.violations.length} writers beside another hold`,
  );
  show(
    "writer fences",
    writerFences,
    `${writerFences.grants} writer grants, ${writerFences.violations.length} duplicate or out-of-order fences`,
  );

  show(
    "nothing left held",
    {
      ok: leaked.length === 0,
      violations: leaked.map(([what, n]) => ({
        message: `${n} ${what} still held a lease after every worker was gone`,
      })),
    },
    `a lease after the last worker: ${leftover.permits} permits, ${leftover.readers} readers, ${leftover.writer} writer, ${leftover.lock} lock`,
  );

  // A holder stalled past its lease (SIGSTOP, a blocked loop, a starved
  // CPU) may resume straight into release(): the signal must still abort
  // before release() returns. The soak caught a release() that ended such a
  // lease silently; release() now checks the lease first.
  show(
    "loss signalled",
    losses,
    `${losses.expired} grants released after their validUntil, ${losses.violations.length} without lock.signal aborting by the time release() returned`,
  );
  const unsignalled = history.filter((e) =>
    e.error === "lock.signal aborted without an abort event"
  );
  show(
    "abort events",
    {
      ok: unsignalled.length === 0,
      violations: unsignalled.map((e) => ({
        message:
          `${e.proc} (fence ${e.fence}) found lock.signal aborted, but its abort listener never ran`,
      })),
    },
    `${unsignalled.length} aborted signals whose abort event never reached the listener`,
  );

  // Counters, one per round; lost updates by the round's fault.
  const writes = operations(history, "write");
  const byFault = new Map<string, {
    rounds: number;
    acknowledged: number;
    lost: number;
    lostAtMost: number;
    skipped: number;
  }>();
  const counterFailures: string[] = [];
  for (const round of [{ n: 0, fault: "none" as Fault }, ...rounds]) {
    const key = counterKey(round.n);
    const mine = writes.filter((w) => w.invoke.key === key);
    const acknowledged = mine.filter((w) => w.complete?.type === "ok").length;
    const skipped = mine.filter((w) => w.complete?.type === "fail").length;
    const indeterminate = mine.length - acknowledged - skipped;
    const final = Number(await resourceSide.send("GET", key) ?? 0);
    const verdict = checkCounter(final, acknowledged, indeterminate);
    const row = byFault.get(round.fault) ??
      { rounds: 0, acknowledged: 0, lost: 0, lostAtMost: 0, skipped: 0 };
    row.rounds++;
    row.acknowledged += acknowledged;
    row.lost += verdict.lost;
    row.lostAtMost += verdict.lostAtMost;
    row.skipped += skipped;
    byFault.set(round.fault, row);
    if (!verdict.ok) {
      counterFailures.push(
        `round ${round.n} (${round.fault}): final ${final}, acknowledged ${acknowledged}, indeterminate ${indeterminate}`,
      );
    }
  }
  const faultFree = byFault.get("none");
  console.log(
    `${faultFree?.lost ? "WARN" : "PASS"} counter, fault-free rounds: ${
      faultFree?.lost ?? 0
    } lost updates of ${faultFree?.acknowledged ?? 0} acknowledged in ${
      faultFree?.rounds ?? 0
    } rounds (expected 0)`,
  );
  const faulted = [...byFault].filter(([fault]) => fault !== "none");
  const lostFaulted = faulted.reduce((sum, [, row]) => sum + row.lost, 0);
  console.log(
    `info counter, faulted rounds: ${lostFaulted} lost updates of ${
      faulted.reduce((sum, [, row]) => sum + row.acknowledged, 0)
    } acknowledged (allowed only for pauses longer than the validity left)`,
  );
  for (const line of counterFailures) console.log(`     ${line}`);

  // Per-fault table of what happened.
  const roundOf = (t: number) =>
    rounds.findLast((round) => round.start <= t)?.fault ?? "none";
  const stats = new Map<string, Record<string, number>>();
  const bump = (fault: string, what: string) => {
    const row = stats.get(fault) ?? {};
    row[what] = (row[what] ?? 0) + 1;
    stats.set(fault, row);
  };
  const errors = new Map<string, number>();
  for (const e of history) {
    if (e.t >= nemesisEnd) continue; // shutdown: SIGTERM aborts waits
    const fault = roundOf(e.t);
    if (e.op === "acquire" && e.type !== "invoke") {
      bump(
        fault,
        e.type === "ok" ? "grants" : e.type === "fail" ? "timeouts" : "errors",
      );
    }
    if (e.op === "lost") bump(fault, "lost");
    if (e.op === "write" && e.key === REGISTER && e.type === "fail") {
      bump(fault, "stale");
    }
    if (e.op === "release" && e.type === "ok" && e.value === 0) {
      bump(fault, "released=false");
    }
    if (e.error && e.type === "info" && e.op !== "lost") {
      const kind = `${e.op}: ${e.error.replace(/\d+/g, "N").slice(0, 100)}`;
      errors.set(kind, (errors.get(kind) ?? 0) + 1);
    }
  }
  console.log("\nper fault (events attributed to the round they happened in):");
  const columns = [
    "grants",
    "timeouts",
    "errors",
    "lost",
    "stale",
    "released=false",
  ];
  console.log(
    `  ${"fault".padEnd(19)}${"rounds".padStart(7)}${
      columns.map((c) => c.padStart(15)).join("")
    }${"counter acks".padStart(14)}${"lost upd".padStart(10)}`,
  );
  for (const [fault] of WEIGHTS) {
    const row = byFault.get(fault);
    if (!row) continue;
    const s = stats.get(fault) ?? {};
    console.log(
      `  ${fault.padEnd(19)}${String(row.rounds).padStart(7)}${
        columns.map((c) => String(s[c] ?? 0).padStart(15)).join("")
      }${String(row.acknowledged).padStart(14)}${
        `${row.lost}${row.lostAtMost > row.lost ? `–${row.lostAtMost}` : ""}`
          .padStart(10)
      }`,
    );
  }
  const reasons = new Map<string, number>();
  for (const e of history) {
    if (e.op === "lost") {
      reasons.set(e.error!, (reasons.get(e.error!) ?? 0) + 1);
    }
  }
  if (reasons.size > 0) {
    console.log("\nlock.signal aborts, by reason:");
    for (const [reason, count] of reasons) {
      console.log(`  ${String(count).padStart(6)}  ${reason}`);
    }
  }
  if (errors.size > 0) {
    console.log("\nerrors of unknown outcome (info), by kind:");
    for (const [kind, count] of [...errors].sort((a, b) => b[1] - a[1])) {
      console.log(`  ${String(count).padStart(6)}  ${kind}`);
    }
  }
  const restarts = all.filter((w) => w.killed).length;
  console.log(
    `\n${history.length} events, ${rounds.length} rounds, ${all.length} worker processes (${restarts} killed and restarted)`,
  );

  if (opts.history) {
    await Deno.writeTextFile(
      opts.history,
      [
        JSON.stringify({ seed: opts.seed, rounds }),
        ...history.map((e) => JSON.stringify(e)),
      ].join("\n") + "\n",
    );
    console.log(`history written to ${opts.history}`);
  }

  if (failures.length > 0) {
    console.log(`\nSOAK FAILED: ${failures.length} hard failure(s)`);
    for (const f of failures) console.log(`  - ${f.split("\n")[0]}`);
    return 1;
  }
  console.log("\nSOAK PASSED: every hard invariant held");
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
