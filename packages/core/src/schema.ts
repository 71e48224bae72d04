/**
 * Validation of the webhook configuration and of App Inbox messages (zod 4 schemas).
 *
 * Every check is a schema rule, and {@link validate} reports EVERY bad field by its path
 * (`messages[3].id`, `auth.password`), never only the first. Descriptions never contain the
 * value that was checked, so a wrong password or signing secret cannot leak through an error.
 *
 * @see SPEC §2 (webhook configuration), SPEC §4 (the message)
 */
import * as z from 'zod';
import { isReservedHeaderName } from './headers.js';
import type { WebhookConfig } from './types.js';

/** Default of `maxMessagesPerContact` (messages). @see SPEC §2 */
export const DEFAULT_MAX_MESSAGES_PER_CONTACT = 1000;
/** Largest accepted `maxMessagesPerContact` (messages). */
export const MAX_MESSAGES_PER_CONTACT_LIMIT = 10_000;

/**
 * The bounds the schemas enforce. String lengths are in UTF-16 code units (JavaScript `length`),
 * except `customDataBytes`, which counts UTF-8 bytes because it bounds the payload size.
 */
export const LIMITS = {
  /** Longest externalCustomerId (characters). */
  externalCustomerIdLength: 256,
  /** Longest title (characters). */
  titleLength: 1_000,
  /** Longest content (characters). */
  contentLength: 10_000,
  /** Longest category (characters). */
  categoryLength: 256,
  /** Longest URL: webhook url, image, link (characters). */
  urlLength: 2_048,
  /** Largest customData (UTF-8 bytes, 64 KiB). */
  customDataBytes: 64 * 1024,
  /** Earliest accepted createdDate: 2000-01-01T00:00:00Z (ms since the epoch, inclusive). */
  minCreatedDate: Date.UTC(2000, 0, 1),
  /** Latest accepted createdDate: 2100-01-01T00:00:00Z (ms since the epoch, inclusive). */
  maxCreatedDate: Date.UTC(2100, 0, 1),
  /** Longest Basic auth username (characters). */
  usernameLength: 256,
  /** Longest Basic auth password (characters). */
  passwordLength: 1_024,
  /** Smallest decoded signing secret (bytes). @see Standard Webhooks */
  signingSecretMinBytes: 24,
  /** Largest decoded signing secret (bytes). @see Standard Webhooks */
  signingSecretMaxBytes: 64,
  /** Smallest maxMessagesPerContact (messages). */
  minMessagesPerContact: 1,
  /** Largest maxMessagesPerContact (messages). */
  maxMessagesPerContact: MAX_MESSAGES_PER_CONTACT_LIMIT,
  /** Smallest rateLimitPerSecond (requests per second). */
  minRateLimitPerSecond: 1,
  /** Largest rateLimitPerSecond (requests per second). */
  maxRateLimitPerSecond: 10_000,
  /** Most headers of a webhook's own (`headers`). */
  maxHeaders: 20,
  /** Longest header name (characters; a name is ASCII). */
  headerNameLength: 256,
  /** Largest header value (bytes; a value is ASCII, one byte a character). */
  headerValueBytes: 4_096,
  /**
   * Largest sum of the headers' name and value lengths (bytes, 8 KiB). The request also carries the service's own
   * headers (Basic auth, two signatures in a rotation, the contact id, percent-encoded), and Node.js and IIS read at
   * most 16 KiB of headers by default, answering 431 past it (a failure that is never retried): 16 KiB of a
   * webhook's own headers alone was refused there. Half of it leaves room for the rest.
   */
  headersTotalBytes: 8 * 1024,
} as const;

/** One bad field: `field` is a path such as `messages[3].id` or `auth.password`; '' is the whole input. */
export type FieldViolation = { field: string; description: string };

/** The result of {@link validate}: the parsed value (defaults applied) or every violation. */
export type ValidationResult<T> = { ok: true; value: T } | { ok: false; violations: FieldViolation[] };

/** The Standard Webhooks secret format: `whsec_` then standard base64. */
const SIGNING_SECRET_PATTERN = /^whsec_([A-Za-z0-9+/]+={0,2})$/;
/** RFC 7617 §2: "The user-id and password MUST NOT contain any control characters". */
// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;

