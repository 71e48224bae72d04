/**
 * Requests (generated proto types) to domain values, validated with the core schemas. Every function
 * returns every violation at once, with paths in proto field names (`messages[3].created_date`,
 * `basic_auth.password`), so a caller can fix a whole request in one go. Nothing here does I/O.
 * @see SPEC §2-§4
 */
import {
  messageListSchema,
  messageSchema,
  validate,
  validateWebhookConfig,
  type StoredMessage,
  type WebhookConfig,
  type FieldViolation as CoreViolation,
} from '@app-inbox/core';
import type { DeliveryState as StoreDeliveryState, DeliveryFilter } from '../store/types.js';
import type { InboxMessage, PublishMessagesRequest, ResyncContactsRequest } from '../gen/app_inbox/v1/message.js';
import type { UpdateWebhookRequest, UpsertWebhookRequest } from '../gen/app_inbox/v1/webhook.js';
import type { SigningRotation, WebhookRecord } from '../store/types.js';
import { replacedSigningSecretAt } from '../store/shared.js';
import type { ListDeliveriesRequest } from '../gen/app_inbox/v1/delivery.js';
import { stateFromProto } from './mapping.js';
import type { FieldViolation } from './errors.js';

/** Most messages in one PublishMessages call. @see issue 4 */
export const MAX_MESSAGES_PER_PUBLISH = 10_000;
/** Most contacts named in one ResyncContacts call. */
export const MAX_CONTACTS_PER_RESYNC = 10_000;
/** Longest account id (characters). */
export const MAX_ACCOUNT_ID_LENGTH = 128;
/** Longest message TTL, and latest expiry from now (seconds): one year. */
export const MAX_TTL_SECONDS = 365 * 86_400;
/** Default and largest page of ListDeliveries (AIP-158: a larger page_size is lowered to the maximum). */
export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 100;
/** Longest delivery id accepted in a request (ids are UUIDs; this only bounds garbage). */
const MAX_ID_LENGTH = 128;

export type Result<T> = { ok: true; value: T } | { ok: false; violations: FieldViolation[] };

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

const SNAKE_EXCEPTIONS: Readonly<Record<string, string>> = { auth: 'basic_auth' };

/**
 * `messages[3].createdDate` → `messages[3].created_date`; core's `auth` is the proto's `basic_auth`. A quoted map key
 * (`headers["auth"]`) is a header's name, not a field: left as it is.
 */
export function protoPath(corePath: string): string {
  return corePath.replace(/"(?:[^"\\]|\\.)*"|[A-Za-z_$][\w$]*/g, (name) =>
    name.startsWith('"') ? name : (SNAKE_EXCEPTIONS[name] ?? name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)),
  );
}

function fromCore(violations: readonly CoreViolation[]): FieldViolation[] {
  return violations.map((v) => ({ field: protoPath(v.field), description: v.description }));
}

/** An account id: 1-128 characters, no control characters. */
export function checkAccountId(accountId: string, field = 'account_id'): FieldViolation[] {
  if (accountId.trim() === '') return [{ field, description: 'is required' }];
  if (accountId.length > MAX_ACCOUNT_ID_LENGTH)
    return [{ field, description: `must be at most ${MAX_ACCOUNT_ID_LENGTH} characters` }];
  if (CONTROL.test(accountId)) return [{ field, description: 'must not contain control characters' }];
  return [];
}

/** A delivery id: non-empty, bounded, no control characters (an unknown one is NOT_FOUND, not a bad argument). */
export function checkDeliveryId(id: string, field = 'delivery_id'): FieldViolation[] {
  if (id.trim() === '') return [{ field, description: 'is required' }];
  if (id.length > MAX_ID_LENGTH) return [{ field, description: `must be at most ${MAX_ID_LENGTH} characters` }];
  if (CONTROL.test(id)) return [{ field, description: 'must not contain control characters' }];
  return [];
}

/** A contact's id where a request names one (not inside a message): by core's rule for a message's. */
function checkContactId(id: string, field: string): FieldViolation[] {
  const checked = validate(messageSchema.shape.externalCustomerId, id, field);
  return checked.ok ? [] : fromCore(checked.violations);
}

