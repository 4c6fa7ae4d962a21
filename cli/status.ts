import process from "node:process";
import { Lock } from "../mod.ts";
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
