/**
 * A claim that waits for a free slot of its endpoint (up to the lease minus the request timeout) must not be sent
 * as claimed once DeleteWebhook answered OK (the account's deliveries are gone), or once the webhook was disabled
 * (SPEC §2: sends nothing until enabled), nor to the old URL once the webhook was saved with another one: after
 * the wait the engine asks the store whether it still holds the claim and what the webhook is now (engine.ts,
 * `#stillCurrent`).
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
  type TestServer,
} from '../e2e/harness.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe.each(storeUrls())('DeleteWebhook and a claimed retry ($engine)', ({ newUrl, release }) => {
  let server: TestServer | undefined;
  let receiver: MockReceiver | undefined;
  afterEach(async () => {
    await server?.stop();
    await receiver?.close();
  });
  afterAll(() => release());

  async function scenario(
    stop: (clients: TestServer['clients'], acc: string, url: string) => Promise<unknown>,
    /** The requests that must not come after `stop`: every one by default. */
    counts: (path: string) => boolean = () => true,
  ) {
    receiver = await createMockReceiver({
      rules: [
        // 'slow' holds one of the endpoint's two slots for 6 s: long enough for the set-up below on a busy machine
        // (with 2.5 s it was sometimes over before the claim could wait).
        { match: { externalCustomerId: 'slow' }, answers: [{ delayMs: 6_000 }], repeat: true },
        // r1 and r2: 400 first (failed, kept for replay), then a slow 200.
        { match: { externalCustomerId: 'r1' }, answers: [{ status: 400 }, { delayMs: 1_500 }] },
        { match: { externalCustomerId: 'r2' }, answers: [{ status: 400 }, { delayMs: 1_500 }] },
      ],
    });
    server = await startTestServer(await newUrl(), {
      requestTimeoutMs: 8_000,
      leaseMs: 16_000,
      perEndpointConcurrency: 2,
    });
    const { clients } = server;
    const acc = accountId();
    const url = `${receiver.url}/in`;
    await clients.upsertWebhook({ accountId: acc, url, signingSecret: '' });
    const published = await clients.publishMessages({
      accountId: acc,
      messages: [inboxMessage('r1'), inboxMessage('r2')],
    });
    const ids = published.deliveries.map((d) => d.deliveryId);
    for (const id of ids) await deliveryIn(clients, id, [DeliveryState.DELIVERY_STATE_FAILED]);

    // One slot busy for 6 s; then, with the webhook disabled, both failed deliveries are replayed, and the
    // webhook enabled again: one claim of the retry lane takes both, one gets the free slot, the other waits.
    await clients.publishMessages({ accountId: acc, messages: [inboxMessage('slow')] });
    await eventually(() => (server!.server.engine.activity.sending === 1 ? true : undefined), 5_000, 'slow in flight');
    await clients.upsertWebhook({ accountId: acc, url, signingSecret: '', enabled: false });
    for (const id of ids) await clients.retryDelivery({ deliveryId: id });
    // A claim may take its `now` before a replay (due at the replay's now) and run after the enable: it then finds
    // only the first replay due, which takes the free slot, and the second is claimed once a slot frees, never
    // waiting (1 run in 5 on PostgreSQL). Claims begun while the webhook was disabled end before it is enabled.
    await sleep(200);
    await clients.upsertWebhook({ accountId: acc, url, signingSecret: '', enabled: true });
    await eventually(() => (server!.server.engine.activity.waiting === 1 ? true : undefined), 5_000, 'a waiting claim');

    await stop(clients, acc, url);
    const stoppedAt = new Date().toISOString();

    // Until the waiting claim has had its slot (once 'slow' is answered) and has been dealt with, and a little more.
    await eventually(
      () => {
        const { waiting, sending } = server!.server.engine.activity;
        return waiting === 0 && sending === 0 ? true : undefined;
      },
      15_000,
      'the waiting claim dealt with',
    );
    await sleep(1_000);
    const after = receiver.records.list().filter((r) => r.receivedAt > stoppedAt && counts(r.path));
    expect(
      after.map((r) => ({ receivedAt: r.receivedAt, contacts: r.externalCustomerIds, deliveryId: r.deliveryId })),
      `stopped at ${stoppedAt}`,
    ).toEqual([]);
  }

  it('sends nothing of the account after DeleteWebhook answered OK', async () => {
    await scenario(async (clients, acc) => {
      await clients.deleteWebhook({ accountId: acc });
      // The store agrees: nothing of the account is left to send.
      const left = await clients.listDeliveries({ accountId: acc, states: [DeliveryState.DELIVERY_STATE_RETRYING] });
      expect(left.deliveries).toEqual([]);
    });
  });

  it('sends nothing after UpsertWebhook disabled the webhook (SPEC §2: sends nothing until enabled)', async () => {
    await scenario((clients, acc, url) =>
      clients.upsertWebhook({ accountId: acc, url, signingSecret: '', enabled: false }),
    );
  });

  it('sends nothing more to the old URL after UpsertWebhook moved the webhook to another one', async () => {
    // Still enabled: only the webhook's updatedAt tells the waiting claim that its URL (and credentials) changed.
    await scenario(
      (clients, acc, url) => clients.upsertWebhook({ accountId: acc, url: `${url}-moved`, signingSecret: '' }),
      (path) => path === '/in',
    );
    // The claim was given back, not dropped: it goes to the webhook as it is now.
    await eventually(
      () => (receiver!.records.list({ path: '/in-moved' }).length > 0 ? true : undefined),
      10_000,
      'the waiting delivery at the new URL',
    );
  });
});

