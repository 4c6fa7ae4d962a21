import assert from "node:assert/strict";
import denoJson from "../deno.json" with { type: "json" };
import { lockKeys } from "../src/keys.ts";
import { parseArgs, parseDuration, UsageError } from "../cli/args.ts";
import { formatDuration, waitingLine } from "../cli/reporter.ts";
import { cli, CliProcess, isDead, tempDir } from "./_cli.ts";
import { freePort, startRedis } from "./_redis.ts";
import { sleep, until } from "./_util.ts";

const key = (name: string) => lockKeys("deadbolt:", name).lock;
const noStackTrace = (text: string) =>
  assert.doesNotMatch(text, /^\s+at /m, `a stack trace in ${text}`);
const read = (path: string) => Deno.readTextFile(path).catch(() => "");
const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

/** `sh -c <script> sh ...args`: args are $1… of the script. */
const sh = (script: string, ...args: string[]) => [
  "sh",
  "-c",
  script,
  "sh",
  ...args,
];

// A command that reports SIGTERM in `$1`, says "started" once its trap is
// set, and runs until a signal ends it.
const TRAPS_TERM =
  `trap 'echo TERM >> "$1"; exit 7' TERM; echo started; while :; do sleep 0.05; done`;

Deno.test("parseDuration reads ms, s, m, h and bare milliseconds", () => {
  const cases: [string, number][] = [
    ["500ms", 500],
    ["30s", 30_000],
    ["1.5s", 1_500],
    ["2m", 120_000],
    ["1h", 3_600_000],
    ["250", 250],
    ["0", 0],
  ];
  for (const [text, ms] of cases) {
    assert.equal(parseDuration("--ttl", text), ms);
  }
  for (const text of ["", "5x", "-1", "1e3", "s", "1 s", "30sec", "NaN"]) {
    assert.throws(() => parseDuration("--ttl", text), UsageError, text);
  }
});

Deno.test("parseArgs applies the documented defaults", () => {
  const run = parseArgs(["run", "job", "--", "true"], {});
  assert.equal(run.kind, "run");
  assert.ok(run.kind === "run");
  assert.equal(run.redis, "redis://127.0.0.1:6379");
  assert.equal(run.ttl, 30_000);
  assert.equal(run.timeout, Infinity);
  assert.equal(run.killAfter, 5_000);
  assert.equal(run.prefix, "deadbolt:");
  assert.deepEqual(run.command, ["true"]);
  const fromEnv = parseArgs(["status", "job"], {
    REDIS_URL: "rediss://cache:6380",
  });
  assert.ok(fromEnv.kind === "status");
  assert.equal(fromEnv.redis, "rediss://cache:6380");
  const noWait = parseArgs(["run", "-n", "job", "--", "x", "--ttl"], {});
  assert.ok(noWait.kind === "run");
  assert.equal(noWait.timeout, 0);
  assert.deepEqual(
    noWait.command,
    ["x", "--ttl"],
    "args after -- are the command's",
  );
});

Deno.test("the waiting line says who waits, how long, and the holder's lease", () => {
  assert.equal(
    waitingLine({ name: "job", pid: 42, waited: 3_250, holderTtl: 12_345 }),
    "waiting for lock 'job' (pid 42) for 3.2 s; held by another owner whose lease ends in 12.3 s",
  );
  assert.match(
    waitingLine({ name: "job", pid: 42, waited: 10, holderTtl: -2 }),
    /just released$/,
  );
  assert.equal(formatDuration(125_000), "2 min 5 s");
});

Deno.test("deadbolt --help and --version exit 0", async () => {
  const [help, runHelp, version] = await Promise.all([
    cli(["--help"]),
    cli(["run", "--help"]),
    cli(["--version"]),
  ]);
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /deadbolt run <name> \[options\] -- <command>/);
  assert.match(help.stdout, /75 +lock busy/);
  assert.equal(runHelp.code, 0, runHelp.stderr);
  assert.match(runHelp.stdout, /--kill-after/);
  assert.equal(version.code, 0);
  assert.equal(version.stdout, `deadbolt ${denoJson.version}\n`);
});

