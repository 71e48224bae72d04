/**
 * Retry classification: one data table from the outcome of an attempt to a verdict.
 *
 * The rows marked `source: 'spec'` are SPEC §5 word for word. Where the seed is silent we follow
 * the Standard Webhooks conventions (3xx is a failure and redirects are not followed; 410 Gone
 * disables the endpoint) and say why in each row's `why`. Note that this contract retries 401 and
 * does not retry 400 — unlike the common "retry every non-2xx" rule.
 *
 * Errors are classified by stable codes only (undici `code`, errno, OpenSSL/Node TLS codes), never by
 * their messages.
 *
 * @see SPEC §5
 * @see https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
 */
import { parseRetryAfter } from './retry-after.js';
import type { Verdict } from './types.js';

/**
 * What one attempt produced, as the sender reports it.
 * - `response`: the receiver answered with a status line. `retryAfter` is the raw `Retry-After` header.
 * - `error`: no usable answer. `code` is an undici error code (`UND_ERR_*`), an errno (`ECONNREFUSED`),
 *   a TLS code (`CERT_HAS_EXPIRED`, `ERR_TLS_*`, `ERR_SSL_*`) or our own `blocked_address` (the URL
 *   resolved to an address the SSRF guard refuses). `status` is the status line when it had already
 *   arrived before the error (e.g. the body exceeded the size cap): the receiver's answer then decides.
 */
export type AttemptOutcome =
  | { kind: 'response'; status: number; retryAfter?: string | null }
  | { kind: 'error'; code: string; status?: number; retryAfter?: string | null };

/** The kinds of transport error the table distinguishes. */
export type ErrorKind =
  'timeout' | 'refused' | 'reset' | 'dns' | 'tls' | 'body_too_large' | 'blocked_address' | 'network';

/** Our own error code for a request refused before it was sent because the address is not allowed. */
export const BLOCKED_ADDRESS_CODE = 'blocked_address';

/** The verdict of one attempt. */
export interface Classification {
  verdict: Verdict;
  /** Stable reason for logs, metrics and the attempt history: `http_503`, `timeout`, `tls`, ... */
  reason: string;
  /** The wait `Retry-After` asked for (ms, raw, before clamping); only on 429 and 503. */
  retryAfterMs?: number;
  /** True on 410 Gone: the receiver asks us to stop; the endpoint should be paused (disabled). */
  pauseEndpoint?: boolean;
}

/** Where a row comes from: the contract (SPEC §5) or our documented choice where the seed is silent. */
export type RuleSource = 'spec' | 'choice';

/** One row of {@link CLASSIFICATION_TABLE}. */
export interface ClassificationRule {
  readonly verdict: Verdict;
  readonly source: RuleSource;
  /** Why this verdict (for choices) — also rendered in the package README. */
  readonly why: string;
  /** Read `Retry-After` on this answer. */
  readonly honoursRetryAfter?: boolean;
  /** Pause the endpoint (Standard Webhooks: 410 Gone disables it). */
  readonly pauseEndpoint?: boolean;
}

/**
 * The one table. Lookup order for a response: `status[code]`, then `statusClass[hundreds]`, then
 * `unknownStatus`. For an error: its `status` when it came before the error, else `error[errorKind(code)]`.
 */
