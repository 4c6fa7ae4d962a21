import { constants } from "node:os";

/**
 * The exit codes of `deadbolt` that are its own, from sysexits.h where one
 * fits. Any other code is the command's: its exit status, or 128 + n when
 * signal n ended it, as a shell reports it.
 */
export const ExitCode = {
  /** `status`: the lock is held. `release`: released. */
  OK: 0,
  /** `status`: the lock is free. `release`: the token does not hold it. */
  NO: 1,
  /** EX_USAGE: bad arguments; nothing was sent to Redis. */
  USAGE: 64,
  /** EX_UNAVAILABLE: Redis is unreachable or failed a command. */
  UNAVAILABLE: 69,
  /** EX_SOFTWARE: a bug in deadbolt (an error it did not expect). */
  INTERNAL: 70,
  /** EX_TEMPFAIL: the lock stayed busy (`--no-wait`, or `--timeout` ran out). */
  BUSY: 75,
  /** The lock was lost while the command ran; the command was stopped. */
  LOST: 79,
  /** The command was found but could not be executed (shell convention). */
  CANNOT_EXECUTE: 126,
  /** The command was not found (shell convention). */
  NOT_FOUND: 127,
} as const;

/** The number of a signal given by name (`SIGTERM` → 15); 0 when unknown. */
export function signalNumber(signal: string): number {
  return (constants.signals as Record<string, number>)[signal] ?? 0;
}

/** The shell's exit status for a process that signal `signal` ended: 128 + its number. */
export function signalExitCode(signal: string): number {
  return 128 + signalNumber(signal);
}