Deno.test("deadbolt exits 64 on a usage error, before any Redis I/O", async () => {
  // Nothing listens there: a CLI that connected would exit 69, not 64.
  const redis = `redis://127.0.0.1:${freePort()}`;
  const cases: [string[], RegExp][] = [
    [["run", "job", "--ttl", "5x", "--", "true"], /--ttl must be a duration/],
    [["run", "job", "--timeout", "-1", "--", "true"], /--timeout must be/],
    [
      ["run", "job", "--timeout", "3000000000h", "--", "true"],
      /--timeout must be from 0 ms to 2147483647 ms/,
    ],
    [["run", "job", "--kill-after=soon", "--", "true"], /--kill-after/],
    [["run", "job", "--ttl", "5ms", "--", "true"], /--ttl must be from 10/],
    [["run", "job", "true"], /missing '--' before the command/],
    [["run", "job", "--"], /missing the command after '--'/],
    [["run", "--", "true"], /missing the lock's name/],
    [["run", "job", "--bogus", "--", "true"], /unknown option "--bogus"/],
    [["run", "job", "-n", "--timeout", "1s", "--", "true"], /exclude/],
    [["status", "job", "--ttl", "1s"], /--ttl is not an option of 'status'/],
    [["release", "job"], /--token/],
    [["frobnicate", "job"], /unknown command "frobnicate"/],
    [[], /missing a command/],
  ];
  const results = await Promise.all(
    cases.map(([args]) => cli(["--redis", redis, ...args])),
  );
  // --redis after `--` would belong to the command: check the URL check too.
  results.push(await cli(["run", "job", "--redis", "http://x", "--", "true"]));
  cases.push([[], /--redis must be a redis:\/\/ or rediss:\/\/ URL/]);
  results.forEach((result, i) => {
    const [args, message] = cases[i];
    const what = JSON.stringify(args);
    assert.equal(result.code, 64, `${what}: ${result.stderr}`);
    assert.match(result.stderr, /^deadbolt: /, what);
    assert.match(result.stderr, message, what);
    noStackTrace(result.stderr);
  });
});

Deno.test("deadbolt exits 69 at once with one clear line when Redis is unreachable", async () => {
  await using dir = await tempDir();
  const marker = `${dir.path}/ran`;
  const url = `redis://127.0.0.1:${freePort()}`;
  const results = await Promise.all([
    cli(["run", "job", "--redis", url, "--", ...sh('touch "$1"', marker)]),
    // REDIS_URL is the default for --redis.
    cli(["run", "job", "--", ...sh('touch "$1"', marker)], {
      env: { REDIS_URL: url },
    }),
    cli(["status", "job", "--redis", url]),
    cli(["release", "job", "--token", "t", "--redis", url]),
  ]);
  for (const result of results) {
    assert.equal(result.code, 69, result.stderr);
    assert.match(
      result.stderr,
      new RegExp(
        `^deadbolt: cannot connect to Redis at ${url}: connect ECONNREFUSED 127\\.0\\.0\\.1:\\d+\\n$`,
      ),
    );
    noStackTrace(result.stderr);
    assert.ok(result.ms < 10_000, `took ${result.ms} ms`);
  }
  assert.equal(await exists(marker), false, "the command must not run");
});

Deno.test("deadbolt run: two runs on one name never overlap", async () => {
  await using server = await startRedis();
  await using dir = await tempDir();
  const log = `${dir.path}/log`;
  // Each command outlives the first lease: renewal must keep it exclusive.
  const section = `echo "start $1" >> "$2"; sleep 0.8; echo "end $1" >> "$2"`;
  const ids = ["a", "b", "c"];
  const results = await Promise.all(ids.map((id) =>
    cli([
      "run",
      "shared",
      "--redis",
      server.url,
      "--ttl",
      "600ms",
      "--",
      ...sh(section, id, log),
    ])
  ));
  for (const result of results) assert.equal(result.code, 0, result.stderr);
  const lines = (await read(log)).trim().split("\n");
  assert.equal(lines.length, 2 * ids.length, lines.join("\n"));
  const seen = new Set<string>();
  for (let i = 0; i < lines.length; i += 2) {
    const [start, end] = [lines[i], lines[i + 1]];
    const id = start.replace(/^start /, "");
    assert.equal(start, `start ${id}`, `interleaved: ${lines}`);
    assert.equal(end, `end ${id}`, `interleaved: ${lines}`);
    seen.add(id);
  }
  assert.deepEqual([...seen].sort(), ids);
  await using side = await server.connect();
  assert.equal(await side.send("EXISTS", key("shared")), 0, "released");
});

Deno.test("deadbolt run --no-wait and --timeout exit 75 while the lock is held", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  await using dir = await tempDir();
  const marker = `${dir.path}/ran`;
  await side.send("SET", key("busy"), "other", "PX", "20000");
  const run = (...options: string[]) =>
    cli([
      "run",
      "busy",
      "--redis",
      server.url,
      ...options,
      "--",
      ...sh('touch "$1"', marker),
    ]);

  await t.step("--no-wait gives up after one attempt", async () => {
    const result = await run("--no-wait");
    assert.equal(result.code, 75, result.stderr);
    assert.match(
      result.stderr,
      /^deadbolt: lock 'busy' is busy: held by another owner whose lease ends in \d+\.\d s\n$/,
    );
  });
  await t.step(
    "--timeout waits that long, silently when not a terminal",
    async () => {
      const result = await run("--timeout", "400ms");
      assert.equal(result.code, 75, result.stderr);
      assert.ok(result.ms >= 400, `exited after ${result.ms} ms`);
      assert.match(
        result.stderr,
        /^deadbolt: gave up on lock 'busy' after waiting [\d.]+ m?s: held by another owner/,
      );
      assert.equal(result.stderr.split("\n").length, 2, "one line");
    },
  );
  await t.step("--verbose reports the wait; --quiet says nothing", async () => {
    const [verbose, quiet] = await Promise.all([
      run("--timeout", "200ms", "--verbose"),
      run("--no-wait", "-q"),
    ]);
    assert.equal(verbose.code, 75);
    assert.match(
      verbose.stderr,
      /^deadbolt: waiting for lock 'busy' \(pid \d+\)/m,
    );
    assert.equal(quiet.code, 75);
    assert.equal(quiet.stderr, "");
  });
  assert.equal(await exists(marker), false, "the command must not run");
  assert.equal(await side.send("GET", key("busy")), "other", "left alone");
});