/** UTF-8 length of a string without allocating its bytes (lone surrogates count as U+FFFD, 3 bytes). */
export function utf8ByteLength(s: string): number {
  let bytes = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

/**
 * `allowSpaces`: blanks and control characters are let through for the URL parser to strip or percent-encode
 * (message links are passed on as given); a webhook URL is refused with them, so that the URL stored, read back and
 * logged is the one requests go to (the parser dropped a leading blank or a tab inside a path unseen).
 */
type UrlRule = { allowEmpty: boolean; allowCredentials: boolean; allowSpaces: boolean };

/** Whether `value` has an ASCII blank or control character (the WHATWG parser strips, drops or encodes them). */
function hasBlankOrControl(value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c <= 0x20 || c === 0x7f) return true;
  }
  return false;
}

/**
 * An http(s) URL of at most {@link LIMITS.urlLength} characters. One refinement so that a bad URL
 * yields one clear violation, not a cascade.
 */
function httpUrl(rule: UrlRule) {
  return z.string().superRefine((value, ctx) => {
    if (value === '' && rule.allowEmpty) return;
    if (value.includes('\u0000')) {
      ctx.addIssue({ code: 'custom', message: NUL_CHARACTER_MESSAGE });
      return;
    }
    if (value.length > LIMITS.urlLength) {
      ctx.addIssue({ code: 'custom', message: `must be at most ${LIMITS.urlLength} characters` });
      return;
    }
    if (!rule.allowSpaces && hasBlankOrControl(value)) {
      ctx.addIssue({ code: 'custom', message: 'must not contain spaces or control characters (percent-encode them)' });
      return;
    }
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      ctx.addIssue({
        code: 'custom',
        message: rule.allowEmpty ? 'must be an http(s) URL or empty' : 'must be an absolute http(s) URL',
      });
      return;
    }
    // http(s) are "special" WHATWG schemes: the parser already refused them without a host.
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      ctx.addIssue({ code: 'custom', message: 'must use the http or https scheme' });
      return;
    }
    if (!rule.allowCredentials && (url.username !== '' || url.password !== '')) {
      // Credentials in a URL end up in logs and proxies; they belong in `auth`. @see SPEC §2
      ctx.addIssue({ code: 'custom', message: 'must not contain a username or password; use auth instead' });
    }
  });
}

function isJsonText(value: string): boolean {
  try {
    JSON.parse(value);
    return true;
  } catch {
    return false;
  }
}

/**
 * A schema-level message that leaves a missing value to the per-parse map ("is required"):
 * zod gives a schema's own `error` precedence, which would otherwise hide that the field is absent.
 */
export function unlessMissing(message: string) {
  return (issue: { input?: unknown }) => (issue.input === undefined ? undefined : message);
}

/**
 * Why a string with U+0000 is refused: PostgreSQL's `text` cannot hold it, so a message that one store takes would
 * fail in the other; and receivers written in C-family languages often cut a string there.
 */
export const NUL_CHARACTER_MESSAGE = 'must not contain the NUL character (U+0000)';

/** A bounded string without U+0000; `nonBlank` also rejects strings of only whitespace. */
function boundedString(max: number, nonBlank = false) {
  const base = z
    .string()
    .max(max, { error: `must be at most ${max} characters` })
    .refine((s) => !s.includes('\u0000'), { error: NUL_CHARACTER_MESSAGE });
  return nonBlank ? base.refine((s) => s.trim() !== '', { error: 'must not be empty' }) : base;
}

/**
 * One App Inbox message in the seed's exact format. Unknown fields are rejected.
 * @see SPEC §4
 */
export const messageSchema = z.strictObject({
  externalCustomerId: boundedString(LIMITS.externalCustomerIdLength, true),
  id: z.guid({ error: unlessMissing('must be a UUID (8-4-4-4-12 hexadecimal digits)') }),
  createdDate: z
    .number({ error: unlessMissing('must be a number of milliseconds since the epoch') })
    .int({ error: 'must be an integer number of milliseconds since the epoch' })
    .min(LIMITS.minCreatedDate, { error: 'must not be before 2000-01-01T00:00:00Z' })
    .max(LIMITS.maxCreatedDate, { error: 'must not be after 2100-01-01T00:00:00Z' }),
  title: boundedString(LIMITS.titleLength),
  content: boundedString(LIMITS.contentLength),
  image: httpUrl({ allowEmpty: true, allowCredentials: true, allowSpaces: true }).optional(),
  link: httpUrl({ allowEmpty: true, allowCredentials: true, allowSpaces: true }).optional(),
  category: boundedString(LIMITS.categoryLength),
  customData: z
    .string()
    .superRefine((value, ctx) => {
      if (utf8ByteLength(value) > LIMITS.customDataBytes) {
        ctx.addIssue({ code: 'custom', message: `must be at most ${LIMITS.customDataBytes} bytes of UTF-8` });
      } else if (!isJsonText(value)) {
        ctx.addIssue({ code: 'custom', message: 'must be valid JSON text' });
      }
    })
    .optional(),
});

