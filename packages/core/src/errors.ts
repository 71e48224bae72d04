/**
 * The core's typed error. @see CONVENTIONS §6
 */
import type { FieldViolation } from './schema.js';

/** Every code a {@link CoreError} may carry. */
export const CORE_ERROR_CODES = ['invalid_argument'] as const;
export type CoreErrorCode = (typeof CORE_ERROR_CODES)[number];

export interface CoreErrorOptions {
  /** The error this one wraps, when there is one. */
  cause?: unknown;
  /** The bad fields, when the error is about input that failed validation. */
  violations?: readonly FieldViolation[];
}

/**
 * An error raised by a core function called with arguments outside its contract. Messages name the
 * argument and never contain a secret value.
 */
export class CoreError extends Error {
  override readonly name = 'CoreError';
  readonly code: CoreErrorCode;
  readonly violations: readonly FieldViolation[];

  constructor(code: CoreErrorCode, message: string, options: CoreErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.violations = options.violations ?? [];
  }
}

/** True when `error` is a {@link CoreError}, optionally with the given code. */
export function isCoreError(error: unknown, code?: CoreErrorCode): error is CoreError {
  return error instanceof CoreError && (code === undefined || error.code === code);
}
