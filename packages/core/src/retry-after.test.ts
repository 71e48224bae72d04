import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseHttpDate, parseRetryAfter } from './retry-after.js';

const NOW = Date.UTC(2015, 9, 21, 7, 27, 0); // Wed, 21 Oct 2015 07:27:00 GMT

describe('parseRetryAfter', () => {
  it.each([
    ['0', 0],
    ['1', 1000],
    ['120', 120_000],
    [' 30 ', 30_000],
    ['86400', 86_400_000],
  ])('reads delta-seconds %j', (value, ms) => {
    expect(parseRetryAfter(value, NOW)).toBe(ms);
  });

  it.each([
    ['Wed, 21 Oct 2015 07:28:00 GMT', 60_000], // IMF-fixdate
    ['Wednesday, 21-Oct-15 07:28:00 GMT', 60_000], // obsolete RFC 850
    ['Wed Oct 21 07:28:00 2015', 60_000], // obsolete asctime, read as UTC
    ['Wed Oct  1 07:27:00 2015', 0], // asctime with a space-padded day, in the past
    ['Tue, 20 Oct 2015 07:28:00 GMT', 0], // in the past: retry now
  ])('reads the HTTP-date %j', (value, ms) => {
    expect(parseRetryAfter(value, NOW)).toBe(ms);
  });

  it.each([
    null,
    undefined,
    '',
    '   ',
    '-1',
    '1.5',
    '+5',
    '0x10',
    'soon',
    '1e3',
    'Wed, 21 Oct 2015 07:28:00 UTC',
    'Wed, 31 Feb 2015 07:28:00 GMT',
    'Wed, 21 Oct 2015 24:00:00 GMT',
    'Wed, 21 Oct 2015 07:60:00 GMT',
    'Wed, 00 Oct 2015 07:28:00 GMT',
    '2015-10-21T07:28:00Z',
    '9'.repeat(400),
  ])('gives null for %j', (value) => {
    expect(parseRetryAfter(value, NOW)).toBeNull();
  });

  it('resolves an RFC 850 two-digit year within 50 years of now', () => {
    const now2060 = Date.UTC(2060, 0, 1);
    // From 2060, "99" as 2099 is 39 years ahead: within 50 years, so 2099.
    expect(parseHttpDate('Thursday, 01-Jan-99 00:00:00 GMT', now2060)).toBe(Date.UTC(2099, 0, 1));
    // From 2030, "99" as 2099 is 69 years ahead: it means 1999.
    expect(parseHttpDate('Friday, 01-Jan-99 00:00:00 GMT', Date.UTC(2030, 0, 1))).toBe(Date.UTC(1999, 0, 1));
  });

  it('keeps an RFC 850 year exactly 50 years ahead in the future (only "more than 50 years" means the past)', () => {
    // From 2049, "99" as 2099 is exactly 50 years ahead: RFC 9110 §5.6.7 keeps it.
    expect(parseHttpDate('Thursday, 01-Jan-99 00:00:00 GMT', Date.UTC(2049, 0, 1))).toBe(Date.UTC(2099, 0, 1));
    // From 2048 it is 51 years ahead: 1999.
    expect(parseHttpDate('Friday, 01-Jan-99 00:00:00 GMT', Date.UTC(2048, 0, 1))).toBe(Date.UTC(1999, 0, 1));
  });

  it('accepts a leap second as the next second', () => {
    expect(parseHttpDate('Wed, 31 Dec 2016 23:59:60 GMT', NOW)).toBe(Date.UTC(2017, 0, 1));
  });

  it('property: any non-negative integer of seconds is read as seconds', () => {
    fc.assert(
      fc.property(fc.nat({ max: 10_000_000 }), (seconds) => {
        expect(parseRetryAfter(String(seconds), NOW)).toBe(seconds * 1000);
      }),
    );
  });

  it('property: an IMF-fixdate round-trips through Date#toUTCString', () => {
    fc.assert(
      fc.property(fc.integer({ min: Date.UTC(1990, 0, 1), max: Date.UTC(2090, 0, 1) }), (t) => {
        const whole = Math.floor(t / 1000) * 1000;
        expect(parseHttpDate(new Date(whole).toUTCString(), NOW)).toBe(whole);
        expect(parseRetryAfter(new Date(whole).toUTCString(), NOW)).toBe(Math.max(0, whole - NOW));
      }),
    );
  });
});
