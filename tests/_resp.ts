/**
 * A tiny RESP2 client over `Deno.connect`, for tests: a side connection for
 * assertions and fault injection, plus stand-ins with the exact call shapes of
 * `@db/redis` and `@upstash/redis` (neither can be installed here).
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

/** A pipelining RESP2 connection; replies are matched to sends in order. */
export class RespClient implements AsyncDisposable {
  #conn: Deno.TcpConn;
  #pending: Pending[] = [];
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
    const reply = Promise.withResolvers<RespReply>();
    this.#pending.push(reply);
    const bytes = encode(command, args);
    // Chained so concurrent sends reach the socket whole and in queue order.
    this.#writing = this.#writing.then(async () => {
      for (let n = 0; n < bytes.length && !this.#closedReason;) {
        n += await this.#conn.write(bytes.subarray(n));
      }
    }).catch((cause) =>
      this.#shutdown(
        new Error("RESP connection closed while writing", { cause }),
      )
    );
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
      if (parsed.value instanceof RespError) pending?.reject(parsed.value);
      else pending?.resolve(parsed.value);
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

/** A RespClient with `@db/redis`'s `eval`/`evalsha` signatures and error shape. */
export class DbRedisShape {
  #client: RespClient;

  /** Wraps `client`; closing this closes it. */
  constructor(client: RespClient) {
    this.#client = client;
  }

  /** Runs `EVAL script numkeys ...keys ...args`. */
  eval(script: string, keys: string[], args: RespArg[]): Promise<RespReply> {
    return this.#run("EVAL", script, keys, args);
  }

  /** Runs `EVALSHA sha1 numkeys ...keys ...args`. */
  evalsha(sha1: string, keys: string[], args: RespArg[]): Promise<RespReply> {
    return this.#run("EVALSHA", sha1, keys, args);
  }

  /** Closes the wrapped client. */
  close(): void {
    this.#client.close();
  }

  async #run(
    command: string,
    script: string,
    keys: string[],
    args: RespArg[],
  ): Promise<RespReply> {
    try {
      return await this.#client.send(
        command,
        script,
        keys.length,
        ...keys,
        ...args,
      );
    } catch (error) {
      if (error instanceof RespError) {
        throw new ErrorReplyError(`-${error.message}`);
      }
      throw error;
    }
  }
}

/** `@upstash/redis`'s error: the message is the server error text without `-`. */
export class UpstashError extends Error {
  override name = "UpstashError";
}

/** Upstash's `parseResponse`: JSON-parse strings, recursively, unless it would lose digits. */
function deserialize(reply: unknown): unknown {
  if (Array.isArray(reply)) return reply.map(deserialize);
  if (typeof reply !== "string") return reply;
  try {
    const parsed = JSON.parse(reply);
    return typeof parsed === "number" && String(parsed) !== reply
      ? reply
      : parsed;
  } catch {
    return reply;
  }
}

/** Upstash sends strings and numbers as they are, anything else as JSON. */
function serialize(arg: unknown): string | number {
  return typeof arg === "string" || typeof arg === "number"
    ? arg
    : JSON.stringify(arg);
}

/** A RespClient with `@upstash/redis`'s `eval`/`evalsha` signatures and reply parsing. */
export class UpstashShape {
  #client: RespClient;

  /** Wraps `client`; closing this closes it. */
  constructor(client: RespClient) {
    this.#client = client;
  }

  /** Runs `EVAL`, JSON-parsing string replies like `automaticDeserialization`. */
  eval<TArgs extends unknown[], TData = unknown>(
    script: string,
    keys: string[],
    args: TArgs,
  ): Promise<TData> {
    return this.#run("EVAL", script, keys, args);
  }

  /** Runs `EVALSHA`, JSON-parsing string replies like `automaticDeserialization`. */
  evalsha<TArgs extends unknown[], TData = unknown>(
    sha1: string,
    keys: string[],
    args: TArgs,
  ): Promise<TData> {
    return this.#run("EVALSHA", sha1, keys, args);
  }

  /** Closes the wrapped client. */
  close(): void {
    this.#client.close();
  }

  async #run<TData>(
    command: string,
    script: string,
    keys: string[],
    args: unknown[],
  ): Promise<TData> {
    try {
      const reply = await this.#client.send(
        command,
        script,
        keys.length,
        ...keys,
        ...args.map(serialize),
      );
      return deserialize(reply) as TData;
    } catch (error) {
      if (error instanceof RespError) throw new UpstashError(error.message);
      throw error;
    }
  }
}
