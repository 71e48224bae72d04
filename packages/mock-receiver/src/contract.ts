/**
 * The contract's own answers, in the order the issue fixes them: 405, 415, 401 (Basic auth), then 401 (Standard
 * Webhooks signature, when secrets are configured), 400, 429, then 200 (a 413 for a body over the limit comes
 * before the 400). Pure functions of what was received, so each branch is a plain unit test.
 *
 * @see SPEC §4 (POST, application/json, a JSON array of messages), SPEC §5 (the answers)
 */
import {
  compareNewestFirst,
  messageSchema,
  validate,
  validateMessageList,
  type FieldViolation,
  type ValidMessage,
} from '@app-inbox/core';
import { SIGNATURE_FAILURES, type SignatureCheck } from './signature.js';

/** Which check decided the contract's answer. */
export const CONTRACT_BRANCHES = [
  'method_not_allowed',
  'unsupported_media_type',
  'unauthorized',
  'invalid_signature',
  'payload_too_large',
  'invalid_payload',
  'too_many_messages',
  'accepted',
] as const;
export type ContractBranch = (typeof CONTRACT_BRANCHES)[number];

/** The request body as read: absent, too large, not UTF-8 JSON, or a parsed JSON value. */
export type ParsedBody =
  | { kind: 'empty' }
  | { kind: 'too_large'; limitBytes: number }
  | { kind: 'invalid'; description: string }
  | { kind: 'json'; value: unknown };

/** The outcome of checking a parsed body against the message list format. */
export type BodyCheck = { ok: true; messages: ValidMessage[] } | { ok: false; violations: FieldViolation[] };

/** Everything the contract looks at. */
export interface ContractRequest {
  method: string;
  /** The Content-Type header, when sent. */
  contentType: string | undefined;
  /** The Content-Encoding header, when sent. */
  contentEncoding: string | undefined;
  /** Result of comparing the Authorization header with the configured credentials. */
  credentials: 'not_required' | 'valid' | 'missing' | 'wrong';
  /** Result of checking the Standard Webhooks signature; absent when no signing secret is configured. */
  signature?: SignatureCheck;
  body: ParsedBody;
  /** {@link checkBody} of `body`. */
  bodyCheck: BodyCheck;
  /** {@link checkHeaders}: the headers the contract requires that are missing (strict). Default none. */
  headerViolations?: FieldViolation[];
}

/** The contract's settings. */
export interface ContractSettings {
  /** At most this many messages of one contact in one request; more gets a 429. */
  maxMessagesPerContact: number;
  /** Retry-After of a 429 (seconds). */
  retryAfterSeconds: number;
  /** The realm announced in WWW-Authenticate. */
  realm: string;
}

/** The answer the contract gives. */
export interface ContractAnswer {
  branch: ContractBranch;
  status: number;
  headers: Record<string, string>;
  body: unknown;
}

/** The path prefix of every violation in a 400: `body[3].id`. */
export const BODY_FIELD = 'body';

/** The messages of a loose (non-strict) list keep unknown fields; the known ones are still checked. */
const looseMessageSchema = messageSchema.loose();

/**
 * The headers the contract requires of every webhook request (strict only): `webhook-id`, the stable delivery id a
 * receiver discards a retried duplicate by (SPEC §4), and with an empty list `app-inbox-contact`, since the body `[]`
 * names no contact whose list it empties. Checked when signing is off too: a sender that dropped them would pass.
 */
export function checkHeaders(
  headers: { deliveryId: string | undefined; contact: string | undefined },
  body: ParsedBody,
  strict: boolean,
): FieldViolation[] {
  if (!strict) return [];
  const violations: FieldViolation[] = [];
  if (headers.deliveryId === undefined || headers.deliveryId.trim() === '') {
    violations.push({ field: 'headers.webhook-id', description: 'is required: the stable delivery id (SPEC §4)' });
  }
  const emptyList = body.kind === 'json' && Array.isArray(body.value) && body.value.length === 0;
  if (emptyList && (headers.contact === undefined || headers.contact === '')) {
    violations.push({
      field: 'headers.app-inbox-contact',
      description: 'is required with an empty list: the body names no contact whose list it empties',
    });
  }
  return violations;
}

/**
 * Checks a body against the seed's format with core's schema, so that the receiver and the sender can
 * never disagree. `strict` rejects unknown fields (as the core schema does); without it they are kept.
 */
