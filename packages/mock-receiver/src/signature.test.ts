import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { signingSecretKey, verifySignature, type SignedRequest } from './signature.js';

/** The published test vector of Standard Webhooks (its reference libraries' tests). */
const VECTOR = {
  secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
  id: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: 1614265330,
  payload: '{"test": 2432232314}',
  signature: 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
} as const;
const OTHER_SECRET = `whsec_${Buffer.alloc(32, 9).toString('base64')}`;

const key = (secret: string) => {
  const k = signingSecretKey(secret);
  if (k === null) throw new Error('bad test secret');
  return k;
};

function request(overrides: Partial<SignedRequest> = {}): SignedRequest {
  return {
    id: VECTOR.id,
    timestamp: String(VECTOR.timestamp),
    signature: VECTOR.signature,
    body: new TextEncoder().encode(VECTOR.payload),
    ...overrides,
  };
}

function settings(secrets: string[] = [VECTOR.secret], nowSeconds: number = VECTOR.timestamp) {
  return { keys: secrets.map(key), toleranceSeconds: 300, nowSeconds };
}

/** A v1 signature of the vector's content made with `secret`. */
function sign(secret: string, content = `${VECTOR.id}.${VECTOR.timestamp}.${VECTOR.payload}`): string {
  return `v1,${createHmac('sha256', key(secret)).update(content).digest('base64')}`;
}

