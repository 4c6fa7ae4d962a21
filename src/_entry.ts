import { checkOptionKeys } from "./_validate.ts";
import { type AcquireOptions, NO_OPTIONS } from "./options.ts";

/** What the static entry points (`Lock.acquire`, …) need of a handle. */
interface Acquirable {
  acquire(options: AcquireOptions): Promise<void>;
  tryAcquire(options: Pick<AcquireOptions, "signal">): Promise<boolean>;
}

/** A kind of lock's constructor: `new Kind(client(s), name(s), options)`. */
type Kind<C, N, O, H> = new (client: C, name: N, options: O) => H;

/**
 * Opens a handle of `kind` with `options` (all but `signal`, checked
 * against `keys`) and acquires it: the static `acquire` of every kind of
 * lock.
 */
export async function acquireNew<
  C,
  N,
  O extends AcquireOptions,
  H extends Acquirable,
>(
  kind: Kind<C, N, Omit<O, "signal">, H>,
  client: C,
  name: N,
  options: O,
  keys: readonly string[],
): Promise<H> {
  checkOptionKeys("Cannot lock", options, keys);
  const { signal } = options;
  const handle = new kind(client, name, withoutSignal(options));
  await handle.acquire(signal === undefined ? NO_OPTIONS : { signal });
  return handle;
}

/** The static `tryAcquire` of every kind of lock: the handle, or `null`. */
export async function tryAcquireNew<
  C,
  N,
  O extends Pick<AcquireOptions, "signal">,
  H extends Acquirable,
>(
  kind: Kind<C, N, Omit<O, "signal">, H>,
  client: C,
  name: N,
  options: O,
  keys: readonly string[],
): Promise<H | null> {
  checkOptionKeys("Cannot lock", options, keys);
  const { signal } = options;
  const handle = new kind(client, name, withoutSignal(options));
  return await handle.tryAcquire(signal === undefined ? NO_OPTIONS : { signal })
    ? handle
    : null;
}

// `options` without its `signal`: `options` itself when it has no `signal`
// key (the usual case, which then copies nothing).
function withoutSignal<O extends { signal?: AbortSignal }>(
  options: O,
): Omit<O, "signal"> {
  if (!Object.hasOwn(options, "signal")) return options;
  const { signal: _signal, ...rest } = options;
  return rest;
}
