/**
 * The delivery engine under a webhook's rate limit (rateLimitPerSecond), against the real SQLite store and a real
 * HTTP receiver: what the limiter's waits do to claims, their leases and the store.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { DeliveryEngine, type EngineOptions } from '../../src/delivery/index.js';
import type { RateTokenLease, Store } from '../../src/store/types.js';
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

  it('gives back unsent a claim read before a save of its webhook, so that its old rate does not undo the new one', async () => {
    const sqlite = await newStore();
    const r = await receiver();
    const config = { url: r.url, enabled: true, maxMessagesPerContact: 1000 };
    const before = await sqlite.upsertWebhook('acc', { ...config, rateLimitPerSecond: 1 }, Date.now());
    const contacts = Array.from({ length: 10 }, (_, i) => `c${i}`);
    await sqlite.publish({ accountId: 'acc', messages: contacts.map((c) => message(c)), now: Date.now() });
    // The first claim that takes anything reads the webhook at 1 a second, then is held until the test lets it go.
    let read!: () => void;
    const claimRead = new Promise<void>((resolve) => (read = resolve));
    let release!: () => void;
    let gate: Promise<void> | null = new Promise<void>((resolve) => (release = resolve));
    const store = new Proxy(sqlite, {
      get(target, property) {
        if (property === 'claimDue') {
          return async (options: Parameters<Store['claimDue']>[0]) => {
            const taken = await target.claimDue(options);
            const held = gate;
            if (held !== null && taken.length > 0) {
              gate = null;
              read();
              await held;
            }
            return taken;
          };
        }
        const value: unknown = Reflect.get(target, property, target);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const lines: string[] = [];
    // A claim may wait 12.5 s for its turn, as with the default lease: at 1 a second, the 10th would go 9 s later.
    const e = engine(store, { requestTimeoutMs: 1_000, leaseMs: 31_000 }, lines);
    e.start();
    await claimRead;
    const after = await sqlite.upsertWebhook('acc', { ...config, rateLimitPerSecond: 1_000 }, Date.now());
    e.webhookSaved(before, after);
    const saved = Date.now();
    release();
    await waitFor(() => r.requests.length >= contacts.length, 'every request', 15_000);

    expect(Math.max(...r.requests.map((req) => req.at)) - saved).toBeLessThan(4_000);
    expect(released(lines, 'webhook saved since the claim read it')).toHaveLength(contacts.length);
    expect(r.requests.map((req) => req.headers['app-inbox-contact']).sort()).toEqual([...contacts].sort());
  });

  it('keeps a rate-limited endpoint going through failed leases of a shared bucket, with one warning', async () => {
    const sqlite = await newStore();
    const r = await receiver();
    // The store of several processes (PostgreSQL) as the engine sees it: SQLite's, with a shared bucket whose first
    // three leases fail (the database unreachable), then grant what is asked.
    const leases: number[] = [];
    const leaseRateTokens = (_accountId: string, _perSecond: number, want: number): Promise<RateTokenLease> => {
      leases.push(want);
      if (leases.length <= 3) return Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:5432'));
      return Promise.resolve({ granted: want, nextTokenInMs: 0 });
    };
    const store = new Proxy(sqlite, {
      get(target, property) {
        if (property === 'leaseRateTokens') return leaseRateTokens;
        const value: unknown = Reflect.get(target, property, target);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    await store.upsertWebhook(
      'acc',
      { url: r.url, enabled: true, maxMessagesPerContact: 1000, rateLimitPerSecond: 10 },
      Date.now(),
    );
    await store.publish({ accountId: 'acc', messages: [message('c1'), message('c2'), message('c3')], now: Date.now() });
    const lines: string[] = [];
    engine(store, {}, lines).start();
    await waitFor(() => r.requests.length >= 3, 'every request, once the leases succeed', 10_000);

    // Its tokens came from the shared bucket only (the failures retried, not the in-memory bucket).
    expect(leases.length).toBeGreaterThan(3);
    const warnings = lines.filter((l) => l.includes('leasing rate-limit tokens from the store failed'));
    expect(warnings).toHaveLength(1);
    expect(JSON.parse(warnings[0]!)).toMatchObject({ level: 40, accountId: 'acc' });
    expect(new Set(r.requests.map((req) => req.headers['app-inbox-contact']))).toEqual(new Set(['c1', 'c2', 'c3']));
  });
});
