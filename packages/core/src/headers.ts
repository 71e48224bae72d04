/**
 * The headers of a webhook request: content type, delivery id, Basic auth and the optional Standard
 * Webhooks signature. Uses only web-platform globals (TextEncoder, btoa/atob, crypto.subtle).
 * @see SPEC §2, §4
 * @see RFC 7617 (Basic auth)
 * @see https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
 */
import { CoreError } from './errors.js';
import { VERSION } from './version.js';
import type { BasicAuth } from './types.js';

/** The stable delivery id: the same on every retry of a delivery, so a receiver can drop duplicates. */
export const DELIVERY_ID_HEADER = 'webhook-id';
/** Unix time (seconds) of the attempt, part of the signed content. */
export const TIMESTAMP_HEADER = 'webhook-timestamp';
/**
 * `v1,<base64 HMAC-SHA256>` when the webhook has a signing secret; during a rotation's overlap a second one, made with
 * the replaced secret, after a space.
 */
export const SIGNATURE_HEADER = 'webhook-signature';
/**
 * The contact the list is for: its externalCustomerId, percent-encoded UTF-8 (RFC 3986; unreserved characters as
 * they are). The body names the contact in each message, but the empty list `[]` (every message of the contact
 * expired) names nobody, and a receiver that replaces its copy of the contact needs to know whose copy it is.
 * Not covered by `webhook-signature`, which signs the id, the timestamp and the body (Standard Webhooks).
 */
export const CONTACT_HEADER = 'app-inbox-contact';
/** The User-Agent of every request. */
export const USER_AGENT = `app-inbox-webhooks/${VERSION}`;

/**
 * Header names a webhook's own headers ({@link RequestHeadersInput.headers}) may not use, lower case: the ones this
 * service sets on every request (a customer's copy would be overwritten, or would change what the signature and the
 * contract mean), and the ones that describe the connection or the body's framing, which the HTTP client owns (RFC
 * 9110 §7.6.1 connection options, RFC 9112 §6 framing): a customer's `content-length` or `transfer-encoding` would
 * make the request unreadable, and `expect` or `upgrade` would change the exchange itself. `content-encoding` would
 * tell the receiver to decode a body that is not encoded. `authorization` is not here: it is allowed when the
 * webhook has no Basic auth (a bearer token), and refused with it by the configuration's schema.
 * @see RFC 9110 §7.6.1, RFC 9112 §6, Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`)
 */
export const RESERVED_HEADER_NAMES: readonly string[] = [
  'host',
  'content-type',
  'content-length',
  'content-encoding',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'upgrade',
  'http2-settings',
  'te',
  'trailer',
  'expect',
  'user-agent',
  DELIVERY_ID_HEADER,
  TIMESTAMP_HEADER,
  SIGNATURE_HEADER,
];

/**
 * Prefixes of reserved header names: `proxy-*` is meant for a proxy on the way, never the receiver (RFC 9110 §11.7),
 * and `app-inbox-*` is this service's own namespace ({@link CONTACT_HEADER} and any header it adds later), so a
 * header it starts sending can never clash with one a customer configured.
 */
export const RESERVED_HEADER_PREFIXES: readonly string[] = ['proxy-', 'app-inbox-'];

const RESERVED_NAME_SET = new Set(RESERVED_HEADER_NAMES);

/** Whether a webhook's own headers may not use `name` (any case): see {@link RESERVED_HEADER_NAMES}. */
export function isReservedHeaderName(name: string): boolean {
  const lower = name.toLowerCase();
  return RESERVED_NAME_SET.has(lower) || RESERVED_HEADER_PREFIXES.some((prefix) => lower.startsWith(prefix));
}

const SECRET_PREFIX = 'whsec_';
const utf8 = new TextEncoder();

