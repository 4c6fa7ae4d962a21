/**
 * The verdict of `deno task demo`, computed from the events of the run alone:
 * what the workers reported (JSON lines) and what the demo did to them
 * (SIGSTOP, SIGCONT, SIGKILL, exits). Nothing here trusts the lock: each
 * check is one that a broken lock would fail.
 *
 * @module
 */

/** One event of the run; `at` is epoch ms on the shared clock. */
export interface DemoEvent {
  /** When it happened: `performance.timeOrigin + performance.now()`. */
  at: number;
  /** The worker it is about (`w1`…), or `demo` for the demo's own actions. */
  worker: string;
  /** What happened: `acquired`, `wait`, `write`, `lost`, `released`, `exit`, `sigstop`, … */
  event: string;
  /** The worker a demo action targets. */
  target?: string;
  /** The fencing token of the hold the event belongs to. */
  fence?: number;
  /** `acquired`: how long the worker asked before it got the lock, in ms. */
  waited?: number;
  /** `acquired`: whether its first attempt found the lock taken. */
  contended?: boolean;
  /** `acquired`: whether the demo told it to sit on this hold. */
  stall?: boolean;
  /** `write`: whether the fenced register took the write. */
  accepted?: boolean;
  /** `write`: the register's fence before the write. */
  current?: number;
  /** `released`: when the hold ended: release() called, or validUntil if earlier. */
  end?: number;
  /** `released`: what `release()` returned. */
  released?: boolean;
  /** `lost`, `error`, `failure`: the message. */
  reason?: string;
  /** `exit`: the exit code and the signal that ended the process. */
  code?: number;
  signal?: string | null;
}

/** One acquisition, from its grant to its end. */
export interface Hold {
  worker: string;
  fence: number;
  /** When the grant arrived. */
  start: number;
  /** When the holder stopped being entitled to it (Infinity if never seen). */
  end: number;
  contended: boolean;
  /** What the fenced register said to its write, if it wrote. */
  accepted?: boolean;
  /** The register's fence when its write was refused. */
  current?: number;
  /** What `release()` returned, if it was called. */
  released?: boolean;
  /** When `lock.signal` aborted, if it did. */
  lostAt?: number;
}

/** The fenced register as the demo read it at the end. */
export interface Register {
  fence: number;
  writes: number;
}

/** What the run shows; `problems` is empty when the verdict is clean. */
export interface Verdict {
  holds: Hold[];
  /** Holds that wrote, were accepted and released their own key. */
  sections: Hold[];
  /** Pairs of holds whose intervals intersect. */
  overlaps: [Hold, Hold][];
  /** Whether fences, in grant order, strictly increase. */
  fencesIncreasing: boolean;
  /** Writes the register refused. */
  rejected: Hold[];
  /** Holds whose `lock.signal` aborted. */
  losses: Hold[];
  /** Gaps between a release and the grant to a worker that was waiting, in ms. */
  handoffs: number[];
  /** The hold frozen by SIGSTOP, and how long it stayed frozen. */
  paused?: { hold: Hold; frozen: number };
  /** The hold killed by SIGKILL, and when the next grant came after the kill. */
  killed?: { hold: Hold; freedAfter?: number; sectionsAfter: number };
  /** Everything that makes the verdict unclean, in plain words. */
  problems: string[];
}

/** Rebuilds the holds from the events, in grant order. */
export function holdsOf(events: readonly DemoEvent[]): Hold[] {
  const sorted = [...events].sort((a, b) => a.at - b.at);
  const holds: Hold[] = [];
  const open = new Map<string, Hold>();
  const key = (worker: string, fence?: number) => `${worker}#${fence}`;
  const endOpen = (worker: string, at: number) => {
    for (const [k, hold] of open) {
      if (hold.worker === worker) {
        hold.end = Math.min(hold.end, at);
        open.delete(k);
      }
    }
  };
  for (const e of sorted) {
    const hold = open.get(key(e.worker, e.fence));
    if (e.event === "acquired") {
      const fresh: Hold = {
        worker: e.worker,
        fence: e.fence!,
        start: e.at,
        end: Infinity,
        contended: e.contended ?? false,
      };
      holds.push(fresh);
      open.set(key(e.worker, e.fence), fresh);
    } else if (e.event === "write" && hold) {
      hold.accepted = e.accepted;
      hold.current = e.current;
    } else if (e.event === "lost" && hold) {
      hold.lostAt = e.at;
    } else if (e.event === "released" && hold) {
      hold.end = e.end ?? e.at;
      hold.released = e.released;
      open.delete(key(e.worker, e.fence));
    } else if (e.event === "sigkill" && e.target) {
      // A killed process can do nothing after the kill.
      endOpen(e.target, e.at);
    } else if (e.event === "exit") {
      endOpen(e.worker, e.at);
    }
  }
  return holds;
}

