import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_BACKOFF,
  backoffDelay,
  backoffSchedule,
  decideRetry,
  nominalDelay,
  validateBackoffOptions,
  type BackoffOptions,
} from './backoff.js';
import { classify, type Classification } from './classify.js';

const NOW = 1_700_000_000_000;
const noJitter: BackoffOptions = { ...DEFAULT_BACKOFF, jitter: 0 };
const fixed = (r: number) => () => r;
const retry503: Classification = { verdict: 'retry', reason: 'http_503' };

describe('DEFAULT_BACKOFF', () => {
  it('is valid and frozen', () => {
    expect(validateBackoffOptions(DEFAULT_BACKOFF)).toEqual([]);
    expect(Object.isFrozen(DEFAULT_BACKOFF)).toBe(true);
  });

  it('has the documented values (README, TSDoc): every field, units in milliseconds', () => {
    // The server takes retryAfterMinMs, retryAfterMaxMs and jitter from here as they are (no option of its own).
    expect({ ...DEFAULT_BACKOFF }).toEqual({
      baseDelayMs: 1_000,
      maxDelayMs: 3_600_000,
      maxAttempts: 20,
      maxAgeMs: 86_400_000,
      retryAfterMinMs: 1_000,
      retryAfterMaxMs: 3_600_000,
      jitter: 0.2,
    });
  });

  it('has the documented schedule: 1 s doubling to a 1 h cap, 20 attempts', () => {
    const seconds = backoffSchedule(DEFAULT_BACKOFF).map((ms) => ms / 1000);
    expect(seconds).toEqual([
      1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600, 3600, 3600, 3600, 3600, 3600,
    ]);
    // About 8 hours of retries in total, inside maxAgeMs (24 h).
    const total = seconds.reduce((a, b) => a + b, 0);
    expect(total).toBe(29_295);
    expect(total * 1000).toBeLessThan(DEFAULT_BACKOFF.maxAgeMs);
  });
});

describe('backoffDelay', () => {
  it('doubles from the base delay and stops at the cap', () => {
    const options = { ...noJitter, baseDelayMs: 100, maxDelayMs: 1000 };
    expect([1, 2, 3, 4, 5, 6, 100, 10_000].map((n) => backoffDelay(n, options, Math.random))).toEqual([
      100, 200, 400, 800, 1000, 1000, 1000, 1000,
    ]);
  });

  it('shortens by at most `jitter` of the nominal delay, depending on the random source', () => {
    const options = { ...DEFAULT_BACKOFF, baseDelayMs: 1000, jitter: 0.2 };
    expect(backoffDelay(1, options, fixed(0))).toBe(1000);
    expect(backoffDelay(1, options, fixed(0.5))).toBe(900);
    expect(backoffDelay(1, options, fixed(0.999_999))).toBe(800);
    // A random source that misbehaves is clamped to [0, 1].
    expect(backoffDelay(1, options, fixed(7))).toBe(800);
    expect(backoffDelay(1, options, fixed(-3))).toBe(1000);
  });

  it.each([0, -1, 1.5, Number.NaN])('rejects attemptNo %p', (attemptNo) => {
    expect(() => backoffDelay(attemptNo, DEFAULT_BACKOFF, Math.random)).toThrowError(
      expect.objectContaining({ code: 'invalid_argument' }),
    );
  });

  it('property: the delay lies in [(1 - jitter) * nominal, nominal] and never exceeds the cap', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 200 }),
        fc.integer({ min: 1, max: 100_000 }),
        fc.integer({ min: 1, max: 10_000_000 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (attemptNo, base, extra, jitter, r) => {
          const options = { ...DEFAULT_BACKOFF, baseDelayMs: base, maxDelayMs: base + extra, jitter };
          const nominal = nominalDelay(attemptNo, options);
          const delay = backoffDelay(attemptNo, options, fixed(r));
          expect(delay).toBeLessThanOrEqual(options.maxDelayMs);
          expect(delay).toBeLessThanOrEqual(nominal);
          expect(delay).toBeGreaterThanOrEqual(Math.floor((1 - jitter) * nominal));
          expect(Number.isInteger(delay)).toBe(true);
        },
      ),
    );
  });

  it('property: without jitter the delays never decrease with the attempt number', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 100 }), fc.integer({ min: 1, max: 10_000 }), (attemptNo, base) => {
        const options = { ...noJitter, baseDelayMs: base };
        expect(backoffDelay(attemptNo + 1, options, Math.random)).toBeGreaterThanOrEqual(
          backoffDelay(attemptNo, options, Math.random),
        );
      }),
    );
  });
});

