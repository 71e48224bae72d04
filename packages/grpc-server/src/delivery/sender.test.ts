import { describe, expect, it } from 'vitest';
import { errorCodeOf } from './sender.js';

describe('errorCodeOf', () => {
  it('takes the error’s own code', () => {
    expect(errorCodeOf(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }))).toBe('ECONNREFUSED');
  });

  it('follows the cause chain when the outer error has no code', () => {
    const inner = Object.assign(new Error('inner'), { code: 'CERT_HAS_EXPIRED' });
    expect(errorCodeOf(new TypeError('fetch failed', { cause: new Error('mid', { cause: inner }) }))).toBe(
      'CERT_HAS_EXPIRED',
    );
  });

  it('looks into the errors of an AggregateError (happy-eyeballs connects)', () => {
    const a = Object.assign(new Error('v6'), { code: 'ENETUNREACH' });
    const b = Object.assign(new Error('v4'), { code: 'ECONNREFUSED' });
    expect(errorCodeOf(new AggregateError([a, b]))).toBe('ENETUNREACH');
  });

  it('ignores numeric codes (DOMException) and never reads the message', () => {
    expect(errorCodeOf(new DOMException('ECONNRESET', 'AbortError'))).toBe('UND_ERR');
    expect(errorCodeOf(new Error('ECONNRESET'))).toBe('UND_ERR');
    expect(errorCodeOf('ECONNRESET')).toBe('UND_ERR');
    expect(errorCodeOf(null)).toBe('UND_ERR');
  });

  it('does not loop on a cyclic cause', () => {
    const e = new Error('a') as Error & { cause?: unknown };
    e.cause = e;
    expect(errorCodeOf(e)).toBe('UND_ERR');
  });
});
