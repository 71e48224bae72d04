/**
 * SPEC §5 "429 … retries (honours Retry-After when given)", end to end over real sockets: a Retry-After holds the
 * whole endpoint. The receiver answers one request 429 with `Retry-After: 1`; deliveries of the account's other
 * contacts published meanwhile wait for that second too (before, each went out at once and could only collect a 429
 * of its own), GetWebhook shows the hold, and everything is delivered once it ends. Another account's endpoint is not
 * held.
 */
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import {
  accountId,
  deliveryIn,
  eventually,
  inboxMessage,
  startTestServer,
  storeUrls,
  type TestServer,
} from './harness.js';

const HOLD_MS = 2_000;

describe.each(storeUrls())('a Retry-After holds the whole endpoint ($engine)', ({ newUrl, release }) => {
  let t: TestServer;
  const receivers: MockReceiver[] = [];

  beforeAll(async () => {
    // A delivery's own wait for a Retry-After is capped at 3 s here (the tests' default cap is 500 ms), and so is the
    // endpoint's hold: the receiver's 2 s are honoured in full.
    t = await startTestServer(
      await newUrl(),
      { backoffBaseMs: 20, backoffMaxMs: 100 },
      { engine: { backoff: { retryAfterMaxMs: 3_000 } } },
    );
  });
  afterEach(async () => {
    await Promise.all(receivers.splice(0).map((r) => r.close()));
  });
  afterAll(async () => {
    await t?.stop();
    await release();
  });

  it("holds every contact's delivery until the Retry-After has passed, then delivers them all", async () => {
    const receiver = await createMockReceiver({
      rules: [{ answers: [{ status: 429, retryAfterSeconds: HOLD_MS / 1000, times: 1 }], per: 'rule' }],
    });
    const other = await createMockReceiver();
    receivers.push(receiver, other);
    const account = accountId();
    const otherAccount = accountId();
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/in`, signingSecret: '' });
    await t.clients.upsertWebhook({ accountId: otherAccount, url: `${other.url}/in`, signingSecret: '' });

    await t.clients.publishMessages({ accountId: account, messages: [inboxMessage('first')] });
    await receiver.records.waitFor((r) => r.answer.status === 429);
    // Once the server has recorded the 429 (not only once the receiver sent it), GetWebhook shows the hold.
    const heldUntil = await eventually(async () => {
      const { webhook } = await t.clients.getWebhook({ accountId: account });
      return webhook?.circuit?.heldUntilMs;
    }, 2_000);
    expect(heldUntil).toBeGreaterThan(Date.now());

    const contacts = ['c-1', 'c-2', 'c-3', 'c-4', 'c-5'];
    const published = await t.clients.publishMessages({
      accountId: account,
      messages: contacts.map((c) => inboxMessage(c)),
    });
    await t.clients.publishMessages({ accountId: otherAccount, messages: [inboxMessage('elsewhere')] });
    // The other endpoint is not held: delivered while this one still is.
    const elsewhere = await other.records.waitFor((r) => r.answer.status === 200, 2_000);
    expect(Date.parse(elsewhere.receivedAt)).toBeLessThan(heldUntil!);

    for (const d of published.deliveries) {
      const delivery = await deliveryIn(t.clients, d.deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED], 10_000);
      // One attempt each: they waited, they did not collect a 429 of their own.
      expect(delivery.attempts.map((a) => a.statusCode)).toEqual([200]);
    }
    const requests = receiver.records.list().filter((r) => contacts.includes(r.externalCustomerIds[0] ?? ''));
    expect(requests).toHaveLength(contacts.length);
    // None before the hold's end (the receiver's 2 s from the 429's answer; the same clock, this machine's).
    for (const r of requests) expect(Date.parse(r.receivedAt)).toBeGreaterThanOrEqual(heldUntil! - 5);
    expect((await t.clients.getWebhook({ accountId: account })).webhook?.circuit?.heldUntilMs).toBeUndefined();
  });

  it('holds nothing for a Retry-After of the old endpoint answered after a save pointed the webhook elsewhere', async () => {
    // The old receiver answers its one request 429 'Retry-After: 60', 0.7 s after it came (the tests cut a request at 1 s).
    const old = await createMockReceiver({
      rules: [{ answers: [{ status: 429, retryAfterSeconds: 60, delayMs: 700, times: 1 }], per: 'rule' }],
    });
    const next = await createMockReceiver();
    receivers.push(old, next);
    const account = accountId();
    await t.clients.upsertWebhook({ accountId: account, url: `${old.url}/in`, signingSecret: '' });
    const [first] = (await t.clients.publishMessages({ accountId: account, messages: [inboxMessage('first')] }))
      .deliveries;
    // Its request is out (claimed, then sent at once): the webhook is pointed at the new receiver meanwhile.
    await deliveryIn(t.clients, first!.deliveryId, [DeliveryState.DELIVERY_STATE_IN_FLIGHT], 5_000);
    await new Promise((resolve) => setTimeout(resolve, 250));
    await t.clients.upsertWebhook({ accountId: account, url: `${next.url}/in`, signingSecret: '' });
    // The old endpoint's 429 comes after the save, and is recorded (the circuit is told right after the record).
    await deliveryIn(t.clients, first!.deliveryId, [DeliveryState.DELIVERY_STATE_RETRYING], 5_000);
    expect(old.records.list().map((r) => r.answer.status)).toEqual([429]);
    // The new endpoint is not held by what the old one said: GetWebhook shows no hold, another contact goes at once
    // (held, it would wait the 2 s cap).
    expect((await t.clients.getWebhook({ accountId: account })).webhook?.circuit?.heldUntilMs).toBeUndefined();
    const sentAt = Date.now();
    await t.clients.publishMessages({ accountId: account, messages: [inboxMessage('second')] });
    const delivered = await next.records.waitFor((r) => r.externalCustomerIds[0] === 'second', 5_000);
    expect(Date.parse(delivered.receivedAt) - sentAt).toBeLessThan(1_000);
  });
});
