/**
 * The locks under comparison, each behind one small interface so the
 * workloads treat them alike. Shared by `compare.ts` and the handoff worker.
 *
 * Every lock gets the same lease (`TTL`). Each peer runs twice, with its own
 * default retry policy and with a 10 ms retry interval; deadbolt runs with its
 * defaults. redis-semaphore's default retry interval is 10 ms already, so it
 * runs once. Versions are pinned; `npm view <name> version` found them.
 *
 * @module
 */

import { Redis } from "npm:ioredis@6";
import {
  Mutex,
  Semaphore as PeerSemaphore,
  TimeoutError as SemaphoreTimeoutError,
} from "npm:redis-semaphore@5.8.0";
import Redlock, {
  ExecutionError as RedlockExecutionError,
} from "npm:redlock@5.0.0-beta.2";
import {
  ExecutionError as SesameExecutionError,
  Redlock as SesameRedlock,
} from "npm:@sesamecare-oss/redlock@1.4.0";
import {
  createLock,
  IoredisAdapter,
  LockAcquisitionError,
} from "npm:redlock-universal@0.8.5";
import { Lock, LockTimeoutError, Semaphore } from "../../mod.ts";

export { Redis };

/** The lease every lock gets, in ms. */
export const TTL = 10_000;

/** A held lock. */
export interface Held {
  release(): Promise<unknown>;
}

/** One would-be owner of one key: acquires it, again and again. */
export interface Contender {
  /** Waits for the lock with the variant's retry policy; rejects when that policy gives up. */
  acquire(): Promise<Held>;
}

/** One library with one retry policy. */
export interface Variant {
  /** A stable id, used in the worker protocol. */
  id: string;
  /** Library name and version, e.g. `redlock 5.0.0-beta.2`. */
  library: string;
  /** The retry policy, in words. */
  policy: string;
  /** false for deadbolt itself, true for the peers it is compared with. */
  peer: boolean;
  /**
   * The retry interval (without jitter), in ms. Handoff holds are spread
   * over one such interval so that a fixed-period poller's phase relative
   * to the release is uniform, as it would be in the wild.
   */
  interval: number;
  /** Sets the library up on one client; returns a factory of contenders for a key. */
  open(redis: Redis): (key: string) => Contender;
  /** Whether `error` is this library saying that it gave up waiting (a timeout or an exhausted retry count). */
  gaveUp(error: unknown): boolean;
}

// Redlock v5 (and its fork) emit "error" for every refused attempt, and an
// EventEmitter without a listener throws on "error".
const ignore = (): void => {};

function redlockVariant(
  id: string,
  policy: string,
  interval: number,
  settings: Record<string, number>,
): Variant {
  return {
    id,
    library: "redlock 5.0.0-beta.2",
    policy,
    peer: true,
    interval,
    open(redis) {
      // deno-lint-ignore no-explicit-any
      const redlock = new Redlock([redis as any], settings);
      redlock.on("error", ignore);
      return (key) => ({ acquire: () => redlock.acquire([key], TTL) });
    },
    gaveUp: (error) => error instanceof RedlockExecutionError,
  };
}

function sesameVariant(
  id: string,
  policy: string,
  interval: number,
  settings: Record<string, number>,
): Variant {
  return {
    id,
    library: "@sesamecare-oss/redlock 1.4.0",
    policy,
    peer: true,
    interval,
    open(redis) {
      const redlock = new SesameRedlock([redis], settings);
      redlock.on("error", ignore);
      return (key) => ({ acquire: () => redlock.acquire([key], TTL) });
    },
    gaveUp: (error) => error instanceof SesameExecutionError,
  };
}

function universalVariant(
  id: string,
  policy: string,
  interval: number,
  settings: { retryAttempts?: number; retryDelay?: number },
): Variant {
  return {
    id,
    library: "redlock-universal 0.8.5",
    policy,
    peer: true,
    interval,
    open(redis) {
      const adapter = new IoredisAdapter(redis);
      return (key) => {
        const lock = createLock({ adapter, key, ttl: TTL, ...settings });
        return {
          async acquire() {
            const handle = await lock.acquire();
            return { release: () => lock.release(handle) };
          },
        };
      };
    },
    gaveUp: (error) => error instanceof LockAcquisitionError,
  };
}

