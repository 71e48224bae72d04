import { describe, expect, it } from 'vitest';
import type { AttemptEvent } from './attempt.js';
import {
  REDACTED,
  attemptLogFields,
  censorValue,
  attemptLogLevel,
  createLogger,
  logAttempt,
  LoggerOptionError,
  type LogLevel,
} from './logger.js';

/** A logger writing into memory; `lines()` parses what was written. */
function capture(level: LogLevel = 'trace', extra: { extraRedactPaths?: string[] } = {}) {
  const chunks: string[] = [];
  const logger = createLogger({ level, destination: { write: (s: string) => void chunks.push(s) }, ...extra });
  return {
    logger,
    raw: () => chunks.join(''),
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

const PASSWORD = 'hunter2-pw-7f3a';
const SIGNING = 'whsec_s3cr3t-9b1c';
const BEARER = 'Basic dXNlcjpodW50ZXIy-auth';
const TOKEN = 'tok-5e8d-query';

describe('createLogger redaction', () => {
  it('never writes a password, Authorization header or signing secret, whatever the shape', () => {
    const { logger, raw, lines } = capture();
    const webhook = {
      url: `https://user:${PASSWORD}@hooks.example.com/in/${TOKEN}?token=${TOKEN}`,
      auth: { type: 'basic', username: 'acme', password: PASSWORD },
      signingSecret: SIGNING,
      previousSigningSecret: `${SIGNING}-previous`,
    };
    logger.info({ password: PASSWORD }, 'top level');
    logger.info({ auth: { password: PASSWORD } }, 'auth');
    logger.info({ webhook }, 'nested webhook');
    logger.info({ request: { webhook } }, 'deeper webhook');
    logger.info({ signingSecret: SIGNING, secret: SIGNING, token: TOKEN }, 'flat secrets');
    logger.info(
      { headers: { authorization: BEARER, Authorization: BEARER, 'content-type': 'application/json' } },
      'headers',
    );
    logger.info({ req: { headers: { authorization: BEARER } } }, 'req headers');
    logger.info({ webhooks: [webhook, { ...webhook, signingSecret: `${SIGNING}-2` }] }, 'array');
    logger.child({ webhook }).warn('child bindings');
    logger.child({ component: 'api' }).child({ config: webhook }).error('grandchild');
    const err = Object.assign(new Error('upsert failed'), { config: webhook });
    logger.error({ err }, 'error with a config property');

    const out = raw();
    for (const secret of [PASSWORD, SIGNING, BEARER, TOKEN, `${SIGNING}-2`, `${SIGNING}-previous`]) {
      expect(out).not.toContain(secret);
    }
    expect(out.split(REDACTED).length - 1).toBeGreaterThanOrEqual(20);

    const written = lines();
    expect(written).toHaveLength(11);
    // What is not secret stays readable.
    const nested = written[2] as { webhook: { url: string; auth: { username: string; password: string } } };
    expect(nested.webhook.auth).toEqual({ type: 'basic', username: 'acme', password: REDACTED });
    expect(nested.webhook.url).toBe('https://hooks.example.com');
    const headers = (written[5] as { headers: Record<string, string> }).headers;
    expect(headers['content-type']).toBe('application/json');
    expect(headers.authorization).toBe(REDACTED);
    expect((written[8] as { webhook: { signingSecret: string } }).webhook.signingSecret).toBe(REDACTED);
    expect((written[10] as { err: { message: string } }).err.message).toBe('upsert failed');
  });

  it("censors every value of a header map, a webhook's own API key whatever its name, keeping the names", () => {
    const { logger, raw, lines } = capture();
    const apiKey = 'k_live_4f1d-header';
    const config = { url: 'https://hooks.example.com/in', headers: { 'x-acme-key': apiKey, 'X-Route': 'eu-route-9' } };
    logger.info({ config }, 'webhook config');
    logger.info({ webhook: { config } }, 'nested');
    logger.info({ headers: ['x-acme-key', apiKey] }, 'not a map');
    logger.info(
      { request: { headers: { 'content-type': 'application/json', 'Webhook-Id': 'd-1', 'x-k': apiKey } } },
      'req',
    );
    const out = raw();
    expect(out).not.toContain(apiKey);
    expect(out).not.toContain('eu-route-9');
    const written = lines();
    expect((written[0] as { config: unknown }).config).toEqual({
      url: 'https://hooks.example.com',
      headers: { 'x-acme-key': REDACTED, 'X-Route': REDACTED },
    });
    expect(written[2]).toMatchObject({ headers: REDACTED });
    // The headers known to be harmless stay readable.
    expect((written[3] as { request: unknown }).request).toEqual({
      headers: { 'content-type': 'application/json', 'Webhook-Id': 'd-1', 'x-k': REDACTED },
    });
    // The logged object itself is left as it was.
    expect(config.headers['x-acme-key']).toBe(apiKey);
  });

  it('censors at any depth and in errors nested away from err, without touching the logged objects', () => {
    const { logger, raw } = capture();
    const deep = { a: { b: { c: { d: { e: { auth: { password: PASSWORD } } } } } } };
    const cause = Object.assign(new Error('bad config'), { config: { signingSecret: SIGNING } });
    logger.info({ deep, results: [{ error: cause }], list: [[{ token: TOKEN }]] }, 'deep');
    expect(raw()).not.toContain(PASSWORD);
    expect(raw()).not.toContain(SIGNING);
    expect(raw()).not.toContain(TOKEN);
    expect(raw()).toContain('bad config');
    // The caller's objects are left as they were.
    expect(deep.a.b.c.d.e.auth.password).toBe(PASSWORD);
    expect(cause.config.signingSecret).toBe(SIGNING);
  });

  it("censors a database error's detail, which may echo a row, and keeps what says what went wrong", () => {
    const { logger, raw, lines } = capture();
    const row = `Failing row contains (acct, {"url":"https://h.example/x","auth":{"password":"${PASSWORD}"}})`;
    const err = Object.assign(new Error('new row for relation "webhooks" violates check constraint "c"'), {
      code: '23514',
      detail: row,
      table: 'webhooks',
    });
    logger.error({ err }, 'store call failed');
    expect(raw()).not.toContain(PASSWORD);
    expect(raw()).not.toContain('Failing row');
    expect(lines()[0]?.err).toMatchObject({ code: '23514', table: 'webhooks', detail: REDACTED });
    expect(raw()).toContain('violates check constraint');
  });

  it('censorValue returns the same object when there is nothing to censor', () => {
    const clean = { deliveryId: 'd', nested: { list: [1, 2, { ok: true }] }, at: new Date(0), bytes: Buffer.from('x') };
    expect(censorValue(clean)).toBe(clean);
    const dirty = { nested: { list: [{ password: PASSWORD }] }, keep: clean };
    const censored = censorValue(dirty) as typeof dirty;
    expect(censored).not.toBe(dirty);
    expect(censored.keep).toBe(clean);
    expect(censored.nested.list[0]).toEqual({ password: REDACTED });
    expect(dirty.nested.list[0]?.password).toBe(PASSWORD);
  });

  it('cuts objects nested beyond the depth limit instead of walking them', () => {
    let nested: Record<string, unknown> = { password: PASSWORD };
    for (let i = 0; i < 20; i++) nested = { next: nested };
    const { logger, raw } = capture();
    logger.info({ nested }, 'very deep');
    expect(raw()).not.toContain(PASSWORD);
    expect(raw()).toContain('[depth limit]');
  });

  it('redacts an unparsable URL entirely and accepts extra paths', () => {
    const { logger, raw, lines } = capture('info', { extraRedactPaths: ['custom.pin'] });
    logger.info({ url: `not a url ${TOKEN}`, custom: { pin: '8841-pin' } }, 'x');
    expect(raw()).not.toContain(TOKEN);
    expect(raw()).not.toContain('8841-pin');
    expect(lines()[0]).toMatchObject({ url: REDACTED, custom: { pin: REDACTED } });
  });

  it('writes JSON lines with level names and honours the configured level', () => {
    const { logger, lines } = capture('warn');
    logger.info('dropped');
    logger.debug('dropped too');
    logger.warn({ n: 1 }, 'kept');
    logger.error('kept too');
    const written = lines();
    expect(written.map((l) => [l.level, l.msg])).toEqual([
      ['warn', 'kept'],
      ['error', 'kept too'],
    ]);
    expect(typeof written[0]?.time).toBe('string');
    expect(new Date(written[0]?.time as string).getTime()).not.toBeNaN();
  });

  it('writes nothing when silent', () => {
    const { logger, raw } = capture('silent');
    logger.fatal('nothing');
    expect(raw()).toBe('');
  });

  it('refuses an unknown level, naming the option', () => {
    expect(() => createLogger({ level: 'verbose' as LogLevel })).toThrow(LoggerOptionError);
    expect(() => createLogger({ level: 'verbose' as LogLevel })).toThrow(/logger option level: must be one of fatal/);
  });
});

describe('the attempt line', () => {
  const base: AttemptEvent = {
    deliveryId: 'd-1',
    accountId: 'acc-1',
    url: `https://user:${PASSWORD}@Hooks.Example.com:8443/path/${TOKEN}?sig=${TOKEN}`,
    attemptNo: 3,
    outcome: 'retrying',
    statusCode: 503,
    errorKind: null,
    durationMs: 12.6,
  };

  it('carries the host only, the status when answered, and a whole number of milliseconds', () => {
    expect(attemptLogFields(base)).toEqual({
      deliveryId: 'd-1',
      accountId: 'acc-1',
      endpointHost: 'hooks.example.com:8443',
      attemptNo: 3,
      outcome: 'retrying',
      statusCode: 503,
      durationMs: 13,
    });
  });

  it('carries the error kind when no answer came', () => {
    const fields = attemptLogFields({ ...base, statusCode: null, errorKind: 'timeout', outcome: 'failed' });
    expect(fields).toMatchObject({ errorKind: 'timeout', outcome: 'failed' });
    expect(fields).not.toHaveProperty('statusCode');
  });

  it('says invalid-url rather than echoing a value that is not a URL', () => {
    expect(attemptLogFields({ ...base, url: `garbage ${TOKEN}` }).endpointHost).toBe('invalid-url');
  });

  it('is written once per attempt at info, or warn when the delivery failed, without the URL secrets', () => {
    const { logger, raw, lines } = capture('info');
    logAttempt(logger, { ...base, outcome: 'delivered', statusCode: 200 });
    logAttempt(logger, { ...base, outcome: 'failed', statusCode: 400 });
    expect(lines().map((l) => [l.level, l.msg, l.outcome, l.endpointHost])).toEqual([
      ['info', 'delivery attempt', 'delivered', 'hooks.example.com:8443'],
      ['warn', 'delivery attempt', 'failed', 'hooks.example.com:8443'],
    ]);
    expect(raw()).not.toContain(TOKEN);
    expect(raw()).not.toContain(PASSWORD);
    expect(attemptLogLevel('superseded')).toBe('info');
  });
});
