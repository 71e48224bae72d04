import { describe, expect, it } from 'vitest';
import { DEFAULTS, resolveAppOptions, resolveServerOptions } from './options.js';

describe('resolveAppOptions', () => {
  it('applies the defaults', () => {
    const resolved = resolveAppOptions();
    expect(resolved).toMatchObject({
      auth: null,
      signing: null,
      maxMessagesPerContact: 1000,
      strict: true,
      recordLimit: 1000,
      recordBytesLimit: 256 * 1024 * 1024,
      contactLimit: 10_000,
      scenario: 'ok',
      rules: [],
      retryAfterSeconds: 1,
      slowDelayMs: 2000,
      maxBodyBytes: 64 * 1024 * 1024,
      realm: 'mock-receiver',
    });
    expect(typeof resolved.onError).toBe('function');
  });

  it('lists every bad option and never shows the password', () => {
    let error: unknown;
    try {
      resolveAppOptions({
        username: '',
        password: 'p\u0000ssword-secret',
        maxMessagesPerContact: 2.5,
        strict: 'yes' as never,
        rules: [{ answers: [{ status: 1 }] }],
        realm: 'with "quotes"',
        nonsense: 1,
      } as never);
    } catch (e) {
      error = e;
    }
    expect(error).toMatchObject({ code: 'invalid_options' });
    const { violations, message } = error as { violations: { field: string }[]; message: string };
    expect(violations.map((v) => v.field).sort()).toEqual(
      [
        'maxMessagesPerContact',
        'nonsense',
        'password',
        'realm',
        'rules[0].answers[0].status',
        'strict',
        'username',
      ].sort(),
    );
    expect(message).not.toContain('ssword-secret');
  });

  it('names a bad rule by its path', () => {
    expect(() => resolveAppOptions({ rules: [{ answers: [{ status: 1 }] }] })).toThrow(
      'invalid mock receiver options: rules[0].answers[0].status must be an integer from 200 to 599',
    );
  });
});

describe('signing secrets', () => {
  const a = `whsec_${Buffer.alloc(32, 1).toString('base64')}`;
  const b = `whsec_${Buffer.alloc(24, 2).toString('base64')}`;

  it('keeps only the decoded keys, in order, with the tolerance (default 300 s)', () => {
    expect(resolveAppOptions({ signingSecrets: [a, b] }).signing).toEqual({
      keys: [Buffer.alloc(32, 1), Buffer.alloc(24, 2)],
      toleranceSeconds: 300,
    });
    expect(resolveAppOptions({ signingSecrets: [a], signatureToleranceSeconds: 0 }).signing?.toleranceSeconds).toBe(0);
    expect(JSON.stringify(resolveAppOptions({ signingSecrets: [a] }))).not.toContain(a);
  });

  it('names a bad secret by its index and never shows it', () => {
    const bad = 'whsec_not base64 at all: hunter2';
    let error: unknown;
    try {
      resolveAppOptions({ signingSecrets: [a, bad, 'hunter3'] });
    } catch (e) {
      error = e;
    }
    expect(error).toMatchObject({
      code: 'invalid_options',
      violations: [
        { field: 'signingSecrets[1]', description: 'must be "whsec_" followed by standard base64 (Standard Webhooks)' },
        { field: 'signingSecrets[2]', description: 'must be "whsec_" followed by standard base64 (Standard Webhooks)' },
      ],
    });
    const text = JSON.stringify({
      message: (error as Error).message,
      violations: (error as { violations: unknown }).violations,
    });
    for (const secret of ['hunter2', 'hunter3', a.slice(6)]) expect(text).not.toContain(secret);
  });

  it.each([
    [{ signingSecrets: [] }, 'signingSecrets must list 1 to 10 secrets (leave it out to not check signatures)'],
    [{ signingSecrets: Array.from({ length: 11 }, () => a) }, 'signingSecrets must list 1 to 10 secrets'],
    [{ signingSecrets: 'whsec_x' as never }, 'signingSecrets must be an array'],
    [
      { signingSecrets: [a], signatureToleranceSeconds: -1 },
      'signatureToleranceSeconds must be an integer from 0 to 31536000',
    ],
    [
      { signingSecrets: [a], signatureToleranceSeconds: 1.5 },
      'signatureToleranceSeconds must be an integer from 0 to 31536000',
    ],
    [{ signatureToleranceSeconds: 60 }, 'signatureToleranceSeconds is only used with signingSecrets'],
  ])('%j is refused: %s', (options, message) => {
    expect(() => resolveAppOptions(options)).toThrow(message);
  });
});

describe('resolveServerOptions', () => {
  it('defaults to 127.0.0.1 and port 0', () => {
    expect(resolveServerOptions()).toMatchObject({ host: DEFAULTS.host, port: 0 });
  });

  it('reports listening and app problems together', () => {
    expect(() => resolveServerOptions({ port: -1, host: '', recordLimit: -1 })).toThrow(
      /host must not be empty; port must be an integer from 0 to 65535; recordLimit must be an integer from 0 to 1000000/,
    );
  });
});