/** The webhook part of an UpsertWebhook request, with its defaults applied. */
export interface UpsertInput {
  accountId: string;
  config: WebhookConfig;
  /** Time-to-live of messages published without their own (milliseconds). */
  messageTtlMs: number;
}

export function parseUpsertWebhook(request: UpsertWebhookRequest, defaultTtlSeconds: number): Result<UpsertInput> {
  const violations = checkAccountId(request.accountId);
  const input: Record<string, unknown> = { url: request.url };
  if (request.basicAuth !== undefined) {
    input.auth = { type: 'basic', username: request.basicAuth.username, password: request.basicAuth.password };
  }
  if (request.maxMessagesPerContact !== undefined) input.maxMessagesPerContact = request.maxMessagesPerContact;
  if (request.enabled !== undefined) input.enabled = request.enabled;
  // proto3 has no null for a string: empty means "no signing".
  if (request.signingSecret !== '') input.signingSecret = request.signingSecret;
  // 0 (or unset) is no limit: the value a read gives back for none, so a read can be sent back as it is.
  if (request.rateLimitPerSecond !== undefined && request.rateLimitPerSecond !== 0) {
    input.rateLimitPerSecond = request.rateLimitPerSecond;
  }
  // An empty map (proto3 cannot tell it from none) is no headers: stored as absent, like a webhook saved before them.
  if (Object.keys(request.headers).length > 0) input.headers = request.headers;
  const checked = validateWebhookConfig(input);
  if (!checked.ok) violations.push(...fromCore(checked.violations));
  const ttlSeconds = request.defaultMessageTtlSeconds ?? defaultTtlSeconds;
  if (!Number.isSafeInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > MAX_TTL_SECONDS) {
    violations.push({
      field: 'default_message_ttl_seconds',
      description: `must be from 1 to ${MAX_TTL_SECONDS} seconds`,
    });
  }
  if (violations.length > 0 || !checked.ok) return { ok: false, violations };
  return { ok: true, value: { accountId: request.accountId, config: checked.value, messageTtlMs: ttlSeconds * 1000 } };
}

/** The fields of a webhook UpdateWebhook can change, by their names in its request (`update_mask` paths). */
export const UPDATABLE_WEBHOOK_FIELDS = [
  'url',
  'basic_auth',
  'max_messages_per_contact',
  'enabled',
  'signing_secret',
  'default_message_ttl_seconds',
  'rate_limit_per_second',
  'headers',
] as const;
export type UpdatableWebhookField = (typeof UPDATABLE_WEBHOOK_FIELDS)[number];

/** The request's key of each updatable field. */
const UPDATE_KEYS: Readonly<Record<UpdatableWebhookField, keyof UpsertWebhookRequest & keyof UpdateWebhookRequest>> = {
  url: 'url',
  basic_auth: 'basicAuth',
  max_messages_per_contact: 'maxMessagesPerContact',
  enabled: 'enabled',
  signing_secret: 'signingSecret',
  default_message_ttl_seconds: 'defaultMessageTtlSeconds',
  rate_limit_per_second: 'rateLimitPerSecond',
  headers: 'headers',
};

/** Most paths an `update_mask` may have (each field once is 8; repeats are allowed, not without bound). */
export const MAX_UPDATE_MASK_PATHS = 32;
/** Most unknown `update_mask` paths named one by one in the refusal (the others are counted). */
const MAX_UNKNOWN_PATHS_NAMED = 3;
/** What an unknown path must look like to be named back: a (possibly dotted) field name, not too long. */
const FIELD_NAME = /^[A-Za-z][A-Za-z0-9_.]{0,63}$/;