describe('decideRetry', () => {
  const base = { attemptNo: 1, firstAttemptAt: NOW, now: NOW, options: noJitter, random: fixed(0) };

  it('does not retry delivered or failed outcomes', () => {
    for (const classification of [
      classify({ kind: 'response', status: 200 }, NOW),
      classify({ kind: 'response', status: 400 }, NOW),
    ]) {
      expect(decideRetry({ ...base, classification })).toEqual({ retry: false, reason: 'not_retryable' });
    }
  });

  it('schedules the backoff delay after a retryable outcome', () => {
    expect(decideRetry({ ...base, classification: retry503, attemptNo: 3, now: NOW + 5000 })).toEqual({
      retry: true,
      at: NOW + 5000 + 4000,
      delayMs: 4000,
    });
  });

  it('applies jitter from the injected random source', () => {
    const options = { ...DEFAULT_BACKOFF, jitter: 0.5 };
    expect(decideRetry({ ...base, options, classification: retry503, random: fixed(0.5) })).toEqual({
      retry: true,
      at: NOW + 750,
      delayMs: 750,
    });
  });

  it('honours Retry-After instead of the backoff, clamped to its bounds', () => {
    const options = { ...noJitter, retryAfterMinMs: 2000, retryAfterMaxMs: 60_000 };
    const withRetryAfter = (retryAfterMs: number): Classification => ({ ...retry503, retryAfterMs });
    const delayOf = (retryAfterMs: number) => {
      const decision = decideRetry({ ...base, options, classification: withRetryAfter(retryAfterMs) });
      return decision.retry ? decision.delayMs : undefined;
    };
    expect(delayOf(30_000)).toBe(30_000);
    expect(delayOf(0)).toBe(2000);
    expect(delayOf(10 * 3_600_000)).toBe(60_000);
  });

  it('reads Retry-After end to end from a 429', () => {
    const classification = classify({ kind: 'response', status: 429, retryAfter: '90' }, NOW);
    expect(decideRetry({ ...base, classification })).toEqual({ retry: true, at: NOW + 90_000, delayMs: 90_000 });
  });

  it('gives up when the attempt that failed was the last one', () => {
    const options = { ...noJitter, maxAttempts: 3 };
    expect(decideRetry({ ...base, options, classification: retry503, attemptNo: 2 }).retry).toBe(true);
    expect(decideRetry({ ...base, options, classification: retry503, attemptNo: 3 })).toEqual({
      retry: false,
      reason: 'max_attempts',
    });
  });

  it('gives up when the next attempt would start after firstAttemptAt + maxAgeMs', () => {
    const options = { ...noJitter, maxAgeMs: 10_000 };
    // Next attempt exactly at the limit is still allowed.
    expect(decideRetry({ ...base, options, classification: retry503, now: NOW + 9000 })).toEqual({
      retry: true,
      at: NOW + 10_000,
      delayMs: 1000,
    });
    expect(decideRetry({ ...base, options, classification: retry503, now: NOW + 9001 })).toEqual({
      retry: false,
      reason: 'max_age',
    });
  });

  it('property: a retry is never later than the age limit nor after the last attempt', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 30 }),
        fc.integer({ min: 0, max: 2 * 86_400_000 }),
        fc.option(fc.nat({ max: 10 * 3_600_000 }), { nil: undefined }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (attemptNo, elapsed, retryAfterMs, r) => {
          const classification: Classification = retryAfterMs === undefined ? retry503 : { ...retry503, retryAfterMs };
          const decision = decideRetry({
            classification,
            attemptNo,
            firstAttemptAt: NOW,
            now: NOW + elapsed,
            options: DEFAULT_BACKOFF,
            random: fixed(r),
          });
          if (decision.retry) {
            expect(attemptNo).toBeLessThan(DEFAULT_BACKOFF.maxAttempts);
            expect(decision.at).toBeLessThanOrEqual(NOW + DEFAULT_BACKOFF.maxAgeMs);
            expect(decision.at).toBe(NOW + elapsed + decision.delayMs);
            expect(decision.delayMs).toBeGreaterThan(0);
            if (retryAfterMs !== undefined) {
              expect(decision.delayMs).toBeGreaterThanOrEqual(DEFAULT_BACKOFF.retryAfterMinMs);
              expect(decision.delayMs).toBeLessThanOrEqual(DEFAULT_BACKOFF.retryAfterMaxMs);
            }
          } else {
            expect(['max_attempts', 'max_age']).toContain(decision.reason);
          }
        },
      ),
    );
  });
});

