/**
 * A webhook's rate limit end to end: `rate_limit_per_second` set by UpsertWebhook paces the requests to its URL
 * (a token bucket of one second's worth), every delivery still arrives once and on its first attempt (waiting is
 * not a failure), another account's webhook on the same server is not slowed, and UpdateWebhook changes or removes
 * the limit. Real server, real gRPC client, a real mock receiver that records when each request arrived.
 */
import { status } from '@grpc/grpc-js';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import {
  accountId,
  eventually,
  failure,
  inboxMessage,
  startTestServer,
  storeUrls,
  type TestServer,
} from './harness.js';

const RATE = 4;
const CONTACTS = 12;

/**
 * Whether arrival times (ms, sorted) are never ahead of a token bucket of `rate` tokens, full at `start` and refilled
 * at `rate` a second: the k-th request (from 0) cannot go out before the (k - rate + 1)-th token refilled. A lower
 * bound only, on purpose: a request that arrives late (a loaded machine that stalls the process for a moment, a slow
 * first connection) only makes its arrival later, so it cannot break this, whereas an upper bound on the arrivals in
 * a window would be broken by late arrivals bunching up with the next ones though the limiter sent them on time.
 * 5 ms are allowed for the millisecond roundings of the two clocks.
 */
function neverAhead(times: readonly number[], rate: number, start: number): boolean {
  return times.every((at, k) => k < rate || at >= start + ((k - rate + 1) * 1000) / rate - 5);
}

