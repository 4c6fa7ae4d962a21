/**
 * A tiny RESP2 client over `Deno.connect`, for tests: a side connection for
 * assertions and fault injection, plus a stand-in for `@db/redis`, which CI
 * cannot install (JSR is unreachable). (`@upstash/redis` is tested for real,
 * against `_upstash.ts`.)
 *
 * `DbRedisShape` mirrors `@db/redis` 0.41.2 (denodrivers/redis@f5d5051f,
 * files redis.ts, default_client.ts, default_connection.ts,
 * default_subscription.ts and errors.ts) wherever deadbolt might touch it;
 * tests/db_redis_test.ts runs the real client where it can be extracted.
 *
 * @module
 */

/** A decoded RESP2 reply: integer → number, simple/bulk string → string, nil → null. */
export type RespReply = string | number | null | RespReply[];

/** A value `RespClient.send()` encodes as one bulk string argument. */
export type RespArg = string | number | Uint8Array;

/** A server error reply; the message is the reply text without the leading `-`. */
export class RespError extends Error {
  override name = "RespError";
}

const CRLF = "\r\n";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

type Parsed = { value: RespReply | RespError; end: number };

/** Parses one reply at `start`, or returns undefined when more bytes are needed. */
function parse(buf: Uint8Array, start: number): Parsed | undefined {
  const lineEnd = buf.indexOf(0x0d, start);
  if (lineEnd === -1 || lineEnd + 1 >= buf.length) return undefined;
  const line = decoder.decode(buf.subarray(start + 1, lineEnd));
  const next = lineEnd + 2;
  switch (buf[start]) {
    case 0x2b: // '+'
      return { value: line, end: next };
    case 0x2d: // '-'
      return { value: new RespError(line), end: next };
    case 0x3a: // ':'
      return { value: Number(line), end: next };
    case 0x24: { // '$'
      const length = Number(line);
      if (length < 0) return { value: null, end: next };
      if (buf.length < next + length + 2) return undefined;
      const value = decoder.decode(buf.subarray(next, next + length));
      return { value, end: next + length + 2 };
    }
    case 0x2a: { // '*'
      const count = Number(line);
      if (count < 0) return { value: null, end: next };
      const items: RespReply[] = [];
      let end = next;
      let error: RespError | undefined;
      for (let i = 0; i < count; i++) {
        const item = parse(buf, end);
        if (item === undefined) return undefined;
        // RespReply has no error member, so an error nested in an array
        // (e.g. inside EXEC) fails the whole reply.
        if (item.value instanceof RespError) error ??= item.value;
        else items.push(item.value);
        end = item.end;
      }
      return { value: error ?? items, end };
    }
    default:
      throw new Error(
        `Cannot parse RESP reply: unexpected type byte ${buf[start]}`,
      );
  }
}