/**
 * The same stale claim, with two processes on one PostgreSQL database: after DeleteWebhook, the webhook is saved
 * again and the contact gets a new message, which the other process delivers at once; the first process then
 * sends the claim it held from before the delete: the receiver gets an older list after a newer one (SPEC §4).
 */
describe('DeleteWebhook and a claimed retry, two processes (postgres)', () => {
  const target = storeUrls().find((t) => t.engine === 'postgres')!;
  const servers: TestServer[] = [];
  let receiver: MockReceiver | undefined;
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.stop();
    await receiver?.close();
  });
  afterAll(() => target.release());

  it('never sends an older list of a contact after a newer one', async () => {
    receiver = await createMockReceiver({
      rules: [
        { match: { externalCustomerId: 'slow' }, answers: [{ delayMs: 5_000 }], repeat: true },
        { match: { externalCustomerId: 'r1' }, answers: [{ status: 400 }, { delayMs: 4_000 }] },
        { match: { externalCustomerId: 'r2' }, answers: [{ status: 400 }] },
      ],
    });
    const store = await target.newUrl();
    const overrides = { requestTimeoutMs: 6_000, leaseMs: 30_000, perEndpointConcurrency: 2 };
    const a = await startTestServer(store, overrides);
    servers.push(a);
    const acc = accountId();
    const url = `${receiver.url}/in`;
    await a.clients.upsertWebhook({ accountId: acc, url, signingSecret: '' });
    const old = inboxMessage('r2');
    const published = await a.clients.publishMessages({ accountId: acc, messages: [inboxMessage('r1'), old] });
    const ids = published.deliveries.map((d) => d.deliveryId);
    for (const id of ids) await deliveryIn(a.clients, id, [DeliveryState.DELIVERY_STATE_FAILED]);
    await a.clients.publishMessages({ accountId: acc, messages: [inboxMessage('slow')] });
    await eventually(() => (a.server.engine.activity.sending === 1 ? true : undefined), 5_000, 'slow in flight');
    await a.clients.upsertWebhook({ accountId: acc, url, signingSecret: '', enabled: false });
    for (const id of ids) await a.clients.retryDelivery({ deliveryId: id });
    await a.clients.upsertWebhook({ accountId: acc, url, signingSecret: '', enabled: true });
    await eventually(() => (a.server.engine.activity.waiting === 1 ? true : undefined), 5_000, 'a waiting claim');

    // The account is deleted and saved again; the contact's new message goes through a second process.
    await a.clients.deleteWebhook({ accountId: acc });
    const b = await startTestServer(store, overrides);
    servers.push(b);
    await b.clients.upsertWebhook({ accountId: acc, url, signingSecret: '' });
    const fresh = inboxMessage('r2');
    const freshPublished = await b.clients.publishMessages({ accountId: acc, messages: [fresh] });

    // Until the new list is delivered and the first process's waiting claim has had its slot (once 'slow' is
    // answered, 5 s after it came) and has been dealt with, and a little more; a fixed 6 s from here was only just
    // enough on a loaded machine.
    await deliveryIn(b.clients, freshPublished.deliveries[0]?.deliveryId ?? '', [
      DeliveryState.DELIVERY_STATE_DELIVERED,
    ]);
    await eventually(
      () => {
        const { waiting, sending } = a.server.engine.activity;
        return waiting === 0 && sending === 0 ? true : undefined;
      },
      15_000,
      'the waiting claim dealt with',
    );
    await sleep(1_000);
    const lists = receiver.records.list({ externalCustomerId: 'r2' }).map((r) => ({
      seq: r.seq,
      status: r.answer.status,
      ids: ((r.body as Array<{ id: string }>) ?? []).map((m) => m.id),
    }));
    // The last list the contact's receiver got is the newest state: the new message only.
    expect(lists.at(-1)?.ids, JSON.stringify({ old: old.id, fresh: fresh.id, lists })).toEqual([fresh.id]);
  });
});
