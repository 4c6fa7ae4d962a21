/**
 * Jepsen-style checkers over recorded histories, and the fenced register they
 * check against. A history is a list of {@linkcode Event}s: every operation
 * is an `invoke` followed (on the same `proc`, which runs one operation of a
 * kind at a time) by `ok`, `fail` (certainly did not happen) or `info`
 * (outcome unknown); an invoke with no completion (the process was killed)
 * counts as `info`.
 *
 * Times: every process stamps its own events with {@linkcode sharedNow}, so
 * events of different processes are comparable. See there for why that is
 * correct and how large its error is.
 *
 * @module
 */

/** One line of a history. */
export type Event = {
  /** The process (one incarnation of one worker) that ran the operation. */
  proc: string;
  /** `lost` is the moment `lock.signal` aborted (always `type: "info"`). */
  op: "acquire" | "release" | "write" | "lost";
  type: "invoke" | "ok" | "fail" | "info";
  /** {@linkcode sharedNow} when the event happened, in ms. */
  t: number;
  /** The lock token of the grant this event belongs to. */
  token?: string;
  /** The grant's fence (acquire `ok`, writes to the fenced register). */
  fence?: number;
  /** The grant's `validUntil` at this moment, converted to the shared clock. */
  validUntil?: number;
  /** Write: the value written. Release `ok`: 1 released, 0 not. */
  value?: number;
  /** Write: the key written (the fenced register's key, or a counter's). */
  key?: string;
  /** `fail`/`info`: the error's name and message. */
  error?: string;
  /** A read-write lock's hold: `read` or `write` (acquire `ok`). */
  mode?: "read" | "write";
};

/**
 * Milliseconds on a clock that all processes of this machine share:
 * `performance.timeOrigin + performance.now()`.
 *
 * Why this and not the alternatives:
 * - `performance.now()` alone is monotonic but counts from each process's own
 *   start, so two processes' values cannot be compared.
 * - The parent stamping lines as it reads them is wrong in both directions: a
 *   line sits in the pipe and in the parent's event loop for a variable time
 *   (and not at all while the child is SIGSTOPped before writing), so a late
 *   "acquire ok" stamp hides an overlap and a late "release" stamp invents one.
 * - `timeOrigin` is the wall clock sampled (µs resolution) at the moment the
 *   process's monotonic origin was taken, so `timeOrigin + now()` is
 *   CLOCK_MONOTONIC plus a per-process offset (wall − monotonic at start). On
 *   Linux NTP slews both clocks alike; only a *step* of the wall clock changes
 *   wall − monotonic. So without clock steps between process starts, every
 *   process's offset is the same up to the sampling gap (microseconds).
 *
 * Measured here by ping-pong over pipes (`checkers_test.ts`, and the soak for
 * every worker it starts): children agree with the parent within 0.1 ms. A
 * checker's `tolerance` of 1 ms covers it tenfold. Use it only in runs that
 * do not step the wall clock (no F22/F23 nemesis).
 */
export const sharedNow = (): number =>
  performance.timeOrigin + performance.now();

/** An operation: an invoke and its completion, if any. */
export interface Operation {
  proc: string;
  op: Event["op"];
  invoke: Event;
  /** Undefined when the process never completed it (e.g. it was killed). */
  complete?: Event;
}

/** Pairs each invoke of `op` with the next completion of `op` on its proc. */
export function operations(events: Event[], op: Event["op"]): Operation[] {
  const open = new Map<string, Operation>();
  const done: Operation[] = [];
  for (const event of events.toSorted((a, b) => a.t - b.t)) {
    if (event.op !== op) continue;
    if (event.type === "invoke") {
      const pending = open.get(event.proc);
      if (pending) done.push(pending); // an invoke without completion
      open.set(event.proc, { proc: event.proc, op, invoke: event });
    } else {
      const pending = open.get(event.proc);
      if (!pending) continue; // e.g. a completion whose invoke was not kept
      pending.complete = event;
      open.delete(event.proc);
      done.push(pending);
    }
  }
  done.push(...open.values());
  return done.sort((a, b) => a.invoke.t - b.invoke.t);
}

/** An operation's outcome: `info` when unknown or never completed. */
const outcome = (operation: Operation): "ok" | "fail" | "info" =>
  (operation.complete?.type ?? "info") as "ok" | "fail" | "info";

