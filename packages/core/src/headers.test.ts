import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  CONTACT_HEADER,
  DELIVERY_ID_HEADER,
  SIGNATURE_HEADER,
  RESERVED_HEADER_NAMES,
  TIMESTAMP_HEADER,
  USER_AGENT,
  basicAuthorization,
  buildRequestHeaders,
  bytesToBase64,
  isReservedHeaderName,
  percentEncode,
  signStandardWebhook,
} from './headers.js';
import { VERSION } from './version.js';

/** The test vector published by the Standard Webhooks project (libraries' test suites). */
const VECTOR = {
  secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
  msgId: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: 1614265330,
  payload: '{"test": 2432232314}',
  signature: 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
};

describe('header names', () => {
  it('are the Standard Webhooks names', () => {
    expect([DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER]).toEqual([
      'webhook-id',
      'webhook-timestamp',
      'webhook-signature',
    ]);
    expect(USER_AGENT).toBe(`app-inbox-webhooks/${VERSION}`);
  });
});

describe('basicAuthorization (RFC 7617)', () => {
  it('matches the RFC examples, including UTF-8', () => {
    expect(basicAuthorization('Aladdin', 'open sesame')).toBe('Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==');
    // RFC 7617 §2.1: user "test", password "123£" in UTF-8.
    expect(basicAuthorization('test', '123\u00a3')).toBe('Basic dGVzdDoxMjPCow==');
  });

  it('allows ":" in the password but not in the username, without showing the password', () => {
    expect(Buffer.from(basicAuthorization('u', 'a:b:c').slice(6), 'base64').toString('utf8')).toBe('u:a:b:c');
    let thrown: unknown;
    try {
      basicAuthorization('a:b', 'hunter2-secret');
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toMatchObject({ name: 'CoreError', code: 'invalid_argument' });
    expect(String((thrown as Error).message)).not.toContain('hunter2-secret');
  });

  it('property: decodes back to user:password in UTF-8', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'grapheme' }).filter((s) => !s.includes(':')),
        fc.string({ unit: 'grapheme' }),
        (user, password) => {
          const header = basicAuthorization(user, password);
          expect(header.startsWith('Basic ')).toBe(true);
          expect(Buffer.from(header.slice(6), 'base64').toString('utf8')).toBe(`${user}:${password}`);
        },
      ),
    );
  });
});

describe('bytesToBase64', () => {
  it('encodes large inputs in chunks like Buffer does', () => {
    const bytes = new Uint8Array(200_000).map((_, i) => (i * 7) % 256);
    expect(bytesToBase64(bytes)).toBe(Buffer.from(bytes).toString('base64'));
    expect(bytesToBase64(new Uint8Array())).toBe('');
  });
});