export function checkBody(body: ParsedBody, strict: boolean): BodyCheck {
  switch (body.kind) {
    case 'empty':
      return { ok: false, violations: [{ field: BODY_FIELD, description: 'is required: a JSON array of messages' }] };
    case 'too_large':
      return {
        ok: false,
        violations: [{ field: BODY_FIELD, description: `must be at most ${body.limitBytes} bytes` }],
      };
    case 'invalid':
      return { ok: false, violations: [{ field: BODY_FIELD, description: body.description }] };
    case 'json': {
      if (strict) {
        const result = validateMessageList(body.value, BODY_FIELD);
        if (!result.ok) return { ok: false, violations: result.violations };
        const violations = listProblems(result.value);
        return violations.length === 0 ? { ok: true, messages: result.value } : { ok: false, violations };
      }
      if (!Array.isArray(body.value)) {
        return { ok: false, violations: [{ field: BODY_FIELD, description: 'must be an array' }] };
      }
      const messages: ValidMessage[] = [];
      const violations: FieldViolation[] = [];
      body.value.forEach((item: unknown, i) => {
        const result = validate(looseMessageSchema, item, `${BODY_FIELD}[${i}]`);
        if (result.ok) messages.push(result.value);
        else violations.push(...result.violations);
      });
      return violations.length === 0 ? { ok: true, messages } : { ok: false, violations };
    }
  }
}

/**
 * What makes a list of valid messages not "the list of all the available messages" of its contacts (SPEC §4): each
 * contact's messages newest first (createdDate descending, ties by id ascending: core's order, the sender's), each id
 * once.
 */
export function listProblems(messages: readonly ValidMessage[]): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const last = new Map<string, number>();
  const seen = new Map<string, number>();
  messages.forEach((m, i) => {
    const before = last.get(m.externalCustomerId);
    const previous = before === undefined ? undefined : messages[before];
    if (previous !== undefined && previous.createdDate < m.createdDate) {
      violations.push({
        field: `${BODY_FIELD}[${i}]`,
        description: `is newer than ${BODY_FIELD}[${before}] of the same contact: a list is newest first (createdDate descending)`,
      });
    } else if (previous !== undefined && compareNewestFirst(previous, m) > 0) {
      // Same createdDate: "ties by id" (SPEC §4), ascending as core's compareNewestFirst orders them, which is the
      // sender's order; a receiver that pages or diffs by position relies on it being total.
      violations.push({
        field: `${BODY_FIELD}[${i}].id`,
        description: `comes after ${BODY_FIELD}[${before}].id, which has the same createdDate and a larger id: ties by id ascending (SPEC §4)`,
      });
    }
    last.set(m.externalCustomerId, i);
    const key = `${m.externalCustomerId}\u0000${m.id}`;
    const twice = seen.get(key);
    if (twice !== undefined) {
      violations.push({ field: `${BODY_FIELD}[${i}].id`, description: `repeats ${BODY_FIELD}[${twice}].id` });
    } else seen.set(key, i);
  });
  return violations;
}

/** Distinct externalCustomerIds of a JSON body that looks like a list, valid or not (for rules and records). */
export function contactsOf(body: ParsedBody): string[] {
  if (body.kind !== 'json' || !Array.isArray(body.value)) return [];
  const ids = new Set<string>();
  for (const item of body.value as unknown[]) {
    if (typeof item === 'object' && item !== null && 'externalCustomerId' in item) {
      const id = (item as { externalCustomerId: unknown }).externalCustomerId;
      if (typeof id === 'string') ids.add(id);
    }
  }
  return [...ids];
}

/** Groups valid messages by contact, in order of first appearance. */
export function groupByContact(messages: readonly ValidMessage[]): Map<string, ValidMessage[]> {
  const groups = new Map<string, ValidMessage[]>();
  for (const m of messages) {
    const group = groups.get(m.externalCustomerId);
    if (group === undefined) groups.set(m.externalCustomerId, [m]);
    else group.push(m);
  }
  return groups;
}

