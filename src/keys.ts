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
  /**
   * The processes waiting for the lock, in arrival order:
   * `<prefix>{<name>}:line`, a sorted set of seats (one per process and
   * client) scored by arrival. A free lock goes to the first seat; a holder
   * handing the lock over within its process yields to it after a few
   * handovers. It expires by itself once nobody waits.
   */
  readonly line: string;
  /**
   * When each seat in {@linkcode line} lapses unless its process asks
   * again: `<prefix>{<name>}:seats`, a sorted set scored by Redis' clock
   * (ms), so that a process that died holds nobody up for long.
   */
  readonly seats: string;
}

/** Computes the keys of the lock `name` under `prefix`. */
export function lockKeys(prefix: string, name: string): LockKeys {
  const escaped = name.includes("%") || name.includes("}")
    ? name.replace(/[%}]/g, (c) => c === "%" ? "%25" : "%7D")
    : name;
  const tag = `${prefix}{${escaped}}`;
  return {
    lock: tag,
    fence: `${tag}:fence`,
    released: `${tag}:released`,
    line: `${tag}:line`,
    seats: `${tag}:seats`,
  };
}

const encoder = new TextEncoder();

/**
 * The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag, or of
 * the whole key when it has none, modulo 16384), as `CLUSTER KEYSLOT` gives
 * it. Cluster adapters use it to send `WAIT` to the master that ran the
 * lock's script.
 */
export function keySlot(key: string): number {
  let bytes = encoder.encode(key);
  const open = bytes.indexOf(0x7b); // "{"
  if (open !== -1) {
    const close = bytes.indexOf(0x7d, open + 1); // "}"
    if (close > open + 1) bytes = bytes.subarray(open + 1, close);
  }
  let crc = 0;
  for (const byte of bytes) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit++) {
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
  }
  return crc & 0x3fff;
}
