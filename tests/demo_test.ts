import assert from "node:assert/strict";
import { freePort, startRedis } from "./_redis.ts";
import { type DemoEvent, judge } from "../examples/_demo_verdict.ts";

const ROOT = new URL("../", import.meta.url);
const DEMO = new URL("../examples/demo.ts", import.meta.url);

interface DemoRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno <args>` from the repository root with NO_COLOR and `env`. */
async function deno(
  args: string[],
  env: Record<string, string> = {},
): Promise<DemoRun> {
  const output = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", REDIS_URL: "", ...env },
    stdin: "null",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return {
    code: output.code,
    stdout: decode(output.stdout),
    stderr: decode(output.stderr),
  };
}

/** Whether a process `pid` whose command line mentions `name` is alive. */
async function alive(pid: number, name: string): Promise<boolean> {
  try {
    const cmdline = await Deno.readTextFile(`/proc/${pid}/cmdline`);
    const state = (await Deno.readTextFile(`/proc/${pid}/stat`))
      .replace(/^.*\) /s, "")[0];
    return cmdline.includes(name) && state !== "Z";
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

function pidsOf(stdout: string): { server?: number; workers: number[] } {
  const server = /redis-server \S+ pid (\d+)/.exec(stdout)?.[1];
  const workers = [...stdout.matchAll(/\bw\d pid (\d+)/g)].map((m) =>
    Number(m[1])
  );
  return { server: server ? Number(server) : undefined, workers };
}

async function assertGone(pids: { server?: number; workers: number[] }) {
  if (pids.server) {
    assert.equal(
      await alive(pids.server, "redis-server"),
      false,
      `redis-server ${pids.server} still runs`,
    );
  }
  for (const pid of pids.workers) {
    assert.equal(
      await alive(pid, "_demo_worker"),
      false,
      `worker ${pid} still runs`,
    );
  }
}

function assertCleanVerdict(stdout: string): void {
  const row = (label: string) =>
    new RegExp(`^  ${label}\\s+(\\S+)`, "m").exec(stdout)?.[1];
  assert.equal(row("overlaps of held intervals"), "0", stdout);
  assert.equal(row("fences strictly increasing"), "yes", stdout);
  assert.ok(Number(row("critical sections completed")) > 0, stdout);
  assert.ok(Number(row("stale writes rejected by fence")) >= 1, stdout);
  assert.ok(Number(row("losses signalled")) >= 1, stdout);
  assert.match(stdout, /^clean: /m);
  assert.doesNotMatch(stdout, /^problem: /m);
}

Deno.test("deno task demo runs four processes through a pause and a kill, and its verdict is clean", async () => {
  const run = await deno(["task", "demo"]);
  assert.equal(run.code, 0, `${run.stdout}\n${run.stderr}`);
  assertCleanVerdict(run.stdout);
  assert.match(run.stdout, /SIGSTOP w2 while it holds fence \d+/);
  assert.match(run.stdout, /w2 +lock\.signal aborted: Lost lock/);
  assert.match(run.stdout, /w2 +its write with fence \d+ is REFUSED/);
  assert.match(run.stdout, /SIGKILL w4 while it holds fence \d+/);
  assert.ok(!run.stdout.includes("\x1b["), "NO_COLOR is honoured");
  const pids = pidsOf(run.stdout);
  assert.ok(pids.server, run.stdout);
  assert.equal(pids.workers.length, 4, run.stdout);
  assert.match(
    run.stdout,
    new RegExp(`stopped redis-server pid ${pids.server}`),
  );
  await assertGone(pids);
});

Deno.test("deno task demo with REDIS_URL touches no key outside its prefix and deletes its own", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  await side.send("SET", "other:key", "keep");
  await side.send("SET", "deadbolt:{job}", "keep");
  const run = await deno(["task", "demo"], { REDIS_URL: server.url });
  assert.equal(run.code, 0, `${run.stdout}\n${run.stderr}`);
  assertCleanVerdict(run.stdout);
  assert.doesNotMatch(run.stdout, /redis-server/);
  assert.deepEqual(
    (await side.send("KEYS", "*") as string[]).sort(),
    ["deadbolt:{job}", "other:key"],
  );
  assert.equal(await side.send("GET", "other:key"), "keep");
  assert.equal(await side.send("GET", "deadbolt:{job}"), "keep");
  await assertGone(pidsOf(run.stdout));
});

Deno.test("the demo without redis-server on PATH prints one line and exits 1", async () => {
  const empty = await Deno.makeTempDir({ prefix: "deadbolt-no-redis-" });
  try {
    const run = await deno(["run", "-A", DEMO.href], { PATH: empty });
    assert.equal(run.code, 1);
    assert.match(
      run.stderr,
      /^deadbolt demo: redis-server is not installed: install it with `(sudo )?apt-get install -y redis-server redis-tools` \(Debian, Ubuntu\) or your system's package manager, or set REDIS_URL\n$/,
    );
    assert.equal(run.stdout, "");
  } finally {
    await Deno.remove(empty);
  }
});

Deno.test("the demo with an unreachable REDIS_URL prints one line and exits 1", async () => {
  const url = `redis://127.0.0.1:${freePort()}`;
  const run = await deno(["run", "-A", DEMO.href], { REDIS_URL: url });
  assert.equal(run.code, 1);
  assert.match(
    run.stderr,
    new RegExp(
      `^deadbolt demo: cannot reach Redis at ${url}: .*ECONNREFUSED.*\\n$`,
    ),
  );
});

