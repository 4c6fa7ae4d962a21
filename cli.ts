/**
 * The `deadbolt` command: runs a command while holding a distributed lock on
 * Redis, like `flock(1)` across machines. The command starts only once the
 * lock is held; the lease renews while it runs; if the lock is lost anyway,
 * the command's process group is stopped and `deadbolt` exits 79.
 *
 * ```sh
 * # Run the nightly report on one of many cron hosts at a time:
 * deno run -A jsr:@deadbolt/deadbolt/cli run nightly-report --no-wait -- ./report.sh
 *
 * # Wait up to 2 minutes, with a fencing token for the job's writes:
 * deno run -A jsr:@deadbolt/deadbolt/cli run migrate --timeout 2m --fencing -- \
 *   sh -c 'migrate --fence "$DEADBOLT_FENCE"'
 *
 * deno run -A jsr:@deadbolt/deadbolt/cli status nightly-report
 *
 * # Every lock under the prefix, most contended first, refreshed every second:
 * deno run -A jsr:@deadbolt/deadbolt/cli top
 * ```
 *
 * Exit codes: the command's own status (128 + n when signal n ended it);
 * 64 usage error; 69 Redis unreachable; 75 lock busy or `--timeout` ran out;
 * 79 lock lost while the command ran. `deadbolt --help` tells the rest.
 *
 * @module
 */

import process from "node:process";
import denoJson from "./deno.json" with { type: "json" };
import { parseArgs, UsageError } from "./cli/args.ts";
import { describeError } from "./cli/connect.ts";
import { ExitCode } from "./cli/exit_codes.ts";
import { helpText } from "./cli/help.ts";
import { runCommand } from "./cli/run.ts";
import { releaseCommand, statusCommand } from "./cli/status.ts";
import { topCommand } from "./cli/top.ts";

/**
 * Runs `deadbolt` with `args` (the arguments after the program name) and
 * resolves with its exit code; it writes to stdout and stderr and listens
 * for signals while a command runs, but never exits the process itself.
 *
 * @param args The command line, e.g. `["run", "report", "--", "./report.sh"]`.
 * @returns The exit code: the command's own, or 64, 69, 70, 75 or 79.
 *
 * @example Usage
 * ```ts ignore
 * import { main } from "@deadbolt/deadbolt/cli";
 *
 * const code = await main(["status", "nightly-report"]);
 * console.log(code === 0 ? "held" : "free");
 * ```
 */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(args, process.env);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(
      `deadbolt: ${error.message}\nTry 'deadbolt --help' for more.\n`,
    );
    return ExitCode.USAGE;
  }
  try {
    switch (parsed.kind) {
      case "help":
        process.stdout.write(helpText(parsed.command));
        return ExitCode.OK;
      case "version":
        process.stdout.write(`deadbolt ${denoJson.version}\n`);
        return ExitCode.OK;
      case "run":
        return await runCommand(parsed);
      case "status":
        return await statusCommand(parsed);
      case "release":
        return await releaseCommand(parsed);
      case "top":
        return await topCommand(parsed);
    }
  } catch (error) {
    process.stderr.write(
      `deadbolt: internal error (please report it): ${describeError(error)}\n`,
    );
    return ExitCode.INTERNAL;
  }
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