describe('verifySignature', () => {
  it('verifies the Standard Webhooks test vector', () => {
    expect(verifySignature(request(), settings())).toEqual({ result: 'valid', secretIndex: 0, message: null });
  });

  it('accepts a header with two signatures (a rotation) when either verifies, in either order', () => {
    const other = sign(OTHER_SECRET);
    for (const header of [`${other} ${VECTOR.signature}`, `${VECTOR.signature} ${other}`]) {
      expect(verifySignature(request({ signature: header }), settings()).result, header).toBe('valid');
    }
    // Entries of other versions are ignored, not refused (Standard Webhooks).
    expect(verifySignature(request({ signature: `v1a,abc ${VECTOR.signature}` }), settings()).result).toBe('valid');
  });

  it('refuses a wrong signature: another secret, another body, id or timestamp, a changed byte', () => {
    expect(verifySignature(request(), settings([OTHER_SECRET]))).toEqual({
      result: 'wrong',
      secretIndex: null,
      message: 'no v1 signature of webhook-signature verifies with the configured secret',
    });
    const wrong = [
      request({ body: new TextEncoder().encode('{"test": 2432232315}') }),
      request({ id: 'msg_p5jXN8AQM9LWM0D4loKWxJeK' }),
      request({ timestamp: String(VECTOR.timestamp + 1) }),
      request({ signature: VECTOR.signature.replace('g0hM', 'g0hN') }),
      request({ signature: VECTOR.signature.slice(0, -1) }),
      request({ signature: `${VECTOR.signature}=` }),
      request({ signature: `V1,${VECTOR.signature.slice(3)}` }),
      request({ signature: VECTOR.signature.slice(3) }),
    ];
    for (const r of wrong) expect(verifySignature(r, settings()).result, JSON.stringify(r.signature)).toBe('wrong');
    expect(verifySignature(request({ signature: 'v2,abc' }), settings())).toMatchObject({
      result: 'wrong',
      message: 'webhook-signature has no v1 signature',
    });
  });

  it('refuses a timestamp further than the tolerance from the clock, either way', () => {
    const behind = verifySignature(request(), settings(undefined, VECTOR.timestamp + 301));
    expect(behind).toEqual({
      result: 'stale',
      secretIndex: null,
      message: "webhook-timestamp is 301 s behind the receiver's clock; at most 300 s are tolerated",
    });
    expect(verifySignature(request(), settings(undefined, VECTOR.timestamp - 301))).toMatchObject({
      result: 'stale',
      message: expect.stringContaining('301 s ahead of'),
    });
    // Exactly the tolerance is still in.
    expect(verifySignature(request(), settings(undefined, VECTOR.timestamp + 300)).result).toBe('valid');
    expect(verifySignature(request(), settings(undefined, VECTOR.timestamp - 300)).result).toBe('valid');
    expect(
      verifySignature(request(), { ...settings(), toleranceSeconds: 0, nowSeconds: VECTOR.timestamp + 1 }),
    ).toMatchObject({ result: 'stale' });
  });

  it('names the missing headers, before anything else', () => {
    expect(verifySignature(request({ signature: undefined }), settings())).toEqual({
      result: 'missing',
      secretIndex: null,
      message: 'webhook-signature is required (Standard Webhooks)',
    });
    expect(verifySignature(request({ id: '', timestamp: undefined }), settings(undefined, 0))).toMatchObject({
      result: 'missing',
      message: 'webhook-id, webhook-timestamp are required (Standard Webhooks)',
    });
    expect(verifySignature(request({ signature: '  ', body: null }), settings()).result).toBe('missing');
  });

  it('refuses a timestamp that is not integer Unix seconds', () => {
    for (const timestamp of ['1614265330.5', '-1614265330', 'soon', '1e9', '1614265330000000000']) {
      expect(verifySignature(request({ timestamp }), settings()), timestamp).toMatchObject({
        result: 'malformed',
        message: 'webhook-timestamp must be integer Unix seconds',
      });
    }
  });

  it('with several secrets accepts a signature of any, and says which one verified', () => {
    expect(verifySignature(request(), settings([OTHER_SECRET, VECTOR.secret]))).toEqual({
      result: 'valid',
      secretIndex: 1,
      message: null,
    });
    expect(verifySignature(request(), settings([VECTOR.secret, VECTOR.secret])).secretIndex).toBe(0);
    // Sender and receiver both mid-rotation: the receiver knows only the old secret, the header carries both.
    const both = `${sign(OTHER_SECRET)} ${VECTOR.signature}`;
    const third = `whsec_${Buffer.alloc(24, 3).toString('base64')}`;
    expect(verifySignature(request({ signature: both }), settings([third, VECTOR.secret])).secretIndex).toBe(1);
    expect(verifySignature(request({ signature: both }), settings([third])).message).toBe(
      'no v1 signature of webhook-signature verifies with the configured secret',
    );
    expect(verifySignature(request({ signature: both }), settings([third, third])).message).toContain(
      'any configured secret',
    );
  });

  it('checks nothing without secrets, and no HMAC over a body that was not read whole', () => {
    expect(verifySignature(request({ signature: undefined }), null)).toEqual({
      result: 'not_required',
      secretIndex: null,
      message: null,
    });
    expect(verifySignature(request({ body: null }), settings()).result).toBe('unchecked');
    // The header checks do not need the body: they still refuse.
    expect(verifySignature(request({ body: null }), settings(undefined, VECTOR.timestamp + 999)).result).toBe('stale');
  });

  it('never puts a secret or a key into its result', () => {
    const results = [
      verifySignature(request(), settings([OTHER_SECRET])),
      verifySignature(request(), settings([OTHER_SECRET, VECTOR.secret])),
      verifySignature(request(), settings(undefined, 0)),
    ];
    const text = JSON.stringify(results);
    for (const secret of [VECTOR.secret, OTHER_SECRET]) expect(text).not.toContain(secret.slice('whsec_'.length));
  });
});

describe('signingSecretKey', () => {
  it('decodes the base64 of a whsec_ secret', () => {
    expect(signingSecretKey(VECTOR.secret)?.length).toBe(24);
    expect(signingSecretKey(OTHER_SECRET)).toEqual(Buffer.alloc(32, 9));
  });

  it('refuses anything else', () => {
    for (const secret of [
      '',
      'whsec_',
      'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
      'whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
      'whsec_MfKQ9r8G-KYqrTwjUPD8ILPZIo2LaLaSw',
      'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa w',
      'whsec_AB',
      'whsec_A',
      'whsec_====',
    ]) {
      expect(signingSecretKey(secret), secret).toBeNull();
    }
  });
});
