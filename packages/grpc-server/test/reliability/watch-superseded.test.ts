/**
 * A superseded delivery is announced to WatchDeliveries like every other outcome, with the delivery that
 * replaced it, on both store engines (in process for SQLite, NOTIFY for PostgreSQL); and GetDelivery says why a
 * delivery is waiting or failed (`last_error`).
 * @see ARCHITECTURE §2, store/types.ts DeliveryOutcome
 */
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
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
} from '../e2e/harness.js';

describe.each(storeUrls())('superseded outcomes on WatchDeliveries ($engine)', ({ newUrl, release }) => {
  let t: TestServer | undefined;
  let receiver: MockReceiver | undefined;

  afterEach(async () => {
    await t?.stop();
    await receiver?.close();
  });
  afterAll(() => release());

  it('a publish that supersedes a waiting retry is streamed as SUPERSEDED with superseded_by', async () => {
    // The first request gets a 503; with a 5 s backoff the delivery then waits for its retry long enough for
    // the next publish to supersede it.
    receiver = await createMockReceiver({ rules: [{ answers: [{ status: 503, times: 1 }] }] });
    t = await startTestServer(await newUrl(), { backoffBaseMs: 5_000, backoffMaxMs: 5_000 });
    const account = accountId();
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/in`, signingSecret: '' });
    const watcher = watch(t.clients, account);
    await watcher.ready;

    const first = inboxMessage('contact');
    const d1 = (await t.clients.publishMessages({ accountId: account, messages: [first] })).deliveries[0]!.deliveryId;
    const waiting = await deliveryIn(t.clients, d1, [DeliveryState.DELIVERY_STATE_RETRYING]);
    expect(waiting.lastError).toBe('http_503');

    const second = inboxMessage('contact');
    const d2 = (await t.clients.publishMessages({ accountId: account, messages: [second] })).deliveries[0]!.deliveryId;
    expect(d2).not.toBe(d1);
    await deliveryIn(t.clients, d2, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    await eventually(
      () => (watcher.events.some((e) => e.deliveryId === d2) ? true : undefined),
      10_000,
      'the outcome of the newer delivery',
    );
    watcher.cancel();

    const ofD1 = watcher.events.filter((e) => e.deliveryId === d1);
    expect(ofD1.map((e) => e.state)).toEqual([
      DeliveryState.DELIVERY_STATE_RETRYING,
      DeliveryState.DELIVERY_STATE_SUPERSEDED,
    ]);
    expect(ofD1[1]).toMatchObject({
      accountId: account,
      externalCustomerId: 'contact',
      supersededBy: d2,
      messageIds: [first.id],
      attemptNo: 1,
    });
    expect(ofD1[1]?.nextAttemptTimeMs).toBeUndefined();
    // The receiver got the older list once (answered 503) and then only the newer one.
    const bodies = receiver.records.list().map((r) => (r.body as Array<{ id: string }>).map((m) => m.id));
    expect(bodies).toEqual([[first.id], [second.id, first.id]]);
    const old = (await t.clients.getDelivery({ deliveryId: d1 })).delivery;
    expect(old).toMatchObject({ state: DeliveryState.DELIVERY_STATE_SUPERSEDED, supersededBy: d2 });
  });
});
