/**
 * Backoff between attempts: exponential with jitter, capped, bounded by attempts and age, and
 * honouring `Retry-After` on 429 and 503. Pure: the clock and the random source are parameters.
 * @see SPEC §5
 */
import * as z from 'zod';
import type { Classification } from './classify.js';
import { CoreError } from './errors.js';
import { unlessMissing, validate, type FieldViolation } from './schema.js';

/** Each delay is this many times the previous one (before the cap). */
export const BACKOFF_FACTOR = 2;

/** How retries are spaced and when they stop. */
export interface BackoffOptions {
  /** Delay after the first failed attempt, before jitter (milliseconds). Default 1,000 (1 s). */
  baseDelayMs: number;
  /** Largest delay between two attempts, before jitter (milliseconds). Default 3,600,000 (1 h). */
  maxDelayMs: number;
  /** Attempts in total, the first included; after the last one fails the delivery is failed. Default 20. */
  maxAttempts: number;
  /**
   * No attempt is scheduled later than this after the first attempt (milliseconds). Default 86,400,000
   * (24 h, the platform's default message TTL: later, the messages would have expired anyway).
   */
  maxAgeMs: number;
  /** A `Retry-After` shorter than this is raised to it (milliseconds). Default 1,000 (1 s). */
  retryAfterMinMs: number;
  /** A `Retry-After` longer than this is lowered to it (milliseconds). Default 3,600,000 (1 h). */
  retryAfterMaxMs: number;
  /**
   * Fraction 0..1 of randomness: each delay is drawn uniformly from [(1 − jitter)·d, d], where d is the
   * nominal delay, so jitter spreads retries without ever exceeding the cap. Default 0.2.
   */
  jitter: number;
}

/**
 * The defaults: 1 s, 2 s, 4 s ... doubling up to 1 h, at most 20 attempts (about 8 h of retries),
 * never past 24 h; `Retry-After` clamped to 1 s..1 h; delays up to 20 % shorter by jitter.
 */
export const DEFAULT_BACKOFF: Readonly<BackoffOptions> = Object.freeze({
  baseDelayMs: 1_000,
  maxDelayMs: 3_600_000,
  maxAttempts: 20,
  maxAgeMs: 86_400_000,
  retryAfterMinMs: 1_000,
  retryAfterMaxMs: 3_600_000,
  jitter: 0.2,
});

function assertAttemptNo(attemptNo: number): void {
  if (!Number.isInteger(attemptNo) || attemptNo < 1) {
    throw new CoreError('invalid_argument', `attemptNo must be an integer >= 1, got ${String(attemptNo)}`);
  }
}

/** The delay after attempt `attemptNo` failed, without jitter: min(maxDelayMs, base · 2^(attemptNo − 1)). */
export function nominalDelay(attemptNo: number, options: Pick<BackoffOptions, 'baseDelayMs' | 'maxDelayMs'>): number {
  assertAttemptNo(attemptNo);
  // The exponent is bounded so the product stays finite; the cap is reached long before.
  return Math.min(options.maxDelayMs, options.baseDelayMs * BACKOFF_FACTOR ** Math.min(attemptNo - 1, 64));
}

/**
 * The wait (ms) after attempt `attemptNo` (1-based, the attempt that just failed): the nominal delay
 * shortened by up to `jitter` of itself, rounded to a millisecond.
 * @param random a source of numbers in [0, 1) such as Math.random; values outside are clamped
 */
export function backoffDelay(attemptNo: number, options: BackoffOptions, random: () => number): number {
  const nominal = nominalDelay(attemptNo, options);
  const r = Math.min(1, Math.max(0, random()));
  return Math.round(nominal * (1 - options.jitter * r));
}

/** Whether and when to try again. */
export type RetryDecision =
  { retry: true; at: number; delayMs: number } | { retry: false; reason: 'max_attempts' | 'max_age' | 'not_retryable' };

/** Input of {@link decideRetry}. */
export interface DecideRetryInput {
  /** The verdict of the attempt that just ended. */
  classification: Classification;
  /** That attempt's number, 1-based. */
  attemptNo: number;
  /** When the delivery's first attempt started (ms since the epoch). */
  firstAttemptAt: number;
  /** The clock (ms since the epoch). */
  now: number;
  options: BackoffOptions;
  /** Random source in [0, 1) for jitter. */
  random: () => number;
}