/** The webhook request body: a JSON array of messages. @see SPEC §4 */
export const messageListSchema = z.array(messageSchema);

/** Basic authentication of the webhook. @see SPEC §2, RFC 7617 */
export const basicAuthSchema = z.strictObject({
  type: z.literal('basic', { error: unlessMissing('must be "basic", the only supported type') }),
  username: z
    .string()
    .min(1, { error: 'must not be empty' })
    .max(LIMITS.usernameLength, { error: `must be at most ${LIMITS.usernameLength} characters` })
    .refine((s) => !s.includes(':'), { error: 'must not contain ":" (RFC 7617 §2)' })
    .refine((s) => !CONTROL_CHARACTERS.test(s), { error: 'must not contain control characters (RFC 7617 §2)' }),
  password: z
    .string()
    .min(1, { error: 'must not be empty' })
    .max(LIMITS.passwordLength, { error: `must be at most ${LIMITS.passwordLength} characters` })
    .refine((s) => !CONTROL_CHARACTERS.test(s), { error: 'must not contain control characters (RFC 7617 §2)' }),
});

/** Decoded length of a standard base64 string, or null when it is not valid base64. */
function base64DecodedLength(b64: string): number | null {
  try {
    return atob(b64).length;
  } catch {
    return null;
  }
}

/** A Standard Webhooks signing secret: `whsec_` + base64 of 24..64 random bytes. */
export const signingSecretSchema = z.string().superRefine((value, ctx) => {
  const match = SIGNING_SECRET_PATTERN.exec(value);
  const bytes = match?.[1] === undefined ? null : base64DecodedLength(match[1]);
  if (bytes === null) {
    ctx.addIssue({ code: 'custom', message: 'must be "whsec_" followed by base64' });
  } else if (bytes < LIMITS.signingSecretMinBytes || bytes > LIMITS.signingSecretMaxBytes) {
    ctx.addIssue({
      code: 'custom',
      message: `must decode to ${LIMITS.signingSecretMinBytes}..${LIMITS.signingSecretMaxBytes} bytes`,
    });
  }
});

/** An HTTP field name: a token, one or more tchar. @see RFC 9110 §5.1, §5.6.2 */
const HTTP_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** An HTTP field value as this service sends one: visible ASCII, spaces and tabs (no obs-text). @see RFC 9110 §5.5 */
const HEADER_VALUE = /^[\t\x20-\x7e]*$/;

/**
 * The webhook's own headers: a map of name to value, output with the names in lower case. A header is named in a
 * violation by its lower-case name (`headers["x-api-key"]`); a name that is not a token or is too long is only
 * counted, never repeated (`X-Api-Key: abc` sent as a name carries its value), and no description ever contains a
 * value. Past {@link LIMITS.maxHeaders} headers only the count is reported.
 * @see RFC 9110 §5 (field names are case-insensitive tokens; values without CR, LF or NUL)
 */
