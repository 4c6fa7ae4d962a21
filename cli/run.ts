import process from "node:process";
import { Lock, LockTimeoutError, Semaphore } from "../mod.ts";

/** What `run` holds: the lock, or with `--limit` one permit of a semaphore. */
type Held = Lock | Semaphore;

/** `lock 'name'`, or `semaphore 'name'` with `--limit`, for messages. */
const what = (args: RunArgs) =>
  `${args.limit === undefined ? "lock" : "semaphore"} '${args.name}'`;
import type { RunArgs } from "./args.ts";
import { GroupCommand } from "./child.ts";
import {
  closeRedis,
  connectRedis,
  describeError,
  lockClient,
  RedisUnavailableError,
} from "./connect.ts";
import { ExitCode, signalExitCode } from "./exit_codes.ts";
import { describeHolder, formatDuration, Reporter } from "./reporter.ts";

/** The signals `deadbolt run` passes on to the command's process group. */
export const FORWARDED_SIGNALS = [
  "SIGINT",
  "SIGTERM",
  "SIGHUP",
  "SIGQUIT",
] as const;

// How often, after a loss, to look whether the command's group has emptied.
const GROUP_POLL_MS = 50;

/** A signal `deadbolt` received before the command started. */
class Interrupted extends Error {
  constructor(readonly signal: string) {
    super(`interrupted by ${signal}`);
  }
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * `deadbolt run`: waits for the lock, runs the command while it is held,
 * releases it, and returns the exit code (see `exit_codes.ts`).
 */
export async function runCommand(args: RunArgs): Promise<number> {
  const reporter = new Reporter(process.stderr, args);
  const interrupt = new AbortController();
  let command: GroupCommand | undefined;
  const listeners = FORWARDED_SIGNALS.map((signal) => {
    const listener = () => {
      if (command) {
        reporter.info(`passing ${signal} on to the command's process group`);
        command.signalGroup(signal);
      } else if (!interrupt.signal.aborted) {
        interrupt.abort(new Interrupted(signal));
      }
    };
    process.on(signal, listener);
    return [signal, listener] as const;
  });
  try {
    return await connectAndRun(args, reporter, interrupt.signal, (started) => {
      command = started;
    });
  } catch (error) {
    if (error instanceof Interrupted) {
      reporter.notice(
        `${error.message} before the command started; it did not run`,
      );
      return signalExitCode(error.signal);
    }
    if (error instanceof RedisUnavailableError) {
      reporter.error(error.message);
      return ExitCode.UNAVAILABLE;
    }
    throw error;
  } finally {
    for (const [signal, listener] of listeners) process.off(signal, listener);
  }
}

async function connectAndRun(
  args: RunArgs,
  reporter: Reporter,
  interrupted: AbortSignal,
  onStart: (command: GroupCommand) => void,
): Promise<number> {
  const connecting = connectRedis(args.redis);
  const redis = await abortable(connecting, interrupted).catch((error) => {
    // A connection that lands after an interrupt is closed, not leaked.
    connecting.then(closeRedis, () => {});
    throw error;
  });
  try {
    const options = {
      ttl: args.ttl,
      fencing: args.fencing,
      prefix: args.prefix,
    };
    const lock: Held = args.limit === undefined
      ? new Lock(lockClient(redis), args.name, options)
      : new Semaphore(lockClient(redis), args.name, {
        ...options,
        limit: args.limit,
      });
    const waited = await acquire(
      lock,
      args,
      reporter,
      interrupted,
      () =>
        args.limit === undefined
          ? redis.pttl(lock.key)
          : firstLeaseEnd(redis, lock.key),
    );
    if (waited === undefined) return ExitCode.BUSY;
    reporter.info(
      `acquired ${what(args)}${
        lock.fence === undefined ? "" : ` with fence ${lock.fence}`
      }${waited > 0 ? ` after ${formatDuration(waited)}` : ""}`,
    );
    return await runHolding(lock, args, reporter, interrupted, onStart);
  } finally {
    await closeRedis(redis);
  }
}

/**
 * Acquires `lock`: one attempt, then (unless `--no-wait`) a wait showing its
 * progress. Returns how long it waited in ms, or `undefined` when busy.
 */
async function acquire(
  lock: Held,
  args: RunArgs,
  reporter: Reporter,
  signal: AbortSignal,
  pttl: () => Promise<number>,
): Promise<number | undefined> {
  const started = performance.now();
  const waited = () => performance.now() - started;
  try {
    try {
      await lock.acquire({ timeout: 0, signal });
      return 0;
    } catch (error) {
      if (!(error instanceof LockTimeoutError)) throw error;
      const left = args.timeout - waited();
      if (args.timeout === 0 || left <= 0) {
        reporter.notice(
          `${what(args)} is busy: ${describeHolder(error.remainingTtl)}`,
        );
        return undefined;
      }
      const stop = reporter.waiting(
        args.name,
        process.pid,
        pttl,
        error.remainingTtl,
      );
      try {
        await lock.acquire({ timeout: Math.ceil(left), signal });
      } finally {
        stop();
      }
      return waited();
    }
  } catch (error) {
    if (error instanceof LockTimeoutError) {
      reporter.notice(
        `gave up on ${what(args)} after waiting ${formatDuration(waited())}: ${
          describeHolder(error.remainingTtl)
        }`,
      );
      return undefined;
    }
    if (signal.aborted) throw signal.reason;
    throw new RedisUnavailableError(
      `cannot acquire ${what(args)}: ${describeError(error)}`,
      { cause: error },
    );
  }
}

/** Runs the command while `lock` is held; returns the exit code. */
async function runHolding(
  lock: Held,
  args: RunArgs,
  reporter: Reporter,
  interrupted: AbortSignal,
  onStart: (command: GroupCommand) => void,
): Promise<number> {
  if (interrupted.aborted || lock.signal.aborted) {
    await release(lock, reporter);
    if (interrupted.aborted) throw interrupted.reason;
    reporter.error(
      `${describeError(lock.signal.reason)}; the command did not run`,
    );
    return ExitCode.LOST;
  }
  const env: Record<string, string | undefined> = {
    ...process.env,
    DEADBOLT_LOCK: args.name,
    DEADBOLT_TOKEN: lock.token,
    DEADBOLT_FENCE: lock.fence === undefined ? undefined : String(lock.fence),
  };
  if (env.DEADBOLT_FENCE === undefined) delete env.DEADBOLT_FENCE;
  const [file, ...rest] = args.command;
  const command = args.shell
    ? GroupCommand.start("/bin/sh", ["-c", file, "sh", ...rest], env)
    : GroupCommand.start(file, rest, env);
  onStart(command);

  let lost: unknown;
  let killed = false;
  let killTimer: ReturnType<typeof setTimeout> | undefined;
  const onLost = () => {
    lost = lock.signal.reason;
    reporter.error(
      `${
        describeError(lost)
      }; stopping the command: SIGTERM to its process group, SIGKILL ${
        args.killAfter > 0
          ? `after ${formatDuration(args.killAfter)}`
          : "at once"
      }`,
    );
    command.signalGroup("SIGTERM");
    killTimer = setTimeout(() => {
      killed = true;
      if (command.groupAlive && command.signalGroup("SIGKILL")) {
        reporter.error(
          `the command's process group outlived --kill-after: sent SIGKILL`,
        );
      }
    }, args.killAfter);
  };
  lock.signal.addEventListener("abort", onLost, { once: true });
  // Ctrl-Z (SIGTSTP) stops deadbolt, and with it the lease's renewals: the
  // command, in a group of its own, stops too, or it would run on
  // unprotected. Once deadbolt is continued, a lease that ran out meanwhile
  // is lost (its loss sends SIGTERM first), and the command goes on.
  const onStop = () => {
    command.signalGroup("SIGSTOP");
    process.kill(process.pid, "SIGSTOP");
    if (!lock.held) reporter.info("the lease ran out while stopped");
    command.signalGroup("SIGCONT");
  };
  process.on("SIGTSTP", onStop);
  const exit = await command.exited;
  process.off("SIGTSTP", onStop);
  lock.signal.removeEventListener("abort", onLost);
  if (exit.error) reporter.error(exit.error);

  if (lost !== undefined) {
    // What the command started may still be cleaning up: give the group
    // the rest of the grace, then the timer kills what is left.
    while (!killed && command.groupAlive) await delay(GROUP_POLL_MS);
    clearTimeout(killTimer);
    await release(lock, reporter);
    return ExitCode.LOST;
  }
  const released = await release(lock, reporter);
  const status = `the command exited with status ${exit.status}${
    exit.signal ? ` (${exit.signal})` : ""
  }`;
  if (released === false) {
    // Lost before any renewal noticed (one comes every third of the ttl):
    // the command ran, maybe beside another holder. Never silent.
    reporter.error(
      `Lost lock '${lock.name}' while the command ran: its key was gone or another owner's at its release; ${status}`,
    );
    return ExitCode.LOST;
  }
  reporter.info(
    `${released ? "released" : "could not release"} ${what(args)}; ${status}`,
  );
  return exit.status;
}

/**
 * Releases `lock`: whether the key was its own, or `undefined` when the
 * release failed (reported, not thrown: the lease runs out by itself).
 */
async function release(
  lock: Held,
  reporter: Reporter,
): Promise<boolean | undefined> {
  try {
    return await lock.release();
  } catch (error) {
    reporter.error(
      `could not release lock '${lock.name}' (its lease runs out by itself): ${
        describeError(error)
      }`,
    );
    return undefined;
  }
}

/**
 * How long until the first permit of the semaphore at `key` ends its lease,
 * in ms, by Redis' clock; -2 when no permit is held.
 */
async function firstLeaseEnd(
  redis: {
    time(): Promise<unknown>;
    zrange(...args: unknown[]): Promise<unknown>;
  },
  key: string,
): Promise<number> {
  const [time, first] = await Promise.all([
    redis.time() as Promise<unknown[]>,
    redis.zrange(key, "0", "0", "WITHSCORES") as Promise<string[]>,
  ]);
  if (first.length < 2) return -2;
  // ioredis 6 gives numbers, ioredis 5 strings.
  const [seconds, micros] = time.map(Number);
  const now = seconds * 1_000 + Math.floor(micros / 1_000);
  return Math.max(0, Number(first[1]) - now);
}

/** Settles with `promise`, or rejects with `signal.reason` once it aborts. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  const { promise: aborted, reject } = Promise.withResolvers<never>();
  const onAbort = () => reject(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  return Promise.race([promise, aborted]).finally(() =>
    signal.removeEventListener("abort", onAbort)
  );
}
