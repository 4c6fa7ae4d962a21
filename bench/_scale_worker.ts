/**
 * One client process of `bench/scale.ts`.
 *
 * Protocol: `Deno.args[0]` is a JSON {@linkcode WorkerPlan}. The worker
 * connects, warms up (one cycle per task), prints `ready`, waits for `go` on
 * stdin, runs its tasks for `plan.ms`, prints one JSON
 * {@linkcode WorkerResult} line and exits.
 *
 * @module
 */

import { Cluster, Redis } from "npm:ioredis@6";
import { Lock } from "../mod.ts";

/** What one worker process runs. */
export interface WorkerPlan {
  /** The server's port, or every cluster node's port. */
  ports: number[];
  /** Whether `ports` are the nodes of a Redis Cluster (ioredis `Cluster`). */
  cluster: boolean;
  /**
   * The lock names of each task. A task loops over its names: acquire,
   * release, next name. Uncontended tasks own their names; contended tasks
   * share one name with the tasks (here and in other workers) of its key.
   */
  tasks: string[][];
  /** How long to run after `go`, in ms. */
  ms: number;
}

/** What one worker reports. */
export interface WorkerResult {
  /** Acquire + release cycles completed inside the window. */
  cycles: number;
  /** Per cycle: ms from calling acquire to the lock being held. */
  waits: number[];
  /** Per cycle: ms from calling acquire to release resolving. */
  durations: number[];
}

async function* lines(stream: ReadableStream<Uint8Array>) {
  let buffer = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    for (let end; (end = buffer.indexOf("\n")) >= 0;) {
      yield buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
    }
  }
}

const plan: WorkerPlan = JSON.parse(Deno.args[0]);
const client = plan.cluster
  ? new Cluster(plan.ports.map((port) => ({ host: "127.0.0.1", port })))
  : new Redis(plan.ports[0], "127.0.0.1");

// Contended waits can be long: one key, eight waiters, no work inside.
const options = { timeout: 60_000, ttl: 10_000 };

async function cycle(name: string, signal?: AbortSignal): Promise<number> {
  const started = performance.now();
  const lock = await Lock.acquire(client, name, { ...options, signal });
  const waited = performance.now() - started;
  await lock.release();
  return waited;
}

// Warm up: connections, script cache, slot map.
await Promise.all(plan.tasks.map((names) => cycle(names[0])));
console.log("ready");
const input = lines(Deno.stdin.readable);
while ((await input.next()).value !== "go");

const stop = new AbortController();
const result: WorkerResult = { cycles: 0, waits: [], durations: [] };
const timer = setTimeout(() => stop.abort(), plan.ms);
await Promise.all(plan.tasks.map(async (names) => {
  for (let i = 0; !stop.signal.aborted; i = (i + 1) % names.length) {
    const started = performance.now();
    let waited: number;
    try {
      waited = await cycle(names[i], stop.signal);
    } catch (error) {
      if (stop.signal.aborted) return;
      throw error;
    }
    if (stop.signal.aborted) return; // finished after the window closed
    result.cycles++;
    result.waits.push(waited);
    result.durations.push(performance.now() - started);
  }
}));
clearTimeout(timer);
console.log(JSON.stringify(result));
await client.quit();
