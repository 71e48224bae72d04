/**
 * The API's typed errors and their gRPC form. Every error a handler raises is an {@link ApiError} with a
 * `code` from {@link API_ERROR_CODES}; the gRPC status of each code is one exhaustive `Record`, so a new code
 * cannot be left unmapped. Unknown errors become `internal` at the boundary, with a generic message: an
 * unexpected error's text may hold data the caller must not see (a connection string, a secret).
 *
 * The status sent is the standard rich error model: `grpc-status-details-bin` carries a `google.rpc.Status`
 * whose details hold a `google.rpc.ErrorInfo` (reason, domain) and, for bad input, a `google.rpc.BadRequest`
 * listing every field violation. @see CONVENTIONS §6, https://google.aip.dev/193
 */
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import type { Any } from '../gen/google/protobuf/any.js';
import { BadRequest, ErrorInfo } from '../gen/google/rpc/error_details.js';
import { Status } from '../gen/google/rpc/status.js';
import { isStoreError, type StoreErrorCode } from '../store/errors.js';

export const API_ERROR_CODES = [
  'invalid_argument',
  'webhook_not_found',
  'webhook_not_configured',
  'webhook_secret_unreadable',
  'delivery_not_found',
  'conflict',
  'shutting_down',
  'store_unavailable',
  'too_many_watches',
  'watcher_too_slow',
  'internal',
] as const;
export type ApiErrorCode = (typeof API_ERROR_CODES)[number];

/** gRPC status of each error code. */
export const GRPC_STATUS_BY_CODE: Readonly<Record<ApiErrorCode, status>> = {
  invalid_argument: status.INVALID_ARGUMENT,
  webhook_not_found: status.NOT_FOUND,
  // Publishing for an account without a webhook is refused rather than stored for later: the caller
  // most likely has the wrong account id, and nothing would ever deliver the messages. @see README
  webhook_not_configured: status.FAILED_PRECONDITION,
  // UpdateWebhook would keep a stored secret whose key is gone: it must be sent again (SECURITY.md, lost key).
  webhook_secret_unreadable: status.FAILED_PRECONDITION,
  delivery_not_found: status.NOT_FOUND,
  // A transaction kept conflicting with concurrent ones (PostgreSQL): the client may retry the call.
  conflict: status.ABORTED,
  shutting_down: status.UNAVAILABLE,
  // The database cannot be reached (refused, reset or timed-out connection; shutting down): the caller may retry.
  store_unavailable: status.UNAVAILABLE,
  // WatchDeliveries: --max-watch-streams streams are open; or this stream's reader fell too far behind.
  too_many_watches: status.RESOURCE_EXHAUSTED,
  watcher_too_slow: status.RESOURCE_EXHAUSTED,
  internal: status.INTERNAL,
};

/** `google.rpc.ErrorInfo.domain` of every error this service sends. */
export const ERROR_DOMAIN = 'app-inbox.webhooks';

/** One bad field of a request: `field` is its path with proto field names, e.g. `messages[3].id`. */
export interface FieldViolation {
  field: string;
  description: string;
}

export class ApiError extends Error {
  override readonly name = 'ApiError';
  readonly code: ApiErrorCode;
  readonly violations: readonly FieldViolation[];

  constructor(
    code: ApiErrorCode,
    message: string,
    options: { cause?: unknown; violations?: readonly FieldViolation[] } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.violations = options.violations ?? [];
  }
}

/**
 * Most bytes (UTF-8) of an INVALID_ARGUMENT status message. The message travels twice in the trailers (in
 * `grpc-message`, percent-encoded, and in `grpc-status-details-bin`), beside the violations of
 * {@link MAX_VIOLATION_BYTES}; a description may echo a caller's value (a URL's host: up to 2 KB), so the message is
 * bounded in bytes, not only in violations, and the status stays small enough for the trailers.
 */
export const MAX_MESSAGE_BYTES = 1024;

/** Most bytes (UTF-8) of one violation (`field: description`) in the status message; a longer one is cut, ending in "…". */
export const MAX_MESSAGE_VIOLATION_BYTES = 256;

