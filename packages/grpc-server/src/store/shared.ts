/**
 * Pieces both engines share: ids, cursors, argument checks, row mapping and the outcome fan-out.
 * Both engines use the same column names, so one mapper reads a row of either.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { StoredMessage, WebhookConfig } from '@app-inbox/core';
import { StoreError } from './errors.js';
import type {
  Attempt,
  AttemptResult,
  Delivery,
  DeliveryFilter,
  DeliveryOutcome,
  DeliveryState,
  SigningRotation,
  WebhookRecord,
  WebhookSettings,
} from './types.js';

/** One versioned schema change; `sql` runs as one script inside the migration transaction. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/**
 * A migration that a build on main released and a later commit reverted. A database that such a build migrated
 * records it (its version and name) while this build's migration of that version, if it has one, is another; without
 * this it was taken for this build's (a body column missing: every delivery failed) or, past the last version, made
 * the start fail with "upgrade the service" on the newest build. `undo` takes the schema back to what it was before
 * the withdrawn migration, keeping the data; its record is then deleted and this build's migrations are applied.
 */
export interface WithdrawnMigration {
  version: number;
  name: string;
  undo: string;
}

/** A row of `schema_migrations`. */
export interface MigrationRecord {
  version: number;
  name: string;
}

/** What a start does to a database, from its recorded migrations: {@link planMigrations}. */
export interface MigrationPlan {
  /** Withdrawn migrations to undo, the latest first. */
  undo: WithdrawnMigration[];
  /** This build's migrations the database lacks (once the undone ones are gone), in version order. */
  apply: Migration[];
}

/**
 * Compares the recorded migrations with this build's. A record of this build's version and name is applied; one of a
 * {@link WithdrawnMigration} is undone, after which this build's migration of that version (if any) is applied like
 * the missing ones. Any other record means another build migrated the database (newer, or from another branch):
 * `schema_too_new`, before anything is changed.
 */
export function planMigrations(
  recorded: readonly MigrationRecord[],
  migrations: readonly Migration[],
  withdrawn: readonly WithdrawnMigration[],
): MigrationPlan {
  const latest = migrations.reduce((max, m) => Math.max(max, m.version), 0);
  const undo: WithdrawnMigration[] = [];
  const kept = new Set<number>();
  for (const r of recorded) {
    if (migrations.some((m) => m.version === r.version && m.name === r.name)) {
      kept.add(r.version);
      continue;
    }
    const w = withdrawn.find((x) => x.version === r.version && x.name === r.name);
    if (w !== undefined) {
      undo.push(w);
      continue;
    }
    const own = migrations.find((m) => m.version === r.version);
    throw new StoreError(
      'schema_too_new',
      r.version > latest
        ? `the database is at schema version ${Math.max(...recorded.map((x) => x.version))}, this build knows up to ` +
            `${latest}: upgrade the service`
        : `the database records migration ${r.version} as '${r.name}', this build's is '${own?.name ?? ''}': ` +
            'it was migrated by another build of the service; run that one',
    );
  }
  undo.sort((a, b) => b.version - a.version);
  const apply = [...migrations].filter((m) => !kept.has(m.version)).sort((a, b) => a.version - b.version);
  return { undo, apply };
}

/** Default time-to-live of a message published without its own expiry (ms): 1 day. @see SPEC §4 */
export const DEFAULT_MESSAGE_TTL_MS = 24 * 60 * 60 * 1000;

/** Every delivery state, in the order of the lifecycle. */
export const DELIVERY_STATES: readonly DeliveryState[] = [
  'pending',
  'in_flight',
  'retrying',
  'delivered',
  'failed',
  'superseded',
];

/** States a delivery never leaves on its own (sweep removes them after the retention). */
export const TERMINAL_STATES: readonly DeliveryState[] = ['delivered', 'failed', 'superseded'];

/** Largest page of listDeliveries (deliveries). */
export const MAX_PAGE_SIZE = 1000;

/** Expired leases taken back per claim call, so that one claim stays O(batch). */
export const REAP_BATCH = 500;

