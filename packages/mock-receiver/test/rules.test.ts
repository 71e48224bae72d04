/**
 * Scripted answers over real HTTP: sequences, repeats, delays, drops, hangs, drips, redirects, matching
 * by path and contact, and the `/__control` endpoint.
 */
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { getJson, message, post, sendJson, startReceiver } from './helpers.js';

const valid = () => [message('c-1')];

async function statuses(receiver: { url: string }, count: number, path = '/webhook'): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push((await post(receiver, { path, body: valid() })).status);
  return out;
}

describe('scripted answers', () => {
  it('"503 twice then 200": forced answers, then the contract again', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ status: 503, times: 2 }, { status: 200 }] }] });
    expect(await statuses(receiver, 4)).toEqual([503, 503, 200, 200]);
    const records = receiver.records.list();
    expect(records.map((r) => r.answer.ruleId)).toEqual(['rule-1', 'rule-1', 'rule-1', null]);
    expect(records[0]?.answer.branch).toBe('accepted');
  });

  it("a request that is not a POST gets the contract's 405 and uses up no scripted answer", async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ status: 503, times: 2 }] }] });
    for (const method of ['GET', 'HEAD', 'PUT'] as const) {
      const res = await request(`${receiver.url}/webhook`, { method });
      await res.body.dump();
      expect({ method, status: res.statusCode }).toEqual({ method, status: 405 });
    }
    expect(await statuses(receiver, 3)).toEqual([503, 503, 200]);
  });

  it('"always 400" with repeat, overriding even a valid list', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ status: 400 }], repeat: true }] });
    expect(await statuses(receiver, 3)).toEqual([400, 400, 400]);
  });

  it('"500, 502, 503 in turn"', async () => {
    const receiver = await startReceiver({
      rules: [{ answers: [{ status: 500 }, { status: 502 }, { status: 503 }], repeat: true }],
    });
    expect(await statuses(receiver, 5)).toEqual([500, 502, 503, 500, 502]);
  });

  it('a forced 401 and 429 carry WWW-Authenticate and Retry-After; headers and body can be set', async () => {
    const receiver = await startReceiver({
      retryAfterSeconds: 3,
      rules: [
        {
          answers: [
            { status: 401 },
            { status: 429 },
            { status: 503, retryAfterSeconds: 9, headers: { 'X-Trace': 'abc' }, body: { reason: 'maintenance' } },
          ],
        },
      ],
    });
    const unauthorized = await post(receiver, { body: valid() });
    expect(unauthorized.headers['www-authenticate']).toMatch(/^Basic realm=/);
    const limited = await post(receiver, { body: valid() });
    expect(limited.headers['retry-after']).toBe('3');
    const unavailable = await post(receiver, { body: valid() });
    expect(unavailable.status).toBe(503);
    expect(unavailable.headers['retry-after']).toBe('9');
    expect(unavailable.headers['x-trace']).toBe('abc');
    expect(unavailable.json).toEqual({ reason: 'maintenance' });
  });

  it('"delay N ms then answer": the contract answer after the delay', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ delayMs: 150 }] }] });
    const started = performance.now();
    const answer = await post(receiver, { body: valid() });
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
    expect(answer.status).toBe(200);
    expect(receiver.records.list()[0]?.durationMs).toBeGreaterThanOrEqual(140);
  });

  it('"drop the connection": the client sees a socket error and the receiver keeps serving', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ action: 'drop' }] }] });
    await expect(post(receiver, { body: valid() })).rejects.toMatchObject({
      code: expect.stringMatching(/UND_ERR_SOCKET|ECONNRESET/),
    });
    expect((await post(receiver, { body: valid() })).status).toBe(200);
    const [dropped] = receiver.records.list();
    expect(dropped?.answer).toMatchObject({ status: null, outcome: 'dropped' });
  });

  it('"hang until the client gives up": recorded as hung when the client times out', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ action: 'hang' }] }] });
    await expect(post(receiver, { body: valid(), headersTimeout: 200 })).rejects.toMatchObject({
      code: 'UND_ERR_HEADERS_TIMEOUT',
    });
    const record = await receiver.records.waitFor((r) => r.answer.outcome === 'hung');
    expect(record.answer.status).toBeNull();
    expect(record.durationMs).toBeGreaterThanOrEqual(150);
  });

  it('"slow body drip": the head at once, the body in pieces', async () => {
    const receiver = await startReceiver({
      rules: [{ answers: [{ status: 200, drip: { chunks: 4, intervalMs: 100 } }] }],
    });
    const started = performance.now();
    const res = await request(`${receiver.url}/webhook`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(valid()),
    });
    const headAfter = performance.now() - started;
    const chunks: Buffer[] = [];
    for await (const chunk of res.body) chunks.push(chunk as Buffer);
    const pieces = chunks.map((c) => c.length);
    const total = performance.now() - started;
    expect(res.statusCode).toBe(200);
    // The head came before the body, which took the three pauses between four pieces.
    expect(total - headAfter).toBeGreaterThanOrEqual(280);
    expect(pieces.length).toBeGreaterThanOrEqual(2);
    expect(JSON.parse(Buffer.concat(chunks).toString('utf8'))).toEqual({ message: 'answer forced by rule rule-1' });
    expect((await receiver.records.waitFor(() => true)).answer.outcome).toBe('answered');
  });

  it('a client that gives up during a drip is recorded as aborted', async () => {
    const receiver = await startReceiver({
      rules: [{ answers: [{ status: 200, drip: { chunks: 10, intervalMs: 2000 } }] }],
    });
    const res = await request(`${receiver.url}/webhook`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(valid()),
      bodyTimeout: 100,
    });
    await expect(res.body.text()).rejects.toMatchObject({ code: 'UND_ERR_BODY_TIMEOUT' });
    const record = await receiver.records.waitFor(() => true);
    expect(record.answer).toMatchObject({ status: 200, outcome: 'aborted' });
  });

  it('"redirect 3xx with Location"', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ status: 307, location: '/moved' }] }] });
    const answer = await post(receiver, { body: valid() });
    expect(answer.status).toBe(307);
    expect(answer.headers.location).toBe('/moved');
  });

  it('a forced 204 has neither a body nor a Content-Length (RFC 9110 §8.6); a 304 no body', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ status: 204 }, { status: 304 }] }] });
    const noContent = await post(receiver, { body: valid() });
    expect(noContent).toMatchObject({ status: 204, text: '' });
    expect(noContent.headers).not.toHaveProperty('content-length');
    expect(noContent.headers).not.toHaveProperty('content-type');
    const notModified = await post(receiver, { body: valid() });
    expect(notModified).toMatchObject({ status: 304, text: '' });
    expect(receiver.records.list().map((r) => r.answer.status)).toEqual([204, 304]);
  });

  it('matches by path: other paths get the contract answer', async () => {
    const receiver = await startReceiver({
      rules: [{ match: { path: '/a' }, answers: [{ status: 502 }], repeat: true }],
    });
    expect(await statuses(receiver, 2, '/a')).toEqual([502, 502]);
    expect(await statuses(receiver, 1, '/b')).toEqual([200]);
  });

  it('matches by externalCustomerId; the most specific rule wins over a global one', async () => {
    const receiver = await startReceiver({
      rules: [
        { id: 'everyone', answers: [{ status: 500 }], repeat: true },
        { id: 'vip', match: { externalCustomerId: 'vip' }, answers: [{ status: 429 }], repeat: true },
      ],
    });
    expect((await post(receiver, { body: [message('vip'), message('other')] })).status).toBe(429);
    expect((await post(receiver, { body: [message('other')] })).status).toBe(500);
  });

  it('per delivery: every delivery id sees the whole sequence', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ status: 503, times: 2 }], per: 'delivery' }] });
    const a: number[] = [];
    const b: number[] = [];
    for (let i = 0; i < 3; i++) {
      a.push((await post(receiver, { deliveryId: 'delivery-a', body: valid() })).status);
      b.push((await post(receiver, { deliveryId: 'delivery-b', body: valid() })).status);
    }
    expect(a).toEqual([503, 503, 200]);
    expect(b).toEqual([503, 503, 200]);
  });

  it('per contact: each contact has its own counter', async () => {
    const receiver = await startReceiver({ rules: [{ answers: [{ status: 500 }], per: 'contact' }] });
    expect((await post(receiver, { body: [message('x')] })).status).toBe(500);
    expect((await post(receiver, { body: [message('y')] })).status).toBe(500);
    expect((await post(receiver, { body: [message('x')] })).status).toBe(200);
  });

  it('rejects a bad rule given as an option, naming every field', () => {
    return expect(
      startReceiver({ rules: [{ answers: [{ status: 99, action: 'drop', location: '' }] }, { answers: [] }] as never }),
    ).rejects.toMatchObject({
      code: 'invalid_options',
      violations: expect.arrayContaining([
        { field: 'rules[0].answers[0].status', description: 'must be an integer from 200 to 599' },
        { field: 'rules[0].answers[0].location', description: 'must not be empty' },
        { field: 'rules[1].answers', description: 'must list at least one answer' },
      ]),
    });
  });
});

