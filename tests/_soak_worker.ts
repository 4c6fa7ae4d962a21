/**
 * One soak worker (a child process of `tests/soak.ts`):
 * `deno run -A tests/_soak_worker.ts <lockPort> <resourcePort> <name> <id>`.
 *
 * Two tasks share its one client and loop: acquire the lock `name`
 * (ioredis, short ttl, auto-extension), then under it read the current round
 * number and that round's counter from the resource server, pause a little,
 * SET counter + 1 only if `lock.signal` has not aborted, and release. Task
 * `w<id>` takes a fence and also writes it to the fenced register (whatever
 * the signal says: the register must refuse stale fences); task `w<id>+`
 * takes none, so a release in the process hands it the lock eagerly (before
 * Redis answers), and the faults hit that path too. Two more tasks hold
 * without writing: `w<id>s` a permit of the semaphore `name` (limit
 * {@linkcode SEMAPHORE_LIMIT}), `w<id>r` a read or (one time in three) the
 * write hold of the read-write lock `name`. Every step is printed as one JSON {@linkcode Event}
 * per line, stamped with {@linkcode sharedNow}. Errors are recorded and the
 * loop goes on. Commands on stdin, one per line: `ping` is answered with
 * `{"clock": <now>}` (the parent measures clock agreement); `block <ms>`
 * busy-waits that long (a blocked event loop). SIGTERM ends the loop after the
 * current iteration; the worker closes its clients and exits by itself (a
 * timer or socket left open would keep it alive: the parent calls that a hang).
 *
 * @module
 */

import { Redis } from "npm:ioredis@6";
import {
  Lock,
  type LockHandle,
  LockTimeoutError,
  ReadWriteLock,
  Semaphore,
} from "../mod.ts";
import { RespClient } from "./_resp.ts";
import { type Event, fencedWrite, sharedNow } from "./_checkers.ts";

/** Lease length: short, so pauses and stalls outlast it. */
export const TTL = 400;
/** The fenced register's key on the resource server. */
export const REGISTER = "register";
/** How many permits the soak's semaphore grants at once. */
export const SEMAPHORE_LIMIT = 2;

/** The resource key that holds the current round number. */
export const ROUND = "round";
/** The resource key of round `n`'s counter. */
export const counterKey = (round: number): string => `counter:${round}`;

const ACQUIRE_TIMEOUT = 3_000;
// Below the longest stalls the nemesis injects, so some calls time out and
// take the library's clean-up path (F6, F18).
const COMMAND_TIMEOUT = 1_000;
const MAX_THINK_MS = 15;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const describe = (error: unknown): string =>
  error instanceof Error
    ? `${error.name}: ${error.message}`
    : `non-error: ${String(error)}`;

