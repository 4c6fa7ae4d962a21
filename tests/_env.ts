/**
 * The common test environment: a redis-server of the test's own, the
 * `@db/redis` shape over a Deno socket (so the sanitizers see it), and a
 * side connection for checks; disposed of with `await using`.
 *
 * @module
 */

import { type RedisServer, startRedis } from "./_redis.ts";
import { DbRedisShape, type RespClient } from "./_resp.ts";

/** A server, a client for the library and a side connection. */
export interface Env extends AsyncDisposable {
  server: RedisServer;
  redis: DbRedisShape;
  side: RespClient;
}

/** Starts a redis-server and opens the library's client and a side connection. */
export async function redisEnv(): Promise<Env> {
  const server = await startRedis();
  const conn = await server.connect();
  const side = await server.connect();
  const redis = new DbRedisShape(conn);
  return {
    server,
    redis,
    side,
    async [Symbol.asyncDispose]() {
      redis.close();
      await conn.closed;
      await side[Symbol.asyncDispose]();
      await server.stop();
    },
  };
}
