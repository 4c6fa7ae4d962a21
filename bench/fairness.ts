/**
 * Fairness across processes: P processes (default 4) of W workers each
 * (default 4), every process with its own connection, all contending for
 * one lock, with zero-work and 1 ms critical sections, on a redis-server
 * this script starts and stops. Rounds rotate the order of the locks.
 *
 * Usage: `deno task bench:fairness [--rounds N] [--seconds S]
 * [--processes P] [--workers W] [--variants id,id,…] [--sections 0,1]`
 *
 * For each lock and section it prints critical sections per second, the
 * spread of acquisitions (least/most per process and per worker: 1.00 all
 * got the same, 0 one got none), the p99 wait, and script calls per
 * acquisition. Variant ids are those of `compare/_libraries.ts`; the
 * default is deadbolt and redis-semaphore's Mutex.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startRedis } from "../tests/_redis.ts";
import { variant } from "./compare/_libraries.ts";
import { fairnessRun, spread } from "./_fairness.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "2" },
    processes: { type: "string", default: "4" },
    workers: { type: "string", default: "4" },
    variants: { type: "string", default: "deadbolt,semaphore" },
    sections: { type: "string", default: "0,1" },
  },
});
const ROUNDS = Number(flags.rounds);
const MS = Number(flags.seconds) * 1000;
const PROCESSES = Number(flags.processes);
const WORKERS = Number(flags.workers);
const IDS = flags.variants.split(",");
const SECTIONS = flags.sections.split(",").map(Number);
for (const id of IDS) variant(id);

function percentile(values: number[], p: number): number {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

await using server = await startRedis();
await using side = await server.connect();

/** Script calls (EVAL, EVALSHA) the server has run so far. */
async function scriptCalls(): Promise<number> {
  const info = String(await side.send("INFO", "commandstats"));
  let total = 0;
  for (const m of info.matchAll(/^cmdstat_(evalsha|eval):calls=(\d+)/gm)) {
    total += Number(m[2]);
  }
  return total;
}

const totals = new Map<string, {
  sections: number;
  calls: number;
  perProcess: number[];
  perWorker: number[];
  waits: number[];
}>();
const started = performance.now();
for (let round = 0; round < ROUNDS; round++) {
  for (const section of SECTIONS) {
    const ids = IDS.slice(round % IDS.length).concat(
      IDS.slice(0, round % IDS.length),
    );
    for (const id of ids) {
      const before = await scriptCalls();
      const r = await fairnessRun(
        server.port,
        id,
        `fair:${id}:${section}:${round}`,
        section,
        { processes: PROCESSES, workers: WORKERS, ms: MS },
      );
      const calls = await scriptCalls() - before;
      const sections = r.perWorker.reduce((a, b) => a + b, 0);
      const key = `${id}\0${section}`;
      const total = totals.get(key) ??
        { sections: 0, calls: 0, perProcess: [], perWorker: [], waits: [] };
      total.sections += sections;
      total.calls += calls;
      total.perProcess.push(spread(r.perProcess));
      total.perWorker.push(spread(r.perWorker));
      for (const wait of r.waits) total.waits.push(wait);
      totals.set(key, total);
      console.error(
        `round ${round + 1}, ${section} ms, ${id}: per process ${
          r.perProcess.join("/")
        }, per worker ${Math.min(...r.perWorker)}–${
          Math.max(...r.perWorker)
        }, ${(calls / sections).toFixed(2)} scripts per acquisition`,
      );
    }
  }
}

const mean = (values: number[]) =>
  values.reduce((a, b) => a + b, 0) / values.length;
console.log(
  `${PROCESSES} processes × ${WORKERS} workers on one lock, ${ROUNDS} round(s) of ${
    MS / 1000
  } s; spreads are least/most, averaged over rounds (worst round in brackets).\n`,
);
console.log(
  "| lock | section | sections/s | per process | per worker | wait p99 | scripts per acquisition |",
);
console.log("|---|---|---|---|---|---|---|");
for (const section of SECTIONS) {
  for (const id of IDS) {
    const t = totals.get(`${id}\0${section}`)!;
    console.log(
      `| ${variant(id).library} | ${section} ms | ${
        Math.round(t.sections / (ROUNDS * MS / 1000))
      } | ${mean(t.perProcess).toFixed(2)} (${
        Math.min(...t.perProcess).toFixed(2)
      }) | ${mean(t.perWorker).toFixed(2)} (${
        Math.min(...t.perWorker).toFixed(2)
      }) | ${percentile(t.waits, 99).toFixed(1)} ms | ${
        (t.calls / t.sections).toFixed(2)
      } |`,
    );
  }
}
console.log(
  `\nRun on ${
    new Date().toISOString().slice(0, 10)
  }, Deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} cores, in ${
    Math.round((performance.now() - started) / 1000)
  } s.`,
);