/** Most violations the status message names; the details list more (up to {@link MAX_VIOLATION_BYTES}). */
const MAX_MESSAGE_VIOLATIONS = 20;

/** `text` cut to at most `maxBytes` bytes of UTF-8 on a character boundary, ending in "…" when cut. */
function truncateUtf8(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text) <= maxBytes) return text;
  const budget = maxBytes - Buffer.byteLength('…');
  let cut = '';
  let bytes = 0;
  for (const char of text) {
    bytes += Buffer.byteLength(char);
    if (bytes > budget) break;
    cut += char;
  }
  return `${cut}…`;
}

/**
 * An INVALID_ARGUMENT error listing every violation; its message is readable on its own: it names the first
 * violations that fit in {@link MAX_MESSAGE_BYTES} (each cut to {@link MAX_MESSAGE_VIOLATION_BYTES}) and counts the rest.
 */
export function invalidArgument(violations: readonly FieldViolation[]): ApiError {
  const noun = violations.length === 1 ? 'field' : 'fields';
  const head = `${violations.length} invalid ${noun}: `;
  // Room kept for the longest "; and N more" tail, so that the tail never pushes the message past the bound.
  const tailRoom = Buffer.byteLength(`; and ${violations.length} more`);
  const shown: string[] = [];
  let bytes = Buffer.byteLength(head) + tailRoom;
  for (const v of violations.slice(0, MAX_MESSAGE_VIOLATIONS)) {
    const item = truncateUtf8(`${v.field || '(request)'}: ${v.description}`, MAX_MESSAGE_VIOLATION_BYTES);
    const cost = Buffer.byteLength(item) + (shown.length === 0 ? 0 : 2);
    if (bytes + cost > MAX_MESSAGE_BYTES) break;
    bytes += cost;
    shown.push(item);
  }
  const more = violations.length > shown.length ? `; and ${violations.length - shown.length} more` : '';
  return new ApiError('invalid_argument', `${head}${shown.join('; ')}${more}`, { violations });
}

/** The API code of each store error code (store messages name no secret, so they may be shown). */
const API_CODE_BY_STORE_CODE: Readonly<Record<StoreErrorCode, ApiErrorCode>> = {
  invalid_argument: 'invalid_argument',
  conflict: 'conflict',
  closed: 'shutting_down',
  schema_too_new: 'internal',
  webhook_missing: 'webhook_not_configured',
};

/** Socket errors of a database connection that cannot be made or was lost. */
const UNREACHABLE_ERRNO = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
]);
/**
 * PostgreSQL SQLSTATEs of a server that cannot serve now: shutting down, starting, out of connections; and of a
 * session it ended for idling inside a transaction (the store's idle-in-transaction timeout: this process stalled).
 */
const UNAVAILABLE_SQLSTATE = new Set(['57P01', '57P02', '57P03', '53300', '25P03']);

/**
 * Whether `error` says the database cannot be reached (node-postgres passes socket errors and its own connection
 * errors through as they are): the call failed for want of the store, not because of the request.
 */
function isStoreUnreachable(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string') {
    // Class 08: connection exception.
    if (UNREACHABLE_ERRNO.has(code) || UNAVAILABLE_SQLSTATE.has(code) || code.startsWith('08')) return true;
  }
  const message = error instanceof Error ? error.message : '';
  return /^(Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error)/.test(
    message,
  );
}

/**
 * Any thrown value as an ApiError: ApiErrors pass through, store errors are mapped, a database that cannot be
 * reached is `store_unavailable` (UNAVAILABLE: the caller may retry), the rest is `internal`. The text of an
 * unexpected error is never shown (a driver's message may name the host or worse).
 */
export function toApiError(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  if (isStoreError(error)) {
    const code = API_CODE_BY_STORE_CODE[error.code];
    return new ApiError(code, code === 'internal' ? 'internal error' : error.message, { cause: error });
  }
  if (isStoreUnreachable(error)) {
    return new ApiError('store_unavailable', 'the store cannot be reached; try again', { cause: error });
  }
  return new ApiError('internal', 'internal error', { cause: error });
}

