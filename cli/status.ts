import process from "node:process";
import { Lock, ReadWriteLock, Semaphore } from "../mod.ts";
import type { ReleaseArgs, StatusArgs } from "./args.ts";
import {
  closeRedis,
  connectRedis,
  describeError,
  lockClient,
  RedisUnavailableError,
} from "./connect.ts";
import { ExitCode } from "./exit_codes.ts";
import { formatDuration, Reporter } from "./reporter.ts";

/**
 * `deadbolt status`: prints whether the lock is held and its remaining lease
 * on stdout (never the token). Returns 0 held, 1 free, 69 Redis failing.
 */
export async function statusCommand(args: StatusArgs): Promise<number> {
  if (args.limit !== undefined) return await permitsStatus(args, args.limit);
  if (args.rw) return await readWriteStatus(args);
  const keys = Lock.keys(args.name, { prefix: args.prefix });
  return await withRedis(args, async (redis) => {
    const [ttl, fence] = await Promise.all([
      redis.pttl(keys.lock),
      redis.get(keys.fence),
    ]);
    const lastFence = fence === null ? "" : `; last fence issued ${fence}`;
    const where = args.verbose ? ` (key ${keys.lock})` : "";
    if (ttl === -2) {
      if (!args.quiet) {
        process.stdout.write(
          `lock '${args.name}'${where} is free${lastFence}\n`,
        );
      }
      return ExitCode.NO;
    }
    if (!args.quiet) {
      const lease = ttl === -1
        ? "with no expiry (not set by deadbolt?)"
        : `for another ${formatDuration(ttl)} unless renewed`;
      process.stdout.write(
        `lock '${args.name}'${where} is held ${lease}${lastFence}\n`,
      );
    }
    return ExitCode.OK;
  });
}

/**
 * `deadbolt status --limit <n>`: prints how many of the semaphore's `n`
 * permits are held and when the first lease ends. Returns 0 when all `n`
 * are held (a `run --limit <n>` would wait), 1 when one is free.
 */
async function permitsStatus(args: StatusArgs, limit: number): Promise<number> {
  return await withRedis(args, async (redis) => {
    const { key } = new Semaphore(lockClient(redis), args.name, {
      limit,
      prefix: args.prefix,
    });
    const [time, running] = await Promise.all([
      redis.time(),
      redis.zrange(key, "0", "-1", "WITHSCORES"),
    ]);
    // ioredis 6 gives numbers, ioredis 5 strings.
    const [seconds, micros] = (time as unknown[]).map(Number);
    const now = seconds * 1_000 + Math.floor(micros / 1_000);
    const ends = running.filter((_, i) => i % 2 === 1).map(Number)
      .filter((end) => end > now);
    if (!args.quiet) {
      const where = args.verbose ? ` (key ${key})` : "";
      const first = ends.length === 0
        ? ""
        : `; the first lease ends in ${
          formatDuration(Math.min(...ends) - now)
        }`;
      process.stdout.write(
        `semaphore '${args.name}'${where} has ${ends.length} of ${limit} permits held${first}\n`,
      );
    }
    return ends.length >= limit ? ExitCode.OK : ExitCode.NO;
  });
}

/**
 * `deadbolt status --rw`: prints the read-write lock's readers, its writer
 * and whether a writer waits. Returns 0 when held (by readers or a writer),
 * 1 when free.
 */
async function readWriteStatus(args: StatusArgs): Promise<number> {
  return await withRedis(args, async (redis) => {
    const writerKey = new ReadWriteLock(lockClient(redis), args.name, {
      prefix: args.prefix,
    }).writer().key;
    const [time, readers, writerTtl, waiting] = await Promise.all([
      redis.time(),
      redis.zrange(`${writerKey}:readers`, "0", "-1", "WITHSCORES"),
      redis.pttl(writerKey),
      redis.exists(`${writerKey}:waiting`),
    ]);
    const [seconds, micros] = (time as unknown[]).map(Number);
    const now = seconds * 1_000 + Math.floor(micros / 1_000);
    const reading = readers.filter((_, i) => i % 2 === 1).map(Number)
      .filter((end) => end > now).length;
    const writing = writerTtl !== -2;
    if (!args.quiet) {
      const where = args.verbose ? ` (key ${writerKey})` : "";
      const holders = writing
        ? `held by a writer for another ${
          formatDuration(Math.max(0, writerTtl))
        } unless renewed`
        : reading > 0
        ? `held by ${reading} reader${reading === 1 ? "" : "s"}`
        : "free";
      process.stdout.write(
        `read-write lock '${args.name}'${where} is ${holders}${
          waiting === 1 ? "; a writer waits" : ""
        }\n`,
      );
    }
    return writing || reading > 0 ? ExitCode.OK : ExitCode.NO;
  });
}

/**
 * `deadbolt release`: releases the lock only if `--token` holds it, as the
 * library does (so waiters are woken): it adopts the hold, then releases
 * it. Returns 0 released, 1 not held by that token, 69 Redis failing.
 */
export async function releaseCommand(args: ReleaseArgs): Promise<number> {
  const reporter = new Reporter(process.stderr, args);
  return await withRedis(args, async (redis) => {
    const lock = await Lock.adopt(lockClient(redis), args.name, args.token, {
      prefix: args.prefix,
      autoExtend: false,
    });
    if (lock && await lock.release()) {
      reporter.notice(`released lock '${args.name}'`);
      return ExitCode.OK;
    }
    const held =
      await redis.exists(Lock.keys(args.name, { prefix: args.prefix }).lock) ===
        1;
    reporter.notice(
      held
        ? `lock '${args.name}' is held by another token; left alone`
        : `lock '${args.name}' is not held; nothing to release`,
    );
    return ExitCode.NO;
  });
}

async function withRedis(
  args: StatusArgs | ReleaseArgs,
  use: (redis: Awaited<ReturnType<typeof connectRedis>>) => Promise<number>,
): Promise<number> {
  const reporter = new Reporter(process.stderr, args);
  let redis;
  try {
    redis = await connectRedis(args.redis);
    return await use(redis);
  } catch (error) {
    reporter.error(
      error instanceof RedisUnavailableError
        ? error.message
        : `Redis failed: ${describeError(error)}`,
    );
    return ExitCode.UNAVAILABLE;
  } finally {
    if (redis) await closeRedis(redis);
  }
}
