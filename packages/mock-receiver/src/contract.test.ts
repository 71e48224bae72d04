import { describe, expect, it } from 'vitest';
import { checkBody, contactsOf, decide, mediaTypeProblem, parseBody, type ContractRequest } from './contract.js';

const utf8 = (s: string) => new TextEncoder().encode(s);

const valid = (externalCustomerId: string, n = 1) =>
  Array.from({ length: n }, (_, i) => ({
    externalCustomerId,
    id: `6f1c1f0e-8a2b-4c3d-9e4f-5a6b7c8d9e0${i}`,
    createdDate: 1_700_000_000_000,
    title: 't',
    content: 'c',
    category: 'x',
  }));

function req(overrides: Partial<ContractRequest> & { json?: unknown } = {}): ContractRequest {
  const { json, ...rest } = overrides;
  const body = rest.body ?? { kind: 'json' as const, value: json ?? valid('c-1') };
  return {
    method: 'POST',
    contentType: 'application/json',
    contentEncoding: undefined,
    credentials: 'not_required',
    body,
    bodyCheck: checkBody(body, true),
    ...rest,
  };
}

const settings = { maxMessagesPerContact: 2, retryAfterSeconds: 1, realm: 'r' };

describe('parseBody', () => {
  it('tells empty, invalid UTF-8, invalid JSON and JSON apart', () => {
    expect(parseBody(new Uint8Array())).toEqual({ kind: 'empty' });
    expect(parseBody(utf8('  \n'))).toEqual({ kind: 'empty' });
    expect(parseBody(new Uint8Array([0x5b, 0xff, 0x5d]))).toEqual({
      kind: 'invalid',
      description: 'must be UTF-8 text',
    });
    expect(parseBody(utf8('[1,'))).toEqual({ kind: 'invalid', description: 'must be valid JSON' });
    expect(parseBody(utf8('[1, {"a": "é"}]'))).toEqual({ kind: 'json', value: [1, { a: 'é' }] });
  });

  it('never echoes the body in its description', () => {
    const secret = '{"password": "hunter2"';
    const parsed = parseBody(utf8(secret));
    expect(JSON.stringify(parsed)).not.toContain('hunter2');
  });
});

describe('mediaTypeProblem', () => {
  it.each([
    ['application/json', undefined, null],
    ['APPLICATION/JSON; charset=UTF-8', undefined, null],
    ['application/json;charset="utf-8"', 'identity', null],
    [undefined, undefined, 'Content-Type must be application/json'],
    ['text/json', undefined, 'Content-Type must be application/json'],
    ['application/json-patch+json', undefined, 'Content-Type must be application/json'],
    ['application/json; charset=iso-8859-1', undefined, 'the charset of a JSON body must be utf-8 (RFC 8259 §8.1)'],
    ['application/json', 'gzip', 'Content-Encoding is not supported; send the JSON uncompressed'],
  ])('%s (encoding %s) -> %s', (type, encoding, expected) => {
    expect(mediaTypeProblem(type, encoding)).toBe(expected);
  });
});

describe('checkBody', () => {
  it('lists every problem of every message with body[i] paths', () => {
    const result = checkBody({ kind: 'json', value: [{ ...valid('a')[0], id: 'x' }, { title: 1 }] }, true);
    expect(result.ok).toBe(false);
    const fields = result.ok ? [] : result.violations.map((v) => v.field);
    expect(fields).toContain('body[0].id');
    expect(fields).toEqual(expect.arrayContaining(['body[1].title', 'body[1].externalCustomerId', 'body[1].id']));
  });

  it('in strict mode, wants each contact newest first and each of its ids once', () => {
    const [a, b] = valid('c-1', 2);
    const [other] = valid('c-2', 1);
    const older = { ...a!, id: '6f1c1f0e-8a2b-4c3d-9e4f-5a6b7c8d9eaa', createdDate: a!.createdDate - 1 };
    // In order: newest first, ties by id ascending; another contact's messages interleaved do not count.
    expect(checkBody({ kind: 'json', value: [a, other, b, older] }, true).ok).toBe(true);
    expect(checkBody({ kind: 'json', value: [older, a, b, a] }, true)).toEqual({
      ok: false,
      violations: [
        { field: 'body[1]', description: expect.stringContaining('is newer than body[0] of the same contact') },
        { field: 'body[3].id', description: expect.stringContaining('ties by id ascending') },
        { field: 'body[3].id', description: 'repeats body[1].id' },
      ],
    });
    // A tie (same createdDate) with the larger id first is out of order too.
    expect(checkBody({ kind: 'json', value: [b, a, older] }, true)).toEqual({
      ok: false,
      violations: [{ field: 'body[1].id', description: expect.stringContaining('ties by id ascending') }],
    });
    // Not strict: the list is taken as it comes.
    expect(checkBody({ kind: 'json', value: [older, a, b, a] }, false).ok).toBe(true);
  });

  it('keeps unknown fields without strict, still checking the known ones', () => {
    const extra = [{ ...valid('a')[0], extra: 1 }];
    expect(checkBody({ kind: 'json', value: extra }, true).ok).toBe(false);
    expect(checkBody({ kind: 'json', value: extra }, false)).toEqual({ ok: true, messages: extra });
    expect(checkBody({ kind: 'json', value: {} }, false)).toEqual({
      ok: false,
      violations: [{ field: 'body', description: 'must be an array' }],
    });
  });
});