describe('signStandardWebhook', () => {
  it('reproduces the Standard Webhooks published test vector', async () => {
    await expect(signStandardWebhook(VECTOR.secret, VECTOR.msgId, VECTOR.timestamp, VECTOR.payload)).resolves.toBe(
      VECTOR.signature,
    );
  });

  it('signs bytes and the equal string alike', async () => {
    const bytes = new TextEncoder().encode(VECTOR.payload);
    await expect(signStandardWebhook(VECTOR.secret, VECTOR.msgId, VECTOR.timestamp, bytes)).resolves.toBe(
      VECTOR.signature,
    );
  });

  it('changes when the id, timestamp or body changes', async () => {
    const sign = (id: string, ts: number, body: string) => signStandardWebhook(VECTOR.secret, id, ts, body);
    const base = await sign(VECTOR.msgId, VECTOR.timestamp, VECTOR.payload);
    expect(await sign(`${VECTOR.msgId}x`, VECTOR.timestamp, VECTOR.payload)).not.toBe(base);
    expect(await sign(VECTOR.msgId, VECTOR.timestamp + 1, VECTOR.payload)).not.toBe(base);
    expect(await sign(VECTOR.msgId, VECTOR.timestamp, `${VECTOR.payload} `)).not.toBe(base);
  });

  it.each([
    ['no prefix', 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'],
    ['empty key', 'whsec_'],
    ['not base64', 'whsec_!!!!'],
  ])('rejects a secret with %s, never echoing it', async (_name, secret) => {
    const promise = signStandardWebhook(secret, 'id', 1, '[]');
    await expect(promise).rejects.toMatchObject({
      code: 'invalid_argument',
      message: 'signingSecret must be "whsec_" followed by base64',
    });
  });

  it.each([-1, 1.5, Number.NaN])('rejects timestamp %p', async (ts) => {
    await expect(signStandardWebhook(VECTOR.secret, 'id', ts, '[]')).rejects.toMatchObject({
      code: 'invalid_argument',
    });
  });

  it('property: equals an independent HMAC-SHA256 (node:crypto)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 24, maxLength: 64 }),
        fc.string({ minLength: 1, maxLength: 40 }),
        fc.nat(),
        fc.string({ unit: 'grapheme', maxLength: 200 }),
        async (key, msgId, ts, body) => {
          const secret = `whsec_${Buffer.from(key).toString('base64')}`;
          const expected = createHmac('sha256', key).update(`${msgId}.${ts}.${body}`, 'utf8').digest('base64');
          expect(await signStandardWebhook(secret, msgId, ts, body)).toBe(`v1,${expected}`);
        },
      ),
      { numRuns: 50 },
    );
  });
});

