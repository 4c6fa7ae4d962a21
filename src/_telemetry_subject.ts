/**
 * The handle a record is about, for `_telemetry.ts`: its attributes, built
 * once per handle and shared by handles that say the same, and its entry in
 * the waiters gauge.
 */

import { type Attributes, type Shared, waiting } from "./_otel_api.ts";

/** What telemetry says about one handle: its kind, client and (opt-in) name. */
export class Subject {
  /** The kind of lock, as the span names say it: `lock`, `read lock`, … */
  readonly noun: string;
  /** Its entry in the waiters gauge, shared by handles of equal attributes. */
  readonly waiters: Shared;
  #attributes: Attributes;

  /**
   * `kind` and `client` are the `deadbolt.lock.kind` and `deadbolt.client`
   * attributes; `name`, when not empty, is `deadbolt.lock.name`.
   */
  constructor(noun: string, kind: string, client: string, name: string) {
    this.noun = noun;
    this.#attributes = {
      "deadbolt.lock.kind": kind,
      "deadbolt.client": client,
    };
    if (name !== "") this.#attributes["deadbolt.lock.name"] = name;
    const key = JSON.stringify([kind, client, name]);
    let entry = waiting.get(key);
    if (!entry) {
      entry = { attributes: this.#attributes, count: 0, variants: new Map() };
      waiting.set(key, entry);
    }
    this.waiters = entry;
    this.#attributes = entry.attributes;
  }

  /** The handle's attributes, with `extra`. */
  with(extra?: Attributes): Attributes {
    return extra ? { ...this.#attributes, ...extra } : this.#attributes;
  }

  /** The handle's attributes with `key` set to `value`, built once. */
  and(key: string, value: string): Attributes {
    const { variants } = this.waiters;
    const id = `${key}=${value}`;
    let found = variants.get(id);
    if (!found) {
      variants.set(id, found = { ...this.#attributes, [key]: value });
    }
    return found;
  }
}
