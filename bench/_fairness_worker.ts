/**
 * One process of the cross-process fairness scenario:
 * `deno run -A bench/_fairness_worker.ts <port> <variant> <key> <workers>
 * <section ms> <ms>`. It connects one ioredis client (a service's one
 * connection), prints `{ event: "ready" }`, reads a wall-clock start time
 * from stdin, then runs `workers` loops that acquire `key` with the variant,
 * hold it `section` ms and release it, from `start` for `ms`, and prints
 * `{ event: "done", counts, waits, gaveUp }` (acquisitions per loop, every
 * wait in ms, how often the variant's retry policy gave up).
 *
 * @module
 */

import {
  clock,
  readLines,
  Redis,
  sleep,
  variant,
} from "./compare/_libraries.ts";
import { args, stdin } from "./_runtime.ts";

const [port, id, key, workers, section, ms] = args;
const redis = new Redis(Number(port), "127.0.0.1");
await new Promise((resolve) => redis.once("ready", resolve));
const v = variant(id);
const open = v.open(redis);
const counts = new Array<number>(Number(workers)).fill(0);
const waits: number[] = [];
let gaveUp = 0;

console.log(JSON.stringify({ event: "ready" }));
const { value: start } = await readLines(stdin()).next();
const end = Number(start) + Number(ms);
await sleep(Math.max(0, Number(start) - clock()));
await Promise.all(counts.map(async (_, worker) => {
  const lock = open(key);
  while (clock() < end) {
    const wanted = clock();
    let held;
    while (!held && clock() < end) {
      try {
        held = await lock.acquire();
      } catch (error) {
        if (!v.gaveUp(error)) throw error;
        gaveUp++;
      }
    }
    const got = clock();
    if (!held || got > end) {
      waits.push(end - wanted);
      await held?.release();
      return;
    }
    waits.push(got - wanted);
    counts[worker]++;
    if (Number(section) > 0) await sleep(Number(section));
    await held.release();
  }
}));
console.log(JSON.stringify({ event: "done", counts, waits, gaveUp }));
await redis.quit();