/** The account and the fields an UpdateWebhook request changes (checked before the webhook is read). */
export function parseUpdateMask(
  request: UpdateWebhookRequest,
): Result<{ accountId: string; fields: UpdatableWebhookField[] }> {
  const violations = checkAccountId(request.accountId);
  const paths = request.updateMask;
  const fields: UpdatableWebhookField[] = [];
  if (paths.length === 0) {
    violations.push({
      field: 'update_mask',
      description: `is required: name at least one of ${UPDATABLE_WEBHOOK_FIELDS.join(', ')}`,
    });
  }
  if (paths.length > MAX_UPDATE_MASK_PATHS) {
    violations.push({ field: 'update_mask', description: `must name at most ${MAX_UPDATE_MASK_PATHS} paths` });
  }
  let unknown = 0;
  for (const [index, path] of paths.slice(0, MAX_UPDATE_MASK_PATHS).entries()) {
    if ((UPDATABLE_WEBHOOK_FIELDS as readonly string[]).includes(path)) {
      if (!fields.includes(path as UpdatableWebhookField)) fields.push(path as UpdatableWebhookField);
      continue;
    }
    // A few unknown paths are named, each only when it looks like a field name: the description goes into the
    // status trailers and the log line, so a caller's string is never echoed at any length (a 40 KB path left the
    // refusal too large to send: the call hung until its deadline), nor one that may be a value sent by mistake.
    if (++unknown > MAX_UNKNOWN_PATHS_NAMED) continue;
    const named = FIELD_NAME.test(path) ? JSON.stringify(path) : `path ${index} (not a field name)`;
    violations.push({
      field: 'update_mask',
      description: `${named} is not a field UpdateWebhook changes: must be one of ${UPDATABLE_WEBHOOK_FIELDS.join(', ')}`,
    });
  }
  if (unknown > MAX_UNKNOWN_PATHS_NAMED) {
    violations.push({
      field: 'update_mask',
      description: `and ${unknown - MAX_UNKNOWN_PATHS_NAMED} more paths that are not fields UpdateWebhook changes`,
    });
  }
  if (violations.length > 0) return { ok: false, violations };
  return { ok: true, value: { accountId: request.accountId, fields } };
}

/**
 * The webhook an UpdateWebhook request makes of the stored one: the fields it names from the request, every other
 * one as stored (secrets included), checked as a whole by {@link parseUpsertWebhook}, so a violation names the
 * field as UpsertWebhook would.
 */
export function parseUpdateWebhook(
  request: UpdateWebhookRequest,
  fields: readonly UpdatableWebhookField[],
  stored: WebhookRecord,
  defaultTtlSeconds: number,
): Result<UpsertInput> {
  const merged: UpsertWebhookRequest = {
    accountId: request.accountId,
    url: stored.url,
    basicAuth:
      stored.auth === undefined ? undefined : { username: stored.auth.username, password: stored.auth.password },
    maxMessagesPerContact: stored.maxMessagesPerContact,
    enabled: stored.enabled,
    signingSecret: stored.signingSecret ?? '',
    // Stored from whole seconds by UpsertWebhook; a store default of another unit is rounded up, never to 0.
    defaultMessageTtlSeconds: Math.max(1, Math.ceil(stored.messageTtlMs / 1000)),
    rateLimitPerSecond: stored.rateLimitPerSecond,
    headers: { ...stored.headers },
  };
  const target = merged as unknown as Record<string, unknown>;
  for (const field of fields) target[UPDATE_KEYS[field]] = request[UPDATE_KEYS[field]];
  return parseUpsertWebhook(merged, defaultTtlSeconds);
}

/**
 * What a save storing the signing secret `next` (undefined: none) keeps of a rotation, given the webhook as it was
 * read before the save: a changed secret keeps the one it replaces signing beside it until `now + overlapMs`
 * (only one: a second change within the overlap drops the first secret); an unchanged one lets a rotation under way
 * run to its end; no secret, no overlap (0), or a stored secret that cannot be opened (its key is gone) keeps none.
 */
export function signingRotation(
  before: WebhookRecord | null,
  next: string | undefined,
  now: number,
  overlapMs: number,
): SigningRotation {
  if (next === undefined || before === null || before.secretsSealed === true) return {};
  if (before.signingSecret === next) {
    const previousSigningSecret = replacedSigningSecretAt(before, now);
    return previousSigningSecret === undefined
      ? {}
      : { previousSigningSecret, previousSigningSecretExpiresAt: before.previousSigningSecretExpiresAt };
  }
  if (before.signingSecret === undefined || overlapMs <= 0) return {};
  return { previousSigningSecret: before.signingSecret, previousSigningSecretExpiresAt: now + overlapMs };
}

/** A message whose contact has no externalCustomerId is checked with every other rule, then skipped. */
const messageWithoutContactSchema = messageSchema.omit({ externalCustomerId: true });

