/**
 * Recording over real HTTP: what is kept, redaction, filters, clearing, limits, duplicates by delivery id,
 * and each contact's last accepted list.
 */
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { ReceivedRequest } from '../src/index.js';
import { getJson, message, messages, post, sendJson, startReceiver } from './helpers.js';

const auth = { username: 'shop', password: 'correct-horse-battery' };

describe('recording', () => {
  it('keeps time, method, path, headers, parsed body, delivery id, answer and duration', async () => {
    const receiver = await startReceiver();
    const body = [message('c-1'), message('c-2')];
    const before = Date.now();
    await post(receiver, { path: '/hooks/inbox', deliveryId: 'dlv-1', body, headers: { 'x-extra': 'yes' } });
    const [record] = receiver.records.list();
    expect(record).toMatchObject({
      seq: 1,
      method: 'POST',
      path: '/hooks/inbox',
      deliveryId: 'dlv-1',
      body,
      externalCustomerIds: ['c-1', 'c-2'],
      messageCount: 2,
      answer: { status: 200, outcome: 'answered', branch: 'accepted', ruleId: null },
      duplicate: false,
    });
    expect(record?.headers['x-extra']).toBe('yes');
    expect(record?.headers['content-type']).toBe('application/json');
    expect(Date.parse(record?.receivedAt ?? '')).toBeGreaterThanOrEqual(before - 1);
    expect(record?.durationMs).toBeGreaterThanOrEqual(0);
    expect(record?.bodyBytes).toBe(Buffer.byteLength(JSON.stringify(body)));
  });

  it('keeps a body that is not JSON as text', async () => {
    const receiver = await startReceiver();
    await post(receiver, { body: 'hello, not json' });
    expect(receiver.records.list()[0]).toMatchObject({ body: null, bodyText: 'hello, not json', messageCount: null });
  });

  it('redacts Authorization: the password appears nowhere', async () => {
    const receiver = await startReceiver(auth);
    await post(receiver, { body: [message('c-1')], auth });
    await post(receiver, { body: [message('c-1')], auth: { ...auth, password: 'wrong-guess-123' } });
    const records = receiver.records.list();
    expect(records.map((r) => r.headers.authorization)).toEqual(['Basic [redacted]', 'Basic [redacted]']);
    const res = await request(`${receiver.url}/__received`);
    const text = await res.body.text();
    const base64 = Buffer.from(`${auth.username}:${auth.password}`).toString('base64');
    for (const secret of [auth.password, 'wrong-guess-123', base64]) expect(text).not.toContain(secret);
  });

  it('GET /__received filters by externalCustomerId and deliveryId; DELETE clears', async () => {
    const receiver = await startReceiver();
    await post(receiver, { deliveryId: 'd-1', body: [message('alice')] });
    await post(receiver, { deliveryId: 'd-2', body: [message('bob')] });
    await post(receiver, { deliveryId: 'd-3', body: [message('alice'), message('bob')] });

    const byContact = await getJson(receiver, '/__received?externalCustomerId=alice');
    const records = (byContact.json as { records: ReceivedRequest[] }).records;
    expect(records.map((r) => r.deliveryId)).toEqual(['d-1', 'd-3']);
    expect(records[0]?.body).toBeDefined();

    const byDelivery = await getJson(receiver, '/__received?deliveryId=d-2&summary=1');
    const summaries = (byDelivery.json as { records: Record<string, unknown>[] }).records;
    expect(summaries).toHaveLength(1);
    expect(summaries[0]).toMatchObject({ deliveryId: 'd-2', externalCustomerIds: ['bob'] });
    expect(summaries[0]).not.toHaveProperty('body');

    const last = await getJson(receiver, '/__received?limit=1');
    expect((last.json as { records: ReceivedRequest[] }).records.map((r) => r.deliveryId)).toEqual(['d-3']);

    expect(receiver.records.list({ deliveryId: 'd-1', externalCustomerId: 'bob' })).toEqual([]);

    const one = await getJson(receiver, '/__received/2');
    expect(one).toMatchObject({ status: 200, json: { seq: 2, deliveryId: 'd-2' } });
    expect((await getJson(receiver, '/__received/99')).status).toBe(404);
    expect(await getJson(receiver, '/__received/abc')).toMatchObject({
      status: 400,
      json: { error: 'invalid_query', violations: [{ field: 'seq' }] },
    });

    expect(await sendJson(receiver, 'DELETE', '/__received')).toEqual({ status: 200, json: { cleared: true } });
    const after = await getJson(receiver, '/__received');
    expect(after.json).toMatchObject({ records: [], stats: { received: 0 } });
    expect(receiver.records.lastAccepted('alice')).toBeUndefined();
  });

  it('answers 400 for a bad query parameter', async () => {
    const receiver = await startReceiver();
    const bad = await getJson(receiver, '/__received?status=abc&limit=-1');
    expect(bad.status).toBe(400);
    expect((bad.json as { violations: { field: string }[] }).violations.map((v) => v.field)).toEqual([
      'status',
      'limit',
    ]);
    const repeated = await getJson(receiver, '/__received?limit=5&limit=6');
    expect(repeated.status).toBe(400);
    expect(repeated.json).toMatchObject({ violations: [{ field: 'limit', description: 'must be given once' }] });
  });

  it('GET /__received?path= matches the path as sent, whether the filter is written decoded or encoded', async () => {
    const receiver = await startReceiver();
    await post(receiver, { path: '/hooks/a%20b', deliveryId: 'd-1', body: [message('alice')] });
    await post(receiver, { path: '/hooks/other', deliveryId: 'd-2', body: [message('alice')] });
    for (const query of ['path=%2Fhooks%2Fa%20b', 'path=/hooks/a%2520b']) {
      const found = await getJson(receiver, `/__received?${query}&summary=1`);
      const ids = (found.json as { records: ReceivedRequest[] }).records.map((r) => r.deliveryId);
      expect({ query, ids }).toEqual({ query, ids: ['d-1'] });
    }
  });

  it('answers 400 naming an unknown query parameter or a bad summary, never an unfiltered list', async () => {
    const receiver = await startReceiver();
    await post(receiver, { deliveryId: 'd-1', body: [message('alice')] });
    await post(receiver, { deliveryId: 'd-2', body: [message('bob')] });
    // A misspelt filter (the parameter names are case-sensitive) would otherwise list every record as if filtered.
    const typo = await getJson(receiver, '/__received?externalCustomerID=alice&summary=yes');
    expect(typo.status).toBe(400);
    expect((typo.json as { violations: { field: string }[] }).violations.map((v) => v.field)).toEqual([
      'summary',
      'externalCustomerID',
    ]);
    for (const summary of ['1', 'true', '0', 'false']) {
      expect((await getJson(receiver, `/__received?summary=${summary}`)).status).toBe(200);
    }
    const full = await getJson(receiver, '/__received?summary=0&externalCustomerId=bob');
    expect((full.json as { records: ReceivedRequest[] }).records.map((r) => r.body)).toEqual([
      [expect.objectContaining({ externalCustomerId: 'bob' })],
    ]);
  });

  it('answers 400 with JSON naming the parameter, not 500, for a path parameter with a malformed percent-escape', async () => {
    const errors: unknown[] = [];
    const receiver = await startReceiver({ onError: (error) => errors.push(error) });
    for (const [path, field] of [
      ['/__contacts/%E0%A4%A', 'externalCustomerId'],
      ['/__received/%ZZ', 'seq'],
    ] as const) {
      const bad = await getJson(receiver, path);
      expect({ path, status: bad.status, json: bad.json }).toEqual({
        path,
        status: 400,
        json: {
          error: 'invalid_query',
          violations: [{ field, description: 'must be percent-encoded UTF-8 (a malformed %-escape)' }],
        },
      });
    }
    // Not the receiver's failure: nothing reported as one.
    expect(errors).toEqual([]);
  });

  it('keeps the last recordLimit requests and counts the rest', async () => {
    const receiver = await startReceiver({ recordLimit: 3 });
    for (let i = 1; i <= 5; i++) await post(receiver, { deliveryId: `d-${i}`, body: [message('c-1')] });
    expect(receiver.records.list().map((r) => r.deliveryId)).toEqual(['d-3', 'd-4', 'd-5']);
    expect(receiver.records.stats()).toMatchObject({ received: 5, kept: 3, dropped: 2, byStatus: { '200': 5 } });
    const stats = await getJson(receiver, '/__stats');
    expect(stats.json).toMatchObject({ received: 5, kept: 3, dropped: 2 });
    // A forgotten record is gone from the endpoint too.
    expect((await getJson(receiver, '/__received/1')).status).toBe(404);
  });

  it('keeps at most recordBytesLimit bytes of bodies (the newest requests) and counts the rest', async () => {
    // Before: only the number of records was bounded, so 1000 records of large bodies (up to 64 MiB each) were all
    // kept, parsed, and a load test with big lists ran the receiver out of heap.
    const receiver = await startReceiver({ recordBytesLimit: 100_000 });
    const big = (i: number) => [message('c-1', { content: String(i).repeat(30_000) })];
    for (let i = 1; i <= 6; i++) await post(receiver, { deliveryId: `big-${i}`, body: big(i) });
    const kept = receiver.records.list();
    expect(kept.map((r) => r.deliveryId)).toEqual(['big-4', 'big-5', 'big-6']);
    const keptBytes = kept.reduce((sum, r) => sum + r.bodyBytes, 0);
    expect(keptBytes).toBeLessThanOrEqual(100_000);
    expect(receiver.records.stats()).toMatchObject({ received: 6, kept: 3, dropped: 3, keptBytes });
    expect((await getJson(receiver, '/__stats')).json).toMatchObject({ kept: 3, dropped: 3, keptBytes });
    expect((await getJson(receiver, '/__received/1')).status).toBe(404);
    // One body larger than the whole budget is still kept (the newest request always is), alone.
    await post(receiver, { deliveryId: 'huge', body: [message('c-1', { content: 'x'.repeat(150_000) })] });
    expect(receiver.records.list().map((r) => r.deliveryId)).toEqual(['huge']);
    expect(receiver.records.stats()).toMatchObject({ received: 7, kept: 1, dropped: 6 });
  });

  it('recordLimit 0 keeps nothing but still counts and still tracks accepted lists', async () => {
    const receiver = await startReceiver({ recordLimit: 0 });
    await post(receiver, { body: [message('c-1')] });
    expect(receiver.records.list()).toEqual([]);
    expect(receiver.records.stats()).toMatchObject({ received: 1, dropped: 1 });
    expect(receiver.records.lastAccepted('c-1')?.messages).toHaveLength(1);
  });

  it('counts duplicates by delivery id and tells whether the bodies were equal', async () => {
    const receiver = await startReceiver({
      rules: [{ match: { externalCustomerId: 'retry-me' }, answers: [{ status: 503 }] }],
    });
    const same = [message('retry-me')];
    await post(receiver, { deliveryId: 'same', body: same }); // 503 (rule)
    await post(receiver, { deliveryId: 'same', body: same }); // 200: the retry, same bytes
    await post(receiver, { deliveryId: 'same', body: same }); // 200 again: a duplicate of an accepted delivery
    await post(receiver, { deliveryId: 'changed', body: [message('c-2')] });
    await post(receiver, { deliveryId: 'changed', body: [message('c-2')] }); // new message ids: different body
    await post(receiver, { deliveryId: 'single', body: [message('c-3')] });

    const report = receiver.records.duplicates();
    expect(report).toMatchObject({ requests: 3, acceptedAgain: 2, differentBodies: 1 });
    expect(report.deliveries).toEqual([
      { deliveryId: 'same', count: 3, accepted: 2, bodiesEqual: true, firstSeq: 1, lastSeq: 3 },
      { deliveryId: 'changed', count: 2, accepted: 2, bodiesEqual: false, firstSeq: 4, lastSeq: 5 },
    ]);
    expect(receiver.records.list().map((r) => r.duplicate)).toEqual([false, true, true, false, true, false]);
    expect((await getJson(receiver, '/__duplicates')).json).toEqual(report);
    expect(receiver.records.stats()).toMatchObject({ duplicateRequests: 3, acceptedAgain: 2 });
  });

  it('keeps per contact the last list accepted (200), not lists that were refused', async () => {
    const receiver = await startReceiver({ maxMessagesPerContact: 2 });
    const first = messages('alice', 2);
    const second = [message('alice')];
    await post(receiver, { deliveryId: 'd-1', body: [...first, message('bob')] });
    await post(receiver, { deliveryId: 'd-2', body: second });
    await post(receiver, { deliveryId: 'd-3', body: messages('alice', 3) }); // 429: not accepted
    await post(receiver, { deliveryId: 'd-4', body: [{ ...message('alice'), id: 'bad' }] }); // 400

    const alice = receiver.records.lastAccepted('alice');
    expect(alice).toMatchObject({ externalCustomerId: 'alice', deliveryId: 'd-2', seq: 2, messages: second });
    expect(receiver.records.lastAccepted('bob')?.deliveryId).toBe('d-1');
    expect(receiver.records.lastAccepted('nobody')).toBeUndefined();

    const viaHttp = await getJson(receiver, '/__contacts/alice');
    expect(viaHttp).toMatchObject({ status: 200, json: { deliveryId: 'd-2', messages: second } });
    expect((await getJson(receiver, `/__contacts/${encodeURIComponent('no body')}`)).status).toBe(404);
    const all = await getJson(receiver, '/__contacts');
    expect(all.json).toEqual({
      contacts: [
        expect.objectContaining({ externalCustomerId: 'bob', messageCount: 1 }),
        expect.objectContaining({ externalCustomerId: 'alice', messageCount: 1 }),
      ],
    });
  });

  it('an empty list empties the copy of the contact its app-inbox-contact header names, and only that one', async () => {
    const receiver = await startReceiver();
    const contact = 'Zoë 1';
    await post(receiver, { deliveryId: 'd-1', body: messages(contact, 2) });
    await post(receiver, { deliveryId: 'd-2', body: [message('bob')] });
    await post(receiver, { deliveryId: 'd-3', body: [], headers: { 'app-inbox-contact': 'Zo%C3%AB%201' } });
    // Without the header, or with one that does not decode, an empty list names nobody: nothing changes.
    await post(receiver, { deliveryId: 'd-4', body: [] });
    await post(receiver, { deliveryId: 'd-5', body: [], headers: { 'app-inbox-contact': 'bob%E0%A4%A' } });

    expect(receiver.records.lastAccepted(contact)).toMatchObject({ deliveryId: 'd-3', messages: [] });
    expect(receiver.records.lastAccepted('bob')?.deliveryId).toBe('d-2');
    expect(receiver.records.list({ externalCustomerId: contact }).map((r) => r.deliveryId)).toEqual(['d-1', 'd-3']);
    expect(receiver.records.list().map((r) => r.externalCustomerIds)).toEqual([[contact], ['bob'], [contact], [], []]);
    const viaHttp = await getJson(receiver, `/__contacts/${encodeURIComponent(contact)}`);
    expect(viaHttp).toMatchObject({ status: 200, json: { deliveryId: 'd-3', messages: [] } });
  });

  it('a forced 2xx with a valid list counts as accepted; a forced error does not', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ status: 500 }, { status: 202 }] }] });
    await post(receiver, { body: [message('c-1')] });
    expect(receiver.records.lastAccepted('c-1')).toBeUndefined();
    await post(receiver, { body: [message('c-1')] });
    expect(receiver.records.lastAccepted('c-1')?.seq).toBe(2);
  });

  it('forgets the least recently accepted contacts beyond contactLimit', async () => {
    const receiver = await startReceiver({ contactLimit: 2 });
    for (const id of ['a', 'b', 'a', 'c']) await post(receiver, { body: [message(id)] });
    expect(receiver.records.contacts().map((c) => c.externalCustomerId)).toEqual(['a', 'c']);
    expect(receiver.records.stats()).toMatchObject({ contacts: 2, contactsForgotten: 1 });
  });

  it('waitFor resolves with a request still to come, and times out with a typed error', async () => {
    const receiver = await startReceiver();
    const waiting = receiver.records.waitFor((r) => r.deliveryId === 'later', 2000);
    await post(receiver, { deliveryId: 'sooner', body: [message('c-1')] });
    await post(receiver, { deliveryId: 'later', body: [message('c-1')] });
    expect((await waiting).seq).toBe(2);
    await expect(receiver.records.waitFor(() => false, 20)).rejects.toMatchObject({ code: 'timeout' });
  });
});
