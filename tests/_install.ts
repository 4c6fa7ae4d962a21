/**
 * Makes sure `redis-server` (and `redis-cli`, which builds the test cluster)
 * can run, for `deno task test` and `deno task demo` on a fresh machine: as
 * root on Debian or Ubuntu it installs them with apt-get, saying so in one
 * line; otherwise it fails with the one command that does.
 *
 * @module
 */

const PACKAGES = ["redis-server", "redis-tools"];
const COMMAND = `apt-get install -y ${PACKAGES.join(" ")}`;

let ready: Promise<void> | undefined;

/** Resolves once `redis-server` runs; installs it first where it can. */
export function ensureRedisServer(): Promise<void> {
  return ready ??= ensure().catch((error) => {
    ready = undefined;
    throw error;
  });
}

async function ensure(): Promise<void> {
  if (await runs("redis-server") && await runs("redis-cli")) return;
  const root = Deno.uid?.() === 0;
  if (!root || !await runs("apt-get")) {
    throw new Deno.errors.NotFound(
      `redis-server is not installed: install it with \`${
        root ? "" : "sudo "
      }${COMMAND}\` (Debian, Ubuntu) or your system's package manager`,
    );
  }
  console.error(`redis-server is not installed: running \`${COMMAND}\``);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  for (
    const args of [["update", "-qq"], ["install", "-y", "-qq", ...PACKAGES]]
  ) {
    const { success, stderr } = await new Deno.Command("apt-get", {
      args,
      env,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!success) {
      throw new Error(
        `Cannot install redis-server as \`apt-get ${args.join(" ")}\` failed: ${
          new TextDecoder().decode(stderr).trim().split("\n").at(-1)
        }`,
      );
    }
  }
  if (!await runs("redis-server")) {
    throw new Error("Cannot run redis-server even after installing it");
  }
}

async function runs(command: string): Promise<boolean> {
  try {
    const { success } = await new Deno.Command(command, {
      args: ["--version"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}
