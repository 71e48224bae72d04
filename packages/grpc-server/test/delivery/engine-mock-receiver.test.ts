/**
 * The engine against the mock receiver (the customer's side of the contract): Basic auth, the payload
 * accepted by the receiver's strict checks, retries with the same id and bytes, and each contact's last list.
 */
import { afterEach, expect, it } from 'vitest';
import { createMockReceiver } from '@app-inbox/mock-receiver';
import { DeliveryEngine } from '../../src/delivery/index.js';
import { createTestStore, FAST_BACKOFF, message, waitFor } from './engine-fixtures.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

it('delivers through 503s to the mock receiver with the same id and bytes, leaving each contact its newest list', async () => {
  const { store, dispose } = await createTestStore();
  cleanups.push(dispose);
  // `flaky`: 503 twice for each delivery id, then the contract's own answer.
  const receiver = await createMockReceiver({ username: 'shop', password: 's3cret', scenario: 'flaky' });
  cleanups.push(() => receiver.close());
  await store.upsertWebhook(
    'acc',
    {
      url: `${receiver.url}/hooks/inbox`,
      enabled: true,
      maxMessagesPerContact: 1000,
      auth: { type: 'basic', username: 'shop', password: 's3cret' },
    },
    Date.now(),
  );
  const contacts = ['c1', 'c2', 'c3', 'c4'];
  const published = new Map(contacts.map((c) => [c, [message(c), message(c), message(c)]]));
  await store.publish({ accountId: 'acc', messages: [...published.values()].flat(), now: Date.now() });

  const engine = new DeliveryEngine({
    store,
    options: { pollIntervalMs: 20, requestTimeoutMs: 3_000, backoff: FAST_BACKOFF },
  });
  cleanups.push(() => engine.stop(200));
  engine.start();

  await waitFor(() => receiver.records.contacts().length === contacts.length, 'every contact accepted');
  for (const contact of contacts) {
    const last = receiver.records.lastAccepted(contact);
    const expected = [...(published.get(contact) ?? [])].reverse().map((m) => m.id);
    expect(last?.messages.map((m) => m.id)).toEqual(expected);
  }
  const duplicates = receiver.records.duplicates();
  expect(duplicates.deliveries).toHaveLength(contacts.length);
  for (const d of duplicates.deliveries) {
    expect(d).toMatchObject({ count: 3, accepted: 1, bodiesEqual: true });
  }
  expect(duplicates.acceptedAgain).toBe(0);
  expect(duplicates.differentBodies).toBe(0);
});
