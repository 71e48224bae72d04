/**
 * The contract's answers over real HTTP, one test per branch, and their order (SPEC §5; issue 3).
 */
import { describe, expect, it } from 'vitest';
import { message, messages, post, startReceiver } from './helpers.js';

const auth = { username: 'shop', password: 's3cret-pw' };

describe('the contract answers', () => {
  it('200 for a valid list, on any path', async () => {
    const receiver = await startReceiver();
    for (const path of ['/webhook', '/', '/customers/acme/app-inbox?token=x']) {
      const answer = await post(receiver, { path, body: [message('c-1'), message('c-2')] });
      expect(answer.status).toBe(200);
      expect(answer.json).toEqual({ accepted: 2, contacts: 2 });
    }
    expect(receiver.records.list().map((r) => r.path)).toEqual(['/webhook', '/', '/customers/acme/app-inbox']);
    expect(receiver.records.list()[2]?.url).toBe('/customers/acme/app-inbox?token=x');
  });

  it('200 for an empty list, the contact it empties named by app-inbox-contact', async () => {
    const receiver = await startReceiver();
    expect((await post(receiver, { body: [], headers: { 'app-inbox-contact': 'c-1' } })).status).toBe(200);
  });

  it('400 (strict) naming a missing webhook-id, or an empty list without app-inbox-contact; 200 with --no-strict', async () => {
    const strict = await startReceiver();
    const noId = await post(strict, { deliveryId: null, body: [message('c-1')] });
    const noContact = await post(strict, { body: [] });
    const fields = (answer: typeof noId) => [
      answer.status,
      (answer.json as { violations: Array<{ field: string }> }).violations.map((v) => v.field),
    ];
    expect(fields(noId)).toEqual([400, ['headers.webhook-id']]);
    expect(fields(noContact)).toEqual([400, ['headers.app-inbox-contact']]);
    expect((noId.json as { message: string }).message).toBe('1 problem in the request');
    const loose = await startReceiver({ strict: false });
    expect((await post(loose, { deliveryId: null, body: [message('c-1')] })).status).toBe(200);
    expect((await post(loose, { body: [] })).status).toBe(200);
  });

  it('405 with Allow for a method other than POST', async () => {
    const receiver = await startReceiver();
    for (const method of ['PUT', 'PATCH', 'DELETE', 'GET'] as const) {
      const answer = await post(receiver, { method, body: [message('c-1')] });
      expect(answer.status, method).toBe(405);
      expect(answer.headers.allow).toBe('POST');
      expect(answer.json).toMatchObject({ error: 'method_not_allowed' });
    }
  });

  it('415 when the body is not declared as JSON', async () => {
    const receiver = await startReceiver();
    for (const contentType of [
      null,
      'text/plain',
      'application/x-www-form-urlencoded',
      'application/json; charset=latin1',
    ]) {
      const answer = await post(receiver, { contentType, body: JSON.stringify([message('c-1')]) });
      expect(answer.status, String(contentType)).toBe(415);
      expect(answer.json).toMatchObject({ error: 'unsupported_media_type' });
    }
    // The media type is case-insensitive and charset=utf-8 is fine.
    const ok = await post(receiver, { contentType: 'Application/JSON; charset="UTF-8"', body: [message('c-1')] });
    expect(ok.status).toBe(200);
  });

  it('415 for a compressed body', async () => {
    const receiver = await startReceiver();
    const answer = await post(receiver, { body: [message('c-1')], headers: { 'content-encoding': 'gzip' } });
    expect(answer.status).toBe(415);
  });

  it('401 with WWW-Authenticate when credentials are missing or wrong, 200 when right', async () => {
    const receiver = await startReceiver(auth);
    const missing = await post(receiver, { body: [message('c-1')] });
    expect(missing.status).toBe(401);
    expect(missing.headers['www-authenticate']).toBe('Basic realm="mock-receiver", charset="UTF-8"');
    expect(missing.json).toMatchObject({ error: 'unauthorized', message: 'Basic credentials are required' });

    const wrong = await post(receiver, { body: [message('c-1')], auth: { ...auth, password: 'nope' } });
    expect(wrong.status).toBe(401);
    expect(wrong.json).toMatchObject({ message: 'Basic credentials are wrong' });
    expect(wrong.text).not.toContain(auth.password);

    const bearer = await post(receiver, { body: [message('c-1')], headers: { authorization: 'Bearer abc' } });
    expect(bearer.status).toBe(401);

    expect((await post(receiver, { body: [message('c-1')], auth })).status).toBe(200);
  });

  it('400 with every problem of the body listed by field', async () => {
    const receiver = await startReceiver();
    const answer = await post(receiver, {
      body: [
        message('c-1'),
        { ...message('c-1'), id: 'not-a-uuid', createdDate: 1.5, extra: true },
        { ...message('c-2'), link: 'not a url', title: undefined },
      ],
    });
    expect(answer.status).toBe(400);
    const body = answer.json as {
      error: string;
      message: string;
      violations: { field: string; description: string }[];
    };
    expect(body.error).toBe('invalid_payload');
    expect(body.violations.map((v) => v.field).sort()).toEqual(
      ['body[1].createdDate', 'body[1].extra', 'body[1].id', 'body[2].link', 'body[2].title'].sort(),
    );
    expect(body.message).toBe('5 problems in the request body');
    for (const v of body.violations) expect(v.description).not.toBe('');
  });

  it("400 for a contact's list out of order or with an id twice (strict), 200 for it with --no-strict", async () => {
    const newer = message('c-1', { createdDate: 1_700_000_000_002 });
    const older = message('c-1', { createdDate: 1_700_000_000_001 });
    const body = [older, message('c-2'), newer, older];
    const answer = await post(await startReceiver(), { body });
    expect(answer.status).toBe(400);
    expect(answer.json).toMatchObject({
      error: 'invalid_payload',
      violations: [
        { field: 'body[2]', description: expect.stringContaining('is newer than body[0] of the same contact') },
        { field: 'body[3].id', description: 'repeats body[0].id' },
      ],
    });
    expect((await post(await startReceiver({ strict: false }), { body })).status).toBe(200);
  });

  it('400 (strict) for messages of one createdDate not in id order, as the sender orders ties (SPEC §4)', async () => {
    const tie = { createdDate: 1_700_000_000_000 };
    const low = message('c-1', { ...tie, id: '00000000-0000-4000-8000-000000000001' });
    const high = message('c-1', { ...tie, id: 'ffffffff-0000-4000-8000-000000000001' });
    const receiver = await startReceiver();
    expect((await post(receiver, { body: [low, high] })).status).toBe(200);
    const answer = await post(receiver, { body: [high, low] });
    expect(answer.status).toBe(400);
    expect(answer.json).toMatchObject({
      error: 'invalid_payload',
      violations: [{ field: 'body[1].id', description: expect.stringContaining('ties by id ascending') }],
    });
    expect((await post(await startReceiver({ strict: false }), { body: [high, low] })).status).toBe(200);
  });

  it('400 for invalid JSON, an empty body, a body that is not an array, and bad UTF-8', async () => {
    const receiver = await startReceiver();
    const cases: [unknown, string][] = [
      ['[{"externalCustomerId": ', 'must be valid JSON'],
      ['', 'is required: a JSON array of messages'],
      [{ messages: [] }, 'must be an array'],
      [message('c-1'), 'must be an array'],
    ];
    for (const [body, description] of cases) {
      const answer = await post(receiver, { body });
      expect(answer.status, JSON.stringify(body)).toBe(400);
      expect(answer.json).toMatchObject({ violations: [{ field: 'body', description }] });
    }
  });

  it('400 for unknown fields only in strict mode (the default)', async () => {
    const strict = await startReceiver();
    const loose = await startReceiver({ strict: false });
    const body = [{ ...message('c-1'), priority: 'high' }];
    expect((await post(strict, { body })).status).toBe(400);
    expect((await post(loose, { body })).status).toBe(200);
    // Known fields are still checked without strict.
    const bad = await post(loose, { body: [{ ...message('c-1'), id: 'x', priority: 'high' }] });
    expect(bad.status).toBe(400);
    expect(bad.json).toMatchObject({ violations: [{ field: 'body[0].id' }] });
  });

  it('429 with Retry-After when a contact has more messages than the limit', async () => {
    const receiver = await startReceiver({ maxMessagesPerContact: 3, retryAfterSeconds: 7 });
    const atLimit = await post(receiver, { body: [...messages('c-1', 3), ...messages('c-2', 3)] });
    expect(atLimit.status).toBe(200);
    const over = await post(receiver, { body: [...messages('c-1', 3), ...messages('c-2', 4)] });
    expect(over.status).toBe(429);
    expect(over.headers['retry-after']).toBe('7');
    expect(over.json).toMatchObject({
      error: 'too_many_messages',
      limit: 3,
      contacts: [{ externalCustomerId: 'c-2', count: 4 }],
    });
  });

  it('uses the default limit of 1000 messages per contact (SPEC §2)', async () => {
    const receiver = await startReceiver();
    expect((await post(receiver, { body: messages('c-1', 1000) })).status).toBe(200);
    const over = await post(receiver, { body: messages('c-1', 1001) });
    expect(over.status).toBe(429);
    expect(over.headers['retry-after']).toBe('1');
  });

  it('413 for a body over maxBodyBytes, and keeps serving', async () => {
    const receiver = await startReceiver({ maxBodyBytes: 1024 });
    const answer = await post(receiver, { body: messages('c-1', 20) });
    expect(answer.status).toBe(413);
    expect((await post(receiver, { body: [message('c-1')] })).status).toBe(200);
  });

  describe('answers in the order of the issue', () => {
    it('405 before 415 and 401', async () => {
      const receiver = await startReceiver(auth);
      expect((await post(receiver, { method: 'PUT', contentType: 'text/plain', body: 'x' })).status).toBe(405);
    });

    it('415 before 401', async () => {
      const receiver = await startReceiver(auth);
      expect((await post(receiver, { contentType: 'text/plain', body: 'x' })).status).toBe(415);
    });

    it('401 before 400', async () => {
      const receiver = await startReceiver(auth);
      expect((await post(receiver, { body: 'not json' })).status).toBe(401);
    });

    it('400 before 429: a list with a bad message is not counted', async () => {
      const receiver = await startReceiver({ maxMessagesPerContact: 1 });
      const answer = await post(receiver, { body: [message('c-1'), { ...message('c-1'), id: 'bad' }] });
      expect(answer.status).toBe(400);
    });
  });
});
