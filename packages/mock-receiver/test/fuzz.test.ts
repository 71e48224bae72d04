/**
 * Property: whatever arrives (method, path, headers, body), the receiver answers with one of the
 * contract's statuses, records it, and keeps serving.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { request } from 'undici';
import { basicAuthorization } from '@app-inbox/core';
import { message, post, startReceiver } from './helpers.js';

const CONTRACT_STATUSES = [200, 400, 401, 405, 415, 429];
const auth = { username: 'fuzz', password: 'fuzz-pw' };

/** Visible ASCII and spaces: what a header value may carry. */
const headerText = fc.string({
  unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
  maxLength: 60,
});

/** Valid messages with random fields overridden by random JSON (sometimes still valid). */
const messageLike = fc
  .tuple(
    fc.constantFrom('c-1', 'c-2', ''),
    fc.dictionary(
      fc.constantFrom('id', 'createdDate', 'title', 'image', 'link', 'customData', 'category', 'unknown'),
      fc.jsonValue({ maxDepth: 2 }),
      { maxKeys: 2 },
    ),
  )
  .map(([contact, overrides]) => ({ ...message(contact), ...overrides }));

const body = fc.oneof(
  fc.array(messageLike, { maxLength: 4 }).map((list) => JSON.stringify(list)),
  fc
    .array(
      fc.constant(null).map(() => message('c-1')),
      { minLength: 0, maxLength: 4 },
    )
    .map((l) => JSON.stringify(l)),
  fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
  fc.string({ maxLength: 200 }),
  fc.uint8Array({ maxLength: 200 }).map((bytes) => Buffer.from(bytes)),
);

/** Weighted so that every branch of the contract is reached often, not only the 405 and 415 ones. */
const exchange = fc.record({
  method: fc.oneof(
    { arbitrary: fc.constant('POST'), weight: 8 },
    { arbitrary: fc.constantFrom('PUT', 'PATCH', 'DELETE', 'GET', 'HEAD', 'OPTIONS'), weight: 2 },
  ),
  path: fc
    .webPath()
    .map((p) => (p.startsWith('/') ? p : `/${p}`))
    // As the request will carry it: the URL resolves dot segments, so `/.` is the QA page at `/` (not recorded).
    .filter((p) => {
      const sent = new URL(`http://receiver.test${p}`).pathname;
      return !sent.startsWith('/__') && sent !== '/';
    }),
  contentType: fc.oneof(
    { arbitrary: fc.constantFrom('application/json', 'application/json; charset=utf-8'), weight: 8 },
    { arbitrary: fc.constantFrom('text/plain', 'application/json; charset=utf-16'), weight: 1 },
    { arbitrary: headerText, weight: 1 },
    { arbitrary: fc.constant(null), weight: 1 },
  ),
  authorization: fc.oneof(
    { arbitrary: fc.constant(basicAuthorization(auth.username, auth.password)), weight: 8 },
    { arbitrary: fc.constant(undefined), weight: 1 },
    { arbitrary: headerText.map((t) => `Basic ${t}`), weight: 1 },
    { arbitrary: headerText, weight: 1 },
  ),
  deliveryId: fc.option(headerText),
  body: fc.option(body, { freq: 10 }),
});

describe('fuzz', () => {
  it('always answers a contract status, records every request and keeps serving', async () => {
    const receiver = await startReceiver({ ...auth, maxMessagesPerContact: 2 });
    const seen: string[] = [];
    await fc.assert(
      fc.asyncProperty(exchange, async (x) => {
        const headers: Record<string, string> = {};
        if (x.contentType !== null) headers['content-type'] = x.contentType;
        if (x.authorization !== undefined) headers.authorization = x.authorization;
        if (x.deliveryId !== null) headers['webhook-id'] = x.deliveryId;
        const withBody = x.body !== null && x.method !== 'GET' && x.method !== 'HEAD';
        const res = await request(`${receiver.url}${x.path}`, {
          method: x.method,
          headers,
          ...(withBody ? { body: x.body as string | Buffer } : {}),
        });
        await res.body.dump();
        seen.push(`${x.method} ${res.statusCode}`);
        expect(CONTRACT_STATUSES).toContain(res.statusCode);
      }),
      { numRuns: 250 },
    );
    // Each request is recorded (in order, with the status the client saw) once its exchange has ended.
    await expect.poll(() => receiver.records.stats().received, { timeout: 5000 }).toBe(seen.length);
    expect(receiver.records.list().map((r) => `${r.method} ${r.answer.status}`)).toEqual(seen);
    const stats = receiver.records.stats();
    // Every branch was reached, so the property says something about each of them.
    for (const status of CONTRACT_STATUSES) expect(stats.byStatus[String(status)], String(status)).toBeGreaterThan(0);
    expect((await post(receiver, { body: [message('c-1')], auth })).status).toBe(200);
  });
});
