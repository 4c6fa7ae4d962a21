/** One subscriber connection, as a client adapter opens it. */
export interface SubscriberConnection {
  /** Subscribes to `channel`. */
  subscribe(channel: string): Promise<unknown>;
  /** Unsubscribes from `channel`. */
  unsubscribe(channel: string): Promise<unknown>;
  /** Closes the connection. */
  close(): Promise<unknown>;
}

/** Opens a subscriber connection that calls `deliver(channel)` per message. */
export type OpenSubscriber = (
  deliver: (channel: string) => void,
) => Promise<SubscriberConnection>;

/**
 * Calls `listener` on every message to `channel`; resolves with a function
 * that stops it. See {@linkcode sharedSubscriber}.
 */
export type Subscribe = (
  channel: string,
  listener: () => void,
) => Promise<() => Promise<void>>;

/**
 * Shares one subscriber connection among every channel a process waits on
 * through one client: opened on the first subscription, closed when the last
 * one ends, so a process that no longer waits holds no extra connection.
 */
export function sharedSubscriber(open: OpenSubscriber): Subscribe {
  const listeners = new Map<string, Set<() => void>>();
  let connection: Promise<SubscriberConnection> | undefined;
  const deliver = (channel: string) => {
    for (const listener of listeners.get(channel) ?? []) listener();
  };
  return async (channel, listener) => {
    let channelListeners = listeners.get(channel);
    const first = !channelListeners;
    if (!channelListeners) listeners.set(channel, channelListeners = new Set());
    channelListeners.add(listener);
    const opened = connection ??= open(deliver);
    let subscribed = !first;
    try {
      if (first) await (await opened).subscribe(channel);
      subscribed = true;
    } catch (error) {
      await stop();
      throw error;
    }
    async function stop(): Promise<void> {
      channelListeners!.delete(listener);
      if (channelListeners!.size > 0) return;
      listeners.delete(channel);
      const current = await opened.catch(() => undefined);
      if (subscribed) await current?.unsubscribe(channel).catch(() => {});
      if (listeners.size === 0 && connection === opened) {
        connection = undefined;
        await current?.close().catch(() => {});
      }
    }
    return stop;
  };
}

/** Subscribe and unsubscribe commands of one kind (plain or sharded). */
export interface ChannelCommands {
  /** `SUBSCRIBE` or `SSUBSCRIBE`. */
  subscribe(channel: string): Promise<unknown>;
  /** `UNSUBSCRIBE` or `SUNSUBSCRIBE`. */
  unsubscribe(channel: string): Promise<unknown>;
}

/**
 * Subscribes with sharded pub/sub (`SSUBSCRIBE`) when the client has it, and
 * with plain `SUBSCRIBE` once the server turns out not to know `SSUBSCRIBE`
 * (Redis 6). The release script makes the same choice when it publishes, so
 * both sides agree on every server; on a cluster, sharded messages reach only
 * the lock's shard instead of every node.
 */
export function shardedFirst(
  sharded: ChannelCommands | undefined,
  plain: ChannelCommands,
): ChannelCommands {
  let preferred = sharded ?? plain;
  const used = new Map<string, ChannelCommands>();
  return {
    async subscribe(channel) {
      const commands = preferred;
      try {
        await commands.subscribe(channel);
        used.set(channel, commands);
      } catch (error) {
        const message = String((error as Error | undefined)?.message);
        if (commands === plain || !/unknown command/i.test(message)) {
          throw error;
        }
        preferred = plain;
        await plain.subscribe(channel);
        used.set(channel, plain);
      }
    },
    async unsubscribe(channel) {
      const commands = used.get(channel);
      used.delete(channel);
      await commands?.unsubscribe(channel);
    },
  };
}
