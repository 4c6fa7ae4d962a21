/**
 * The demo's side of its worker processes: it spawns them, reads their JSON
 * lines into one log of events, and lets the scenario wait for an event
 * (with a deadline, and cancelled by Ctrl-C).
 *
 * @module
 */

import type { DemoEvent } from "./_demo_verdict.ts";

const ROOT = new URL("../", import.meta.url);
const WORKER = new URL("./_demo_worker.ts", import.meta.url);
// How long an awaited event may take before the run is called failed:
// generous, since the machine may be loaded.
const PATIENCE_MS = 20_000;
const encoder = new TextEncoder();

/** Epoch ms with sub-ms precision, comparable across processes of one machine. */
export const clock = (): number => performance.timeOrigin + performance.now();

/** Ctrl-C, SIGTERM or SIGHUP: stop everything, no verdict. */
export class Interrupted extends Error {}
/** An expected event never came: the run is not clean. */
export class Failure extends Error {}

interface Waiter {
  match: (e: DemoEvent) => boolean;
  resolve: (e: DemoEvent) => void;
}

/** The log of one run's events, and a way to wait for one of them. */
export class Run {
  readonly events: DemoEvent[] = [];
  readonly interrupt = new AbortController();
  #waiters = new Set<Waiter>();
  #onRecord: (event: DemoEvent) => void;

  /** `onRecord` sees each event as it is recorded (the live view). */
  constructor(onRecord: (event: DemoEvent) => void) {
    this.#onRecord = onRecord;
  }

  record(event: DemoEvent): void {
    this.events.push(event);
    this.#onRecord(event);
    for (const waiter of this.#waiters) {
      if (waiter.match(event)) {
        this.#waiters.delete(waiter);
        waiter.resolve(event);
      }
    }
  }

  /** The first event matching, from index `since` of the log on; rejects after `ms`. */
  async when(
    what: string,
    match: (e: DemoEvent) => boolean,
    since = this.events.length,
    ms = PATIENCE_MS,
  ): Promise<DemoEvent> {
    const seen = this.events.slice(since).find(match);
    if (seen) return seen;
    let waiter!: Waiter;
    const arrived = new Promise<DemoEvent>((resolve) =>
      waiter = { match, resolve }
    );
    this.#waiters.add(waiter);
    try {
      return await this.#bounded(arrived, ms, what);
    } finally {
      this.#waiters.delete(waiter);
    }
  }

  /** Resolves after `ms`, unless interrupted. */
  sleep(ms: number): Promise<void> {
    return this.#bounded(
      new Promise<void>((resolve) => setTimeout(resolve, ms)),
      ms + 1_000,
      "",
    );
  }

  #bounded<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
    const signal = this.interrupt.signal;
    if (signal.aborted) return Promise.reject(new Interrupted());
    let timer: ReturnType<typeof setTimeout> | undefined;
    let onAbort!: () => void;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Failure(`${what} within ${ms / 1000} s`)),
        ms,
      );
      onAbort = () => reject(new Interrupted());
      signal.addEventListener("abort", onAbort, { once: true });
    });
    return Promise.race([work, late]).finally(() => {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
    });
  }
}

/** One worker process, its command line on stdin, its events in the run's log. */
export class Worker {
  readonly id: string;
  readonly child: Deno.ChildProcess;
  readonly exited: Promise<Deno.CommandStatus>;
  readonly stderr: Promise<string>;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #lines: Promise<void>;

  constructor(id: string, args: string[], url: string, run: Run) {
    this.id = id;
    this.child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--quiet",
        "--allow-net",
        "--allow-env",
        "--allow-read",
        WORKER.href,
        id,
        ...args,
      ],
      cwd: ROOT,
      env: { DEADBOLT_DEMO_URL: url },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.child.stdin.getWriter();
    this.stderr = new Response(this.child.stderr).text();
    this.#lines = this.#read(run);
    this.exited = this.child.status.then(async (status) => {
      await this.#lines;
      run.record({
        at: clock(),
        worker: id,
        event: "exit",
        code: status.code,
        signal: status.signal,
      });
      return status;
    });
  }

  get pid(): number {
    return this.child.pid;
  }

  /** Sends a command line; a worker that has exited ignores it. */
  async send(command: string): Promise<void> {
    await this.#stdin.write(encoder.encode(`${command}\n`)).catch(() => {});
  }

  kill(signal: Deno.Signal): void {
    try {
      this.child.kill(signal);
    } catch {
      // It has exited already.
    }
  }

  /** Closes its stdin; a worker that was not told `stop` exits at once. */
  async close(): Promise<void> {
    await this.#stdin.close().catch(() => {});
  }

  async #read(run: Run): Promise<void> {
    let buffer = "";
    const take = (line: string) => {
      if (line.trim() === "") return;
      try {
        run.record({ ...JSON.parse(line), worker: this.id });
      } catch {
        run.record({
          at: clock(),
          worker: this.id,
          event: "output",
          reason: line,
        });
      }
    };
    for await (
      const chunk of this.child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      buffer += chunk;
      const lines = buffer.split("\n");
      buffer = lines.pop()!;
      lines.forEach(take);
    }
    take(buffer);
  }
}
