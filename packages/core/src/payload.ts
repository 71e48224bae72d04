/**
 * Building the webhook request body from a contact's stored messages.
 * @see SPEC §3 (who gets messages), SPEC §4 (the message and the payload)
 */
import { CoreError } from './errors.js';
import type { AppInboxMessage, StoredMessage } from './types.js';

/** Newest first: createdDate descending, then id ascending (code-unit order) so the order is total. */
export function compareNewestFirst(a: AppInboxMessage, b: AppInboxMessage): number {
  if (a.createdDate !== b.createdDate) return b.createdDate - a.createdDate;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

function assertMax(max: number): void {
  if (!Number.isInteger(max) || max < 1) {
    throw new CoreError('invalid_argument', `maxMessagesPerContact must be an integer >= 1, got ${String(max)}`);
  }
}

/**
 * "The list of all the available App Inbox messages" of one contact: drops the expired ones
 * (`expiresAt <= now`), orders newest first (createdDate descending, ties by id ascending) and keeps
 * at most `max` of them (the newest). Does not modify its input.
 * @param now the clock, ms since the epoch
 * @param max maxMessagesPerContact, an integer >= 1
 * @see SPEC §4
 */
export function availableMessages<T extends StoredMessage>(messages: readonly T[], now: number, max: number): T[] {
  assertMax(max);
  return messages
    .filter((m) => m.expiresAt > now)
    .sort(compareNewestFirst)
    .slice(0, max);
}

/**
 * A message exactly as the receiver sees it: the seed's fields in the seed's order; `image` and `link`
 * always present ('' when absent); `customData` only when present; nothing else (no `expiresAt`).
 * @see SPEC §4
 */
export function toWireMessage(m: AppInboxMessage): AppInboxMessage {
  const wire: AppInboxMessage = {
    externalCustomerId: m.externalCustomerId,
    id: m.id,
    createdDate: m.createdDate,
    title: m.title,
    content: m.content,
    image: m.image ?? '',
    link: m.link ?? '',
    category: m.category,
  };
  // `null` can reach here from a database row; the seed has no null, so it means "absent".
  if (m.customData !== undefined && m.customData !== null) wire.customData = m.customData;
  return wire;
}

/** The request body: a JSON array of wire messages. @see SPEC §4 */
export function serializeMessages(messages: readonly AppInboxMessage[]): string {
  return JSON.stringify(messages.map(toWireMessage));
}

/** One contact's part of a request. */
export interface PayloadContact {
  /** The receiver's id of the contact; every message of the contact must carry the same one. */
  externalCustomerId: string;
  /** Every stored message of the contact, expired or not, in any order. */
  messages: readonly StoredMessage[];
}

/** Input of {@link buildPayload}. */
export interface BuildPayloadInput {
  /**
   * The contacts that go into this one request, in this order. The server sends one contact per request
   * (a delivery is one contact's list, named by the `app-inbox-contact` header).
   */
  contacts: ReadonlyArray<PayloadContact>;
  /** The clock, ms since the epoch; messages with `expiresAt <= now` are left out. */
  now: number;
  /** At most this many messages per contact (the newest). @see SPEC §2 */
  maxMessagesPerContact: number;
}

/** A built request body. */
export interface BuiltPayload {
  /** The JSON array, exactly the bytes to POST. */
  body: string;
  /** The ids of the messages in `body`, in body order. */
  messageIds: string[];
  /** How many messages `body` holds. */
  count: number;
}

/**
 * Builds one request body: each contact's list is filtered, ordered and capped on its own
 * ({@link availableMessages}), and the lists are concatenated in the given contact order. A contact
 * whose messages all expired contributes nothing; when that leaves the body `[]`, sending it is still
 * meaningful, since the receiver replaces what it stored for the contact (SPEC §4).
 * @throws CoreError `invalid_argument` when a contact has a blank externalCustomerId or a message of
 *   another contact (a bug upstream: contacts without an id are set aside by {@link partitionByCustomerId}).
 */
export function buildPayload(input: BuildPayloadInput): BuiltPayload {
  assertMax(input.maxMessagesPerContact);
  const selected: StoredMessage[] = [];
  input.contacts.forEach((contact, contactIndex) => {
    if (isBlank(contact.externalCustomerId)) {
      throw new CoreError('invalid_argument', `contacts[${contactIndex}].externalCustomerId must not be empty`);
    }
    contact.messages.forEach((m, messageIndex) => {
      if (m.externalCustomerId !== contact.externalCustomerId) {
        throw new CoreError(
          'invalid_argument',
          `contacts[${contactIndex}].messages[${messageIndex}].externalCustomerId differs from its contact's`,
        );
      }
    });
    selected.push(...availableMessages(contact.messages, input.now, input.maxMessagesPerContact));
  });
  return { body: serializeMessages(selected), messageIds: selected.map((m) => m.id), count: selected.length };
}

function isBlank(value: string | null | undefined): boolean {
  return value === undefined || value === null || value.trim() === '';
}

/** Why a message was set aside instead of delivered. @see SPEC §3 */
export type SkipReason = 'missing_external_customer_id';

/** The result of {@link partitionByCustomerId}; indices point into the input array. */
export interface CustomerIdPartition<T> {
  deliverable: Array<{ index: number; message: T }>;
  skipped: Array<{ index: number; reason: SkipReason }>;
}

/**
 * Sets aside the messages whose contact has no externalCustomerId (absent, null, empty or only
 * whitespace): they cannot be delivered by webhook, and the caller reports how many and why rather
 * than failing the whole request.
 * @see SPEC §3
 */
export function partitionByCustomerId<T extends { externalCustomerId?: string | null }>(
  messages: readonly T[],
): CustomerIdPartition<T> {
  const result: CustomerIdPartition<T> = { deliverable: [], skipped: [] };
  messages.forEach((message, index) => {
    if (isBlank(message.externalCustomerId)) result.skipped.push({ index, reason: 'missing_external_customer_id' });
    else result.deliverable.push({ index, message });
  });
  return result;
}
