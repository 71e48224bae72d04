import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { StoreError } from '../store/errors.js';
import {
  API_ERROR_CODES,
  ApiError,
  ERROR_DOMAIN,
  GRPC_STATUS_BY_CODE,
  MAX_MESSAGE_BYTES,
  MAX_MESSAGE_VIOLATION_BYTES,
  MAX_DETAIL_VIOLATION_BYTES,
  MAX_VIOLATION_BYTES,
  decodeStatusDetails,
  invalidArgument,
  toApiError,
  toServiceError,
} from './errors.js';

describe('API errors', () => {
  it('maps every code to a gRPC status', () => {
    for (const code of API_ERROR_CODES) expect(Object.values(status)).toContain(GRPC_STATUS_BY_CODE[code]);
    expect(GRPC_STATUS_BY_CODE.invalid_argument).toBe(status.INVALID_ARGUMENT);
    expect(GRPC_STATUS_BY_CODE.webhook_not_found).toBe(status.NOT_FOUND);
    expect(GRPC_STATUS_BY_CODE.webhook_not_configured).toBe(status.FAILED_PRECONDITION);
  });

  it('carries every field violation in grpc-status-details-bin', () => {
    const violations = [
      { field: 'messages[0].id', description: 'must be a UUID' },
      { field: 'messages[3].created_date', description: 'must be an integer' },
    ];
    const error = toServiceError(invalidArgument(violations));
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toBe(
      '2 invalid fields: messages[0].id: must be a UUID; messages[3].created_date: must be an integer',
    );
    const decoded = decodeStatusDetails(error.metadata);
    expect(decoded?.status.code).toBe(status.INVALID_ARGUMENT);
    expect(decoded?.status.message).toBe(error.details);
    expect(decoded?.errorInfo).toEqual({ reason: 'INVALID_ARGUMENT', domain: ERROR_DOMAIN, metadata: {} });
    expect(decoded?.badRequest?.fieldViolations.map((v) => [v.field, v.description])).toEqual(
      violations.map((v) => [v.field, v.description]),
    );
  });

  it('shortens a long message but keeps every violation in the details', () => {
    const violations = Array.from({ length: 30 }, (_, i) => ({ field: `messages[${i}].id`, description: 'bad' }));
    const error = toServiceError(invalidArgument(violations));
    expect(error.details).toMatch(/; and 10 more$/);
    expect(decodeStatusDetails(error.metadata)?.badRequest?.fieldViolations).toHaveLength(30);
  });

  it('cuts a long description in the message on a character boundary, and keeps it whole in the details', () => {
    // A description echoing a caller's value: 2 bytes a character, so a cut in the middle of one would show.
    const description = `host ${'é'.repeat(1_000)} could not be resolved`;
    const error = toServiceError(invalidArgument([{ field: 'url', description }]));
    expect(Buffer.byteLength(error.details)).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
    expect(error.details).toMatch(/^1 invalid field: url: host é+…$/);
    expect(Buffer.byteLength(error.details.slice('1 invalid field: '.length))).toBeLessThanOrEqual(
      MAX_MESSAGE_VIOLATION_BYTES,
    );
    expect(Buffer.byteLength(error.details.slice('1 invalid field: '.length))).toBeGreaterThan(
      MAX_MESSAGE_VIOLATION_BYTES - 4,
    );
    const decoded = decodeStatusDetails(error.metadata);
    expect(decoded?.status.message).toBe(error.details);
    expect(decoded?.badRequest?.fieldViolations.map((v) => v.description)).toEqual([description]);
  });

  it('bounds the message in bytes, naming the long violations that fit and counting the rest', () => {
    const violations = Array.from({ length: 20 }, (_, i) => ({
      field: `messages[${i}].custom_data`,
      description: `must be valid JSON text: ${'x'.repeat(150)}`,
    }));
    const error = toServiceError(invalidArgument(violations));
    expect(Buffer.byteLength(error.details)).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
    const named = error.details.match(/messages\[\d+\]\.custom_data/g) ?? [];
    expect(named.length).toBeGreaterThan(1);
    expect(named.length).toBeLessThan(20);
    expect(error.details).toMatch(
      new RegExp(`^20 invalid fields: messages\\[0\\]\\.custom_data: .*; and ${20 - named.length} more$`),
    );
    // The details still list all of them (they fit MAX_VIOLATION_BYTES).
    expect(decodeStatusDetails(error.metadata)?.badRequest?.fieldViolations).toHaveLength(20);
  });

  it('lists the violations that fit in a status that can be sent, and counts the rest', () => {
    const violations = Array.from({ length: 10_000 }, (_, i) => ({
      field: `messages[${i}].id`,
      description: 'must be a UUID',
    }));
    const error = toServiceError(invalidArgument(violations));
    const listed = decodeStatusDetails(error.metadata)?.badRequest?.fieldViolations ?? [];
    const named = listed.slice(0, -1);
    expect(named.map((v) => v.field)).toEqual(violations.slice(0, named.length).map((v) => v.field));
    expect(listed.at(-1)).toMatchObject({
      field: '',
      description: expect.stringContaining(`and ${10_000 - named.length} more`),
    });
    const bytes = named.reduce((n, v) => n + Buffer.byteLength(v.field) + Buffer.byteLength(v.description) + 6, 0);
    expect(bytes).toBeLessThanOrEqual(MAX_VIOLATION_BYTES);
    expect(bytes).toBeGreaterThan(MAX_VIOLATION_BYTES - 40);
    expect(error.metadata.get('grpc-status-details-bin')[0]!.length).toBeLessThan(6 * 1024);
  });

  it('shortens a violation too long for the details instead of dropping it', () => {
    const host = `${'a'.repeat(5_000)}.example`;
    const violations = [
      { field: 'url', description: `host ${host} is not allowed` },
      { field: 'max_messages_per_contact', description: 'must be between 1 and 1000' },
    ];
    const listed = decodeStatusDetails(toServiceError(invalidArgument(violations)).metadata)?.badRequest;
    expect(listed?.fieldViolations.map((v) => v.field)).toEqual(['url', 'max_messages_per_contact']);
    const url = listed!.fieldViolations[0]!.description;
    expect(Buffer.byteLength(url)).toBe(MAX_DETAIL_VIOLATION_BYTES);
    expect(url.startsWith(`host ${'a'.repeat(100)}`)).toBe(true);
    expect(url.endsWith('…')).toBe(true);
    expect(listed!.fieldViolations[1]!.description).toBe('must be between 1 and 1000');
  });

  it('hides the text of unexpected errors, maps store errors', () => {
    const internal = toApiError(new Error('connect postgres://admin:hunter2@db failed'));
    expect(internal.code).toBe('internal');
    expect(internal.message).toBe('internal error');
    expect(JSON.stringify(toServiceError(internal).details)).not.toContain('hunter2');
    expect(toApiError(new StoreError('conflict', 'serialization failure')).code).toBe('conflict');
    expect(toApiError(new StoreError('closed', 'store closed')).code).toBe('shutting_down');
    expect(toApiError(new StoreError('schema_too_new', 'v9')).message).toBe('internal error');
    // A publish whose webhook was deleted meanwhile answers as one without a webhook: FAILED_PRECONDITION.
    const missing = toApiError(new StoreError('webhook_missing', 'account "a" has no webhook'));
    expect({ code: missing.code, grpc: toServiceError(missing).code }).toEqual({
      code: 'webhook_not_configured',
      grpc: status.FAILED_PRECONDITION,
    });
    const own = new ApiError('delivery_not_found', 'no delivery "x"');
    expect(toApiError(own)).toBe(own);
  });

  it('answers UNAVAILABLE (retryable), without the driver text, when the database cannot be reached', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 10.0.0.5:5432'), { code: 'ECONNREFUSED' });
    const adminShutdown = Object.assign(new Error('terminating connection due to administrator command'), {
      code: '57P01',
    });
    const cannotConnect = Object.assign(new Error('the database system is starting up'), { code: '57P03' });
    const connectionFailure = Object.assign(new Error('connection failure'), { code: '08006' });
    // The session of a process that stalled inside a transaction, ended by the store's idle-in-transaction timeout.
    const idleEnded = Object.assign(new Error('terminating connection due to idle-in-transaction timeout'), {
      code: '25P03',
    });
    for (const error of [
      refused,
      adminShutdown,
      cannotConnect,
      connectionFailure,
      idleEnded,
      new Error('Connection terminated unexpectedly'),
      new Error('timeout exceeded when trying to connect'),
    ]) {
      const mapped = toApiError(error);
      expect(mapped.code).toBe('store_unavailable');
      const service = toServiceError(mapped);
      expect(service.code).toBe(status.UNAVAILABLE);
      expect(service.details).toBe('the store cannot be reached; try again');
    }
    // Other driver errors stay INTERNAL.
    expect(toApiError(Object.assign(new Error('deadlock'), { code: '40P01' })).code).toBe('internal');
  });
});