export const webhookHeadersSchema = z
  // Not z.record: it copies the map into a plain object, where a `__proto__` key (an own key of any JSON.parse
  // result) is lost without an error, and it names a bad value's key whatever that key is. So the input is taken as
  // it is, and every key and value is checked below.
  .custom<Record<string, string>>(isPlainObject, { error: 'must be a record' })
  .superRefine((headers: Record<string, unknown>, ctx) => {
    const entries = Object.entries(headers);
    if (entries.length > LIMITS.maxHeaders) {
      ctx.addIssue({ code: 'custom', message: `must have at most ${LIMITS.maxHeaders} headers` });
      return;
    }
    let tooLong = 0;
    let notTokens = 0;
    let totalBytes = 0;
    const seen = new Set<string>();
    const repeated = new Set<string>();
    for (const [name, value] of entries) {
      totalBytes += name.length + (typeof value === 'string' ? utf8ByteLength(value) : 0);
      if (name.length > LIMITS.headerNameLength) {
        tooLong += 1;
        continue;
      }
      if (!HTTP_TOKEN.test(name)) {
        notTokens += 1;
        continue;
      }
      const lower = name.toLowerCase();
      if (seen.has(lower)) repeated.add(lower);
      seen.add(lower);
      const path = [lower];
      if (lower === '__proto__') {
        ctx.addIssue({
          code: 'custom',
          path,
          message: 'cannot be used as a header name (a JavaScript object cannot hold it): use another name',
        });
      }
      if (isReservedHeaderName(lower)) {
        ctx.addIssue({
          code: 'custom',
          path,
          message: 'is a header the service sets itself or that would break the request: use another name',
        });
      }
      const message =
        typeof value !== 'string'
          ? 'must be a string'
          : value === ''
            ? 'must not be empty'
            : utf8ByteLength(value) > LIMITS.headerValueBytes
              ? `must be at most ${LIMITS.headerValueBytes} bytes`
              : !HEADER_VALUE.test(value)
                ? 'must be visible ASCII characters, spaces and tabs (no CR, LF, NUL, other control or non-ASCII characters)'
                : /^[ \t]|[ \t]$/.test(value)
                  ? 'must not start or end with a space or tab'
                  : null;
      if (message !== null) ctx.addIssue({ code: 'custom', path, message });
    }
    for (const lower of repeated) {
      ctx.addIssue({
        code: 'custom',
        path: [lower],
        message: 'is given more than once (header names are case-insensitive)',
      });
    }
    if (tooLong > 0) {
      ctx.addIssue({
        code: 'custom',
        message: `has ${tooLong} header name${tooLong === 1 ? '' : 's'} longer than ${LIMITS.headerNameLength} characters`,
      });
    }
    if (notTokens > 0) {
      ctx.addIssue({
        code: 'custom',
        message:
          `has ${notTokens} header name${notTokens === 1 ? ' that is not' : 's that are not'} an HTTP token ` +
          "(RFC 9110 §5.6.2: one or more letters, digits or !#$%&'*+-.^_`|~; not repeated here: it may hold a value)",
      });
    }
    if (totalBytes > LIMITS.headersTotalBytes) {
      ctx.addIssue({
        code: 'custom',
        message: `names and values together must be at most ${LIMITS.headersTotalBytes} bytes`,
      });
    }
  })
  .transform((headers) => {
    const lowered: Record<string, string> = {};
    for (const [name, value] of Object.entries(headers)) lowered[name.toLowerCase()] = value;
    return lowered;
  });

/** Whether `value` is a plain object (its prototype Object.prototype or null), as z.record requires one. */
function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  const prototype: unknown = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/** Whether `headers` (unchecked input) names `authorization`, in any case. */
function namesAuthorization(headers: unknown): boolean {
  return (
    headers !== null &&
    typeof headers === 'object' &&
    Object.keys(headers).some((name) => name.toLowerCase() === 'authorization')
  );
}

/** An integer from `min` to `max`, each bound named in its violation. */
function integerBetween(min: number, max: number) {
  return z
    .number({ error: unlessMissing('must be an integer') })
    .int({ error: 'must be an integer' })
    .min(min, { error: `must be at least ${min}` })
    .max(max, { error: `must be at most ${max}` });
}

/**
 * The webhook configuration of one account; `maxMessagesPerContact` defaults to 1,000,
 * `enabled` to true, `rateLimitPerSecond` to none (no limit). Unknown fields are rejected.
 * @see SPEC §2
 */