describe('backoffSchedule', () => {
  it('has maxAttempts - 1 entries', () => {
    expect(backoffSchedule({ ...DEFAULT_BACKOFF, maxAttempts: 1 })).toEqual([]);
    expect(backoffSchedule({ ...DEFAULT_BACKOFF, baseDelayMs: 10, maxDelayMs: 35, maxAttempts: 5 })).toEqual([
      10, 20, 35, 35,
    ]);
  });
});

describe('validateBackoffOptions', () => {
  it('names every bad field', () => {
    expect(
      validateBackoffOptions({
        baseDelayMs: 0,
        maxDelayMs: 1.5,
        maxAttempts: 0,
        maxAgeMs: -1,
        retryAfterMinMs: -1,
        retryAfterMaxMs: 'x',
        jitter: 2,
      }).map((v) => v.field),
    ).toEqual(['baseDelayMs', 'maxDelayMs', 'maxAttempts', 'maxAgeMs', 'retryAfterMinMs', 'retryAfterMaxMs', 'jitter']);
  });

  it('checks the bounds between fields, with a prefix', () => {
    expect(
      validateBackoffOptions(
        { ...DEFAULT_BACKOFF, baseDelayMs: 5000, maxDelayMs: 1000, retryAfterMinMs: 10, retryAfterMaxMs: 5 },
        'backoff',
      ),
    ).toEqual([
      { field: 'backoff.maxDelayMs', description: 'must be at least baseDelayMs' },
      { field: 'backoff.retryAfterMaxMs', description: 'must be at least retryAfterMinMs' },
    ]);
  });

  it('wants room for a first retry: maxAgeMs at least baseDelayMs (else every retryable answer fails at once)', () => {
    const options = { ...DEFAULT_BACKOFF, baseDelayMs: 120_000, maxDelayMs: 120_000, maxAgeMs: 60_000 };
    expect(validateBackoffOptions(options)).toEqual([
      { field: 'maxAgeMs', description: 'must be at least baseDelayMs, or no backoff retry could start within it' },
    ]);
    // What such options did: a 503 failed at its first attempt, for age, though SPEC §5 retries it.
    const decision = decideRetry({
      classification: { verdict: 'retry', reason: 'http_503' },
      attemptNo: 1,
      firstAttemptAt: NOW,
      now: NOW,
      options,
      random: () => 0,
    });
    expect(decision).toEqual({ retry: false, reason: 'max_age' });
    expect(validateBackoffOptions({ ...options, maxAgeMs: 120_000 })).toEqual([]);
  });

  it('accepts the bounds themselves: 1000 attempts, a cap equal to the base, equal Retry-After bounds', () => {
    expect(validateBackoffOptions({ ...DEFAULT_BACKOFF, maxAttempts: 1000 })).toEqual([]);
    expect(validateBackoffOptions({ ...DEFAULT_BACKOFF, maxAttempts: 1001 })).toEqual([
      { field: 'maxAttempts', description: 'must be at most 1000' },
    ]);
    expect(validateBackoffOptions({ ...DEFAULT_BACKOFF, baseDelayMs: 5000, maxDelayMs: 5000 })).toEqual([]);
    expect(validateBackoffOptions({ ...DEFAULT_BACKOFF, retryAfterMinMs: 5000, retryAfterMaxMs: 5000 })).toEqual([]);
  });

  it('reports missing and unknown fields', () => {
    const { jitter: _j, ...rest } = DEFAULT_BACKOFF;
    expect(validateBackoffOptions({ ...rest, factor: 3 })).toEqual([
      { field: 'jitter', description: 'is required' },
      { field: 'factor', description: 'is not a known field' },
    ]);
    expect(validateBackoffOptions(null)).toEqual([{ field: '', description: 'must be an object' }]);
  });
});