/**
 * Decides the next attempt after one that did not deliver. A `retryAfterMs` (only set on 429/503) wins
 * over the backoff, clamped to [retryAfterMinMs, retryAfterMaxMs]; otherwise {@link backoffDelay}. Gives up
 * when `attemptNo` reached `maxAttempts`, or when the next attempt would start after
 * `firstAttemptAt + maxAgeMs`.
 * @see SPEC §5
 */
export function decideRetry(input: DecideRetryInput): RetryDecision {
  const { classification, attemptNo, options } = input;
  assertAttemptNo(attemptNo);
  if (classification.verdict !== 'retry') return { retry: false, reason: 'not_retryable' };
  if (attemptNo >= options.maxAttempts) return { retry: false, reason: 'max_attempts' };
  const delayMs =
    classification.retryAfterMs === undefined
      ? backoffDelay(attemptNo, options, input.random)
      : Math.min(options.retryAfterMaxMs, Math.max(options.retryAfterMinMs, classification.retryAfterMs));
  const at = input.now + delayMs;
  if (at > input.firstAttemptAt + options.maxAgeMs) return { retry: false, reason: 'max_age' };
  return { retry: true, at, delayMs };
}

/**
 * The nominal delays (ms, no jitter) after attempts 1..maxAttempts−1: element i is the wait between
 * attempt i+1 and attempt i+2. Not cut by `maxAgeMs`; for documentation and tests.
 */
export function backoffSchedule(options: BackoffOptions): number[] {
  const delays: number[] = [];
  for (let attemptNo = 1; attemptNo < options.maxAttempts; attemptNo++) delays.push(nominalDelay(attemptNo, options));
  return delays;
}

const positiveMs = z
  .number({ error: unlessMissing('must be a number of milliseconds') })
  .int({ error: 'must be an integer number of milliseconds' })
  .positive({ error: 'must be greater than 0' });
const nonNegativeMs = z
  .number({ error: unlessMissing('must be a number of milliseconds') })
  .int({ error: 'must be an integer number of milliseconds' })
  .nonnegative({ error: 'must not be negative' });

/** The bounds of {@link BackoffOptions}, including the ones between fields. */
export const backoffOptionsSchema = z
  .strictObject({
    baseDelayMs: positiveMs,
    maxDelayMs: positiveMs,
    maxAttempts: z
      .number({ error: unlessMissing('must be an integer') })
      .int({ error: 'must be an integer' })
      .min(1, { error: 'must be at least 1' })
      .max(1000, { error: 'must be at most 1000' }),
    maxAgeMs: positiveMs,
    retryAfterMinMs: nonNegativeMs,
    retryAfterMaxMs: nonNegativeMs,
    jitter: z
      .number({ error: unlessMissing('must be a number') })
      .min(0, { error: 'must be at least 0' })
      .max(1, {
        error: 'must be at most 1',
      }),
  })
  .superRefine((o, ctx) => {
    if (o.maxDelayMs < o.baseDelayMs) {
      ctx.addIssue({ code: 'custom', path: ['maxDelayMs'], message: 'must be at least baseDelayMs' });
    }
    if (o.retryAfterMaxMs < o.retryAfterMinMs) {
      ctx.addIssue({ code: 'custom', path: ['retryAfterMaxMs'], message: 'must be at least retryAfterMinMs' });
    }
    // The first retry is due (1 − jitter) × baseDelayMs after the first attempt at the soonest: a shorter age leaves
    // no room for it (or little), and every retryable answer would fail at its first attempt. @see SPEC §5
    if (o.maxAgeMs < o.baseDelayMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['maxAgeMs'],
        message: 'must be at least baseDelayMs, or no backoff retry could start within it',
      });
    }
  });

/**
 * Every bad field of a backoff configuration ([] when valid), named `prefix.field`.
 * @param pathPrefix e.g. `backoff` gives `backoff.maxDelayMs`
 */
export function validateBackoffOptions(o: unknown, pathPrefix = ''): FieldViolation[] {
  const result = validate(backoffOptionsSchema, o, pathPrefix);
  return result.ok ? [] : result.violations;
}
