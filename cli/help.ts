import type { CommandName } from "./args.ts";

const RUN = `deadbolt run <name> [options] -- <command> [args…]

Waits for the lock <name>, runs the command once it is held (no shell unless
--shell), renews the lease while the command runs, releases the lock when the
command exits and exits with its status. If the lock is lost while the command
runs, its process group gets SIGTERM, then SIGKILL after --kill-after, and
deadbolt exits 79.

Options:
  --redis <url>         redis:// or rediss:// (TLS) URL
                        (default: $REDIS_URL, else redis://127.0.0.1:6379)
  --ttl <duration>      lease, renewed every third of it (default 30s)
  --timeout <duration>  give up waiting after this long, exit 75
                        (default: wait until the lock is free)
  -n, --no-wait         one attempt: exit 75 at once if the lock is busy
  --fencing             give the command a fencing token in DEADBOLT_FENCE
  --limit <n>           let up to <n> commands run at once across machines:
                        take one of <n> permits of the semaphore <name>
  --kill-after <dur>    grace between SIGTERM and SIGKILL on loss (default 5s)
  --shell               run <command> with /bin/sh -c; later words are $1…
  --prefix <prefix>     prefix of the lock's Redis keys (default deadbolt:)
  -q, --quiet           print only errors
  -v, --verbose         report waits and handoffs even when not on a terminal

Durations: 500ms, 30s, 1.5s, 2m, 1h; a bare number is milliseconds.
The command gets DEADBOLT_LOCK (the name), DEADBOLT_TOKEN and, with --fencing,
DEADBOLT_FENCE. SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed on to its
process group.`;

const STATUS =
  `deadbolt status <name> [--limit <n> | --rw] [--redis <url>] [--prefix <prefix>] [-q]

Prints whether the lock is held and how long its lease has left (never the
token). Exits 0 when held, 1 when free (-q prints nothing). With --limit <n>:
how many of the semaphore's <n> permits are held; exits 0 when all are.
With --rw: the read-write lock's readers, writer, and whether a writer waits;
exits 0 when held.`;

const RELEASE =
  `deadbolt release <name> --token <token> [--redis <url>] [--prefix <prefix>]

Releases the lock if <token> (the holder's DEADBOLT_TOKEN) still holds it,
and wakes its waiters. Exits 0 when released, 1 when that token does not hold
it (the lock is then left alone). A 'deadbolt run' that loses its lock this
way stops its command and exits 79.`;

const TOP =
  `deadbolt top [--once] [--json] [--interval <duration>] [--redis <url>] [--prefix <prefix>]
             [--count <n>] [--max-keys <n>]

Shows the locks under the prefix that are held or waited for, most contended
first: name, the holder's token (first 8 characters), the last fence issued,
the lease left, the processes in the lock's line in Redis, and the
connections subscribed to its releases (waiters to wake). Refreshes every
--interval (default 1s) until Ctrl-C; --once prints one view, --json prints
JSON (one document per view). On a Cluster, give any node: every master is
scanned. Finds keys with SCAN (COUNT --count, default 500; never KEYS),
walking at most --max-keys keys per server and view (default 100000; the view
then says it is partial), then reads each lock with six commands in one
pipeline. A live view outlives Redis errors (it says so and tries again);
--once exits 69 on one. Exits 0 otherwise.`;

const EXIT_CODES = `Exit codes:
  0-255  the command's own status (128+n when signal n ended it)
  64     usage error (nothing was sent to Redis)
  69     Redis unreachable or failing
  70     internal error (a bug in deadbolt: please report it)
  75     lock busy: --no-wait, or --timeout ran out
  79     lock lost while the command ran (it was stopped)
  126    command not executable; 127 command not found`;

/** The help text of one command, or of `deadbolt` as a whole. */
export function helpText(command?: CommandName): string {
  if (command === "run") return `Usage: ${RUN}\n\n${EXIT_CODES}\n`;
  if (command === "status") return `Usage: ${STATUS}\n`;
  if (command === "release") return `Usage: ${RELEASE}\n`;
  if (command === "top") return `Usage: ${TOP}\n`;
  return `deadbolt: run a command while holding a distributed lock on Redis

Usage: ${RUN}

       ${STATUS}

       ${RELEASE}

       ${TOP}

Other: deadbolt --help, deadbolt <command> --help, deadbolt --version

${EXIT_CODES}
`;
}
