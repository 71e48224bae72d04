/**
 * Traces from the RPC that accepted the messages to each delivery attempt (issue 8 "Traces"): a real
 * server exports OTLP/HTTP to a local collector stand-in; the attempt spans, made later by the delivery
 * engine, are children of the RPC's span through the traceparent stored on the delivery.
 */
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import { PublishMessagesRequest, type PublishMessagesResponse } from '../../src/gen/app_inbox/v1/message.js';
import { accountId, deliveryIn, inboxMessage, startTestServer, storeUrls, type TestServer } from '../e2e/harness.js';
import { attribute, startCollector, type Collector, type OtlpSpan } from './helpers.js';

const PUBLISH = 'app_inbox.v1.MessageService/PublishMessages';
const RETRY = 'app_inbox.v1.DeliveryService/RetryDelivery';
/** SpanKind in OTLP: 2 SERVER, 3 CLIENT. */
const SERVER = 2;
const CLIENT = 3;

describe.each(storeUrls())('traces over OTLP ($engine)', ({ newUrl, release }) => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn();
  });
  afterAll(() => release());

  async function setUp(): Promise<{ t: TestServer; collector: Collector; receiver: MockReceiver }> {
    const collector = await startCollector();
    cleanups.push(() => collector.close());
    const receiver = await createMockReceiver({
      rules: [{ match: { externalCustomerId: 'flaky' }, answers: [{ status: 503 }] }],
    });
    cleanups.push(() => receiver.close());
    // The OTEL_* variables of the machine running the tests are not read: the endpoint is the option's.
    const t = await startTestServer(await newUrl(), { otlpEndpoint: collector.url }, { env: {} });
    cleanups.push(() => t.stop());
    expect(t.server.tracesUrl).toBe(`${collector.url}/v1/traces`);
    return { t, collector, receiver };
  }

  function publishWithParent(t: TestServer, request: PublishMessagesRequest, traceparent: string) {
    const metadata = new Metadata();
    metadata.set('traceparent', traceparent);
    return new Promise<PublishMessagesResponse>((resolve, reject) => {
      t.clients.message.publishMessages(request, metadata, (error: ServiceError | null, response) =>
        error ? reject(error) : resolve(response),
      );
    });
  }

  it('puts every attempt, retries included, in the trace of the RPC that accepted the messages', async () => {
    const { t, collector, receiver } = await setUp();
    const acct = accountId();
    await t.clients.upsertWebhook({ accountId: acct, url: `${receiver.url}/hook` });
    const published = await t.clients.publishMessages({
      accountId: acct,
      messages: [inboxMessage('steady'), inboxMessage('flaky')],
    });
    const ids = new Map(published.deliveries.map((d) => [d.externalCustomerId, d.deliveryId]));
    for (const id of ids.values()) await deliveryIn(t.clients, id, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    // Closing exports what is left (the batch processor would wait up to 5 s otherwise).
    await t.stop();

    const rpc = collector.spans.filter((s) => s.name === PUBLISH);
    expect(rpc).toHaveLength(1);
    expect(rpc[0]!.kind).toBe(SERVER);
    expect(rpc[0]!.parentSpanId ?? '').toBe('');
    const attempts = (contact: string): OtlpSpan[] =>
      collector.spans
        .filter((s) => s.name === 'delivery attempt' && attribute(s, 'app_inbox.delivery.id') === ids.get(contact))
        .sort(
          (a, b) =>
            Number(attribute(a, 'app_inbox.delivery.attempt')) - Number(attribute(b, 'app_inbox.delivery.attempt')),
        );

    const steady = attempts('steady');
    const flaky = attempts('flaky');
    expect(steady).toHaveLength(1);
    expect(flaky).toHaveLength(2);
    for (const span of [...steady, ...flaky]) {
      // Same trace as the RPC, and a direct child of its span.
      expect(span.traceId).toBe(rpc[0]!.traceId);
      expect(span.parentSpanId).toBe(rpc[0]!.spanId);
      expect(span.kind).toBe(CLIENT);
      expect(attribute(span, 'app_inbox.account.id')).toBe(acct);
      expect(attribute(span, 'server.address')).toBe('127.0.0.1');
    }
    expect(attribute(flaky[0]!, 'http.response.status_code')).toBe(503);
    expect(attribute(flaky[0]!, 'app_inbox.delivery.outcome')).toBe('retrying');
    expect(flaky[0]!.status?.code).toBe(2); // ERROR: no 2xx came
    expect(attribute(flaky[1]!, 'http.response.status_code')).toBe(200);
    expect(attribute(flaky[1]!, 'app_inbox.delivery.outcome')).toBe('delivered');
    expect(collector.requests.every((r) => r.path === '/v1/traces' && r.contentType.includes('json'))).toBe(true);
  });

  it("continues the caller's trace (traceparent metadata) and moves a replay into the replay's trace", async () => {
    const { t, collector, receiver } = await setUp();
    const acct = accountId();
    await t.clients.upsertWebhook({ accountId: acct, url: `${receiver.url}/hook` });
    const callerTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const callerSpan = '00f067aa0ba902b7';
    const published = await publishWithParent(
      t,
      PublishMessagesRequest.fromPartial({ accountId: acct, messages: [inboxMessage('c')] }),
      `00-${callerTrace}-${callerSpan}-01`,
    );
    const deliveryId = published.deliveries[0]!.deliveryId;
    await deliveryIn(t.clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    await t.clients.retryDelivery({ deliveryId });
    await deliveryIn(t.clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    // Wait for the replayed attempt (the second request with this delivery id) before closing.
    await receiver.records.waitFor((r) => r.deliveryId === deliveryId && r.duplicate, 5_000);
    await t.stop();

    const rpc = collector.spans.find((s) => s.name === PUBLISH)!;
    expect(rpc.traceId).toBe(callerTrace);
    expect(rpc.parentSpanId).toBe(callerSpan);
    const retry = collector.spans.find((s) => s.name === RETRY)!;
    expect(retry.traceId).not.toBe(callerTrace);
    const attempts = collector.spans.filter((s) => s.name === 'delivery attempt');
    const byNo = new Map(attempts.map((s) => [Number(attribute(s, 'app_inbox.delivery.attempt')), s]));
    expect(byNo.get(1)).toMatchObject({ traceId: callerTrace, parentSpanId: rpc.spanId });
    expect(byNo.get(2)).toMatchObject({ traceId: retry.traceId, parentSpanId: retry.spanId });
  });
});
