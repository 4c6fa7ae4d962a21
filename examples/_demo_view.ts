/**
 * What the demo prints: the live timeline of events, in the order they
 * happened, and the verdict. Colors only on a terminal, and never with
 * NO_COLOR set.
 *
 * @module
 */

import { clock } from "./_demo_run.ts";
import type { DemoEvent, Hold, Register, Verdict } from "./_demo_verdict.ts";

// Lines are shown in the order things happened, not the order they arrived
// from four pipes: each waits this long in a small buffer.
const REORDER_MS = 80;

const colored = Deno.stdout.isTerminal() && !Deno.noColor;
const paint = (code: string) => (text: string): string =>
  colored ? `\x1b[${code}m${text}\x1b[0m` : text;
export const bold = paint("1");
export const dim = paint("2");
export const red = paint("1;31");
const green = paint("1;32");
export const yellow = paint("33");
const workerColors = ["36", "35", "33", "34", "32", "96"].map(paint);
export const say = (line = ""): void => {
  try {
    console.log(line);
  } catch {
    // stdout is gone (say, piped into `head`): keep going, to clean up.
  }
};

/** Prints events in the order they happened, a moment after they arrive. */
export class Timeline {
  #ttl: number;
  #pending: DemoEvent[] = [];
  #timer: ReturnType<typeof setInterval> | undefined;
  #origin = 0;
  #holder: { worker: string; fence: number } | undefined;
  #holds = new Map<string, number>();
  #writes = new Map<string, DemoEvent>();
  #last: { worker: string; how: string; at: number } | undefined;
  #showing = false;

  /** `ttl`: the workers' lease, for the story lines. */
  constructor(ttl: number) {
    this.#ttl = ttl;
  }

  start(origin: number): void {
    this.#origin = origin;
    this.#showing = true;
    this.#timer = setInterval(() => this.flush(clock() - REORDER_MS), 20);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.flush(Infinity);
    this.#showing = false;
  }