describe.each(storeUrls())('webhook rate limit ($engine)', (target) => {
  let t: TestServer | undefined;
  let receiver: MockReceiver | undefined;

  afterEach(async () => {
    await t?.stop();
    await receiver?.close();
    t = undefined;
    receiver = undefined;
  });
  afterAll(() => target.release());

  it('paces the limited endpoint, sends each delivery once, first time, and leaves another endpoint unpaced', async () => {
    receiver = await createMockReceiver();
    t = await startTestServer(await target.newUrl());
    const limited = accountId('limited');
    const free = accountId('free');
    const upserted = await t.clients.upsertWebhook({
      accountId: limited,
      url: `${receiver.url}/limited`,
      rateLimitPerSecond: RATE,
    });
    expect(upserted.webhook?.rateLimitPerSecond).toBe(RATE);
    await t.clients.upsertWebhook({ accountId: free, url: `${receiver.url}/free` });
    expect((await t.clients.getWebhook({ accountId: limited })).webhook?.rateLimitPerSecond).toBe(RATE);
    expect((await t.clients.getWebhook({ accountId: free })).webhook?.rateLimitPerSecond).toBe(0);

    // One claim takes the 12: 4 go at once, the next 2 wait for their tokens (up to 500 ms), and the last 6, whose
    // turn is further off than the test lease lets a claim wait (half of lease minus request timeout and start
    // margin: 500 ms), are given back due at their turn and claimed again then.
    const contacts = Array.from({ length: CONTACTS }, (_, i) => `c-${i}`);
    // No request of the account can go out before its publish: the bucket is full then at the earliest.
    const published = Date.now();
    const limitedDeliveries = await t.clients.publishMessages({
      accountId: limited,
      messages: contacts.map((c) => inboxMessage(c)),
    });
    await t.clients.publishMessages({ accountId: free, messages: contacts.map((c) => inboxMessage(c)) });

    const received = (path: string) => receiver!.records.list().filter((r) => r.path === path);
    await eventually(
      () => (received('/limited').length >= CONTACTS && received('/free').length >= CONTACTS ? true : undefined),
      20_000,
      'every delivery of both accounts',
    );
    const times = (path: string) => received(path).map((r) => Date.parse(r.receivedAt));
    const limitedTimes = times('/limited').sort((a, b) => a - b);

    // Paced: RATE at once, then one every 1/RATE s, the last one 2 s after the publish at the earliest; all 12 at once
    // would break it.
    expect(neverAhead(limitedTimes, RATE, published)).toBe(true);
    // Each delivery once, on its first attempt, answered 200: waiting for a token is not a failed attempt.
    const ids = received('/limited').map((r) => r.deliveryId);
    expect(new Set(ids)).toEqual(new Set(limitedDeliveries.deliveries.map((d) => d.deliveryId)));
    expect(ids).toHaveLength(CONTACTS);
    expect(received('/limited').every((r) => r.answer.status === 200)).toBe(true);
    for (const { deliveryId } of limitedDeliveries.deliveries) {
      const { delivery } = await t.clients.getDelivery({ deliveryId });
      expect(delivery).toMatchObject({ state: DeliveryState.DELIVERY_STATE_DELIVERED, attemptCount: 1 });
    }
    // The other endpoint did not wait behind the limited one.
    expect(Math.max(...times('/free'))).toBeLessThan(limitedTimes.at(-1)!);
  });

  /**
   * A claim waits for its turn in the process for up to half of what its lease leaves beside the request and the start
   * margin: 20 s with this lease (12.5 s with the default one). With 32 in flight allowed per endpoint, the first claim
   * of a backlog of 30 contacts at 1 request a second sends 1, keeps 20 waiting in memory (the last for 20 s), and gives
   * 9 back to the store, due at their turn (21 s away).
   */
  const SLOW_TURNS = { leaseMs: 46_000, perEndpointConcurrency: 32 };
  const BACKLOG = 30;

  /**
   * Publishes BACKLOG contacts to a webhook limited to 1 request a second, waits for the first two, then changes its
   * limit with `change`: every delivery must arrive within 8 s of the change's answer (the old pace needs about 20 s
   * more), once, on its first attempt.
   */
  async function changedWhileBacklogged(change: (account: string) => Promise<unknown>): Promise<void> {
    receiver = await createMockReceiver();
    t = await startTestServer(await target.newUrl(), SLOW_TURNS);
    const account = accountId('changed');
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook`, rateLimitPerSecond: 1 });
    const published = await t.clients.publishMessages({
      accountId: account,
      messages: Array.from({ length: BACKLOG }, (_, i) => inboxMessage(`c-${i}`)),
    });
    const received = () => receiver!.records.list().filter((r) => r.path === '/hook');
    await eventually(() => (received().length >= 2 ? true : undefined), 10_000, 'the first two requests');
    await change(account);
    const changed = Date.now();
    // Bounded: 20 s past the change, the old pace is what happened, and the assertions below say so.
    await eventually(() => (received().length >= BACKLOG ? true : undefined), 20_000, 'every delivery').catch(
      () => undefined,
    );
    const lastMs = Math.max(...received().map((r) => Date.parse(r.receivedAt))) - changed;
    expect(received().length, `received by ${lastMs} ms after the change`).toBe(BACKLOG);
    expect(lastMs).toBeLessThan(8_000);
    const ids = received().map((r) => r.deliveryId);
    expect(new Set(ids)).toEqual(new Set(published.deliveries.map((d) => d.deliveryId)));
    expect(ids).toHaveLength(BACKLOG);
    for (const { deliveryId } of published.deliveries) {
      const { delivery } = await t.clients.getDelivery({ deliveryId });
      expect(delivery).toMatchObject({ state: DeliveryState.DELIVERY_STATE_DELIVERED, attemptCount: 1 });
    }
  }

  it('a raised limit applies at once to the deliveries already waiting for their turn', async () => {
    await changedWhileBacklogged((account) =>
      t!.clients.updateWebhook({
        accountId: account,
        updateMask: ['rate_limit_per_second'],
        rateLimitPerSecond: 1_000,
      }),
    );
  });

  it('a removed limit applies at once to the deliveries already waiting for their turn', async () => {
    await changedWhileBacklogged((account) =>
      t!.clients.upsertWebhook({ accountId: account, url: `${receiver!.url}/hook` }),
    );
  });

  it('a lowered limit applies at once to the deliveries already waiting for their turn', async () => {
    receiver = await createMockReceiver();
    t = await startTestServer(await target.newUrl(), SLOW_TURNS);
    const account = accountId('lowered');
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook`, rateLimitPerSecond: 8 });
    await t.clients.publishMessages({
      accountId: account,
      messages: Array.from({ length: 40 }, (_, i) => inboxMessage(`c-${i}`)),
    });
    const received = () => receiver!.records.list().filter((r) => r.path === '/hook');
    // The first 8 go at once, the other 24 of the claim wait their turn in memory (one every 125 ms).
    await eventually(() => (received().length >= 8 ? true : undefined), 10_000, 'the first eight requests');
    await t.clients.updateWebhook({ accountId: account, updateMask: ['rate_limit_per_second'], rateLimitPerSecond: 1 });
    const changed = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    // At 1 a second: the bucket's one token and 3 more over the 3 s (2 more allowed for requests let through just before
    // the change and arriving after it), and at least one: the claims waiting when it changed are given back, not left
    // to take the new rate's tokens and then be given back unsent (their webhook was saved since), which would send
    // nothing for 24 s.
    const after = received().filter((r) => Date.parse(r.receivedAt) > changed).length;
    expect(after).toBeGreaterThanOrEqual(1);
    expect(after).toBeLessThanOrEqual(1 + 3 + 2);
  });

  it('UpdateWebhook changes the limit, removes it when named unset, and names a bad value', async () => {
    receiver = await createMockReceiver();
    t = await startTestServer(await target.newUrl());
    const account = accountId('update-rate');
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook`, rateLimitPerSecond: 2 });

    const raised = await t.clients.updateWebhook({
      accountId: account,
      updateMask: ['rate_limit_per_second'],
      rateLimitPerSecond: 50,
    });
    expect(raised.webhook).toMatchObject({ url: `${receiver.url}/hook`, rateLimitPerSecond: 50, enabled: true });
    // Another field changed alone keeps the limit.
    const disabled = await t.clients.updateWebhook({ accountId: account, updateMask: ['enabled'], enabled: false });
    expect(disabled.webhook).toMatchObject({ enabled: false, rateLimitPerSecond: 50 });

    const bad = await failure(
      t.clients.updateWebhook({
        accountId: account,
        updateMask: ['rate_limit_per_second'],
        rateLimitPerSecond: 10_001,
      }),
    );
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.rich?.badRequest?.fieldViolations).toEqual([
      { field: 'rate_limit_per_second', description: 'must be at most 10000', reason: '', localizedMessage: undefined },
    ]);

    const removed = await t.clients.updateWebhook({ accountId: account, updateMask: ['rate_limit_per_second'] });
    expect(removed.webhook?.rateLimitPerSecond).toBe(0);
    expect((await t.clients.getWebhook({ accountId: account })).webhook).toMatchObject({
      rateLimitPerSecond: 0,
      enabled: false,
    });
  });
});
