/**
 * Redis keys of one lock. Every key of a lock carries the same hash tag,
 * `{<encoded name>}`, so on Redis Cluster they share one slot (scripts that
 * touch the lock and its fence counter need that).
 *
 * The name is encoded so that the mapping is injective and the hash tag is
 * the whole name: `%` becomes `%25` and `}` becomes `%7D`. Without that, a
 * name such as `}x` would give the empty tag `{}`, which Redis ignores, and
 * the lock and fence keys would land in different slots.
 */
export interface LockKeys {
  /** The key whose value is the holder's token: `<prefix>{<name>}`. */
  readonly lock: string;
  /** The fence counter, never expired nor deleted: `<prefix>{<name>}:fence`. */
  readonly fence: string;
  /** The pub/sub channel a release publishes on: `<prefix>{<name>}:released`. */
  readonly released: string;
}

/** Computes the keys of the lock `name` under `prefix`. */
export function lockKeys(prefix: string, name: string): LockKeys {
  const tag = `${prefix}{${
    name.replace(/[%}]/g, (c) => c === "%" ? "%25" : "%7D")
  }}`;
  return { lock: tag, fence: `${tag}:fence`, released: `${tag}:released` };
}
