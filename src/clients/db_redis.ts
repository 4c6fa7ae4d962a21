import type { ScriptClient } from "../client.ts";
import type { OpenSubscriber } from "../_subscriber.ts";
import { sharedSubscriber } from "../_subscriber.ts";
import { bindWait } from "./_shared.ts";
import { withKind } from "../_client_kind.ts";

/** The part of a `@db/redis` client that deadbolt uses. */
export interface DbRedisClient {
  /** `EVAL` with keys and arguments as arrays. */
  eval(script: string, keys: string[], args: string[]): Promise<unknown>;
  /** `EVALSHA` with keys and arguments as arrays. */
  evalsha(sha1: string, keys: string[], args: string[]): Promise<unknown>;
  /** `WAIT`, for the `waitReplicas` option. */
  wait?(numreplicas: number, timeout: number): Promise<unknown>;
}

/** A `@db/redis` connection deadbolt opens for wake-ups, and closes. */
export interface DbRedisSubscriberClient {
  /** `SUBSCRIBE`: turns this connection into a subscriber. */
  subscribe(...channels: string[]): Promise<DbRedisSubscription>;
  /** Closes the connection. */
  close(): void;
}

/** A `@db/redis` subscription (`RedisSubscription`). */
export interface DbRedisSubscription {
  /** `SUBSCRIBE` to more channels. */
  subscribe(...channels: string[]): Promise<unknown>;
  /** `UNSUBSCRIBE`. */
  unsubscribe(...channels: string[]): Promise<unknown>;
  /** The messages, until the connection closes. */
  receive(): AsyncIterableIterator<{ channel: string; message: string }>;
  /** Closes the connection. */
  close(): void;
}

/** Options of {@linkcode fromDbRedis}. */
export interface DbRedisOptions {
  /**
   * Opens a new connection, as `@db/redis`'s `connect(options)` does, for
   * pub/sub wake-ups: a waiter is then woken as soon as the holder
   * releases. deadbolt opens it while some lock of this process is waited
   * for through this client, and closes it before the call that ended the
   * wait (or `release()`) resolves. Without it, waiters poll with backoff.
   * Open it with `maxRetryCount: 0`: deadbolt opens a new one when it needs
   * one, and one that retries on its own cannot be called off (its retries
   * go on after the wait, with a timer; after a restart of Redis it
   * reconnects and subscribes again though deadbolt closed it).
   * @default {undefined}
   */
  connect?: () => Promise<DbRedisSubscriberClient>;
}

/**
 * Adapts a `@db/redis` (Deno) client. Its `eval(script, keys, args)` already
 * has deadbolt's shape, so passing the client itself works too (waiters
 * then poll with backoff). Through this adapter, `waitReplicas` uses its
 * `wait`, and with `connect` waiters get pub/sub wake-ups over a connection
 * of their own (`@db/redis`'s `subscribe` turns the connection it is called
 * on into a subscriber, so deadbolt never calls it on yours).
 *
 * @param client A connected `@db/redis` client.
 * @param options How to open a connection for wake-ups.
 * @returns A {@linkcode ScriptClient} over it.
 *
 * @example Usage
 * ```ts ignore
 * import { connect } from "jsr:@db/redis";
 * import { fromDbRedis, Lock } from "@deadbolt/deadbolt";
 *
 * const options = { hostname: "127.0.0.1", port: 6379 };
 * const redis = fromDbRedis(await connect(options), {
 *   // Wake waiters as soon as a lock is released; deadbolt reconnects itself.
 *   connect: () => connect({ ...options, maxRetryCount: 0 }),
 * });
 * await using lock = await Lock.acquire(redis, "report");
 * ```
 */
export function fromDbRedis(
  client: DbRedisClient,
  options: DbRedisOptions = {},
): ScriptClient {
  const { connect } = options;
  if (connect !== undefined && typeof connect !== "function") {
    throw new TypeError(
      `Cannot adapt the @db/redis client as 'connect' must be a function: current value is ${typeof connect}`,
    );
  }
  return withKind("db-redis", {
    eval: (script, keys, args) => client.eval(script, keys, args),
    evalsha: (sha1, keys, args) => client.evalsha(sha1, keys, args),
    deadbolt: {
      ...bindWait(client),
      ...(connect && { subscribe: sharedSubscriber(openSubscriber(connect)) }),
    },
  });
}

// @db/redis has plain SUBSCRIBE only; the release script also publishes
// plainly when a waiter is known and nobody got the sharded message.
function openSubscriber(
  connect: () => Promise<DbRedisSubscriberClient>,
): OpenSubscriber {
  return async ({ deliver, fail, signal }) => {
    // A connection that opens after deadbolt stopped wanting it is closed.
    const opening = connect();
    const redis = await new Promise<DbRedisSubscriberClient>(
      (resolve, reject) => {
        const onAbort = () => reject(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
        opening.then((redis) => {
          signal.removeEventListener("abort", onAbort);
          if (signal.aborted) redis.close();
          else resolve(redis);
        }, (error) => {
          signal.removeEventListener("abort", onAbort);
          reject(error);
        });
      },
    );
    // SUBSCRIBE needs a channel, so the subscription starts with the first
    // (later channels wait for it: one subscription, one read loop).
    let subscription: Promise<DbRedisSubscription> | undefined;
    let reading: Promise<void> | undefined;
    const read = async (
      messages: AsyncIterableIterator<{ channel: string; message: string }>,
    ) => {
      try {
        for await (const { channel, message } of messages) {
          deliver(channel, message);
        }
      } catch (error) {
        if (!signal.aborted) fail(error);
      }
    };
    return {
      subscribe: async (channel) => {
        if (subscription) return await (await subscription).subscribe(channel);
        subscription = redis.subscribe(channel);
        reading = read((await subscription).receive());
      },
      unsubscribe: async (channel) =>
        await (await subscription)?.unsubscribe(channel),
      // The subscription lives on this connection: closing it ends both,
      // also while a SUBSCRIBE is unanswered.
      close: async () => {
        redis.close();
        await reading;
      },
    };
  };
}