export const webhookConfigSchema = z
  .strictObject({
    url: httpUrl({ allowEmpty: false, allowCredentials: false, allowSpaces: false }),
    auth: basicAuthSchema.optional(),
    maxMessagesPerContact: integerBetween(LIMITS.minMessagesPerContact, LIMITS.maxMessagesPerContact).default(
      DEFAULT_MAX_MESSAGES_PER_CONTACT,
    ),
    enabled: z.boolean().default(true),
    signingSecret: signingSecretSchema.optional(),
    rateLimitPerSecond: integerBetween(LIMITS.minRateLimitPerSecond, LIMITS.maxRateLimitPerSecond).optional(),
    headers: webhookHeadersSchema.optional(),
  })
  // Basic auth is sent as `authorization`: an own `authorization` header beside it could only be overwritten.
  // Checked even when other fields are bad (`when`), so that one answer lists every mistake.
  .check(
    z.superRefine(
      (config, ctx) => {
        if (config.auth !== undefined && namesAuthorization(config.headers)) {
          ctx.addIssue({
            code: 'custom',
            path: ['headers', 'authorization'],
            message: 'must not be set together with Basic auth, which is sent as the Authorization header',
          });
        }
      },
      // Any object, parsed or not: a missing or non-object configuration has nothing to compare (its own error says so).
      { when: (payload) => payload.value !== null && typeof payload.value === 'object' },
    ),
  );

/** What a caller may pass in (defaults not yet applied). */
export type WebhookConfigInput = z.input<typeof webhookConfigSchema>;

// Compile-time guarantee that the schema's output is a WebhookConfig.
const _outputIsWebhookConfig: (c: z.output<typeof webhookConfigSchema>) => WebhookConfig = (c) => c;

/** Fields whose value is a map: the segment after one is a key, not a field. */
const MAP_FIELD = /(?:^|\.)headers$/;

/**
 * `a.b[3].c` from zod's path segments; a key that is not an identifier is quoted in brackets, and so is every key
 * of a map (`headers["auth"]`), so that a header's name is never read as a field (or renamed as one).
 */
export function formatPath(prefix: string, path: ReadonlyArray<PropertyKey>): string {
  let out = prefix;
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (typeof segment === 'string' && /^[A-Za-z_$][\w$]*$/.test(segment) && !MAP_FIELD.test(out))
      out += out === '' ? segment : `.${segment}`;
    else out += `[${JSON.stringify(String(segment))}]`;
  }
  return out;
}

/**
 * Per-parse messages: a missing field says "is required" instead of "expected string, received
 * undefined". Only types are ever named, never the rejected value.
 */
const errorMap: z.core.$ZodErrorMap = (issue) => {
  if (issue.input === undefined) return 'is required';
  if (issue.code === 'invalid_type') return `must be ${article(issue.expected)}`;
  return undefined;
};

function article(expected: string): string {
  return /^[aeiou]/.test(expected) ? `an ${expected}` : `a ${expected}`;
}

/**
 * Validates `input` against `schema` and lists every bad field.
 * @param pathPrefix prepended to every field path, e.g. `messages` gives `messages[3].id`.
 */
export function validate<T>(schema: z.ZodType<T>, input: unknown, pathPrefix = ''): ValidationResult<T> {
  const result = schema.safeParse(input, { error: errorMap });
  if (result.success) return { ok: true, value: result.data };
  const violations: FieldViolation[] = [];
  for (const issue of result.error.issues) {
    if (issue.code === 'unrecognized_keys') {
      // One violation per unknown key, named by its own path, so a caller sees exactly what to remove.
      for (const key of issue.keys) {
        violations.push({ field: formatPath(pathPrefix, [...issue.path, key]), description: 'is not a known field' });
      }
    } else {
      violations.push({ field: formatPath(pathPrefix, issue.path), description: issue.message });
    }
  }
  return { ok: false, violations };
}

/** A message that passed {@link messageSchema}. @see SPEC §4 */
export type ValidMessage = z.output<typeof messageSchema>;

/** Validates one message in the seed's format. @see SPEC §4 */
export function validateMessage(input: unknown, pathPrefix = ''): ValidationResult<ValidMessage> {
  return validate(messageSchema, input, pathPrefix);
}

/** Validates a webhook request body (an array of messages). @see SPEC §4 */
export function validateMessageList(input: unknown, pathPrefix = ''): ValidationResult<ValidMessage[]> {
  return validate(messageListSchema, input, pathPrefix);
}

/** Validates a webhook configuration and applies its defaults. @see SPEC §2 */
export function validateWebhookConfig(input: unknown, pathPrefix = ''): ValidationResult<WebhookConfig> {
  return validate<WebhookConfig>(webhookConfigSchema, input, pathPrefix);
}