Deno.test("deadbolt run starts the command once the holder releases, woken at once", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  await side.send("SET", key("handoff"), "holder-token", "PX", "20000");
  await using waiter = CliProcess.start([
    "run",
    "handoff",
    "--redis",
    server.url,
    "--verbose",
    "--",
    ...sh("echo running"),
  ]);
  await waiter.stderrLine(/waiting for lock 'handoff'/);
  const released = await cli([
    "release",
    "handoff",
    "--token",
    "holder-token",
    "--redis",
    server.url,
  ]);
  assert.equal(released.code, 0, released.stderr);
  assert.equal(await waiter.line(), "running");
  const result = await waiter.exit();
  assert.equal(result.code, 0, result.stderr);
  // The lease still had ~19 s: only the release can have let it in.
  assert.match(result.stderr, /acquired lock 'handoff' after /);
});

Deno.test("deadbolt run stops the command's process group and exits 79 when the lock is lost", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  await using dir = await tempDir();

  await t.step(
    "another owner takes the key: SIGTERM reaches the command and its children",
    async () => {
      const marks = `${dir.path}/overwritten`;
      const pidFile = `${dir.path}/grandchild`;
      await using run = CliProcess.start([
        "run",
        "lost",
        "--redis",
        server.url,
        "--ttl",
        "600ms",
        "--",
        ...sh(
          `sleep 30 & echo $! > "$2"; ${TRAPS_TERM}`,
          marks,
          pidFile,
        ),
      ]);
      assert.equal(await run.line(), "started");
      await side.send("SET", key("lost"), "thief", "PX", "20000");
      const result = await run.exit();
      assert.equal(result.code, 79, result.stderr);
      assert.equal(await read(marks), "TERM\n");
      assert.match(
        result.stderr,
        /^deadbolt: Lost lock 'lost': another owner holds its key; stopping the command: SIGTERM to its process group/,
      );
      noStackTrace(result.stderr);
      const grandchild = Number(await read(pidFile));
      assert.ok(grandchild > 0);
      assert.ok(
        await isDead(grandchild),
        "the backgrounded sleep must die too",
      );
      assert.equal(await side.send("GET", key("lost")), "thief", "left alone");
    },
  );

  await t.step(
    "the key is deleted and the command ignores SIGTERM: SIGKILL after --kill-after",
    async () => {
      await side.send("DEL", key("lost"));
      await using run = CliProcess.start([
        "run",
        "lost",
        "--redis",
        server.url,
        "--ttl",
        "600ms",
        "--kill-after",
        "500ms",
        "--",
        ...sh(`trap '' TERM; echo started; while :; do sleep 0.05; done`),
      ]);
      assert.equal(await run.line(), "started");
      await side.send("DEL", key("lost"));
      const deleted = performance.now();
      await run.stderrLine(
        /its key expired or was deleted; stopping the command/,
      );
      const result = await run.exit();
      assert.equal(result.code, 79, result.stderr);
      assert.ok(
        performance.now() - deleted >= 500,
        "SIGKILL comes only after the grace",
      );
      assert.match(result.stderr, /outlived --kill-after: sent SIGKILL/);
    },
  );

  await t.step("an operator releases it with the holder's token", async () => {
    await using run = CliProcess.start([
      "run",
      "lost",
      "--redis",
      server.url,
      "--ttl",
      "600ms",
      "--",
      ...sh(`echo "$DEADBOLT_TOKEN"; ${TRAPS_TERM}`, `${dir.path}/released`),
    ]);
    const token = await run.line();
    assert.equal(await run.line(), "started");
    const released = await cli([
      "release",
      "lost",
      "--token",
      token,
      "--redis",
      server.url,
    ]);
    assert.equal(released.code, 0, released.stderr);
    const result = await run.exit();
    assert.equal(result.code, 79, result.stderr);
    assert.equal(await read(`${dir.path}/released`), "TERM\n");
  });

  await t.step(
    "another owner takes the key and the command ends before a renewal: the release finds the loss",
    async () => {
      await side.send("DEL", key("lost"));
      // A renewal every 10 s: the command is done long before.
      await using run = CliProcess.start([
        "run",
        "lost",
        "--redis",
        server.url,
        "--",
        ...sh(`echo started; read line; echo done`),
      ], { stdin: true });
      assert.equal(await run.line(), "started");
      await side.send("SET", key("lost"), "thief", "PX", "20000");
      await run.write("go\n");
      await run.closeStdin();
      // Before: exit 0 and nothing said (a -v line at most).
      const result = await run.exit();
      assert.equal(result.code, 79, result.stderr);
      assert.match(
        result.stderr,
        /^deadbolt: Lost lock 'lost' while the command ran: its key was gone or another owner's at its release; the command exited with status 0/,
      );
      assert.equal(await side.send("GET", key("lost")), "thief", "left alone");
    },
  );
});