describe('buildRequestHeaders', () => {
  it('sends the content type, ids, timestamp and user agent', async () => {
    expect(
      await buildRequestHeaders({
        deliveryId: 'dlv_1',
        externalCustomerId: 'c-1',
        body: '[]',
        timestampSeconds: 1700000000,
      }),
    ).toEqual({
      'content-type': 'application/json',
      'user-agent': USER_AGENT,
      'webhook-id': 'dlv_1',
      'webhook-timestamp': '1700000000',
      'app-inbox-contact': 'c-1',
    });
  });

  it('names the contact percent-encoded, so that any externalCustomerId fits in a header and decodes back', async () => {
    const contacts = ['c-1', 'a b/c?d=e&f', 'Zoë 🦊', 'tab\there', 'line\r\nbreak', '%41', "~._-!*'()"];
    for (const contact of contacts) {
      const headers = await buildRequestHeaders({
        deliveryId: 'd',
        externalCustomerId: contact,
        body: '[]',
        timestampSeconds: 1,
      });
      const value = headers[CONTACT_HEADER] ?? '';
      expect(value).toMatch(/^[A-Za-z0-9._~%-]+$/);
      expect(decodeURIComponent(value)).toBe(contact);
    }
    expect(percentEncode('Zoë')).toBe('Zo%C3%AB');
    // A lone surrogate (not in any valid input) still encodes, as U+FFFD.
    expect(percentEncode('\ud800')).toBe('%EF%BF%BD');
  });

  it('adds Basic auth and the signature when configured', async () => {
    const headers = await buildRequestHeaders({
      deliveryId: VECTOR.msgId,
      externalCustomerId: 'c-1',
      body: VECTOR.payload,
      timestampSeconds: VECTOR.timestamp,
      auth: { type: 'basic', username: 'Aladdin', password: 'open sesame' },
      signingSecret: VECTOR.secret,
    });
    expect(headers.authorization).toBe('Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==');
    expect(headers['webhook-signature']).toBe(VECTOR.signature);
    expect(headers['webhook-id']).toBe(VECTOR.msgId);
    expect(headers['webhook-timestamp']).toBe(String(VECTOR.timestamp));
  });

  it('signs with the current and the replaced secret during a rotation: both signatures, current first', async () => {
    const previous = 'whsec_' + Buffer.alloc(32, 9).toString('base64');
    const input = { deliveryId: VECTOR.msgId, externalCustomerId: 'c-1', body: VECTOR.payload };
    const headers = await buildRequestHeaders({
      ...input,
      timestampSeconds: VECTOR.timestamp,
      signingSecret: VECTOR.secret,
      previousSigningSecret: previous,
    });
    const expectedPrevious = createHmac('sha256', Buffer.alloc(32, 9))
      .update(`${VECTOR.msgId}.${VECTOR.timestamp}.${VECTOR.payload}`)
      .digest('base64');
    expect(headers['webhook-signature']).toBe(`${VECTOR.signature} v1,${expectedPrevious}`);
    // The same secret twice signs once; without a current secret nothing is signed.
    const same = { ...input, timestampSeconds: VECTOR.timestamp, signingSecret: VECTOR.secret };
    expect((await buildRequestHeaders({ ...same, previousSigningSecret: VECTOR.secret }))['webhook-signature']).toBe(
      VECTOR.signature,
    );
    const unsigned = await buildRequestHeaders({ ...input, timestampSeconds: 1, previousSigningSecret: previous });
    expect(unsigned['webhook-signature']).toBeUndefined();
  });

  it("adds the webhook's own headers, names in lower case", async () => {
    const headers = await buildRequestHeaders({
      deliveryId: 'd',
      externalCustomerId: 'c-1',
      body: '[]',
      timestampSeconds: 1,
      headers: { 'X-Api-Key': 'k_1', 'x-route': 'eu', authorization: 'Bearer t' },
    });
    expect(headers).toEqual({
      'x-api-key': 'k_1',
      'x-route': 'eu',
      authorization: 'Bearer t',
      'content-type': 'application/json',
      'user-agent': USER_AGENT,
      'webhook-id': 'd',
      'webhook-timestamp': '1',
      'app-inbox-contact': 'c-1',
    });
  });

  it("never lets the webhook's own headers replace the service's, whatever a stored configuration holds", async () => {
    const own = Object.fromEntries(
      [...RESERVED_HEADER_NAMES, 'App-Inbox-Contact', 'app-inbox-later', 'proxy-authorization', 'Authorization'].map(
        (name) => [name, 'forged'],
      ),
    );
    const headers = await buildRequestHeaders({
      deliveryId: VECTOR.msgId,
      externalCustomerId: 'c-1',
      body: VECTOR.payload,
      timestampSeconds: VECTOR.timestamp,
      auth: { type: 'basic', username: 'Aladdin', password: 'open sesame' },
      signingSecret: VECTOR.secret,
      headers: own,
    });
    expect(Object.values(headers)).not.toContain('forged');
    expect(headers).toMatchObject({
      'content-type': 'application/json',
      'user-agent': USER_AGENT,
      authorization: 'Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==',
      'webhook-signature': VECTOR.signature,
      'app-inbox-contact': 'c-1',
    });
  });

  it('reserves the names the service sends and the connection and framing ones, in any case', () => {
    for (const name of [CONTACT_HEADER, DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER, 'user-agent']) {
      expect(isReservedHeaderName(name), name).toBe(true);
      expect(isReservedHeaderName(name.toUpperCase()), name).toBe(true);
    }
    for (const name of ['Host', 'TE', 'Proxy-Anything', 'app-inbox-x', 'Transfer-Encoding']) {
      expect(isReservedHeaderName(name), name).toBe(true);
    }
    for (const name of ['authorization', 'x-api-key', 'webhook-other', 'proxy', 'x-app-inbox-contact']) {
      expect(isReservedHeaderName(name), name).toBe(false);
    }
  });

  it('rejects an empty delivery id and a bad timestamp', async () => {
    const input = { deliveryId: 'd', externalCustomerId: 'c', body: '[]', timestampSeconds: 1 };
    await expect(buildRequestHeaders({ ...input, deliveryId: '' })).rejects.toMatchObject({
      code: 'invalid_argument',
      message: 'deliveryId must not be empty',
    });
    await expect(buildRequestHeaders({ ...input, externalCustomerId: '' })).rejects.toMatchObject({
      code: 'invalid_argument',
      message: 'externalCustomerId must not be empty',
    });
    await expect(buildRequestHeaders({ ...input, timestampSeconds: 1.5 })).rejects.toMatchObject({
      code: 'invalid_argument',
    });
  });
});
