/**
 * A webhook's own headers end to end: static headers (an API key, a bearer token, a routing header) configured with
 * UpsertWebhook or UpdateWebhook go out on every attempt of every delivery (first attempt, retries, replays), the
 * service's own headers always win, a change applies from the next attempt, and a read shows only their names.
 * Real server, real gRPC client, a real mock receiver that records each request's headers; both stores.
 */
import { randomUUID } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { createMockReceiver, type MockReceiver, type ReceivedRequest } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import { UpdateWebhookRequest, UpsertWebhookRequest } from '../../src/gen/app_inbox/v1/webhook.js';
import { openStore } from '../../src/store/index.js';
import type { Store } from '../../src/store/types.js';
import { RawClient } from '../reliability/raw-grpc.js';
import {
  accountId,
  deliveryIn,
  eventually,
  failure,
  inboxMessage,
  startTestServer,
  storeUrls,
  type TestServer,
} from './harness.js';

describe.each(storeUrls())("a webhook's own headers ($engine)", (target) => {
  let t: TestServer | undefined;
  let receiver: MockReceiver | undefined;
  /** The server's store as the engine holds it, without the sealing wrapper: what is at rest. */
  let raw: Store | undefined;

  afterEach(async () => {
    await t?.stop();
    await receiver?.close();
    t = undefined;
    receiver = undefined;
    raw = undefined;
  });
  afterAll(() => target.release());

  async function start(options: Parameters<typeof createMockReceiver>[0] = {}) {
    receiver = await createMockReceiver(options);
    const url = await target.newUrl();
    raw = await openStore(url);
    // Attempts enough that a delivery refused until its key is rotated cannot run out of them on a slow machine.
    t = await startTestServer(url, { maxAttempts: 20 }, { store: raw });
    return { clients: t.clients, mock: receiver, account: accountId('headers'), url: `${receiver.url}/hook` };
  }

  /** The requests the receiver got for one delivery, oldest first. */
  const requestsOf = (mock: MockReceiver, deliveryId: string): ReceivedRequest[] =>
    mock.records.list().filter((r) => r.deliveryId === deliveryId);

  it('sends them on the first attempt and on every retry, under the service’s own headers; a read shows the names only', async () => {
    // 503 twice for each delivery, then the contract's 200: one first attempt and two retries.
    const { clients, mock, account, url } = await start({ scenario: 'flaky' });
    const apiKey = `k_live_${randomUUID()}`;
    const saved = await clients.upsertWebhook({
      accountId: account,
      url,
      headers: { 'X-Api-Key': apiKey, 'X-Route': 'eu west' },
    });
    expect(saved.webhook?.headerNames).toEqual(['x-api-key', 'x-route']);

    const published = await clients.publishMessages({ accountId: account, messages: [inboxMessage('c-1')] });
    const deliveryId = published.deliveries[0]!.deliveryId;
    const delivered = await deliveryIn(clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    expect(delivered.attemptCount).toBe(3);
    const requests = requestsOf(mock, deliveryId);
    expect(requests.map((r) => r.answer.status)).toEqual([503, 503, 200]);
    for (const request of requests) {
      expect(request.headers).toMatchObject({
        'x-api-key': apiKey,
        'x-route': 'eu west',
        'content-type': 'application/json',
        'webhook-id': deliveryId,
        'app-inbox-contact': 'c-1',
      });
      expect(String(request.headers['user-agent'])).toMatch(/^app-inbox-webhooks\//);
    }

    // At rest each value is sealed like the password; the names are kept readable.
    const stored = await raw!.getWebhook(account);
    expect(Object.keys(stored?.headers ?? {})).toEqual(['x-api-key', 'x-route']);
    for (const value of Object.values(stored?.headers ?? {})) expect(value).toMatch(/^enc:v1:/);

    const read = (await clients.getWebhook({ accountId: account })).webhook;
    expect(read?.headerNames).toEqual(['x-api-key', 'x-route']);
    for (const answer of [saved, read]) {
      expect(JSON.stringify(answer)).not.toContain(apiKey);
      expect(JSON.stringify(answer)).not.toContain('eu west');
    }
  });

  it('UpdateWebhook `headers` replaces the whole set from the next attempt on, and a replay sends them as they are then, with the same body', async () => {
    const { clients, mock, account, url } = await start();
    const [oldKey, newKey] = [`k_old_${randomUUID()}`, `k_new_${randomUUID()}`];
    await clients.upsertWebhook({
      accountId: account,
      url,
      basicAuth: { username: 'u', password: 'p' },
      headers: { 'x-api-key': oldKey, 'x-route': 'eu' },
    });
    // The endpoint refuses every request until its API key is rotated (503: retried).
    mock.control.set({ rules: [{ id: 'down', answers: [{ status: 503 }], repeat: true }] });
    const published = await clients.publishMessages({ accountId: account, messages: [inboxMessage('c-1')] });
    const deliveryId = published.deliveries[0]!.deliveryId;
    await eventually(() => (requestsOf(mock, deliveryId).length >= 2 ? true : undefined));

    const updated = await clients.updateWebhook({
      accountId: account,
      updateMask: ['headers'],
      headers: { 'X-Api-Key': newKey },
    });
    expect(updated.webhook).toMatchObject({
      headerNames: ['x-api-key'],
      basicAuth: { username: 'u', hasPassword: true },
    });
    const firstNew = await eventually(() =>
      requestsOf(mock, deliveryId).find((r) => r.headers['x-api-key'] === newKey),
    );
    mock.control.clear();
    await deliveryIn(clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);

    const requests = requestsOf(mock, deliveryId);
    expect(requests[0]?.headers['x-api-key']).toBe(oldKey);
    expect(requests[0]?.headers['x-route']).toBe('eu');
    // From the first attempt with the new key on, every one has it, and nothing of the set it replaced.
    const after = requests.filter((r) => r.seq >= firstNew.seq);
    expect(after.length).toBeGreaterThanOrEqual(2);
    for (const request of after) {
      expect(request.headers['x-api-key']).toBe(newKey);
      expect(request.headers).not.toHaveProperty('x-route');
      // Basic auth, not named in the mask, is kept.
      expect(String(request.headers.authorization)).toMatch(/^Basic /);
    }
    // The body was frozen at the first attempt: the header change did not rebuild it.
    expect(new Set(requests.map((r) => JSON.stringify(r.body))).size).toBe(1);

    // A replay (RetryDelivery of a finished delivery) sends the headers as they are now: none, after this update.
    await clients.updateWebhook({ accountId: account, updateMask: ['headers'] });
    expect((await clients.getWebhook({ accountId: account })).webhook?.headerNames).toEqual([]);
    await clients.retryDelivery({ deliveryId });
    await eventually(() => (requestsOf(mock, deliveryId).length > requests.length ? true : undefined));
    const replayed = requestsOf(mock, deliveryId).at(-1)!;
    expect(replayed.headers).not.toHaveProperty('x-api-key');
    expect(replayed.body).toEqual(requests[0]?.body);
  });

  it('INVALID_ARGUMENT names the header: a reserved name, authorization beside Basic auth, a bad value (never shown)', async () => {
    const { clients, account, url } = await start();
    const refused = async (promise: Promise<unknown>) => {
      const failed = await failure(promise);
      expect(failed.code).toBe(status.INVALID_ARGUMENT);
      return failed;
    };
    const fieldsOf = (failed: Awaited<ReturnType<typeof refused>>) =>
      failed.rich?.badRequest?.fieldViolations.map((v) => v.field);

    const reserved = await refused(
      clients.upsertWebhook({
        accountId: account,
        url,
        headers: { Host: 'evil.example', 'Webhook-Signature': 'v1,x' },
      }),
    );
    expect(fieldsOf(reserved)).toEqual(['headers["host"]', 'headers["webhook-signature"]']);

    const secret = `k_secret_${randomUUID()}`;
    const both = await refused(
      clients.upsertWebhook({
        accountId: account,
        url,
        basicAuth: { username: 'u', password: 'p' },
        headers: { Authorization: `Bearer ${secret}`, 'x-api-key': `${secret}\r\nx-injected: 1` },
      }),
    );
    expect(fieldsOf(both)).toEqual(['headers["x-api-key"]', 'headers["authorization"]']);
    for (const failed of [reserved, both]) {
      expect(JSON.stringify(failed.rich)).not.toContain(secret);
      expect(failed.details).not.toContain(secret);
    }
    await expect(clients.getWebhook({ accountId: account })).rejects.toMatchObject({ code: status.NOT_FOUND });

    // UpdateWebhook checks the result whole: Basic auth added beside a stored Authorization header is refused too.
    await clients.upsertWebhook({ accountId: account, url, headers: { authorization: `Bearer ${secret}` } });
    const update = await refused(
      clients.updateWebhook({
        accountId: account,
        updateMask: ['basic_auth'],
        basicAuth: { username: 'u', password: 'p' },
      }),
    );
    expect(fieldsOf(update)).toEqual(['headers["authorization"]']);
    expect(JSON.stringify(update.rich)).not.toContain(secret);
    const many = Object.fromEntries(Array.from({ length: 21 }, (_, i) => [`x-h${i}`, 'v']));
    const tooMany = await refused(
      clients.updateWebhook({ accountId: account, updateMask: ['headers'], headers: many }),
    );
    expect(fieldsOf(tooMany)).toEqual(['headers']);
    expect((await clients.getWebhook({ accountId: account })).webhook?.headerNames).toEqual(['authorization']);
  });

  it('refuses a header named __proto__ (a valid HTTP token) instead of answering OK without it', async () => {
    const { clients, account, url } = await start();
    // Raw bytes, as a Go or Python client sends the map: the generated JavaScript client would drop the key itself.
    const client = new RawClient(t!.server.address);
    try {
      const headers = { ['__proto__']: 'k_proto', 'x-ok': '1' };
      const upsert = UpsertWebhookRequest.encode({
        ...UpsertWebhookRequest.fromPartial({ accountId: account, url }),
        headers,
      });
      const update = UpdateWebhookRequest.encode({
        ...UpdateWebhookRequest.fromPartial({ accountId: account, updateMask: ['headers'] }),
        headers,
      });
      for (const [method, bytes] of [
        ['UpsertWebhook', upsert.finish()],
        ['UpdateWebhook', update.finish()],
      ] as const) {
        expect(Buffer.from(bytes).includes('__proto__')).toBe(true);
        const answer = await client.unary(`/app_inbox.v1.WebhookService/${method}`, bytes);
        expect(answer.code).toBe(status.INVALID_ARGUMENT);
        expect(answer.rich?.badRequest?.fieldViolations.map((v) => v.field)).toEqual(['headers["__proto__"]']);
        expect(answer.details).not.toContain('k_proto');
        // Saved for UpdateWebhook's turn, which needs a webhook to update.
        await clients.upsertWebhook({ accountId: account, url, headers: { 'x-ok': '1' } });
      }
      expect((await clients.getWebhook({ accountId: account })).webhook?.headerNames).toEqual(['x-ok']);
    } finally {
      client.close();
    }
  });
});
