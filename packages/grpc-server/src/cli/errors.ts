/**
 * The command-line client's errors: each has a `code` and an exit code from one table, so a script can tell
 * "I called it wrong" (2) from "the server said no, or could not be reached" (1).
 */
import { status, type ServiceError } from '@grpc/grpc-js';
import { decodeStatusDetails } from '../api/errors.js';
import { grpcStatusName } from '../observability/grpc.js';

export const CLI_ERROR_CODES = ['usage', 'input', 'rpc'] as const;
export type CliErrorCode = (typeof CLI_ERROR_CODES)[number];

/** Exit code of each error: usage and input mistakes are the caller's (2), server answers are 1. */
export const EXIT_CODE_BY_ERROR: Readonly<Record<CliErrorCode, number>> = {
  usage: 2,
  input: 2,
  rpc: 1,
};

/** One bad field, as the server's `google.rpc.BadRequest` names it (or the client, for a bad file). */
export interface CliFieldViolation {
  field: string;
  description: string;
}

export class CliError extends Error {
  override readonly name: string = 'CliError';
  readonly exitCode: number;

  constructor(
    readonly code: CliErrorCode,
    message: string,
    readonly violations: readonly CliFieldViolation[] = [],
    options?: ErrorOptions & {
      /** What to do about it, printed after the violations (e.g. that a re-run is safe). */
      hint?: string;
    },
  ) {
    super(message, options);
    this.exitCode = EXIT_CODE_BY_ERROR[code];
    this.hint = options?.hint ?? null;
  }

  readonly hint: string | null;
}

/** A call the server refused or that could not reach it: the gRPC status name, its message and details. */
export class RpcError extends CliError {
  override readonly name = 'RpcError';

  constructor(
    /** gRPC status name, e.g. `INVALID_ARGUMENT`. */
    readonly status: string,
    message: string,
    violations: readonly CliFieldViolation[],
    /** `google.rpc.ErrorInfo.reason` when the server sent one, e.g. `WEBHOOK_NOT_FOUND`. */
    readonly reason: string | null,
    options?: ErrorOptions & { hint?: string },
  ) {
    super('rpc', message, violations, options);
  }
}

/** The typed form of a failed call: status name, message, field violations and reason (rich error model). */
export function rpcError(error: ServiceError, address: string): RpcError {
  const rich = decodeStatusDetails(error.metadata);
  const violations = (rich?.badRequest?.fieldViolations ?? []).map((v) => ({
    field: v.field,
    description: v.description,
  }));
  const statusName = grpcStatusName(error.code);
  // grpc-js's own text for an unreachable server ("No connection established...") does not say what to do.
  const message =
    error.code === status.UNAVAILABLE && rich === null
      ? `cannot reach the server at ${address} (${error.details}); is it running? (--address, APP_INBOX_ADDRESS)`
      : error.code === status.DEADLINE_EXCEEDED
        ? `no answer within the deadline (--timeout): ${error.details}`
        : error.details;
  return new RpcError(statusName, message, violations, rich?.errorInfo?.reason ?? null, { cause: error });
}

/** True for an error a grpc-js call rejects with. */
export function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error &&
    typeof (error as Partial<ServiceError>).code === 'number' &&
    typeof (error as Partial<ServiceError>).details === 'string'
  );
}