/**
 * A UUID version 7 (RFC 9562): 48 bits of the caller's clock then random bits, so ids of deliveries
 * created at different milliseconds sort by creation. Order within a millisecond is kept by the row
 * sequence, which is what cursors use.
 */
export function newDeliveryId(now: number): string {
  const random = randomUUID(); // xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx, variant bits already right
  const ts = Math.max(0, Math.min(Math.trunc(now), 0xffff_ffff_ffff))
    .toString(16)
    .padStart(12, '0');
  return `${ts.slice(0, 8)}-${ts.slice(8, 12)}-7${random.slice(15)}`;
}

/**
 * Cursors of version 2 carry a digest of the filter they were made for (AIP-158: a page token is good only for
 * the listing that gave it). Version 1 (`d1:<seq>`) had the position only, so a token of one filter was taken
 * with another and silently skipped that listing's rows newer than the position.
 */
const CURSOR_V2 = 'd2:';
/**
 * Version 1 cursors are still read, without a filter check (a choice): during a rolling upgrade a client paging
 * through a listing may get its next page from an upgraded process, and refusing the old process's token would
 * break every listing in flight. Such a token is as unchecked as it always was. The reverse (a d2 token read by
 * a process of the previous release) is refused there as malformed: the client starts its listing again. This
 * branch can go once no process of the previous release runs (a d1 token kept past that is then refused).
 */
const CURSOR_V1 = 'd1:';
const CURSOR_V2_TEXT = /^d2:(\d{1,16}):([\w-]{11})$/;

/**
 * A short digest of everything a listing is filtered by (states in any order and repeated mean the same):
 * 66 bits of SHA-256, enough to tell the listings of one caller apart. Not a secret nor a signature: a caller
 * could make a token for another filter, but a token only positions a listing whose rows the caller's own
 * filter already selects.
 */
function filterDigest(filter: DeliveryFilter): string {
  const states = [...new Set(filter.states ?? [])].sort();
  const canonical = JSON.stringify([filter.accountId ?? null, filter.externalCustomerId ?? null, states]);
  return createHash('sha256').update(canonical, 'utf8').digest('base64url').slice(0, 11);
}

/**
 * An opaque cursor: the sequence number of the last delivery of the page (pages go newest first) and the
 * digest of the listing's `filter`.
 */
export function encodeCursor(seq: number, filter: DeliveryFilter): string {
  return Buffer.from(`${CURSOR_V2}${seq}:${filterDigest(filter)}`, 'utf8').toString('base64url');
}

/**
 * Reads a cursor of {@link encodeCursor} for a listing of `filter`; a malformed one, or one made for another
 * filter, is an `invalid_argument` naming `cursor`.
 */
export function decodeCursor(cursor: string, filter: DeliveryFilter): number {
  const text = Buffer.from(cursor, 'base64url').toString('utf8');
  let seq = NaN;
  if (text.startsWith(CURSOR_V2)) {
    const match = CURSOR_V2_TEXT.exec(text);
    if (match !== null) {
      if (match[2] !== filterDigest(filter)) {
        throw new StoreError('invalid_argument', 'cursor: returned by a listDeliveries with another filter');
      }
      seq = Number(match[1]);
    }
  } else if (text.startsWith(CURSOR_V1)) {
    seq = Number(text.slice(CURSOR_V1.length));
  }
  if (!Number.isSafeInteger(seq) || seq < 0) {
    throw new StoreError('invalid_argument', 'cursor: not a cursor returned by listDeliveries');
  }
  return seq;
}

/** `value` must be an integer in [min, max]. */
export function assertInt(name: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new StoreError('invalid_argument', `${name}: must be an integer in [${min}, ${max}], got ${String(value)}`);
  }
  return value;
}

/** A time in ms since the epoch (the engines never read a clock of their own). */
export function assertTime(name: string, value: unknown): number {
  return assertInt(name, value, 0);
}

/** `value` must be a non-empty string. */
export function assertId(name: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new StoreError('invalid_argument', `${name}: must be a non-empty string`);
  }
  return value;
}