Deno.test("the demo interrupted by SIGINT stops its workers and its redis-server", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", DEMO.href],
    cwd: ROOT,
    env: { NO_COLOR: "1", REDIS_URL: "" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let stdout = "";
  let interrupted = false;
  for await (
    const chunk of child.stdout.pipeThrough(new TextDecoderStream())
  ) {
    stdout += chunk;
    // Interrupt once the workers take turns: everything has been started.
    if (!interrupted && /holds the lock, fence 2\b/.test(stdout)) {
      interrupted = true;
      child.kill("SIGINT");
    }
  }
  const { code } = await child.status;
  assert.ok(interrupted, `${stdout}\n${await stderr}`);
  assert.equal(code, 130, `${stdout}\n${await stderr}`);
  assert.match(stdout, /interrupted by SIGINT/);
  assert.doesNotMatch(stdout, /^verdict/m);
  const pids = pidsOf(stdout);
  assert.ok(pids.server && pids.workers.length === 4, stdout);
  assert.match(stdout, new RegExp(`stopped redis-server pid ${pids.server}`));
  await assertGone(pids);
});

// ---- the verdict itself: a broken lock must not pass ----

const at = (
  t: number,
  worker: string,
  event: string,
  extra: Partial<DemoEvent> = {},
): DemoEvent => ({ at: t, worker, event, ...extra });

/** A clean history: a section, a frozen w2 fenced off, a killed w4, a section after. */
function history(): DemoEvent[] {
  return [
    at(0, "w1", "acquired", { fence: 1 }),
    at(5, "w1", "write", { fence: 1, accepted: true, current: 0 }),
    at(10, "w1", "released", { fence: 1, end: 10, released: true }),
    at(11, "w2", "acquired", { fence: 2, contended: true, stall: true }),
    at(12, "demo", "sigstop", { target: "w2", fence: 2 }),
    at(20, "w3", "acquired", { fence: 3, contended: true }),
    at(25, "w3", "write", { fence: 3, accepted: true, current: 1 }),
    at(30, "w3", "released", { fence: 3, end: 30, released: true }),
    at(31, "demo", "sigcont", { target: "w2", fence: 2 }),
    at(32, "w2", "lost", { fence: 2 }),
    at(33, "w2", "write", { fence: 2, accepted: false, current: 3 }),
    at(34, "w2", "released", { fence: 2, end: 19, released: false }),
    at(40, "w4", "acquired", { fence: 4, stall: true }),
    at(41, "demo", "sigkill", { target: "w4", fence: 4 }),
    at(42, "w4", "exit", { signal: "SIGKILL" }),
    at(60, "w1", "acquired", { fence: 5, contended: true }),
    at(61, "w1", "write", { fence: 5, accepted: true, current: 3 }),
    at(62, "w1", "released", { fence: 5, end: 62, released: true }),
  ];
}

