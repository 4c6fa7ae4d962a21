import assert from "node:assert/strict";

// `deno task test` and `deno task demo` on a machine without redis-server:
// tests/_install.ts installs it as root with apt-get, in one line, or names
// the command. Run against a PATH of stand-in commands in a subprocess.

const INSTALL = new URL("./_install.ts", import.meta.url).href;

async function ensureWithPath(dir: string) {
  const script = `import { ensureRedisServer } from ${JSON.stringify(INSTALL)};
try { await ensureRedisServer(); console.log("ready"); }
catch (error) { console.log(error.name + ": " + error.message); }`;
  const { stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    env: { PATH: dir },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000),
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { stdout: decode(stdout), stderr: decode(stderr) };
}

async function script(dir: string, name: string, body: string) {
  await Deno.writeTextFile(`${dir}/${name}`, `#!/bin/sh\n${body}\n`);
  await Deno.chmod(`${dir}/${name}`, 0o755);
}

Deno.test("without redis-server, ensureRedisServer() installs it with apt-get as root, in one line, or names the command", async () => {
  await using dir = await Deno.makeTempDir({ prefix: "deadbolt-install-" })
    .then((path) => ({
      path,
      [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }),
    }));
  const root = Deno.uid() === 0;
  // A stand-in apt-get that "installs" stand-ins of both commands.
  const log = `${dir.path}/apt-get.log`;
  await script(
    dir.path,
    "apt-get",
    `[ "$1" = --version ] && exit 0
echo "$DEBIAN_FRONTEND $*" >> ${log}
if [ "$1" = install ]; then
  printf '#!/bin/sh\\necho v7\\n' > ${dir.path}/redis-server
  printf '#!/bin/sh\\necho v7\\n' > ${dir.path}/redis-cli
  /bin/chmod 755 ${dir.path}/redis-server ${dir.path}/redis-cli
fi`,
  );
  const run = await ensureWithPath(dir.path);
  if (root) {
    assert.equal(run.stdout, "ready\n");
    assert.equal(
      run.stderr,
      "redis-server is not installed: running `apt-get install -y redis-server redis-tools`\n",
    );
    assert.equal(
      await Deno.readTextFile(log),
      "noninteractive update -qq\nnoninteractive install -y -qq redis-server redis-tools\n",
    );
  } else {
    assert.match(
      run.stdout,
      /^NotFound: .*`sudo apt-get install -y redis-server redis-tools`/,
    );
  }

  // Without apt-get, it says which command installs it.
  await Deno.remove(`${dir.path}/apt-get`);
  await Deno.remove(`${dir.path}/redis-server`).catch(() => {});
  const bare = await ensureWithPath(dir.path);
  assert.match(
    bare.stdout,
    /^NotFound: redis-server is not installed: install it with `(sudo )?apt-get install -y redis-server redis-tools`/,
  );
  assert.equal(bare.stderr, "");
});
