/**
 * One side of the handoff workload, as its own process:
 * `deno run -A bench/compare/_handoff_worker.ts <port>` (or under Node, see
 * `../_runtime.ts`). It reads one JSON
 * command per line on stdin and answers with one JSON line on stdout:
 *
 * - `{ op: "hold", id, key }`: acquires `key` with variant `id`, then
 *   `{ event: "held" }`.
 * - `{ op: "wait", id, key }`: prints `{ event: "waiting" }`, waits for `key`,
 *   notes the time it got it, releases it and prints
 *   `{ event: "acquired", at, gaveUp }` (`gaveUp`: how often the variant's
 *   retry policy gave up and the wait had to start over).
 * - `{ op: "release", after }`: sleeps `after` ms, notes the time and releases
 *   the lock it holds, then prints `{ event: "released", at }`.
 * - `{ op: "exit" }`: closes its client and exits.
 *
 * Times are `performance.timeOrigin + performance.now()`, so both sides share
 * one clock.
 *
 * @module
 */

import {
  clock,
  closeOpened,
  type Contender,
  type Held,
  readLines,
  Redis,
  sleep,
  variant,
} from "./_libraries.ts";
import { args, stdin } from "../_runtime.ts";

type Command =
  | { op: "hold" | "wait"; id: string; key: string }
  | { op: "release"; after: number }
  | { op: "exit" };

const redis = new Redis(Number(args[0]), "127.0.0.1");
await new Promise((resolve) => redis.once("ready", resolve));

const factories = new Map<string, (key: string) => Contender>();
const contenders = new Map<string, Contender>();
let held: Held | undefined;

function contender(id: string, key: string): Contender {
  let found = contenders.get(`${id}\0${key}`);
  if (!found) {
    let open = factories.get(id);
    if (!open) factories.set(id, open = variant(id).open(redis));
    found = open(key);
    contenders.set(`${id}\0${key}`, found);
  }
  return found;
}

function say(message: Record<string, unknown>): void {
  console.log(JSON.stringify(message));
}

say({ event: "ready" });
for await (const line of readLines(stdin())) {
  const command = JSON.parse(line) as Command;
  if (command.op === "hold") {
    held = await contender(command.id, command.key).acquire();
    say({ event: "held" });
  } else if (command.op === "wait") {
    const lock = contender(command.id, command.key);
    say({ event: "waiting" });
    let gaveUp = 0;
    for (;;) {
      try {
        held = await lock.acquire();
        break;
      } catch (error) {
        if (!variant(command.id).gaveUp(error)) throw error;
        gaveUp++;
      }
    }
    const at = clock();
    await held.release();
    held = undefined;
    say({ event: "acquired", at, gaveUp });
  } else if (command.op === "release") {
    await sleep(command.after);
    const at = clock();
    await held!.release();
    held = undefined;
    say({ event: "released", at });
  } else {
    break;
  }
}
await closeOpened();
await redis.quit();
