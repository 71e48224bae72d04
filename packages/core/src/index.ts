/**
 * @app-inbox/core — the pure rules of App Inbox webhook delivery: validation, payload building,
 * retry classification, backoff and request headers. No I/O: clocks and random sources are parameters.
 * @see SPEC §2-§5
 */
export { VERSION } from './version.js';

export type { AppInboxMessage, StoredMessage, BasicAuth, WebhookConfig, Verdict } from './types.js';

export { CORE_ERROR_CODES, CoreError, isCoreError } from './errors.js';
export type { CoreErrorCode, CoreErrorOptions } from './errors.js';

export {
  DEFAULT_MAX_MESSAGES_PER_CONTACT,
  MAX_MESSAGES_PER_CONTACT_LIMIT,
  LIMITS,
  NUL_CHARACTER_MESSAGE,
  messageSchema,
  messageListSchema,
  basicAuthSchema,
  signingSecretSchema,
  webhookConfigSchema,
  webhookHeadersSchema,
  formatPath,
  utf8ByteLength,
  validate,
  validateMessage,
  validateMessageList,
  validateWebhookConfig,
} from './schema.js';
export type { FieldViolation, ValidationResult, ValidMessage, WebhookConfigInput } from './schema.js';

export {
  availableMessages,
  compareNewestFirst,
  toWireMessage,
  serializeMessages,
  buildPayload,
  partitionByCustomerId,
} from './payload.js';
export type { BuildPayloadInput, BuiltPayload, CustomerIdPartition, PayloadContact, SkipReason } from './payload.js';

export {
  BLOCKED_ADDRESS_CODE,
  CLASSIFICATION_TABLE,
  ERROR_CODE_KINDS,
  TLS_CODE_PREFIXES,
  classify,
  errorKind,
  statusRule,
} from './classify.js';
export type { AttemptOutcome, Classification, ClassificationRule, ErrorKind, RuleSource } from './classify.js';

export { parseRetryAfter, parseHttpDate } from './retry-after.js';

export {
  BACKOFF_FACTOR,
  DEFAULT_BACKOFF,
  backoffDelay,
  backoffOptionsSchema,
  backoffSchedule,
  decideRetry,
  nominalDelay,
  validateBackoffOptions,
} from './backoff.js';
export type { BackoffOptions, DecideRetryInput, RetryDecision } from './backoff.js';

export {
  CONTACT_HEADER,
  DELIVERY_ID_HEADER,
  RESERVED_HEADER_NAMES,
  RESERVED_HEADER_PREFIXES,
  TIMESTAMP_HEADER,
  SIGNATURE_HEADER,
  USER_AGENT,
  basicAuthorization,
  buildRequestHeaders,
  bytesToBase64,
  isReservedHeaderName,
  percentEncode,
  signStandardWebhook,
} from './headers.js';
export type { RequestHeadersInput } from './headers.js';

export { redactedCommandLine } from './command-line.js';