async function main([lockPort, resourcePort, name, id]: string[]) {
  const proc = `w${id}`;
  const shared = (monotonic: number) => performance.timeOrigin + monotonic;

  const stop = new AbortController();
  const onTerm = () => stop.abort(new Error("SIGTERM"));
  Deno.addSignalListener("SIGTERM", onTerm);

  const stdin = Deno.stdin.readable.pipeThrough(new TextDecoderStream())
    .getReader();
  const commands = (async () => {
    for (let chunk; !(chunk = await stdin.read()).done;) {
      for (const command of chunk.value.split("\n").filter(Boolean)) {
        const [verb, ms] = command.split(" ");
        if (verb === "ping") {
          console.log(JSON.stringify({ clock: sharedNow() }));
        }
        if (verb === "block") {
          // A blocked event loop (F4): no timer, no reply, no renewal runs.
          for (const until = performance.now() + Number(ms);;) {
            if (performance.now() >= until) break;
          }
        }
      }
    }
  })();

  const redis = new Redis({
    host: "127.0.0.1",
    port: Number(lockPort),
    // Keep reconnecting and resending for as long as the soak runs; the
    // library's commandTimeout bounds every call anyway.
    maxRetriesPerRequest: null,
    retryStrategy: (times: number) => Math.min(times * 20, 200),
  });
  let clientErrors = 0;
  redis.on("error", () => clientErrors++);
  const resource = await RespClient.connect(Number(resourcePort));
  let seq = 0;

  // One task: acquire a hold, do `work` under it, release; every step is an
  // event.
  type Emit = (
    op: Event["op"],
    type: Event["type"],
    fields?: Partial<Event>,
  ) => void;
  interface Held {
    readonly hold: LockHandle;
    readonly emit: Emit;
    readonly validUntil: () => number;
    /** Whether the abort event has reached the listener. */
    readonly lostSeen: () => boolean;
  }
  const holdTask = async (
    proc: string,
    open: () => { hold: LockHandle; mode?: "read" | "write" },
    work: (held: Held) => Promise<void> = async () => {
      await sleep(Math.random() * MAX_THINK_MS);
    },
  ) => {
    const emit: Emit = (op, type, fields = {}) =>
      console.log(
        JSON.stringify({ proc, op, type, t: sharedNow(), ...fields }),
      );
    while (!stop.signal.aborted) {
      const { hold, mode } = open();
      emit("acquire", "invoke");
      try {
        await hold.acquire({ signal: stop.signal });
      } catch (error) {
        const timedOut = error instanceof LockTimeoutError;
        emit("acquire", timedOut ? "fail" : "info", { error: describe(error) });
        // Redis down or slow: do not spin on instant errors.
        if (!timedOut) await sleep(10 + Math.random() * 40);
        continue;
      }
      const { token, fence } = hold;
      const validUntil = () => shared(hold.validUntil);
      emit("acquire", "ok", { token, fence, mode, validUntil: validUntil() });
      let lostSeen = false;
      const onLost = () => {
        lostSeen = true;
        emit("lost", "info", {
          token,
          fence,
          validUntil: validUntil(),
          error: describe(hold.signal.reason),
        });
      };
      // Read once: a holder paused past its lease finds the signal aborted
      // by this very read, before a listener could hear the event.
      const signal = hold.signal;
      if (signal.aborted) onLost();
      else signal.addEventListener("abort", onLost, { once: true });
      await work({ hold, emit, validUntil, lostSeen: () => lostSeen });
      emit("release", "invoke", { token, fence, validUntil: validUntil() });
      try {
        const released = await hold.release();
        emit("release", "ok", { token, fence, value: released ? 1 : 0 });
      } catch (error) {
        emit("release", "info", { token, fence, error: describe(error) });
      } finally {
        signal.removeEventListener("abort", onLost);
      }
    }
  };

  // The lock's work: read, think, write the round's counter only if the
  // signal has not aborted; with a fence, write the fenced register too.
  // The resource server is never faulted; an error here is recorded and the
  // write counts as indeterminate.
  const lockWork = (fencing: boolean) =>
  async (
    { hold, emit, validUntil, lostSeen }: Held,
  ) => {
    const { token, fence } = hold;
    let current: Partial<Event> | undefined;
    try {
      const round = Number(await resource.send("GET", ROUND) ?? 0);
      const key = counterKey(round);
      const read = Number(await resource.send("GET", key) ?? 0);
      await sleep(Math.random() * MAX_THINK_MS);
      current = { key, token, fence, value: read + 1 };
      emit("write", "invoke", { ...current, validUntil: validUntil() });
      if (hold.signal.aborted) {
        // The listener must have run: an aborted signal whose event never
        // came would mean the handle swapped its signal.
        const error = lostSeen()
          ? "lock.signal aborted"
          : "lock.signal aborted without an abort event";
        emit("write", "fail", { ...current, error });
      } else {
        await resource.send("SET", key, read + 1);
        emit("write", "ok", current);
      }
      if (fencing) {
        current = { key: REGISTER, token, fence, value: ++seq };
        emit("write", "invoke", { ...current, validUntil: validUntil() });
        const applied = await fencedWrite(resource, REGISTER, fence!, seq);
        emit("write", applied ? "ok" : "fail", current);
      }
    } catch (error) {
      emit("write", "info", { ...current, error: describe(error) });
    }
  };
  const lockTask = (proc: string, fencing: boolean) =>
    holdTask(
      proc,
      () => ({
        hold: new Lock(redis, name, {
          ttl: TTL,
          fencing,
          autoExtend: true,
          timeout: ACQUIRE_TIMEOUT,
          commandTimeout: COMMAND_TIMEOUT,
        }),
      }),
      lockWork(fencing),
    );
  const holdOptions = {
    ttl: TTL,
    fencing: true,
    timeout: ACQUIRE_TIMEOUT,
    commandTimeout: COMMAND_TIMEOUT,
  };
  const rw = new ReadWriteLock(redis, name, holdOptions);
  await Promise.all([
    lockTask(proc, true),
    lockTask(`${proc}+`, false),
    holdTask(`${proc}s`, () => ({
      hold: new Semaphore(redis, name, {
        ...holdOptions,
        limit: SEMAPHORE_LIMIT,
      }),
    })),
    holdTask(
      `${proc}r`,
      () =>
        Math.random() < 1 / 3
          ? { hold: rw.writer(), mode: "write" }
          : { hold: rw.reader(), mode: "read" },
    ),
  ]);

  Deno.removeSignalListener("SIGTERM", onTerm);
  await stdin.cancel();
  await commands;
  await resource[Symbol.asyncDispose]();
  // quit() waits for the server; a server that is gone must not hold us.
  const quit = redis.quit().catch(() => {});
  const late = setTimeout(() => redis.disconnect(), 1_000);
  await quit;
  clearTimeout(late);
  redis.disconnect();
  console.log(JSON.stringify({ done: proc, clientErrors }));
}

if (import.meta.main) await main(Deno.args);