Deno.test("deadbolt run passes SIGTERM, SIGINT and SIGHUP on to the command", async (t) => {
  await using server = await startRedis();
  await using side = await server.connect();
  await using dir = await tempDir();

  await t.step(
    "a command that handles the signal: its own exit status",
    async () => {
      const marks = `${dir.path}/term`;
      await using run = CliProcess.start([
        "run",
        "signalled",
        "--redis",
        server.url,
        "--",
        ...sh(TRAPS_TERM, marks),
      ]);
      assert.equal(await run.line(), "started");
      run.kill("SIGTERM");
      const result = await run.exit();
      assert.equal(result.code, 7, result.stderr);
      assert.equal(await read(marks), "TERM\n");
      assert.equal(await side.send("EXISTS", key("signalled")), 0, "released");
    },
  );

  await t.step("a command the signal ends: 128 + its number", async () => {
    const signals: [Deno.Signal, number][] = [
      ["SIGTERM", 143],
      ["SIGINT", 130],
      ["SIGHUP", 129],
    ];
    await Promise.all(signals.map(async ([signal, code]) => {
      await using run = CliProcess.start([
        "run",
        `signalled-${signal}`,
        "--redis",
        server.url,
        "--",
        ...sh("echo started; exec sleep 30"),
      ]);
      assert.equal(await run.line(), "started");
      run.kill(signal);
      const result = await run.exit();
      assert.equal(result.code, code, `${signal}: ${result.stderr}`);
      assert.equal(
        await side.send("EXISTS", key(`signalled-${signal}`)),
        0,
        "released",
      );
    }));
  });

  await t.step("a signal while waiting: the command never runs", async () => {
    await side.send("SET", key("signalled"), "other", "PX", "20000");
    const marker = `${dir.path}/ran`;
    await using run = CliProcess.start([
      "run",
      "signalled",
      "--redis",
      server.url,
      "--verbose",
      "--",
      ...sh('touch "$1"', marker),
    ]);
    await run.stderrLine(/waiting for lock 'signalled'/);
    run.kill("SIGTERM");
    const result = await run.exit();
    assert.equal(result.code, 143, result.stderr);
    assert.match(
      result.stderr,
      /interrupted by SIGTERM before the command started/,
    );
    assert.equal(await exists(marker), false);
    assert.equal(await side.send("GET", key("signalled")), "other");
  });
});

