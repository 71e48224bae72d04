/**
 * Standard Webhooks signatures over real HTTP: requests signed by the sender's own code (core's
 * `buildRequestHeaders`), checked by the receiver's independent verifier; the 401 branch, its place in the
 * contract's order, what is recorded, and that a secret shows nowhere.
 */
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { basicAuthorization } from '@app-inbox/core';
import { createMockReceiver, type MockReceiver } from '../src/index.js';
import { message, messages, newSigningSecret, post, signedHeaders, startReceiver, type Answer } from './helpers.js';

const now = () => Math.floor(Date.now() / 1000);

/** POSTs a valid one-message list signed with `secret` (and `options`), optionally with other headers on top. */
async function postSigned(
  receiver: MockReceiver,
  secret: string,
  options: Parameters<typeof signedHeaders>[2] & { headers?: Record<string, string>; body?: string } = {},
): Promise<Answer> {
  const { headers, body = JSON.stringify([message('c-1')]), ...signing } = options;
  const signed = await signedHeaders(body, secret, signing);
  return post(receiver, { body, headers: { ...signed, ...headers } });
}

describe('signature checks (signingSecrets)', () => {
  it('accepts a request the sender signed with the secret, and records it valid with the secret index', async () => {
    const secret = newSigningSecret();
    const receiver = await startReceiver({ signingSecrets: [secret] });
    const answer = await postSigned(receiver, secret, { deliveryId: 'signed-1' });
    expect(answer.status).toBe(200);
    expect(receiver.records.list()[0]).toMatchObject({
      deliveryId: 'signed-1',
      signature: 'valid',
      signatureSecretIndex: 0,
      answer: { status: 200, branch: 'accepted' },
    });
  });

  it('401 naming what failed: missing headers, a wrong secret, a changed body, a stale or malformed timestamp', async () => {
    const secret = newSigningSecret();
    const receiver = await startReceiver({ signingSecrets: [secret] });
    const body = JSON.stringify([message('c-1')]);
    const signed = await signedHeaders(body, secret);

    const unsigned = await post(receiver, { body });
    expect(unsigned.status).toBe(401);
    expect(unsigned.headers['www-authenticate']).toBeUndefined();
    expect(unsigned.json).toEqual({
      error: 'invalid_signature',
      signature: 'missing',
      message: 'webhook-timestamp, webhook-signature are required (Standard Webhooks)',
    });

    const wrongSecret = await postSigned(receiver, newSigningSecret());
    expect(wrongSecret.json).toEqual({
      error: 'invalid_signature',
      signature: 'wrong',
      message: 'no v1 signature of webhook-signature verifies with the configured secret',
    });
    // The signed bytes are the body exactly as sent: one more space breaks it.
    const changed = await post(receiver, { body: `${body} `, headers: signed });
    expect(changed.json).toMatchObject({ signature: 'wrong' });
    const otherId = await post(receiver, { body, headers: { ...signed, 'webhook-id': 'another-id' } });
    expect(otherId.json).toMatchObject({ signature: 'wrong' });

    const old = await postSigned(receiver, secret, { timestampSeconds: now() - 400 });
    expect(old.status).toBe(401);
    expect(old.json).toMatchObject({
      signature: 'stale',
      message: expect.stringContaining("behind the receiver's clock"),
    });
    const future = await postSigned(receiver, secret, { timestampSeconds: now() + 400 });
    expect(future.json).toMatchObject({ signature: 'stale', message: expect.stringContaining('ahead of') });
    // Within the default 300 s, either way.
    expect((await postSigned(receiver, secret, { timestampSeconds: now() - 200 })).status).toBe(200);
    expect((await postSigned(receiver, secret, { timestampSeconds: now() + 200 })).status).toBe(200);

    const malformed = await post(receiver, { body, headers: { ...signed, 'webhook-timestamp': '12.5' } });
    expect(malformed.json).toMatchObject({ signature: 'malformed' });

    expect(receiver.records.list().map((r) => [r.answer.status, r.answer.branch, r.signature])).toEqual([
      [401, 'invalid_signature', 'missing'],
      [401, 'invalid_signature', 'wrong'],
      [401, 'invalid_signature', 'wrong'],
      [401, 'invalid_signature', 'wrong'],
      [401, 'invalid_signature', 'stale'],
      [401, 'invalid_signature', 'stale'],
      [200, 'accepted', 'valid'],
      [200, 'accepted', 'valid'],
      [401, 'invalid_signature', 'malformed'],
    ]);
  });

  it('signatureToleranceSeconds narrows the window', async () => {
    const secret = newSigningSecret();
    const receiver = await startReceiver({ signingSecrets: [secret], signatureToleranceSeconds: 10 });
    expect((await postSigned(receiver, secret, { timestampSeconds: now() - 60 })).json).toMatchObject({
      signature: 'stale',
      message: expect.stringContaining('at most 10 s are tolerated'),
    });
    expect((await postSigned(receiver, secret)).status).toBe(200);
  });

  it('during a rotation: two signatures in the header, a receiver that knows either secret accepts', async () => {
    const [next, previous] = [newSigningSecret(), newSigningSecret()];
    const knowsNew = await startReceiver({ signingSecrets: [next] });
    const knowsOld = await startReceiver({ signingSecrets: [previous] });
    const knowsBoth = await startReceiver({ signingSecrets: [newSigningSecret(), previous, next] });
    const knowsNeither = await startReceiver({ signingSecrets: [newSigningSecret()] });
    for (const receiver of [knowsNew, knowsOld, knowsBoth, knowsNeither]) {
      await postSigned(receiver, next, { previousSecret: previous });
    }
    const seen = (receiver: MockReceiver) => {
      const [r] = receiver.records.list();
      return [r?.answer.status, r?.signature, r?.signatureSecretIndex];
    };
    expect(seen(knowsNew)).toEqual([200, 'valid', 0]);
    expect(seen(knowsOld)).toEqual([200, 'valid', 0]);
    // The first configured secret that verifies.
    expect(seen(knowsBoth)).toEqual([200, 'valid', 1]);
    expect(seen(knowsNeither)).toEqual([401, 'wrong', null]);
    // A receiver configured for a rotation accepts a sender that signs with either secret alone.
    await postSigned(knowsBoth, next);
    expect(knowsBoth.records.list()[1]).toMatchObject({ signature: 'valid', signatureSecretIndex: 2 });
  });

  it('webhook-signature sent as two header lines: the signatures of both are candidates', async () => {
    const [next, previous] = [newSigningSecret(), newSigningSecret()];
    // It knows the new secret, whose signature comes first: the one Node's ", " join would leave a comma after.
    const receiver = await startReceiver({ signingSecrets: [next] });
    const body = JSON.stringify([message('c-1')]);
    const signed = await signedHeaders(body, next, { previousSecret: previous });
    // The rotation's two signatures, each on a line of its own.
    const [first, second] = signed['webhook-signature']!.split(' ');
    const res = await request(`${receiver.url}/webhook`, {
      method: 'POST',
      headers: { ...signed, 'content-type': 'application/json', 'webhook-signature': [first!, second!] },
      body,
    });
    await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(receiver.records.list()[0]).toMatchObject({ signature: 'valid', signatureSecretIndex: 0 });
  });

  it('comes right after Basic auth: 405, 415 and a Basic 401 first; 413, 400 and 429 after', async () => {
    const secret = newSigningSecret();
    const auth = { username: 'shop', password: 'pw-123' };
    const authorization = basicAuthorization(auth.username, auth.password);
    const receiver = await startReceiver({
      ...auth,
      signingSecrets: [secret],
      maxMessagesPerContact: 1,
      maxBodyBytes: 4096,
    });
    const unsignedBad = '[{"nope": 1}]';
    expect((await post(receiver, { method: 'PUT', body: unsignedBad, auth })).status).toBe(405);
    expect((await post(receiver, { contentType: 'text/plain', body: unsignedBad, auth })).status).toBe(415);
    const basic = await post(receiver, { body: unsignedBad });
    expect([basic.status, basic.json]).toMatchObject([401, { error: 'unauthorized' }]);
    const signature = await post(receiver, { body: unsignedBad, auth });
    expect([signature.status, signature.json]).toMatchObject([401, { error: 'invalid_signature' }]);
    // Signed: the body's own checks answer.
    expect((await postSigned(receiver, secret, { body: unsignedBad, headers: { authorization } })).status).toBe(400);
    const two = JSON.stringify(messages('c-1', 2));
    expect((await postSigned(receiver, secret, { body: two, headers: { authorization } })).status).toBe(429);
    // Too large to read whole: no HMAC can be computed, and the 413 answers; the record says `unchecked`.
    const large = JSON.stringify([message('c-1', { content: 'x'.repeat(5000) })]);
    expect((await postSigned(receiver, secret, { body: large, headers: { authorization } })).status).toBe(413);
    expect(receiver.records.list().map((r) => r.signature)).toEqual([
      'missing',
      'missing',
      'missing',
      'missing',
      'valid',
      'valid',
      'unchecked',
    ]);
  });

  it('a rule still overrides the answer; the record keeps what the signature check said', async () => {
    const receiver = await startReceiver({
      signingSecrets: [newSigningSecret()],
      rules: [{ match: { path: '/forced' }, answers: [{ status: 202 }], repeat: true }],
    });
    const answer = await post(receiver, { path: '/forced', body: [message('c-1')] });
    expect(answer.status).toBe(202);
    expect(receiver.records.list()[0]).toMatchObject({
      signature: 'missing',
      answer: { status: 202, branch: 'invalid_signature', ruleId: 'rule-1' },
    });
  });

  it('without signingSecrets nothing is checked and every record says not_required', async () => {
    const receiver = await startReceiver();
    expect((await post(receiver, { body: [message('c-1')] })).status).toBe(200);
    expect(receiver.records.list()[0]).toMatchObject({ signature: 'not_required', signatureSecretIndex: null });
  });

  it('GET /__received filters by signature, and refuses an unknown result', async () => {
    const secret = newSigningSecret();
    const receiver = await startReceiver({ signingSecrets: [secret] });
    await postSigned(receiver, secret, { deliveryId: 'good' });
    await post(receiver, { deliveryId: 'bad', body: [message('c-1')] });
    const res = await request(`${receiver.url}/__received?signature=missing`);
    const json = (await res.body.json()) as { records: { deliveryId: string }[] };
    expect(json.records.map((r) => r.deliveryId)).toEqual(['bad']);
    const bad = await request(`${receiver.url}/__received?signature=forged`);
    expect(bad.statusCode).toBe(400);
    expect(await bad.body.json()).toMatchObject({
      violations: [{ field: 'signature', description: expect.stringContaining('must be one of not_required, valid') }],
    });
  });

  it('a secret appears nowhere: answers, /__received, /__control, /__events, the page, the errors', async () => {
    const [secret, other] = [newSigningSecret(), newSigningSecret()];
    const receiver = await startReceiver({ signingSecrets: [secret, other] });
    const seen: string[] = [];
    // The live stream first, so that it carries the three records.
    const events = await request(`${receiver.url}/__events`);
    let stream = '';
    events.body.on('data', (chunk: Buffer) => (stream += chunk.toString()));
    seen.push((await postSigned(receiver, secret)).text);
    seen.push((await postSigned(receiver, newSigningSecret())).text);
    seen.push((await post(receiver, { body: [message('c-1')] })).text);
    for (const path of ['/__received', '/__received/1', '/__control', '/__stats', '/', '/__nothing']) {
      seen.push(await (await request(`${receiver.url}${path}`)).body.text());
    }
    await expect.poll(() => stream.split('event: record').length - 1).toBe(3);
    events.body.destroy();
    seen.push(stream);
    try {
      await createMockReceiver({ signingSecrets: [secret, `${secret}!`] });
    } catch (error) {
      seen.push(String(error), JSON.stringify(error));
    }
    const text = seen.join('\n');
    expect(text).toContain('invalid_signature');
    expect(text).toContain('signingSecrets[1]');
    for (const s of [secret, other]) {
      expect(text).not.toContain(s.slice('whsec_'.length));
      expect(text).not.toContain(Buffer.from(s.slice('whsec_'.length), 'base64').toString('hex'));
    }
  });
});
