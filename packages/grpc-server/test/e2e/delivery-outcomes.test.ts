/**
 * SPEC §5 end to end: one test per row of the receiver-answer table, over real sockets (grpc-js client →
 * server → undici → mock receiver).
 */
import { createMockReceiver, type MockReceiver, type RuleInput } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AttemptVerdict, DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import { accountId, deliveryIn, inboxMessage, startTestServer, storeUrls, type TestServer } from './harness.js';

const TERMINAL = [DeliveryState.DELIVERY_STATE_DELIVERED, DeliveryState.DELIVERY_STATE_FAILED];

describe.each(storeUrls())('SPEC §5 receiver answers ($engine)', ({ newUrl, release }) => {
  let t: TestServer;
  let receivers: MockReceiver[] = [];

  beforeAll(async () => {
    // A short request timeout so the timeout row takes a third of a second.
    t = await startTestServer(await newUrl(), { requestTimeoutMs: 300, backoffBaseMs: 20, backoffMaxMs: 100 });
  });
  afterEach(async () => {
    await Promise.all(receivers.map((r) => r.close()));
    receivers = [];
  });
  afterAll(async () => {
    await t?.stop();
    await release();
  });

  /** A receiver answering with `rules` first, the account's webhook pointing at it, and one published message. */
  async function publishTo(rules: RuleInput[], auth?: { username: string; password: string }) {
    const receiver = await createMockReceiver({ rules, ...(auth ?? {}) });
    receivers.push(receiver);
    const account = accountId();
    await t.clients.upsertWebhook({
      accountId: account,
      url: `${receiver.url}/hooks/${account}`,
      basicAuth: auth,
      signingSecret: '',
    });
    const message = inboxMessage('contact-1');
    const published = await t.clients.publishMessages({ accountId: account, messages: [message] });
    expect(published).toMatchObject({ accepted: 1, duplicates: 0, skippedWithoutExternalCustomerId: 0 });
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    expect(published.deliveries).toEqual([{ externalCustomerId: 'contact-1', deliveryId }]);
    return { receiver, account, message, deliveryId };
  }

  it('200: delivered at the first attempt', async () => {
    const { receiver, message, deliveryId } = await publishTo([]);
    const delivery = await deliveryIn(t.clients, deliveryId, TERMINAL);
    expect(delivery.state).toBe(DeliveryState.DELIVERY_STATE_DELIVERED);
    expect(delivery.attempts).toHaveLength(1);
    expect(delivery.attempts[0]).toMatchObject({
      attemptNo: 1,
      statusCode: 200,
      verdict: AttemptVerdict.ATTEMPT_VERDICT_DELIVERED,
    });
    expect(delivery.nextAttemptTimeMs).toBeUndefined();
    expect(delivery.messageIds).toEqual([message.id]);
    const requests = receiver.records.list();
    expect(requests).toHaveLength(1);
    expect(requests[0]?.deliveryId).toBe(deliveryId);
    expect(requests[0]?.headers['content-type']).toMatch(/^application\/json/);
    // Exactly the seed's fields (SPEC §4; absent image/link are sent empty); the TTL is not part of the payload.
    expect(requests[0]?.body).toEqual([
      {
        externalCustomerId: 'contact-1',
        id: message.id,
        createdDate: message.createdDate,
        title: message.title,
        content: message.content,
        image: '',
        link: '',
        category: message.category,
      },
    ]);
  });

  // 403 is a documented choice (core's table): the seed calls its retried authentication failure "401 Forbidden".
  it.each([403, 429, 500, 502, 503])('%i: retried with the same id and bytes, then delivered', async (statusCode) => {
    const { receiver, deliveryId } = await publishTo([
      { answers: [{ status: statusCode, times: 2 }], per: 'delivery' },
    ]);
    const delivery = await deliveryIn(t.clients, deliveryId, TERMINAL);
    expect(delivery.state).toBe(DeliveryState.DELIVERY_STATE_DELIVERED);
    expect(delivery.attempts.map((a) => [a.statusCode, a.verdict])).toEqual([
      [statusCode, AttemptVerdict.ATTEMPT_VERDICT_RETRY],
      [statusCode, AttemptVerdict.ATTEMPT_VERDICT_RETRY],
      [200, AttemptVerdict.ATTEMPT_VERDICT_DELIVERED],
    ]);
    for (const a of delivery.attempts.slice(0, 2)) expect(a.nextAttemptTimeMs).toBeGreaterThan(a.startTimeMs);
    const requests = receiver.records.list();
    expect(requests.map((r) => r.answer.status)).toEqual([statusCode, statusCode, 200]);
    expect(new Set(requests.map((r) => r.deliveryId))).toEqual(new Set([deliveryId]));
    expect(receiver.records.duplicates().deliveries).toEqual([
      expect.objectContaining({ deliveryId, count: 3, bodiesEqual: true }),
    ]);
    if (statusCode === 429) {
      // The receiver's Retry-After (1 s) is honoured, clamped by the test's retryAfterMaxMs (500 ms),
      // instead of the 20 ms backoff a 500 gets.
      const first = delivery.attempts[0];
      expect(
        (first?.nextAttemptTimeMs ?? 0) - (first?.startTimeMs ?? 0) - (first?.durationMs ?? 0),
      ).toBeGreaterThanOrEqual(450);
    }
  });

  it('an empty custom_data is none: accepted, and the receiver gets no customData', async () => {
    const receiver = await createMockReceiver();
    receivers.push(receiver);
    const account = accountId();
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/in`, signingSecret: '' });
    const message = { ...inboxMessage('c-empty'), customData: '' };
    const published = await t.clients.publishMessages({ accountId: account, messages: [message] });
    expect(published).toMatchObject({ accepted: 1 });
    const delivery = await deliveryIn(t.clients, published.deliveries[0]!.deliveryId, TERMINAL);
    expect(delivery.state).toBe(DeliveryState.DELIVERY_STATE_DELIVERED);
    const [sent] = receiver.records.list()[0]!.body as Array<Record<string, unknown>>;
    expect(sent).toMatchObject({ id: message.id });
    expect(sent).not.toHaveProperty('customData');
  });

  it('401: retried; the next attempt uses the corrected credentials and is delivered', async () => {
    const auth = { username: 'hook-user', password: 'right-password' };
    const receiver = await createMockReceiver(auth);
    receivers.push(receiver);
    const account = accountId();
    const webhook = { accountId: account, url: `${receiver.url}/in`, signingSecret: '' };
    await t.clients.upsertWebhook({ ...webhook, basicAuth: { username: 'hook-user', password: 'wrong-password' } });
    const published = await t.clients.publishMessages({ accountId: account, messages: [inboxMessage('c-401')] });
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    await receiver.records.waitFor((r) => r.answer.status === 401);
    const retrying = await deliveryIn(t.clients, deliveryId, [DeliveryState.DELIVERY_STATE_RETRYING, ...TERMINAL]);
    expect(retrying.state).toBe(DeliveryState.DELIVERY_STATE_RETRYING);
    await t.clients.upsertWebhook({ ...webhook, basicAuth: auth });
    const delivery = await deliveryIn(t.clients, deliveryId, TERMINAL);
    expect(delivery.state).toBe(DeliveryState.DELIVERY_STATE_DELIVERED);
    const statuses = delivery.attempts.map((a) => a.statusCode);
    expect(statuses.at(-1)).toBe(200);
    expect(statuses.slice(0, -1).every((s) => s === 401)).toBe(true);
    expect(new Set(receiver.records.list().map((r) => r.deliveryId))).toEqual(new Set([deliveryId]));
  });

  it('timeout: an unanswered attempt is cut at the request timeout, retried, then delivered', async () => {
    const { receiver, deliveryId } = await publishTo([{ answers: [{ action: 'hang' }], per: 'delivery' }]);
    const delivery = await deliveryIn(t.clients, deliveryId, TERMINAL);
    expect(delivery.state).toBe(DeliveryState.DELIVERY_STATE_DELIVERED);
    expect(delivery.attempts).toHaveLength(2);
    expect(delivery.attempts[0]).toMatchObject({
      statusCode: undefined,
      errorKind: 'timeout',
      verdict: AttemptVerdict.ATTEMPT_VERDICT_RETRY,
    });
    expect(delivery.attempts[0]?.durationMs).toBeGreaterThanOrEqual(250);
    expect(delivery.attempts[1]).toMatchObject({ statusCode: 200, verdict: AttemptVerdict.ATTEMPT_VERDICT_DELIVERED });
    await receiver.records.waitFor((r) => r.answer.status === 200);
    expect(receiver.records.list().every((r) => r.deliveryId === deliveryId)).toBe(true);
  });

  it('400: failed at once, not retried, kept for inspection with its body', async () => {
    const { receiver, message, deliveryId } = await publishTo([{ answers: [{ status: 400 }], repeat: true }]);
    const delivery = await deliveryIn(t.clients, deliveryId, TERMINAL);
    expect(delivery.state).toBe(DeliveryState.DELIVERY_STATE_FAILED);
    expect(delivery.attempts).toEqual([
      expect.objectContaining({ attemptNo: 1, statusCode: 400, verdict: AttemptVerdict.ATTEMPT_VERDICT_FAILED }),
    ]);
    expect(delivery.attempts[0]?.nextAttemptTimeMs).toBeUndefined();
    expect(delivery.nextAttemptTimeMs).toBeUndefined();
    expect(JSON.parse(Buffer.from(delivery.body).toString('utf8'))).toEqual([
      expect.objectContaining({ id: message.id }),
    ]);
    // Ten times the retry delay later, still exactly one request.
    await new Promise((r) => setTimeout(r, 250));
    expect(receiver.records.list()).toHaveLength(1);
    const again = await t.clients.getDelivery({ deliveryId, includeBody: false });
    expect(again.delivery?.attemptCount).toBe(1);
  });
});