/** Judges the run: mutual exclusion, fencing, the pause and the kill. */
export function judge(
  events: readonly DemoEvent[],
  register?: Register,
): Verdict {
  const holds = holdsOf(events);
  const problems: string[] = [];
  const name = (h: Hold) => `${h.worker}'s fence ${h.fence}`;

  const overlaps: [Hold, Hold][] = [];
  let fencesIncreasing = true;
  for (let i = 1; i < holds.length; i++) {
    if (holds[i].fence <= holds[i - 1].fence) fencesIncreasing = false;
    for (let j = 0; j < i; j++) {
      if (holds[i].start < holds[j].end) overlaps.push([holds[j], holds[i]]);
    }
  }
  for (const [a, b] of overlaps) {
    problems.push(`${name(a)} and ${name(b)} were held at the same time`);
  }
  if (!fencesIncreasing) {
    problems.push("fences did not strictly increase in grant order");
  }

  const sections = holds.filter((h) => h.accepted && h.released);
  if (sections.length === 0) problems.push("no critical section completed");
  const rejected = holds.filter((h) => h.accepted === false);
  for (const h of rejected) {
    if (h.lostAt === undefined) {
      problems.push(
        `${
          name(h)
        } was refused by the register, yet its lock.signal never aborted`,
      );
    }
  }
  const losses = holds.filter((h) => h.lostAt !== undefined);

  const handoffs: number[] = [];
  for (let i = 1; i < holds.length; i++) {
    const [before, after] = [holds[i - 1], holds[i]];
    if (before.released && after.contended) {
      handoffs.push(after.start - before.end);
    }
  }

  const find = (event: string) => events.find((e) => e.event === event);
  const holdAt = (worker: string | undefined, fence: number | undefined) =>
    holds.find((h) => h.worker === worker && h.fence === fence);

  let paused: Verdict["paused"];
  const stop = find("sigstop");
  const cont = find("sigcont");
  const pausedHold = holdAt(stop?.target, stop?.fence);
  if (!stop || !cont || !pausedHold) {
    problems.push("no holder was paused and resumed");
  } else {
    paused = { hold: pausedHold, frozen: cont.at - stop.at };
    if (pausedHold.lostAt === undefined) {
      problems.push(
        `${pausedHold.worker}'s lock.signal did not abort after the pause`,
      );
    }
    if (pausedHold.accepted !== false) {
      problems.push(
        `${pausedHold.worker}'s write after the pause was not refused`,
      );
    }
  }

  let killed: Verdict["killed"];
  const kill = find("sigkill");
  const killedHold = holdAt(kill?.target, kill?.fence);
  if (!kill || !killedHold) {
    problems.push("no holder was killed");
  } else {
    const after = holds.filter((h) => h.start > kill.at);
    killed = {
      hold: killedHold,
      freedAfter: after.length > 0 ? after[0].start - kill.at : undefined,
      sectionsAfter: after.filter((h) => sections.includes(h)).length,
    };
    if (killed.sectionsAfter === 0) {
      problems.push("no critical section completed after the kill");
    }
  }

  for (const e of events) {
    if (e.event === "error" || e.event === "failure") {
      problems.push(`${e.worker}: ${e.reason}`);
    } else if (
      e.event === "exit" && e.code !== 0 && e.worker !== kill?.target
    ) {
      problems.push(`${e.worker} exited with code ${e.code}`);
    }
  }
  if (register) {
    const accepted = holds.filter((h) => h.accepted);
    const last = Math.max(0, ...accepted.map((h) => h.fence));
    if (register.fence !== last || register.writes !== accepted.length) {
      problems.push(
        `the register holds fence ${register.fence} after ${register.writes} writes; the workers reported fence ${last} after ${accepted.length}`,
      );
    }
  }
  return {
    holds,
    sections,
    overlaps,
    fencesIncreasing,
    rejected,
    losses,
    handoffs,
    paused,
    killed,
    problems,
  };
}