export const CLASSIFICATION_TABLE = {
  status: {
    400: { verdict: 'failed', source: 'spec', why: 'the payload cannot be processed; kept for inspection and replay' },
    401: { verdict: 'retry', source: 'spec', why: 'authentication failed; the customer may fix the credentials' },
    403: {
      verdict: 'retry',
      source: 'choice',
      why: "the seed names its retried authentication failure '401 Forbidden' (403's reason phrase): a receiver built from it may answer 403, and the customer may fix the credentials",
    },
    408: {
      verdict: 'retry',
      source: 'choice',
      why: 'Request Timeout: the receiver timed out reading; same as a timeout',
    },
    410: {
      verdict: 'failed',
      source: 'choice',
      why: 'Gone: the receiver asks us to stop (Standard Webhooks); the endpoint is paused',
      pauseEndpoint: true,
    },
    429: {
      verdict: 'retry',
      source: 'spec',
      why: 'the message number limit is exceeded; Retry-After honoured',
      honoursRetryAfter: true,
    },
    500: { verdict: 'retry', source: 'spec', why: 'temporary processing issue' },
    502: { verdict: 'retry', source: 'spec', why: 'temporary processing issue' },
    503: {
      verdict: 'retry',
      source: 'spec',
      why: 'temporary processing issue; Retry-After honoured',
      honoursRetryAfter: true,
    },
    504: { verdict: 'retry', source: 'choice', why: 'Gateway Timeout: a proxy in front of the receiver timed out' },
  },
  statusClass: {
    1: { verdict: 'failed', source: 'choice', why: '1xx is not a final answer; a receiver that ends on one is broken' },
    2: { verdict: 'delivered', source: 'spec', why: 'processed; the messages in it count as delivered' },
    3: {
      verdict: 'failed',
      source: 'choice',
      why: 'redirects are not followed (Standard Webhooks; a redirect could leave the allowed address)',
    },
    4: {
      verdict: 'failed',
      source: 'choice',
      why: 'a client error (404, 409, 413, 422, ...) will not fix itself',
    },
    5: { verdict: 'retry', source: 'choice', why: 'a server error (501, 505, 507, ...) is treated as temporary' },
  },
  unknownStatus: { verdict: 'failed', source: 'choice', why: 'a status outside 100..599 is not HTTP' },
  error: {
    timeout: { verdict: 'retry', source: 'spec', why: 'no answer in time (connect, headers or body)' },
    refused: { verdict: 'retry', source: 'spec', why: 'connection refused' },
    reset: { verdict: 'retry', source: 'spec', why: 'connection reset or closed' },
    dns: {
      verdict: 'retry',
      source: 'choice',
      why: 'name resolution fails transiently; a wrong host runs out of attempts',
    },
    tls: {
      verdict: 'retry',
      source: 'choice',
      why: 'the customer may fix the certificate; runs out of attempts otherwise',
    },
    network: {
      verdict: 'retry',
      source: 'choice',
      why: 'other transport errors (unreachable, unknown codes) may pass',
    },
    body_too_large: {
      verdict: 'failed',
      source: 'choice',
      why: 'answer too large before a status was known: a broken receiver; replay is available',
    },
    blocked_address: {
      verdict: 'failed',
      source: 'choice',
      why: 'the URL resolves to a refused address (SSRF guard); retrying would not change that',
    },
  },
} as const satisfies {
  status: Record<number, ClassificationRule>;
  statusClass: Record<1 | 2 | 3 | 4 | 5, ClassificationRule>;
  unknownStatus: ClassificationRule;
  error: Record<ErrorKind, ClassificationRule>;
};

