import process from "node:process";
import { lockKeys } from "../keys.ts";
import { RELEASE } from "../scripts.ts";
import { runScript, toIntegers } from "../_run_script.ts";
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
  const keys = lockKeys(args.prefix, args.name);
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
 * `deadbolt release`: deletes the lock only if `--token` holds it, with the
 * library's own release script (so waiters are woken). Returns 0 released,
 * 1 not held by that token, 69 Redis failing.
 */
export async function releaseCommand(args: ReleaseArgs): Promise<number> {
  const keys = lockKeys(args.prefix, args.name);
  const reporter = new Reporter(process.stderr, args);
  return await withRedis(args, async (redis) => {
    const reply = await runScript(
      lockClient(redis),
      RELEASE,
      [keys.lock, keys.released],
      [args.token],
    );
    const [code] = toIntegers(reply, 1);
    if (code === 1) {
      reporter.notice(`released lock '${args.name}'`);
      return ExitCode.OK;
    }
    reporter.notice(
      code === 0
        ? `lock '${args.name}' is not held; nothing to release`
        : `lock '${args.name}' is held by another token; left alone`,
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