/** One violation a checker found, with the events that show it. */
export interface Violation {
  kind: string;
  message: string;
  events: Event[];
}

/** A checker's verdict. */
export interface Verdict {
  ok: boolean;
  violations: Violation[];
}

/** Options of the checkers that compare times of different processes. */
export interface TimeOptions {
  /** Clock error between processes, in ms: closer pairs are not compared. @default {1} */
  tolerance?: number;
}

/**
 * For operations sorted by invoke time: for each, the largest `key` among
 * operations that completed more than `tolerance` ms before it was invoked
 * (so precede it in real time), with that operation.
 */
function precedingMax(
  ops: Operation[],
  key: (op: Operation) => number,
  tolerance: number,
): (Operation | undefined)[] {
  const byEnd = ops.filter((op) => op.complete)
    .toSorted((a, b) => a.complete!.t - b.complete!.t);
  let best: Operation | undefined;
  let next = 0;
  return ops.map((op) => {
    while (
      next < byEnd.length && byEnd[next].complete!.t + tolerance < op.invoke.t
    ) {
      const candidate = byEnd[next++];
      if (!best || key(candidate) > key(best)) best = candidate;
    }
    return best;
  });
}

/** The verdict of {@linkcode checkFencedRegister}. */
export interface RegisterVerdict extends Verdict {
  /** Writes the register applied (`ok`). */
  accepted: number;
  /** Writes it refused as stale (`fail`). */
  rejected: number;
  /** Writes whose outcome is unknown. */
  indeterminate: number;
}

/**
 * Checks the writes to a fenced register: no accepted write has a fence ≤
 * the fence of an accepted write that completed before it was invoked, and
 * no two accepted writes share a fence. Given the register's own log of
 * applied fences (`applied`, in apply order), also checks that the log rises
 * strictly, holds every accepted write, and holds nothing nobody wrote.
 *
 * @param events The history (writes to other keys are ignored when `key` is set).
 */
export function checkFencedRegister(
  events: Event[],
  options: TimeOptions & { key?: string; applied?: number[] } = {},
): RegisterVerdict {
  const { tolerance = 1, key, applied } = options;
  const writes = operations(events, "write")
    .filter((w) => w.invoke.fence !== undefined)
    .filter((w) => key === undefined || w.invoke.key === key);
  const accepted = writes.filter((w) => outcome(w) === "ok");
  const violations: Violation[] = [];
  const fence = (w: Operation) => w.invoke.fence!;

  const seen = new Map<number, Operation>();
  for (const w of accepted) {
    const twin = seen.get(fence(w));
    if (twin) {
      violations.push({
        kind: "duplicate",
        message: `fence ${
          fence(w)
        } was accepted twice (${twin.proc}, ${w.proc})`,
        events: [twin.invoke, w.invoke],
      });
    } else seen.set(fence(w), w);
  }
  const before = precedingMax(accepted, fence, tolerance);
  accepted.forEach((w, i) => {
    const earlier = before[i];
    if (earlier && fence(earlier) > fence(w)) {
      violations.push({
        kind: "order",
        message: `fence ${fence(w)} (${w.proc}) was accepted after fence ${
          fence(earlier)
        } (${earlier.proc}) had been`,
        events: [earlier.complete!, w.invoke],
      });
    }
  });

  if (applied) {
    for (let i = 1; i < applied.length; i++) {
      if (applied[i] <= applied[i - 1]) {
        violations.push({
          kind: "log-order",
          message: `the register applied fence ${applied[i]} after ${
            applied[i - 1]
          }`,
          events: [],
        });
      }
    }
    const logged = new Set(applied);
    for (const w of accepted) {
      if (!logged.has(fence(w))) {
        violations.push({
          kind: "log-missing",
          message: `accepted fence ${fence(w)} (${w.proc}) is not in the log`,
          events: [w.invoke],
        });
      }
    }
    const written = new Set(writes.map(fence));
    for (const f of logged) {
      if (!written.has(f)) {
        violations.push({
          kind: "phantom",
          message: `the log holds fence ${f}, which no write carried`,
          events: [],
        });
      }
    }
  }
  return {
    ok: violations.length === 0,
    violations,
    accepted: accepted.length,
    rejected: writes.filter((w) => outcome(w) === "fail").length,
    indeterminate: writes.filter((w) => outcome(w) === "info").length,
  };
}