/** Whether a message's contact can receive webhooks (SPEC §3): blank counts as none. */
export function hasExternalCustomerId(message: Pick<InboxMessage, 'externalCustomerId'>): boolean {
  return message.externalCustomerId.trim() !== '';
}

/** A valid message to store; `expiresAt` null means "the account's default TTL from now". */
export type ParsedMessage = Omit<StoredMessage, 'expiresAt'> & { expiresAt: number | null };

export interface PublishInput {
  accountId: string;
  /** The messages to store (those with an externalCustomerId), in request order. */
  messages: ParsedMessage[];
  /** Indices (in the request) of the messages skipped for lack of an externalCustomerId. */
  skippedIndices: number[];
}

/** A message in the seed's format, for the schema: no externalCustomerId when it is blank (SPEC §3). */
function wireMessage(m: InboxMessage): Record<string, unknown> {
  const wire: Record<string, unknown> = {
    id: m.id,
    createdDate: m.createdDate,
    title: m.title,
    content: m.content,
    category: m.category,
  };
  if (hasExternalCustomerId(m)) wire.externalCustomerId = m.externalCustomerId;
  if (m.image !== undefined) wire.image = m.image;
  if (m.link !== undefined) wire.link = m.link;
  // Empty is none, as for image and link: a client that always sets the field (from a column that defaults to '') is
  // not refused for a message without custom data.
  if (m.customData !== undefined && m.customData !== '') wire.customData = m.customData;
  return wire;
}

const VALID = { ok: true } as const;

/**
 * Validates a PublishMessages request. Every message is validated (also the ones that will be skipped,
 * except for their missing externalCustomerId), and its expiry resolved: `expires_at_ms`, else now +
 * `ttl_seconds`, else null (the account's TTL, applied by the caller once it has read the webhook).
 */
export function parsePublishMessages(request: PublishMessagesRequest, now: number): Result<PublishInput> {
  const violations = checkAccountId(request.accountId);
  const count = request.messages.length;
  if (count === 0) violations.push({ field: 'messages', description: 'must contain at least 1 message' });
  if (count > MAX_MESSAGES_PER_PUBLISH) {
    // Checked before the messages themselves: no point validating 50,000 messages to refuse them anyway.
    violations.push({
      field: 'messages',
      description: `must contain at most ${MAX_MESSAGES_PER_PUBLISH} messages (got ${count})`,
    });
    return { ok: false, violations };
  }
  const messages: ParsedMessage[] = [];
  const skippedIndices: number[] = [];
  const latest = now + MAX_TTL_SECONDS * 1000;
  const wires = request.messages.map(wireMessage);
  // One parse of every message with a contact, the common case, costs about 60% of one parse per message (the
  // publish hot path, issue 6); only when it fails is each message parsed on its own, so that every violation
  // is named by its message's index (a refused request pays both, about 1.6 times one parse per message).
  const contacts = wires.filter((wire) => wire.externalCustomerId !== undefined);
  const allValid = validate(messageListSchema, contacts).ok;
  request.messages.forEach((m, i) => {
    const prefix = `messages[${i}]`;
    const wire = wires[i]!;
    const withContact = wire.externalCustomerId !== undefined;
    const checked = !withContact
      ? validate(messageWithoutContactSchema, wire, prefix)
      : allValid
        ? VALID
        : validate(messageSchema, wire, prefix);
    if (!checked.ok) violations.push(...fromCore(checked.violations));

    let expiresAt: number | null = null;
    if (m.ttlSeconds !== undefined && m.expiresAtMs !== undefined) {
      violations.push({ field: `${prefix}.ttl_seconds`, description: 'must not be set together with expires_at_ms' });
    } else if (m.ttlSeconds !== undefined) {
      if (!Number.isSafeInteger(m.ttlSeconds) || m.ttlSeconds < 1 || m.ttlSeconds > MAX_TTL_SECONDS) {
        violations.push({
          field: `${prefix}.ttl_seconds`,
          description: `must be from 1 to ${MAX_TTL_SECONDS} seconds`,
        });
      } else expiresAt = now + m.ttlSeconds * 1000;
    } else if (m.expiresAtMs !== undefined) {
      // A past expiry is refused rather than stored dead: it is most often seconds sent as milliseconds.
      if (!Number.isSafeInteger(m.expiresAtMs) || m.expiresAtMs <= now || m.expiresAtMs > latest) {
        violations.push({
          field: `${prefix}.expires_at_ms`,
          description: 'must be a time in milliseconds since the epoch, later than now and at most one year ahead',
        });
      } else expiresAt = m.expiresAtMs;
    }
    if (!withContact) {
      skippedIndices.push(i);
      return;
    }
    if (!checked.ok) return;
    const stored: ParsedMessage = {
      externalCustomerId: m.externalCustomerId,
      // A UUID's hex digits are case-insensitive (RFC 9562 §4): in its canonical lowercase form, the same UUID sent
      // in upper case is a duplicate, not a second message with the same interaction id.
      id: m.id.toLowerCase(),
      createdDate: m.createdDate,
      title: m.title,
      content: m.content,
      category: m.category,
      expiresAt,
    };
    if (m.image !== undefined) stored.image = m.image;
    if (m.link !== undefined) stored.link = m.link;
    if (m.customData !== undefined && m.customData !== '') stored.customData = m.customData;
    messages.push(stored);
  });
  if (violations.length > 0) return { ok: false, violations };
  return { ok: true, value: { accountId: request.accountId, messages, skippedIndices } };
}

