/**
 * A delivery whose attempt takes down every process that makes it (here: each process is killed with SIGKILL while
 * its request is out) is not tried forever. Each restarted process takes the dead one's claim back when its lease
 * ends, one more loss in a row; at `--max-lease-losses` the delivery fails without another request, `lease_lost:<n>`,
 * and a replay sends it again.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
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

const ARGS = [
  '--request-timeout-ms',
  '2000',
  '--lease-ms',
  '3000',
  '--poll-interval-ms',
  '50',
  '--max-lease-losses',
  '2',
];

/** A receiver that never answers the first `hangFor` requests (their sender is killed meanwhile), then 200. */
async function startHangingReceiver(hangFor: number) {
  const arrivals: string[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    arrivals.push(String(req.headers['webhook-id']));
    req.resume();
    if (arrivals.length > hangFor) res.end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    arrivals,
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

describe.each(storeUrls())('a delivery whose attempts kill the process ($engine)', ({ newUrl, release }) => {
  const servers: ChildServer[] = [];
  let receiver: Awaited<ReturnType<typeof startHangingReceiver>> | undefined;
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.kill();
    await receiver?.close();
  });
  afterAll(() => release());

  it('is failed without a request after --max-lease-losses claims lost in a row, and sent again on a replay', async () => {
    receiver = await startHangingReceiver(2);
    const store = await newUrl();
    const start = async () => {
      const server = await spawnServer(store, ARGS);
      servers.push(server);
      return server;
    };
    let server = await start();
    const acc = accountId();
    await server.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/in`, signingSecret: '' });
    const published = await server.clients.publishMessages({ accountId: acc, messages: [inboxMessage('c1')] });
    const deliveryId = published.deliveries[0]!.deliveryId;

    // Twice: the request is out, the process is killed; the next process takes the claim back after its lease.
    for (let request = 1; request <= 2; request++) {
      await eventually(() => (receiver!.arrivals.length >= request ? true : undefined), 15_000, `request ${request}`);
      await server.kill('SIGKILL');
      server = await start();
    }
    const failed = await deliveryIn(server.clients, deliveryId, [DeliveryState.DELIVERY_STATE_FAILED], 15_000);
    expect(failed).toMatchObject({ lastError: 'lease_lost:2', attemptCount: 1, leaseLosses: 0 });
    expect(failed.attempts).toMatchObject([{ attemptNo: 1, errorKind: 'lease_lost', durationMs: 0 }]);
    expect(failed.attempts[0]?.statusCode).toBeUndefined();
    // The two requests of the killed processes, none after them.
    expect(receiver.arrivals).toEqual([deliveryId, deliveryId]);

    await server.clients.retryDelivery({ deliveryId });
    await deliveryIn(server.clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED], 15_000);
    expect(receiver.arrivals).toEqual([deliveryId, deliveryId, deliveryId]);
  });
});