function pack(typeName: string, value: Uint8Array): Any {
  return { typeUrl: `type.googleapis.com/${typeName}`, value: Buffer.from(value) };
}

/**
 * Most bytes of field violations (paths and descriptions, UTF-8) one status carries. The status travels in the
 * trailers, which HTTP/2 peers bound (grpc-java's default is 8 KiB for all metadata; Node's own limit made a status
 * of 10,000 violations never arrive, and the call hung until its deadline).
 */
export const MAX_VIOLATION_BYTES = 4 * 1024;

/**
 * Most bytes (UTF-8) of one violation's field, and of its description, in the details; a longer one is cut, ending in
 * "…". A description may echo the caller's value (a URL's host): cut, it still fits, where it would have left the
 * details without the one violation the caller needs.
 */
export const MAX_DETAIL_VIOLATION_BYTES = 2048;

/**
 * The violations a status lists, each cut to {@link MAX_DETAIL_VIOLATION_BYTES}: every one while they fit
 * {@link MAX_VIOLATION_BYTES}, else the first ones that do and a last entry (no field) counting the rest.
 */
export function violationsToSend(violations: readonly FieldViolation[]): FieldViolation[] {
  const sent: FieldViolation[] = [];
  let bytes = 0;
  for (const violation of violations) {
    const v = {
      field: truncateUtf8(violation.field, MAX_DETAIL_VIOLATION_BYTES),
      description: truncateUtf8(violation.description, MAX_DETAIL_VIOLATION_BYTES),
    };
    // 6: the tags and lengths of a FieldViolation in its BadRequest, about.
    bytes += Buffer.byteLength(v.field) + Buffer.byteLength(v.description) + 6;
    if (bytes > MAX_VIOLATION_BYTES) break;
    sent.push(v);
  }
  if (sent.length < violations.length) {
    const rest = violations.length - sent.length;
    sent.push({
      field: '',
      description: `and ${rest} more violations not listed (a status is kept small enough to be sent): fix these, then call again`,
    });
  }
  return sent;
}

/** The grpc-js error of an ApiError, with the rich status in `grpc-status-details-bin`. */
export function toServiceError(
  error: ApiError,
): Partial<ServiceError> & { code: status; details: string; metadata: Metadata } {
  const code = GRPC_STATUS_BY_CODE[error.code];
  const details: Any[] = [
    pack(
      'google.rpc.ErrorInfo',
      ErrorInfo.encode({ reason: error.code.toUpperCase(), domain: ERROR_DOMAIN, metadata: {} }).finish(),
    ),
  ];
  if (error.violations.length > 0) {
    details.push(
      pack(
        'google.rpc.BadRequest',
        BadRequest.encode({
          fieldViolations: violationsToSend(error.violations).map((v) => ({
            field: v.field,
            description: v.description,
            reason: '',
            localizedMessage: undefined,
          })),
        }).finish(),
      ),
    );
  }
  const metadata = new Metadata();
  metadata.set(
    'grpc-status-details-bin',
    Buffer.from(Status.encode({ code, message: error.message, details }).finish()),
  );
  return { name: 'ApiError', message: error.message, code, details: error.message, metadata };
}

/** Decoded rich error details of a failed call (for clients and tests). */
export interface DecodedStatusDetails {
  status: Status;
  errorInfo: ErrorInfo | null;
  badRequest: BadRequest | null;
}

/** Decodes `grpc-status-details-bin` from a call's trailing metadata; null when absent. */
export function decodeStatusDetails(metadata: Metadata | undefined): DecodedStatusDetails | null {
  const raw = metadata?.get('grpc-status-details-bin')[0];
  if (raw === undefined || typeof raw === 'string') return null;
  const decoded = Status.decode(raw);
  let errorInfo: ErrorInfo | null = null;
  let badRequest: BadRequest | null = null;
  for (const any of decoded.details) {
    if (any.typeUrl === 'type.googleapis.com/google.rpc.ErrorInfo') errorInfo = ErrorInfo.decode(any.value);
    if (any.typeUrl === 'type.googleapis.com/google.rpc.BadRequest') badRequest = BadRequest.decode(any.value);
  }
  return { status: decoded, errorInfo, badRequest };
}
