/**
 * Nothing accepted is lost across restarts: a graceful restart in the middle of retries (in-process), and
 * a SIGKILL of the real server process right after an OK publish (child process).
 */
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import {
  accountId,
  deliveryIn,
  eventually,
  inboxMessage,
  spawnServer,
  startTestServer,
  storeUrls,
  type TestServer,
} from './harness.js';

describe.each(storeUrls())('restarts ($engine)', ({ newUrl, release }) => {
  const cleanups: Array<() => Promise<unknown> | void> = [];
  let receiver: MockReceiver;

  afterEach(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn();
    await receiver?.close();
  });
  afterAll(() => release());

  it('a graceful restart in the middle of retries loses nothing', async () => {
    const store = await newUrl();
    // Three 503s for every delivery, 150 ms apart: the restart falls between them.
    receiver = await createMockReceiver({ rules: [{ answers: [{ status: 503, times: 3 }], per: 'delivery' }] });
    const overrides = { backoffBaseMs: 150, backoffMaxMs: 150, maxAttempts: 10 };
    const first: TestServer = await startTestServer(store, overrides);
    cleanups.push(() => first.stop());
    const acc = accountId();
    await first.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/in`, signingSecret: '' });
    const messages = [inboxMessage('r1'), inboxMessage('r2')];
    const published = await first.clients.publishMessages({ accountId: acc, messages });
    await receiver.records.waitFor((r) => r.answer.status === 503);
    await first.stop();
    const ids = published.deliveries.map((d) => d.deliveryId);
    const receivedBefore = receiver.records.list().length;
    expect(receiver.records.list().some((r) => r.answer.status === 200)).toBe(false);

    const second = await startTestServer(store, overrides);
    cleanups.push(() => second.stop());
    for (const id of ids) await deliveryIn(second.clients, id, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    expect(receiver.records.list().length).toBeGreaterThan(receivedBefore);
    for (const contact of ['r1', 'r2']) {
      const message = messages.find((m) => m.externalCustomerId === contact);
      expect(receiver.records.lastAccepted(contact)?.messages.map((m) => m.id)).toEqual([message?.id]);
      // Before and after the restart: one delivery id and the same bytes for the contact.
      const ofContact = receiver.records.list({ externalCustomerId: contact });
      expect(new Set(ofContact.map((r) => r.deliveryId)).size).toBe(1);
    }
    expect(receiver.records.duplicates().deliveries.every((d) => d.bodiesEqual)).toBe(true);
  });

  it('the real server process killed with SIGKILL right after an OK publish delivers after a restart', async () => {
    const store = await newUrl();
    // The first request of each delivery hangs: the kill lands while the attempt is in flight (or before).
    receiver = await createMockReceiver({ rules: [{ answers: [{ action: 'hang' }], per: 'delivery' }] });
    const args = [
      '--request-timeout-ms',
      '1000',
      '--lease-ms',
      '1500',
      '--backoff-base-ms',
      '50',
      '--poll-interval-ms',
      '50',
    ];

    const a = await spawnServer(store, args);
    cleanups.push(() => a.kill());
    const acc = accountId();
    await a.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/in`, signingSecret: '' });
    const message = inboxMessage('killed');
    const published = await a.clients.publishMessages({ accountId: acc, messages: [message] });
    expect(published.accepted).toBe(1);
    await a.kill();

    const b = await spawnServer(store, args);
    cleanups.push(() => b.kill('SIGTERM'));
    const delivered = await deliveryIn(
      b.clients,
      published.deliveries[0]?.deliveryId ?? '',
      [DeliveryState.DELIVERY_STATE_DELIVERED],
      15_000,
    );
    expect(delivered.messageIds).toEqual([message.id]);
    await eventually(() => receiver.records.lastAccepted('killed'), 5_000, 'the accepted list');
    expect(receiver.records.lastAccepted('killed')?.messages.map((m) => m.id)).toEqual([message.id]);
    // A graceful stop of the real process exits 0.
    expect(await b.kill('SIGTERM')).toBe(0);
  });
});