describe('/__control', () => {
  it('GET shows the rules and how far they got; POST replaces; DELETE clears', async () => {
    const receiver = await startReceiver();
    const set = await sendJson(receiver, 'POST', '/__control', {
      rules: [{ id: 'outage', answers: [{ status: 503, times: 2 }] }],
    });
    expect(set.status).toBe(200);
    expect(await statuses(receiver, 1)).toEqual([503]);

    const state = await getJson(receiver, '/__control');
    expect(state.json).toMatchObject({
      scenario: null,
      rules: [{ id: 'outage', used: 1, remaining: 1, spent: false }],
      scenarios: expect.objectContaining({ flaky: expect.any(String) }),
    });

    const cleared = await sendJson(receiver, 'DELETE', '/__control');
    expect(cleared.json).toEqual({ scenario: null, rules: [] });
    expect(await statuses(receiver, 1)).toEqual([200]);
  });

  it('POST with append adds after the current rules; a scenario can be set by name', async () => {
    const receiver = await startReceiver();
    await sendJson(receiver, 'POST', '/__control', { scenario: 'server-error' });
    await sendJson(receiver, 'POST', '/__control', {
      append: true,
      rules: [{ match: { path: '/special' }, answers: [{ status: 202 }], repeat: true }],
    });
    const state = receiver.control.state();
    expect(state.scenario).toBe('server-error');
    expect(state.rules.map((r) => r.id)).toEqual(['rule-1', 'scenario:server-error']);
    expect(await statuses(receiver, 1)).toEqual([500]);
    expect(await statuses(receiver, 1, '/special')).toEqual([202]);
  });

  it('POST with a bad body answers 400 naming every field and changes nothing', async () => {
    const receiver = await startReceiver({ rules: [{ id: 'keep', answers: [{ status: 500 }], repeat: true }] });
    const bad = await sendJson(receiver, 'POST', '/__control', {
      scenario: 'nope',
      rules: [{ answers: [{ status: 'x', drip: { chunks: 0, intervalMs: 1 } }] }],
      extra: 1,
    });
    expect(bad.status).toBe(400);
    const fields = (bad.json as { violations: { field: string }[] }).violations.map((v) => v.field);
    // Every field: the rules' too, not only the top-level ones.
    expect(fields).toEqual(
      expect.arrayContaining(['scenario', 'extra', 'rules[0].answers[0].status', 'rules[0].answers[0].drip.chunks']),
    );
    for (const notAnObject of [[], 1, 'x', null]) {
      const wrong = await sendJson(receiver, 'POST', '/__control', JSON.stringify(notAnObject));
      expect({ notAnObject, status: wrong.status, json: wrong.json }).toMatchObject({
        notAnObject,
        status: 400,
        json: { violations: [{ field: 'body', description: 'must be an object' }] },
      });
    }
    const invalidJson = await sendJson(receiver, 'POST', '/__control', '{oops');
    expect(invalidJson).toMatchObject({
      status: 400,
      json: { violations: [{ field: 'body', description: 'must be valid JSON' }] },
    });
    const badRules = await sendJson(receiver, 'POST', '/__control', {
      rules: [{ answers: [{ status: 'x', drip: { chunks: 0, intervalMs: 1 } }] }],
    });
    expect((badRules.json as { violations: { field: string }[] }).violations.map((v) => v.field)).toEqual([
      'rules[0].answers[0].status',
      'rules[0].answers[0].drip.chunks',
    ]);
    expect(receiver.control.state().rules.map((r) => r.id)).toEqual(['keep']);
  });

  it('POST needs Content-Type application/json: a cross-site form cannot change the rules (415, nothing changes)', async () => {
    const receiver = await startReceiver({ rules: [{ id: 'keep', answers: [{ status: 500 }], repeat: true }] });
    const before = receiver.control.state();
    // What a form on any web page open in QA's browser can send to 127.0.0.1 without a CORS preflight.
    for (const contentType of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
      const res = await request(`${receiver.url}/__control`, {
        method: 'POST',
        headers: { 'content-type': contentType },
        body: JSON.stringify({ scenario: 'timeout' }),
      });
      expect({ contentType, status: res.statusCode, json: await res.body.json() }).toMatchObject({
        contentType,
        status: 415,
        json: { error: 'unsupported_media_type', violations: [{ field: 'content-type' }] },
      });
    }
    expect(receiver.control.state()).toEqual(before);
    // With the header (as every example sends it) it still works.
    expect((await sendJson(receiver, 'POST', '/__control', { scenario: 'timeout' })).status).toBe(200);
  });

  it('POST names a rule header it cannot send instead of dropping it or calling it a control character', async () => {
    const receiver = await startReceiver();
    // Sent as JSON text: `__proto__` is then an own key, as in any parsed body.
    const bad = await sendJson(
      receiver,
      'POST',
      '/__control',
      '{"rules":[{"answers":[{"status":200,"headers":{"__proto__":"x","X-Price":"5 \u20ac","X-Count":3}}]}]}',
    );
    expect(bad).toMatchObject({
      status: 400,
      json: {
        violations: [
          { field: 'rules[0].answers[0].headers["__proto__"]', description: expect.stringContaining('cannot be used') },
          { field: 'rules[0].answers[0].headers["X-Price"]', description: expect.stringContaining('Latin-1') },
          { field: 'rules[0].answers[0].headers["X-Count"]', description: 'must be a string' },
        ],
      },
    });
    expect(receiver.control.state().rules).toEqual([]);
    const ok = await sendJson(receiver, 'POST', '/__control', {
      rules: [{ answers: [{ status: 200, headers: { 'X-Price': '5 \u00a3' } }] }],
    });
    expect(ok.status).toBe(200);
    expect((await post(receiver, { body: valid() })).headers['x-price']).toBe('5 \u00a3');
  });

  it('POST keeps at most 1000 rules active: more is a 400 naming rules, and changes nothing', async () => {
    // Before: any number was taken, each insertion re-sorting them all: 20,000 rules (380 KB) blocked the receiver,
    // webhooks included, for seconds, and appending kept growing the list every request walks.
    const receiver = await startReceiver();
    const rules = (n: number) => Array.from({ length: n }, () => ({ answers: [{}] }));
    const tooMany = await sendJson(receiver, 'POST', '/__control', { rules: rules(1001) });
    expect(tooMany).toMatchObject({
      status: 400,
      json: { violations: [{ field: 'rules', description: expect.stringContaining('at most 1000 rules') }] },
    });
    expect((await sendJson(receiver, 'POST', '/__control', { scenario: 'flaky', rules: rules(999) })).status).toBe(200);
    const appended = await sendJson(receiver, 'POST', '/__control', { append: true, rules: rules(1) });
    expect(appended).toMatchObject({
      status: 400,
      json: { violations: [{ field: 'rules', description: expect.stringContaining('1000 are active already') }] },
    });
    expect(receiver.control.state().rules).toHaveLength(1000);
  });

  it('the library control API does the same at run time', async () => {
    const receiver = await startReceiver();
    receiver.control.set({ rules: [{ answers: [{ status: 502 }] }] });
    receiver.control.append([{ answers: [{ status: 503 }] }]);
    expect(await statuses(receiver, 3)).toEqual([502, 503, 200]);
    expect(receiver.control.state().rules.every((r) => r.spent)).toBe(true);
    receiver.control.useScenario('unauthorized');
    expect(await statuses(receiver, 1)).toEqual([401]);
    receiver.control.clear();
    expect(await statuses(receiver, 1)).toEqual([200]);
  });

  it('unknown /__ paths are 404, never webhooks', async () => {
    const receiver = await startReceiver();
    const answer = await post(receiver, { path: '/__nope', body: valid() });
    expect(answer.status).toBe(404);
    expect(receiver.records.list()).toEqual([]);
  });

  it.each([
    ['PUT', '/__control', 'GET, HEAD, POST, DELETE'],
    ['POST', '/__received', 'GET, HEAD, DELETE'],
    ['DELETE', '/__received/1', 'GET, HEAD'],
    ['POST', '/__Stats/', 'GET, HEAD'],
    ['DELETE', '/__contacts/c-1', 'GET, HEAD'],
  ] as const)(
    '%s %s: 405 with Allow (the endpoint exists), not a 404 and never a webhook',
    async (method, path, allow) => {
      const receiver = await startReceiver();
      receiver.control.set({ scenario: 'bad-request' });
      const answer = await post(receiver, { method, path, body: valid() });
      expect(answer.status).toBe(405);
      expect(answer.headers.allow).toBe(allow);
      expect(answer.json).toEqual({ error: 'method_not_allowed', message: `${path} takes ${allow}, not ${method}` });
      expect(receiver.records.list()).toEqual([]);
      // Nothing changed: the rules are still there.
      expect(receiver.control.state().rules).toHaveLength(1);
    },
  );
});