/** `application/json` with an optional `charset=utf-8`; the media type is case-insensitive (RFC 9110 §8.3.1). */
export function mediaTypeProblem(contentType: string | undefined, contentEncoding: string | undefined): string | null {
  if (contentType === undefined || contentType.trim() === '') return 'Content-Type must be application/json';
  const [type = '', ...params] = contentType.split(';');
  if (type.trim().toLowerCase() !== 'application/json') return 'Content-Type must be application/json';
  for (const param of params) {
    const [name = '', value = ''] = param.split('=');
    if (name.trim().toLowerCase() === 'charset' && value.trim().replace(/^"|"$/g, '').toLowerCase() !== 'utf-8') {
      return 'the charset of a JSON body must be utf-8 (RFC 8259 §8.1)';
    }
  }
  if (contentEncoding !== undefined && contentEncoding.trim().toLowerCase() !== 'identity') {
    return 'Content-Encoding is not supported; send the JSON uncompressed';
  }
  return null;
}

/** Decodes a body: UTF-8 (strict) JSON, or why not. An empty body is `empty`. */
export function parseBody(bytes: Uint8Array): ParsedBody {
  if (bytes.length === 0) return { kind: 'empty' };
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return { kind: 'invalid', description: 'must be UTF-8 text' };
  }
  if (text.trim() === '') return { kind: 'empty' };
  try {
    return { kind: 'json', value: JSON.parse(text) as unknown };
  } catch {
    // JSON.parse's message may quote the body; the receiver describes the problem without echoing it.
    return { kind: 'invalid', description: 'must be valid JSON' };
  }
}

function answer(branch: ContractBranch, status: number, body: unknown, headers: Record<string, string> = {}) {
  return { branch, status, body, headers };
}

/** The contract's answer to one request. @see SPEC §5 */
export function decide(request: ContractRequest, settings: ContractSettings): ContractAnswer {
  if (request.method !== 'POST') {
    return answer(
      'method_not_allowed',
      405,
      { error: 'method_not_allowed', message: 'a webhook request must use POST' },
      { allow: 'POST' },
    );
  }
  const mediaProblem = mediaTypeProblem(request.contentType, request.contentEncoding);
  if (mediaProblem !== null) {
    return answer('unsupported_media_type', 415, { error: 'unsupported_media_type', message: mediaProblem });
  }
  if (request.credentials === 'missing' || request.credentials === 'wrong') {
    return answer(
      'unauthorized',
      401,
      {
        error: 'unauthorized',
        message: request.credentials === 'missing' ? 'Basic credentials are required' : 'Basic credentials are wrong',
      },
      { 'www-authenticate': `Basic realm="${settings.realm}", charset="UTF-8"` },
    );
  }
  // Right after Basic auth: both say whether the sender is who it claims to be, before the body is judged. No
  // WWW-Authenticate: Standard Webhooks defines no challenge scheme, and a Basic one would send a sender the wrong way.
  // @see https://www.standardwebhooks.com/ (Verifying webhook authenticity)
  const signature = request.signature;
  if (signature !== undefined && SIGNATURE_FAILURES.has(signature.result)) {
    return answer('invalid_signature', 401, {
      error: 'invalid_signature',
      signature: signature.result,
      message: signature.message ?? 'the signature does not verify',
    });
  }
  if (request.body.kind === 'too_large') {
    return answer('payload_too_large', 413, {
      error: 'payload_too_large',
      message: `the body must be at most ${request.body.limitBytes} bytes`,
    });
  }
  const headerViolations = request.headerViolations ?? [];
  if (!request.bodyCheck.ok || headerViolations.length > 0) {
    const violations = [...headerViolations, ...(request.bodyCheck.ok ? [] : request.bodyCheck.violations)];
    const where = headerViolations.length > 0 ? 'request' : 'request body';
    return answer('invalid_payload', 400, {
      error: 'invalid_payload',
      message: `${violations.length} problem${violations.length === 1 ? '' : 's'} in the ${where}`,
      violations,
    });
  }
  const over = [...groupByContact(request.bodyCheck.messages)]
    .filter(([, messages]) => messages.length > settings.maxMessagesPerContact)
    .map(([externalCustomerId, messages]) => ({ externalCustomerId, count: messages.length }));
  if (over.length > 0) {
    return answer(
      'too_many_messages',
      429,
      {
        error: 'too_many_messages',
        message: `more than ${settings.maxMessagesPerContact} messages for one contact`,
        limit: settings.maxMessagesPerContact,
        contacts: over,
      },
      { 'retry-after': String(settings.retryAfterSeconds) },
    );
  }
  return answer('accepted', 200, {
    accepted: request.bodyCheck.messages.length,
    contacts: groupByContact(request.bodyCheck.messages).size,
  });
}
