/**
 * The delivery engine under a webhook's rate limit (rateLimitPerSecond), against the real SQLite store and a real
 * HTTP receiver: what the limiter's waits do to claims, their leases and the store.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { DeliveryEngine, type EngineOptions } from '../../src/delivery/index.js';
import type { Store } from '../../src/store/types.js';
import { createTestStore, FAST_BACKOFF, message, waitFor } from './engine-fixtures.js';
import { startReceiver, type TestReceiver } from './http-receiver.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function newStore(): Promise<Store> {
  const t = await createTestStore();
  cleanups.push(() => t.dispose());
  return t.store;
}

async function receiver(): Promise<TestReceiver> {
  const r = await startReceiver();
  cleanups.push(() => r.close());
  return r;
}

/** An engine whose debug log lines are kept in `lines`. */
function engine(store: Store, options: Partial<EngineOptions>, lines: string[]): DeliveryEngine {
  const logger = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString('utf8'));
        done();
      },
    }),
  );
  const e = new DeliveryEngine({
    store,
    logger,
    options: { pollIntervalMs: 20, backoff: FAST_BACKOFF, ...options },
  });
  cleanups.push(() => e.stop(200));
  return e;
}

const released = (lines: string[], why: string) =>
  lines.filter((l) => l.includes('"claim released"') && l.includes(`"why":"${why}"`));

describe('DeliveryEngine with a rate-limited webhook', () => {
  it('never gives a claim back as "lease too short" for the time it waited for its turn under the rate', async () => {
    const store = await newStore();
    const r = await receiver();
    await store.upsertWebhook(
      'acc',
      { url: r.url, enabled: true, maxMessagesPerContact: 1000, rateLimitPerSecond: 1 },
      Date.now(),
    );
    await store.publish({ accountId: 'acc', messages: [message('c1'), message('c2')], now: Date.now() });
    const lines: string[] = [];
    // Lease minus request timeout: 2 s, of which #mayStart wants 1 s left at the start. The second delivery's turn is
    // 1 s off: waiting for it (half of the 2 s) left too little lease, so its token was spent on a give-back and it
    // went out with the next one.
    engine(store, { requestTimeoutMs: 1_000, leaseMs: 3_000 }, lines).start();
    await waitFor(() => r.requests.length >= 2, 'both requests', 10_000);

    expect(released(lines, 'lease too short')).toEqual([]);
    expect(new Set(r.requests.map((req) => req.headers['app-inbox-contact']))).toEqual(new Set(['c1', 'c2']));
  });
});
