/**
 * The mock receiver's typed error. @see CONVENTIONS §6
 */
import type { FieldViolation } from '@app-inbox/core';

/** Every code a {@link MockReceiverError} may carry. */
export const MOCK_RECEIVER_ERROR_CODES = ['invalid_options', 'invalid_rule', 'timeout', 'closed'] as const;
export type MockReceiverErrorCode = (typeof MOCK_RECEIVER_ERROR_CODES)[number];

/**
 * Raised for bad options or rules (with every bad field listed in `violations`), for a
 * `records.waitFor()` that timed out, and for use after `close()`. Messages never contain a password.
 */
export class MockReceiverError extends Error {
  override readonly name = 'MockReceiverError';
  readonly code: MockReceiverErrorCode;
  readonly violations: readonly FieldViolation[];

  constructor(
    code: MockReceiverErrorCode,
    message: string,
    options: { cause?: unknown; violations?: readonly FieldViolation[] } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.violations = options.violations ?? [];
  }
}

/** `field description; field description` — the one-line form used in error messages. */
export function describeViolations(violations: readonly FieldViolation[]): string {
  return violations.map((v) => (v.field === '' ? v.description : `${v.field} ${v.description}`)).join('; ');
}
