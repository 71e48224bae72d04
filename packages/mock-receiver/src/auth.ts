/**
 * Basic authentication of incoming requests, and redaction of credentials in what is recorded.
 * @see RFC 7617, SPEC §2 ("A password is a secret: never logged, never returned")
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

/** What the Authorization header says about the configured credentials. */
export type CredentialCheck = 'not_required' | 'valid' | 'missing' | 'wrong';

/** Headers whose values are secrets; recorded as `<scheme> [redacted]` or `[redacted]`. */
export const REDACTED_HEADERS: ReadonlySet<string> = new Set(['authorization', 'proxy-authorization', 'cookie']);
export const REDACTED = '[redacted]';

const BASIC = /^\s*basic\s+([A-Za-z0-9+/]+={0,2})\s*$/i;

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/**
 * Compares `Authorization: Basic ...` with the configured user and password. The comparison runs in
 * constant time over digests, so the answer's timing does not reveal how much of a guess was right.
 */
export function checkCredentials(
  header: string | undefined,
  expected: { username: string; password: string } | null,
): CredentialCheck {
  if (expected === null) return 'not_required';
  if (header === undefined || header.trim() === '') return 'missing';
  const match = BASIC.exec(header);
  if (match?.[1] === undefined) return 'wrong';
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const same = timingSafeEqual(digest(decoded), digest(`${expected.username}:${expected.password}`));
  return same ? 'valid' : 'wrong';
}

function redactValue(value: string): string {
  const scheme = /^\s*([A-Za-z][\w-]*)\s+\S/.exec(value)?.[1];
  return scheme === undefined ? REDACTED : `${scheme} ${REDACTED}`;
}

/** A copy of the headers with the secret ones redacted (the auth scheme stays, to help debugging). */
export function redactHeaders(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    if (!REDACTED_HEADERS.has(name)) out[name] = value;
    else if (name === 'cookie') out[name] = REDACTED;
    else out[name] = Array.isArray(value) ? value.map(redactValue) : redactValue(value);
  }
  return out;
}
