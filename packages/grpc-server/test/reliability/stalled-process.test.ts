/**
 * The real server process (main.ts) stalls (SIGSTOP, as a VM pause or a swap storm would) for longer than its
 * lease while one of its attempts is in flight, then resumes (SIGCONT); it is the only process on the store.
 * On resuming it takes its own expired claim back: the delivery must never be in flight twice at once at the
 * receiver. Before each claim had an owner of its own, the late outcome of the first attempt was recorded while
 * the second request was out, and a third went out alongside it.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import {
  accountId,
  deliveryIn,
  eventually,
  inboxMessage,
  spawnServer,
  storeUrls,
  type ChildServer,
} from '../e2e/harness.js';
import { startTrackingReceiver, type TrackingReceiver } from '../scale/tracking-receiver.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const ARGS = [
  '--request-timeout-ms',
  '2000',
  '--lease-ms',
  '3000',
  '--poll-interval-ms',
  '20',
  '--backoff-base-ms',
  '20',
  '--backoff-max-ms',
  '50',
  '--max-attempts',
  '50',
];

describe.each(storeUrls())('a process stalled past its lease ($engine)', ({ newUrl, release }) => {
  let server: ChildServer | undefined;
  let receiver: TrackingReceiver | undefined;
  afterEach(async () => {
    if (server) {
      try {
        process.kill(server.pid, 'SIGCONT');
      } catch {
        // gone
      }
      await server.kill();
    }
    await receiver?.close();
  });
  afterAll(() => release());

  it('never has its delivery in flight twice at once after it resumes', async () => {
    // Every request is answered 200 after 1.2 s (within the 2 s request timeout).
    receiver = await startTrackingReceiver({ answerDelayMs: 1_200, failEvery: 1_000_000 });
    server = await spawnServer(await newUrl(), ARGS);
    const acc = accountId();
    await server.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/in`, signingSecret: '' });
    const published = await server.clients.publishMessages({ accountId: acc, messages: [inboxMessage('c1')] });
    const deliveryId = published.deliveries[0]!.deliveryId;
    await eventually(() => (receiver!.requests.length >= 1 ? true : undefined), 5_000, 'the first request');

    process.kill(server.pid, 'SIGSTOP');
    await sleep(4_500); // longer than the lease (3 s)
    process.kill(server.pid, 'SIGCONT');

    const delivered = await deliveryIn(server.clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED], 15_000);
    await sleep(2_000);
    const seen = receiver.requests.map((r) => ({ n: r.n, start: r.start, end: r.end, status: r.status }));
    const { delivery } = await server.clients.getDelivery({ deliveryId });
    const attempts = delivery?.attempts.map((a) => ({ no: a.attemptNo, status: a.statusCode, err: a.errorKind }));
    const report = JSON.stringify({ seen, attempts, state: delivered.state });
    expect(receiver.violations, report).toEqual([]);
  });
});
