import { checkOptionKeys } from "./_validate.ts";
import type { AcquireOptions } from "./options.ts";

/** What the static entry points (`Lock.acquire`, …) need of a handle. */
interface Acquirable {
  acquire(options: AcquireOptions): Promise<void>;
  tryAcquire(options: Pick<AcquireOptions, "signal">): Promise<boolean>;
}

/**
 * Opens a handle with `options` (all but `signal`, checked against
 * `keys`) and acquires it: the static `acquire` of every kind of lock.
 */
export async function acquireNew<
  O extends AcquireOptions,
  H extends Acquirable,
>(
  options: O,
  keys: readonly string[],
  open: (options: Omit<O, "signal">) => H,
): Promise<H> {
  checkOptionKeys("Cannot lock", options, keys);
  const { signal, ...rest } = options;
  const handle = open(rest);
  await handle.acquire({ signal });
  return handle;
}

/** The static `tryAcquire` of every kind of lock: the handle, or `null`. */
export async function tryAcquireNew<
  O extends Pick<AcquireOptions, "signal">,
  H extends Acquirable,
>(
  options: O,
  keys: readonly string[],
  open: (options: Omit<O, "signal">) => H,
): Promise<H | null> {
  checkOptionKeys("Cannot lock", options, keys);
  const { signal, ...rest } = options;
  const handle = open(rest);
  return await handle.tryAcquire({ signal }) ? handle : null;
}