/** Standard base64 of bytes (btoa works on a "binary string", one char per byte). */
export function bytesToBase64(bytes: Uint8Array): string {
  let binary = '';
  // Chunked so that very long inputs do not exceed the argument limit of String.fromCharCode.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/**
 * `Basic <base64(utf8(username:password))>`. RFC 7617 §2: the username cannot contain ':'; UTF-8 is
 * the charset the RFC lets a server announce, and what every current client sends.
 * @throws CoreError `invalid_argument` when the username contains ':' (the message never shows the password)
 */
export function basicAuthorization(username: string, password: string): string {
  if (username.includes(':')) {
    throw new CoreError('invalid_argument', 'auth.username must not contain ":" (RFC 7617 §2)');
  }
  return `Basic ${bytesToBase64(utf8.encode(`${username}:${password}`))}`;
}

function secretKeyBytes(secret: string): Uint8Array<ArrayBuffer> {
  const b64 = secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : '';
  let binary: string;
  try {
    if (b64 === '') throw new Error('missing whsec_ prefix or key');
    binary = atob(b64);
  } catch (cause) {
    // The secret itself is never put into the message.
    throw new CoreError('invalid_argument', 'signingSecret must be "whsec_" followed by base64', { cause });
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * The Standard Webhooks signature: `v1,` + base64 of HMAC-SHA256, keyed with the base64-decoded
 * secret, over `${msgId}.${timestampSeconds}.${body}`.
 * @param secret `whsec_` + base64 key
 * @param msgId the delivery id (the `webhook-id` header)
 * @param timestampSeconds the `webhook-timestamp` header, integer Unix seconds
 * @param body the exact bytes sent (a string is encoded as UTF-8)
 */
export async function signStandardWebhook(
  secret: string,
  msgId: string,
  timestampSeconds: number,
  body: string | Uint8Array,
): Promise<string> {
  if (!Number.isSafeInteger(timestampSeconds) || timestampSeconds < 0) {
    throw new CoreError('invalid_argument', 'timestampSeconds must be a non-negative integer');
  }
  const key = await globalThis.crypto.subtle.importKey(
    'raw',
    secretKeyBytes(secret),
    { name: 'HMAC', hash: 'SHA-256' },
    false,
    ['sign'],
  );
  const prefix = utf8.encode(`${msgId}.${timestampSeconds}.`);
  const bodyBytes = typeof body === 'string' ? utf8.encode(body) : body;
  const content = new Uint8Array(prefix.length + bodyBytes.length);
  content.set(prefix, 0);
  content.set(bodyBytes, prefix.length);
  const mac = await globalThis.crypto.subtle.sign('HMAC', key, content);
  return `v1,${bytesToBase64(new Uint8Array(mac))}`;
}

const UNRESERVED = /^[A-Za-z0-9._~-]*$/;

/** RFC 3986 percent-encoding of the UTF-8 bytes of `value`, unreserved characters left as they are. */
export function percentEncode(value: string): string {
  if (UNRESERVED.test(value)) return value;
  let out = '';
  for (const byte of utf8.encode(value)) {
    const char = String.fromCharCode(byte);
    out += UNRESERVED.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Input of {@link buildRequestHeaders}. */
export interface RequestHeadersInput {
  /** The delivery's stable id (same on every retry). */
  deliveryId: string;
  /** The contact of the delivery (the {@link CONTACT_HEADER} header). */
  externalCustomerId: string;
  /** The exact body that is sent. */
  body: string | Uint8Array;
  /** Unix time of this attempt (seconds, integer). */
  timestampSeconds: number;
  /** Basic auth of the webhook, when configured. */
  auth?: BasicAuth;
  /** Standard Webhooks secret (`whsec_...`), when configured. */
  signingSecret?: string;
  /**
   * A replaced signing secret that still signs beside `signingSecret` (a rotation's overlap, so that a receiver
   * can move to the new secret at its own pace): `webhook-signature` then lists both signatures, space-separated,
   * the current one first, as Standard Webhooks allows. Ignored without `signingSecret`.
   */
  previousSigningSecret?: string;
  /**
   * The webhook's own static headers (an API key, a routing header), sent on every attempt. Names are
   * case-insensitive; the configuration's schema has already refused the reserved ones. A reserved name found here
   * anyway (a configuration stored by hand) is left out, and so is `authorization` when `auth` is set: the service's
   * own headers always win.
   */
  headers?: Readonly<Record<string, string>>;
}

/**
 * The headers of one attempt, names in lower case: `content-type: application/json`, `user-agent`,
 * `webhook-id`, `webhook-timestamp`, `app-inbox-contact`, plus `authorization` with Basic auth,
 * `webhook-signature` with a signing secret, and the webhook's own headers.
 * @see SPEC §4 (POST, JSON, stable delivery identifier)
 */
export async function buildRequestHeaders(input: RequestHeadersInput): Promise<Record<string, string>> {
  if (input.deliveryId === '') throw new CoreError('invalid_argument', 'deliveryId must not be empty');
  if (input.externalCustomerId === '') throw new CoreError('invalid_argument', 'externalCustomerId must not be empty');
  if (!Number.isSafeInteger(input.timestampSeconds) || input.timestampSeconds < 0) {
    throw new CoreError('invalid_argument', 'timestampSeconds must be a non-negative integer');
  }
  const headers: Record<string, string> = {};
  // The webhook's own headers first, so that every header the service sets below is written over any of the same
  // name; a reserved one is not even copied (it could only come from a configuration the schema never saw).
  for (const [name, value] of Object.entries(input.headers ?? {})) {
    const lower = name.toLowerCase();
    if (isReservedHeaderName(lower) || (lower === 'authorization' && input.auth !== undefined)) continue;
    headers[lower] = value;
  }
  Object.assign(headers, {
    'content-type': 'application/json',
    'user-agent': USER_AGENT,
    [DELIVERY_ID_HEADER]: input.deliveryId,
    [TIMESTAMP_HEADER]: String(input.timestampSeconds),
    [CONTACT_HEADER]: percentEncode(input.externalCustomerId),
  });
  if (input.auth !== undefined) headers.authorization = basicAuthorization(input.auth.username, input.auth.password);
  if (input.signingSecret !== undefined) {
    const sign = (secret: string) => signStandardWebhook(secret, input.deliveryId, input.timestampSeconds, input.body);
    headers[SIGNATURE_HEADER] = await sign(input.signingSecret);
    if (input.previousSigningSecret !== undefined && input.previousSigningSecret !== input.signingSecret) {
      headers[SIGNATURE_HEADER] += ` ${await sign(input.previousSigningSecret)}`;
    }
  }
  return headers;
}