Deno.test("deadbolt run gives the command DEADBOLT_LOCK, DEADBOLT_TOKEN and DEADBOLT_FENCE", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const show =
    `echo "$DEADBOLT_LOCK|$DEADBOLT_TOKEN|\${DEADBOLT_FENCE-unset}"; read line; echo "got $line"`;
  const fences: string[] = [];
  for (const fencing of [true, true, false]) {
    await using run = CliProcess.start([
      "run",
      "env",
      "--redis",
      server.url,
      ...(fencing ? ["--fencing"] : []),
      "--",
      ...sh(show),
    ], { stdin: true, env: { DEADBOLT_FENCE: "999" } });
    const [name, token, fence] = (await run.line()).split("|");
    assert.equal(name, "env");
    assert.equal(
      await side.send("GET", key("env")),
      token,
      "DEADBOLT_TOKEN is the holder's token",
    );
    if (fencing) fences.push(fence);
    else assert.equal(fence, "unset", "no stale DEADBOLT_FENCE passes through");
    // stdin reaches the command.
    await run.write("hello\n");
    await run.closeStdin();
    assert.equal(await run.line(), "got hello");
    assert.equal((await run.exit()).code, 0);
  }
  assert.deepEqual(fences, ["1", "2"], "fences increase");
});

Deno.test("deadbolt run exits with the command's status and releases the lock", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const run = (name: string, ...command: string[]) =>
    cli(["run", name, "--redis", server.url, "--", ...command]);
  const [exit42, killed, missing, shell] = await Promise.all([
    run("status-42", ...sh("exit 42")),
    run("status-killed", ...sh("kill -KILL $$")),
    run("status-missing", "deadbolt-no-such-command"),
    cli([
      "run",
      "status-shell",
      "--shell",
      "--redis",
      server.url,
      "--",
      'echo "$1" | tr a-z A-Z; exit 3',
      "word",
    ]),
  ]);
  assert.equal(exit42.code, 42, exit42.stderr);
  assert.equal(killed.code, 128 + 9, killed.stderr);
  assert.equal(missing.code, 127);
  assert.equal(
    missing.stderr,
    "deadbolt: deadbolt-no-such-command: not found\n",
  );
  assert.equal(shell.code, 3, shell.stderr);
  assert.equal(shell.stdout, "WORD\n");
  for (const name of ["42", "killed", "missing", "shell"]) {
    assert.equal(await side.send("EXISTS", key(`status-${name}`)), 0, name);
  }
});

Deno.test("deadbolt status tells held (0) from free (1) and never prints the token", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const status = (...options: string[]) =>
    cli(["status", "report", "--redis", server.url, ...options]);
  await side.send("SET", key("report"), "secret-token", "PX", "20000");
  await side.send("SET", `${key("report")}:fence`, "7");
  const [held, quiet, otherPrefix] = await Promise.all([
    status(),
    status("--quiet"),
    status("--prefix", "other:"),
  ]);
  assert.equal(held.code, 0, held.stderr);
  assert.match(
    held.stdout,
    /^lock 'report' is held for another 1\d\.\d s unless renewed; last fence issued 7\n$/,
  );
  assert.doesNotMatch(held.stdout + held.stderr, /secret-token/);
  assert.equal(quiet.code, 0);
  assert.equal(quiet.stdout + quiet.stderr, "");
  assert.equal(otherPrefix.code, 1);
  await side.send("DEL", key("report"));
  const free = await status();
  assert.equal(free.code, 1, free.stderr);
  assert.equal(free.stdout, "lock 'report' is free; last fence issued 7\n");
});

