/**
 * The kind of each adapted client (`ioredis`, `node-redis`, …), for
 * telemetry's `deadbolt.client` attribute; `custom` for a client deadbolt
 * did not adapt.
 */
const kinds = new WeakMap<object, string>();

/** Records `client` as an adapter of `kind`, and returns it. */
export function withKind<T extends object>(kind: string, client: T): T {
  kinds.set(client, kind);
  return client;
}

/** The kind `client` was adapted from; `custom` when not known. */
export function clientKind(client: object): string {
  return kinds.get(client) ?? "custom";
}
