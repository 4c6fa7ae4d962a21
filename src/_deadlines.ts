/**
 * One timer for every deadline of the process: the bounds of pending Redis
 * calls and the leases' renewals and loss deadlines.
 *
 * A timer per deadline costs a runtime timer set and cleared for every
 * Redis call and every hold, and on a loopback connection that was 7% (Node)
 * to 11% (Deno) of an uncontended acquire and release. Here the deadlines
 * wait in a heap, and one timer is set for the earliest (at most a second
 * ahead, see `STEP`). A deadline that is met (the usual case: the call
 * answered, the lock released) leaves the timer alone while others remain:
 * if it fires with nothing due, it is set again for what is due next.
 *
 * Under Deno no timer outlives what deadbolt is doing (its test sanitizers
 * count every timer left at the end of a test): when the last deadline
 * goes, the timer is cleared. An acquisition or a release, which goes from
 * a call's bound to a lease's alarm or the other way, holds the timer
 * meanwhile ({@linkcode startOperation}), so an uncontended acquire and
 * release set one timer, not three. Elsewhere (Node, Bun) the timer is left
 * to fire, keeping nobody alive, and a deadline set before it fires takes
 * it as it is: acquisitions and releases one after another set one timer a
 * second, not one each (a timer set and cleared per cycle was 2.6% of an
 * uncontended cycle's CPU under Node, on a real server).
 *
 * The timer keeps the process alive exactly while a deadline that must
 * (`keepAlive`: the bound of a call not made in the background) is
 * scheduled, as its own timer would.
 *
 * @module
 */

import { now } from "./_timers.ts";

/** Something due at a time (monotonic ms), for {@linkcode schedule}. */
export interface Deadline {
  /** When it is due; kept by {@linkcode schedule}. */
  at: number;
  /** Its place among the scheduled ones; -1 when not scheduled. */
  slot: number;
  /** Whether the process must stay alive until it is met or due. */
  readonly keepAlive: boolean;
  /** Called once it is due, after it has left the schedule. */
  due(): void;
}

/** A {@linkcode Deadline} that calls `due`; schedule it with `set`. */
export class Alarm implements Deadline {
  at = Infinity;
  slot = -1;
  readonly keepAlive: boolean;
  readonly due: () => void;

  /** An alarm that calls `due`; with `keepAlive`, the process waits for it. */
  constructor(due: () => void, keepAlive = false) {
    this.due = due;
    this.keepAlive = keepAlive;
  }

  /** Rings at `at` (monotonic ms) rather than when it was set to. */
  set(at: number): void {
    schedule(this, at);
  }

  /** Will not ring (until set again). */
  clear(): void {
    unschedule(this);
  }
}

type Timer = ReturnType<typeof setTimeout>;

// The timer is set at most this far ahead (ms), and set again when it fires
// with nothing due. A call's bound (5 s by default) comes first in an
// acquisition and a lease's renewal (a third of its ttl) next: the timer
// set for the bound must not have to move for the renewal, which it would
// for a ttl under 15 s. A step of 1 s covers a ttl of 3 s and more; a hold
// pays a timer a second. It also keeps delays far below 2^31 ms, which
// every runtime's setTimeout would fire at once.
const STEP = 1_000;

// A binary min-heap by `at`.
const heap: Deadline[] = [];
// How many scheduled deadlines keep the process alive.
let keptAlive = 0;
let timer: Timer | undefined;
// When the timer fires (monotonic ms), and whether it keeps the process alive.
let timerAt = Infinity;
let timerKeepsAlive = false;
// Operations under way that may schedule again soon (see `startOperation`).
let busyOperations = 0;

/**
 * Keeps the timer, should the schedule empty, until the matching
 * {@linkcode endOperation}: an acquisition or a release, from its start to
 * its end.
 */
export function startOperation(): void {
  busyOperations++;
}

/** Ends what {@linkcode startOperation} started (call it exactly once). */
export function endOperation(): void {
  if (--busyOperations === 0 && heap.length === 0) stop();
}

/** Makes `deadline` due at `at` (monotonic ms), scheduled or not. */
export function schedule(deadline: Deadline, at: number): void {
  const from = deadline.at;
  deadline.at = at;
  if (deadline.slot < 0) {
    deadline.slot = heap.length;
    heap.push(deadline);
    if (deadline.keepAlive) keptAlive++;
    rise(deadline.slot);
  } else if (at < from) rise(deadline.slot);
  else sink(deadline.slot);
  arm();
}

