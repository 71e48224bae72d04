import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  CLASSIFICATION_TABLE,
  ERROR_CODE_KINDS,
  classify,
  errorKind,
  statusRule,
  type AttemptOutcome,
  type ErrorKind,
} from './classify.js';
import type { Verdict } from './types.js';

const NOW = Date.UTC(2024, 0, 1);
const response = (status: number, retryAfter?: string | null): AttemptOutcome => ({
  kind: 'response',
  status,
  retryAfter,
});
const error = (code: string): AttemptOutcome => ({ kind: 'error', code });

describe('classify: the SPEC §5 rows, exactly', () => {
  it.each([200, 201, 202, 204, 299])('%i is delivered', (status) => {
    expect(classify(response(status), NOW)).toEqual({ verdict: 'delivered', reason: `http_${status}` });
  });
  it.each([401, 429, 500, 502, 503])('%i is retried', (status) => {
    expect(classify(response(status), NOW)).toEqual({ verdict: 'retry', reason: `http_${status}` });
  });
  it('400 fails without retry', () => {
    expect(classify(response(400), NOW)).toEqual({ verdict: 'failed', reason: 'http_400' });
  });
  it.each([
    ['UND_ERR_CONNECT_TIMEOUT', 'timeout'],
    ['UND_ERR_HEADERS_TIMEOUT', 'timeout'],
    ['UND_ERR_BODY_TIMEOUT', 'timeout'],
    ['ETIMEDOUT', 'timeout'],
    ['ECONNREFUSED', 'refused'],
    ['ECONNRESET', 'reset'],
    ['EPIPE', 'reset'],
    ['UND_ERR_SOCKET', 'reset'],
  ])('%s (%s) is retried', (code, reason) => {
    expect(classify(error(code), NOW)).toEqual({ verdict: 'retry', reason });
  });
  it('marks every SPEC row as such in the table', () => {
    const spec = CLASSIFICATION_TABLE.status;
    for (const status of [400, 401, 429, 500, 502, 503] as const) expect(spec[status].source).toBe('spec');
    expect(CLASSIFICATION_TABLE.statusClass[2].source).toBe('spec');
    for (const kind of ['timeout', 'refused', 'reset'] as const)
      expect(CLASSIFICATION_TABLE.error[kind].source).toBe('spec');
  });
});

