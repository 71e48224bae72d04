/**
 * Per-contact ordering (supersede), replay of a failed delivery (RetryDelivery), and the WatchDeliveries
 * stream, end to end. @see ARCHITECTURE "Decisions" §1-§2, "Delivery states"
 */
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import {
  accountId,
  deliveryIn,
  eventually,
  inboxMessage,
  startTestServer,
  storeUrls,
  watch,
  type TestServer,
} from './harness.js';

const DELIVERED = [DeliveryState.DELIVERY_STATE_DELIVERED];

describe.each(storeUrls())('ordering, replay and watch ($engine)', ({ newUrl, release }) => {
  let t: TestServer;
  let receiver: MockReceiver;

  beforeAll(async () => {
    // Retries wait 300 ms: long enough to publish a newer state while a delivery waits for its retry.
    t = await startTestServer(await newUrl(), { backoffBaseMs: 300, backoffMaxMs: 300 });
  });
  afterEach(async () => {
    await receiver?.close();
  });
  afterAll(async () => {
    await t?.stop();
    await release();
  });

  async function account(rules: Parameters<typeof createMockReceiver>[0] = {}) {
    receiver = await createMockReceiver(rules);
    const id = accountId();
    await t.clients.upsertWebhook({ accountId: id, url: `${receiver.url}/in`, signingSecret: '' });
    return id;
  }

  function ids(body: unknown): string[] {
    return (body as Array<{ id: string }>).map((m) => m.id);
  }

  it('supersedes a delivery waiting for its retry: the receiver never gets an older list after a newer one', async () => {
    // A server of its own whose retries wait 2 s: the newer state must be published while d1 waits for its retry.
    // With the 300 ms of the others, seeing the 503 and publishing took longer than that on a loaded machine now and
    // then: d1's retry went out first and was accepted, and d1 was delivered, not superseded.
    const own = await startTestServer(await newUrl(), { backoffBaseMs: 2_000, backoffMaxMs: 2_000 });
    onTestFinished(() => own.stop());
    receiver = await createMockReceiver({ rules: [{ answers: [{ status: 503 }] }] });
    const acc = accountId();
    await own.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/in`, signingSecret: '' });
    const m1 = inboxMessage('sup');
    const first = await own.clients.publishMessages({ accountId: acc, messages: [m1] });
    const d1 = first.deliveries[0]?.deliveryId ?? '';
    await receiver.records.waitFor((r) => r.answer.status === 503);
    const m2 = inboxMessage('sup');
    const second = await own.clients.publishMessages({ accountId: acc, messages: [m2] });
    const d2 = second.deliveries[0]?.deliveryId ?? '';
    expect(d2).not.toBe(d1);
    await deliveryIn(own.clients, d2, DELIVERED);
    const old = await deliveryIn(own.clients, d1, [DeliveryState.DELIVERY_STATE_SUPERSEDED]);
    expect(old.supersededBy).toBe(d2);
    // Past d1's retry time (as its first attempt recorded it), and a few polls more: it was never sent again.
    const retryAt = old.attempts[0]?.nextAttemptTimeMs ?? 0;
    expect(retryAt).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, Math.max(0, retryAt - Date.now()) + 200));
    const requests = receiver.records.list();
    expect(requests.map((r) => [r.deliveryId, r.answer.status, ids(r.body)])).toEqual([
      [d1, 503, [m1.id]],
      [d2, 200, [m2.id, m1.id]],
    ]);
  });

  it('keeps per-contact order through a burst of publishes and failures', async () => {
    // Every delivery's first attempt fails: a mix of retries and supersedes.
    const acc = await account({ rules: [{ answers: [{ status: 503 }], per: 'delivery' }] });
    const sent: string[] = [];
    for (let i = 0; i < 12; i++) {
      const m = inboxMessage('burst');
      sent.push(m.id);
      await t.clients.publishMessages({ accountId: acc, messages: [m] });
      await new Promise((r) => setTimeout(r, 25 + (i % 3) * 40));
    }
    const final = await eventually(() => {
      const last = receiver.records.lastAccepted('burst');
      return last && last.messages.length === sent.length ? last : undefined;
    }, 15_000);
    expect(final.messages.map((m) => m.id)).toEqual([...sent].reverse());
    // Every list the receiver got (accepted or not) contains the previous one: never an older state.
    const lists = receiver.records.list({ externalCustomerId: 'burst' }).map((r) => ids(r.body));
    for (let i = 1; i < lists.length; i++) {
      expect(lists[i]?.length).toBeGreaterThanOrEqual(lists[i - 1]?.length ?? 0);
      for (const id of lists[i - 1] ?? []) expect(lists[i]).toContain(id);
    }
  });

  it('replays a failed delivery with the same id and bytes (RetryDelivery)', async () => {
    const acc = await account({ rules: [{ id: 'reject', answers: [{ status: 400 }], repeat: true }] });
    const published = await t.clients.publishMessages({
      accountId: acc,
      messages: [inboxMessage('rp'), inboxMessage('rp')],
    });
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    const failed = await deliveryIn(t.clients, deliveryId, [DeliveryState.DELIVERY_STATE_FAILED]);
    receiver.control.clear(); // the receiver is fixed
    const replay = await t.clients.retryDelivery({ deliveryId });
    expect(replay.replacedByNewer).toBe(false);
    expect(replay.delivery?.id).toBe(deliveryId);
    const delivered = await deliveryIn(t.clients, deliveryId, DELIVERED);
    expect(delivered.attempts.map((a) => a.statusCode)).toEqual([400, 200]);
    expect(Buffer.from(delivered.body).equals(Buffer.from(failed.body))).toBe(true);
    const requests = receiver.records.list();
    expect(requests.map((r) => [r.deliveryId, r.answer.status])).toEqual([
      [deliveryId, 400],
      [deliveryId, 200],
    ]);
    expect(receiver.records.duplicates().deliveries).toEqual([
      expect.objectContaining({ deliveryId, count: 2, bodiesEqual: true }),
    ]);
  });

  it('gives a replay of a delivery that ran out of attempts one attempt: a retryable answer fails it again', async () => {
    const acc = await account({ rules: [{ id: 'down', answers: [{ status: 503 }], repeat: true }] });
    const published = await t.clients.publishMessages({ accountId: acc, messages: [inboxMessage('spent')] });
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    const failed = await deliveryIn(t.clients, deliveryId, [DeliveryState.DELIVERY_STATE_FAILED]);
    expect(failed).toMatchObject({ attemptCount: 5, lastError: 'max_attempts:http_503' });
    await t.clients.retryDelivery({ deliveryId });
    // Attempts count on from the history (--max-attempts 5 here): attempt 6 is not retried.
    const again = await eventually(async () => {
      const { delivery } = await t.clients.getDelivery({ deliveryId });
      return delivery?.attemptCount === 6 && delivery.state === DeliveryState.DELIVERY_STATE_FAILED
        ? delivery
        : undefined;
    });
    expect(again.lastError).toBe('max_attempts:http_503');
    receiver.control.clear(); // the receiver is fixed
    await t.clients.retryDelivery({ deliveryId });
    const delivered = await deliveryIn(t.clients, deliveryId, DELIVERED);
    expect(delivered.attemptCount).toBe(7);
  });

  it('replays the newer state instead when the contact has moved on', async () => {
    const acc = await account({ rules: [{ answers: [{ status: 400 }] }] });
    const m1 = inboxMessage('moved');
    const first = await t.clients.publishMessages({ accountId: acc, messages: [m1] });
    const d1 = first.deliveries[0]?.deliveryId ?? '';
    await deliveryIn(t.clients, d1, [DeliveryState.DELIVERY_STATE_FAILED]);
    const m2 = inboxMessage('moved');
    const second = await t.clients.publishMessages({ accountId: acc, messages: [m2] });
    await deliveryIn(t.clients, second.deliveries[0]?.deliveryId ?? '', DELIVERED);
    const replay = await t.clients.retryDelivery({ deliveryId: d1 });
    expect(replay.replacedByNewer).toBe(true);
    expect(replay.delivery?.id).not.toBe(d1);
    await deliveryIn(t.clients, replay.delivery?.id ?? '', DELIVERED);
    const requests = receiver.records.list();
    // d1's old list was never sent again; the replay carried the current state.
    expect(requests.filter((r) => r.deliveryId === d1)).toHaveLength(1);
    expect(ids(requests.at(-1)?.body)).toEqual([m2.id, m1.id]);
  });

  it('streams outcomes with their message ids to watchers of the account', async () => {
    const acc = await account({ rules: [{ answers: [{ status: 500 }], per: 'delivery' }] });
    const watcher = watch(t.clients, acc);
    const other = watch(t.clients, accountId('other'));
    await Promise.all([watcher.ready, other.ready]);
    try {
      const messages = [inboxMessage('w'), inboxMessage('w')];
      const published = await t.clients.publishMessages({ accountId: acc, messages });
      const deliveryId = published.deliveries[0]?.deliveryId ?? '';
      await eventually(() => (watcher.events.length >= 2 ? true : undefined), 10_000, 'two outcomes');
      const expectedIds = [...messages].reverse().map((m) => m.id);
      expect(watcher.events).toEqual([
        expect.objectContaining({
          deliveryId,
          accountId: acc,
          externalCustomerId: 'w',
          state: DeliveryState.DELIVERY_STATE_RETRYING,
          attemptNo: 1,
          statusCode: 500,
          messageIds: expectedIds,
        }),
        expect.objectContaining({
          deliveryId,
          state: DeliveryState.DELIVERY_STATE_DELIVERED,
          attemptNo: 2,
          statusCode: 200,
          messageIds: expectedIds,
          nextAttemptTimeMs: undefined,
        }),
      ]);
      expect(watcher.events[0]?.nextAttemptTimeMs).toBeGreaterThan(watcher.events[0]?.timeMs ?? Infinity);
      expect(other.events).toEqual([]);
    } finally {
      watcher.cancel();
      other.cancel();
    }
  });
});
