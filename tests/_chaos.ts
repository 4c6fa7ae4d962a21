/**
 * A TCP chaos proxy for fault tests, no root needed: clients connect to
 * `127.0.0.1:<proxy.port>`, and every connection is piped to a Redis port
 * through two pumps (client→server "up", server→client "down") whose
 * behaviour the test switches at any moment, for all current and future
 * connections at once.
 *
 * - `pass`: forward both ways (plus any `delay()`).
 * - `blackhole`: forward nothing either way and keep the sockets open, no
 *   RST. Bytes that arrive meanwhile are kept in order and delivered when the
 *   mode changes, as TCP retransmission would after a partition heals; the
 *   byte stream is never corrupted, so a client's reply matching holds.
 * - `drop-replies`: forward client→server, discard server→client bytes (the
 *   server acts, the client never hears). Clients that match replies by order
 *   are out of step afterwards: follow it with `reset()`.
 * - `hold-replies`: forward client→server, keep server→client bytes until
 *   `release()` (or any other mode) lets them through, in order.
 *
 * @module
 */

/** How the proxy treats the bytes of every connection. */
export type ChaosMode = "pass" | "blackhole" | "drop-replies" | "hold-replies";

type Direction = "up" | "down";

/** Bytes read from one side, due for the other side at `at` (monotonic ms). */
type Chunk = { bytes: Uint8Array; at: number } | { end: true; at: number };

const HOST = "127.0.0.1";
const noop = (): void => {};

/** One client connection and its connection to the target. */
class Pipe {
  readonly client: Deno.TcpConn;
  readonly server: Deno.TcpConn;
  closed = false;
  #change = Promise.withResolvers<void>();

  constructor(client: Deno.TcpConn, server: Deno.TcpConn) {
    this.client = client;
    this.server = server;
  }

  /** Resolves at the next state change: new bytes, a new mode, a close. */
  changed(): Promise<void> {
    return this.#change.promise;
  }

  notify(): void {
    this.#change.resolve();
    this.#change = Promise.withResolvers<void>();
  }

  /** Closes both sockets at once; pending reads and writes fail. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const conn of [this.client, this.server]) {
      try {
        conn.close();
      } catch {
        // Already closed by the runtime.
      }
    }
    this.notify();
  }
}

/** A chaos proxy in front of one TCP port; dispose (or `close()`) stops it. */
export class ChaosProxy implements AsyncDisposable {
  #listener: Deno.TcpListener;
  #target: number;
  #mode: ChaosMode = "pass";
  #delay: Record<Direction, number> = { up: 0, down: 0 };
  #pipes = new Set<Pipe>();
  #tasks = new Set<Promise<void>>();
  #accepting: Promise<void>;
  #closing: Promise<void> | undefined;

  private constructor(listener: Deno.TcpListener, target: number) {
    this.#listener = listener;
    this.#target = target;
    this.#accepting = this.#accept();
  }

  /** Listens on a free loopback port and forwards to `targetPort` on loopback. */
  static start(targetPort: number): Promise<ChaosProxy> {
    const listener = Deno.listen({ hostname: HOST, port: 0 });
    return Promise.resolve(new ChaosProxy(listener, targetPort));
  }

  /** The loopback port clients connect to. */
  get port(): number {
    return this.#listener.addr.port;
  }

  /** The current mode. */
  get mode(): ChaosMode {
    return this.#mode;
  }

  /** How many client connections are open. */
  get connections(): number {
    return this.#pipes.size;
  }

  /** Switches every current and future connection to `mode`. */
  set(mode: ChaosMode): void {
    this.#mode = mode;
    this.#notifyAll();
  }

  /**
   * Adds latency per direction (0 = none) to bytes read from now on; order
   * is preserved, so a chunk never overtakes an earlier one.
   */
  delay(upMs: number, downMs: number): void {
    this.#delay = { up: upMs, down: downMs };
    this.#notifyAll();
  }

