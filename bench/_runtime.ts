/**
 * What the benchmarks need of their runtime, for Deno and for Node 24 (which
 * runs this TypeScript by stripping its types, with `_node_hooks.mjs`
 * resolving the `npm:` specifiers): arguments, standard input, child
 * processes running another benchmark script, and a label for the report.
 *
 * @module
 */

import process from "node:process";
import { spawn } from "node:child_process";
import { Readable, Writable } from "node:stream";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

/** Whether this is Deno (else Node). */
export const isDeno: boolean = "Deno" in globalThis;

/** The command-line arguments after the script. */
export const args: string[] = isDeno ? Deno.args : process.argv.slice(2);

/** The runtime and its engine, e.g. `Deno 2.9.6 (V8 15.0)`. */
export const runtimeLabel: string = isDeno
  ? `Deno ${Deno.version.deno} (V8 ${Deno.version.v8})`
  : `Node ${process.versions.node} (V8 ${process.versions.v8})`;

/** The operating system and architecture, e.g. `linux x64`. */
export const platform = `${process.platform} ${process.arch}`;

/** This process's standard input. */
export function stdin(): ReadableStream<Uint8Array> {
  return isDeno
    ? Deno.stdin.readable
    : Readable.toWeb(process.stdin) as unknown as ReadableStream<Uint8Array>;
}

/** A benchmark script running as a child process. */
export interface Child {
  readonly stdin: WritableStream<Uint8Array>;
  readonly stdout: ReadableStream<Uint8Array>;
  readonly status: Promise<{ success: boolean; code: number }>;
}

/**
 * Runs the script at `script` in a child process of this runtime (Deno with
 * every permission; Node with this process's flags, so the hooks too), its
 * stdin and stdout piped, its stderr inherited.
 */
export function spawnScript(script: URL, scriptArgs: string[]): Child {
  if (isDeno) {
    // The parent has resolved and locked the pinned packages already; the
    // children leave the lockfile alone rather than all write it.
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-lock", script.href, ...scriptArgs],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    return child;
  }
  const child = spawn(
    process.execPath,
    [...process.execArgv, fileURLToPath(script), ...scriptArgs],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  return {
    stdin: Writable.toWeb(child.stdin!) as unknown as WritableStream<
      Uint8Array
    >,
    stdout: Readable.toWeb(child.stdout!) as unknown as ReadableStream<
      Uint8Array
    >,
    status: new Promise((resolve) =>
      child.on(
        "exit",
        (code) => resolve({ success: code === 0, code: code ?? 1 }),
      )
    ),
  };
}

/** The text of the file at `path`, or "" when it cannot be read. */
export const readText = (path: string): Promise<string> =>
  readFile(path, "utf8").catch(() => "");