/** Light checks of what the store relies on; full validation (core schema) is the API's job. */
export function assertStoredMessages(messages: readonly StoredMessage[]): void {
  if (!Array.isArray(messages)) throw new StoreError('invalid_argument', 'messages: must be an array');
  messages.forEach((m, i) => {
    assertId(`messages[${i}].id`, m.id);
    assertId(`messages[${i}].externalCustomerId`, m.externalCustomerId);
    assertInt(`messages[${i}].createdDate`, m.createdDate, Number.MIN_SAFE_INTEGER);
    assertInt(`messages[${i}].expiresAt`, m.expiresAt, Number.MIN_SAFE_INTEGER);
  });
}

/** The contacts of `messages`, once each, sorted (a fixed lock order across concurrent transactions). */
export function distinctSorted(ids: Iterable<string>): string[] {
  return [...new Set(ids)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** A message a sweep deleted as expired, as its delete returns it: the account is the engine's key of it. */
export interface ExpiredRow<K extends string | number> {
  account: K;
  external_customer_id: string;
  id: string;
}

/**
 * The messages a sweep deleted as expired, by account (its key in the engine) and then contact, as the message ids
 * each contact lost: accounts and contacts sorted (the lock order of {@link distinctSorted}).
 */
export function expiredByContact<K extends string | number>(
  rows: ReadonlyArray<ExpiredRow<K>>,
): Array<{ account: K; contacts: Map<string, Set<string>> }> {
  const byAccount = new Map<K, Map<string, Set<string>>>();
  for (const row of rows) {
    let contacts = byAccount.get(row.account);
    if (contacts === undefined) byAccount.set(row.account, (contacts = new Map()));
    let ids = contacts.get(row.external_customer_id);
    if (ids === undefined) contacts.set(row.external_customer_id, (ids = new Set()));
    ids.add(row.id);
  }
  const order = (a: string | number, b: string | number) => (a < b ? -1 : a > b ? 1 : 0);
  return [...byAccount.keys()].sort(order).map((account) => {
    const contacts = byAccount.get(account)!;
    return { account, contacts: new Map([...contacts.keys()].sort(order).map((c) => [c, contacts.get(c)!])) };
  });
}

/**
 * Whether a contact that lost the `expired` messages is sent its list again (Store.sweep's `refreshExpired`): when a
 * list the receiver may hold (the newest it answered 2xx to, or one built after it; each a `message_ids`, the JSON
 * array of its message ids) held one of them, or when no list of it is left to tell (never built, swept after the
 * retention, or in flight and not frozen yet, which may hold a message read before it expired). Lists that left them
 * all out (built after they expired, or with them pushed out by the cap) are what the receiver already has: no
 * request for nothing.
 *
 * The engines test it where the list is, without parsing it: a list held an id when its text holds the id as
 * `JSON.stringify` writes it, quotes included (the list was written so). This gives each engine that pattern of
 * every expired id, as a JSON array of strings. A pattern found across two ids could only send a list more, never
 * one less. Parsing each list in JavaScript cost most of a sweep: 1,000 lists of 1,000 ids took 0.1 s of JSON.parse
 * holding SQLite's write lock, and PostgreSQL sent the 39 MB of them.
 */
export function expiredIdPatterns(expired: ReadonlySet<string>): string {
  return JSON.stringify([...expired].map((id) => JSON.stringify(id)));
}

/**
 * The byte cut of a claim (`ClaimOptions.maxBodyBytes`), candidate by candidate in claim order: whether the
 * next delivery, with a frozen body of `bytes`, is taken. Its first always is, whatever its size; then each while the
 * bodies taken stay within `maxBytes`. Once one is refused, the claim ends there.
 */
export function bodyBytesCut(maxBytes: number): (bytes: number) => boolean {
  let taken = 0;
  let total = 0;
  return (bytes) => {
    if (taken > 0 && total + bytes > maxBytes) return false;
    taken += 1;
    total += bytes;
    return true;
  };
}

/** What `lastError` says about a failed or retried attempt: `http_<status>` or the error kind. */
export function failureReason(attempt: Pick<Attempt, 'statusCode' | 'errorKind'>): string {
  if (attempt.statusCode !== null) return `http_${attempt.statusCode}`;
  return attempt.errorKind ?? 'unknown';
}

/** Longest {@link AttemptResult.reason} stored (characters); reasons are short stable codes. */
export const MAX_REASON_LENGTH = 200;

/** The `lastError` an attempt leaves: its result's reason, else {@link failureReason}. */
export function attemptReason(result: Pick<AttemptResult, 'attempt' | 'reason'>): string {
  if (result.reason === undefined) return failureReason(result.attempt);
  if (typeof result.reason !== 'string' || result.reason === '' || result.reason.length > MAX_REASON_LENGTH) {
    throw new StoreError('invalid_argument', `reason: must be a string of 1 to ${MAX_REASON_LENGTH} characters`);
  }
  return result.reason;
}

/** What a superseded delivery's row says about it (both engines return these columns). */
export interface SupersededRow {
  id: string;
  external_customer_id: string;
  attempt_count: number | string;
  message_ids: string | null;
}

/**
 * The `superseded` outcome of a delivery the store just superseded (see {@link DeliveryOutcome}: the store
 * emits these itself). `attempt` is the attempt `recordAttempt` recorded when that is what superseded it.
 */
export function supersededOutcome(
  row: SupersededRow,
  accountId: string,
  supersededBy: string,
  at: number,
  attempt?: Pick<Attempt, 'statusCode' | 'errorKind'>,
): DeliveryOutcome {
  return {
    deliveryId: row.id,
    accountId,
    externalCustomerId: row.external_customer_id,
    state: 'superseded',
    messageIds: row.message_ids === null ? [] : (JSON.parse(row.message_ids) as string[]),
    attemptNo: Number(row.attempt_count),
    statusCode: attempt?.statusCode ?? null,
    errorKind: attempt?.errorKind ?? null,
    nextAttemptAt: null,
    at,
    supersededBy,
  };
}

/** A W3C `traceparent` (version 00): `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. */
const TRACEPARENT = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

/**
 * The traceparent to store: null when absent, else a well-formed W3C `traceparent` (an `invalid_argument`
 * otherwise, so a malformed value never reaches a row). Only the format is checked, not that the ids are
 * non-zero: the tracing module ignores an invalid context when it reads it back.
 */
export function assertTraceparent(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string' || !TRACEPARENT.test(value)) {
    throw new StoreError(
      'invalid_argument',
      'traceparent: must be a W3C traceparent (00-<trace id>-<span id>-<flags>)',
    );
  }
  return value;
}

const MAX_INT32 = 2_147_483_647;
/** An error kind as the classification table names them (`timeout`, `body_too_large`, ...). */
const ERROR_KIND = /^[a-z][a-z0-9_]{0,63}$/;

/** Checks an attempt row before it is written. */
export function assertAttempt(attempt: Attempt): void {
  // Bounded by the columns of both engines (PostgreSQL's `integer`), so that a bad value is refused here rather
  // than failing a statement that records other calls' attempts with it (PostgreSQL's batched records).
  assertInt('attempt.attemptNo', attempt.attemptNo, 1, MAX_INT32);
  assertTime('attempt.startedAt', attempt.startedAt);
  assertInt('attempt.durationMs', attempt.durationMs, 0);
  if (attempt.statusCode !== null) assertInt('attempt.statusCode', attempt.statusCode, 100, 999);
  if (attempt.errorKind !== null && (typeof attempt.errorKind !== 'string' || !ERROR_KIND.test(attempt.errorKind))) {
    throw new StoreError('invalid_argument', `attempt.errorKind: must be null or a lowercase code such as 'timeout'`);
  }
  if (!['delivered', 'retry', 'failed'].includes(attempt.verdict)) {
    throw new StoreError('invalid_argument', `attempt.verdict: must be delivered, retry or failed`);
  }
  if (attempt.nextAttemptAt !== null) assertTime('attempt.nextAttemptAt', attempt.nextAttemptAt);
}

/**
 * `stats` counts by state, the same SQL for both engines: each count is answered from an index of its state alone
 * (the partial indexes of both schemas: SQLite's migration 3, PostgreSQL's 4).
 */
export const STATS_COUNTS_SQL = `
  SELECT 'pending' AS state, COUNT(*) AS n FROM deliveries WHERE state = 'pending'
  UNION ALL SELECT 'in_flight', COUNT(*) FROM deliveries WHERE state = 'in_flight'
  UNION ALL SELECT 'retrying', COUNT(*) FROM deliveries WHERE state = 'retrying'
  UNION ALL SELECT state, COUNT(*) FROM deliveries WHERE state IN ('delivered', 'failed', 'superseded') GROUP BY state`;

/** Zero for every state. */
export function emptyByState(): Record<DeliveryState, number> {
  return { pending: 0, in_flight: 0, retrying: 0, delivered: 0, failed: 0, superseded: 0 };
}

/**
 * The replaced signing secret that still signs at `now` (a rotation's overlap not yet over), or undefined: what the
 * sender signs with beside the current secret, what a read shows the end of, and what a save that keeps the secret
 * carries on.
 */
export function replacedSigningSecretAt(rotation: SigningRotation, now: number): string | undefined {
  const { previousSigningSecret, previousSigningSecretExpiresAt } = rotation;
  return previousSigningSecretExpiresAt !== undefined && previousSigningSecretExpiresAt > now
    ? previousSigningSecret
    : undefined;
}

/** The webhook as stored: the whole config (secrets included) as JSON, `enabled` also as a column for claims. */
export interface WebhookRow {
  account_id: string;
  config: string;
  enabled: boolean | number;
  message_ttl_ms: number | string;
  created_at: number | string;
  updated_at: number | string;
}

/** The webhook's own headers are a map of strings (the API checked them; a store must not write anything else). */
function assertHeaders(headers: unknown): void {
  const isMap = headers !== null && typeof headers === 'object' && !Array.isArray(headers);
  if (!isMap || Object.values(headers).some((value) => typeof value !== 'string')) {
    // The values are secrets: named by the field only.
    throw new StoreError('invalid_argument', 'config.headers: must map header names to string values');
  }
}

/** Splits what upsertWebhook receives into the stored config JSON and the TTL. */
export function webhookToStored(config: WebhookSettings): {
  json: string;
  enabled: boolean;
  messageTtlMs: number;
} {
  if (config === null || typeof config !== 'object') throw new StoreError('invalid_argument', 'config: required');
  assertId('config.url', config.url);
  if (typeof config.enabled !== 'boolean')
    throw new StoreError('invalid_argument', 'config.enabled: must be a boolean');
  assertInt('config.maxMessagesPerContact', config.maxMessagesPerContact, 1);
  if (config.rateLimitPerSecond !== undefined) assertInt('config.rateLimitPerSecond', config.rateLimitPerSecond, 1);
  if (config.headers !== undefined) assertHeaders(config.headers);
  if ((config.previousSigningSecret === undefined) !== (config.previousSigningSecretExpiresAt === undefined)) {
    throw new StoreError('invalid_argument', 'config.previousSigningSecret: comes with its expiry, or neither is set');
  }
  if (config.previousSigningSecret !== undefined)
    assertId('config.previousSigningSecret', config.previousSigningSecret);
  if (config.previousSigningSecretExpiresAt !== undefined) {
    assertTime('config.previousSigningSecretExpiresAt', config.previousSigningSecretExpiresAt);
  }
  const { messageTtlMs, ...rest } = config;
  const ttl = messageTtlMs === undefined ? DEFAULT_MESSAGE_TTL_MS : assertInt('config.messageTtlMs', messageTtlMs, 1);
  return { json: JSON.stringify(rest), enabled: rest.enabled, messageTtlMs: ttl };
}

export function webhookFromRow(row: WebhookRow): WebhookRecord {
  const config = JSON.parse(row.config) as WebhookConfig;
  return {
    ...config,
    enabled: Boolean(row.enabled),
    accountId: row.account_id,
    messageTtlMs: Number(row.message_ttl_ms),
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

/** A delivery row; integers may come back as strings (PostgreSQL bigint). */
export interface DeliveryRow {
  seq: number | string;
  id: string;
  account_id: string;
  external_customer_id: string;
  state: DeliveryState;
  created_at: number | string;
  updated_at: number | string;
  next_attempt_at: number | string | null;
  lease_owner: string | null;
  attempt_count: number | string;
  first_attempt_at: number | string | null;
  body: Uint8Array | null;
  message_ids: string | null;
  superseded_by: string | null;
  last_error: string | null;
  /** Absent from rows selected without it (older column lists); read as null. */
  traceparent?: string | null;
}

const num = (v: number | string): number => (typeof v === 'number' ? v : Number(v));
const numOrNull = (v: number | string | null): number | null => (v === null ? null : num(v));

/** A byte view without a copy; a Buffer (both drivers) becomes a plain Uint8Array so results compare equal. */
export function toBytes(value: Uint8Array): Uint8Array {
  return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
}

export function deliveryFromRow(row: DeliveryRow): Delivery {
  return {
    id: row.id,
    accountId: row.account_id,
    externalCustomerId: row.external_customer_id,
    state: row.state,
    createdAt: num(row.created_at),
    updatedAt: num(row.updated_at),
    nextAttemptAt: numOrNull(row.next_attempt_at),
    attemptCount: num(row.attempt_count),
    firstAttemptAt: numOrNull(row.first_attempt_at),
    body: row.body === null ? null : toBytes(row.body),
    messageIds: row.message_ids === null ? null : (JSON.parse(row.message_ids) as string[]),
    supersededBy: row.superseded_by,
    lastError: row.last_error,
    traceparent: row.traceparent ?? null,
  };
}

export interface AttemptRow {
  delivery_id: string;
  attempt_no: number | string;
  started_at: number | string;
  duration_ms: number | string;
  status_code: number | string | null;
  error_kind: string | null;
  verdict: Attempt['verdict'];
  next_attempt_at: number | string | null;
}

export function attemptFromRow(row: AttemptRow): Attempt {
  return {
    deliveryId: row.delivery_id,
    attemptNo: num(row.attempt_no),
    startedAt: num(row.started_at),
    durationMs: num(row.duration_ms),
    statusCode: numOrNull(row.status_code),
    errorKind: row.error_kind,
    verdict: row.verdict,
    nextAttemptAt: numOrNull(row.next_attempt_at),
  };
}

export interface MessageRow {
  account_id: string;
  id: string;
  external_customer_id: string;
  created_date: number | string;
  expires_at: number | string;
  title: string;
  content: string;
  image: string | null;
  link: string | null;
  category: string;
  custom_data: string | null;
}

/** Absent optional fields are stored as NULL and come back absent, so a message round-trips exactly. */
export function messageFromRow(row: MessageRow): StoredMessage {
  const m: StoredMessage = {
    externalCustomerId: row.external_customer_id,
    id: row.id,
    createdDate: num(row.created_date),
    title: row.title,
    content: row.content,
    category: row.category,
    expiresAt: num(row.expires_at),
  };
  if (row.image !== null) m.image = row.image;
  if (row.link !== null) m.link = row.link;
  if (row.custom_data !== null) m.customData = row.custom_data;
  return m;
}

/**
 * In-process fan-out of outcomes. Listeners run after the emitting call returns (never inside a
 * transaction), each in its own try/catch: a throwing listener cannot stop the others or the emitter,
 * so listeners must handle their own errors.
 */
export class OutcomeListeners {
  readonly #listeners = new Set<(outcome: DeliveryOutcome) => void>();

  add(listener: (outcome: DeliveryOutcome) => void): () => void {
    // A wrapper per subscription, so the same function subscribed twice is two subscriptions.
    const entry = (o: DeliveryOutcome): void => listener(o);
    this.#listeners.add(entry);
    return () => {
      this.#listeners.delete(entry);
    };
  }

  get size(): number {
    return this.#listeners.size;
  }

  dispatch(outcome: DeliveryOutcome): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(outcome);
      } catch {
        // Deliberately ignored: see the class comment.
      }
    }
  }

  clear(): void {
    this.#listeners.clear();
  }
}
