/**
 * deadbolt, live: four worker processes contend for one lock, with fencing
 * and auto-extension, and write their fence to a fenced register in each
 * critical section. Midway the demo freezes one holder with SIGSTOP for
 * longer than its lease, then resumes it (its `lock.signal` aborts, and its
 * stale write is refused by the fence), and later kills another holder with
 * SIGKILL (the lock frees itself when the lease runs out). It ends with a
 * verdict computed from the events of the run, and exits 0 only if it is clean.
 *
 * Run: `deno task demo`. Without `REDIS_URL` it starts a throwaway
 * redis-server on a free loopback port (redis-server must be on PATH) and
 * stops it at the end; with `REDIS_URL` it uses that server and touches only
 * keys under `deadbolt-demo:`, deleting its own at the end.
 *
 * @module
 */

import { Redis } from "npm:ioredis@6";
import { type RedisServer, startRedis } from "../tests/_redis.ts";
import { type DemoEvent, judge } from "./_demo_verdict.ts";
import { clock, Failure, Interrupted, Run, Worker } from "./_demo_run.ts";
import { bold, dim, red, report, say, Timeline, yellow } from "./_demo_view.ts";

const WORKERS = 4;
const TTL = 1_000;
const PREFIX = "deadbolt-demo:";
// Between the faults the workers take turns for at least this long, and for
// at least this many critical sections.
const PHASE_MS = 2_500;
const PHASE_SECTIONS = 4;
// How long the workers may take to start (the first run may compile them).
const STARTUP_MS = 60_000;

/** The demo cannot run here (no redis-server, Redis unreachable): one line, exit 1. */
class Fatal extends Error {}

// ---- the scenario ----

async function scenario(run: Run, workers: Worker[]): Promise<void> {
  const demo = (event: Omit<DemoEvent, "at" | "worker">) =>
    run.record({ at: clock(), worker: "demo", ...event });
  const heading = (text: string) =>
    demo({ event: "phase", reason: `── ${text}` });
  // Lets the workers take turns for a while: at least PHASE_MS, and at
  // least PHASE_SECTIONS completed sections, however slow the machine.
  const steady = async () => {
    const since = run.events.length;
    await run.sleep(PHASE_MS);
    const completed = (e: DemoEvent) =>
      e.event === "released" && e.released === true;
    let count = run.events.slice(since).filter(completed).length;
    for (; count < PHASE_SECTIONS; count++) {
      await run.when("a critical section to complete", completed);
    }
  };
  // Asks `worker` to sit on its next hold, and returns that hold's grant.
  const stall = async (worker: Worker) => {
    const since = run.events.length;
    demo({ event: "stall", target: worker.id });
    await worker.send("stall");
    return await run.when(
      `${worker.id} to take the lock`,
      (e) => e.worker === worker.id && e.event === "acquired" && !!e.stall,
      since,
    );
  };
  const [, paused, , killed] = workers;

  heading(
    `${workers.length} workers take turns, each holding the lock 50–150 ms`,
  );
  await steady();

  heading(
    `${paused.id} is frozen mid-hold for longer than its lease, then resumed`,
  );
  const frozen = await stall(paused);
  paused.kill("SIGSTOP");
  const stoppedAt = clock();
  const since = run.events.length;
  demo({ event: "sigstop", target: paused.id, fence: frozen.fence });
  // Resume only once another worker has written with a higher fence, and
  // the pause has outlasted the lease.
  await run.when(
    `another worker to take the lock and write while ${paused.id} is frozen`,
    (e) => e.event === "write" && !!e.accepted && e.fence! > frozen.fence!,
    since,
  );
  await run.sleep(Math.max(0, stoppedAt + TTL * 1.2 - clock()));
  const resumed = run.events.length;
  paused.kill("SIGCONT");
  demo({
    event: "sigcont",
    target: paused.id,
    fence: frozen.fence,
    waited: clock() - stoppedAt,
  });
  await paused.send("go");
  const ofFrozen = (event: string) => (e: DemoEvent) =>
    e.worker === paused.id && e.event === event && e.fence === frozen.fence;
  await run.when(
    `${paused.id}'s lock.signal to abort`,
    ofFrozen("lost"),
    resumed,
  );
  await run.when(`${paused.id} to write`, ofFrozen("write"), resumed);
  await run.when(
    `${paused.id} to call release()`,
    ofFrozen("released"),
    resumed,
  );
  await steady();

  heading(`${killed.id} is killed mid-hold`);
  const doomed = await stall(killed);
  killed.kill("SIGKILL");
  demo({ event: "sigkill", target: killed.id, fence: doomed.fence });
  await run.when(
    "another worker to take the lock after the kill",
    (e) => e.event === "acquired" && e.fence! > doomed.fence!,
  );
  await steady();

  heading("time is up: each worker finishes its section and stops");
  const alive = workers.filter((w) => w !== killed);
  await Promise.all(alive.map((w) => w.send("stop")));
  await run.when(
    "the workers to stop",
    () =>
      run.events.filter((e) => e.event === "exit").length === workers.length,
    0,
  );
}

