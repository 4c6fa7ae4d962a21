import type { CrowdWant } from "./_crowd.ts";
import type { TransferReply } from "./_permit_scripts.ts";
import type { LuaScript, Owner } from "./scripts.ts";

// What a kind of hold made of a few scripts (a semaphore's permit, a read
// or a write hold of a read-write lock) gives its `ScriptedStore`.

/** What an acquire script answered, read. */
export type GrantReply =
  | { readonly status: "granted"; readonly fence: number }
  | { readonly status: "busy"; readonly freeIn: number }
  | { readonly status: "wrong type" | "bad fence" };

/** One script call: the script, its keys and its arguments. */
export interface ScriptCall {
  readonly script: LuaScript;
  readonly keys: string[];
  readonly args: string[];
}

/**
 * What a kind of hold does in Redis, for a {@linkcode ScriptedStore}: a
 * semaphore's permit, a read or a write hold of a read-write lock.
 */
export interface HoldScripts {
  /** For messages: `semaphore`, `read lock`, `write lock`. */
  readonly kind: string;
  /** The key whose local line waiters of one process share. */
  readonly lineKey: string;
  /** How many waiters of one process may ask Redis at once. */
  readonly parallel: number;
  /** Whether a release lets every waiter in (readers), not one. */
  readonly wakeAll: boolean;
  /**
   * The line of the other kind of hold on the same lock (a read-write
   * lock's writers for its readers, and back), whose waiters in this
   * process a freed hold may let in too.
   */
  readonly alsoWakes?: string;
  /** The channel a release publishes on, which wakes waiters. */
  readonly channel: string;
  /** The keys a foreign value is reported at (`LockKeyError`). */
  readonly keys: { readonly lock: string; readonly fence: string };
  /**
   * One attempt for `token`; for a waiter (not one attempt), `place` is its
   * process's seat and how long (ms) a place in line (or a waiter's mark)
   * lasts.
   */
  acquire(token: string, place: Place | undefined): ScriptCall;
  /** Takes `seat` out of line, for kinds whose waiters take places in one. */
  leave?(seat: string): ScriptCall;
  /**
   * Hands the hold of `from` to a sleeping waiter of this process, for
   * kinds that can (a semaphore's permit); read with `readTransfer`.
   */
  transfer?(from: string, to: CrowdWant): ScriptCall;
  /** Reads the transfer script's reply. */
  readTransfer?(reply: unknown): TransferReply;
  /** Reads the acquire script's reply. */
  readGrant(reply: unknown): GrantReply;
  /** Renews the hold of `token` to `ttl` ms. */
  extend(token: string, ttl: number): ScriptCall;
  /** Releases the hold of `token`, waking waiters if it freed one. */
  release(token: string): ScriptCall;
  /** Reads an extend or release reply. */
  readOwner(reply: unknown): Owner;
  /** Why a hold is lost, by what `extend` found. */
  lost(owner: Exclude<Owner, "ours">): string;
}

/** A waiter's seat in line, and how long its place lasts (ms). */
export interface Place {
  readonly seat: string;
  readonly ms: number;
}

/** The settings a scripted store uses. */
export interface ScriptedSettings {
  readonly ttl: number;
  readonly fencing: boolean;
  readonly commandTimeout: number;
  /** A semaphore's limit, for a waiter's offer to be handed a permit. */
  readonly limit?: number;
}
