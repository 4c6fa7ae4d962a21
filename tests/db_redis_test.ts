import assert from "node:assert/strict";
import { CORE_CASES } from "./_core_cases.ts";
import { startRedis } from "./_redis.ts";
import { runAgainst, startSpareServers } from "./_runtime.ts";

// The real @db/redis cannot be imported from jsr.io here, so these tests run
// only where DEADBOLT_DB_REDIS names a directory that tests/db_redis/setup.sh
// filled with its source, the std files it imports, and an import map.
const SETUP = "tests/db_redis/setup.sh";
const DIR = Deno.env.get("DEADBOLT_DB_REDIS");
const REAL = "tests/db_redis/real.ts";
/** The core cases for both ways of passing the client, plus real.ts's own. */
const EXPECTED = CORE_CASES.length * 2 + 3;

Deno.test({
  name: DIR
    ? `Lock works with the real @db/redis client (${REAL} with ${DIR}/import_map.json)`
    : `Lock works with the real @db/redis client: skipped: set DEADBOLT_DB_REDIS to a directory made by ${SETUP}`,
  ignore: !DIR,
  async fn() {
    const importMap = await Deno.realPath(`${DIR}/import_map.json`).catch(
      (cause) => {
        throw new Error(
          `Cannot run the @db/redis tests as ${DIR}/import_map.json is missing: run ${SETUP} ${DIR} first`,
          { cause },
        );
      },
    );
    await using server = await startRedis();
    // Each fault case kills or stops a server of its own, for both ways.
    await using spares = await startSpareServers(
      CORE_CASES.filter((kase) => kase.needsSpareServer).length * 2,
    );
    // The repo's deno.json (compiler options, sanitizers) applies; the import
    // map adds "@db/redis" and its jsr:@std imports; --no-lock keeps
    // deno.lock untouched. runAgainst kills the run after two minutes.
    const { code, log } = await runAgainst(server.port, Deno.execPath(), [
      "test",
      "--allow-all",
      "--no-lock",
      `--import-map=${importMap}`,
      REAL,
    ], { env: spares.env });
    assert.equal(code, 0, `the @db/redis tests failed:\n${log}`);
    const summary = /^ok \| (\d+) passed \| 0 failed \(/m.exec(log);
    assert.ok(summary, `no plain "ok" summary:\n${log}`);
    assert.equal(Number(summary[1]), EXPECTED, log);
  },
});
