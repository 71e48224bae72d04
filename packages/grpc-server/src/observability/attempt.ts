/**
 * One description of a delivery attempt, shared by the log line, the metrics and the trace span, so the
 * three never disagree about what happened. The engine builds one {@link AttemptEvent} after
 * `store.recordAttempt()` and hands it to each.
 * @see SPEC §5 (the receiver's answers)
 */

/**
 * What became of the delivery after the attempt: the state `recordAttempt` left it in.
 * `superseded` is a retryable answer whose delivery was replaced meanwhile by a newer state of the contact.
 */
export type AttemptOutcomeLabel = 'delivered' | 'retrying' | 'failed' | 'superseded';

/** Status class of an attempt: the HTTP status's hundreds, or `error` when no answer came (timeout, refused, ...). */
export type StatusClass = '1xx' | '2xx' | '3xx' | '4xx' | '5xx' | 'error';

/** One recorded delivery attempt, as the observability modules see it. */
export interface AttemptEvent {
  deliveryId: string;
  accountId: string;
  /**
   * The webhook URL. Only its host is ever logged or exported: the path and query of a webhook URL often
   * carry a token, and the user info a password.
   */
  url: string;
  /** 1-based attempt number. */
  attemptNo: number;
  outcome: AttemptOutcomeLabel;
  /** HTTP status when an answer came, else null. */
  statusCode: number | null;
  /** Stable error kind (`timeout`, `refused`, ...) when no answer came, else null. */
  errorKind: string | null;
  /** Wall time of the request (milliseconds). */
  durationMs: number;
}

/**
 * `host[:port]` of a URL (lower case, no user info, path or query); `invalid-url` when it does not parse,
 * so that an unparsable value is never echoed into logs.
 */
export function endpointHost(url: string): string {
  try {
    return new URL(url).host || 'invalid-url';
  } catch {
    return 'invalid-url';
  }
}

/** Status class of an HTTP status, `error` for null (no answer) or a value outside 100..599. */
export function statusClass(statusCode: number | null): StatusClass {
  if (statusCode === null || !Number.isInteger(statusCode) || statusCode < 100 || statusCode > 599) return 'error';
  return `${Math.floor(statusCode / 100)}xx` as StatusClass;
}