  push(event: DemoEvent): void {
    if (!this.#showing) return;
    let i = this.#pending.length;
    while (i > 0 && this.#pending[i - 1].at > event.at) i--;
    this.#pending.splice(i, 0, event);
  }

  flush(until: number): void {
    while (this.#pending.length > 0 && this.#pending[0].at <= until) {
      const event = this.#pending.shift()!;
      const text = this.#describe(event);
      if (text === undefined) continue;
      const time = ((event.at - this.#origin) / 1000).toFixed(3).padStart(7);
      say(`${dim(`${time}s`)}  ${who(event.worker)}  ${text}`);
    }
  }

  #describe(e: DemoEvent): string | undefined {
    const ms = (n: number) => `${Math.round(n)} ms`;
    switch (e.event) {
      case "wait":
        return this.#holder
          ? `waits: ${this.#holder.worker} holds fence ${this.#holder.fence}`
          : "waits: the lock is taken";
      case "acquired": {
        const before = this.#last;
        let how = "";
        if (before?.how === "released" && e.contended) {
          how = ` (handoff from ${before.worker}; waited ${ms(e.waited!)})`;
        } else if (before?.how === "frozen" || before?.how === "killed") {
          how = ` (${before.worker} is ${before.how}; its lease ran out ${
            ms(e.at - before.at)
          } after the ${before.how === "frozen" ? "SIGSTOP" : "SIGKILL"})`;
        } else if (e.contended) {
          how = ` (waited ${ms(e.waited!)})`;
        }
        this.#holder = { worker: e.worker, fence: e.fence! };
        this.#holds.set(e.worker, e.at);
        this.#last = { worker: e.worker, how: "holds", at: e.at };
        const stall = e.stall
          ? dim(" — it will sit on the lock until the demo acts")
          : "";
        return `${bold(`holds the lock, fence ${e.fence}`)}${how}${stall}`;
      }
      case "write":
        this.#writes.set(e.worker, e);
        return e.accepted ? undefined : red(
          `its write with fence ${e.fence} is REFUSED by the register, which has fence ${e.current}`,
        );
      case "released": {
        const write = this.#writes.get(e.worker);
        if (this.#holder?.worker === e.worker) this.#holder = undefined;
        if (!e.released) {
          return `release() → false: the key is no longer its own`;
        }
        this.#last = { worker: e.worker, how: "released", at: e.at };
        const held = e.end! - (this.#holds.get(e.worker) ?? e.end!);
        const wrote = write?.accepted ? `wrote fence ${e.fence}, ` : "";
        return `${wrote}released after ${ms(held)}`;
      }
      case "lost":
        return red(`lock.signal aborted: ${e.reason}`);
      case "timeout":
        return yellow(`gave up waiting after ${ms(e.waited!)}`);
      case "error":
        return red(`failed: ${e.reason}`);
      case "output":
        return dim(`says: ${e.reason}`);
      case "exit":
        if (e.signal) return `exited: killed by ${e.signal}`;
        return e.code === 0 ? undefined : red(`exited with code ${e.code}`);
      case "stall":
        return dim(
          `tells ${e.target} to hold its next lock until told to go on`,
        );
      case "sigstop":
        this.#last = { worker: e.target!, how: "frozen", at: e.at };
        return red(
          `SIGSTOP ${e.target} while it holds fence ${e.fence}: frozen mid-section, it cannot renew its ${this.#ttl} ms lease`,
        );
      case "sigcont":
        return red(
          `SIGCONT ${e.target} after ${
            ms(e.waited!)
          } frozen: it resumes mid-section and writes with fence ${e.fence}`,
        );
      case "sigkill":
        this.#last = { worker: e.target!, how: "killed", at: e.at };
        return red(
          `SIGKILL ${e.target} while it holds fence ${e.fence}: no renewal, no release; the lease will run out`,
        );
      case "phase":
        return bold(e.reason!);
      case "failure":
        return red(`${e.reason}`);
      default:
        return undefined;
    }
  }
}

function who(worker: string): string {
  const n = Number(worker.slice(1));
  const label = worker.padEnd(4);
  return worker === "demo" ? bold(label) : workerColors[(n - 1) % 6](label);
}

/** Prints the verdict table and its conclusion. */
export function report(
  verdict: Verdict,
  register: Register,
  ttl: number,
): void {
  const ok = (good: boolean, text: string) => good ? green(text) : red(text);
  const ms = (n: number) => `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`;
  const row = (label: string, value: string) =>
    say(`  ${label.padEnd(31)} ${value}`);
  const { holds, sections, overlaps, paused, killed } = verdict;
  const perWorker = new Map<string, number>();
  for (const h of sections) {
    perWorker.set(h.worker, (perWorker.get(h.worker) ?? 0) + 1);
  }
  const counts = [...perWorker].sort().map(([w, n]) => `${w} ${n}`).join(", ");
  const fences = holds.map((h) => h.fence);
  const median = (xs: number[]) =>
    [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
  const hold = (h: Hold) => `${h.worker}, fence ${h.fence}`;

  say();
  say(bold("verdict") + dim(" (computed from the events above)"));
  row(
    "critical sections completed",
    ok(sections.length > 0, String(sections.length)) + dim(` (${counts})`),
  );
  row(
    "overlaps of held intervals",
    ok(overlaps.length === 0, String(overlaps.length)) +
      dim(
        ` (${holds.length} holds, each from its grant to release(), or to validUntil if lost)`,
      ),
  );
  row(
    "fences strictly increasing",
    ok(verdict.fencesIncreasing, verdict.fencesIncreasing ? "yes" : "no") +
      dim(` (${fences[0]} → ${fences.at(-1)} over ${fences.length} grants)`),
  );
  row(
    "stale writes rejected by fence",
    ok(verdict.rejected.length > 0, String(verdict.rejected.length)) +
      dim(
        verdict.rejected.map((h) =>
          ` (${hold(h)}; the register had ${h.current})`
        ).join(""),
      ),
  );
  row(
    "losses signalled",
    ok(verdict.losses.length > 0, String(verdict.losses.length)) +
      dim(verdict.losses.map((h) => ` (${hold(h)})`).join("")),
  );
  if (paused) {
    row(
      "frozen holder",
      `${hold(paused.hold)}: frozen ${ms(paused.frozen)} on a ${ttl} ms lease`,
    );
  }
  if (killed) {
    row(
      "killed holder",
      `${hold(killed.hold)}: lock free again ${
        killed.freedAfter === undefined
          ? "never"
          : `${ms(killed.freedAfter)} later`
      }; ${killed.sectionsAfter} sections after`,
    );
  }
  if (verdict.handoffs.length > 0) {
    row(
      "handoffs to a waiting process",
      `${verdict.handoffs.length}, median ${
        ms(median(verdict.handoffs))
      } from release() to the grant`,
    );
  }
  row(
    "register",
    `fence ${register.fence} after ${register.writes} accepted writes`,
  );
  say();
  if (verdict.problems.length === 0) {
    say(
      green(
        "clean: never two holders at once, fences only went up, the stale write was refused, every loss was signalled",
      ),
    );
  } else {
    for (const problem of verdict.problems) say(red(`problem: ${problem}`));
  }
}