/** The verdict of {@linkcode checkCounter}. */
export interface CounterVerdict {
  /** No update certainly lost, and no increment from nowhere. */
  ok: boolean;
  final: number;
  acknowledged: number;
  indeterminate: number;
  /** Updates certainly lost: `acknowledged − final` (at least 0). */
  lost: number;
  /** Updates possibly lost, if every indeterminate write was applied. */
  lostAtMost: number;
}

/**
 * Checks a counter incremented by GET, await, SET under the lock: every
 * acknowledged increment must show in `final`. Lost updates =
 * `acknowledged − final`. Writes whose outcome is unknown (`indeterminate`:
 * the process died with the SET in flight) may or may not have landed, so
 * `final` may exceed `acknowledged` by up to that many.
 */
export function checkCounter(
  final: number,
  acknowledged: number,
  indeterminate = 0,
): CounterVerdict {
  const lost = Math.max(0, acknowledged - final);
  const lostAtMost = Math.max(0, acknowledged + indeterminate - final);
  return {
    ok: lost === 0 && final <= acknowledged + indeterminate,
    final,
    acknowledged,
    indeterminate,
    lost,
    lostAtMost,
  };
}

/** One grant's validity window on the shared clock. */
export interface Window {
  proc: string;
  token: string;
  fence?: number;
  mode?: "read" | "write";
  start: number;
  end: number;
}

/** The verdict of {@linkcode checkValidityWindows}. */
export interface WindowsVerdict extends Verdict {
  /** Grants (acquire `ok`). */
  grants: number;
  /** Windows that were not empty. */
  windows: Window[];
}

/**
 * Checks that the validity windows of different grants never overlap. A
 * grant's window is `[acquire ok, min(release invoke, validUntil)]`, with
 * the latest `validUntil` any event of that grant (same token) reported, so
 * a holder that was paused, or killed, ends at its lease, not when it woke.
 * Only for runs whose wall clock was not stepped (see {@linkcode sharedNow}).
 */
/**
 * The validity windows of the grants in `events` (see
 * {@linkcode checkValidityWindows}), sorted by start, with the grants that
 * lack a token or a `validUntil` as violations.
 */
export function validityWindows(
  events: Event[],
): { grants: number; windows: Window[]; violations: Violation[] } {
  const validUntil = new Map<string, number>();
  const releasedAt = new Map<string, number>();
  for (const event of events) {
    if (event.token === undefined) continue;
    if (event.validUntil !== undefined) {
      validUntil.set(
        event.token,
        Math.max(validUntil.get(event.token) ?? -Infinity, event.validUntil),
      );
    }
    if (event.op === "release" && event.type === "invoke") {
      releasedAt.set(
        event.token,
        Math.min(releasedAt.get(event.token) ?? Infinity, event.t),
      );
    }
  }
  const grants = events.filter((e) => e.op === "acquire" && e.type === "ok");
  const violations: Violation[] = [];
  const windows: Window[] = [];
  for (const grant of grants) {
    if (grant.token === undefined || !validUntil.has(grant.token)) {
      violations.push({
        kind: "malformed",
        message: `a grant of ${grant.proc} has no token or validUntil`,
        events: [grant],
      });
      continue;
    }
    const end = Math.min(
      releasedAt.get(grant.token) ?? Infinity,
      validUntil.get(grant.token)!,
    );
    if (end > grant.t) {
      windows.push({
        proc: grant.proc,
        token: grant.token,
        fence: grant.fence,
        mode: grant.mode,
        start: grant.t,
        end,
      });
    }
  }
  windows.sort((a, b) => a.start - b.start);
  return { grants: grants.length, windows, violations };
}

export function checkValidityWindows(
  events: Event[],
  options: TimeOptions = {},
): WindowsVerdict {
  const { tolerance = 1 } = options;
  const { grants, windows, violations } = validityWindows(events);
  let widest: Window | undefined;
  for (const window of windows) {
    if (
      widest && widest.token !== window.token &&
      window.start + tolerance < widest.end
    ) {
      violations.push({
        kind: "overlap",
        message: `${window.proc} (fence ${window.fence}) was granted ${
          (widest.end - window.start).toFixed(3)
        } ms before the window of ${widest.proc} (fence ${widest.fence}) ended`,
        events: [],
      });
    }
    if (!widest || window.end > widest.end) widest = window;
  }
  return {
    ok: violations.length === 0,
    violations,
    grants,
    windows,
  };
}