/** deadbolt, then the peers, in a fixed order (the rounds rotate it). */
export const VARIANTS: readonly Variant[] = [
  {
    id: "deadbolt",
    library: "deadbolt (this repo)",
    policy: "defaults",
    peer: false,
    interval: 10,
    open(redis) {
      return (key) => ({
        acquire: () => Lock.acquire(redis, key, { ttl: TTL }),
      });
    },
    gaveUp: (error) => error instanceof LockTimeoutError,
  },
  {
    id: "semaphore",
    library: "redis-semaphore 5.8.0 (Mutex)",
    policy: "default = 10 ms retry, 10 s acquire timeout",
    peer: true,
    interval: 10,
    open(redis) {
      return (key) => {
        // One Mutex per contender: it holds one identifier and is reusable.
        const mutex = new Mutex(redis, key, { lockTimeout: TTL });
        return {
          async acquire() {
            await mutex.acquire();
            return mutex;
          },
        };
      };
    },
    gaveUp: (error) => error instanceof SemaphoreTimeoutError,
  },
  redlockVariant(
    "redlock",
    "default: 200 ± 100 ms retry, 10 retries",
    200,
    {},
  ),
  redlockVariant("redlock-10", "10 ms retry, no jitter, no retry limit", 10, {
    retryDelay: 10,
    retryJitter: 0,
    retryCount: -1,
  }),
  sesameVariant("sesame", "default: 200 ± 100 ms retry, 10 retries", 200, {}),
  sesameVariant("sesame-10", "10 ms retry, no jitter, no retry limit", 10, {
    retryDelay: 10,
    retryJitter: 0,
    retryCount: -1,
  }),
  universalVariant("universal", "default: 100 ms retry, 3 retries", 100, {}),
  universalVariant(
    "universal-10",
    "10 ms retry, no retry limit",
    10,
    { retryDelay: 10, retryAttempts: Number.MAX_SAFE_INTEGER },
  ),
];

/** How many permits the semaphore rows allow. */
export const LIMIT = 4;

/** deadbolt's and redis-semaphore's semaphores with `limit` permits, ids ending in `suffix`. */
function semaphoreVariants(limit: number, suffix: string): Variant[] {
  return [
    {
      id: `deadbolt-semaphore${suffix}`,
      library: "deadbolt (Semaphore)",
      policy: "defaults",
      peer: false,
      interval: 10,
      open(redis) {
        return (key) => ({
          acquire: () => Semaphore.acquire(redis, key, { ttl: TTL, limit }),
        });
      },
      gaveUp: (error) => error instanceof LockTimeoutError,
    },
    {
      id: `peer-semaphore${suffix}`,
      library: "redis-semaphore 5.8.0 (Semaphore)",
      policy: "default = 10 ms retry, 10 s acquire timeout",
      peer: true,
      interval: 10,
      open(redis) {
        return (key) => {
          const semaphore = new PeerSemaphore(redis, key, limit, {
            lockTimeout: TTL,
          });
          return {
            async acquire() {
              await semaphore.acquire();
              return semaphore;
            },
          };
        };
      },
      gaveUp: (error) => error instanceof SemaphoreTimeoutError,
    },
  ];
}

/** Semaphores (limit {@linkcode LIMIT}), for the semaphore rows. */
export const SEMAPHORE_VARIANTS: Variant[] = semaphoreVariants(LIMIT, "");

/**
 * Semaphores of one permit, for the semaphore handoff rows: a release frees
 * the only permit, which a waiter in another process then gets.
 */
export const HANDOFF_SEMAPHORE_VARIANTS: Variant[] = semaphoreVariants(1, "-1");

// Connections the references below open besides the caller's client.
const opened: Redis[] = [];

/** Closes the connections that the handoff references opened. */
export async function closeOpened(): Promise<void> {
  await Promise.all(opened.splice(0).map((connection) => connection.quit()));
}

/**
 * Calls `listener` on each message to `channel`, on one subscriber
 * connection per client; resolves once subscribed.
 */