/** Error codes by kind. Anything not listed (and not a TLS prefix below) is `network`. */
export const ERROR_CODE_KINDS: Readonly<Record<string, ErrorKind>> = {
  // undici timeouts, our own deadline abort, and the socket-level ones.
  UND_ERR_CONNECT_TIMEOUT: 'timeout',
  UND_ERR_HEADERS_TIMEOUT: 'timeout',
  UND_ERR_BODY_TIMEOUT: 'timeout',
  // The sender aborts a request when its deadline passes (or on shutdown, where a retry is right too).
  UND_ERR_ABORTED: 'timeout',
  ABORT_ERR: 'timeout',
  ETIMEDOUT: 'timeout',
  ESOCKETTIMEDOUT: 'timeout',
  ERR_TLS_HANDSHAKE_TIMEOUT: 'timeout',
  ECONNREFUSED: 'refused',
  ECONNRESET: 'reset',
  ECONNABORTED: 'reset',
  EPIPE: 'reset',
  UND_ERR_SOCKET: 'reset',
  UND_ERR_CLOSED: 'reset',
  ENOTFOUND: 'dns',
  EAI_AGAIN: 'dns',
  EAI_FAIL: 'dns',
  EAI_NONAME: 'dns',
  EAI_NODATA: 'dns',
  ENODATA: 'dns',
  CERT_HAS_EXPIRED: 'tls',
  CERT_NOT_YET_VALID: 'tls',
  CERT_REVOKED: 'tls',
  CERT_UNTRUSTED: 'tls',
  CERT_REJECTED: 'tls',
  CERT_SIGNATURE_FAILURE: 'tls',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'tls',
  SELF_SIGNED_CERT_IN_CHAIN: 'tls',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'tls',
  UNABLE_TO_GET_ISSUER_CERT: 'tls',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'tls',
  HOSTNAME_MISMATCH: 'tls',
  ERR_TLS_CERT_ALTNAME_INVALID: 'tls',
  UND_ERR_RESPONSE_EXCEEDED_MAX_SIZE: 'body_too_large',
  [BLOCKED_ADDRESS_CODE]: 'blocked_address',
  EHOSTUNREACH: 'network',
  ENETUNREACH: 'network',
  EHOSTDOWN: 'network',
  ENETDOWN: 'network',
  EADDRNOTAVAIL: 'network',
};

/** Code prefixes that are TLS failures (Node's `ERR_TLS_*`, OpenSSL's `ERR_SSL_*`). */
export const TLS_CODE_PREFIXES: readonly string[] = ['ERR_TLS_', 'ERR_SSL_'];

/** The kind of a transport error code; unknown codes are `network`. */
export function errorKind(code: string): ErrorKind {
  const known = Object.hasOwn(ERROR_CODE_KINDS, code) ? ERROR_CODE_KINDS[code] : undefined;
  if (known !== undefined) return known;
  if (TLS_CODE_PREFIXES.some((prefix) => code.startsWith(prefix))) return 'tls';
  return 'network';
}

/** The row that decides a status. Total: every number maps to exactly one row. */
export function statusRule(status: number): ClassificationRule {
  const exact: Record<number, ClassificationRule> = CLASSIFICATION_TABLE.status;
  const rule = Object.hasOwn(exact, status) ? exact[status] : undefined;
  if (rule !== undefined) return rule;
  if (!Number.isInteger(status) || status < 100 || status > 599) return CLASSIFICATION_TABLE.unknownStatus;
  return CLASSIFICATION_TABLE.statusClass[Math.floor(status / 100) as 1 | 2 | 3 | 4 | 5];
}

function fromStatus(status: number, retryAfter: string | null | undefined, now: number): Classification {
  const rule = statusRule(status);
  const result: Classification = { verdict: rule.verdict, reason: `http_${status}` };
  if (rule.honoursRetryAfter === true) {
    const ms = parseRetryAfter(retryAfter, now);
    if (ms !== null) result.retryAfterMs = ms;
  }
  if (rule.pauseEndpoint === true) result.pauseEndpoint = true;
  return result;
}

/**
 * The verdict of one attempt: `delivered`, `retry` or `failed`, with a stable reason.
 * @param now the clock (ms since the epoch), to read a `Retry-After` HTTP-date
 * @see SPEC §5
 */
export function classify(outcome: AttemptOutcome, now: number): Classification {
  if (outcome.kind === 'response') return fromStatus(outcome.status, outcome.retryAfter, now);
  // The status line is the receiver's answer; what happened to the body afterwards (too large, cut
  // off) does not change what it said.
  if (outcome.status !== undefined) return fromStatus(outcome.status, outcome.retryAfter, now);
  const kind = errorKind(outcome.code);
  return { verdict: CLASSIFICATION_TABLE.error[kind].verdict, reason: kind };
}
