/**
 * SSRF protection end to end (issue 7): a real server over a real gRPC socket, a real receiver on
 * 127.0.0.1. Without an allow-list, webhook URLs that resolve to loopback, link-local/metadata or private
 * addresses are refused when they are saved; a name that resolves to a public address when it is saved and
 * to 127.0.0.1 when the delivery connects (DNS rebinding) fails at connect time with `blocked_address`, and
 * nothing reaches the receiver. Host names resolve through an injected resolver (no DNS needed).
 */
import { Metadata, status } from '@grpc/grpc-js';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MAX_MESSAGE_BYTES } from '../../src/api/errors.js';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import { UpsertWebhookRequest } from '../../src/gen/app_inbox/v1/webhook.js';
import type { Resolver } from '../../src/security/ssrf.js';
import {
  accountId,
  deliveryIn,
  failure,
  inboxMessage,
  startTestServer,
  storeUrls,
  type TestServer,
} from '../e2e/harness.js';

/** A public address (TEST-NETs are reserved, so this is a real public one; nothing ever connects to it). */
const PUBLIC_IP = '93.184.215.14';

/** SQLite only: the access and address checks do not depend on the store engine. */
const sqlite = storeUrls().find((target) => target.engine === 'sqlite')!;

describe('SSRF protection (real server, no allow-list)', () => {
  let t: TestServer;
  let receiver: MockReceiver;
  /** What `rebind.example` resolves to right now: public while the webhook is saved, loopback afterwards. */
  let rebindTo = PUBLIC_IP;
  const lookups: string[] = [];
  const resolve: Resolver = async (hostname) => {
    lookups.push(hostname);
    const table: Record<string, string> = {
      'loopback.example': '127.0.0.1',
      'metadata.example': '169.254.169.254',
      'public.example': PUBLIC_IP,
      'rebind.example': rebindTo,
    };
    const address = table[hostname];
    if (address === undefined)
      throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
    return [{ address, family: 4 }];
  };

  /** TCP connections the receiver accepted: the guard must refuse before any socket reaches it. */
  let connections = 0;

  beforeAll(async () => {
    receiver = await createMockReceiver();
    receiver.server.on('connection', () => (connections += 1));
    // Secure by default: the harness allow-lists 127.0.0.1 for the other tests; this server does not.
    t = await startTestServer(await sqlite.newUrl(), { webhookAllowList: [] }, { resolve });
  });
  afterEach(() => receiver.records.clear());
  afterAll(async () => {
    await t.stop();
    await receiver.close();
    await sqlite.release();
  });

  it.each([
    ['loopback IP literal', () => `http://127.0.0.1:${receiver.port}/hook`, /loopback/],
    ['IPv4-mapped loopback', () => `http://[::ffff:127.0.0.1]:${receiver.port}/hook`, /loopback/],
    ['cloud metadata IP', () => 'http://169.254.169.254/latest/meta-data/', /metadata/],
    ['host name resolving to loopback', () => `http://loopback.example:${receiver.port}/hook`, /loopback/],
    ['host name resolving to metadata', () => 'http://metadata.example/', /metadata/],
    ['private network address', () => 'http://10.1.2.3/hook', /private/],
    ['CGNAT address', () => 'http://100.64.0.7/hook', /cgnat/],
    ['unresolvable host', () => 'http://nowhere.example/hook', /could not be resolved/],
  ])('UpsertWebhook refuses a %s with INVALID_ARGUMENT on field url, storing nothing', async (_label, url, why) => {
    const account = accountId('ssrf');
    const refused = await failure(t.clients.upsertWebhook({ accountId: account, url: url() }));
    expect(refused.code).toBe(status.INVALID_ARGUMENT);
    expect(refused.rich?.badRequest?.fieldViolations).toEqual([
      { field: 'url', description: expect.stringMatching(why) as unknown as string, reason: expect.any(String) },
    ]);
    expect((await failure(t.clients.getWebhook({ accountId: account }))).code).toBe(status.NOT_FOUND);
    expect(receiver.records.list()).toEqual([]);
    expect(connections).toBe(0);
  });

  it('answers a URL with a 2 KB host at once, its status message bounded in bytes (the description echoes the host)', async () => {
    const host = Array.from({ length: 31 }, (_, i) => `${String(i).padStart(2, '0')}${'a'.repeat(61)}`).join('.');
    const url = `http://${host}.example/hook`;
    const started = Date.now();
    const refused = await failure(
      new Promise((resolve, reject) => {
        t.clients.webhook.upsertWebhook(
          UpsertWebhookRequest.fromPartial({ accountId: accountId('ssrf'), url }),
          new Metadata(),
          { deadline: Date.now() + 15_000 },
          (error, response) => (error ? reject(error) : resolve(response)),
        );
      }),
    );
    expect(refused.code).toBe(status.INVALID_ARGUMENT);
    expect(Date.now() - started).toBeLessThan(5_000);
    // The message names the field with the description cut; the details keep it whole.
    expect(Buffer.byteLength(refused.details)).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
    expect(refused.details).toMatch(/^1 invalid field: url: host 00a+\..*…$/);
    expect(refused.rich?.status.message).toBe(refused.details);
    expect(refused.rich?.badRequest?.fieldViolations).toEqual([
      { field: 'url', description: expect.stringContaining(`host ${host}.example could not be resolved`), reason: '' },
    ]);
  });

  it('accepts a URL whose host resolves to a public address', async () => {
    const account = accountId('ssrf');
    const saved = await t.clients.upsertWebhook({ accountId: account, url: 'https://public.example/hook' });
    expect(saved.webhook?.url).toBe('https://public.example/hook');
    // Not delivered anywhere: the account gets no message.
    await t.clients.deleteWebhook({ accountId: account });
  });

  it('DNS rebinding: public when saved, 127.0.0.1 when connecting -> failed with blocked_address, nothing received', async () => {
    const account = accountId('rebind');
    rebindTo = PUBLIC_IP;
    await t.clients.upsertWebhook({ accountId: account, url: `http://rebind.example:${receiver.port}/hook` });
    lookups.length = 0;
    rebindTo = '127.0.0.1';
    const published = await t.clients.publishMessages({ accountId: account, messages: [inboxMessage('c-1')] });
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    const delivery = await deliveryIn(t.clients, deliveryId, [DeliveryState.DELIVERY_STATE_FAILED]);
    // Refused by the guard when connecting: one attempt, no status, not retried (core: blocked_address fails).
    expect(delivery.attempts).toHaveLength(1);
    expect(delivery.attempts[0]).toMatchObject({ statusCode: undefined, errorKind: 'blocked_address' });
    expect(delivery.lastError).toMatch(/blocked_address/);
    // The host was resolved again at connect time, and the receiver saw nothing at all.
    expect(lookups).toContain('rebind.example');
    expect(receiver.records.list()).toEqual([]);
    expect(connections).toBe(0);
  });
});

describe('SSRF protection with the allow-list (the tests and the local demo: 127.0.0.1)', () => {
  let t: TestServer;

  beforeAll(async () => {
    t = await startTestServer(await sqlite.newUrl(), { webhookAllowList: ['127.0.0.1'] });
  });
  afterAll(async () => {
    await t.stop();
    await sqlite.release();
  });

  it('allows exactly the listed address: 127.0.0.1 is accepted, metadata and other loopback still refused', async () => {
    await expect(
      t.clients.upsertWebhook({ accountId: accountId('allow'), url: 'http://127.0.0.1:9/hook' }),
    ).resolves.toMatchObject({ created: true });
    for (const url of ['http://127.0.0.2:9/hook', 'http://169.254.169.254/', 'http://[::1]:9/']) {
      const refused = await failure(t.clients.upsertWebhook({ accountId: accountId('allow'), url }));
      expect(refused.code).toBe(status.INVALID_ARGUMENT);
      expect(refused.rich?.badRequest?.fieldViolations.map((v) => v.field)).toEqual(['url']);
    }
  });
});