// ---- main ----

// 128 + the signal's number, as shells report a process killed by it.
const SIGNAL_STATUS = { SIGHUP: 129, SIGINT: 130, SIGTERM: 143 } as const;

function maskPassword(url: string): string {
  return url.replace(/\/\/([^@/]*)@/, "//***@");
}

/** Starts the throwaway redis-server; a missing binary is one line, not a trace. */
async function startServer(interrupt: AbortSignal): Promise<RedisServer> {
  try {
    return await startRedis();
  } catch (error) {
    // Ctrl-C reaches redis-server too, which may then fail to start.
    if (interrupt.aborted) throw new Interrupted();
    if (error instanceof Deno.errors.NotFound) {
      throw new Fatal(`${(error as Error).message}, or set REDIS_URL`);
    }
    const message = (error as Error).message.split("\n")[0];
    throw new Fatal(`cannot start redis-server: ${message}`);
  }
}

/** Connects the demo's own client: one attempt, and one line if it fails. */
async function connect(url: string): Promise<[Redis, string | undefined]> {
  const redis = new Redis(url, {
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
  });
  // ioredis reports the cause (ECONNREFUSED, ENOTFOUND…) as an event and
  // rejects connect() with a plain "Connection is closed".
  let cause: Error | undefined;
  redis.on("error", (error: Error) => cause ??= error);
  try {
    await redis.connect();
    // Also the first command: a server that wants a password says so here.
    const info = await redis.info("server");
    return [redis, /redis_version:(\S+)/.exec(info)?.[1]];
  } catch (error) {
    redis.disconnect();
    const message = (cause ?? error as Error).message;
    throw new Fatal(`cannot reach Redis at ${maskPassword(url)}: ${message}`);
  }
}

/** Spawns the workers into `workers` and waits until each has connected. */
async function startWorkers(
  run: Run,
  workers: Worker[],
  url: string,
  args: string[],
): Promise<void> {
  for (let i = 1; i <= WORKERS; i++) {
    workers.push(new Worker(`w${i}`, args, url, run));
  }
  await Promise.all(workers.map((w) =>
    run.when(
      `${w.id} to start`,
      (e) => e.worker === w.id && (e.event === "ready" || e.event === "exit"),
      0,
      STARTUP_MS,
    )
  ));
  const broken = run.events.find((e) =>
    e.event === "exit" || e.event === "error"
  );
  if (broken) {
    const worker = workers.find((w) => w.id === broken.worker)!;
    const why = broken.reason ?? (await worker.stderr).trim();
    throw new Failure(`${worker.id} to start, but: ${why}`);
  }
}

/** Ends every worker still running (a stopped one is woken first) and reaps it. */
async function stopWorkers(workers: Worker[]): Promise<void> {
  for (const w of workers) {
    w.kill("SIGCONT");
    // Without a `stop` first, end of input makes a worker exit at once.
    await w.close();
  }
  const grace = setTimeout(
    () => workers.forEach((w) => w.kill("SIGKILL")),
    3_000,
  );
  await Promise.all(workers.map((w) => w.exited));
  clearTimeout(grace);
}