describe('classify: documented choices', () => {
  it.each([
    [100, 'failed'],
    [101, 'failed'],
    [301, 'failed'],
    [302, 'failed'],
    [304, 'failed'],
    [307, 'failed'],
    [308, 'failed'],
    [403, 'retry'],
    [404, 'failed'],
    [408, 'retry'],
    [409, 'failed'],
    [413, 'failed'],
    [422, 'failed'],
    [501, 'retry'],
    [504, 'retry'],
    [599, 'retry'],
    [0, 'failed'],
    [99, 'failed'],
    [600, 'failed'],
    [999, 'failed'],
    [200.5, 'failed'],
    [Number.NaN, 'failed'],
  ] as Array<[number, Verdict]>)('%d -> %s', (status, verdict) => {
    expect(classify(response(status), NOW).verdict).toBe(verdict);
  });

  it('410 Gone fails and asks to pause the endpoint', () => {
    expect(classify(response(410), NOW)).toEqual({ verdict: 'failed', reason: 'http_410', pauseEndpoint: true });
  });

  it.each([
    ['ENOTFOUND', 'dns', 'retry'],
    ['EAI_AGAIN', 'dns', 'retry'],
    ['CERT_HAS_EXPIRED', 'tls', 'retry'],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', 'tls', 'retry'],
    ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'tls', 'retry'],
    ['ERR_TLS_CERT_ALTNAME_INVALID', 'tls', 'retry'],
    ['ERR_SSL_WRONG_VERSION_NUMBER', 'tls', 'retry'],
    ['ERR_TLS_SOMETHING_NEW', 'tls', 'retry'],
    ['EHOSTUNREACH', 'network', 'retry'],
    ['ENETUNREACH', 'network', 'retry'],
    ['SOMETHING_UNKNOWN', 'network', 'retry'],
    ['UND_ERR_ABORTED', 'timeout', 'retry'],
    ['UND_ERR_RESPONSE_EXCEEDED_MAX_SIZE', 'body_too_large', 'failed'],
    ['blocked_address', 'blocked_address', 'failed'],
  ])('error %s is %s -> %s', (code, kind, verdict) => {
    expect(errorKind(code)).toBe(kind);
    expect(classify(error(code), NOW)).toEqual({ verdict, reason: kind });
  });

  it('gives every listed error code its documented kind and verdict (a closed connection is retried)', () => {
    // Written out, not read from ERROR_CODE_KINDS: a row moved to another kind (e.g. UND_ERR_CLOSED to a kind that
    // fails) would otherwise turn a transient transport error into a delivery that is never retried.
    const expected: Record<string, [ErrorKind, Verdict]> = {
      UND_ERR_CONNECT_TIMEOUT: ['timeout', 'retry'],
      UND_ERR_HEADERS_TIMEOUT: ['timeout', 'retry'],
      UND_ERR_BODY_TIMEOUT: ['timeout', 'retry'],
      UND_ERR_ABORTED: ['timeout', 'retry'],
      ABORT_ERR: ['timeout', 'retry'],
      ETIMEDOUT: ['timeout', 'retry'],
      ESOCKETTIMEDOUT: ['timeout', 'retry'],
      ERR_TLS_HANDSHAKE_TIMEOUT: ['timeout', 'retry'],
      ECONNREFUSED: ['refused', 'retry'],
      ECONNRESET: ['reset', 'retry'],
      ECONNABORTED: ['reset', 'retry'],
      EPIPE: ['reset', 'retry'],
      UND_ERR_SOCKET: ['reset', 'retry'],
      UND_ERR_CLOSED: ['reset', 'retry'],
      ENOTFOUND: ['dns', 'retry'],
      EAI_AGAIN: ['dns', 'retry'],
      EAI_FAIL: ['dns', 'retry'],
      EAI_NONAME: ['dns', 'retry'],
      EAI_NODATA: ['dns', 'retry'],
      ENODATA: ['dns', 'retry'],
      CERT_HAS_EXPIRED: ['tls', 'retry'],
      CERT_NOT_YET_VALID: ['tls', 'retry'],
      CERT_REVOKED: ['tls', 'retry'],
      CERT_UNTRUSTED: ['tls', 'retry'],
      CERT_REJECTED: ['tls', 'retry'],
      CERT_SIGNATURE_FAILURE: ['tls', 'retry'],
      DEPTH_ZERO_SELF_SIGNED_CERT: ['tls', 'retry'],
      SELF_SIGNED_CERT_IN_CHAIN: ['tls', 'retry'],
      UNABLE_TO_VERIFY_LEAF_SIGNATURE: ['tls', 'retry'],
      UNABLE_TO_GET_ISSUER_CERT: ['tls', 'retry'],
      UNABLE_TO_GET_ISSUER_CERT_LOCALLY: ['tls', 'retry'],
      HOSTNAME_MISMATCH: ['tls', 'retry'],
      ERR_TLS_CERT_ALTNAME_INVALID: ['tls', 'retry'],
      UND_ERR_RESPONSE_EXCEEDED_MAX_SIZE: ['body_too_large', 'failed'],
      blocked_address: ['blocked_address', 'failed'],
      EHOSTUNREACH: ['network', 'retry'],
      ENETUNREACH: ['network', 'retry'],
      EHOSTDOWN: ['network', 'retry'],
      ENETDOWN: ['network', 'retry'],
      EADDRNOTAVAIL: ['network', 'retry'],
    };
    // A code added to the table must be added here too, with its kind.
    expect(Object.keys(ERROR_CODE_KINDS).sort()).toEqual(Object.keys(expected).sort());
    for (const [code, [kind, verdict]] of Object.entries(expected)) {
      expect({ code, ...classify(error(code), NOW) }).toEqual({ code, verdict, reason: kind });
    }
  });

  it('does not take inherited object keys for error codes', () => {
    expect(errorKind('toString')).toBe('network');
    expect(errorKind('__proto__')).toBe('network');
    expect(statusRule(Number('toString'))).toBe(CLASSIFICATION_TABLE.unknownStatus);
  });

  it('an error after the status line arrived is decided by the status', () => {
    const tooLargeOk: AttemptOutcome = { kind: 'error', code: 'UND_ERR_RESPONSE_EXCEEDED_MAX_SIZE', status: 200 };
    expect(classify(tooLargeOk, NOW)).toEqual({ verdict: 'delivered', reason: 'http_200' });
    const tooLarge400: AttemptOutcome = { kind: 'error', code: 'UND_ERR_RESPONSE_EXCEEDED_MAX_SIZE', status: 400 };
    expect(classify(tooLarge400, NOW)).toEqual({ verdict: 'failed', reason: 'http_400' });
    const cutOff503: AttemptOutcome = { kind: 'error', code: 'UND_ERR_BODY_TIMEOUT', status: 503, retryAfter: '7' };
    expect(classify(cutOff503, NOW)).toEqual({ verdict: 'retry', reason: 'http_503', retryAfterMs: 7000 });
  });
});

