/**
 * Standard Webhooks signatures, the receiver's side: `webhook-signature` holds one or more `v1,<base64>`
 * entries (space-separated; two during a sender's secret rotation), each an HMAC-SHA256 keyed with the
 * base64-decoded part of a `whsec_…` secret over `<webhook-id>.<webhook-timestamp>.<body>`.
 *
 * Written here with node:crypto, apart from core's signer on purpose: the receiver is a contract test, and a
 * check that shared the sender's code would agree with it whatever it did. Pure: the clock is a parameter.
 *
 * @see https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md (Verifying
 *   webhook authenticity; "Signature scheme"; "Rotating secrets")
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** The headers a signed request carries. @see Standard Webhooks */
export const SIGNATURE_HEADERS = ['webhook-id', 'webhook-timestamp', 'webhook-signature'] as const;

/** The `whsec_` prefix of a Standard Webhooks secret. */
const SECRET_PREFIX = 'whsec_';
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
/** Integer Unix seconds; at most 15 digits, so it stays a safe integer. */
const TIMESTAMP = /^\d{1,15}$/;

/**
 * What the signature check said of one request:
 * - `not_required`: no signing secret is configured, nothing was checked;
 * - `valid`: a `v1` signature verified with a configured secret;
 * - `missing`: `webhook-id`, `webhook-timestamp` or `webhook-signature` is absent or empty;
 * - `malformed`: `webhook-timestamp` is not integer Unix seconds;
 * - `stale`: the timestamp is further than the tolerance from the receiver's clock (either way);
 * - `wrong`: no `v1` signature verified with any configured secret;
 * - `unchecked`: the headers were fine but the body was not read whole (larger than the limit, or the client went
 *   away), so no HMAC could be computed: the 413 (or nothing) answers instead.
 */
export const SIGNATURE_RESULTS = [
  'not_required',
  'valid',
  'missing',
  'malformed',
  'stale',
  'wrong',
  'unchecked',
] as const;
export type SignatureResult = (typeof SIGNATURE_RESULTS)[number];

/** The results that refuse a request (a 401). */
export const SIGNATURE_FAILURES: ReadonlySet<SignatureResult> = new Set(['missing', 'malformed', 'stale', 'wrong']);

/** The outcome of {@link verifySignature}. Never carries a secret or a key. */
export interface SignatureCheck {
  result: SignatureResult;
  /** Index (in the configured list) of the first secret that verified, when `valid`; else null. */
  secretIndex: number | null;
  /** Why the request is refused, for the 401 body; null unless the result is a failure. */
  message: string | null;
}

/** What the verifier reads of a request. */
export interface SignedRequest {
  /** The `webhook-id` header, when sent. */
  id: string | undefined;
  /** The `webhook-timestamp` header, when sent. */
  timestamp: string | undefined;
  /** The `webhook-signature` header, when sent. */
  signature: string | undefined;
  /** The body bytes exactly as received; null when the body was not read whole. */
  body: Uint8Array | null;
}

/** The receiver's side of the scheme. */
export interface SignatureSettings {
  /** The keys of the configured secrets (base64-decoded), in their configured order. */
  keys: readonly Uint8Array[];
  /** Largest distance between `webhook-timestamp` and `nowSeconds`, either way (seconds). */
  toleranceSeconds: number;
  /** The receiver's clock (Unix seconds). */
  nowSeconds: number;
}

/**
 * The key of a `whsec_` secret (its base64 part decoded), or null when it is not `whsec_` followed by canonical
 * standard base64 of at least one byte. The secret itself is never echoed by a caller's message.
 */
export function signingSecretKey(secret: string): Buffer | null {
  if (!secret.startsWith(SECRET_PREFIX)) return null;
  const b64 = secret.slice(SECRET_PREFIX.length);
  if (!BASE64.test(b64)) return null;
  const key = Buffer.from(b64, 'base64');
  // Node's decoder skips what it cannot read; re-encoding tells a canonical encoding from a lenient reading of junk.
  if (key.length === 0 || key.toString('base64').replace(/=+$/, '') !== b64.replace(/=+$/, '')) return null;
  return key;
}

const NOT_REQUIRED: SignatureCheck = { result: 'not_required', secretIndex: null, message: null };

function failed(result: SignatureResult, message: string): SignatureCheck {
  return { result, secretIndex: null, message };
}

/** `v1` signatures of a `webhook-signature` value; entries of other versions are ignored (Standard Webhooks). */
function v1Signatures(header: string): string[] {
  const out: string[] = [];
  for (const entry of header.trim().split(/\s+/)) {
    const comma = entry.indexOf(',');
    if (comma > 0 && entry.slice(0, comma) === 'v1' && comma < entry.length - 1) out.push(entry.slice(comma + 1));
  }
  return out;
}

/**
 * Checks a request's Standard Webhooks signature, in the order the spec's reference verifiers use: headers present,
 * timestamp readable and within the tolerance of `nowSeconds` (both directions, against replays), then at least one
 * `v1` signature equal to the HMAC of one configured key. Every candidate is compared in constant time
 * (`timingSafeEqual`) and all are compared, so the time taken does not tell how close a forged signature came.
 * @param settings null when no secret is configured: every request is `not_required`
 */
export function verifySignature(request: SignedRequest, settings: SignatureSettings | null): SignatureCheck {
  if (settings === null) return NOT_REQUIRED;
  const absent = SIGNATURE_HEADERS.filter((_, i) => {
    const value = [request.id, request.timestamp, request.signature][i];
    return value === undefined || value.trim() === '';
  });
  if (absent.length > 0) {
    return failed('missing', `${absent.join(', ')} ${absent.length === 1 ? 'is' : 'are'} required (Standard Webhooks)`);
  }
  const id = request.id ?? '';
  const timestamp = request.timestamp ?? '';
  if (!TIMESTAMP.test(timestamp)) {
    return failed('malformed', 'webhook-timestamp must be integer Unix seconds');
  }
  const skew = Number(timestamp) - settings.nowSeconds;
  if (Math.abs(skew) > settings.toleranceSeconds) {
    const side = skew < 0 ? 'behind' : 'ahead of';
    return failed(
      'stale',
      `webhook-timestamp is ${Math.abs(skew)} s ${side} the receiver's clock; at most ${settings.toleranceSeconds} s are tolerated`,
    );
  }
  if (request.body === null) return { result: 'unchecked', secretIndex: null, message: null };
  const given = v1Signatures(request.signature ?? '').map((s) => Buffer.from(s, 'utf8'));
  if (given.length === 0) return failed('wrong', 'webhook-signature has no v1 signature');
  const body = request.body;
  let secretIndex: number | null = null;
  for (const [index, key] of settings.keys.entries()) {
    const expected = Buffer.from(
      createHmac('sha256', key).update(`${id}.${timestamp}.`, 'utf8').update(body).digest('base64'),
      'utf8',
    );
    for (const candidate of given) {
      // A length is no secret (every v1 signature is 44 characters); the bytes are compared in constant time.
      const same = candidate.length === expected.length && timingSafeEqual(candidate, expected);
      if (same && secretIndex === null) secretIndex = index;
    }
  }
  if (secretIndex === null) {
    const secrets = settings.keys.length === 1 ? 'the configured secret' : 'any configured secret';
    return failed('wrong', `no v1 signature of webhook-signature verifies with ${secrets}`);
  }
  return { result: 'valid', secretIndex, message: null };
}