/** Encodes a command as a RESP array of bulk strings. */
function encode(command: string, args: readonly RespArg[]): Uint8Array {
  const parts: Uint8Array[] = [encoder.encode(`*${args.length + 1}${CRLF}`)];
  for (const arg of [command, ...args]) {
    const bytes = arg instanceof Uint8Array ? arg : encoder.encode(String(arg));
    parts.push(
      encoder.encode(`$${bytes.length}${CRLF}`),
      bytes,
      encoder.encode(CRLF),
    );
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

type Pending = { resolve(value: RespReply): void; reject(error: Error): void };

/**
 * A pipelining RESP2 connection; replies are matched to sends (and reads) in
 * order. A reply nobody waits for is kept for the next send or read, as a
 * socket keeps it: after `write("SUBSCRIBE", …)` the next send gets the
 * confirmation.
 */
export class RespClient implements AsyncDisposable {
  #conn: Deno.TcpConn;
  #pending: Pending[] = [];
  #unclaimed: (RespReply | RespError)[] = [];
  #buffer = new Uint8Array(0);
  #writing: Promise<void> = Promise.resolve();
  #closedReason: Error | undefined;
  #readLoop: Promise<void>;

  /** Resolves when the socket is closed, by us or by the server, and its read loop has ended. */
  readonly closed: Promise<void>;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    this.#readLoop = this.#read();
    this.closed = this.#readLoop;
  }

  /** Connects to a Redis server on `hostname:port` (default host 127.0.0.1). */
  static async connect(
    port: number,
    hostname = "127.0.0.1",
  ): Promise<RespClient> {
    const conn = await Deno.connect({ hostname, port });
    conn.setNoDelay(true);
    return new RespClient(conn);
  }

  /** Sends one command; rejects with RespError on an error reply, Error if the connection closes. */
  send(command: string, ...args: RespArg[]): Promise<RespReply> {
    if (this.#closedReason) return Promise.reject(this.#closedReason);
    const reply = this.read();
    void this.write(command, ...args).catch(() => {});
    return reply;
  }

  /** Sends one command and claims no reply: the next send or read gets it. */
  write(command: string, ...args: RespArg[]): Promise<void> {
    if (this.#closedReason) return Promise.reject(this.#closedReason);
    const bytes = encode(command, args);
    // Chained so concurrent sends reach the socket whole and in queue order.
    const written = this.#writing.then(async () => {
      for (let n = 0; n < bytes.length;) {
        if (this.#closedReason) throw this.#closedReason;
        n += await this.#conn.write(bytes.subarray(n));
      }
    }).catch((cause) => {
      this.#shutdown(
        new Error("RESP connection closed while writing", { cause }),
      );
      throw this.#closedReason;
    });
    this.#writing = written.catch(() => {});
    return written;
  }

  /** Claims the next reply without sending anything (a pub/sub message, say). */
  read(): Promise<RespReply> {
    if (this.#closedReason) return Promise.reject(this.#closedReason);
    if (this.#unclaimed.length > 0) {
      const value = this.#unclaimed.shift()!;
      return value instanceof RespError
        ? Promise.reject(value)
        : Promise.resolve(value);
    }
    const reply = Promise.withResolvers<RespReply>();
    this.#pending.push(reply);
    return reply.promise;
  }

  /** Closes the socket and rejects pending sends; idempotent. */
  close(): void {
    this.#shutdown(new Error("RESP connection closed by the client"));
  }

  /** Closes and waits for the read loop to end, so no op or resource outlives it. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.#readLoop;
    await this.#writing;
  }

  async #read(): Promise<void> {
    const chunk = new Uint8Array(64 * 1024);
    let reason = new Error("RESP connection closed by the server");
    try {
      for (let n; (n = await this.#conn.read(chunk)) !== null;) {
        const joined = new Uint8Array(this.#buffer.length + n);
        joined.set(this.#buffer);
        joined.set(chunk.subarray(0, n), this.#buffer.length);
        this.#buffer = joined;
        this.#deliver();
      }
    } catch (cause) {
      reason = new Error("RESP connection closed: read failed", { cause });
    }
    this.#shutdown(reason);
  }

  #deliver(): void {
    let offset = 0;
    for (let parsed; (parsed = parse(this.#buffer, offset)) !== undefined;) {
      offset = parsed.end;
      const pending = this.#pending.shift();
      if (!pending) this.#unclaimed.push(parsed.value);
      else if (parsed.value instanceof RespError) pending.reject(parsed.value);
      else pending.resolve(parsed.value);
    }
    this.#buffer = this.#buffer.subarray(offset);
  }

  #shutdown(reason: Error): void {
    if (this.#closedReason) return;
    this.#closedReason = reason;
    for (const pending of this.#pending.splice(0)) pending.reject(reason);
    try {
      this.#conn.close();
    } catch {
      // Already closed by the runtime; nothing left to free.
    }
  }
}

/** `@db/redis`'s server error: the message is the whole reply line, leading `-` included. */
export class ErrorReplyError extends Error {
  override name = "ErrorReplyError";
}

/** A pub/sub message as `@db/redis`'s `receive()` yields it. */
export interface DbRedisMessage {
  /** The pattern matched, for `psubscribe`. */
  pattern?: string;
  /** The channel it was published to. */
  channel: string;
  /** The message. */
  message: string;
}

/**
 * An error as `@db/redis` throws it: a server error reply as ErrorReplyError,
 * a write after `close()` as `Deno.errors.BadResource`, others as they are.
 */
function dbRedisError(error: unknown, closed: boolean): unknown {
  if (error instanceof RespError) {
    return new ErrorReplyError(`-${error.message}`);
  }
  return closed ? new Deno.errors.BadResource("Bad resource ID") : error;
}

/**
 * A stand-in for `@db/redis`'s `Redis` (its `RedisImpl`) over a RespClient,
 * with its semantics wherever deadbolt might touch it:
 *
 * - commands run one at a time: each is written once the previous one's
 *   reply is read (default_connection.ts, `processCommandQueue`), and a
 *   server error rejects with `ErrorReplyError` whose message keeps the `-`;
 * - `subscribe()`/`psubscribe()` turn THIS connection into a subscriber:
 *   they write SUBSCRIBE/PSUBSCRIBE at once, outside the queue, read no
 *   confirmation, and return the client's one subscription (kept even once
 *   closed). A command sent next reads the next reply on the wire: the
 *   confirmation `["subscribe", channel, n]`, and later ones get, a reply or
 *   more late, "-ERR Can't execute …: only (P|S)SUBSCRIBE / … are allowed in
 *   this context";
 * - the subscription's `receive()` reads replies from the same connection
 *   and yields `message`/`pmessage` ones; its `close()` closes the connection,
 *   client included, and ends `receive()`.
 *
 * Unlike it: no reconnecting (a lost connection stays lost, and `receive()`
 * then throws), no events, no RESP3, no binary replies, only the commands
 * below, an error inside an array fails the whole reply, and the socket is
 * read even while no reply is awaited (the RespClient's read loop).
 */
export class DbRedisShape {
  #client: RespClient;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;
  #lost = false;
  #subscription: DbRedisShapeSubscription | undefined;

  /** Wraps `client`; closing this closes it. */
  constructor(client: RespClient) {
    this.#client = client;
    client.closed.then(() => this.#lost = true);
  }

  /** Whether `close()` (or the subscription's) was called. */
  get isClosed(): boolean {
    return this.#closed;
  }

  /** Whether the connection is open. */
  get isConnected(): boolean {
    return !this.#closed && !this.#lost;
  }

  /** Runs `EVAL script numkeys ...keys ...args`. */
  eval(script: string, keys: string[], args: RespArg[]): Promise<RespReply> {
    return this.sendCommand("EVAL", [script, keys.length, ...keys, ...args]);
  }

  /** Runs `EVALSHA sha1 numkeys ...keys ...args`. */
  evalsha(sha1: string, keys: string[], args: RespArg[]): Promise<RespReply> {
    return this.sendCommand("EVALSHA", [sha1, keys.length, ...keys, ...args]);
  }

  /** Runs `WAIT numreplicas timeout`. */
  wait(numreplicas: number, timeout: number): Promise<RespReply> {
    return this.sendCommand("WAIT", [numreplicas, timeout]);
  }

  /** Runs any command, after the commands sent before it have their replies. */
  sendCommand(
    command: string,
    args: RespArg[] = [],
    options?: { returnUint8Arrays?: boolean },
  ): Promise<RespReply> {
    if (options?.returnUint8Arrays) {
      return Promise.reject(
        new Error("Cannot return Uint8Arrays as this stand-in decodes strings"),
      );
    }
    const reply = this.#queue.then(() =>
      this.#client.send(command, ...args).catch((error) => {
        throw dbRedisError(error, this.#closed);
      })
    );
    this.#queue = reply.catch(() => {});
    return reply;
  }

  /** `SUBSCRIBE` on this connection; returns the client's one subscription. */
  subscribe(...channels: string[]): Promise<DbRedisShapeSubscription> {
    return this.#subscribe("subscribe", channels);
  }

  /** `PSUBSCRIBE` on this connection; returns the client's one subscription. */
  psubscribe(...patterns: string[]): Promise<DbRedisShapeSubscription> {
    return this.#subscribe("psubscribe", patterns);
  }

  /** Sends `QUIT`, then closes. */
  quit(): Promise<RespReply> {
    return this.sendCommand("QUIT").finally(() => this.close());
  }

  /** Closes the connection (synchronously, as `@db/redis` does). */
  close(): void {
    this.#closed = true;
    this.#client.close();
  }

  /** Closes the connection, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  async #subscribe(
    command: "subscribe" | "psubscribe",
    channels: string[],
  ): Promise<DbRedisShapeSubscription> {
    if (this.#subscription) {
      await this.#subscription[command](...channels);
      return this.#subscription;
    }
    const subscription = new DbRedisShapeSubscription(this.#client, this);
    await subscription[command](...channels);
    this.#subscription = subscription;
    return subscription;
  }
}

/** `@db/redis`'s `RedisSubscription` (default_subscription.ts) for DbRedisShape. */
export class DbRedisShapeSubscription {
  #client: RespClient;
  #connection: DbRedisShape;

  /** Subscribes over `client`, the connection of `connection`. */
  constructor(client: RespClient, connection: DbRedisShape) {
    this.#client = client;
    this.#connection = connection;
  }

  /** Whether the connection was closed. */
  get isClosed(): boolean {
    return this.#connection.isClosed;
  }

  /** Whether the connection is open. */
  get isConnected(): boolean {
    return this.#connection.isConnected;
  }

  /** Writes `SUBSCRIBE channels…`; the confirmation is not read. */
  subscribe(...channels: string[]): Promise<void> {
    return this.#write("SUBSCRIBE", channels);
  }

  /** Writes `UNSUBSCRIBE channels…`; the confirmation is not read. */
  unsubscribe(...channels: string[]): Promise<void> {
    return this.#write("UNSUBSCRIBE", channels);
  }

  /** Writes `PSUBSCRIBE patterns…`; the confirmation is not read. */
  psubscribe(...patterns: string[]): Promise<void> {
    return this.#write("PSUBSCRIBE", patterns);
  }

  /** Writes `PUNSUBSCRIBE patterns…`; the confirmation is not read. */
  punsubscribe(...patterns: string[]): Promise<void> {
    return this.#write("PUNSUBSCRIBE", patterns);
  }

  /** Reads replies and yields the messages, until the connection closes. */
  async *receive(): AsyncIterableIterator<DbRedisMessage> {
    while (this.#connection.isConnected) {
      let reply: RespReply;
      try {
        reply = await this.#client.read();
      } catch (error) {
        if (this.#connection.isClosed) break; // closed by the user
        throw dbRedisError(error, false);
      }
      if (!Array.isArray(reply)) continue;
      const [event, ...rest] = reply.map(String);
      if (event === "message" && rest.length === 2) {
        yield { channel: rest[0], message: rest[1] };
      } else if (event === "pmessage" && rest.length === 3) {
        yield { pattern: rest[0], channel: rest[1], message: rest[2] };
      }
    }
    // The real loop's read has failed by now; let this socket's read end too.
    await this.#client.closed;
  }

  /** Closes the connection, client included. */
  close(): void {
    this.#connection.close();
  }

  async #write(command: string, args: string[]): Promise<void> {
    try {
      await this.#client.write(command, ...args);
    } catch (error) {
      throw dbRedisError(error, this.#connection.isClosed);
    }
  }
}

/**
 * Connects a DbRedisShape that owns its connection, as `@db/redis`'s
 * `connect({ hostname, port })` does (the hostname defaults to 127.0.0.1).
 */
export async function connectDbRedisShape(
  options: number | { hostname?: string; port: number },
): Promise<DbRedisShape> {
  const { hostname = "127.0.0.1", port } = typeof options === "number"
    ? { port: options }
    : options;
  return new DbRedisShape(await RespClient.connect(port, hostname));
}