function onMessage(
  redis: Redis,
  channel: string,
  listener: (message: string) => void,
): Promise<unknown> {
  const subscriber = redis.duplicate();
  opened.push(subscriber);
  subscriber.on("message", (to: string, message: string) => {
    if (to === channel) listener(message);
  });
  return subscriber.subscribe(channel);
}

/**
 * References for the handoff rows, not locks: the least a handoff by a
 * pub/sub message can cost here, with no lease, no timers and no checks.
 * - `wake-floor`: a release deletes the key and publishes; the waiter,
 *   subscribed, asks again with `SET NX PX` on the message: a notification
 *   and one round trip, the design of deadbolt's own handoff.
 * - `grant-floor`: a waiter turned away queues its token; a release gives the
 *   key to the first token queued and publishes it; the waiter holds the
 *   lock on the message: one notification, the least any handoff by
 *   message can cost (a lock that grants in Redis, as the issue suggests).
 */
export const HANDOFF_REFERENCES: Variant[] = [
  {
    id: "wake-floor",
    library: "no library: woken by a release's PUBLISH, then SET NX PX",
    policy: "reference: one message + one round trip",
    peer: false,
    interval: 0,
    open(redis) {
      const release =
        "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) redis.call('publish', KEYS[2], '') return 1 end return 0";
      return (key) => {
        const channel = `${key}:released`;
        let wake = (): void => {};
        const subscribed = onMessage(redis, channel, () => wake());
        return {
          async acquire() {
            const token = crypto.randomUUID();
            await subscribed;
            for (;;) {
              const woken = new Promise<void>((resolve) => wake = resolve);
              if (await redis.set(key, token, "PX", TTL, "NX") === "OK") {
                return {
                  release: () => redis.eval(release, 2, key, channel, token),
                };
              }
              await woken;
            }
          },
        };
      };
    },
    gaveUp: () => false,
  },
  {
    id: "grant-floor",
    library: "no library: granted in Redis by the release, told by PUBLISH",
    policy: "reference: one message",
    peer: false,
    interval: 0,
    open(redis) {
      const acquire =
        "if redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then return 1 end redis.call('rpush', KEYS[2], ARGV[1]) return 0";
      const release =
        "if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end local next = redis.call('lpop', KEYS[2]) if next then redis.call('set', KEYS[1], next, 'PX', ARGV[2]) redis.call('publish', KEYS[3], next) else redis.call('del', KEYS[1]) end return 1";
      return (key) => {
        const queue = `${key}:queue`;
        const channel = `${key}:granted`;
        const grants = new Map<string, () => void>();
        const subscribed = onMessage(redis, channel, (token) => {
          grants.get(token)?.();
        });
        return {
          async acquire() {
            const token = crypto.randomUUID();
            await subscribed;
            const granted = new Promise<void>((resolve) =>
              grants.set(token, resolve)
            );
            try {
              if (await redis.eval(acquire, 2, key, queue, token, TTL) !== 1) {
                await granted;
              }
            } finally {
              grants.delete(token);
            }
            return {
              release: () =>
                redis.eval(release, 3, key, queue, channel, token, TTL),
            };
          },
        };
      };
    },
    gaveUp: () => false,
  },
];

/** The variant with this id; throws on an unknown id. */
export function variant(id: string): Variant {
  const found = [
    ...VARIANTS,
    ...SEMAPHORE_VARIANTS,
    ...HANDOFF_SEMAPHORE_VARIANTS,
    ...HANDOFF_REFERENCES,
  ].find((v) => v.id === id);
  if (!found) throw new RangeError(`Unknown variant '${id}'`);
  return found;
}

/** Wall-clock ms with sub-ms resolution, comparable across processes on one machine. */
export const clock = (): number => performance.timeOrigin + performance.now();

/** Resolves after `ms`. */
export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

/** The lines of a byte stream, without their line ends. */
export async function* readLines(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<string> {
  let buffer = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    for (let end = buffer.indexOf("\n"); end >= 0; end = buffer.indexOf("\n")) {
      yield buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
    }
  }
  if (buffer) yield buffer;
}