export interface ResyncInput {
  accountId: string;
  contacts: string[] | 'all';
}

export function parseResyncContacts(request: ResyncContactsRequest): Result<ResyncInput> {
  const violations = checkAccountId(request.accountId);
  const ids = request.externalCustomerIds;
  if (request.all && ids.length > 0) {
    violations.push({ field: 'external_customer_ids', description: 'must be empty when all is true' });
  } else if (!request.all && ids.length === 0) {
    violations.push({ field: 'external_customer_ids', description: 'must name at least one contact, or set all' });
  } else if (ids.length > MAX_CONTACTS_PER_RESYNC) {
    violations.push({
      field: 'external_customer_ids',
      description: `must name at most ${MAX_CONTACTS_PER_RESYNC} contacts`,
    });
  } else {
    ids.forEach((id, i) => violations.push(...checkContactId(id, `external_customer_ids[${i}]`)));
  }
  if (violations.length > 0) return { ok: false, violations };
  return { ok: true, value: { accountId: request.accountId, contacts: request.all ? 'all' : [...new Set(ids)] } };
}

export interface ListInput {
  filter: DeliveryFilter;
  pageSize: number;
  cursor: string | null;
}

/** Unknown entries of ListDeliveries' `states` named in one error, at most. */
const MAX_NAMED_STATE_ERRORS = 10;

export function parseListDeliveries(request: ListDeliveriesRequest): Result<ListInput> {
  const violations: FieldViolation[] = [];
  const filter: DeliveryFilter = {};
  if (request.accountId !== '') {
    violations.push(...checkAccountId(request.accountId));
    filter.accountId = request.accountId;
  }
  if (request.externalCustomerId !== '') {
    violations.push(...checkContactId(request.externalCustomerId, 'external_customer_id'));
    filter.externalCustomerId = request.externalCustomerId;
  }
  if (request.states.length > 0) {
    // Each state once: a filter of 100,000 repeats reached the store as as many SQL parameters (INTERNAL). Unknown
    // entries are named by index, the first few of them.
    const states = new Set<StoreDeliveryState>();
    let unknown = 0;
    request.states.forEach((s, i) => {
      const state = stateFromProto(s);
      if (state !== null) states.add(state);
      else if (unknown++ < MAX_NAMED_STATE_ERRORS)
        violations.push({ field: `states[${i}]`, description: 'must be a known DeliveryState other than UNSPECIFIED' });
    });
    filter.states = [...states];
  }
  if (request.pageToken.length > 1024)
    violations.push({ field: 'page_token', description: 'is not a token from a previous page' });
  if (violations.length > 0) return { ok: false, violations };
  const pageSize = request.pageSize === 0 ? DEFAULT_PAGE_SIZE : Math.min(request.pageSize, MAX_PAGE_SIZE);
  return { ok: true, value: { filter, pageSize, cursor: request.pageToken === '' ? null : request.pageToken } };
}
