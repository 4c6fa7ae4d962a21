/** Where the reporter writes: stderr, as `node:process` gives it. */
export interface ReportStream {
  /** Writes text as it is. */
  write(text: string): unknown;
  /** Whether it is a terminal. */
  isTTY?: boolean;
  /** The terminal's width. */
  columns?: number;
}

/** How much `deadbolt` says on stderr. */
export interface ReporterOptions {
  /** Only errors. */
  quiet: boolean;
  /** Progress too, even when stderr is not a terminal. */
  verbose: boolean;
}

/** What a wait looks like at one moment. */
export interface WaitState {
  /** The lock's name. */
  name: string;
  /** This process's id: who is waiting. */
  pid: number;
  /** How long it has waited, in ms. */
  waited: number;
  /**
   * The holder's remaining lease in ms as Redis last reported it (PTTL):
   * -2 no key (just released), -1 no expiry, undefined not known yet.
   */
  holderTtl?: number;
}

const REFRESH_MS = 250;
const PTTL_EVERY_MS = 1_000;

/** A duration for people: `850 ms`, `3.2 s`, `2 min 5 s`, `1 h 2 min`. */
export function formatDuration(ms: number): string {
  if (ms === Infinity) return "forever";
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(Math.floor(ms / 100) / 10).toFixed(1)} s`;
  const seconds = Math.floor(ms / 1_000);
  if (seconds < 3_600) {
    return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  }
  return `${Math.floor(seconds / 3_600)} h ${
    Math.floor(seconds / 60) % 60
  } min`;
}

/** The holder's lease, as the status line and messages tell it. */
export function describeHolder(ttl: number | undefined): string {
  if (ttl === undefined) return "held by another owner";
  if (ttl === -2) return "just released";
  if (ttl === -1) return "held by another owner, with no expiry";
  return `held by another owner whose lease ends in ${formatDuration(ttl)}`;
}

/** The one-line status shown while waiting on a terminal. */
export function waitingLine(state: WaitState): string {
  return `waiting for lock '${state.name}' (pid ${state.pid}) for ${
    formatDuration(state.waited)
  }; ${describeHolder(state.holderTtl)}`;
}

/**
 * `deadbolt`'s voice on stderr: errors always; notices unless `quiet`;
 * progress with `verbose`; and, while waiting on a terminal, a one-line
 * status that rewrites itself in place.
 */
export class Reporter {
  #stream: ReportStream;
  #quiet: boolean;
  #verbose: boolean;
  #live = false;

  /** Creates a reporter on `stream`. */
  constructor(stream: ReportStream, options: ReporterOptions) {
    this.#stream = stream;
    this.#quiet = options.quiet;
    this.#verbose = options.verbose;
  }

  /** Something went wrong; printed even with `--quiet`. */
  error(message: string): void {
    this.#line(message);
  }

  /** Something the user should know (busy, lost, signalled); not with `--quiet`. */
  notice(message: string): void {
    if (!this.#quiet) this.#line(message);
  }

  /** Progress; only with `--verbose`. */
  info(message: string): void {
    if (this.#verbose) this.#line(message);
  }

  /**
   * Shows the wait for lock `name`: a live status line on a terminal (unless
   * quiet), one line with `--verbose` elsewhere, nothing otherwise. `pttl`
   * reads the holder's remaining lease; it is called at most once a second.
   *
   * @returns A function that ends the display.
   */
  waiting(
    name: string,
    pid: number,
    pttl: () => Promise<number>,
    firstTtl?: number,
  ): () => void {
    const started = performance.now();
    const state: WaitState = { name, pid, waited: 0, holderTtl: firstTtl };
    if (this.#quiet) return () => {};
    if (!this.#stream.isTTY) {
      this.info(waitingLine(state));
      return () => {};
    }
    let asked = started;
    let asking = false;
    let ttlAt = started;
    const render = () => {
      const at = performance.now();
      state.waited = at - started;
      const shown = { ...state };
      // Between readings the holder's lease counts down with the clock.
      if (state.holderTtl !== undefined && state.holderTtl >= 0) {
        shown.holderTtl = Math.max(0, state.holderTtl - (at - ttlAt));
      }
      this.#live = true;
      this.#stream.write(
        `\r\x1b[K${this.#fit(`deadbolt: ${waitingLine(shown)}`)}`,
      );
      if (!asking && at - asked >= PTTL_EVERY_MS) {
        asking = true;
        asked = at;
        pttl().then((ttl) => {
          state.holderTtl = ttl;
          ttlAt = performance.now();
        }, () => {}).finally(() => asking = false);
      }
    };
    render();
    const timer = setInterval(render, REFRESH_MS);
    return () => {
      clearInterval(timer);
      this.#clear();
    };
  }

  #fit(line: string): string {
    const columns = this.#stream.columns;
    if (!columns || line.length < columns) return line;
    return `${line.slice(0, Math.max(0, columns - 2))}…`;
  }

  #clear(): void {
    if (this.#live) this.#stream.write("\r\x1b[K");
    this.#live = false;
  }

  #line(message: string): void {
    this.#clear();
    this.#stream.write(`deadbolt: ${message}\n`);
  }
}