describe('contactsOf', () => {
  it('finds distinct string ids of a list, valid or not', () => {
    expect(
      contactsOf({
        kind: 'json',
        value: [
          { externalCustomerId: 'a' },
          { externalCustomerId: 'a' },
          { externalCustomerId: 3 },
          null,
          'b',
          { externalCustomerId: 'b' },
        ],
      }),
    ).toEqual(['a', 'b']);
    expect(contactsOf({ kind: 'json', value: { externalCustomerId: 'a' } })).toEqual([]);
    expect(contactsOf({ kind: 'empty' })).toEqual([]);
  });
});

describe('decide', () => {
  it('answers in the order 405, 415, 401 (Basic), 401 (signature), 413, 400, 429, 200', () => {
    const everythingWrong = req({
      method: 'PUT',
      contentType: 'text/plain',
      credentials: 'wrong',
      signature: { result: 'wrong', secretIndex: null, message: 'no v1 signature verifies' },
      body: { kind: 'invalid', description: 'must be valid JSON' },
    });
    expect(decide(everythingWrong, settings).status).toBe(405);
    expect(decide({ ...everythingWrong, method: 'POST' }, settings).status).toBe(415);
    const basic = decide({ ...everythingWrong, method: 'POST', contentType: 'application/json' }, settings);
    expect([basic.status, basic.branch]).toEqual([401, 'unauthorized']);
    const signature = decide(
      { ...everythingWrong, method: 'POST', contentType: 'application/json', credentials: 'valid' },
      settings,
    );
    expect([signature.status, signature.branch]).toEqual([401, 'invalid_signature']);
    // A body too large to verify: its signature is `unchecked`, and the 413 answers.
    const unchecked = { result: 'unchecked', secretIndex: null, message: null } as const;
    expect(decide(req({ signature: unchecked, body: { kind: 'too_large', limitBytes: 10 } }), settings).status).toBe(
      413,
    );
    const tooLarge = req({ body: { kind: 'too_large', limitBytes: 10 } });
    expect(decide(tooLarge, settings).status).toBe(413);
    expect(decide(req({ json: [...valid('a', 3), { id: 1 }] }), settings).status).toBe(400);
    expect(decide(req({ json: valid('a', 3) }), settings).status).toBe(429);
    expect(decide(req({ json: valid('a', 2) }), settings)).toEqual({
      branch: 'accepted',
      status: 200,
      headers: {},
      body: { accepted: 2, contacts: 1 },
    });
  });

  it('401 says whether the credentials were missing or wrong, and announces Basic', () => {
    const missing = decide(req({ credentials: 'missing' }), settings);
    expect(missing.headers).toEqual({ 'www-authenticate': 'Basic realm="r", charset="UTF-8"' });
    expect(missing.body).toMatchObject({ message: 'Basic credentials are required' });
    expect(decide(req({ credentials: 'wrong' }), settings).body).toMatchObject({
      message: 'Basic credentials are wrong',
    });
    expect(decide(req({ credentials: 'valid' }), settings).status).toBe(200);
  });

  it('401 names what failed of the signature, without WWW-Authenticate; a valid or unchecked one passes', () => {
    for (const result of ['missing', 'malformed', 'stale', 'wrong'] as const) {
      const answer = decide(req({ signature: { result, secretIndex: null, message: `why ${result}` } }), settings);
      expect(answer).toEqual({
        branch: 'invalid_signature',
        status: 401,
        headers: {},
        body: { error: 'invalid_signature', signature: result, message: `why ${result}` },
      });
    }
    for (const result of ['not_required', 'valid', 'unchecked'] as const) {
      const signature = { result, secretIndex: result === 'valid' ? 1 : null, message: null };
      expect(decide(req({ signature }), settings).status, result).toBe(200);
    }
  });

  it('429 names each contact over the limit and sets Retry-After', () => {
    const answer = decide(req({ json: [...valid('a', 3), ...valid('b', 1), ...valid('c', 4)] }), {
      ...settings,
      retryAfterSeconds: 30,
    });
    expect(answer.headers).toEqual({ 'retry-after': '30' });
    expect(answer.body).toMatchObject({
      limit: 2,
      contacts: [
        { externalCustomerId: 'a', count: 3 },
        { externalCustomerId: 'c', count: 4 },
      ],
    });
  });
});
