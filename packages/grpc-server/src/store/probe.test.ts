import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Periodic } from '../periodic.js';
import { startStoreProbe } from './probe.js';

/** A store whose pings answer as `next` says: 'ok', 'error', or 'hang' (never settles until `release`). */
function fakeStore() {
  const hanging: Array<() => void> = [];
  const state = { next: 'ok' as 'ok' | 'error' | 'hang', pings: 0 };
  return {
    state,
    release: () => hanging.splice(0).forEach((resolve) => resolve()),
    ping: () => {
      state.pings += 1;
      if (state.next === 'error') return Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:5432'));
      if (state.next === 'hang') return new Promise<void>((resolve) => hanging.push(resolve));
      return Promise.resolve();
    },
  };
}

describe('startStoreProbe', () => {
  let probe: Periodic | undefined;
  afterEach(async () => {
    vi.useRealTimers();
    await probe?.stop();
  });

  it('tells each change only: not ready on an error or no answer within the interval, ready once a ping answers', async () => {
    vi.useFakeTimers();
    const store = fakeStore();
    const changes: Array<[string | null, string | undefined]> = [];
    probe = startStoreProbe(store, 100, (problem, error) => changes.push([problem, (error as Error)?.message]));

    await vi.advanceTimersByTimeAsync(350); // three answered pings: ready all along, nothing told
    expect({ pings: store.state.pings, changes }).toEqual({ pings: 3, changes: [] });

    store.state.next = 'error';
    await vi.advanceTimersByTimeAsync(300);
    expect(changes).toEqual([['the store answered with an error', 'connect ECONNREFUSED 127.0.0.1:5432']]);

    store.state.next = 'ok';
    await vi.advanceTimersByTimeAsync(100);
    expect(changes.at(-1)).toEqual([null, undefined]);

    // A database that stopped answering: the ping hangs. Not ready after the interval, and no second ping is sent
    // while the first is outstanding (it would hold another pooled connection).
    store.state.next = 'hang';
    const before = store.state.pings;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(changes.at(-1)).toEqual(['the store did not answer within 100 ms', undefined]);
    expect(store.state.pings - before).toBe(1);

    // The answer comes at last: ready at the next tick, and pings go on.
    store.state.next = 'ok';
    store.release();
    await vi.advanceTimersByTimeAsync(250);
    expect(changes.at(-1)).toEqual([null, undefined]);
    expect(changes).toHaveLength(4);
    expect(store.state.pings - before).toBeGreaterThan(1);
  });
});