  /** Delivers the replies kept by `hold-replies` (in order), then passes. */
  release(): void {
    this.set("pass");
  }

  /**
   * Closes every client connection abruptly, and its server connection with
   * it; bytes still in the proxy are lost. New connections are accepted.
   */
  reset(): void {
    for (const pipe of this.#pipes) pipe.close();
  }

  /** Stops listening, closes every socket and awaits every pump. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#listener.close();
      await this.#accepting;
      this.reset();
      while (this.#tasks.size) await Promise.all(this.#tasks);
    })();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #notifyAll(): void {
    for (const pipe of this.#pipes) pipe.notify();
  }

  #track(task: Promise<void>): void {
    const tracked: Promise<void> = task.then(noop, noop).then(() => {
      this.#tasks.delete(tracked);
    });
    this.#tasks.add(tracked);
  }

  async #accept(): Promise<void> {
    for (;;) {
      let client: Deno.TcpConn;
      try {
        client = await this.#listener.accept();
      } catch {
        return; // The listener was closed.
      }
      this.#track(this.#open(client));
    }
  }

  async #open(client: Deno.TcpConn): Promise<void> {
    let server: Deno.TcpConn;
    try {
      server = await Deno.connect({ hostname: HOST, port: this.#target });
    } catch {
      client.close();
      return;
    }
    const pipe = new Pipe(client, server);
    if (this.#closing) {
      pipe.close();
      return;
    }
    client.setNoDelay(true);
    server.setNoDelay(true);
    this.#pipes.add(pipe);
    const queues: Record<Direction, Chunk[]> = { up: [], down: [] };
    await Promise.all([
      this.#read(pipe, client, queues.up, "up"),
      this.#write(pipe, server, queues.up, "up"),
      this.#read(pipe, server, queues.down, "down"),
      this.#write(pipe, client, queues.down, "down"),
    ]);
    this.#pipes.delete(pipe);
  }

  /** Reads from `from` into `queue` until EOF or an error, then queues the end. */
  async #read(
    pipe: Pipe,
    from: Deno.TcpConn,
    queue: Chunk[],
    direction: Direction,
  ): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (let n; (n = await from.read(buffer)) !== null;) {
        const at = performance.now() + this.#delay[direction];
        queue.push({ bytes: buffer.slice(0, n), at });
        pipe.notify();
      }
    } catch {
      // Closed by reset() or close(), or by the peer with an error.
    }
    queue.push({ end: true, at: performance.now() + this.#delay[direction] });
    pipe.notify();
  }

  /** Whether `direction` may deliver now; drop-replies delivers by discarding. */
  #flowing(direction: Direction): boolean {
    if (this.#mode === "blackhole") return false;
    return !(direction === "down" && this.#mode === "hold-replies");
  }

  /** Forwards `queue` to `to` in order, when due and when the mode allows. */
  async #write(
    pipe: Pipe,
    to: Deno.TcpConn,
    queue: Chunk[],
    direction: Direction,
  ): Promise<void> {
    while (!pipe.closed) {
      const chunk = queue[0];
      if (!chunk || !this.#flowing(direction)) {
        await pipe.changed();
        continue;
      }
      const wait = chunk.at - performance.now();
      if (wait > 0) {
        await untilChangedOr(pipe, wait);
        continue;
      }
      queue.shift();
      // An EOF or error on one side ends the connection on both.
      if ("end" in chunk) return pipe.close();
      if (direction === "down" && this.#mode === "drop-replies") continue;
      try {
        for (let n = 0; n < chunk.bytes.length;) {
          n += await to.write(chunk.bytes.subarray(n));
        }
      } catch {
        return pipe.close();
      }
    }
  }
}

/** Waits `ms` or until the pipe changes, whichever is first; no timer left behind. */
async function untilChangedOr(pipe: Pipe, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const elapsed = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  try {
    await Promise.race([elapsed, pipe.changed()]);
  } finally {
    clearTimeout(timer);
  }
}
