/**
 * Starts and stops real `redis-server` processes on free loopback ports, and
 * checks that the server answering is the one we spawned (redis-server exits
 * quietly when its port is taken).
 *
 * @module
 */

import { ensureRedisServer } from "./_install.ts";
import { RespClient } from "./_resp.ts";

/** A redis-server process started by `startRedis()`; dispose stops it. */
export interface RedisServer extends AsyncDisposable {
  /** The loopback port it listens on. */
  readonly port: number;
  /** The PID of the current redis-server process (changes on restart). */
  readonly pid: number;
  /** `redis://127.0.0.1:<port>`. */
  readonly url: string;
  /** Its temporary working directory (log, RDB/AOF files). */
  readonly dir: string;
  /** Sends `sig` to this server's PID only (e.g. SIGSTOP, SIGCONT, SIGKILL). */
  signal(sig: Deno.Signal): void;
  /** Terminates the server, awaits its exit and removes its directory; idempotent. */
  stop(): Promise<void>;
  /** Stops the server and starts it again on the same port and directory with the same args. */
  restart(): Promise<void>;
  /** Opens a new side connection; the caller closes it. */
  connect(): Promise<RespClient>;
}

/** Options for `startRedis()`. */
export interface StartRedisOptions {
  /** Extra redis-server arguments, appended after the defaults. @default {[]} */
  args?: string[];
}

const ATTEMPTS = 5;
const READY_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Returns a loopback port that was free a moment ago. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/** Starts a redis-server on a free port and waits until it answers as itself. */
export async function startRedis(
  options: StartRedisOptions = {},
): Promise<RedisServer> {
  const { args = [] } = options;
  await ensureRedisServer();
  const dir = await Deno.makeTempDir({ prefix: "deadbolt-redis-" });
  const server = new RedisProcess(dir, args);
  try {
    await server.launch(freePort);
    return server;
  } catch (error) {
    await server.stop();
    throw error;
  }
}

class RedisProcess implements RedisServer {
  #dir: string;
  #args: string[];
  #port = 0;
  #child: Deno.ChildProcess | undefined;
  #exit: Promise<unknown> = Promise.resolve();
  #stderr = "";
  #exited = true;
  #stopping: Promise<void> | undefined;

  constructor(dir: string, args: string[]) {
    this.#dir = dir;
    this.#args = args;
  }

  get port(): number {
    return this.#port;
  }
  get pid(): number {
    return this.#child?.pid ?? 0;
  }
  get url(): string {
    return `redis://127.0.0.1:${this.#port}`;
  }
  get dir(): string {
    return this.#dir;
  }

  signal(sig: Deno.Signal): void {
    this.#child?.kill(sig);
  }

  connect(): Promise<RespClient> {
    return RespClient.connect(this.#port);
  }

  stop(): Promise<void> {
    this.#stopping ??= this.#halt().then(() =>
      Deno.remove(this.#dir, { recursive: true })
    );
    return this.#stopping;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  async restart(): Promise<void> {
    if (this.#stopping) {
      throw new Error("Cannot restart redis-server as it was stopped");
    }
    await this.#halt();
    const port = this.#port;
    // The old socket may linger for a moment; a retry gets the same port back.
    await this.launch(() => port);
  }

  /** Spawns on `nextPort()` until a server answers as our child, up to ATTEMPTS times. */
  async launch(nextPort: () => number): Promise<void> {
    for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
      if (await this.#spawn(nextPort())) return;
      await delay(50 * attempt);
    }
    const log = await this.#logTail();
    throw new Error(
      `Cannot start redis-server as no port worked after ${ATTEMPTS} attempts: log tail:\n${log}`,
    );
  }

  /** Returns false when the port was taken (our child exited or another PID answered). */
  async #spawn(port: number): Promise<boolean> {
    this.#port = port;
    const child = new Deno.Command("redis-server", {
      args: serverArgs(port, this.#dir, this.#args),
      stdin: "null",
      stdout: "null",
      // Piped because redis-server reports bad arguments there, not in its log.
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#exited = false;
    this.#exit = child.output().then((output) => {
      this.#exited = true;
      this.#stderr = new TextDecoder().decode(output.stderr).trim();
    });
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (let wait = 5; !this.#exited; wait = Math.min(wait * 2, 200)) {
      const pid = await answeringPid(port);
      if (pid === child.pid) return true;
      if (pid !== undefined) break;
      if (Date.now() > deadline) {
        await this.#halt();
        const log = await this.#logTail();
        throw new Error(
          `Cannot start redis-server as it did not answer on port ${port} within ${READY_TIMEOUT_MS} ms: log tail:\n${log}`,
        );
      }
      await delay(wait);
    }
    await this.#halt();
    if (this.#stderr) {
      throw new Error(`Cannot start redis-server: ${this.#stderr}`);
    }
    return false;
  }

  /** Terminates the current child (waking it first if stopped) and awaits its exit. */
  async #halt(): Promise<void> {
    if (!this.#exited) {
      for (const sig of ["SIGCONT", "SIGTERM"] as const) this.#kill(sig);
      // A wedged server must not hang the suite; SIGKILL after a grace period.
      const timer = setTimeout(() => this.#kill("SIGKILL"), STOP_TIMEOUT_MS);
      await this.#exit;
      clearTimeout(timer);
    }
    await this.#exit;
  }

  #kill(sig: Deno.Signal): void {
    try {
      this.#child?.kill(sig);
    } catch {
      // It exited between our check and the signal; there is nothing to stop.
    }
  }

  async #logTail(lines = 20): Promise<string> {
    try {
      const log = await Deno.readTextFile(`${this.#dir}/redis.log`);
      return log.trimEnd().split("\n").slice(-lines).join("\n");
    } catch (error) {
      return `(no log: ${error})`;
    }
  }
}

/** The fixed flags, then `extra`; no RDB/AOF unless `extra` asks, so tests stay off the disk. */
function serverArgs(port: number, dir: string, extra: string[]): string[] {
  return [
    ["--port", String(port)],
    ["--bind", "127.0.0.1"],
    ["--save", ""],
    ["--appendonly", "no"],
    ["--enable-debug-command", "local"],
    ["--dir", dir],
    ["--logfile", `${dir}/redis.log`],
    ["--protected-mode", "no"],
    extra,
  ].flat();
}

/** The PID of whatever redis answers on `port` once it has loaded its data, else undefined. */
async function answeringPid(port: number): Promise<number | undefined> {
  try {
    await using client = await RespClient.connect(port);
    const info = String(await client.send("INFO", "server", "persistence"));
    // A server still loading its AOF/RDB answers INFO but refuses most commands.
    if (!/^loading:0\r?$/m.test(info)) return undefined;
    return Number(/^process_id:(\d+)/m.exec(info)?.[1]);
  } catch {
    return undefined;
  }
}
