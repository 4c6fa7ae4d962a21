/**
 * The cross-process fairness scenario, shared by `fairness.ts` and
 * `compare/compare.ts`: `processes` processes (`_fairness_worker.ts`) of
 * `workers` loops each, every process with its own connection, all on one
 * key, for `ms`, starting together once every process is ready.
 *
 * @module
 */

import { clock, readLines } from "./compare/_libraries.ts";
import { spawnScript } from "./_runtime.ts";

/** What one run of the scenario measured. */
export interface FairnessRun {
  /** Acquisitions per process. */
  perProcess: number[];
  /** Acquisitions per worker, all processes. */
  perWorker: number[];
  /** Every wait, in ms. */
  waits: number[];
  /** How often a library's retry policy gave up (and the wait restarted). */
  gaveUp: number;
}

/** least/most of `values`: 1 when all got the same, 0 when one got none. */
export const spread = (values: number[]): number =>
  Math.max(...values) === 0 ? 0 : Math.min(...values) / Math.max(...values);

/** Runs the scenario once for variant `id` on the Redis at `port`. */
export async function fairnessRun(
  port: number,
  id: string,
  key: string,
  section: number,
  { processes = 4, workers = 4, ms = 2_000 } = {},
): Promise<FairnessRun> {
  const children = Array.from(
    { length: processes },
    () =>
      spawnScript(new URL("./_fairness_worker.ts", import.meta.url), [
        String(port),
        id,
        key,
        String(workers),
        String(section),
        String(ms),
      ]),
  );
  const lines = children.map((child) => readLines(child.stdout));
  const next = async (i: number, event: string) => {
    const line = await lines[i].next();
    if (line.done) {
      throw new Error(`a worker of ${id} exited before '${event}'`);
    }
    const message = JSON.parse(line.value);
    if (message.event !== event) {
      throw new Error(`a worker of ${id} said ${line.value}, not '${event}'`);
    }
    return message;
  };
  try {
    await Promise.all(children.map((_, i) => next(i, "ready")));
    // Every process starts at one wall-clock time, just ahead.
    const start = clock() + 50;
    for (const child of children) {
      const writer = child.stdin.getWriter();
      await writer.write(new TextEncoder().encode(`${start}\n`));
      await writer.close();
    }
    const done: { counts: number[]; waits: number[]; gaveUp: number }[] =
      await Promise.all(children.map((_, i) => next(i, "done")));
    return {
      perProcess: done.map((d) => d.counts.reduce((a, b) => a + b, 0)),
      perWorker: done.flatMap((d) => d.counts),
      waits: done.flatMap((d) => d.waits),
      gaveUp: done.reduce((sum, d) => sum + d.gaveUp, 0),
    };
  } finally {
    for (const [i, child] of children.entries()) {
      for await (const _ of lines[i]) {
        // Drain stdout so the process can exit.
      }
      await child.status;
    }
  }
}
