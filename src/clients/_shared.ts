/** How long a subscriber's close may take before deadbolt stops waiting. */
const CLOSE_BOUND_MS = 2_000;

/**
 * Binds a client's own `wait(numreplicas, timeout)`, for the `waitReplicas`
 * option; nothing when it has none. ioredis sends every argument it is
 * given, so these clients get exactly two.
 */
export function bindWait(
  client: { wait?(numreplicas: number, timeout: number): Promise<unknown> },
): { wait?(numreplicas: number, timeout: number): Promise<unknown> } {
  if (typeof client.wait !== "function") return {};
  return { wait: (numreplicas, timeout) => client.wait!(numreplicas, timeout) };
}

/**
 * Starts a close with `start`, which calls `ended` once the client library
 * says the connection is gone and returns a cleanup; resolves then, or after
 * 2 s at most (a library that never says so must not hang a release). The
 * bound's timer is cleared either way.
 */
export async function closeWithin(
  start: (ended: () => void) => () => void,
): Promise<void> {
  let ended!: () => void;
  const closed = new Promise<void>((resolve) => ended = resolve);
  const cleanup = start(ended);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<void>((resolve) =>
    timer = setTimeout(resolve, CLOSE_BOUND_MS)
  );
  try {
    await Promise.race([closed, bound]);
  } finally {
    clearTimeout(timer);
    cleanup();
  }
}

/**
 * Connects a wake-up connection with `connect`, calling `cancel` if
 * `signal` aborts meanwhile (the wait ended first); when connecting fails
 * or was called off, closes it with `close` and rejects. A call-off does not
 * wait for `connect()` to settle: a client may leave it pending forever once
 * cancelled (ioredis' Cluster does), and a release would then wait for it.
 */
export async function connectOrClose(
  signal: AbortSignal,
  connect: () => Promise<unknown>,
  cancel: () => void,
  close: () => Promise<void>,
): Promise<void> {
  let onAbort!: () => void;
  const calledOff = new Promise<never>((_, reject) => {
    onAbort = () => {
      cancel();
      reject(signal.reason);
    };
  });
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    signal.throwIfAborted();
    const connecting = connect();
    // Once called off, its outcome no longer matters.
    connecting.catch(() => {});
    await Promise.race([connecting, calledOff]);
    signal.throwIfAborted();
  } catch (error) {
    await close();
    throw error;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}
