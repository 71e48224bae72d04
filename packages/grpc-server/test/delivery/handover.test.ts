/**
 * A process that takes its own claim back (its wall clock steps past the lease while a request is out: the
 * engine's clock is stepped here) hands the new claim to the attempt under way instead of sending the delivery
 * beside it: one request, its answer recorded once (engine.ts, `#handOver`). Found by a review of the first
 * version, which handed over only to the latest claim (three claims: the one sending recorded under a stale
 * owner), only once a claim had its endpoint slot (a claim waiting for one was sent again), and let a waiting
 * claim send a stale snapshot after the retry it was handed.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { DeliveryEngine, type EngineOptions } from '../../src/delivery/index.js';
import type { DeliveryOutcome, Store } from '../../src/store/types.js';
import { createTestStore, FAST_BACKOFF, message, sleep, waitFor } from './engine-fixtures.js';
import { startReceiver, type Handler } from './http-receiver.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** A store with one delivery of contact c1 for account `acc`, a receiver, and an engine whose clock can step. */
async function setUp(handler: Handler, options: Partial<EngineOptions> = {}, wrap = (s: Store) => s) {
  const t = await createTestStore();
  cleanups.push(() => t.dispose());
  const store = t.store;
  const r = await startReceiver(handler);
  cleanups.push(() => r.close());
  await store.upsertWebhook('acc', { url: r.url, enabled: true, maxMessagesPerContact: 100 }, Date.now());
  const [d] = (await store.publish({ accountId: 'acc', messages: [message('c1')], now: Date.now() })).deliveries;
  const clock = { offset: 0 };
  const log: string[] = [];
  const logger = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        log.push((JSON.parse(chunk.toString('utf8')) as { msg: string }).msg);
        done();
      },
    }),
  );
  const engine = new DeliveryEngine({
    logger,
    store: wrap(store),
    clock: () => Date.now() + clock.offset,
    options: { pollIntervalMs: 20, requestTimeoutMs: 3_000, leaseMs: 8_000, backoff: FAST_BACKOFF, ...options },
  });
  cleanups.push(() => engine.stop(200));
  engine.start();
  await waitFor(() => r.requests.length >= 1, 'the first request');
  const delivered = () =>
    waitFor(
      async () => {
        const got = await store.getDelivery(d!.deliveryId);
        return got?.delivery.state === 'delivered' ? got : undefined;
      },
      'delivered',
      10_000,
    );
  return { store, r, clock, log, delivered, engine };
}

/** Answers 200 after 1.5 s (within the 3 s request timeout). */
const slowOk: Handler = (_req, res) => {
  setTimeout(() => res.end('ok'), 1_500);
};

describe('a claim taken back by its own process while its request is out', () => {
  it('is handed to the attempt under way: one request, recorded once, even when taken back twice', async () => {
    const { r, clock, log, delivered } = await setUp(slowOk, { leaseMs: 4_000 });
    clock.offset = 10_000; // taken back (claim 2), handed to the attempt under way
    await sleep(300);
    clock.offset = 20_000; // taken back again (claim 3), handed to the same attempt
    const done = await delivered();
    await sleep(300);
    expect({ requests: r.requests.length, attempts: done.attempts.length }, JSON.stringify(log)).toEqual({
      requests: 1,
      attempts: 1,
    });
    expect(log).toContain(
      'claimed again while an attempt of it is under way (its lease ran out in this process): handed to that attempt',
    );
  });

  it('is handed over even when the endpoint has no free slot for it', async () => {
    const { store, r, clock, delivered } = await setUp(slowOk, { perEndpointConcurrency: 2 });
    // Another contact of the account, due once the clock has stepped: it takes the endpoint's last free slot.
    await store.publish({ accountId: 'acc', messages: [message('c2')], now: Date.now() + 3_000 });
    clock.offset = 20_000;
    const done = await delivered();
    await sleep(300);
    const c1 = r.requests.filter((q) => q.headers['app-inbox-contact'] === 'c1');
    expect({ requests: c1.length, attempts: done.attempts.length }).toEqual({ requests: 1, attempts: 1 });
  });

  it('sends the retry of the attempt it was handed to once', async () => {
    let calls = 0;
    // First request: 503 after 1.5 s; every later one: 200 at once.
    const handler: Handler = (_req, res) => {
      calls += 1;
      if (calls > 1) {
        res.end('ok');
        return;
      }
      setTimeout(() => {
        res.statusCode = 503;
        res.end();
      }, 1_500);
    };
    // A slow outcome notification: the retry (due 20 ms after the 503) is claimed before the attempt has ended.
    const slowOutcomes = (store: Store) =>
      new Proxy(store, {
        get(target, property) {
          if (property === 'emitOutcome') {
            return async (outcome: DeliveryOutcome) => {
              await sleep(100);
              return target.emitOutcome(outcome);
            };
          }
          const value = Reflect.get(target, property, target) as unknown;
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
    const { r, clock, delivered } = await setUp(handler, {}, slowOutcomes);
    clock.offset = 20_000;
    const done = await delivered();
    await sleep(300);
    // One 503, then one retry answered 200: two requests, two recorded attempts.
    expect({ requests: r.requests.length, attempts: done.attempts.length }).toEqual({ requests: 2, attempts: 2 });
  });

  it('is handed over, not given back, when stop() begins while the claim is on its way', async () => {
    // The claim that took the delivery back returns just after stop() began. Given back then (as the other claims
    // of that moment are), the delivery was due again in the store with its request still out: another process
    // could send it beside it, and this attempt's outcome was refused (its claim gone) and never recorded.
    const hold: { engine?: DeliveryEngine; stopped?: Promise<void> } = {};
    const stopDuringReclaim = (store: Store) =>
      new Proxy(store, {
        get(target, property) {
          if (property === 'claimDue') {
            return async (options: Parameters<Store['claimDue']>[0]) => {
              const claimed = await target.claimDue(options);
              if (hold.engine !== undefined && claimed.length > 0) hold.stopped ??= hold.engine.stop(5_000);
              return claimed;
            };
          }
          const value = Reflect.get(target, property, target) as unknown;
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
    const { store, r, clock, log, engine } = await setUp(slowOk, { leaseMs: 4_000 }, stopDuringReclaim);
    hold.engine = engine;
    const deliveryId = (await store.listDeliveries({ accountId: 'acc' }, 10, null)).deliveries[0]!.id;
    clock.offset = 10_000; // the next claim takes the delivery back
    await waitFor(() => hold.stopped !== undefined, 'stop() during the claim');
    expect((await store.getDelivery(deliveryId))?.delivery.state, JSON.stringify(log)).toBe('in_flight');
    await hold.stopped;
    const done = await store.getDelivery(deliveryId);
    expect(
      { state: done?.delivery.state, attempts: done?.attempts.length, requests: r.requests.length },
      JSON.stringify(log),
    ).toEqual({ state: 'delivered', attempts: 1, requests: 1 });
  });
});