function change(
  events: DemoEvent[],
  match: (e: DemoEvent) => boolean,
  edit: Partial<DemoEvent> | null,
): DemoEvent[] {
  return events.flatMap((e) =>
    !match(e) ? [e] : edit ? [{ ...e, ...edit }] : []
  );
}

Deno.test("the demo's verdict is clean only for a history without a fault of the lock", async (t) => {
  const register = { fence: 5, writes: 3 };
  await t.step("a clean history", () => {
    const verdict = judge(history(), register);
    assert.deepEqual(verdict.problems, []);
    assert.equal(verdict.sections.length, 3);
    assert.equal(verdict.rejected.length, 1);
    assert.equal(verdict.losses.length, 1);
    assert.equal(verdict.killed?.freedAfter, 19);
  });
  await t.step(
    "a frozen holder still entitled after the next grant is an overlap",
    () => {
      const events = change(
        history(),
        (e) => e.worker === "w2" && e.event === "released",
        { end: 21 },
      );
      const verdict = judge(events, register);
      assert.equal(verdict.overlaps.length, 1);
      assert.deepEqual(verdict.overlaps[0].map((h) => h.fence), [2, 3]);
      assert.match(
        verdict.problems.join("\n"),
        /w2's fence 2 and w3's fence 3/,
      );
    },
  );
  await t.step(
    "a killed holder granted again before the kill is an overlap",
    () => {
      const events = change(
        history(),
        (e) => e.worker === "w1" && e.fence === 5 && e.event === "acquired",
        { at: 40.5 },
      );
      assert.equal(judge(events, register).overlaps.length, 1);
    },
  );
  await t.step("a fence reused is not strictly increasing", () => {
    const events = change(history(), (e) => e.fence === 5, { fence: 4 });
    const verdict = judge(events);
    assert.equal(verdict.fencesIncreasing, false);
    assert.ok(verdict.problems.length > 0);
  });
  await t.step("a frozen holder whose signal never aborts", () => {
    const events = change(history(), (e) => e.event === "lost", null);
    assert.match(
      judge(events, register).problems.join("\n"),
      /w2's lock.signal did not abort/,
    );
  });
  await t.step("a stale write the register accepted", () => {
    const events = change(
      history(),
      (e) => e.worker === "w2" && e.event === "write",
      { accepted: true },
    );
    assert.match(
      judge(events).problems.join("\n"),
      /w2's write after the pause was not refused/,
    );
  });
  await t.step("a write refused although its holder heard of no loss", () => {
    const events = change(
      history(),
      (e) => e.worker === "w3" && e.event === "write",
      { accepted: false },
    );
    assert.match(
      judge(events).problems.join("\n"),
      /w3's fence 3 was refused by the register, yet its lock.signal never aborted/,
    );
  });
  await t.step("no section after the kill", () => {
    const events = history().filter((e) => e.at < 60);
    assert.match(
      judge(events).problems.join("\n"),
      /no critical section completed after the kill/,
    );
  });
  await t.step("a worker that crashed", () => {
    const events = [...history(), at(70, "w3", "exit", { code: 1 })];
    assert.match(
      judge(events, register).problems.join("\n"),
      /w3 exited with code 1/,
    );
  });
  await t.step("a register that disagrees with the workers", () => {
    assert.match(
      judge(history(), { fence: 5, writes: 4 }).problems.join("\n"),
      /the register holds fence 5 after 4 writes/,
    );
  });
});
