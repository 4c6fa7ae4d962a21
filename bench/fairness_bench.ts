/**
 * Fairness across processes, as part of `deno task bench`: 4 processes of 4
 * workers, each process with its own ioredis connection, all on one lock (or
 * one semaphore of 4 permits), with zero-work and 1 ms critical sections, on
 * a redis-server this suite starts and stops (`_fairness.ts`, the scenario
 * `deno task bench:fairness` and section 7 of `bench:compare` run).
 *
 * One iteration is one window of the scenario (1 s, plus starting the
 * processes), so its time says little: the table printed after the run has
 * what each lock did in its windows, critical sections per second and the
 * spread of acquisitions (least/most per process and per worker: 1.00 all
 * got the same, 0 one got none), beside redis-semaphore's `Mutex` and
 * `Semaphore`.
 *
 * @module
 */

import { startRedis } from "../tests/_redis.ts";
import { fairnessRun, spread } from "./_fairness.ts";
import { variant } from "./compare/_libraries.ts";

const WINDOW_MS = 1_000;
const WINDOWS = 2;
const IDS = ["deadbolt", "semaphore", "deadbolt-semaphore", "peer-semaphore"];
const SECTIONS = [0, 1];

const server = await startRedis();

interface Windows {
  sections: number;
  seconds: number;
  perProcess: number[];
  perWorker: number[];
}
const results = new Map<string, Windows>();
let runs = 0;

for (const section of SECTIONS) {
  for (const id of IDS) {
    const { library } = variant(id);
    // A group of its own: Deno's summary would rank the windows' times.
    const name = `${library}, ${section === 0 ? "zero-work" : "1 ms"} sections`;
    Deno.bench({
      name,
      group: `fairness across processes, 4 × 4: ${name}`,
      n: WINDOWS,
      warmup: 0,
      async fn() {
        const run = await fairnessRun(
          server.port,
          id,
          `fairness-bench:${id}:${section}:${runs++}`,
          section,
          { ms: WINDOW_MS },
        );
        const total = results.get(`${library}\0${section}`) ??
          { sections: 0, seconds: 0, perProcess: [], perWorker: [] };
        total.sections += run.perWorker.reduce((a, b) => a + b, 0);
        total.seconds += WINDOW_MS / 1000;
        total.perProcess.push(spread(run.perProcess));
        total.perWorker.push(spread(run.perWorker));
        results.set(`${library}\0${section}`, total);
      },
    });
  }
}

// The mean over windows, and the worst window.
const spreads = (values: number[]) =>
  `${(values.reduce((a, b) => a + b, 0) / values.length).toFixed(2)} (${
    Math.min(...values).toFixed(2)
  })`;

// Deno.bench has no teardown: print the windows' results, then kill the
// server.
globalThis.addEventListener("unload", () => {
  if (results.size > 0) {
    console.log(
      `\nfairness across processes: 4 processes × 4 workers on one lock, windows of ${WINDOW_MS} ms; least/most, mean (worst window)`,
    );
    console.log(
      "| lock | section | sections/s | per process | per worker |\n|---|---|---:|---:|---:|",
    );
    for (const [key, total] of results) {
      const [library, section] = key.split("\0");
      console.log(
        `| ${library} | ${section === "0" ? "zero-work" : "1 ms"} | ${
          Math.round(total.sections / total.seconds)
        } | ${spreads(total.perProcess)} | ${spreads(total.perWorker)} |`,
      );
    }
  }
  server.signal("SIGKILL");
  Deno.removeSync(server.dir, { recursive: true });
});
