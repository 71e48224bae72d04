/**
 * UpdateWebhook end to end: the fields named in `update_mask` change, every other one is kept as stored, secrets
 * included, so the platform can disable and enable a webhook without sending its password again (a read never
 * returns it). Real server, real gRPC client, a real mock receiver that answers 401 without the right Basic auth.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import { UpdateWebhookRequest } from '../../src/gen/app_inbox/v1/webhook.js';
import { decodeStatusDetails } from '../../src/api/errors.js';
import { openStore } from '../../src/store/index.js';
import {
  accountId,
  beforeEachCompareAndSet,
  deliveryIn,
  failure,
  inboxMessage,
  signatureValid,
  startTestServer,
  storeUrls,
  type TestServer,
} from './harness.js';

describe.each(storeUrls())('UpdateWebhook ($engine)', (target) => {
  let t: TestServer | undefined;
  let receiver: MockReceiver | undefined;
  const username = 'hook-user';
  const password = `pw-${randomUUID()}`;
  const signingSecret = `whsec_${randomBytes(32).toString('base64')}`;

  afterEach(async () => {
    await t?.stop();
    await receiver?.close();
    t = undefined;
    receiver = undefined;
  });
  afterAll(() => target.release());

  async function start() {
    receiver = await createMockReceiver({ username, password });
    t = await startTestServer(await target.newUrl());
    const account = accountId('update');
    const url = `${receiver.url}/hook`;
    const created = await t.clients.upsertWebhook({
      accountId: account,
      url,
      basicAuth: { username, password },
      signingSecret,
      maxMessagesPerContact: 7,
      defaultMessageTtlSeconds: 3_600,
    });
    return { clients: t.clients, account, url, created: created.webhook!, mock: receiver };
  }

  it('disables and enables the webhook without its secrets, which it keeps: the delivery has both', async () => {
    const { clients, account, url, created, mock } = await start();
    const disabled = await clients.updateWebhook({ accountId: account, updateMask: ['enabled'], enabled: false });
    expect(disabled.webhook).toMatchObject({
      url,
      enabled: false,
      basicAuth: { username, hasPassword: true },
      hasSigningSecret: true,
      maxMessagesPerContact: 7,
      defaultMessageTtlSeconds: 3_600,
      createTimeMs: created.createTimeMs,
    });
    expect(disabled.webhook!.updateTimeMs).toBeGreaterThan(created.updateTimeMs);

    // Disabled: the message waits.
    const published = await clients.publishMessages({ accountId: account, messages: [inboxMessage('c-1')] });
    const deliveryId = published.deliveries[0]!.deliveryId;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(mock.records.list()).toEqual([]);

    const enabled = await clients.updateWebhook({ accountId: account, updateMask: ['enabled'], enabled: true });
    expect(enabled.webhook).toMatchObject({ enabled: true, basicAuth: { username, hasPassword: true } });
    const delivered = await deliveryIn(clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    // The receiver answers 401 to any other password; the signature verifies with the secret set at creation.
    const [request] = mock.records.list();
    expect(request?.answer.status).toBe(200);
    expect(signatureValid(signingSecret, request!.headers, delivered.body)).toBe(true);
    expect(signatureValid(`whsec_${randomBytes(32).toString('base64')}`, request!.headers, delivered.body)).toBe(false);
  });

  it('changes only the named fields: a field set but not named is ignored, a named field left unset takes its default', async () => {
    const { clients, account, url } = await start();
    const moved = await clients.updateWebhook({
      accountId: account,
      updateMask: ['max_messages_per_contact', 'basic_auth'],
      url: 'http://not-named.example/ignored',
      enabled: false,
    });
    expect(moved.webhook).toMatchObject({ url, enabled: true, maxMessagesPerContact: 1_000, hasSigningSecret: true });
    expect(moved.webhook?.basicAuth).toBeUndefined();
    expect((await clients.getWebhook({ accountId: account })).webhook).toEqual(moved.webhook);
  });

  it('INVALID_ARGUMENT names update_mask when it is empty or names another field, and the named field when its value is bad', async () => {
    const { clients, account } = await start();
    const before = (await clients.getWebhook({ accountId: account })).webhook;
    const violations = async (request: Parameters<TestServer['clients']['updateWebhook']>[0]) => {
      const failed = await failure(clients.updateWebhook(request));
      expect(failed.code).toBe(status.INVALID_ARGUMENT);
      return failed.rich?.badRequest?.fieldViolations.map((v) => v.field);
    };
    expect(await violations({ accountId: account })).toEqual(['update_mask']);
    expect(await violations({ accountId: account, updateMask: ['enabled', 'password'] })).toEqual(['update_mask']);
    expect(await violations({ accountId: '', updateMask: ['enabled'] })).toEqual(['account_id']);
    expect(await violations({ accountId: account, updateMask: ['url'], url: 'ftp://example.com/x' })).toEqual(['url']);
    expect(
      await violations({
        accountId: account,
        updateMask: ['basic_auth', 'signing_secret'],
        basicAuth: { username: 'a:b', password: 'x' },
        signingSecret: 'not-a-secret',
      }),
    ).toEqual(['basic_auth.username', 'signing_secret']);
    // Nothing was changed by the refused calls.
    expect((await clients.getWebhook({ accountId: account })).webhook).toEqual(before);
  });

  it('a long or unknown update_mask is refused at once, naming update_mask, without echoing what it was sent', async () => {
    const { clients, account } = await start();
    const before = (await clients.getWebhook({ accountId: account })).webhook;
    // With a deadline: a refusal whose status does not fit in the trailers never arrives, the call would just hang.
    const refused = (updateMask: string[]) =>
      new Promise<ServiceError>((resolve, reject) => {
        clients.webhook.updateWebhook(
          UpdateWebhookRequest.fromPartial({ accountId: account, updateMask, enabled: false }),
          new Metadata(),
          { deadline: Date.now() + 5_000 },
          (error) => (error ? resolve(error) : reject(new Error('the call succeeded'))),
        );
      });
    const secretLike = `pw-${randomUUID()}`;
    for (const updateMask of [
      ['enabled', 'x'.repeat(64 * 1024)],
      Array.from({ length: 5_000 }, (_, i) => `field_${i}`),
      ['enabled', secretLike.repeat(2_000)],
    ]) {
      const error = await refused(updateMask);
      expect(error.code).toBe(status.INVALID_ARGUMENT);
      expect(error.details.length).toBeLessThan(4_096);
      const fields = decodeStatusDetails(error.metadata)?.badRequest?.fieldViolations ?? [];
      expect(fields.length).toBeGreaterThan(0);
      expect(fields.length).toBeLessThanOrEqual(10);
      expect(new Set(fields.map((v) => v.field))).toEqual(new Set(['update_mask']));
      expect(JSON.stringify(fields)).not.toContain('xxxxxxxxxxxxxxxx');
      expect(JSON.stringify(fields)).not.toContain(secretLike);
    }
    // A short unknown name is still named back, as a field name.
    const named = await refused(['enabled', 'password']);
    expect(decodeStatusDetails(named.metadata)?.badRequest?.fieldViolations[0]?.description).toContain('"password"');
    expect((await clients.getWebhook({ accountId: account })).webhook).toEqual(before);
  });

  it('a save between its read and its write is not overwritten: the update is applied to that save', async () => {
    receiver = await createMockReceiver();
    const url = await target.newUrl();
    const account = accountId('raced');
    const raw = await openStore(url);
    let raced = false;
    // The first write of the update finds the webhook saved again since its read, as a call to another process
    // would leave it (a new URL, a limit of 3): the compare-and-set refuses, and the update reads it again.
    const store = beforeEachCompareAndSet(raw, async (target, args) => {
      if (raced) return;
      raced = true;
      await target.upsertWebhook(
        account,
        { url: `${mockUrl()}/moved`, maxMessagesPerContact: 3, enabled: true },
        args[3] + 1,
      );
    });
    const mockUrl = () => receiver!.url;
    t = await startTestServer(url, {}, { store });
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/first` });
    const updated = await t.clients.updateWebhook({ accountId: account, updateMask: ['enabled'], enabled: false });
    expect(raced).toBe(true);
    expect(updated.webhook).toMatchObject({ url: `${receiver.url}/moved`, maxMessagesPerContact: 3, enabled: false });
    expect((await t.clients.getWebhook({ accountId: account })).webhook).toEqual(updated.webhook);
  });

  it('a delete between its read and its write: NOT_FOUND, nothing recreated; saved again before every write: ABORTED', async () => {
    receiver = await createMockReceiver();
    const url = await target.newUrl();
    const deleted = accountId('raced-delete');
    const busy = accountId('raced-busy');
    const raw = await openStore(url);
    let writes = 0;
    // Before each write of the update, as calls to other processes would: `deleted` is deleted (once), `busy` is
    // saved again every time, with a clock in the millisecond of the save the update read (only its later updatedAt
    // tells the compare-and-set that it is another save), so the update never writes the save it read.
    const store = beforeEachCompareAndSet(raw, async (target, args) => {
      writes += 1;
      if (args[0] === deleted) await target.deleteWebhook(deleted);
      else
        await target.upsertWebhook(
          busy,
          { url: `${receiver!.url}/busy-${writes}`, maxMessagesPerContact: 3, enabled: true },
          args[3],
        );
    });
    t = await startTestServer(url, {}, { store });
    await t.clients.upsertWebhook({ accountId: deleted, url: `${receiver.url}/first` });
    await t.clients.upsertWebhook({ accountId: busy, url: `${receiver.url}/first` });

    const gone = await failure(
      t.clients.updateWebhook({ accountId: deleted, updateMask: ['enabled'], enabled: false }),
    );
    expect(gone.code).toBe(status.NOT_FOUND);
    expect(writes).toBe(1);
    expect((await failure(t.clients.getWebhook({ accountId: deleted }))).code).toBe(status.NOT_FOUND);

    writes = 0;
    const aborted = await failure(
      t.clients.updateWebhook({ accountId: busy, updateMask: ['enabled'], enabled: false }),
    );
    expect(aborted.code).toBe(status.ABORTED);
    expect(writes).toBe(5);
    // The last save by the others stands, untouched by the update.
    expect((await t.clients.getWebhook({ accountId: busy })).webhook).toMatchObject({
      url: `${receiver.url}/busy-5`,
      maxMessagesPerContact: 3,
      enabled: true,
    });

    // UpsertWebhook replaces an existing webhook the same way: ABORTED after 5 tries, the others' last save stands.
    writes = 0;
    const upsertAborted = await failure(t.clients.upsertWebhook({ accountId: busy, url: `${receiver.url}/mine` }));
    expect(upsertAborted.code).toBe(status.ABORTED);
    expect(writes).toBe(5);
    expect((await t.clients.getWebhook({ accountId: busy })).webhook?.url).toBe(`${receiver.url}/busy-5`);
  });

  it('NOT_FOUND for an account without a webhook, and after DeleteWebhook', async () => {
    const { clients, account } = await start();
    const unknown = await failure(
      clients.updateWebhook({ accountId: accountId('none'), updateMask: ['enabled'], enabled: false }),
    );
    expect(unknown.code).toBe(status.NOT_FOUND);
    await clients.deleteWebhook({ accountId: account });
    const deleted = await failure(
      clients.updateWebhook({ accountId: account, updateMask: ['enabled'], enabled: true }),
    );
    expect(deleted.code).toBe(status.NOT_FOUND);
  });
});
