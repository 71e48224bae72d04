/**
 * Every named preset (one per row of the seed's status table, SPEC §5) over real HTTP.
 */
import { describe, expect, it } from 'vitest';
import { SCENARIO_NAMES, type ScenarioName } from '../src/index.js';
import { message, post, startReceiver } from './helpers.js';

const body = () => [message('c-1')];

describe('presets (--scenario)', () => {
  it('ok: the contract answers', async () => {
    const receiver = await startReceiver({ scenario: 'ok' });
    expect((await post(receiver, { body: body() })).status).toBe(200);
    expect((await post(receiver, { body: 'x' })).status).toBe(400);
  });

  const always: [ScenarioName, number][] = [
    ['unauthorized', 401],
    ['rate-limited', 429],
    ['bad-request', 400],
    ['server-error', 500],
    ['bad-gateway', 502],
    ['unavailable', 503],
  ];
  it.each(always)('%s: %i on every request, valid or not', async (scenario, status) => {
    const receiver = await startReceiver({ scenario, retryAfterSeconds: 4 });
    for (let i = 0; i < 3; i++) {
      const answer = await post(receiver, { body: body() });
      expect(answer.status).toBe(status);
      if (status === 401) expect(answer.headers['www-authenticate']).toMatch(/^Basic /);
      if (status === 429) expect(answer.headers['retry-after']).toBe('4');
      if (status === 400) {
        expect(answer.json).toMatchObject({ error: 'invalid_payload', violations: [{ field: 'body' }] });
      }
    }
    expect(receiver.records.list().every((r) => r.answer.ruleId === `scenario:${scenario}`)).toBe(true);
  });

  it('flaky: 503 twice for each delivery, then 200', async () => {
    const receiver = await startReceiver({ scenario: 'flaky' });
    const seen: number[] = [];
    for (const deliveryId of ['d-1', 'd-1', 'd-1', 'd-2', 'd-2', 'd-2']) {
      seen.push((await post(receiver, { deliveryId, body: body() })).status);
    }
    expect(seen).toEqual([503, 503, 200, 503, 503, 200]);
  });

  it('timeout: never answers; the client gives up', async () => {
    const receiver = await startReceiver({ scenario: 'timeout' });
    await expect(post(receiver, { body: body(), headersTimeout: 100 })).rejects.toMatchObject({
      code: 'UND_ERR_HEADERS_TIMEOUT',
    });
    expect((await receiver.records.waitFor(() => true)).answer.outcome).toBe('hung');
  });

  it('reset: the connection is dropped without an answer', async () => {
    const receiver = await startReceiver({ scenario: 'reset' });
    await expect(post(receiver, { body: body() })).rejects.toMatchObject({
      code: expect.stringMatching(/UND_ERR_SOCKET|ECONNRESET/),
    });
    expect((await receiver.records.waitFor(() => true)).answer.outcome).toBe('dropped');
  });

  it('slow: waits slowDelayMs, then the contract answer', async () => {
    const receiver = await startReceiver({ scenario: 'slow', slowDelayMs: 120 });
    const started = performance.now();
    expect((await post(receiver, { body: body() })).status).toBe(200);
    expect(performance.now() - started).toBeGreaterThanOrEqual(110);
    expect((await post(receiver, { body: 'x' })).status).toBe(400);
  });

  it('covers every preset name', () => {
    const tested = ['ok', ...always.map(([name]) => name), 'flaky', 'timeout', 'reset', 'slow'];
    expect([...tested].sort()).toEqual([...SCENARIO_NAMES].sort());
  });

  it('rejects an unknown scenario', async () => {
    await expect(startReceiver({ scenario: 'meltdown' as ScenarioName })).rejects.toMatchObject({
      code: 'invalid_options',
      violations: [{ field: 'scenario', description: expect.stringContaining('must be one of ok, unauthorized') }],
    });
  });
});
