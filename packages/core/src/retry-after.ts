/**
 * `Retry-After` parsing. @see RFC 9110 §10.2.3 (Retry-After), §5.6.7 (HTTP-date)
 */

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'] as const;
const MONTH = `(${MONTHS.join('|')})`;
const TIME = '(\\d{2}):(\\d{2}):(\\d{2})';

/** The three HTTP-date forms a recipient must accept (RFC 9110 §5.6.7); all are UTC. */
const IMF_FIXDATE = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\\d{2}) ${MONTH} (\\d{4}) ${TIME} GMT$`);
const RFC850_DATE = new RegExp(
  `^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\\d{2})-${MONTH}-(\\d{2}) ${TIME} GMT$`,
);
const ASCTIME_DATE = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ${MONTH} ([ \\d]\\d) ${TIME} (\\d{4})$`);

/** Milliseconds since the epoch of valid calendar fields, or null (e.g. 30 Feb, 25:00). */
function utc(year: number, month: string, day: number, h: number, m: number, s: number): number | null {
  const monthIndex = MONTHS.indexOf(month as (typeof MONTHS)[number]);
  // A leap second (:60) is allowed by the grammar; it is read as the next second.
  if (h > 23 || m > 59 || s > 60 || day < 1) return null;
  const ms = Date.UTC(year, monthIndex, day, h, m, s);
  const check = new Date(ms - (s === 60 ? 1000 : 0));
  if (check.getUTCDate() !== day || check.getUTCMonth() !== monthIndex) return null;
  return ms;
}

/** Epoch ms of an HTTP-date in any of its three forms, or null. `now` resolves RFC 850's two-digit year. */
export function parseHttpDate(value: string, now: number): number | null {
  let match = IMF_FIXDATE.exec(value);
  if (match) {
    const [, d, mon, y, h, mi, s] = match as unknown as [string, string, string, string, string, string, string];
    return utc(Number(y), mon, Number(d), Number(h), Number(mi), Number(s));
  }
  match = RFC850_DATE.exec(value);
  if (match) {
    const [, d, mon, yy, h, mi, s] = match as unknown as [string, string, string, string, string, string, string];
    // RFC 9110: a two-digit year more than 50 years in the future means the most recent past such year.
    const currentYear = new Date(now).getUTCFullYear();
    let year = Math.floor(currentYear / 100) * 100 + Number(yy);
    if (year > currentYear + 50) year -= 100;
    return utc(year, mon, Number(d), Number(h), Number(mi), Number(s));
  }
  match = ASCTIME_DATE.exec(value);
  if (match) {
    const [, mon, d, h, mi, s, y] = match as unknown as [string, string, string, string, string, string, string];
    return utc(Number(y), mon, Number(d.trim()), Number(h), Number(mi), Number(s));
  }
  return null;
}

/**
 * The wait a `Retry-After` value asks for, in milliseconds from `now`: delta-seconds (`120`) or an
 * HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`). A date in the past gives 0. Anything else (negative,
 * fractional, garbage, absent) gives null, and the caller falls back to its own backoff. The result is
 * raw: bounds are applied by the retry decision.
 * @param now the clock, ms since the epoch
 */
export function parseRetryAfter(value: string | null | undefined, now: number): number | null {
  if (value === null || value === undefined) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) {
    const ms = Number(trimmed) * 1000;
    return Number.isFinite(ms) ? ms : null;
  }
  const date = parseHttpDate(trimmed, now);
  return date === null ? null : Math.max(0, date - now);
}