Deno.test("deadbolt release deletes the lock only for the holder's token", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const release = (token: string) =>
    cli(["release", "job", "--token", token, "--redis", server.url]);
  await side.send("SET", key("job"), "right", "PX", "20000");
  const wrong = await release("wrong");
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /held by another token; left alone/);
  assert.equal(await side.send("GET", key("job")), "right");
  const right = await release("right");
  assert.equal(right.code, 0, right.stderr);
  assert.equal(await side.send("EXISTS", key("job")), 0);
  const again = await release("right");
  assert.equal(again.code, 1);
  assert.match(again.stderr, /not held; nothing to release/);
});

Deno.test({
  name: "deadbolt run shows a one-line status while waiting on a terminal",
  // `script` (util-linux) gives the CLI a pseudo-terminal.
  ignore: !(await exists("/usr/bin/script")),
  async fn() {
    await using server = await startRedis();
    await using side = await server.connect();
    await side.send("SET", key("tty"), "other", "PX", "1200");
    const command = [
      Deno.execPath(),
      "run",
      "-A",
      new URL("../cli.ts", import.meta.url).pathname,
      "run",
      "tty",
      "--redis",
      server.url,
      "--",
      "echo",
      "acquired",
    ].map((arg) => `'${arg}'`).join(" ");
    const output = await new Deno.Command("script", {
      args: ["-qfec", command, "/dev/null"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stdout);
    assert.equal(output.code, 0, text);
    // Each frame returns to the line's start and erases it: one line, rewritten.
    const frames = text.split("\r\x1b[K").slice(1);
    assert.ok(frames.length >= 2, JSON.stringify(text));
    assert.match(
      frames[0],
      /^deadbolt: waiting for lock 'tty' \(pid \d+\) for \d+ ms; held by another owner whose lease ends in \d/,
    );
    // The line is cleared before the command's output.
    assert.match(frames.at(-1)!, /^acquired\r?\n/);
  },
});

Deno.test("deadbolt run --limit 2 runs at most two commands at once; a third with --no-wait exits 75, and status --limit counts the permits", async () => {
  await using server = await startRedis();
  await using dir = await tempDir();
  const log = `${dir.path}/log`;
  const semaphoreKey = "deadbolt:semaphore:{pool}";
  await using side = await server.connect();
  // Each command records how many run beside it (counted in Redis).
  const section =
    `n=$(redis-cli -p "$3" INCR inside); echo "$n" >> "$2"; sleep 0.6; redis-cli -p "$3" DECR inside > /dev/null`;
  const runs = ["a", "b", "c", "d"].map((id) =>
    cli([
      "run",
      "pool",
      "--limit",
      "2",
      "--redis",
      server.url,
      "--",
      ...sh(section, id, log, String(server.port)),
    ])
  );
  // Two hold permits, two wait: the semaphore is full meanwhile.
  await until(
    async () => Number(await side.send("ZCARD", semaphoreKey)) === 2,
    10_000,
    "two permits held",
  );
  const [full, busy] = await Promise.all([
    cli(["status", "pool", "--limit", "2", "--redis", server.url]),
    cli([
      "run",
      "pool",
      "--limit",
      "1",
      "--no-wait",
      "--redis",
      server.url,
      "--",
      "true",
    ]),
  ]);
  assert.equal(full.code, 0, full.stderr);
  assert.match(
    full.stdout,
    /^semaphore 'pool' has 2 of 2 permits held; the first lease ends in [\d.]+ m?s\n$/,
  );
  assert.equal(busy.code, 75, busy.stderr);
  for (const result of await Promise.all(runs)) {
    assert.equal(result.code, 0, result.stderr);
  }
  const counts = (await read(log)).trim().split("\n").map(Number);
  assert.equal(counts.length, 4);
  assert.ok(Math.max(...counts) <= 2, `counts ${counts}`);
  const free = await cli([
    "status",
    "pool",
    "--limit",
    "2",
    "--redis",
    server.url,
  ]);
  assert.equal(free.code, 1, free.stderr);
  assert.equal(free.stdout, "semaphore 'pool' has 0 of 2 permits held\n");
  assert.equal(await side.send("EXISTS", semaphoreKey), 0, "released");
});

Deno.test("deadbolt --limit must be a whole number from 1, before any Redis I/O", async () => {
  const redis = `redis://127.0.0.1:${freePort()}`;
  for (const bad of ["0", "-1", "1.5", "x", "2147483648"]) {
    const result = await cli([
      "run",
      "job",
      "--limit",
      bad,
      "--redis",
      redis,
      "--",
      "true",
    ]);
    assert.equal(result.code, 64, `${bad}: ${result.stderr}`);
    assert.match(result.stderr, /--limit must be a whole number from 1/);
  }
});

Deno.test("deadbolt status --rw tells readers, a writer and a waiting writer apart, and exits 0 only when held", async () => {
  await using server = await startRedis();
  await using side = await server.connect();
  const status = () =>
    cli(["status", "catalog", "--rw", "--redis", server.url]);
  const free = await status();
  assert.equal(free.code, 1, free.stderr);
  assert.equal(free.stdout, "read-write lock 'catalog' is free\n");
  const [seconds] = await side.send("TIME") as [string, string];
  const later = String(Number(seconds) * 1_000 + 20_000);
  const writer = "deadbolt:rw:{catalog}";
  await side.send("ZADD", `${writer}:readers`, later, "r1", later, "r2");
  await side.send("SET", `${writer}:waiting`, "1", "PX", "20000");
  const read = await status();
  assert.equal(read.code, 0, read.stderr);
  assert.equal(
    read.stdout,
    "read-write lock 'catalog' is held by 2 readers; a writer waits\n",
  );
  await side.send("DEL", `${writer}:readers`, `${writer}:waiting`);
  await side.send("SET", writer, "secret-token", "PX", "20000");
  const written = await status();
  assert.equal(written.code, 0, written.stderr);
  assert.match(
    written.stdout,
    /^read-write lock 'catalog' is held by a writer for another 1\d\.\d s unless renewed\n$/,
  );
  assert.doesNotMatch(written.stdout, /secret-token/);
  const both = await cli(["status", "catalog", "--rw", "--limit", "2"]);
  assert.equal(both.code, 64);
});

Deno.test("deadbolt run stopped by SIGTSTP (Ctrl-Z) stops the command too; once continued, the command goes on only while the lock is held", async (t) => {
  await using server = await startRedis();
  await using dir = await tempDir();
  const size = async (file: string) => (await read(file)).length;

  for (
    const [step, ttl, stopped] of [["continued in time", "10s", 300], [
      "the lease ran out while stopped",
      "1s",
      2_500,
    ]] as const
  ) {
    await t.step(step, async () => {
      const ticks = `${dir.path}/ticks-${ttl}`;
      const done = `${dir.path}/done-${ttl}`;
      await using run = CliProcess.start([
        "run",
        `stopped-${ttl}`,
        "--redis",
        server.url,
        "--ttl",
        ttl,
        "--kill-after",
        "200ms",
        "--",
        // At most 10 s of ticks, so that a broken run cannot hang the test.
        ...sh(
          `echo started; i=0; while [ ! -e "$2" ] && [ $i -lt 500 ]; do echo . >> "$1"; i=$((i + 1)); sleep 0.02; done`,
          ticks,
          done,
        ),
      ]);
      // The command stops at the end of the step, whatever happened.
      await using _ = {
        [Symbol.asyncDispose]: () => Deno.writeTextFile(done, ""),
      };
      assert.equal(await run.line(), "started");
      await until(async () => await size(ticks) > 0, 5_000, "the first tick");
      run.kill("SIGTSTP");
      await sleep(100);
      const before = await size(ticks);
      await sleep(stopped);
      // Before: only deadbolt stopped, its renewals with it, and the command
      // ran on unprotected (another run got the lock and ran beside it).
      assert.equal(await size(ticks), before, "the command ran on");
      if (ttl === "1s") {
        const other = await cli([
          "run",
          `stopped-${ttl}`,
          "--redis",
          server.url,
          "--no-wait",
          "--",
          "true",
        ]);
        assert.equal(other.code, 0, other.stderr);
      }
      run.kill("SIGCONT");
      if (ttl === "10s") {
        await until(
          async () => await size(ticks) > before,
          5_000,
          "the command going on",
        );
        await Deno.writeTextFile(done, "");
        const result = await run.exit();
        assert.equal(result.code, 0, result.stderr);
      } else {
        const result = await run.exit();
        assert.equal(result.code, 79, result.stderr);
        assert.equal(await size(ticks), before, "the command went on");
      }
    });
  }
});
