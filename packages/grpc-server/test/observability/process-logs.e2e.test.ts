/**
 * The real process (`src/main.ts`) as operators run it: one JSON log line per delivery attempt with the
 * fields of issue 8 and no secret anywhere in the output, and the metrics endpoint of `--metrics-address`.
 */
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
import { sample, scrape } from './helpers.js';

const PASSWORD = 'pa55-word-never-logged';
const SIGNING_SECRET = `whsec_${Buffer.alloc(32, 9).toString('base64')}`;
const URL_TOKEN = 'query-token-never-logged';

describe('per-attempt logs and metrics of the server process', () => {
  const [sqlite] = storeUrls();
  let receiver: MockReceiver;
  let child: ChildServer;
  const lines: Array<Record<string, unknown>> = [];

  beforeAll(async () => {
    receiver = await createMockReceiver({
      username: 'hook-user',
      password: PASSWORD,
      // The first request of the contact `flaky` gets a 503: its delivery is retried once.
      rules: [{ id: 'once', match: { externalCustomerId: 'flaky' }, answers: [{ status: 503 }] }],
    });
    child = await spawnServer(
      await sqlite!.newUrl(),
      ['--metrics-address', '127.0.0.1:0', '--backoff-base-ms', '20', '--backoff-max-ms', '50'],
      { onLog: (entry) => lines.push(entry) },
    );
  });
  afterAll(async () => {
    await child?.kill('SIGTERM');
    await receiver?.close();
    await sqlite?.release();
  });

  it('writes one line per attempt with delivery id, account, endpoint host, outcome, status and duration', async () => {
    const acct = accountId();
    await child.clients.upsertWebhook({
      accountId: acct,
      url: `${receiver.url}/hook?token=${URL_TOKEN}`,
      basicAuth: { username: 'hook-user', password: PASSWORD },
      signingSecret: SIGNING_SECRET,
    });
    const published = await child.clients.publishMessages({
      accountId: acct,
      messages: [inboxMessage('steady'), inboxMessage('flaky')],
    });
    const ids = new Map(published.deliveries.map((d) => [d.externalCustomerId, d.deliveryId]));
    for (const id of ids.values()) await deliveryIn(child.clients, id, [DeliveryState.DELIVERY_STATE_DELIVERED]);

    const attemptsOf = (deliveryId: string | undefined) =>
      lines.filter((l) => l.msg === 'delivery attempt' && l.deliveryId === deliveryId);
    const flaky = await eventually(
      () => (attemptsOf(ids.get('flaky')).length === 2 ? attemptsOf(ids.get('flaky')) : undefined),
      10_000,
      'two attempt lines of the flaky delivery',
    );
    const host = new URL(receiver.url).host;
    expect(flaky[0]).toMatchObject({
      level: 'info',
      service: 'app-inbox-server',
      component: 'delivery',
      deliveryId: ids.get('flaky'),
      accountId: acct,
      endpointHost: host,
      attemptNo: 1,
      outcome: 'retrying',
      statusCode: 503,
    });
    expect(flaky[1]).toMatchObject({ attemptNo: 2, outcome: 'delivered', statusCode: 200, endpointHost: host });
    expect(attemptsOf(ids.get('steady'))).toEqual([
      expect.objectContaining({ attemptNo: 1, outcome: 'delivered', statusCode: 200, durationMs: expect.any(Number) }),
    ]);
    for (const line of flaky) {
      expect(typeof line.time).toBe('string');
      expect(line).not.toHaveProperty('errorKind');
    }

    // Nothing secret anywhere in the process's output: not the password, the signing secret, the URL's query.
    const output = lines.map((l) => JSON.stringify(l)).join('\n');
    expect(output).toContain(acct);
    for (const secret of [PASSWORD, SIGNING_SECRET, SIGNING_SECRET.slice('whsec_'.length), URL_TOKEN]) {
      expect(output).not.toContain(secret);
    }
  });

  it('serves the metrics on --metrics-address and names the bound URL in its start line', async () => {
    const started = lines.find((l) => l.msg === 'gRPC server listening');
    expect(started?.metrics).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    expect(started?.traces).toBe('off');
    const address = String(started?.metrics)
      .replace(/^http:\/\//, '')
      .replace(/\/metrics$/, '');
    const delivered = (text: string) => sample(text, 'deliveries_total', { outcome: 'delivered', status_class: '2xx' });
    const publishes = (text: string) =>
      sample(text, 'grpc_server_calls_total', { method: 'app_inbox.v1.MessageService/PublishMessages', code: 'OK' });
    const before = await scrape(address);

    const acct = accountId();
    await child.clients.upsertWebhook({
      accountId: acct,
      url: `${receiver.url}/hook`,
      basicAuth: { username: 'hook-user', password: PASSWORD },
    });
    const published = await child.clients.publishMessages({ accountId: acct, messages: [inboxMessage('one')] });
    await deliveryIn(child.clients, published.deliveries[0]!.deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);

    const after = await scrape(address);
    expect((delivered(after) ?? 0) - (delivered(before) ?? 0)).toBe(1);
    expect((publishes(after) ?? 0) - (publishes(before) ?? 0)).toBe(1);
    expect(sample(after, 'delivery_queue_depth', { state: 'delivered' })).toBeGreaterThanOrEqual(1);
  });
});