/** The verdict of {@linkcode checkUniqueFences}. */
export interface FencesVerdict extends Verdict {
  /** Grants with a fence. */
  grants: number;
}

/**
 * Checks the fences of grants: every grant has a fence, no two grants share
 * one, and a grant that completed before another was invoked has the
 * smaller fence (fence order is grant order).
 */
export function checkUniqueFences(
  events: Event[],
  options: TimeOptions = {},
): FencesVerdict {
  const { tolerance = 1 } = options;
  const grants = operations(events, "acquire")
    .filter((a) => outcome(a) === "ok");
  const violations: Violation[] = [];
  const fence = (a: Operation) => a.complete!.fence ?? NaN;
  const byFence = new Map<number, Operation>();
  for (const grant of grants) {
    const f = fence(grant);
    if (!Number.isSafeInteger(f) || f < 1) {
      violations.push({
        kind: "malformed",
        message: `a grant of ${grant.proc} has fence ${f}`,
        events: [grant.complete!],
      });
      continue;
    }
    const twin = byFence.get(f);
    if (twin) {
      violations.push({
        kind: "duplicate",
        message: `fence ${f} was issued to ${twin.proc} and to ${grant.proc}`,
        events: [twin.complete!, grant.complete!],
      });
    } else byFence.set(f, grant);
  }
  const before = precedingMax(grants, fence, tolerance);
  grants.forEach((grant, i) => {
    const earlier = before[i];
    // Equal fences are reported above as duplicates.
    if (earlier && fence(earlier) > fence(grant)) {
      violations.push({
        kind: "order",
        message: `${grant.proc} got fence ${fence(grant)} after ${
          fence(earlier)
        } had been issued to ${earlier.proc}`,
        events: [earlier.complete!, grant.invoke],
      });
    }
  });
  return { ok: violations.length === 0, violations, grants: grants.length };
}

/** The verdict of {@linkcode checkLossSignalled}. */
export interface LossVerdict extends Verdict {
  /** Grants whose release was invoked after their validity had run out. */
  expired: number;
}

/**
 * Checks that loss is never silent: a grant whose release was invoked after
 * its `validUntil` (the value the release invoke reports, extensions
 * included) must have a `lost` event (`lock.signal` aborted) no later than
 * that release's completion. A paused holder learns late, but it must learn
 * before `release()` returns. Releases that never completed are skipped.
 */
export function checkLossSignalled(
  events: Event[],
  options: TimeOptions = {},
): LossVerdict {
  const { tolerance = 1 } = options;
  const lost = new Map<string, Event>();
  const invoked = new Map<string, Event>();
  const completed = new Map<string, Event>();
  for (const e of events) {
    if (e.token === undefined) continue;
    if (e.op === "lost" && !lost.has(e.token)) lost.set(e.token, e);
    if (e.op !== "release") continue;
    const seen = e.type === "invoke" ? invoked : completed;
    if (!seen.has(e.token)) seen.set(e.token, e);
  }
  const violations: Violation[] = [];
  let expired = 0;
  for (const [token, release] of invoked) {
    const { validUntil } = release;
    if (validUntil === undefined || release.t <= validUntil + tolerance) {
      continue;
    }
    expired++;
    const done = completed.get(token);
    if (!done) continue;
    const loss = lost.get(token);
    if (!loss || loss.t > done.t) {
      violations.push({
        kind: "silent",
        message: `${release.proc} (fence ${release.fence}) released ${
          (release.t - validUntil).toFixed(1)
        } ms after its validUntil, and no abort event had reached lock.signal's listener when release() returned`,
        events: [release, done],
      });
    }
  }
  return { ok: violations.length === 0, violations, expired };
}

// ---- the fenced register ----

/** Any client that can send one command, e.g. `RespClient` from `_resp.ts`. */
export interface CommandClient {
  send(command: string, ...args: (string | number)[]): Promise<unknown>;
}

/**
 * KEYS: register hash, its log. ARGV: fence, value. Applies the write only if
 * the fence is strictly greater than the last applied one; appends applied
 * fences to the log. Replies 1 applied, 0 rejected (integers only).
 */
