/**
 * The store's typed error. @see CONVENTIONS §6
 */

/** Every code a {@link StoreError} may carry. */
export const STORE_ERROR_CODES = [
  /** An argument is outside the method's contract (the message names it). */
  'invalid_argument',
  /**
   * The database was migrated by a newer version of this service, or by another build (a migration this one does not
   * know under the number of one of its own); refusing to run on it.
   */
  'schema_too_new',
  /** A transaction kept conflicting with concurrent ones (PostgreSQL) and was given up. */
  'conflict',
  /** The store was closed. */
  'closed',
  /** A publish asked for the account's webhook (`requireWebhook`) and it had none when the publish committed. */
  'webhook_missing',
] as const;
export type StoreErrorCode = (typeof STORE_ERROR_CODES)[number];

/** An error raised by a store engine. Messages never contain a secret or a message body. */
export class StoreError extends Error {
  override readonly name = 'StoreError';
  readonly code: StoreErrorCode;

  constructor(code: StoreErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
  }
}

/** True when `error` is a {@link StoreError}, optionally with the given code. */
export function isStoreError(error: unknown, code?: StoreErrorCode): error is StoreError {
  return error instanceof StoreError && (code === undefined || error.code === code);
}