/** Takes `deadline` off the schedule, if it is on it. */
export function unschedule(deadline: Deadline): void {
  const slot = deadline.slot;
  if (slot < 0) return;
  take(slot);
  if (deadline.keepAlive && --keptAlive === 0) keepAlive(false);
  // Otherwise the timer stays set: if it fires with nothing due, it is set
  // again for what is due next.
  if (heap.length === 0 && busyOperations === 0) stop();
}

// Whether the timer is left to fire when nothing is scheduled, rather than
// cleared: where it can keep nobody alive (Node's and Bun's have unref()),
// but not under Deno, whose test sanitizers would fail a test that ends
// with it pending (or sees it fire).
const LINGER = !("Deno" in globalThis);
// Whether the timer now set was left to fire by `stop` (see `arm`).
let left = false;

function stop(): void {
  if (timer === undefined) return;
  const handle = timer as unknown as { unref?: unknown };
  if (LINGER && typeof handle.unref === "function") {
    // Left to fire: it keeps nobody alive, and finds nothing due.
    left = true;
    return keepAlive(false);
  }
  clearTimeout(timer);
  timer = undefined;
  timerAt = Infinity;
}

// Removes the deadline at `slot` from the heap.
function take(slot: number): Deadline {
  const taken = heap[slot];
  const last = heap.pop()!;
  taken.slot = -1;
  if (last !== taken) {
    heap[slot] = last;
    last.slot = slot;
    if (last.at < taken.at) rise(slot);
    else sink(slot);
  }
  return taken;
}

function rise(slot: number): void {
  const deadline = heap[slot];
  while (slot > 0) {
    const parent = (slot - 1) >> 1;
    if (heap[parent].at <= deadline.at) break;
    place(heap[parent], slot);
    slot = parent;
  }
  place(deadline, slot);
}

function sink(slot: number): void {
  const deadline = heap[slot];
  for (;;) {
    let child = 2 * slot + 1;
    if (child >= heap.length) break;
    if (child + 1 < heap.length && heap[child + 1].at < heap[child].at) {
      child++;
    }
    if (heap[child].at >= deadline.at) break;
    place(heap[child], slot);
    slot = child;
  }
  place(deadline, slot);
}

function place(deadline: Deadline, slot: number): void {
  heap[slot] = deadline;
  deadline.slot = slot;
}

// Sets the timer for the earliest deadline, unless it fires no later: at
// most a STEP ahead, so that a deadline set soon after (a lease's renewal
// after its call's bound) rarely comes before it.
function arm(): void {
  const first = heap[0];
  if (first === undefined) return;
  let at: number | undefined;
  if (left) {
    left = false;
    at = now();
    // A timer left to fire that is a step past its time without firing was
    // dropped (fake timers uninstalled, say), or is late (a blocked event
    // loop): set a new one, and make sure the old one never fires.
    if (timerAt < at - STEP) {
      clearTimeout(timer);
      timer = undefined;
    }
  }
  if (timer === undefined || timerAt > first.at) {
    if (timer !== undefined) clearTimeout(timer);
    at ??= now();
    timerAt = Math.min(first.at, at + STEP);
    timer = setTimeout(fire, Math.max(0, Math.ceil(timerAt - at)));
    timerKeepsAlive = true;
  }
  keepAlive(keptAlive > 0);
}

interface DenoTimers {
  refTimer?(id: number): void;
  unrefTimer?(id: number): void;
}

// Lets the timer keep the process alive, or not, where the runtime allows
// (Node and Bun timers have ref() and unref(), Deno has Deno.refTimer() and
// Deno.unrefTimer(); elsewhere, as on Deno Deploy, neither is needed).
function keepAlive(on: boolean): void {
  if (timer === undefined || timerKeepsAlive === on) return;
  timerKeepsAlive = on;
  const handle = timer as unknown as { ref?: () => void; unref?: () => void };
  if (typeof handle.unref === "function") {
    if (on) handle.ref!();
    else handle.unref();
    return;
  }
  const deno = (globalThis as { Deno?: DenoTimers }).Deno;
  (on ? deno?.refTimer : deno?.unrefTimer)?.(timer as unknown as number);
}

// The timer: calls what is due, then sets it again for what comes next,
// even if a call throws (the error then surfaces as the timer's own).
function fire(): void {
  timer = undefined;
  timerAt = Infinity;
  left = false;
  try {
    const at = now();
    while (heap.length > 0 && heap[0].at <= at) {
      const deadline = take(0);
      if (deadline.keepAlive) keptAlive--;
      deadline.due();
    }
  } finally {
    arm();
  }
}
