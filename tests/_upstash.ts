/**
 * A local Upstash REST endpoint over a real redis-server, so that the real
 * `@upstash/redis` client can be tested here (the hosted endpoint is out of
 * reach). It serves what `@upstash/redis` 1.39.0 sends (its pkg/http.ts,
 * pkg/pipeline.ts and pkg/auto-pipeline.ts) as Upstash's REST API documents:
 *
 * - `POST /` with a JSON array `["evalsha", sha1, 1, key, arg]` runs that one
 *   command: HTTP 200 `{"result": …}`, or HTTP 400 `{"error": "<message>"}`
 *   when Redis replies with an error.
 * - `POST /pipeline` with an array of such arrays runs them in order on one
 *   connection: HTTP 200 and an array of `{"result"}` / `{"error"}`. With
 *   auto-pipelining (the client's default) every command comes this way.
 * - `Authorization: Bearer <token>` is required: HTTP 401 otherwise.
 * - `Upstash-Encoding: base64` (the client's default): every string in a
 *   result is sent as base64 of its UTF-8 bytes, except a bare `"OK"`
 *   result; numbers and `null` as they are; errors never encoded.
 *
 * Redis replies map as integer → number, simple/bulk string → string, nil →
 * null, array → array. Not served (404): `/multi-exec` transactions and the
 * event-stream endpoints (`/subscribe`, `/psubscribe`, `/monitor`).
 *
 * @module
 */

import { Redis as Upstash } from "npm:@upstash/redis@1";
import { RespClient, RespError, type RespReply } from "./_resp.ts";

/** A running endpoint from `startUpstash()`; dispose stops it. */
export interface UpstashServer extends AsyncDisposable {
  /** `http://127.0.0.1:<port>`, the client's `url`. */
  readonly url: string;
  /** The bearer token it accepts, the client's `token`. */
  readonly token: string;
  /** HTTP requests answered so far, refused ones included. */
  readonly requests: number;
  /** Names of the Redis commands forwarded so far, lower-cased, in order. */
  readonly commands: readonly string[];
  /** Stops serving (after requests in flight) and closes its Redis connections; idempotent. */
  [Symbol.asyncDispose](): Promise<void>;
}

type Entry = { result: RespReply } | { error: string };

/** Starts an Upstash REST endpoint on a free loopback port for the redis-server on `redisPort`. */
export function startUpstash(redisPort: number): Promise<UpstashServer> {
  const token = crypto.randomUUID();
  const commands: string[] = [];
  const idle: RespClient[] = [];
  let requests = 0;

  // A connection the server closed (e.g. on a restart) leaves the pool.
  async function connect(): Promise<RespClient> {
    const conn = await RespClient.connect(redisPort);
    conn.closed.then(() => {
      const at = idle.indexOf(conn);
      if (at !== -1) idle.splice(at, 1);
    });
    return conn;
  }

  // Runs one command; a connection failure (not an error reply) throws.
  async function run(conn: RespClient, command: unknown[]): Promise<Entry> {
    const [name, ...args] = command.map(String);
    commands.push(name.toLowerCase());
    try {
      return { result: await conn.send(name, ...args) };
    } catch (error) {
      if (error instanceof RespError) return { error: error.message };
      throw error;
    }
  }

  async function handle(request: Request): Promise<Response> {
    requests++;
    if (request.headers.get("authorization") !== `Bearer ${token}`) {
      return Response.json({ error: "Unauthorized" }, { status: 401 });
    }
    const { pathname } = new URL(request.url);
    if (
      request.method !== "POST" ||
      (pathname !== "/" && pathname !== "/pipeline")
    ) {
      const error = `ERR ${request.method} ${pathname} is not served here`;
      return Response.json({ error }, { status: 404 });
    }
    const body: unknown = await request.json().catch(() => undefined);
    const pipeline = pathname === "/pipeline";
    const batch = pipeline ? body : [body];
    if (!Array.isArray(batch) || !batch.every(isCommand)) {
      const error = "ERR the body must be a JSON array of command arrays";
      return Response.json({ error }, { status: 400 });
    }
    const base64 = request.headers.get("upstash-encoding") === "base64";
    let conn: RespClient | undefined;
    let entries: Entry[];
    try {
      conn = idle.pop() ?? await connect();
      // Sent back to back on one connection, so they run in this order.
      entries = await Promise.all(batch.map((command) => run(conn!, command)));
    } catch (error) {
      await conn?.[Symbol.asyncDispose]();
      return Response.json({ error: String(error) }, { status: 500 });
    }
    idle.push(conn);
    const encoded = base64 ? entries.map(encodeEntry) : entries;
    if (pipeline) return Response.json(encoded);
    const [entry] = encoded;
    return Response.json(entry, { status: "error" in entry ? 400 : 200 });
  }

  const listening = Promise.withResolvers<Deno.NetAddr>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: listening.resolve,
  }, handle);
  let disposed: Promise<void> | undefined;
  return listening.promise.then(({ port }) => ({
    url: `http://127.0.0.1:${port}`,
    token,
    get requests() {
      return requests;
    },
    commands,
    [Symbol.asyncDispose]: () =>
      disposed ??= (async () => {
        // shutdown() lets requests in flight finish first.
        await server.shutdown();
        await Promise.all(idle.splice(0).map((c) => c[Symbol.asyncDispose]()));
      })(),
  }));
}

function isCommand(value: unknown): value is unknown[] {
  return Array.isArray(value) && value.length > 0 &&
    value.every((arg) => ["string", "number", "boolean"].includes(typeof arg));
}

function encodeEntry(entry: Entry): Entry {
  if ("error" in entry || entry.result === "OK") return entry;
  return { result: toBase64(entry.result) };
}

function toBase64(value: RespReply): RespReply {
  if (Array.isArray(value)) return value.map(toBase64);
  if (typeof value !== "string") return value;
  let binary = "";
  for (const byte of new TextEncoder().encode(value)) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary);
}

/**
 * The real `@upstash/redis` client against a local endpoint in front of the
 * redis-server on `redisPort`, with `retry: false` so that a refused call
 * fails at once; `close` stops the endpoint.
 */
export async function openUpstash(
  redisPort: number,
): Promise<{ client: Upstash; close(): Promise<void> }> {
  const rest = await startUpstash(redisPort);
  const client = new Upstash({
    url: rest.url,
    token: rest.token,
    retry: false,
  });
  return { client, close: () => rest[Symbol.asyncDispose]() };
}
