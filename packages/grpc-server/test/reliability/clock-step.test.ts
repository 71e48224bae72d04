/**
 * One server process whose wall clock steps forward (NTP correction, VM resumed) by more than the lease while
 * one of its attempts waits for the receiver: the process takes its own claim back (leases are wall-clock
 * times), but must not send the delivery a second time while the first request is in flight (README "A delivery
 * is in flight on one worker at a time"). The new claim is handed to the attempt under way, which records its
 * 200 under it: one request, one recorded attempt (engine.ts, `#attemptWithSlot`).
 */
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
import { startTrackingReceiver, type TrackingReceiver } from '../scale/tracking-receiver.js';

describe.each(storeUrls())('wall clock step forward during an attempt ($engine)', ({ newUrl, release }) => {
  let server: TestServer | undefined;
  let receiver: TrackingReceiver | undefined;
  afterEach(async () => {
    await server?.stop();
    await receiver?.close();
  });
  afterAll(() => release());

  it('does not re-send its own live claim while the first request is still in flight', async () => {
    // The receiver answers after 2 s (within the 3 s request timeout); it never answers 503.
    receiver = await startTrackingReceiver({ answerDelayMs: 2_000, failEvery: 1_000_000 });
    let offset = 0;
    server = await startTestServer(
      await newUrl(),
      { requestTimeoutMs: 3_000, leaseMs: 4_000 },
      { clock: () => Date.now() + offset },
    );
    const acc = accountId();
    await server.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/in`, signingSecret: '' });
    await server.clients.publishMessages({ accountId: acc, messages: [inboxMessage('c1')] });
    await eventually(() => (receiver!.requests.length >= 1 ? true : undefined), 5_000, 'the first request');

    // The wall clock jumps 10 s ahead while the request is in flight (its timeout is a real timer: still live).
    offset = 10_000;
    // Until the receiver has answered the first request (2 s after it came): a fixed 2.5 s wait left 0.5 s for the
    // receiver's own timer, too little on a loaded machine. A re-send would come while it is in flight.
    const first = receiver.requests[0]!;
    await eventually(() => (first.end !== null ? true : undefined), 10_000, 'the answer to the first request');
    // And until that answer is recorded: the claim is over, nothing of the delivery can be sent any more.
    await deliveryIn(server.clients, first.deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED], 10_000);

    expect(first.status).toBe(200);
    // What the receiver saw: every request of the delivery, with its arrival and answer times.
    const seen = receiver.requests.map((r) => ({ n: r.n, deliveryId: r.deliveryId, start: r.start, end: r.end }));
    expect(receiver.violations, JSON.stringify(seen)).toEqual([]);
    expect(receiver.requests.filter((r) => r.deliveryId === first.deliveryId)).toHaveLength(1);
  });
});
