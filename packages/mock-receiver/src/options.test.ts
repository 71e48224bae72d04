import { describe, expect, it } from 'vitest';
import { DEFAULTS, resolveAppOptions, resolveServerOptions } from './options.js';

describe('resolveAppOptions', () => {
  it('applies the defaults', () => {
    const resolved = resolveAppOptions();
    expect(resolved).toMatchObject({
      auth: null,
      maxMessagesPerContact: 1000,
      strict: true,
      recordLimit: 1000,
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
