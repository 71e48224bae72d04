/**
 * PublishMessages, ResyncContacts and the webhook RPCs end to end: caps, contacts without an
 * externalCustomerId, INVALID_ARGUMENT details, idempotency, TTL expiry, and secrets never read back.
 */
import { randomUUID } from 'node:crypto';
import { Metadata, status } from '@grpc/grpc-js';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import { PublishMessagesRequest, PublishMessagesResponse } from '../../src/gen/app_inbox/v1/message.js';
import { GetWebhookResponse, UpsertWebhookResponse } from '../../src/gen/app_inbox/v1/webhook.js';
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

const DELIVERED = [DeliveryState.DELIVERY_STATE_DELIVERED];

describe.each(storeUrls())('publishing and webhooks ($engine)', ({ newUrl, release }) => {
  let t: TestServer;
  let receiver: MockReceiver;

  beforeAll(async () => {
    t = await startTestServer(await newUrl());
  });
  afterEach(async () => {
    await receiver?.close();
  });
  afterAll(async () => {
    await t?.stop();
    await release();
  });

  async function account(options: { maxMessagesPerContact?: number } = {}) {
    receiver = await createMockReceiver({ maxMessagesPerContact: 10_000 });
    const id = accountId();
    await t.clients.upsertWebhook({
      accountId: id,
      url: `${receiver.url}/in`,
      signingSecret: '',
      ...options,
    });
    return id;
  }

  /** The bodies the receiver got for one contact, in arrival order. */
  function listsOf(contact: string): Array<Array<{ id: string }>> {
    return receiver.records.list({ externalCustomerId: contact }).map((r) => r.body as Array<{ id: string }>);
  }

  it('sends at most 1,000 messages of a contact by default: the newest', async () => {
    const acc = await account();
    const base = Date.now() - 3_600_000;
    const messages = Array.from({ length: 1_200 }, (_, i) => inboxMessage('big', { createdDate: base + i * 1000 }));
    const published = await t.clients.publishMessages({ accountId: acc, messages });
    expect(published.accepted).toBe(1_200);
    await deliveryIn(t.clients, published.deliveries[0]?.deliveryId ?? '', DELIVERED);
    const [list] = listsOf('big');
    expect(list).toHaveLength(1_000);
    // Newest first: the last 1,000 published, in reverse.
    expect(list?.map((m) => m.id)).toEqual(
      messages
        .slice(200)
        .reverse()
        .map((m) => m.id),
    );
  });

  it('honours a custom maxMessagesPerContact', async () => {
    const acc = await account({ maxMessagesPerContact: 5 });
    const base = Date.now() - 3_600_000;
    const messages = Array.from({ length: 8 }, (_, i) => inboxMessage('small', { createdDate: base + i }));
    const published = await t.clients.publishMessages({ accountId: acc, messages });
    await deliveryIn(t.clients, published.deliveries[0]?.deliveryId ?? '', DELIVERED);
    expect(listsOf('small')[0]?.map((m) => m.id)).toEqual(
      messages
        .slice(3)
        .reverse()
        .map((m) => m.id),
    );
    const hook = await t.clients.getWebhook({ accountId: acc });
    expect(hook.webhook?.maxMessagesPerContact).toBe(5);
  });

  it('skips and counts messages of contacts without an externalCustomerId', async () => {
    const acc = await account();
    const messages = [inboxMessage('known'), inboxMessage(''), inboxMessage('known'), inboxMessage('')];
    const published = await t.clients.publishMessages({ accountId: acc, messages });
    expect(published).toMatchObject({
      accepted: 2,
      duplicates: 0,
      skippedWithoutExternalCustomerId: 2,
      skippedIndices: [1, 3],
    });
    expect(published.deliveries.map((d) => d.externalCustomerId)).toEqual(['known']);
    await deliveryIn(t.clients, published.deliveries[0]?.deliveryId ?? '', DELIVERED);
    const requests = receiver.records.list();
    expect(requests).toHaveLength(1);
    expect((requests[0]?.body as Array<{ id: string }>).map((m) => m.id).sort()).toEqual(
      [messages[0]?.id, messages[2]?.id].sort(),
    );
  });

  it('INVALID_ARGUMENT names every bad field in google.rpc.BadRequest, and stores nothing', async () => {
    const acc = await account();
    const good = inboxMessage('c1');
    const messages = [
      good,
      inboxMessage('c1', { id: 'not-a-uuid' }),
      inboxMessage('c2', { createdDate: -5, link: 'javascript:alert(1)' }),
      inboxMessage('', { customData: '{not json', ttlSeconds: 60, expiresAtMs: Date.now() + 60_000 }),
    ];
    const failed = await failure(t.clients.publishMessages({ accountId: acc, messages }));
    expect(failed.code).toBe(status.INVALID_ARGUMENT);
    expect(failed.rich?.status.code).toBe(status.INVALID_ARGUMENT);
    expect(failed.rich?.errorInfo?.reason).toBe('INVALID_ARGUMENT');
    const fields = failed.rich?.badRequest?.fieldViolations.map((v) => v.field).sort();
    expect(fields).toEqual(
      [
        'messages[1].id',
        'messages[2].created_date',
        'messages[2].link',
        'messages[3].custom_data',
        'messages[3].ttl_seconds',
      ].sort(),
    );
    for (const v of failed.rich?.badRequest?.fieldViolations ?? []) expect(v.description).not.toBe('');
    expect(failed.details).toMatch(/^5 invalid fields: /);
    expect(failed.details).toContain('messages[1].id');

    // Nothing was stored: no delivery, and the valid message is new when published again.
    const listed = await t.clients.listDeliveries({
      accountId: acc,
      externalCustomerId: '',
      states: [],
      pageSize: 0,
      pageToken: '',
    });
    expect(listed.deliveries).toEqual([]);
    const again = await t.clients.publishMessages({ accountId: acc, messages: [good] });
    expect(again).toMatchObject({ accepted: 1, duplicates: 0 });
  });

  it('refuses the NUL character in any text it would store or look up, naming the field (never INTERNAL)', async () => {
    // PostgreSQL's text cannot hold U+0000: it reached the store and came back as INTERNAL.
    const acc = await account();
    const fieldsOf = async (call: Promise<unknown>) => {
      const failed = await failure(call);
      expect({ code: failed.code, details: failed.details }).toMatchObject({ code: status.INVALID_ARGUMENT });
      return failed.rich?.badRequest?.fieldViolations.map((v) => [v.field, v.description]);
    };
    const nul = 'must not contain the NUL character (U+0000)';
    expect(
      await fieldsOf(
        t.clients.publishMessages({
          accountId: acc,
          messages: [inboxMessage('c1', { title: 'a\u0000b' }), inboxMessage('c\u0000'), inboxMessage('c2')],
        }),
      ),
    ).toEqual([
      ['messages[0].title', nul],
      ['messages[1].external_customer_id', nul],
    ]);
    expect(
      await fieldsOf(t.clients.resyncContacts({ accountId: acc, externalCustomerIds: ['c1', 'c-\u0000'], all: false })),
    ).toEqual([['external_customer_ids[1]', nul]]);
    expect(
      await fieldsOf(
        t.clients.listDeliveries({
          accountId: acc,
          externalCustomerId: 'c\u0000',
          states: [],
          pageSize: 0,
          pageToken: '',
        }),
      ),
    ).toEqual([['external_customer_id', nul]]);
    expect(await fieldsOf(t.clients.getDelivery({ deliveryId: 'x\u0000' }))).toEqual([
      ['delivery_id', 'must not contain control characters'],
    ]);
    // Nothing of the refused publish was stored.
    expect((await t.clients.publishMessages({ accountId: acc, messages: [inboxMessage('c2')] })).accepted).toBe(1);
  });

  it('refuses string fields that are not UTF-8, naming the field, instead of merging two contacts into one', async () => {
    // proto3 strings hold UTF-8. The generated decoder put U+FFFD in place of bad bytes: contacts with the ids FF
    // and FE both became "\uFFFD", and their messages went out in one list to that made-up contact.
    const acc = await account();
    const bytes = Buffer.from(
      PublishMessagesRequest.encode({
        accountId: acc,
        messages: [inboxMessage('\u0001'), inboxMessage('\u0002')],
      }).finish(),
    );
    // Field 1 (external_customer_id) of each message is `0a 01 <byte>`: an invalid UTF-8 byte in its place.
    for (const [from, to] of [
      [0x01, 0xff],
      [0x02, 0xfe],
    ] as const) {
      const at = bytes.indexOf(Buffer.from([0x0a, 0x01, from]));
      expect(at).toBeGreaterThan(0);
      bytes[at + 2] = to;
    }
    const raw = new RawClient(t.server.address);
    const answer = await raw.unary('/app_inbox.v1.MessageService/PublishMessages', bytes).finally(() => raw.close());
    const accepted = answer.response === null ? null : PublishMessagesResponse.decode(answer.response);
    expect(
      { code: answer.code, contacts: accepted?.deliveries.map((d) => d.externalCustomerId) },
      'two different contacts were merged into one',
    ).toEqual({ code: status.INVALID_ARGUMENT, contacts: undefined });
    expect(answer.rich?.badRequest?.fieldViolations.map((v) => [v.field, v.description])).toEqual([
      ['messages[0].external_customer_id', 'must be UTF-8 text (a protobuf string): these bytes are not valid UTF-8'],
    ]);
    // Nothing was stored.
    const listed = await t.clients.listDeliveries({ accountId: acc, states: [], pageSize: 0, pageToken: '' });
    expect(listed.deliveries).toEqual([]);
  });

  it('takes a states filter of any length, each state once, and names the first unknown entries', async () => {
    const acc = await account();
    await t.clients.publishMessages({ accountId: acc, messages: [inboxMessage('c1')] });
    const list = (states: DeliveryState[]) =>
      t.clients.listDeliveries({ accountId: acc, externalCustomerId: '', states, pageSize: 0, pageToken: '' });
    // 100,000 repeats were as many SQL parameters on SQLite: INTERNAL.
    const every = [1, 2, 3, 4, 5, 6] as DeliveryState[];
    const repeated = await list([
      ...new Array<DeliveryState>(100_000).fill(DeliveryState.DELIVERY_STATE_FAILED),
      ...every,
    ]);
    expect(repeated.deliveries).toHaveLength(1);
    // 100,000 unknown entries: the first ten named.
    const failed = await failure(list(new Array<DeliveryState>(100_000).fill(99 as DeliveryState)));
    expect(failed.code).toBe(status.INVALID_ARGUMENT);
    expect(failed.rich?.badRequest?.fieldViolations.map((v) => v.field)).toEqual(
      Array.from({ length: 10 }, (_, i) => `states[${i}]`),
    );
  });

  it('refuses more than 10,000 messages with INVALID_ARGUMENT on `messages`', async () => {
    const acc = await account();
    const messages = Array.from({ length: 10_001 }, () => inboxMessage('c'));
    const failed = await failure(t.clients.publishMessages({ accountId: acc, messages }));
    expect(failed.code).toBe(status.INVALID_ARGUMENT);
    expect(failed.rich?.badRequest?.fieldViolations).toEqual([
      expect.objectContaining({ field: 'messages', description: 'must contain at most 10000 messages (got 10001)' }),
    ]);
  });

  it('answers 10,000 bad messages at once, not after the deadline: the violations sent are cut to fit a status', async () => {
    const acc = await account();
    const messages = Array.from({ length: 10_000 }, (_, i) => inboxMessage(`c${i}`, { id: `not-a-uuid-${i}` }));
    const request = PublishMessagesRequest.fromPartial({ accountId: acc, messages });
    // With every violation listed the trailers outgrew what HTTP/2 sends, and the call hung until its deadline.
    const failed = await failure(
      new Promise((resolve, reject) => {
        t.clients.message.publishMessages(
          request,
          new Metadata(),
          { deadline: Date.now() + 15_000 },
          (error, response) => (error ? reject(error) : resolve(response)),
        );
      }),
    );
    expect(failed.code).toBe(status.INVALID_ARGUMENT);
    const listed = failed.rich?.badRequest?.fieldViolations ?? [];
    expect(listed.length).toBeGreaterThan(10);
    expect(listed.length).toBeLessThan(10_000);
    expect(listed.slice(0, 3).map((v) => v.field)).toEqual(['messages[0].id', 'messages[1].id', 'messages[2].id']);
    // The last entry says how many were left out.
    expect(listed.at(-1)).toMatchObject({ field: '', description: expect.stringMatching(/^and \d+ more violations/) });
    expect(failed.details).toContain('10000 invalid fields');
  });

  it('is idempotent on message id: a second publish stores and sends nothing new', async () => {
    const acc = await account();
    const messages = [inboxMessage('idem'), inboxMessage('idem')];
    const first = await t.clients.publishMessages({ accountId: acc, messages });
    expect(first).toMatchObject({ accepted: 2, duplicates: 0 });
    await deliveryIn(t.clients, first.deliveries[0]?.deliveryId ?? '', DELIVERED);
    const second = await t.clients.publishMessages({ accountId: acc, messages });
    expect(second).toMatchObject({ accepted: 0, duplicates: 2, deliveries: [] });
    await new Promise((r) => setTimeout(r, 200));
    expect(receiver.records.list()).toHaveLength(1);
  });

  it('is idempotent on message id whatever the case of its hex digits (a UUID is case-insensitive)', async () => {
    const acc = await account();
    const id = randomUUID();
    const first = await t.clients.publishMessages({
      accountId: acc,
      messages: [inboxMessage('uuid-case', { id: id.toUpperCase() }), inboxMessage('uuid-case', { id })],
    });
    expect(first).toMatchObject({ accepted: 1, duplicates: 1 });
    await deliveryIn(t.clients, first.deliveries[0]?.deliveryId ?? '', DELIVERED);
    const second = await t.clients.publishMessages({
      accountId: acc,
      messages: [inboxMessage('uuid-case', { id: id.toUpperCase() })],
    });
    expect(second).toMatchObject({ accepted: 0, duplicates: 1, deliveries: [] });
    await new Promise((r) => setTimeout(r, 200));
    // One message, in the canonical lowercase form (RFC 9562 §4), however the caller spelled it.
    expect(listsOf('uuid-case')).toEqual([[expect.objectContaining({ id })]]);
  });

  it('keeps the first of two messages with one id in a call and counts the second as a duplicate', async () => {
    const acc = await account();
    const id = randomUUID();
    const published = await t.clients.publishMessages({
      accountId: acc,
      messages: [inboxMessage('twice', { id, title: 'first' }), inboxMessage('other', { id, title: 'second' })],
    });
    expect(published).toMatchObject({ accepted: 1, duplicates: 1 });
    expect(published.deliveries.map((d) => d.externalCustomerId)).toEqual(['twice']);
    await deliveryIn(t.clients, published.deliveries[0]?.deliveryId ?? '', DELIVERED);
    expect(listsOf('twice')).toEqual([[expect.objectContaining({ id, title: 'first' })]]);
  });

  /**
   * How long the short-lived messages below live: their first list must be built before they expire. 300-400 ms
   * (about 100 ms used here) left that to the machine's speed: on a slow or loaded one the first list came out empty.
   */
  const SHORT_TTL_MS = 1_500;

  it('drops an expired message from the next list (TTL)', async () => {
    const acc = await account();
    const shortLived = inboxMessage('ttl', { expiresAtMs: Date.now() + SHORT_TTL_MS });
    const lasting = inboxMessage('ttl', { ttlSeconds: 3600 });
    const first = await t.clients.publishMessages({ accountId: acc, messages: [shortLived] });
    await deliveryIn(t.clients, first.deliveries[0]?.deliveryId ?? '', DELIVERED);
    expect(listsOf('ttl')[0]?.map((m) => m.id)).toEqual([shortLived.id]);
    await new Promise((r) => setTimeout(r, Math.max(0, (shortLived.expiresAtMs ?? 0) - Date.now() + 50)));
    const second = await t.clients.publishMessages({ accountId: acc, messages: [lasting] });
    await deliveryIn(t.clients, second.deliveries[0]?.deliveryId ?? '', DELIVERED);
    expect(listsOf('ttl')[1]?.map((m) => m.id)).toEqual([lasting.id]);
    // A resync sends the current list again: still without the expired message.
    const resync = await t.clients.resyncContacts({ accountId: acc, externalCustomerIds: ['ttl'], all: false });
    await deliveryIn(t.clients, resync.deliveries[0]?.deliveryId ?? '', DELIVERED);
    expect(listsOf('ttl')[2]?.map((m) => m.id)).toEqual([lasting.id]);
  });

  it("empties the receiver's copy of a contact whose messages all expired: [] with the contact in a header", async () => {
    const acc = await account();
    const contact = 'all expired é';
    const shortLived = inboxMessage(contact, { expiresAtMs: Date.now() + SHORT_TTL_MS });
    const first = await t.clients.publishMessages({ accountId: acc, messages: [shortLived] });
    await deliveryIn(t.clients, first.deliveries[0]?.deliveryId ?? '', DELIVERED);
    expect(receiver.records.lastAccepted(contact)?.messages.map((m) => m.id)).toEqual([shortLived.id]);
    await new Promise((r) => setTimeout(r, Math.max(0, (shortLived.expiresAtMs ?? 0) - Date.now() + 50)));

    const resync = await t.clients.resyncContacts({ accountId: acc, externalCustomerIds: [contact], all: false });
    const deliveryId = resync.deliveries[0]?.deliveryId ?? '';
    await deliveryIn(t.clients, deliveryId, DELIVERED);
    const request = await receiver.records.waitFor((r) => r.deliveryId === deliveryId);
    expect(request.body).toEqual([]);
    // The body names nobody; the header does, and the receiver's copy of that contact is now empty.
    expect(request.headers['app-inbox-contact']).toBe(encodeURIComponent(contact));
    expect(receiver.records.lastAccepted(contact)).toMatchObject({ deliveryId, messages: [] });
  });

  it('answers FAILED_PRECONDITION for an account without a webhook, NOT_FOUND on reads', async () => {
    const acc = accountId('nohook');
    const failed = await failure(t.clients.publishMessages({ accountId: acc, messages: [inboxMessage('c')] }));
    expect(failed.code).toBe(status.FAILED_PRECONDITION);
    expect(failed.rich?.errorInfo?.reason).toBe('WEBHOOK_NOT_CONFIGURED');
    expect((await failure(t.clients.getWebhook({ accountId: acc }))).code).toBe(status.NOT_FOUND);
    expect((await failure(t.clients.deleteWebhook({ accountId: acc }))).code).toBe(status.NOT_FOUND);
    expect((await failure(t.clients.getDelivery({ deliveryId: randomUUID(), includeBody: false }))).code).toBe(
      status.NOT_FOUND,
    );
  });

  it('DeleteWebhook deletes every delivery: a failed one cannot be replayed to a webhook saved later', async () => {
    // A failed delivery's body holds the account's messages; kept after DeleteWebhook, a replay would have sent
    // the deleted messages to whatever URL the account saved next.
    const old = await createMockReceiver({ rules: [{ answers: [{ status: 400 }], repeat: true }] });
    const acc = accountId('deleted');
    try {
      await t.clients.upsertWebhook({ accountId: acc, url: `${old.url}/old`, signingSecret: '' });
      const deleted = inboxMessage('contact-del');
      const published = await t.clients.publishMessages({ accountId: acc, messages: [deleted] });
      const deliveryId = published.deliveries[0]?.deliveryId ?? '';
      const failed = await deliveryIn(t.clients, deliveryId, [DeliveryState.DELIVERY_STATE_FAILED]);
      expect(failed.messageIds).toEqual([deleted.id]);

      await t.clients.deleteWebhook({ accountId: acc });
      expect((await failure(t.clients.retryDelivery({ deliveryId }))).code).toBe(status.NOT_FOUND);
      expect((await failure(t.clients.getDelivery({ deliveryId, includeBody: true }))).code).toBe(status.NOT_FOUND);
      expect((await t.clients.listDeliveries({ accountId: acc, pageSize: 10, pageToken: '' })).deliveries).toEqual([]);

      receiver = await createMockReceiver();
      await t.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/new`, signingSecret: '' });
      const fresh = inboxMessage('contact-del');
      const next = await t.clients.publishMessages({ accountId: acc, messages: [fresh] });
      await deliveryIn(t.clients, next.deliveries[0]?.deliveryId ?? '', DELIVERED);
      expect(listsOf('contact-del').map((list) => list.map((m) => m.id))).toEqual([[fresh.id]]);
    } finally {
      await old.close();
    }
  });

  it('never returns the Basic auth password or the signing secret', async () => {
    receiver = await createMockReceiver({ username: 'u1', password: 'pa55-w0rd-never-shown' });
    const acc = accountId();
    const signingSecret = `whsec_${Buffer.from(randomUUID().replaceAll('-', '')).toString('base64')}`;
    const upserted = await t.clients.upsertWebhook({
      accountId: acc,
      url: `${receiver.url}/in`,
      basicAuth: { username: 'u1', password: 'pa55-w0rd-never-shown' },
      signingSecret,
      enabled: true,
    });
    expect(upserted.created).toBe(true);
    const read = await t.clients.getWebhook({ accountId: acc });
    expect(read.webhook).toMatchObject({
      basicAuth: { username: 'u1', hasPassword: true },
      hasSigningSecret: true,
      enabled: true,
    });
    for (const bytes of [GetWebhookResponse.encode(read).finish(), UpsertWebhookResponse.encode(upserted).finish()]) {
      const text = Buffer.from(bytes).toString('latin1');
      expect(text).not.toContain('pa55-w0rd');
      expect(text).not.toContain(signingSecret);
    }
    // A refused change does not echo the secret either.
    const failed = await failure(
      t.clients.upsertWebhook({
        accountId: acc,
        url: 'ftp://nowhere',
        basicAuth: { username: 'u1', password: 'pa55-w0rd-never-shown\u0000' },
        signingSecret: 'whsec_short',
      }),
    );
    expect(failed.code).toBe(status.INVALID_ARGUMENT);
    expect(failed.rich?.badRequest?.fieldViolations.map((v) => v.field).sort()).toEqual([
      'basic_auth.password',
      'signing_secret',
      'url',
    ]);
    expect(Buffer.from(failed.metadata.get('grpc-status-details-bin')[0] as Buffer).toString('latin1')).not.toContain(
      'pa55-w0rd',
    );
    expect(failed.details).not.toContain('pa55-w0rd');

    // The stored password is the one used: the receiver (which checks it) accepts the delivery.
    const published = await t.clients.publishMessages({ accountId: acc, messages: [inboxMessage('auth')] });
    await deliveryIn(t.clients, published.deliveries[0]?.deliveryId ?? '', DELIVERED);
    // An upsert is the whole configuration: leaving auth out removes it.
    const replaced = await t.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/in`, signingSecret: '' });
    expect(replaced).toMatchObject({ created: false, webhook: { basicAuth: undefined, hasSigningSecret: false } });
    await t.clients.deleteWebhook({ accountId: acc });
    expect((await failure(t.clients.getWebhook({ accountId: acc }))).code).toBe(status.NOT_FOUND);
  });

  it('lists deliveries by account, contact and state, by pages', async () => {
    const acc = await account();
    const contacts = ['p1', 'p2', 'p3', 'p4', 'p5'];
    const published = await t.clients.publishMessages({
      accountId: acc,
      messages: contacts.map((c) => inboxMessage(c)),
    });
    for (const d of published.deliveries) await deliveryIn(t.clients, d.deliveryId, DELIVERED);
    const seen: string[] = [];
    let pageToken = '';
    do {
      const page = await t.clients.listDeliveries({
        accountId: acc,
        externalCustomerId: '',
        states: [DeliveryState.DELIVERY_STATE_DELIVERED],
        pageSize: 2,
        pageToken,
      });
      expect(page.deliveries.length).toBeLessThanOrEqual(2);
      for (const d of page.deliveries) {
        expect(d.attempts).toHaveLength(1);
        expect(d.body).toHaveLength(0);
        seen.push(d.externalCustomerId);
      }
      pageToken = page.nextPageToken;
    } while (pageToken !== '');
    expect(seen.sort()).toEqual(contacts);
    const one = await t.clients.listDeliveries({
      accountId: acc,
      externalCustomerId: 'p3',
      states: [],
      pageSize: 10,
      pageToken: '',
    });
    expect(one.deliveries.map((d) => d.externalCustomerId)).toEqual(['p3']);
    const none = await t.clients.listDeliveries({
      accountId: acc,
      externalCustomerId: '',
      states: [DeliveryState.DELIVERY_STATE_FAILED],
      pageSize: 10,
      pageToken: '',
    });
    expect(none.deliveries).toEqual([]);
    const badToken = await failure(
      t.clients.listDeliveries({
        accountId: acc,
        externalCustomerId: '',
        states: [],
        pageSize: 10,
        pageToken: 'garbage',
      }),
    );
    expect(badToken.rich?.badRequest?.fieldViolations.map((v) => v.field)).toEqual(['page_token']);
  });

  it('refuses a page_token of a listing with another filter (AIP-158), which skipped rows', async () => {
    const accA = await account();
    const accB = accountId();
    await t.clients.upsertWebhook({ accountId: accB, url: `${receiver.url}/in`, signingSecret: '' });
    const published = [
      await t.clients.publishMessages({ accountId: accA, messages: ['a1', 'a2', 'a3'].map((c) => inboxMessage(c)) }),
      await t.clients.publishMessages({ accountId: accB, messages: ['b1', 'b2', 'b3'].map((c) => inboxMessage(c)) }),
    ];
    for (const d of published.flatMap((p) => p.deliveries)) await deliveryIn(t.clients, d.deliveryId, DELIVERED);
    const list = (filter: { accountId?: string; externalCustomerId?: string; states?: DeliveryState[] }, token = '') =>
      t.clients.listDeliveries({ externalCustomerId: '', states: [], ...filter, pageSize: 1, pageToken: token });

    // B's token positions after B's newest delivery, newer than all of A's: with A's filter it skipped them all.
    const pageB = await list({ accountId: accB });
    expect(pageB.nextPageToken).not.toBe('');
    for (const other of [
      { accountId: accA },
      { accountId: accB, externalCustomerId: 'b1' },
      { accountId: accB, states: [DeliveryState.DELIVERY_STATE_FAILED] },
      {},
    ]) {
      const mixed = await failure(list(other, pageB.nextPageToken));
      expect(mixed.code, JSON.stringify(other)).toBe(status.INVALID_ARGUMENT);
      expect(mixed.rich?.badRequest?.fieldViolations.map((v) => [v.field, v.description])).toEqual([
        ['page_token', 'is not a token from a previous page of this listing'],
      ]);
    }
    // With its own filter the token goes on (states in another order are the same filter).
    expect((await list({ accountId: accB }, pageB.nextPageToken)).deliveries).toHaveLength(1);
    const states = [DeliveryState.DELIVERY_STATE_DELIVERED, DeliveryState.DELIVERY_STATE_FAILED];
    const first = await list({ accountId: accA, states });
    const second = await list({ accountId: accA, states: [...states].reverse() }, first.nextPageToken);
    expect([...first.deliveries, ...second.deliveries].map((d) => d.externalCustomerId)).toEqual(['a3', 'a2']);
  });

  it('cuts a page of deliveries with many message ids to what a default client can receive, losing none', async () => {
    // Twelve deliveries of 10,000 message ids each (~380 KB apiece) in one page of 100 were over grpc-js's default
    // 4 MiB receive limit: RESOURCE_EXHAUSTED, and no token to go on.
    const acc = await account({ maxMessagesPerContact: 10_000 });
    const first = await t.clients.publishMessages({
      accountId: acc,
      messages: Array.from({ length: 10_000 }, () => inboxMessage('big', { title: '', content: '' })),
    });
    const ids = [first.deliveries[0]!.deliveryId];
    await deliveryIn(t.clients, ids[0]!, DELIVERED);
    for (let round = 1; round < 12; round++) {
      const resynced = await t.clients.resyncContacts({ accountId: acc, externalCustomerIds: ['big'], all: false });
      ids.push(resynced.deliveries[0]!.deliveryId);
      await deliveryIn(t.clients, ids[round]!, DELIVERED);
    }
    const pages: string[][] = [];
    let pageToken = '';
    do {
      const page = await t.clients.listDeliveries({
        accountId: acc,
        externalCustomerId: '',
        states: [],
        pageSize: 100,
        pageToken,
      });
      for (const d of page.deliveries) expect(d.messageIds).toHaveLength(10_000);
      pages.push(page.deliveries.map((d) => d.id));
      pageToken = page.nextPageToken;
    } while (pageToken !== '');
    expect(pages.length).toBeGreaterThan(1);
    expect(pages.flat()).toEqual([...ids].reverse());
  });

  it('answers a publish to 10,000 contacts with long non-ASCII ids within what a default client can receive', async () => {
    const acc = await account();
    await t.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/in`, enabled: false });
    // 256 characters of 3 UTF-8 bytes each (the limit counts characters): about 800 bytes per listed contact.
    const contact = (i: number) => `${'é'.repeat(120)}${'€'.repeat(130)}-${String(i).padStart(5, '0')}`;
    const messages = Array.from({ length: 10_000 }, (_, i) => inboxMessage(contact(i)));
    // One entry per contact was about 8 MB: RESOURCE_EXHAUSTED for a publish that was committed.
    const published = await t.clients.publishMessages({ accountId: acc, messages });
    expect(published.accepted).toBe(10_000);
    expect(published.scheduledContacts).toBe(10_000);
    expect(published.deliveries.length).toBeGreaterThan(0);
    expect(published.deliveries.length).toBeLessThan(10_000);
    const first = published.deliveries[0];
    const { delivery } = await t.clients.getDelivery({ deliveryId: first?.deliveryId ?? '' });
    expect(delivery).toMatchObject({
      externalCustomerId: first?.externalCustomerId,
      state: DeliveryState.DELIVERY_STATE_PENDING,
    });
  });

  it('answers a resync of all the contacts of a large account within what a default client can receive', async () => {
    const acc = await account();
    // Disabled: the deliveries stay pending, nothing is sent; long contact ids make the answer large with few contacts.
    await t.clients.upsertWebhook({ accountId: acc, url: `${receiver.url}/in`, enabled: false });
    const contact = (i: number) => `${'c'.repeat(200)}-${i}`;
    const total = 20_000;
    for (let start = 0; start < total; start += 10_000) {
      const messages = Array.from({ length: 10_000 }, (_, i) => inboxMessage(contact(start + i)));
      expect((await t.clients.publishMessages({ accountId: acc, messages })).accepted).toBe(10_000);
    }
    // One entry per contact was about 5 MB: a client with gRPC's default 4 MiB receive limit got RESOURCE_EXHAUSTED,
    // although the resync was committed.
    const resync = await t.clients.resyncContacts({ accountId: acc, externalCustomerIds: [], all: true });
    expect(resync.scheduledContacts).toBe(total);
    expect(resync.deliveries.length).toBeGreaterThan(0);
    expect(resync.deliveries.length).toBeLessThan(total);
    const listed = new Set(resync.deliveries.map((d) => d.externalCustomerId));
    expect(listed.size).toBe(resync.deliveries.length);
    // Each listed delivery is the contact's pending one, as the publish scheduled it.
    const first = resync.deliveries[0];
    const { delivery } = await t.clients.getDelivery({ deliveryId: first?.deliveryId ?? '' });
    expect(delivery).toMatchObject({
      externalCustomerId: first?.externalCustomerId,
      state: DeliveryState.DELIVERY_STATE_PENDING,
    });
  });

  it('resyncs every contact of an account with all=true', async () => {
    const acc = await account();
    const published = await t.clients.publishMessages({
      accountId: acc,
      messages: [inboxMessage('r1'), inboxMessage('r2')],
    });
    for (const d of published.deliveries) await deliveryIn(t.clients, d.deliveryId, DELIVERED);
    const resync = await t.clients.resyncContacts({ accountId: acc, externalCustomerIds: [], all: true });
    expect(resync.deliveries.map((d) => d.externalCustomerId).sort()).toEqual(['r1', 'r2']);
    expect(resync.scheduledContacts).toBe(2);
    await eventually(() =>
      receiver.records.list().filter((r) => r.answer.status === 200).length === 4 ? true : undefined,
    );
  });
});