describe('classify: Retry-After', () => {
  it.each([429, 503])('is read on %i (seconds and HTTP-date)', (status) => {
    expect(classify(response(status, '120'), NOW).retryAfterMs).toBe(120_000);
    expect(classify(response(status, 'Mon, 01 Jan 2024 00:01:00 GMT'), NOW).retryAfterMs).toBe(60_000);
  });
  it.each([429, 503])('is left out on %i when absent or invalid', (status) => {
    expect(classify(response(status), NOW)).not.toHaveProperty('retryAfterMs');
    expect(classify(response(status, null), NOW)).not.toHaveProperty('retryAfterMs');
    expect(classify(response(status, 'soon'), NOW)).not.toHaveProperty('retryAfterMs');
  });
  it.each([401, 500, 502, 504, 200, 400])('is ignored on %i', (status) => {
    expect(classify(response(status, '120'), NOW)).not.toHaveProperty('retryAfterMs');
  });
});

describe('the classification table (properties)', () => {
  const verdicts: Verdict[] = ['delivered', 'retry', 'failed'];

  it('gives every status 100..599 exactly one verdict, the one of its row', () => {
    for (let status = 100; status <= 599; status++) {
      const result = classify(response(status), NOW);
      expect(verdicts).toContain(result.verdict);
      expect(result.verdict).toBe(statusRule(status).verdict);
      expect(result.reason).toBe(`http_${status}`);
    }
  });

  it('delivers exactly the 2xx statuses', () => {
    fc.assert(
      fc.property(fc.integer({ min: -1000, max: 10_000 }), (status) => {
        const delivered = classify(response(status), NOW).verdict === 'delivered';
        expect(delivered).toBe(status >= 200 && status <= 299);
      }),
    );
  });

  it('is deterministic and independent of Retry-After for the verdict', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 100, max: 599 }),
        fc.option(fc.oneof(fc.nat().map(String), fc.string())),
        (status, retryAfter) => {
          const a = classify(response(status, retryAfter), NOW);
          expect(a).toEqual(classify(response(status, retryAfter), NOW));
          expect(a.verdict).toBe(classify(response(status), NOW).verdict);
          if (a.retryAfterMs !== undefined) expect([429, 503]).toContain(status);
        },
      ),
    );
  });

  it('classifies any error code into one kind with one verdict', () => {
    const kinds = Object.keys(CLASSIFICATION_TABLE.error) as ErrorKind[];
    fc.assert(
      fc.property(fc.oneof(fc.constantFrom(...Object.keys(ERROR_CODE_KINDS)), fc.string()), (code) => {
        const result = classify(error(code), NOW);
        expect(kinds).toContain(result.reason);
        expect(result.verdict).toBe(CLASSIFICATION_TABLE.error[errorKind(code)].verdict);
      }),
    );
  });

  it('every exact row lies in 100..599 and every row explains itself', () => {
    for (const key of Object.keys(CLASSIFICATION_TABLE.status)) {
      expect(Number(key)).toBeGreaterThanOrEqual(100);
      expect(Number(key)).toBeLessThanOrEqual(599);
    }
    const rows = [
      ...Object.values(CLASSIFICATION_TABLE.status),
      ...Object.values(CLASSIFICATION_TABLE.statusClass),
      ...Object.values(CLASSIFICATION_TABLE.error),
      CLASSIFICATION_TABLE.unknownStatus,
    ];
    for (const row of rows) expect(row.why.length).toBeGreaterThan(0);
  });
});
