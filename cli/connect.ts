// Loaded when a command first needs Redis: usage errors and --help do not
// pay for it, and the library's docs do not pull in ioredis' Node types.
import type { Redis } from "npm:ioredis@6";
import { fromIoredis, type IoredisClient, type ScriptClient } from "../mod.ts";

/** Redis could not be reached or refused us: `deadbolt` exits 69. */
export class RedisUnavailableError extends Error {
  override name = "RedisUnavailableError";
}

/** How long connecting may take before `deadbolt` gives up, in ms. */
export const CONNECT_TIMEOUT_MS = 3_000;

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.href.replace(/\/$/, "");
  } catch {
    return url;
  }
}

/** One error's message, without a stack trace, on one line. */
export function describeError(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/\s+/g, " ").trim() || String(error);
}

/**
 * Connects an ioredis client that fails fast: the first connection is tried
 * once, within {@linkcode CONNECT_TIMEOUT_MS}, and commands are never queued
 * while disconnected (a renewal must fail, not wait, so the lease can tell).
 * Once connected, a dropped connection is retried in the background.
 *
 * @throws {RedisUnavailableError} when the first connection fails.
 */
export async function connectRedis(url: string): Promise<Redis> {
  const { Redis } = await import("npm:ioredis@6");
  let connected = false;
  let lastError: unknown;
  const redis = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: CONNECT_TIMEOUT_MS,
    retryStrategy: (times: number) =>
      connected ? Math.min(50 * 2 ** times, 1_000) : null,
  });
  // Without a listener ioredis logs every connection error to the console.
  redis.on("error", (error: unknown) => lastError = error);
  try {
    await redis.connect();
    connected = true;
    return redis;
  } catch (error) {
    redis.disconnect();
    throw new RedisUnavailableError(
      `cannot connect to Redis at ${redactUrl(url)}: ${
        describeError(lastError ?? error)
      }`,
      { cause: lastError ?? error },
    );
  }
}

/**
 * The deadbolt client over `redis`. Its pub/sub connection (it wakes a waiter
 * as soon as the holder releases) is a duplicate that deadbolt connects,
 * listens to and closes itself.
 */
export function lockClient(redis: Redis): ScriptClient {
  return fromIoredis(redis as unknown as IoredisClient);
}

/** Closes `redis`, politely if it can within a moment. */
export async function closeRedis(redis: Redis): Promise<void> {
  const timer = setTimeout(() => redis.disconnect(), 500);
  try {
    await redis.quit();
  } catch {
    redis.disconnect();
  } finally {
    clearTimeout(timer);
  }
}