function introduce(
  version: string | undefined,
  url: string,
  server: RedisServer | undefined,
  keys: string[],
): void {
  say(bold(
    `deadbolt demo: ${WORKERS} processes, one lock, fencing and auto-extension`,
  ));
  say(
    server
      ? `redis:    throwaway redis-server ${version} pid ${server.pid} at ${server.url} (stopped at the end)`
      : `redis:    ${
        maskPassword(url)
      } (redis ${version}); this demo uses only keys under ${PREFIX}`,
  );
  say(
    `lock:     ${keys[0]}, ttl ${TTL} ms, renewed about every ${
      Math.round(TTL / 3)
    } ms while held`,
  );
  say(
    `register: ${
      keys[2]
    }, written by a Lua script only with a fence above its last one`,
  );
}

async function main(): Promise<number> {
  const timeline = new Timeline(TTL);
  const run = new Run((event) => timeline.push(event));
  let signalled: keyof typeof SIGNAL_STATUS | undefined;
  const listeners =
    (Object.keys(SIGNAL_STATUS) as (keyof typeof SIGNAL_STATUS)[])
      .map((signal) => {
        const listener = () => {
          signalled ??= signal;
          run.interrupt.abort();
        };
        Deno.addSignalListener(signal, listener);
        return () => Deno.removeSignalListener(signal, listener);
      });

  let server: RedisServer | undefined;
  let redis: Redis | undefined;
  const workers: Worker[] = [];
  // A name of its own for each run, so that runs sharing a REDIS_URL never meet.
  const name = `job-${crypto.randomUUID().slice(0, 8)}`;
  const lockKey = `${PREFIX}{${name}}`;
  const keys = [lockKey, `${lockKey}:fence`, `${lockKey}:register`];
  let status = 0;
  try {
    let url = Deno.env.get("REDIS_URL");
    if (!url) {
      server = await startServer(run.interrupt.signal);
      url = server.url;
    }
    let version;
    [redis, version] = await connect(url);
    introduce(version, url, server, keys);
    await startWorkers(run, workers, url, [name, PREFIX, keys[2], String(TTL)]);
    say(`workers:  ${workers.map((w) => `${w.id} pid ${w.pid}`).join(", ")}`);
    say();

    timeline.start(clock());
    await Promise.all(workers.map((w) => w.send("start")));
    await scenario(run, workers);
    timeline.stop();

    const stored = await redis.hgetall(keys[2]);
    const register = {
      fence: Number(stored.fence ?? 0),
      writes: Number(stored.writes ?? 0),
    };
    const verdict = judge(run.events, register);
    report(verdict, register, TTL);
    status = verdict.problems.length === 0 ? 0 : 1;
  } catch (error) {
    timeline.stop();
    if (signalled) {
      say();
      say(
        yellow(
          `interrupted by ${signalled}: stopping the workers and the server`,
        ),
      );
      status = SIGNAL_STATUS[signalled];
    } else if (error instanceof Fatal) {
      console.error(`deadbolt demo: ${error.message}`);
      status = 1;
    } else if (error instanceof Failure) {
      say(red(`the run did not go as planned: expected ${error.message}`));
      status = 1;
    } else {
      throw error;
    }
  } finally {
    // Everything started above is stopped here, on every path.
    await stopWorkers(workers);
    if (status === 1) {
      for (const w of workers) {
        const stderr = (await w.stderr).trim().split("\n").slice(-5);
        if (stderr[0]) say(dim(`${w.id} stderr: ${stderr.join(" | ")}`));
      }
    }
    if (redis) {
      if (redis.status === "ready") await redis.del(...keys).catch(() => {});
      redis.disconnect();
    }
    if (server) {
      const pid = server.pid;
      await server.stop();
      say(dim(`stopped redis-server pid ${pid}`));
    }
    listeners.forEach((remove) => remove());
  }
  return status;
}

Deno.exit(await main());
