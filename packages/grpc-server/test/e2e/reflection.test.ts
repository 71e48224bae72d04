/**
 * Server reflection, as the README uses it: `buf curl` (from the @bufbuild/buf npm package, standing in for grpcurl)
 * calls the server with no local copy of the proto files, so every request and answer is described by reflection
 * alone. A message type the reflection descriptors cannot resolve (e.g. an imported well-known type, which grpc-js
 * serves without its import: grpc/grpc-node#2958), or a map entry named otherwise than protoc names it, fails here as
 * "failed to find service".
 */
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { accountId, startTestServer, storeUrls, type TestServer } from './harness.js';

const BUF = createRequire(import.meta.url).resolve('@bufbuild/buf/bin/buf');
const run = promisify(execFile);

describe('server reflection (buf curl)', () => {
  const [sqlite] = storeUrls();
  let t: TestServer;

  beforeAll(async () => {
    t = await startTestServer(await sqlite!.newUrl());
  });
  afterAll(async () => {
    await t?.stop();
    await sqlite?.release();
  });

  /** One call through reflection; the answer as JSON (a failed call's status too, which buf curl prints on stderr). */
  async function curl(method: string, body: unknown): Promise<Record<string, unknown>> {
    const args = ['curl', '--protocol', 'grpc', '--http2-prior-knowledge', '-d', JSON.stringify(body)];
    const url = `http://${t.server.address}/${method}`;
    try {
      const { stdout } = await run(BUF, [...args, url], { timeout: 30_000 });
      return JSON.parse(stdout) as Record<string, unknown>;
    } catch (error) {
      const { stderr } = error as { stderr?: string };
      if (stderr?.trim().startsWith('{')) return JSON.parse(stderr) as Record<string, unknown>;
      throw new Error(`buf curl ${method}: ${stderr ?? String(error)}`);
    }
  }

  it('lists every service', async () => {
    const { stdout } = await run(BUF, [
      'curl',
      '--protocol',
      'grpc',
      '--http2-prior-knowledge',
      '--list-services',
      `http://${t.server.address}`,
    ]);
    expect(stdout.trim().split('\n').sort()).toEqual([
      'app_inbox.v1.DeliveryService',
      'app_inbox.v1.MessageService',
      'app_inbox.v1.WebhookService',
      'grpc.health.v1.Health',
    ]);
  });

  it('calls each service with JSON that only reflection describes', async () => {
    const account = accountId('reflected');
    const webhook = 'app_inbox.v1.WebhookService';
    await curl(`${webhook}/UpsertWebhook`, {
      account_id: account,
      url: 'http://127.0.0.1:9/inbox',
      basic_auth: { username: 'u', password: 'p' },
    });
    const updated = await curl(`${webhook}/UpdateWebhook`, {
      account_id: account,
      update_mask: ['enabled', 'max_messages_per_contact'],
      enabled: false,
      max_messages_per_contact: 5,
    });
    expect(updated.webhook).toMatchObject({
      accountId: account,
      maxMessagesPerContact: 5,
      basicAuth: { hasPassword: true },
    });
    expect((updated.webhook as Record<string, unknown>).enabled).toBeUndefined(); // false: not printed in JSON
    // A map field (the webhook's own headers) is described too: protobufjs's descriptors named its entry type in a
    // way Go's protobuf refuses, and with it every service of webhook.proto.
    const withHeaders = await curl(`${webhook}/UpdateWebhook`, {
      account_id: account,
      update_mask: ['headers', 'basic_auth'],
      headers: { 'X-Api-Key': 'k_reflected' },
    });
    expect(withHeaders.webhook).toMatchObject({ headerNames: ['x-api-key'] });
    expect(JSON.stringify(withHeaders)).not.toContain('k_reflected');

    const published = await curl('app_inbox.v1.MessageService/PublishMessages', {
      account_id: account,
      messages: [
        {
          external_customer_id: 'c-1',
          id: '5f0c8f7e-2a7e-4b8e-9a39-7d1c0e2f4a11',
          created_date: 1764064800000,
          title: 'Hi',
          content: 'Welcome',
          category: 'news',
          ttl_seconds: 3600,
        },
      ],
    });
    expect(published).toMatchObject({ accepted: 1 });
    const listed = await curl('app_inbox.v1.DeliveryService/ListDeliveries', { account_id: account });
    expect(listed.deliveries).toHaveLength(1);
    expect(await curl('grpc.health.v1.Health/Check', {})).toEqual({ status: 'SERVING' });

    // A refused call's status, with its details named by type.
    const refused = await curl(`${webhook}/UpdateWebhook`, { account_id: account, update_mask: ['password'] });
    expect(refused).toMatchObject({ code: 'invalid_argument' });
    expect((refused.details as Array<{ type: string }>).map((d) => d.type)).toContain('google.rpc.BadRequest');
  });
});
