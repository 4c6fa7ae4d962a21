/**
 * Runs the `deadbolt` CLI as a user does, as a subprocess
 * (`deno run -A cli.ts …`), and lets a test await what it prints.
 *
 * @module
 */

const CLI = new URL("../cli.ts", import.meta.url);
const ROOT = new URL("../", import.meta.url);

/** How a CLI process ended, and everything it printed. */
export interface CliResult {
  /** Exit code (128 + n when a signal n killed it). */
  code: number;
  /** Everything it wrote to stdout. */
  stdout: string;
  /** Everything it wrote to stderr. */
  stderr: string;
  /** How long it ran, in ms. */
  ms: number;
}

/** Options for {@linkcode CliProcess.start}. */
export interface CliOptions {
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Pipe stdin (write with `write()`, close with `closeStdin()`); else `/dev/null`. */
  stdin?: boolean;
}

/** A running `deadbolt`; dispose stops it (SIGTERM, then SIGKILL) and reaps it. */
export class CliProcess implements AsyncDisposable {
  /** Its process id. */
  readonly pid: number;
  readonly #child: Deno.ChildProcess;
  readonly #started = performance.now();
  readonly #pumps: Promise<void>;
  #stdout = "";
  #stderr = "";
  #consumed = 0;
  #changed = Promise.withResolvers<void>();
  #writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  #status: Promise<Deno.CommandStatus>;
  #done = false;

  private constructor(args: string[], options: CliOptions) {
    this.#child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", CLI.pathname, ...args],
      cwd: ROOT,
      env: options.env,
      stdin: options.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.pid = this.#child.pid;
    if (options.stdin) this.#writer = this.#child.stdin.getWriter();
    this.#pumps = Promise.all([
      this.#pump(this.#child.stdout, (text) => this.#stdout += text),
      this.#pump(this.#child.stderr, (text) => this.#stderr += text),
    ]).then(() => {});
    this.#status = this.#child.status.then((status) => {
      this.#done = true;
      this.#notify();
      return status;
    });
  }

  /** Starts `deadbolt ...args`. */
  static start(args: string[], options: CliOptions = {}): CliProcess {
    return new CliProcess(args, options);
  }

  /** What it has written to stderr so far. */
  get stderr(): string {
    return this.#stderr;
  }

  async #pump(
    stream: ReadableStream<Uint8Array>,
    append: (text: string) => void,
  ): Promise<void> {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      append(text);
      this.#notify();
    }
  }

  #notify(): void {
    this.#changed.resolve();
    this.#changed = Promise.withResolvers<void>();
  }

  /** Resolves once `ready()` returns a value; rejects after `ms` or once it exits without. */
  async #until<T>(
    ready: () => T | undefined,
    ms: number,
    what: string,
  ): Promise<T> {
    const deadline = performance.now() + ms;
    for (;;) {
      const value = ready();
      if (value !== undefined) return value;
      const left = deadline - performance.now();
      if (this.#done || left <= 0) {
        throw new Error(
          `${what} did not happen ${
            this.#done ? "before deadbolt exited" : `within ${ms} ms`
          }; stdout: ${JSON.stringify(this.#stdout)}, stderr: ${
            JSON.stringify(this.#stderr)
          }`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#changed.promise,
        new Promise((resolve) => timer = setTimeout(resolve, left)),
      ]);
      clearTimeout(timer);
    }
  }

  /** The next whole line on stdout (the command's output passes through). */
  line(ms = 15_000): Promise<string> {
    return this.#until(
      () => {
        const end = this.#stdout.indexOf("\n", this.#consumed);
        if (end === -1) return undefined;
        const line = this.#stdout.slice(this.#consumed, end);
        this.#consumed = end + 1;
        return line;
      },
      ms,
      "a line on stdout",
    );
  }

  /** Resolves with the first stderr line matching `pattern`. */
  stderrLine(pattern: RegExp, ms = 15_000): Promise<string> {
    return this.#until(
      () => this.#stderr.split("\n").find((line) => pattern.test(line)),
      ms,
      `a stderr line matching ${pattern}`,
    );
  }

  /** Writes to its stdin. */
  async write(text: string): Promise<void> {
    await this.#writer!.write(new TextEncoder().encode(text));
  }

  /** Closes its stdin. */
  async closeStdin(): Promise<void> {
    const writer = this.#writer;
    this.#writer = undefined;
    await writer?.close();
  }

  /** Sends `signal` to the deadbolt process (not to its command). */
  kill(signal: Deno.Signal): void {
    this.#child.kill(signal);
  }

  /** Waits (up to `ms`) for it to exit. */
  async exit(ms = 20_000): Promise<CliResult> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const status = await Promise.race([
      this.#status,
      new Promise<never>((_, reject) =>
        timer = setTimeout(
          () =>
            reject(
              new Error(
                `deadbolt did not exit within ${ms} ms; stderr: ${
                  JSON.stringify(this.#stderr)
                }`,
              ),
            ),
          ms,
        )
      ),
    ]).finally(() => clearTimeout(timer));
    await this.#pumps;
    await this.closeStdin().catch(() => {});
    return {
      code: status.code,
      stdout: this.#stdout,
      stderr: this.#stderr,
      ms: performance.now() - this.#started,
    };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#done) {
      // SIGTERM first: deadbolt passes it on to its command's process group.
      this.#signal("SIGTERM");
      const timer = setTimeout(() => this.#signal("SIGKILL"), 3_000);
      await this.#status;
      clearTimeout(timer);
    }
    await this.#pumps;
    await this.closeStdin().catch(() => {});
  }

  #signal(signal: Deno.Signal): void {
    try {
      this.#child.kill(signal);
    } catch {
      // It exited meanwhile.
    }
  }
}

/** Runs `deadbolt ...args` to the end. */
export async function cli(
  args: string[],
  options: CliOptions = {},
): Promise<CliResult> {
  await using process = CliProcess.start(args, options);
  return await process.exit();
}

/** A temporary directory, removed on dispose. */
export async function tempDir(): Promise<
  { path: string } & AsyncDisposable
> {
  const path = await Deno.makeTempDir({ prefix: "deadbolt-cli-" });
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }),
  };
}

/** Whether process `pid` is gone or a zombie (dead, not yet reaped). */
export async function isDead(pid: number): Promise<boolean> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    const state = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
    return state === "Z" || state === "X";
  } catch {
    return true;
  }
}
