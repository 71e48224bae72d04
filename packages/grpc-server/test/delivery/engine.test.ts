/**
 * The delivery engine against the real SQLite store (temp file) and real HTTP receivers on 127.0.0.1.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { StoredMessage } from '@app-inbox/core';
import { createSender, DeliveryEngine, type EngineOptions, type Sender } from '../../src/delivery/index.js';
import type { ClaimedDelivery, ClaimOptions, DeliveryOutcome, Store } from '../../src/store/types.js';
import { createTestStore, FAST_BACKOFF, message, sleep, waitFor } from './engine-fixtures.js';
import { startReceiver, type Handler, type ReceivedRequest, type TestReceiver } from './http-receiver.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function newStore() {
  const t = await createTestStore();
  cleanups.push(() => t.dispose());
  return t.store;
}

async function receiver(handler?: Handler): Promise<TestReceiver> {
  const r = await startReceiver(handler);
  cleanups.push(() => r.close());
  return r;
}

function engine(
  store: Store,
  options: Partial<EngineOptions> = {},
  extra: { sender?: Sender; logger?: pino.Logger } = {},
) {
  const e = new DeliveryEngine({
    store,
    ...extra,
    // An injected sender brings its own request timeout.
    options: {
      pollIntervalMs: 20,
      ...(extra.sender ? {} : { requestTimeoutMs: 3_000 }),
      backoff: FAST_BACKOFF,
      ...options,
    },
  });
  cleanups.push(() => e.stop(200));
  return e;
}

/** `store` with its claimDue replaced by `claimDue`, which is given the real one. */
function withClaimDue(
  store: Store,
  claimDue: (real: Store['claimDue'], options: ClaimOptions) => Promise<ClaimedDelivery[]>,
): Store {
  return new Proxy(store, {
    get(target, prop, receiverObj) {
      if (prop === 'claimDue') return (options: ClaimOptions) => claimDue((o) => target.claimDue(o), options);
      const value = Reflect.get(target, prop, receiverObj) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/** The process warnings emitted from now until the end of the test. */
function captureWarnings(): Error[] {
  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);
  process.on('warning', onWarning);
  cleanups.push(async () => {
    process.off('warning', onWarning);
  });
  return warnings;
}

/** A receiver that answers 503 to its first request and 200 to every other. */
async function receiverFailingOnce(): Promise<TestReceiver> {
  let calls = 0;
  return receiver((_req, res) => {
    calls += 1;
    res.statusCode = calls === 1 ? 503 : 200;
    res.end();
  });
}

async function webhook(store: Store, accountId: string, url: string, extra: { maxMessagesPerContact?: number } = {}) {
  await store.upsertWebhook(
    accountId,
    { url, enabled: true, maxMessagesPerContact: extra.maxMessagesPerContact ?? 1000 },
    Date.now(),
  );
}

async function publish(store: Store, accountId: string, messages: StoredMessage[]) {
  return store.publish({ accountId, messages, now: Date.now() });
}

function collectOutcomes(store: Store): DeliveryOutcome[] {
  const outcomes: DeliveryOutcome[] = [];
  store.onOutcome((o) => outcomes.push(o));
  return outcomes;
}

const ids = (req: ReceivedRequest | undefined): string[] =>
  (JSON.parse(req?.body.toString('utf8') ?? 'null') as Array<{ id: string }>).map((m) => m.id);
const webhookId = (req: ReceivedRequest | undefined) => req?.headers['webhook-id'];

describe('DeliveryEngine', () => {
  it('delivers on 200: one POST of the newest-first list with the delivery id, recorded and announced', async () => {
    const store = await newStore();
    const r = await receiver();
    await store.upsertWebhook(
      'acc',
      {
        url: r.url,
        enabled: true,
        maxMessagesPerContact: 1000,
        auth: { type: 'basic', username: 'u', password: 'pw' },
      },
      Date.now(),
    );
    const older = message('c1');
    const newer = message('c1');
    const published = await publish(store, 'acc', [older, newer]);
    const deliveryId = published.deliveries[0]?.deliveryId;
    const outcomes = collectOutcomes(store);

    engine(store).start();
    const outcome = await waitFor(() => outcomes.find((o) => o.state === 'delivered'), 'a delivered outcome');

    expect(r.requests).toHaveLength(1);
    const [req] = r.requests;
    expect(webhookId(req)).toBe(deliveryId);
    expect(req?.headers['content-type']).toBe('application/json');
    expect(req?.headers['app-inbox-contact']).toBe('c1');
    expect(req?.headers.authorization).toBe(`Basic ${Buffer.from('u:pw').toString('base64')}`);
    expect(ids(req)).toEqual([newer.id, older.id]);
    expect(outcome).toMatchObject({
      deliveryId,
      accountId: 'acc',
      externalCustomerId: 'c1',
      attemptNo: 1,
      statusCode: 200,
    });
    expect(outcome.messageIds).toEqual([newer.id, older.id]);

    const stored = await store.getDelivery(deliveryId ?? '');
    // webhook-timestamp is the attempt's start in whole Unix seconds (Standard Webhooks; a receiver checks it
    // against its own clock and signatures cover it).
    expect(req?.headers['webhook-timestamp']).toBe(String(Math.floor((stored?.attempts[0]?.startedAt ?? 0) / 1000)));
    expect(stored?.delivery.state).toBe('delivered');
    expect(Buffer.from(stored?.delivery.body ?? []).equals(req?.body ?? Buffer.alloc(0))).toBe(true);
    expect(stored?.attempts).toMatchObject([{ attemptNo: 1, statusCode: 200, errorKind: null, verdict: 'delivered' }]);
  });

  it('sends at once on wake() instead of waiting for the poll interval', async () => {
    const store = await newStore();
    const r = await receiver();
    await webhook(store, 'acc', r.url);
    const e = engine(store, { pollIntervalMs: 10_000 });
    e.start();
    await sleep(50); // the lanes have found nothing and sleep for 10 s
    await publish(store, 'acc', [message('c1')]);
    const woke = Date.now();
    e.wake();
    await waitFor(() => r.requests.length === 1, 'the request', 2_000);
    expect(Date.now() - woke).toBeLessThan(2_000);
  });

  it('wakes only the lane with new work: publishes and their attempts cost the idle retry lane no claim', async () => {
    const real = await newStore();
    const r = await receiver();
    await webhook(real, 'acc', r.url);
    const claims = { first: 0, retry: 0 };
    const counting = withClaimDue(real, (claimDue, options) => {
      claims[options.lane] += 1;
      return claimDue(options);
    });
    // Polls 10 s apart: every claim below is a wake's.
    const e = engine(counting, { pollIntervalMs: 10_000, perEndpointConcurrency: 4 });
    e.start();
    await waitFor(() => claims.first === 1 && claims.retry === 1, 'the first claim of each lane');
    for (let i = 0; i < 20; i++) {
      await publish(real, 'acc', [message(`c${i}`)]);
      e.wake('first');
    }
    await waitFor(() => r.requests.length === 20, 'the 20 requests', 5_000);
    expect(claims.retry).toBe(1);
    expect(claims.first).toBeGreaterThan(1);
    // A wake for every lane (a replay, a webhook enabled) still reaches the retry lane. At least one claim, not exactly
    // one: the receiver has the 20 requests, but the engine may still be recording the last attempts, which hold the
    // endpoint's slots; the retry lane's claim then excludes the saturated endpoint and each slot given back wakes it
    // again (by design). Waiting for exactly 2 missed the count going from 1 to 3 or 4 between two looks (1 run in 4
    // with a busy core).
    e.wake();
    await waitFor(() => claims.retry >= 2, 'a retry-lane claim after wake()', 2_000);
  });

  it('sends a retry when its backoff ends, not at the next poll', async () => {
    const store = await newStore();
    const r = await receiverFailingOnce();
    await webhook(store, 'acc', r.url);
    await publish(store, 'acc', [message('c1')]);
    // Polls 10 s apart, backoff 20-40 ms, nothing else published: only the retry's own timer can wake the lane.
    engine(store, { pollIntervalMs: 10_000 }).start();
    await waitFor(() => r.requests.length === 1, 'the first attempt', 2_000);
    await waitFor(() => r.requests.length === 2, 'the retry, well before the next poll', 3_000);
  });

  it("sends a pending delivery that waited for its contact's retry as soon as the retry ends", async () => {
    const store = await newStore();
    let calls = 0;
    const r = await receiver(async (_req, res) => {
      calls += 1;
      if (calls === 2) await sleep(300); // the retry is in flight while c1 gets a new message
      res.statusCode = calls === 1 ? 503 : 200;
      res.end();
    });
    await webhook(store, 'acc', r.url);
    await publish(store, 'acc', [message('c1')]);
    const e = engine(store, { pollIntervalMs: 10_000 });
    e.start();
    await waitFor(() => r.requests.length === 2, 'the retry in flight', 3_000);
    // The first lane's claim skips c1 (a delivery of it is in flight) and finds nothing else.
    await publish(store, 'acc', [message('c1')]);
    e.wake('first');
    await waitFor(() => r.requests.length === 3, 'the new list, well before the next poll', 3_000);
  });

  it.each([
    ['whose claim is on its way', 400],
    ['that last found it saturated', 0],
  ])('tells a lane %s of a slot given back', async (_when, claimDelayMs) => {
    const real = await newStore();
    const r = await receiver(async (_req, res, received) => {
      const [first] = JSON.parse(received.body.toString('utf8')) as Array<{ externalCustomerId: string }>;
      if (first?.externalCustomerId === 'c1') await sleep(300); // c1 holds the endpoint's only slot
      // c2: 503 once, then 200.
      res.statusCode = first?.externalCustomerId === 'c2' && r.requests.length === 1 ? 503 : 200;
      res.end();
    });
    await webhook(real, 'acc', r.url);
    // The retry lane's claims that exclude the (saturated) endpoint take `claimDelayMs`: with 400 ms, c1's slot is
    // given back during one; with 0, after it ended.
    const slowed = withClaimDue(real, async (claimDue, options) => {
      const claimed = await claimDue(options);
      if (options.lane === 'retry' && (options.excludeAccounts?.length ?? 0) > 0) await sleep(claimDelayMs);
      return claimed;
    });
    await publish(real, 'acc', [message('c2')]);
    const e = engine(slowed, {
      pollIntervalMs: 10_000,
      perEndpointConcurrency: 1,
      backoff: { ...FAST_BACKOFF, baseDelayMs: 100 },
    });
    e.start();
    await waitFor(() => r.requests.length === 1, "c2's first attempt", 3_000);
    await sleep(30);
    await publish(real, 'acc', [message('c1')]);
    e.wake('first');
    await waitFor(() => r.requests.length === 3, "c2's retry, well before the next poll", 4_000);
  });

  it('sends each of several retries when its own backoff ends', async () => {
    const store = await newStore();
    const seen = new Set<string>();
    const r = await receiver((_req, res, received) => {
      const [first] = JSON.parse(received.body.toString('utf8')) as Array<{ externalCustomerId: string }>;
      const contact = first?.externalCustomerId ?? '';
      // Each contact: 503 once, then 200.
      res.statusCode = seen.has(contact) ? 200 : 503;
      seen.add(contact);
      res.end();
    });
    await webhook(store, 'acc', r.url);
    const e = engine(store, { pollIntervalMs: 10_000, backoff: { ...FAST_BACKOFF, baseDelayMs: 100 } });
    e.start();
    await publish(store, 'acc', [message('c1')]);
    e.wake('first');
    await waitFor(() => r.requests.length === 1, "c1's first attempt", 3_000);
    await sleep(60); // c2's retry falls due after c1's
    await publish(store, 'acc', [message('c2')]);
    e.wake('first');
    await waitFor(() => r.requests.length === 4, 'both retries, well before the next poll', 4_000);
  });

  it('retries a 503 and then delivers the same bytes with the same webhook-id', async () => {
    const store = await newStore();
    const r = await receiverFailingOnce();
    await webhook(store, 'acc', r.url);
    const published = await publish(store, 'acc', [message('c1'), message('c1')]);
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    const outcomes = collectOutcomes(store);

    engine(store).start();
    await waitFor(() => outcomes.find((o) => o.state === 'delivered'), 'delivered');

    expect(r.requests).toHaveLength(2);
    expect(r.requests.map(webhookId)).toEqual([deliveryId, deliveryId]);
    expect(r.requests[1]?.body.equals(r.requests[0]?.body ?? Buffer.alloc(0))).toBe(true);
    expect(outcomes.map((o) => [o.state, o.attemptNo, o.statusCode])).toEqual([
      ['retrying', 1, 503],
      ['delivered', 2, 200],
    ]);
    const stored = await store.getDelivery(deliveryId);
    expect(stored?.attempts.map((a) => [a.statusCode, a.verdict])).toEqual([
      [503, 'retry'],
      [200, 'delivered'],
    ]);
    expect(stored?.attempts[0]?.nextAttemptAt).toBeGreaterThan(stored?.attempts[0]?.startedAt ?? Infinity);
  });

  it('retries a timeout and a reset connection, recording their error kinds', async () => {
    const store = await newStore();
    let calls = 0;
    const r = await receiver((req, res) => {
      calls += 1;
      if (calls === 1) return; // hang past the request timeout
      if (calls === 2) {
        req.socket.destroy();
        return;
      }
      res.end();
    });
    await webhook(store, 'acc', r.url);
    const published = await publish(store, 'acc', [message('c1')]);
    const outcomes = collectOutcomes(store);
    engine(store, { requestTimeoutMs: 300 }).start();
    await waitFor(() => outcomes.find((o) => o.state === 'delivered'), 'delivered');
    const stored = await store.getDelivery(published.deliveries[0]?.deliveryId ?? '');
    expect(stored?.attempts.map((a) => [a.errorKind, a.statusCode, a.verdict])).toEqual([
      ['timeout', null, 'retry'],
      ['reset', null, 'retry'],
      [null, 200, 'delivered'],
    ]);
    expect(new Set(r.requests.map(webhookId)).size).toBe(1);
  });

  it('fails a 400 without retrying and keeps the body for replay', async () => {
    const store = await newStore();
    const r = await receiver((_req, res) => {
      res.statusCode = 400;
      res.end('bad');
    });
    await webhook(store, 'acc', r.url);
    const published = await publish(store, 'acc', [message('c1')]);
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    const outcomes = collectOutcomes(store);

    engine(store).start();
    await waitFor(() => outcomes.find((o) => o.state === 'failed'), 'failed');
    await sleep(300); // many backoff periods of 20 ms: a retry would have happened
    expect(r.requests).toHaveLength(1);
    const stored = await store.getDelivery(deliveryId);
    expect(stored?.delivery.state).toBe('failed');
    expect(stored?.delivery.nextAttemptAt).toBeNull();
    expect(Buffer.from(stored?.delivery.body ?? []).equals(r.requests[0]?.body ?? Buffer.alloc(0))).toBe(true);
    expect(stored?.attempts).toMatchObject([{ statusCode: 400, verdict: 'failed', nextAttemptAt: null }]);
  });

  it('fails a retryable delivery once it runs out of attempts', async () => {
    const store = await newStore();
    const r = await receiver((_req, res) => {
      res.statusCode = 500;
      res.end();
    });
    await webhook(store, 'acc', r.url);
    const published = await publish(store, 'acc', [message('c1')]);
    const outcomes = collectOutcomes(store);
    engine(store, { backoff: { ...FAST_BACKOFF, maxAttempts: 3 } }).start();
    await waitFor(() => outcomes.find((o) => o.state === 'failed'), 'failed');
    await sleep(150);
    expect(r.requests).toHaveLength(3);
    const stored = await store.getDelivery(published.deliveries[0]?.deliveryId ?? '');
    expect(stored?.attempts.map((a) => a.verdict)).toEqual(['retry', 'retry', 'failed']);
  });

  it('gives up once the next retry would start more than maxAgeMs after the FIRST attempt', async () => {
    const store = await newStore();
    const r = await receiver((_req, res) => {
      res.statusCode = 500;
      res.end();
    });
    await webhook(store, 'acc', r.url);
    const published = await publish(store, 'acc', [message('c1')]);
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    const outcomes = collectOutcomes(store);
    // Retries every 150 ms, at most 400 ms after the first attempt: three or so attempts, far from maxAttempts.
    const backoff = { ...FAST_BACKOFF, baseDelayMs: 150, maxDelayMs: 150, maxAttempts: 50, maxAgeMs: 400 };
    engine(store, { backoff }).start();
    await waitFor(() => outcomes.find((o) => o.state === 'failed'), 'failed for age');

    const stored = await store.getDelivery(deliveryId);
    expect(stored?.delivery.lastError).toBe('max_age:http_500');
    const attempts = stored?.attempts ?? [];
    // At most three fit in 400 ms (fewer on a slow machine); with the age counted from each attempt it would be 50.
    expect(attempts.length).toBeGreaterThanOrEqual(1);
    expect(attempts.length).toBeLessThanOrEqual(3);
    // The age counts from the first attempt, not from the latest one: no retry was scheduled later than 400 ms
    // after it (a retry may start a little after its due time, so the due times are what is checked).
    const first = attempts[0]?.startedAt ?? 0;
    for (const a of attempts.slice(0, -1)) expect((a.nextAttemptAt ?? Infinity) - first).toBeLessThanOrEqual(400);
    expect(attempts.at(-1)).toMatchObject({ verdict: 'failed', nextAttemptAt: null });
  });

  it('coalesces publishes made before the engine runs into one request per contact', async () => {
    const store = await newStore();
    const r = await receiver();
    await webhook(store, 'acc', r.url);
    const a1 = message('a');
    const a2 = message('a');
    const b1 = message('b');
    const a3 = message('a');
    await publish(store, 'acc', [a1]);
    await publish(store, 'acc', [a2, b1]);
    await publish(store, 'acc', [a3]);
    const outcomes = collectOutcomes(store);

    engine(store).start();
    await waitFor(() => outcomes.filter((o) => o.state === 'delivered').length === 2, 'two deliveries');
    await sleep(100);
    expect(r.requests).toHaveLength(2);
    const byContact = new Map(r.requests.map((q) => [ids(q).length, ids(q)]));
    expect(byContact.get(3)).toEqual([a3.id, a2.id, a1.id]);
    expect(byContact.get(1)).toEqual([b1.id]);
  });

  it('caps the list at maxMessagesPerContact, newest first', async () => {
    const store = await newStore();
    const r = await receiver();
    await webhook(store, 'acc', r.url, { maxMessagesPerContact: 2 });
    const msgs = [message('c'), message('c'), message('c')];
    await publish(store, 'acc', msgs);
    engine(store).start();
    await waitFor(() => r.requests.length === 1, 'the request');
    expect(ids(r.requests[0])).toEqual([msgs[2]?.id, msgs[1]?.id]);
  });

  it('sends an empty list to a contact with no available messages, naming the contact in a header', async () => {
    const store = await newStore();
    const r = await receiver();
    await webhook(store, 'acc', r.url);
    const [delivery] = await store.resync('acc', ['ghost of Zoë'], Date.now());
    const outcomes = collectOutcomes(store);
    engine(store).start();
    const outcome = await waitFor(() => outcomes.find((o) => o.state === 'delivered'), 'delivered');
    expect(r.requests[0]?.body.toString('utf8')).toBe('[]');
    expect(webhookId(r.requests[0])).toBe(delivery?.deliveryId);
    // The body names nobody: without the header a receiver could not tell whose copy to empty.
    expect(r.requests[0]?.headers['app-inbox-contact']).toBe('ghost%20of%20Zo%C3%AB');
    expect(outcome.messageIds).toEqual([]);
  });

  it('never sends an older list after a newer one: a retrying delivery is superseded', async () => {
    const store = await newStore();
    let firstId: string | undefined;
    const r = await receiver((req, res) => {
      // The first delivery is refused for as long as it is sent; the newer one is accepted.
      firstId ??= req.headers['webhook-id'] as string;
      res.statusCode = req.headers['webhook-id'] === firstId ? 503 : 200;
      res.end();
    });
    await webhook(store, 'acc', r.url);
    const m1 = message('c1');
    const first = await publish(store, 'acc', [m1]);
    const d1 = first.deliveries[0]?.deliveryId ?? '';
    const outcomes = collectOutcomes(store);
    engine(store).start();
    await waitFor(() => r.requests.length >= 3, 'a few retries of the first delivery');

    const m2 = message('c1');
    const second = await publish(store, 'acc', [m2]);
    const d2 = second.deliveries[0]?.deliveryId ?? '';
    expect(d2).not.toBe(d1);
    await waitFor(() => outcomes.find((o) => o.deliveryId === d2 && o.state === 'delivered'), 'the newer delivered');
    await sleep(200); // time for many 20 ms retries, were the old one still alive

    const firstNewer = r.requests.findIndex((q) => webhookId(q) === d2);
    expect(firstNewer).toBeGreaterThan(0);
    expect(r.requests.slice(0, firstNewer).every((q) => webhookId(q) === d1)).toBe(true);
    expect(r.requests.slice(firstNewer).map(webhookId)).toEqual([d2]);
    expect(ids(r.requests[firstNewer])).toEqual([m2.id, m1.id]);
    expect((await store.getDelivery(d1))?.delivery.state).toBe('superseded');
  });

  it('keeps a fast endpoint fast while another endpoint hangs', async () => {
    const store = await newStore();
    const slow = await receiver(() => {
      // hangs: answers nothing until the test ends
    });
    const fast = await receiver();
    await webhook(store, 'slow', slow.url);
    await webhook(store, 'fast', fast.url);
    // The slow account's deliveries are due first and outnumber every budget.
    await publish(
      store,
      'slow',
      Array.from({ length: 20 }, (_, i) => message(`s${i}`)),
    );
    await sleep(5);
    await publish(
      store,
      'fast',
      Array.from({ length: 20 }, (_, i) => message(`f${i}`)),
    );

    // Room for many connections per origin, so that only the engine's isolation protects the fast endpoint.
    const sender = createSender({ requestTimeoutMs: 8_000, connectionsPerOrigin: 64 });
    cleanups.push(() => sender.close());
    const started = Date.now();
    engine(store, { perEndpointConcurrency: 4, firstLaneConcurrency: 8, claimBatch: 8 }, { sender }).start();
    await waitFor(() => fast.requests.length === 20, 'every fast delivery', 2_000);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(slow.maxActive).toBeLessThanOrEqual(4);
    expect(slow.requests.length).toBeGreaterThan(0);
  });

  it('keeps an endpoint fast while as many endpoints hang as would fill the lane', async () => {
    const store = await newStore();
    const hanging = await receiver(() => {
      // hangs: answers nothing until the test ends
    });
    const fast = await receiver();
    // Four accounts whose endpoint hangs, two slots each: together every slot of the first lane (8).
    for (const account of ['h1', 'h2', 'h3', 'h4']) {
      await webhook(store, account, `${hanging.url}/${account}`);
      await publish(
        store,
        account,
        Array.from({ length: 4 }, (_, i) => message(`${account}-${i}`)),
      );
    }
    await webhook(store, 'fast', fast.url);
    const sender = createSender({ requestTimeoutMs: 8_000, connectionsPerOrigin: 64 });
    cleanups.push(() => sender.close());
    engine(
      store,
      { perEndpointConcurrency: 2, firstLaneConcurrency: 8, claimBatch: 8, slowAttemptMs: 200 },
      { sender },
    ).start();
    await waitFor(() => hanging.requests.length === 8, 'every slot taken by a hanging endpoint', 2_000);

    // Published once the lane is full of hanging attempts: sent once they have run slowAttemptMs, not after
    // the request timeout (8 s) ends them.
    const started = Date.now();
    await publish(store, 'fast', [message('f1')]);
    await waitFor(() => fast.requests.length === 1, 'the fast delivery', 3_000);
    expect(Date.now() - started).toBeLessThan(3_000);
    // Each hanging endpoint still has at most its own two requests.
    expect(hanging.maxActive).toBe(8);
  });

  it('has at most four times the lane concurrency in flight, slow attempts included', async () => {
    const store = await newStore();
    const hanging = await receiver(() => {
      // hangs: answers nothing until the test ends
    });
    const accounts = Array.from({ length: 10 }, (_, i) => `h${i}`);
    for (const account of accounts) {
      await webhook(store, account, `${hanging.url}/${account}`);
      await publish(store, account, [message(`${account}-a`), message(`${account}-b`)]);
    }
    const sender = createSender({ requestTimeoutMs: 8_000, connectionsPerOrigin: 64 });
    cleanups.push(() => sender.close());
    const e = engine(store, { perEndpointConcurrency: 2, firstLaneConcurrency: 2, slowAttemptMs: 50 }, { sender });
    e.start();
    // 20 deliveries of 10 endpoints that hang: every 50 ms two more slots free up, until the cap (2 x 4).
    await waitFor(() => hanging.requests.length === 8, 'the lane at its cap', 3_000);
    await sleep(300);
    expect(hanging.requests).toHaveLength(8);
    expect(e.activity).toMatchObject({ firstLaneBusy: 0, slow: 8 });
  });

  it('keeps an endpoint fast while another account on the same host hangs', async () => {
    const store = await newStore();
    // One server for both accounts (one origin): /slow never answers, /fast answers at once.
    const host = await receiver((request, response) => {
      if (request.url === '/fast') response.end('ok');
    });
    const origin = `http://127.0.0.1:${host.port}`;
    await webhook(store, 'slow', `${origin}/slow`);
    await webhook(store, 'fast', `${origin}/fast`);
    await publish(store, 'slow', [message('s1'), message('s2')]);
    await sleep(5);
    const { deliveries } = await publish(store, 'fast', [message('f1')]);
    // The engine's own sender, as the server's: the slow account fills its two slots, and so would every
    // connection to the host if the sender capped them per origin.
    engine(store, { perEndpointConcurrency: 2, requestTimeoutMs: 1_000 }).start();
    const fast = await waitFor(
      async () => {
        const found = await store.getDelivery(deliveries[0]!.deliveryId);
        return found !== null && found.attempts.length > 0 ? found : undefined;
      },
      'the first attempt of the fast account',
      5_000,
    );
    expect(fast.attempts[0]).toMatchObject({ attemptNo: 1, statusCode: 200, verdict: 'delivered' });
    expect(host.requests.filter((r) => r.path === '/slow')).toHaveLength(2);
  });

  it('keeps first attempts of one account on time during a retry storm on another', async () => {
    const store = await newStore();
    let slow = false;
    const storm = await receiver((_req, res) => {
      setTimeout(
        () => {
          res.statusCode = 503;
          res.end();
        },
        slow ? 600 : 0,
      );
    });
    const calm = await receiver();
    await webhook(store, 'storm', storm.url);
    await webhook(store, 'calm', calm.url);
    await publish(
      store,
      'storm',
      Array.from({ length: 40 }, (_, i) => message(`s${i}`)),
    );
    engine(store, {
      perEndpointConcurrency: 16,
      firstLaneConcurrency: 4,
      retryLaneConcurrency: 4,
      backoff: { ...FAST_BACKOFF, baseDelayMs: 1, maxDelayMs: 5, maxAttempts: 1000 },
    }).start();
    // Every storm delivery has failed at least once and is being retried continuously; from now on each
    // retry takes 600 ms, so the backlog of due retries is seconds long.
    await waitFor(
      () => new Set(storm.requests.map(webhookId)).size === 40 && storm.requests.length >= 80,
      'a retry storm',
      10_000,
    );
    slow = true;
    await sleep(50);

    const published = Date.now();
    const stormBefore = storm.requests.length;
    await publish(
      store,
      'calm',
      Array.from({ length: 10 }, (_, i) => message(`c${i}`)),
    );
    await waitFor(() => calm.requests.length === 10, 'every calm first attempt', 2_500);
    const took = Math.max(...calm.requests.map((q) => q.at)) - published;
    // Behind the due retries (each 600 ms, 4 at a time: 40 of them) they would take 6 s; in their own lane they go
    // out at once, while the storm goes on (its retries are still being answered). 2.5 s: room for a loaded machine.
    expect(took).toBeLessThan(2_500);
    expect(storm.active).toBeGreaterThan(0);
    expect(storm.requests.length).toBeGreaterThanOrEqual(stormBefore);
  });

  it('gives back, unsent, a claim with less lease left than the request timeout plus its margin', async () => {
    const real = await newStore();
    let claimsOfIt = 0;
    const claimsWhenSent: number[] = [];
    const r = await receiver((_req, res) => {
      claimsWhenSent.push(claimsOfIt);
      res.end();
    });
    await webhook(real, 'acc', r.url);
    await publish(real, 'acc', [message('c1')]);
    // The first claim comes back with 2 s of lease left: more than the 1 s request timeout, less than that plus
    // the margin (min(5 s, (lease - timeout) / 2) = 5 s). The lease could run out while the request is on its way.
    const shortened = withClaimDue(real, async (claimDue, options) => {
      const claims = await claimDue(options);
      return claims.map((claim) => {
        claimsOfIt += 1;
        return claimsOfIt === 1 ? { ...claim, leaseUntil: options.now + 2_000 } : claim;
      });
    });
    const outcomes = collectOutcomes(real);
    engine(shortened, { requestTimeoutMs: 1_000, leaseMs: 31_000 }).start();
    await waitFor(() => outcomes.find((o) => o.state === 'delivered'), 'delivered');
    // Sent once, under the second claim: the first was given back (due again at once), not sent.
    expect(claimsWhenSent).toEqual([2]);
    expect(outcomes.map((o) => [o.state, o.attemptNo])).toEqual([['delivered', 1]]);
  });

  it('never has more than perEndpointConcurrency attempts in flight to one endpoint', async () => {
    const store = await newStore();
    const r = await receiver((_req, res) => {
      setTimeout(() => res.end(), 40);
    });
    await webhook(store, 'acc', r.url);
    await publish(
      store,
      'acc',
      Array.from({ length: 15 }, (_, i) => message(`c${i}`)),
    );
    // A sender with room for many connections, so that only the engine's limiter can hold the line.
    const sender = createSender({ requestTimeoutMs: 3_000, connectionsPerOrigin: 32 });
    cleanups.push(() => sender.close());
    const outcomes = collectOutcomes(store);
    engine(store, { perEndpointConcurrency: 3 }, { sender }).start();
    await waitFor(() => outcomes.filter((o) => o.state === 'delivered').length === 15, 'all delivered');
    expect(r.maxActive).toBe(3);
  });

  describe('bodies in memory (maxBodyBytesInMemory)', () => {
    /** A message of about 60 KB (its customData): ten make a body of about 600 KB. */
    const bulky = (contact: string) => message(contact, { customData: JSON.stringify({ blob: 'x'.repeat(60_000) }) });
    const MiB = 1024 * 1024;

    async function largeLists(contacts: number, answer: Handler) {
      const store = await newStore();
      const r = await receiver(answer);
      await webhook(store, 'acc', r.url);
      for (let c = 0; c < contacts; c++) {
        await publish(
          store,
          'acc',
          Array.from({ length: 10 }, () => bulky(`c${c}`)),
        );
      }
      const sender = createSender({ requestTimeoutMs: 5_000, connectionsPerOrigin: 32 });
      cleanups.push(() => sender.close());
      return { store, r, sender, outcomes: collectOutcomes(store) };
    }

    it('builds no new body while the attempts under way hold the budget, then sends the rest', async () => {
      // Requests are held until released: what is in flight is what the engine let out.
      const held: Array<() => void> = [];
      const { store, r, sender, outcomes } = await largeLists(5, (_req, res) => held.push(() => res.end()));
      engine(store, { perEndpointConcurrency: 16, maxBodyBytesInMemory: MiB }, { sender }).start();
      // The first body (~600 KB) leaves room, the second fills the budget: two in flight, not five.
      await waitFor(() => r.requests.length === 2, 'two large bodies in flight');
      await sleep(300);
      expect(r.requests).toHaveLength(2);
      expect(r.requests.every((q) => q.body.length > 500_000)).toBe(true);
      // Each answer frees room for the next body.
      for (let sent = 2; sent < 5; sent++) {
        held.shift()?.();
        await waitFor(() => r.requests.length === sent + 1, `body ${sent + 1} sent`);
      }
      for (const release of held.splice(0)) release();
      await waitFor(() => outcomes.filter((o) => o.state === 'delivered').length === 5, 'all delivered');
      expect(r.maxActive).toBe(2);
    });

    it('lets one attempt through however large its body, and bounds retries (frozen bodies) too', async () => {
      let calls = 0;
      // Each contact's first attempt gets a 503; its retry (the same ~600 KB, read with the claim) is held.
      const held: Array<() => void> = [];
      const { store, r, sender, outcomes } = await largeLists(4, (_req, res) => {
        calls += 1;
        if (calls <= 4) {
          res.statusCode = 503;
          res.end();
        } else {
          held.push(() => res.end());
        }
      });
      // A budget smaller than one body: one attempt at a time, first attempts and retries alike.
      engine(store, { perEndpointConcurrency: 16, maxBodyBytesInMemory: 100_000 }, { sender }).start();
      await waitFor(() => r.requests.length === 5, 'four 503s, then the first retry');
      await sleep(300);
      expect(r.requests).toHaveLength(5);
      for (let sent = 5; sent < 8; sent++) {
        held.shift()?.();
        await waitFor(() => r.requests.length === sent + 1, `retry ${sent - 3} sent`);
      }
      held.shift()?.();
      await waitFor(() => outcomes.filter((o) => o.state === 'delivered').length === 4, 'all delivered');
      expect(r.maxActive).toBe(1);
    });

    it('counts the bodies of retries claimed while they wait for their endpoint', async () => {
      // Four accounts, each with two small first attempts held at its endpoint (two of its three slots) and two
      // retries of `size` bytes: a claim of retries gets one slot of an account, its second retry waits with its body.
      const size = 600_000;
      const store = await newStore();
      const held: Array<() => void> = [];
      let hold = true;
      const r = await receiver((_req, res) => (hold ? held.push(() => res.end()) : res.end()));
      cleanups.push(async () => {
        for (const release of held.splice(0)) release();
      });
      const outcomes = collectOutcomes(store);
      const accounts = ['a', 'b', 'c', 'd'];
      const retryAt = Date.now() + 1_000;
      for (const account of accounts) {
        await webhook(store, account, r.url);
        await publish(store, account, [message('b0'), message('b1')]);
        const claimed = await store.claimDue({
          lane: 'first',
          limit: 10,
          now: Date.now(),
          leaseMs: 60_000,
          owner: 'x',
        });
        for (const { delivery } of claimed) {
          expect(await store.freeze(delivery.id, 'x', Buffer.alloc(size, 32), [], Date.now())).toBe(true);
          const attempt = { deliveryId: delivery.id, attemptNo: 1, startedAt: Date.now(), durationMs: 1 };
          await store.recordAttempt(delivery.id, {
            owner: 'x',
            nextState: 'retrying',
            attempt: { ...attempt, statusCode: 503, errorKind: null, verdict: 'retry', nextAttemptAt: retryAt },
          });
        }
      }
      for (const account of accounts) await publish(store, account, [message('s0'), message('s1')]);
      const sender = createSender({ requestTimeoutMs: 10_000, connectionsPerOrigin: 32 });
      cleanups.push(() => sender.close());
      const e = engine(
        store,
        { perEndpointConcurrency: 3, maxBodyBytesInMemory: 4.5 * size, requestTimeoutMs: 10_000, leaseMs: 60_000 },
        { sender },
      );
      e.start();
      await waitFor(() => r.requests.length === 8, 'the small first attempts held');
      const large = () => r.requests.filter((q) => q.body.length >= size).length;
      await waitFor(() => large() > 0, 'retries sent');
      await sleep(500);
      // The budget plus one body at most: sent, or claimed and waiting for a slot of their endpoint.
      expect(large() + e.activity.waiting).toBeLessThanOrEqual(5);
      hold = false;
      for (const release of held.splice(0)) release();
      await waitFor(() => outcomes.filter((o) => o.state === 'delivered').length === 16, 'all delivered');
    });

    it('checks claims that waited for their endpoint side by side, not one at a time with the builds', async () => {
      // Eight accounts of two slots: c0 and c1 (slow) take them, c2 and c3 are claimed when c0 ends, c3 waits for c2's
      // slot (past CHECK_AFTER_WAIT_MS), so eight first attempts are checked against the store at about once.
      const real = await newStore();
      let checking = 0;
      let maxChecking = 0;
      const store = new Proxy(real, {
        get(target, prop, receiverObj) {
          if (prop === 'checkClaim') {
            return async (...args: Parameters<Store['checkClaim']>) => {
              checking += 1;
              maxChecking = Math.max(maxChecking, checking);
              try {
                await sleep(100); // a round trip to a busy database
                return await target.checkClaim(...args);
              } finally {
                checking -= 1;
              }
            };
          }
          const value = Reflect.get(target, prop, receiverObj) as unknown;
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
      const r = await receiver((req, res) => {
        setTimeout(() => res.end(), req.headers['app-inbox-contact'] === 'c1' ? 1_500 : 400);
      });
      const accounts = Array.from({ length: 8 }, (_, i) => `acc${i}`);
      for (const account of accounts) {
        await webhook(store, account, r.url);
        await publish(store, account, [message('c0'), message('c1'), message('c2'), message('c3')]);
      }
      const sender = createSender({ requestTimeoutMs: 5_000, connectionsPerOrigin: 32 });
      cleanups.push(() => sender.close());
      const outcomes = collectOutcomes(store);
      engine(store, { perEndpointConcurrency: 2 }, { sender }).start();
      await waitFor(() => outcomes.filter((o) => o.state === 'delivered').length === 32, 'all delivered', 10_000);
      expect(maxChecking).toBeGreaterThan(1);
    });

    it('lets first attempts wait for their turn to build without a MaxListenersExceededWarning', async () => {
      // A build that reads its list slowly (PostgreSQL past claimMessagesMaxBytes: a round trip for a large list)
      // holds the turn: the others wait for it, each listening for stop(); past slowAttemptMs they stop counting
      // against the lane, which claims more, up to four times its concurrency.
      const real = await newStore();
      const store = new Proxy(real, {
        get(target, prop, receiverObj) {
          if (prop === 'contactMessages') {
            return async (...args: Parameters<Store['contactMessages']>) => {
              await sleep(50);
              return target.contactMessages(...args);
            };
          }
          const value = Reflect.get(target, prop, receiverObj) as unknown;
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
      const r = await receiver();
      await webhook(store, 'acc', r.url);
      await publish(
        store,
        'acc',
        Array.from({ length: 40 }, (_, i) => message(`c${i}`)),
      );
      const warnings = captureWarnings();
      const outcomes = collectOutcomes(store);
      const e = engine(store, {
        firstLaneConcurrency: 8,
        retryLaneConcurrency: 1,
        perEndpointConcurrency: 40,
        slowAttemptMs: 20,
      });
      e.start();
      await waitFor(() => outcomes.filter((o) => o.state === 'delivered').length === 40, 'all delivered');
      await sleep(10); // warnings are emitted on the next tick
      expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
    });
  });

  it('lets more than ten claims wait for their endpoint without a MaxListenersExceededWarning', async () => {
    const store = await newStore();
    const r = await receiver((_req, res) => {
      setTimeout(() => res.end(), 20);
    });
    await webhook(store, 'acc', r.url);
    await publish(
      store,
      'acc',
      Array.from({ length: 60 }, (_, i) => message(`c${i}`)),
    );
    // Each claim after the first finds 11 of 12 slots busy and up to 12 deliveries due: 11 wait, each
    // listening for stop() on the engine's signal (Node warns beyond 10 listeners by default).
    const warnings = captureWarnings();
    const sender = createSender({ requestTimeoutMs: 3_000, connectionsPerOrigin: 32 });
    cleanups.push(() => sender.close());
    const outcomes = collectOutcomes(store);
    engine(store, { perEndpointConcurrency: 12 }, { sender }).start();
    await waitFor(() => outcomes.filter((o) => o.state === 'delivered').length === 60, 'all delivered');
    await sleep(10); // warnings are emitted on the next tick
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
  });

  it('stop() gives unfinished claims back and a new engine on the same store finishes them', async () => {
    const store = await newStore();
    let hang = true;
    const r = await receiver((_req, res) => {
      if (!hang) res.end();
    });
    await webhook(store, 'acc', r.url);
    const published = await publish(store, 'acc', [message('c1')]);
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';

    const first = engine(store, { requestTimeoutMs: 5_000, owner: 'first' });
    first.start();
    await waitFor(() => r.active === 1, 'the request in flight');
    const stopping = Date.now();
    const stopped = first.stop(100);
    expect(first.stop(5_000)).toBe(stopped); // idempotent: the same stop
    await stopped;
    expect(Date.now() - stopping).toBeLessThan(1_500);
    expect(() => first.start()).toThrow(/stopped/);

    const released = await store.getDelivery(deliveryId);
    expect(released?.delivery.state).toBe('retrying'); // frozen at its first attempt, due again
    expect(released?.delivery.attemptCount).toBe(0);
    expect(released?.attempts).toEqual([]);
    expect(released?.delivery.nextAttemptAt).toBeLessThanOrEqual(Date.now());

    hang = false;
    const outcomes = collectOutcomes(store);
    engine(store, { owner: 'second' }).start();
    await waitFor(() => outcomes.find((o) => o.state === 'delivered'), 'delivered by the second engine');
    expect(r.requests).toHaveLength(2);
    expect(r.requests.map(webhookId)).toEqual([deliveryId, deliveryId]);
    expect(r.requests[1]?.body.equals(r.requests[0]?.body ?? Buffer.alloc(0))).toBe(true);
  });

  it('stop() lets an attempt that ends before the deadline finish and records it', async () => {
    const store = await newStore();
    const r = await receiver((_req, res) => {
      setTimeout(() => res.end(), 150);
    });
    await webhook(store, 'acc', r.url);
    const published = await publish(store, 'acc', [message('c1')]);
    const e = engine(store);
    e.start();
    await waitFor(() => r.active === 1, 'the request in flight');
    await e.stop(5_000);
    const stored = await store.getDelivery(published.deliveries[0]?.deliveryId ?? '');
    expect(stored?.delivery.state).toBe('delivered');
    expect(stored?.attempts).toHaveLength(1);
  });

  it('stop() returns soon after its deadline when the store stops answering (a claim and a give-back hang)', async () => {
    const real = await newStore();
    const r = await receiver(() => undefined); // never answers: the attempt is in flight at the deadline
    await webhook(real, 'acc', r.url);
    await publish(real, 'acc', [message('c1')]);
    // Then the store stops answering (a network partition): claims and give-backs never settle.
    let partitioned = false;
    const never = new Promise<never>(() => undefined);
    const store = new Proxy(
      withClaimDue(real, (claimDue, options) => (partitioned ? never : claimDue(options))),
      {
        get(target, prop, receiverObj) {
          if (prop === 'release' && partitioned) return () => never;
          return Reflect.get(target, prop, receiverObj) as unknown;
        },
      },
    );
    const e = engine(store, { requestTimeoutMs: 5_000 });
    e.start();
    await waitFor(() => r.active === 1, 'the request in flight');
    partitioned = true;
    e.wake(); // a claim on its way when stop() comes
    await sleep(20);
    const stopping = Date.now();
    await e.stop(100, 200);
    const took = Date.now() - stopping;
    // The deadline (100 ms), then at most the give-back time (200 ms): not for ever (2 s: room for a loaded machine).
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(2_000);
  });

  it('gives a delivery whose attempt failed inside the engine back errorDelayMs later, not at once', async () => {
    const real = await newStore();
    const r = await receiver();
    await webhook(real, 'acc', r.url);
    await publish(real, 'acc', [message('c1')]);
    const claimedAt: number[] = [];
    let reads = 0;
    const counting = withClaimDue(real, async (claimDue, options) => {
      const claims = await claimDue(options);
      if (claims.length > 0) claimedAt.push(Date.now());
      return claims;
    });
    // Reading the contact's messages fails once (a store error while building the body).
    const store = new Proxy(counting, {
      get(target, prop, receiverObj) {
        if (prop === 'contactMessages') {
          return (...args: Parameters<Store['contactMessages']>) => {
            reads += 1;
            return reads === 1 ? Promise.reject(new Error('read failed')) : target.contactMessages(...args);
          };
        }
        return Reflect.get(target, prop, receiverObj) as unknown;
      },
    });
    const outcomes = collectOutcomes(real);
    engine(store, { errorDelayMs: 400 }).start();
    await waitFor(() => outcomes.find((o) => o.state === 'delivered'), 'delivered');
    expect(claimedAt).toHaveLength(2);
    // Not claimed again at once (20 ms polls) but once its give-back time had come: no hot loop on a failing delivery.
    expect(claimedAt[1]! - claimedAt[0]!).toBeGreaterThanOrEqual(350);
    expect(r.requests).toHaveLength(1);
  });

  it('survives store errors in the claim loop, logging them', async () => {
    const real = await newStore();
    const r = await receiver();
    await webhook(real, 'acc', r.url);
    await publish(real, 'acc', [message('c1')]);
    let failures = 2;
    const flaky = withClaimDue(real, (claimDue, options) => {
      if (options.lane === 'first' && failures > 0) {
        failures -= 1;
        return Promise.reject(new Error('database is locked'));
      }
      return claimDue(options);
    });
    const lines: string[] = [];
    const logger = pino(
      { level: 'error' },
      new Writable({
        write(chunk: Buffer, _enc, done) {
          lines.push(chunk.toString('utf8'));
          done();
        },
      }),
    );
    engine(flaky, { errorDelayMs: 20 }, { logger }).start();
    await waitFor(() => r.requests.length === 1, 'the request after the errors');
    expect(failures).toBe(0);
    expect(lines.filter((l) => l.includes('claiming deliveries failed'))).toHaveLength(2);
  });
});
