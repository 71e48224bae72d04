/**
 * The Prometheus endpoint of a real server (issue 8 "Metrics"): scraped over HTTP after real deliveries to
 * the mock receiver, on both store engines (the queue gauges are read from the store).
 */
import { randomUUID } from 'node:crypto';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import {
  accountId,
  deliveryIn,
  failure,
  inboxMessage,
  startTestServer,
  storeUrls,
  type TestServer,
} from '../e2e/harness.js';
import { sample, scrape } from './helpers.js';

const PUBLISH = 'app_inbox.v1.MessageService/PublishMessages';

describe.each(storeUrls())('metrics endpoint ($engine)', ({ newUrl, release }) => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn();
  });
  afterAll(() => release());

  async function receiver(options: Parameters<typeof createMockReceiver>[0] = {}): Promise<MockReceiver> {
    const r = await createMockReceiver(options);
    cleanups.push(() => r.close());
    return r;
  }

  async function server(options: Parameters<typeof startTestServer>[2] = {}): Promise<TestServer> {
    const t = await startTestServer(await newUrl(), { metricsAddress: '127.0.0.1:0' }, options);
    cleanups.push(() => t.stop());
    return t;
  }

  it('counts deliveries by outcome, gRPC calls by method and code, failures and circuit state per account', async () => {
    const t = await server();
    const address = t.server.metricsAddress;
    expect(address).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(address).not.toBe('127.0.0.1:0');

    const ok = await receiver();
    // 410 Gone: a failure that is not retried and pauses the endpoint at once (its circuit opens).
    const gone = await receiver({ rules: [{ answers: [{ status: 410 }], repeat: true }] });
    const good = accountId('good');
    const bad = accountId('gone');
    await t.clients.upsertWebhook({ accountId: good, url: `${ok.url}/hook` });
    await t.clients.upsertWebhook({ accountId: bad, url: `${gone.url}/hook` });

    const published = await t.clients.publishMessages({
      accountId: good,
      messages: [inboxMessage('c1'), inboxMessage('c2')],
    });
    const refused = await t.clients.publishMessages({ accountId: bad, messages: [inboxMessage('c3')] });
    const invalid = await failure(
      t.clients.publishMessages({ accountId: good, messages: [inboxMessage('c4', { id: 'not-a-uuid' })] }),
    );
    expect(invalid.rich?.badRequest?.fieldViolations[0]?.field).toBe('messages[0].id');

    for (const d of published.deliveries) {
      await deliveryIn(t.clients, d.deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    }
    await deliveryIn(t.clients, refused.deliveries[0]!.deliveryId, [DeliveryState.DELIVERY_STATE_FAILED]);

    const text = await scrape(address!);
    expect(sample(text, 'deliveries_total', { outcome: 'delivered', status_class: '2xx' })).toBe(2);
    expect(sample(text, 'deliveries_total', { outcome: 'failed', status_class: '4xx' })).toBe(1);
    expect(sample(text, 'delivery_attempt_duration_seconds_count')).toBe(3);
    expect(sample(text, 'grpc_server_calls_total', { method: PUBLISH, code: 'OK' })).toBe(2);
    expect(sample(text, 'grpc_server_calls_total', { method: PUBLISH, code: 'INVALID_ARGUMENT' })).toBe(1);
    expect(sample(text, 'grpc_server_calls_total', { method: 'app_inbox.v1.WebhookService/UpsertWebhook' })).toBe(2);
    expect(sample(text, 'grpc_server_call_duration_seconds_count', { method: PUBLISH })).toBe(3);
    expect(sample(text, 'endpoint_failures_total', { account: bad })).toBe(1);
    expect(sample(text, 'endpoint_failures_total', { account: good })).toBeUndefined();
    // 2 = open: wired from the circuit breaker's state changes.
    expect(sample(text, 'endpoint_circuit_state', { account: bad })).toBe(2);
    // The queue as the store holds it.
    expect(sample(text, 'delivery_queue_depth', { state: 'delivered' })).toBe(2);
    expect(sample(text, 'delivery_queue_depth', { state: 'failed' })).toBe(1);
    expect(sample(text, 'delivery_queue_depth', { state: 'pending' })).toBe(0);
    expect(sample(text, 'oldest_pending_delivery_age_seconds')).toBe(0);
    // Process metrics come with an endpoint.
    expect(sample(text, 'process_cpu_user_seconds_total')).toBeGreaterThan(0);

    const health = await fetch(`http://${address}/healthz`);
    expect(health.status).toBe(200);
  });

  it("drops an account's failure and circuit series when its webhook is deleted", async () => {
    const t = await server();
    // 410 Gone: one failed attempt, and the circuit opens at once: both per-account series exist.
    const gone = await receiver({ rules: [{ answers: [{ status: 410 }], repeat: true }] });
    const bad = accountId('deleted');
    const kept = accountId('kept');
    await t.clients.upsertWebhook({ accountId: bad, url: `${gone.url}/hook` });
    await t.clients.upsertWebhook({ accountId: kept, url: `${gone.url}/hook` });
    for (const acct of [bad, kept]) {
      const published = await t.clients.publishMessages({ accountId: acct, messages: [inboxMessage('c1')] });
      await deliveryIn(t.clients, published.deliveries[0]!.deliveryId, [DeliveryState.DELIVERY_STATE_FAILED]);
    }
    const before = await scrape(t.server.metricsAddress!);
    expect(sample(before, 'endpoint_failures_total', { account: bad })).toBe(1);
    expect(sample(before, 'endpoint_circuit_state', { account: bad })).toBe(2);

    await t.clients.deleteWebhook({ accountId: bad });

    // Accounts come and go: a deleted one's series must not stay for the life of the process.
    const after = await scrape(t.server.metricsAddress!);
    expect(sample(after, 'endpoint_failures_total', { account: bad })).toBeUndefined();
    expect(sample(after, 'endpoint_circuit_state', { account: bad })).toBeUndefined();
    expect(sample(after, 'endpoint_failures_total', { account: kept })).toBe(1);
    expect(sample(after, 'endpoint_circuit_state', { account: kept })).toBe(2);
  });

  it('shows a backlog: pending deliveries and the age of the oldest one, from the server clock, not a disabled webhook', async () => {
    let now = Date.now();
    const t = await server({ clock: () => now });
    const ok = await receiver();
    // Nothing is sent from here on: the deliveries of an enabled webhook stay due, a backlog.
    await t.server.engine.stop();
    // A disabled webhook keeps accepting messages and sends nothing (SPEC §2), by design: its deliveries, older, are
    // counted by state but are no backlog an operator could act on.
    const off = accountId('disabled');
    await t.clients.upsertWebhook({ accountId: off, url: `${ok.url}/hook`, enabled: false });
    await t.clients.publishMessages({ accountId: off, messages: [inboxMessage('a'), inboxMessage('b')] });
    now += 30_000;
    const on = accountId('enabled');
    await t.clients.upsertWebhook({ accountId: on, url: `${ok.url}/hook` });
    await t.clients.publishMessages({ accountId: on, messages: [inboxMessage('a'), inboxMessage('b')] });
    now += 90_000;

    const text = await scrape(t.server.metricsAddress!);
    expect(sample(text, 'delivery_queue_depth', { state: 'pending' })).toBe(4);
    expect(sample(text, 'oldest_pending_delivery_age_seconds')).toBe(90);
    expect(ok.records.list()).toEqual([]);
  });

  it('stops answering once the server is closed', async () => {
    const t = await startTestServer(await newUrl(), { metricsAddress: '127.0.0.1:0' });
    const address = t.server.metricsAddress!;
    expect((await fetch(`http://${address}/metrics`)).status).toBe(200);
    await t.stop();
    await expect(fetch(`http://${address}/metrics`)).rejects.toThrow();
  });

  it('runs no metrics endpoint when the address is empty', async () => {
    const t = await startTestServer(await newUrl(), { metricsAddress: '' });
    cleanups.push(() => t.stop());
    expect(t.server.metricsAddress).toBeNull();
    // The counters still exist in process (a library user may scrape them another way).
    await t.clients.getWebhook({ accountId: `acct-${randomUUID()}` }).catch(() => undefined);
    expect(sample((await t.server.metrics.scrape()).body, 'grpc_server_calls_total', { code: 'NOT_FOUND' })).toBe(1);
  });
});