const FENCED_WRITE = `local fence = ARGV[1]
if not string.match(fence, '^%d+$') or tonumber(fence) >= 9007199254740991 then
  return redis.error_reply('ERR fence must be an integer below 2^53 - 1')
end
local last = redis.call('HGET', KEYS[1], 'fence')
if last and tonumber(fence) <= tonumber(last) then return 0 end
redis.call('HSET', KEYS[1], 'fence', fence, 'value', ARGV[2])
redis.call('RPUSH', KEYS[2], fence)
return 1`;

/**
 * Writes `value` to the fenced register `key` on the resource server if
 * `fence` is greater than the last fence it applied.
 *
 * @returns 1 when applied, 0 when rejected as stale.
 */
export async function fencedWrite(
  resource: CommandClient,
  key: string,
  fence: number,
  value: number,
): Promise<0 | 1> {
  const reply = await resource.send(
    "EVAL",
    FENCED_WRITE,
    2,
    key,
    `${key}:applied`,
    String(fence),
    String(value),
  );
  if (reply !== 0 && reply !== 1) {
    throw new TypeError(`fencedWrite replied ${JSON.stringify(reply)}`);
  }
  return reply;
}

/** Reads the register: its last fence and value, and every applied fence in order. */
export async function readRegister(
  resource: CommandClient,
  key: string,
): Promise<{ fence: number; value: number; applied: number[] }> {
  const [fence, value] = await resource.send(
    "HMGET",
    key,
    "fence",
    "value",
  ) as (string | null)[];
  const applied = await resource.send(
    "LRANGE",
    `${key}:applied`,
    0,
    -1,
  ) as string[];
  return {
    fence: Number(fence ?? 0),
    value: Number(value ?? 0),
    applied: applied.map(Number),
  };
}

/** The verdict of {@linkcode checkAtMost}. */
export interface AtMostVerdict extends WindowsVerdict {
  /** The most windows that were open at one moment. */
  most: number;
}

/**
 * Checks that never more than `limit` validity windows (a semaphore's
 * permits) are open at one moment: a sweep over the windows' starts and
 * ends, an end counted before a start at the same moment (within
 * `tolerance`).
 */
export function checkAtMost(
  events: Event[],
  limit: number,
  options: TimeOptions = {},
): AtMostVerdict {
  const { tolerance = 1 } = options;
  const { grants, windows, violations } = validityWindows(events);
  const edges = windows.flatMap((w) => [
    { t: w.start + tolerance, open: 1, window: w },
    { t: w.end, open: -1, window: w },
  ]).sort((a, b) => a.t - b.t || a.open - b.open);
  let open = 0;
  let most = 0;
  for (const edge of edges) {
    open += edge.open;
    most = Math.max(most, open);
    if (edge.open === 1 && open > limit) {
      violations.push({
        kind: "overlap",
        message:
          `${open} permits valid at once (limit ${limit}) when ${edge.window.proc} was granted`,
        events: [],
      });
    }
  }
  return { ok: violations.length === 0, violations, grants, windows, most };
}

/**
 * Checks a read-write lock's windows: a writer's never overlaps another
 * writer's or any reader's (within `tolerance`). Readers may overlap.
 */
export function checkReadersWriters(
  events: Event[],
  options: TimeOptions = {},
): WindowsVerdict {
  const { tolerance = 1 } = options;
  const { grants, windows, violations } = validityWindows(events);
  const writers = windows.filter((w) => w.mode === "write");
  for (const writer of writers) {
    for (const other of windows) {
      // Each pair of writers once.
      if (
        other === writer ||
        (other.mode === "write" && other.start < writer.start)
      ) {
        continue;
      }
      if (
        other.start + tolerance < writer.end &&
        writer.start + tolerance < other.end
      ) {
        violations.push({
          kind: "overlap",
          message:
            `the writer ${writer.proc} (fence ${writer.fence}) overlapped the ${
              other.mode ?? "?"
            } hold of ${other.proc} by ${
              (Math.min(writer.end, other.end) -
                Math.max(writer.start, other.start)).toFixed(3)
            } ms`,
          events: [],
        });
      }
    }
  }
  return { ok: violations.length === 0, violations, grants, windows };
}
