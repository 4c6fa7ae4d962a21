import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import process from "node:process";
import { ExitCode, signalExitCode } from "./exit_codes.ts";

/** How a command ended. */
export interface CommandExit {
  /** The shell's view of it: the exit status, or 128 + n for signal n. */
  status: number;
  /** The signal that ended it, if one did. */
  signal?: string;
  /** Why it could not start, if it did not (status 126 or 127). */
  error?: string;
}

/**
 * A command running in a session and process group of its own.
 *
 * Why: so that a lost lock (or a forwarded signal) reaches everything the
 * command started, not only its first process — `sh -c 'a; b'` does not pass
 * SIGTERM on to `a`, and a backgrounded grandchild would outlive it. The
 * group is made with `node:child_process`' `detached: true`, which calls
 * `setsid()` in the child on Deno, Node and Bun alike (`Deno.Command` has no
 * such option, and util-linux `setsid` is missing on macOS). The command then
 * has no controlling terminal, like a cron job: it keeps its stdin, stdout
 * and stderr, but Ctrl-C reaches it through `deadbolt`, which forwards it.
 */
export class GroupCommand {
  /** The command's process id, which is also its process group's id. */
  readonly pid: number | undefined;
  /** Settles once the command has exited (or failed to start). */
  readonly exited: Promise<CommandExit>;

  private constructor(pid: number | undefined, exited: Promise<CommandExit>) {
    this.pid = pid;
    this.exited = exited;
  }

  /**
   * Starts `command` with `args`, its stdio inherited from this process.
   * It never throws: a command that cannot start exits 126 or 127.
   */
  static start(
    command: string,
    args: readonly string[],
    env: Record<string, string | undefined>,
  ): GroupCommand {
    const { promise, resolve } = Promise.withResolvers<CommandExit>();
    let child;
    try {
      child = spawn(command, args, { stdio: "inherit", detached: true, env });
    } catch (error) {
      resolve(startFailure(command, error));
      return new GroupCommand(undefined, promise);
    }
    child.once("error", (error) => resolve(startFailure(command, error)));
    child.once("exit", (code, signal) =>
      resolve(
        signal
          ? { status: signalExitCode(signal), signal }
          : { status: code ?? ExitCode.NOT_FOUND },
      ));
    return new GroupCommand(child.pid, promise);
  }

  /**
   * Sends `signal` to every process of the command's group.
   *
   * @returns `false` when the group is gone (or never started).
   */
  signalGroup(signal: string | 0): boolean {
    if (this.pid === undefined) return false;
    try {
      process.kill(-this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Whether any process of the group is still alive. On Linux, zombies do
   * not count: a grandchild whose parent died waits for init to reap it,
   * and in a container whose init does not reap, it would wait forever.
   */
  get groupAlive(): boolean {
    if (this.pid === undefined) return false;
    return livingMembers(this.pid) ?? this.signalGroup(0);
  }
}

/**
 * Whether `/proc` lists a process of group `pgid` that is not a zombie;
 * `undefined` where there is no `/proc` to read.
 */
function livingMembers(pgid: number): boolean | undefined {
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return undefined;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue; // it exited meanwhile
    }
    // "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses.
    const [state, , group] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (Number(group) === pgid && state !== "Z" && state !== "X") return true;
  }
  return false;
}

function startFailure(command: string, error: unknown): CommandExit {
  const code = (error as { code?: string } | undefined)?.code;
  if (code === "ENOENT") {
    return { status: ExitCode.NOT_FOUND, error: `${command}: not found` };
  }
  const reason = code === "EACCES"
    ? "permission denied"
    : String((error as Error | undefined)?.message ?? error);
  return {
    status: ExitCode.CANNOT_EXECUTE,
    error: `${command}: cannot execute: ${reason}`,
  };
}
