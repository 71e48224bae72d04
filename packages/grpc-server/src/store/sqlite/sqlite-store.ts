/**
 * The embedded engine: one SQLite file (better-sqlite3, WAL). SQLite has one writer at a time, so every
 * state change is a `BEGIN IMMEDIATE` transaction and the per-contact rules hold by construction; the
 * partial unique indexes of the schema enforce them again. better-sqlite3 is synchronous: each method
 * runs to completion and returns a settled promise.
 * @see ARCHITECTURE §1-§3
 */
import Database from 'better-sqlite3';
import type { StoredMessage } from '@app-inbox/core';
import { StoreError } from '../errors.js';
import {
  bodyBytesCut,
  DELIVERY_STATES,
  MAX_PAGE_SIZE,
  OutcomeListeners,
  REAP_BATCH,
  STATS_COUNTS_SQL,
  assertAttempt,
  assertId,
  assertInt,
  assertStoredMessages,
  assertTime,
  assertTraceparent,
  attemptFromRow,
  attemptReason,
  decodeCursor,
  deliveryFromRow,
  distinctSorted,
  emptyByState,
  encodeCursor,
  expiredByContact,
  type ExpiredRow,
  expiredIdPatterns,
  messageFromRow,
  newDeliveryId,
  supersededOutcome,
  webhookFromRow,
  webhookToStored,
  type AttemptRow,
  planMigrations,
  type Migration,
  type MigrationRecord,
  type WithdrawnMigration,
  type DeliveryRow,
  type MessageRow,
  type SupersededRow,
  type WebhookRow,
} from '../shared.js';
import type {
  Attempt,
  AttemptResult,
  ClaimCheck,
  ClaimOptions,
  ClaimedDelivery,
  Delivery,
  DeliveryFilter,
  DeliveryOutcome,
  DeliveryPage,
  DeliveryState,
  Lane,
  PublishInput,
  PublishResult,
  RetryResult,
  Store,
  SweepOptions,
  SweepResult,
  TraceOptions,
  WebhookRecord,
  WebhookSettings,
} from '../types.js';
import { messageIdKey, SQLITE_MIGRATIONS, SQLITE_WITHDRAWN_MIGRATIONS } from './schema.js';

export interface SqliteStoreOptions {
  /** Database file; created when missing. `:memory:` for a throwaway database (tests). */
  path: string;
  /**
   * `PRAGMA synchronous`. `full` (default): a commit is on disk before the call returns, so an
   * acknowledged publish survives a crash of the process and of the machine. `normal`: in WAL mode
   * survives a crash of the process (kill -9) but the last commits may be lost on power loss.
   */
  synchronous?: 'full' | 'normal';
  /** How long a writer waits for another connection's lock before failing (ms). Default 5,000. */
  busyTimeoutMs?: number;
  /**
   * Page cache size (KiB). Default 32,768 (32 MiB): at 1,000,000 messages the indexes outgrow any cache of this
   * order and the misses are served from the OS's file cache; 64 MiB measured no faster ingest or drain and
   * 40 MiB more peak memory (bench/README.md).
   */
  cacheSizeKiB?: number;
}

/** Opens (creating when missing) and migrates a SQLite store. */
export async function openSqliteStore(options: SqliteStoreOptions): Promise<SqliteStore> {
  const store = new SqliteStore(options);
  try {
    await store.migrate();
  } catch (error) {
    await store.close();
    throw error;
  }
  return store;
}

/** `PRAGMA wal_autocheckpoint` (pages of the WAL; see the constructor). */
const WAL_AUTOCHECKPOINT_PAGES = 16_384;

const DELIVERY_COLUMNS = `seq, id, account_key, external_customer_id, state, created_at, updated_at, next_attempt_at,
  lease_owner, attempt_count, first_attempt_at, body, message_ids, superseded_by, last_error, traceparent`;

/** A delivery row of this engine: the account by its key. */
type SqliteDeliveryRow = Omit<DeliveryRow, 'account_id'> & { account_key: number };

/** The newest delivery of the same contact created after `d` (by sequence), or NULL. */
const NEWER_ID = `(SELECT n.id FROM deliveries n
   WHERE n.account_key = d.account_key AND n.external_customer_id = d.external_customer_id AND n.seq > d.seq
   ORDER BY n.seq DESC LIMIT 1)`;

const LANE_STATE: Record<Lane, 'pending' | 'retrying'> = { first: 'pending', retry: 'retrying' };

/** What a `superseded` outcome needs of a delivery row. */
const SUPERSEDED_COLUMNS = 'id, account_key, external_customer_id, attempt_count, message_ids';

/** A write queued for the next group commit, and how to settle its caller's promise. */
interface GroupedWrite {
  run: () => unknown;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

export class SqliteStore implements Store {
  readonly path: string;
  /** The page cache of the connection as SQLite reports it (KiB). */
  readonly cacheSizeKiB: number;
  #db: Database.Database | null;
  readonly #listeners = new OutcomeListeners();
  readonly #statements = new Map<string, Database.Statement>();
  /** Account keys never change once committed (accounts rows are never deleted), so they are cached. */
  readonly #keys = new Map<string, number>();
  readonly #accountIds = new Map<number, string>();
  /** Where the write running right now notes the deliveries it supersedes (see {@link SqliteStore.#announcing}). */
  #superseded: DeliveryOutcome[] | null = null;
  /** Writes waiting for the next group commit (see {@link SqliteStore.#grouped}), in call order. */
  readonly #group: GroupedWrite[] = [];
  #groupScheduled = false;
  #flushing = false;
  /** Runs a function in a savepoint when a transaction is open (one grouped write of a group commit). */
  #savepoint!: (fn: () => unknown) => unknown;

  constructor(options: SqliteStoreOptions) {
    assertId('path', options.path);
    const busyTimeoutMs = assertInt('busyTimeoutMs', options.busyTimeoutMs ?? 5000, 0);
    const cacheSizeKiB = assertInt('cacheSizeKiB', options.cacheSizeKiB ?? 32_768, 1);
    const synchronous = options.synchronous ?? 'full';
    if (synchronous !== 'full' && synchronous !== 'normal') {
      throw new StoreError('invalid_argument', `synchronous: must be full or normal, got ${String(synchronous)}`);
    }
    this.path = options.path;
    const db = new Database(options.path);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${synchronous.toUpperCase()}`);
      db.pragma(`busy_timeout = ${busyTimeoutMs}`);
      db.pragma(`cache_size = -${cacheSizeKiB}`);
      // Negative: KiB (positive would be pages).
      this.cacheSizeKiB = -(db.pragma('cache_size', { simple: true }) as number);
      db.pragma('foreign_keys = ON');
      db.pragma('temp_store = MEMORY');
      // For migration 4, which gives the stored messages their key.
      db.function('app_inbox_id_key', { deterministic: true }, (id: unknown) => messageIdKey(String(id)));
      // Every commit appends each page it touched to the WAL, and the commit that takes the WAL past this
      // many pages copies them back into the database (and syncs it) while the event loop waits. SQLite's
      // default of 1,000 pages (4 MiB) meant a checkpoint every few dozen delivery commits; at 16,384 pages
      // (a WAL file of up to 64 MiB) the hot index pages rewritten by many commits are copied back once.
      db.pragma(`wal_autocheckpoint = ${WAL_AUTOCHECKPOINT_PAGES}`);
    } catch (error) {
      db.close();
      throw error;
    }
    this.#db = db;
    this.#savepoint = db.transaction((fn: () => unknown) => fn());
  }

  get #conn(): Database.Database {
    if (this.#db === null) throw new StoreError('closed', 'the store is closed');
    return this.#db;
  }

  /** A prepared statement, prepared once per SQL text. */
  #q(sql: string): Database.Statement {
    let statement = this.#statements.get(sql);
    if (statement === undefined) {
      statement = this.#conn.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  /** Runs `fn` in a `BEGIN IMMEDIATE` transaction (takes the write lock first: no upgrade deadlock). */
  #tx<T>(fn: () => T): T {
    this.#flushBeforeOthers();
    const { run, announce } = this.#announcing(fn);
    const result = this.#conn.transaction(run).immediate();
    announce();
    return result;
  }

  /**
   * Wraps a write so that the deliveries it supersedes are noted while it runs; `announce` emits their
   * `superseded` outcomes and must be called only once the write committed (a write that rolled back
   * announces nothing). @see DeliveryOutcome
   */
  #announcing<T>(fn: () => T): { run: () => T; announce: () => void } {
    const noted: DeliveryOutcome[] = [];
    return {
      run: () => {
        const outer = this.#superseded;
        this.#superseded = noted;
        try {
          return fn();
        } finally {
          this.#superseded = outer;
        }
      },
      announce: () => {
        // Listeners never run inside the caller's call (like emitOutcome).
        for (const outcome of noted) queueMicrotask(() => this.#listeners.dispatch(outcome));
      },
    };
  }

  /** Notes a delivery the running write superseded (see {@link SqliteStore.#announcing}). */
  #noteSuperseded(
    row: SupersededRow & { account_key: number },
    supersededBy: string,
    at: number,
    attempt?: Attempt,
  ): void {
    this.#superseded?.push(supersededOutcome(row, this.#accountId(row.account_key), supersededBy, at, attempt));
  }

  /**
   * Group commit for the writes of the delivery hot path (publish, claim, freeze, record, release): `fn` runs
   * in the next shared `BEGIN IMMEDIATE` transaction with every other write queued in the same turn of the
   * event loop, each in a savepoint of its own (a write that throws rolls back alone and rejects alone).
   * The promise settles after the COMMIT, so "committed before it resolves" holds as before; the group
   * pays one WAL sync instead of one per write, which with `synchronous = FULL` was most of the cost of a
   * delivery (issue 6 profile). Any other write first commits the queued group (see
   * {@link SqliteStore.#flushBeforeOthers}), so writes take effect in call order; a read sees what settled
   * before it was called, as with PostgreSQL, where calls in flight together have no order either.
   */
  #grouped<T>(fn: () => T): Promise<T> {
    // Refused now rather than at the flush.
    if (this.#db === null) return Promise.reject(new StoreError('closed', 'the store is closed'));
    const { run, announce } = this.#announcing(fn);
    return new Promise<T>((resolve, reject) => {
      const committed = (value: T): void => {
        announce();
        resolve(value);
      };
      this.#group.push({ run, resolve: committed as (value: unknown) => void, reject });
      if (!this.#groupScheduled) {
        this.#groupScheduled = true;
        setImmediate(() => {
          this.#groupScheduled = false;
          this.#flushGroup();
        });
      }
    });
  }

  /** Commits the queued writes now unless a flush or a transaction is under way (then it is done by them). */
  #flushBeforeOthers(): void {
    if (this.#group.length > 0 && !this.#flushing && this.#db !== null && !this.#db.inTransaction) {
      this.#flushGroup();
    }
  }

  #flushGroup(): void {
    if (this.#group.length === 0) return;
    const batch = this.#group.splice(0);
    const outcomes: Array<{ ok: true; value: unknown } | { ok: false; error: unknown }> = [];
    this.#flushing = true;
    try {
      const conn = this.#conn;
      conn
        .transaction(() => {
          for (const write of batch) {
            try {
              outcomes.push({ ok: true, value: this.#savepoint(write.run) });
            } catch (error) {
              // Some errors (a full disk, an I/O error, out of memory) make SQLite roll back the transaction itself:
              // the writes before are gone with it, and a write run now would commit on its own (the savepoint
              // would open a transaction of its own) while the group is reported failed. None of the rest runs:
              // the error ends the group, as a failed COMMIT does.
              if (!conn.inTransaction) throw error;
              outcomes.push({ ok: false, error });
            }
          }
        })
        .immediate();
    } catch (error) {
      // BEGIN or COMMIT failed (closed, busy, disk), or SQLite rolled the transaction back under the group: nothing
      // of the group is durable.
      for (const write of batch) write.reject(error);
      return;
    } finally {
      this.#flushing = false;
    }
    batch.forEach((write, i) => {
      const outcome = outcomes[i]!;
      if (outcome.ok) write.resolve(outcome.value);
      else write.reject(outcome.error);
    });
  }

  #remember(accountId: string, key: number): number {
    this.#keys.set(accountId, key);
    this.#accountIds.set(key, accountId);
    return key;
  }

  /** The account's key, or undefined when the account never had a webhook, message or delivery. */
  #key(accountId: string): number | undefined {
    const cached = this.#keys.get(accountId);
    if (cached !== undefined) return cached;
    const row = this.#q('SELECT account_key FROM accounts WHERE account_id = ?').get(accountId) as
      { account_key: number } | undefined;
    return row === undefined ? undefined : this.#remember(accountId, row.account_key);
  }

  /**
   * The account's key, created when missing in a transaction of its own, so that a key in the cache
   * is always committed (the caller's transaction may still roll back).
   */
  #keyOrCreate(accountId: string): number {
    const existing = this.#key(accountId);
    if (existing !== undefined) return existing;
    this.#tx(() => this.#q('INSERT INTO accounts (account_id) VALUES (?) ON CONFLICT DO NOTHING').run(accountId));
    return this.#key(accountId)!;
  }

  #accountId(key: number): string {
    const cached = this.#accountIds.get(key);
    if (cached !== undefined) return cached;
    const row = this.#q('SELECT account_id FROM accounts WHERE account_key = ?').get(key) as { account_id: string };
    this.#remember(row.account_id, key);
    return row.account_id;
  }

  #delivery(row: SqliteDeliveryRow): Delivery {
    return deliveryFromRow({ ...row, account_id: this.#accountId(row.account_key) });
  }

  async migrate(): Promise<void> {
    migrateSqlite(this.#conn, SQLITE_MIGRATIONS);
  }

  async close(): Promise<void> {
    // Writes already asked for are committed (or rejected) before the connection goes.
    if (this.#db !== null) this.#flushGroup();
    const db = this.#db;
    this.#db = null;
    this.#statements.clear();
    this.#listeners.clear();
    if (db !== null && db.open) db.close();
  }

  // ---------------------------------------------------------------- webhooks

  async upsertWebhook(accountId: string, config: WebhookSettings, now: number): Promise<WebhookRecord> {
    // Each save gets a later updatedAt than the one before (Store.upsertWebhook).
    return (await this.#insertWebhook(
      accountId,
      config,
      now,
      `DO UPDATE SET config = excluded.config, enabled = excluded.enabled, message_ttl_ms = excluded.message_ttl_ms,
         updated_at = MAX(excluded.updated_at, webhooks.updated_at + 1)`,
    ))!;
  }

  async createWebhookIfAbsent(accountId: string, config: WebhookSettings, now: number): Promise<WebhookRecord | null> {
    return this.#insertWebhook(accountId, config, now, 'DO NOTHING');
  }

  /** Inserts the account's webhook, or does `onConflict` (an upsert's action) where it has one; the row written. */
  async #insertWebhook(
    accountId: string,
    config: WebhookSettings,
    now: number,
    onConflict: string,
  ): Promise<WebhookRecord | null> {
    assertId('accountId', accountId);
    assertTime('now', now);
    const stored = webhookToStored(config);
    const key = this.#keyOrCreate(accountId);
    // One statement, committed on its own: the writes asked for before it go first.
    this.#flushBeforeOthers();
    const row = this.#q(
      `INSERT INTO webhooks (account_id, account_key, config, enabled, message_ttl_ms, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (account_id) ${onConflict}
       RETURNING *`,
    ).get(accountId, key, stored.json, stored.enabled ? 1 : 0, stored.messageTtlMs, now, now) as WebhookRow | undefined;
    return row === undefined ? null : webhookFromRow(row);
  }

  async replaceWebhookIfUnchanged(
    accountId: string,
    config: WebhookSettings,
    now: number,
    ifUpdatedAt: number,
  ): Promise<WebhookRecord | null> {
    assertId('accountId', accountId);
    assertTime('now', now);
    assertTime('ifUpdatedAt', ifUpdatedAt);
    const stored = webhookToStored(config);
    // One statement, committed on its own: the writes asked for before it go first.
    this.#flushBeforeOthers();
    const row = this.#q(
      `UPDATE webhooks SET config = ?, enabled = ?, message_ttl_ms = ?, updated_at = ?
       WHERE account_id = ? AND updated_at = ? RETURNING *`,
    ).get(stored.json, stored.enabled ? 1 : 0, stored.messageTtlMs, now, accountId, ifUpdatedAt) as
      WebhookRow | undefined;
    return row === undefined ? null : webhookFromRow(row);
  }

  async ping(_timeoutMs?: number): Promise<void> {
    this.#q('SELECT 1').get();
  }

  async getWebhook(accountId: string): Promise<WebhookRecord | null> {
    assertId('accountId', accountId);
    const row = this.#q('SELECT * FROM webhooks WHERE account_id = ?').get(accountId) as WebhookRow | undefined;
    return row === undefined ? null : webhookFromRow(row);
  }

  async listWebhookAccounts(afterAccountId: string | null, limit: number): Promise<string[]> {
    assertInt('limit', limit, 1, MAX_PAGE_SIZE);
    // Account ids are never empty, so '' is before every one of them.
    const rows = this.#q('SELECT account_id FROM webhooks WHERE account_id > ? ORDER BY account_id LIMIT ?').all(
      afterAccountId ?? '',
      limit,
    ) as Array<{ account_id: string }>;
    return rows.map((r) => r.account_id);
  }

  async deleteWebhook(accountId: string): Promise<boolean> {
    assertId('accountId', accountId);
    const key = this.#key(accountId);
    if (key === undefined) return false;
    return this.#tx(() => {
      const existed = this.#q('DELETE FROM webhooks WHERE account_id = ?').run(accountId).changes > 0;
      this.#q('DELETE FROM messages WHERE account_key = ?').run(key);
      // Every delivery goes too, finished ones with their attempts: their frozen bodies hold the deleted messages,
      // and a replay of one once the account has a webhook again would send them (to whatever URL it has then).
      this.#q('DELETE FROM deliveries WHERE account_key = ?').run(key);
      return existed;
    });
  }

  // ---------------------------------------------------------------- publish / resync

  async publish(input: PublishInput): Promise<PublishResult> {
    const accountId = assertId('accountId', input.accountId);
    const now = assertTime('now', input.now);
    assertStoredMessages(input.messages);
    const traceparent = assertTraceparent(input.traceparent);
    const key = this.#keyOrCreate(accountId);
    return this.#grouped(() => {
      if (
        input.requireWebhook === true &&
        this.#q('SELECT 1 FROM webhooks WHERE account_key = ?').get(key) === undefined
      ) {
        throw new StoreError('webhook_missing', `account ${JSON.stringify(accountId)} has no webhook`);
      }
      // A known id (in this account) is skipped: found by its key, then compared whole (keys may collide). A
      // lookup then a plain insert: one `INSERT ... SELECT ... WHERE NOT EXISTS` statement was 2-3 times slower
      // (SQLite stages such an insert, which reads its own table, in a temporary table).
      const known = this.#q('SELECT 1 AS known FROM messages WHERE id_key = ? AND account_key = ? AND id = ?');
      const insert = this.#q(
        `INSERT INTO messages (account_key, id, id_key, external_customer_id, created_date, expires_at, title, content,
           image, link, category, custom_data)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      );
      let inserted = 0;
      const touched: string[] = [];
      for (const m of input.messages) {
        const idKey = messageIdKey(m.id);
        if (known.get(idKey, key, m.id) !== undefined) continue;
        insert.run(
          key,
          m.id,
          idKey,
          m.externalCustomerId,
          m.createdDate,
          m.expiresAt,
          m.title,
          m.content,
          m.image ?? null,
          m.link ?? null,
          m.category,
          m.customData ?? null,
        );
        inserted++;
        touched.push(m.externalCustomerId);
      }
      const deliveries = distinctSorted(touched).map((externalCustomerId) => ({
        externalCustomerId,
        deliveryId: this.#ensurePending(key, externalCustomerId, now, traceparent),
      }));
      return { inserted, duplicates: input.messages.length - inserted, deliveries };
    });
  }

  async resync(
    accountId: string,
    externalCustomerIds: readonly string[] | 'all',
    now: number,
    options: TraceOptions = {},
  ): Promise<PublishResult['deliveries']> {
    assertId('accountId', accountId);
    assertTime('now', now);
    const traceparent = assertTraceparent(options.traceparent);
    if (externalCustomerIds !== 'all') {
      if (!Array.isArray(externalCustomerIds)) {
        throw new StoreError('invalid_argument', "externalCustomerIds: must be an array or 'all'");
      }
      externalCustomerIds.forEach((id, i) => assertId(`externalCustomerIds[${i}]`, id));
    }
    const key = this.#keyOrCreate(accountId);
    return this.#tx(() => {
      const contacts =
        externalCustomerIds === 'all'
          ? (
              this.#q(
                `SELECT DISTINCT external_customer_id AS c FROM messages WHERE account_key = ? AND expires_at > ?
                 ORDER BY external_customer_id`,
              ).all(key, now) as Array<{ c: string }>
            ).map((r) => r.c)
          : distinctSorted(externalCustomerIds);
      return contacts.map((externalCustomerId) => ({
        externalCustomerId,
        deliveryId: this.#ensurePending(key, externalCustomerId, now, traceparent),
      }));
    });
  }

  /**
   * The contact's pending delivery: the existing one (coalescing: it will be built from every message
   * stored when it is claimed, so nothing needs to change on it) or a new one due now, which supersedes
   * the contact's retrying delivery. Must run inside a transaction. A new delivery gets `traceparent`; an
   * existing one keeps the trace of the call that created it.
   */
  #ensurePending(key: number, externalCustomerId: string, now: number, traceparent: string | null): string {
    const existing = this.#q(
      `SELECT id FROM deliveries WHERE account_key = ? AND external_customer_id = ? AND state = 'pending'`,
    ).get(key, externalCustomerId) as { id: string } | undefined;
    // With one writer at a time, a contact with a pending delivery has no retrying one (it was superseded
    // when that pending delivery was created).
    if (existing !== undefined) return existing.id;
    const id = newDeliveryId(now);
    this.#q(
      `INSERT INTO deliveries (id, account_key, external_customer_id, state, created_at, updated_at, next_attempt_at,
         traceparent)
       VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)`,
    ).run(id, key, externalCustomerId, now, now, now, traceparent);
    // A waiting retry carries an older list than this pending one will: never send it again.
    const superseded = this.#q(
      `UPDATE deliveries SET state = 'superseded', superseded_by = ?, next_attempt_at = NULL, lease_owner = NULL,
         updated_at = ?
       WHERE account_key = ? AND external_customer_id = ? AND state = 'retrying' RETURNING ${SUPERSEDED_COLUMNS}`,
    ).all(id, now, key, externalCustomerId) as Array<SupersededRow & { account_key: number }>;
    for (const row of superseded) this.#noteSuperseded(row, id, now);
    return id;
  }

  // ---------------------------------------------------------------- claims

  async claimDue(options: ClaimOptions): Promise<ClaimedDelivery[]> {
    const lane = options.lane;
    if (lane !== 'first' && lane !== 'retry') {
      throw new StoreError('invalid_argument', `lane: must be first or retry, got ${String(lane)}`);
    }
    const limit = assertInt('limit', options.limit, 1, 10_000);
    const now = assertTime('now', options.now);
    const leaseMs = assertInt('leaseMs', options.leaseMs, 1);
    const owner = assertId('owner', options.owner);
    const maxPerAccount = assertInt('maxPerAccount', options.maxPerAccount ?? limit, 1);
    const maxBodyBytes = assertInt('maxBodyBytes', options.maxBodyBytes ?? Number.MAX_SAFE_INTEGER, 0);
    const excluded = JSON.stringify([...(options.excludeAccounts ?? [])]);
    const state = LANE_STATE[lane];
    const leaseUntil = now + leaseMs;

    return this.#grouped(() => {
      this.#reapExpiredLeases(now);
      // Accounts with due work in this lane, oldest due first: one index probe per account, so a
      // disabled or excluded account's backlog is never walked. All of them, not just `limit`: an
      // account whose due work is blocked (its contacts are in flight) must not hold the others up.
      const accounts = this.#q(
        `SELECT account_id, account_key, due FROM (
           SELECT w.account_id AS account_id, w.account_key AS account_key,
             (SELECT d.next_attempt_at FROM deliveries d WHERE d.account_key = w.account_key AND d.state = '${state}'
              ORDER BY d.next_attempt_at LIMIT 1) AS due
           FROM webhooks w
           WHERE w.enabled = 1 AND w.account_id NOT IN (SELECT value FROM json_each(?))
         ) WHERE due <= ? ORDER BY due, account_id`,
      ).all(excluded, now) as Array<{ account_id: string; account_key: number }>;

      const candidates = this.#q(
        `SELECT d.seq, d.id, d.external_customer_id, ${lane === 'retry' ? NEWER_ID : 'NULL'} AS newer_id,
           coalesce(length(d.body), 0) AS body_bytes
         FROM deliveries d
         WHERE d.account_key = ? AND d.state = '${state}' AND d.next_attempt_at <= ?
           AND NOT EXISTS (SELECT 1 FROM deliveries f WHERE f.account_key = d.account_key
             AND f.external_customer_id = d.external_customer_id AND f.state = 'in_flight')
         ORDER BY d.next_attempt_at, d.seq LIMIT ?`,
      );
      const claim = this.#q(
        `UPDATE deliveries SET state = 'in_flight', lease_owner = ?, next_attempt_at = ?, updated_at = ?
         WHERE seq = ? RETURNING ${DELIVERY_COLUMNS}`,
      );
      const webhook = this.#q('SELECT * FROM webhooks WHERE account_id = ?');
      const claimed: ClaimedDelivery[] = [];
      // Frozen bodies up to maxBodyBytes (length() reads a blob's size, not its pages); `full` once one is refused.
      const takes = bodyBytesCut(maxBodyBytes);
      let full = false;
      for (const { account_id: accountId, account_key: key } of accounts) {
        if (claimed.length >= limit || full) break;
        const record = webhookFromRow(webhook.get(accountId) as WebhookRow);
        let taken = 0;
        // Superseded candidates free their slot, so look again (bounded: each pass removes what it read).
        for (let pass = 0; pass < 4; pass++) {
          const want = Math.min(limit - claimed.length, maxPerAccount - taken);
          if (want <= 0) break;
          const rows = candidates.all(key, now, want) as Array<{
            seq: number;
            id: string;
            newer_id: string | null;
            body_bytes: number;
          }>;
          let superseded = 0;
          for (const row of rows) {
            if (row.newer_id !== null) {
              this.#supersede(row.seq, row.newer_id, now);
              superseded++;
              continue;
            }
            if (!takes(row.body_bytes)) {
              full = true;
              break;
            }
            const claimedRow = claim.get(owner, leaseUntil, now, row.seq) as SqliteDeliveryRow;
            claimed.push({ delivery: this.#delivery(claimedRow), webhook: record, leaseUntil });
            taken++;
          }
          if (full || superseded === 0 || rows.length < want) break;
        }
      }
      return claimed;
    });
  }

  #supersede(seq: number, newerId: string, now: number): void {
    const row = this.#q(
      `UPDATE deliveries SET state = 'superseded', superseded_by = ?, next_attempt_at = NULL, lease_owner = NULL,
         updated_at = ? WHERE seq = ? RETURNING ${SUPERSEDED_COLUMNS}`,
    ).get(newerId, now, seq) as (SupersededRow & { account_key: number }) | undefined;
    if (row !== undefined) this.#noteSuperseded(row, newerId, now);
  }

  /**
   * Takes back claims whose lease ended (the worker died or stalled): a newer delivery of the contact
   * supersedes it; otherwise it goes back to its lane, due at the end of its lease so it keeps its place.
   */
  #reapExpiredLeases(now: number): void {
    const expired = this.#q(
      `SELECT d.seq, d.body IS NOT NULL AS frozen, ${NEWER_ID} AS newer_id FROM deliveries d
       WHERE d.state = 'in_flight' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ${REAP_BATCH}`,
    ).all(now) as Array<{ seq: number; frozen: number; newer_id: string | null }>;
    for (const row of expired) {
      if (row.newer_id !== null) this.#supersede(row.seq, row.newer_id, now);
      else {
        this.#q(
          `UPDATE deliveries SET state = ?, lease_owner = NULL, updated_at = ? WHERE seq = ? AND state = 'in_flight'`,
        ).run(row.frozen ? 'retrying' : 'pending', now, row.seq);
      }
    }
  }

  async contactMessages(
    accountId: string,
    externalCustomerId: string,
    now: number,
    limit: number,
  ): Promise<StoredMessage[]> {
    assertId('accountId', accountId);
    assertId('externalCustomerId', externalCustomerId);
    assertTime('now', now);
    assertInt('limit', limit, 1);
    const key = this.#key(accountId);
    if (key === undefined) return [];
    const rows = this.#q(
      `SELECT * FROM messages WHERE account_key = ? AND external_customer_id = ? AND expires_at > ?
       ORDER BY created_date DESC, id ASC LIMIT ?`,
    ).all(key, externalCustomerId, now, limit) as MessageRow[];
    return rows.map(messageFromRow);
  }

  async checkClaim(deliveryId: string, owner: string): Promise<ClaimCheck | null> {
    assertId('deliveryId', deliveryId);
    assertId('owner', owner);
    const row = this.#q(
      `SELECT w.updated_at, w.enabled FROM deliveries d LEFT JOIN webhooks w ON w.account_key = d.account_key
       WHERE d.id = ? AND d.state = 'in_flight' AND d.lease_owner = ?`,
    ).get(deliveryId, owner) as { updated_at: number | null; enabled: number | null } | undefined;
    if (row === undefined) return null;
    return {
      webhookUpdatedAt: row.updated_at === null ? null : Number(row.updated_at),
      webhookEnabled: row.enabled === 1,
    };
  }

  async freeze(
    deliveryId: string,
    owner: string,
    body: Uint8Array,
    messageIds: string[],
    now: number,
  ): Promise<boolean> {
    assertId('deliveryId', deliveryId);
    assertId('owner', owner);
    assertTime('now', now);
    if (!(body instanceof Uint8Array)) throw new StoreError('invalid_argument', 'body: must be a Uint8Array');
    if (!Array.isArray(messageIds)) throw new StoreError('invalid_argument', 'messageIds: must be an array');
    return this.#grouped(() => {
      const changes = this.#q(
        `UPDATE deliveries SET body = ?, message_ids = ?, first_attempt_at = COALESCE(first_attempt_at, ?), updated_at = ?
       WHERE id = ? AND state = 'in_flight' AND lease_owner = ? AND next_attempt_at > ? AND body IS NULL`,
      ).run(
        Buffer.from(body.buffer, body.byteOffset, body.byteLength),
        JSON.stringify(messageIds),
        now,
        now,
        deliveryId,
        owner,
        now,
      ).changes;
      return changes > 0;
    });
  }

  async recordAttempt(deliveryId: string, result: AttemptResult): Promise<Delivery | null> {
    assertId('deliveryId', deliveryId);
    assertId('owner', result.owner);
    assertAttempt(result.attempt);
    if (!['delivered', 'failed', 'retrying'].includes(result.nextState)) {
      throw new StoreError('invalid_argument', `nextState: must be delivered, failed or retrying`);
    }
    const { attempt, nextState } = result;
    const reason = attemptReason(result);
    const endedAt = attempt.startedAt + attempt.durationMs;
    return this.#grouped(() => {
      const row = this.#q(
        `SELECT d.seq, d.state, d.lease_owner, d.attempt_count, ${NEWER_ID} AS newer_id
         FROM deliveries d WHERE d.id = ?`,
      ).get(deliveryId) as
        | {
            seq: number;
            state: DeliveryState;
            lease_owner: string | null;
            attempt_count: number;
            newer_id: string | null;
          }
        | undefined;
      if (
        row === undefined ||
        row.state !== 'in_flight' ||
        row.lease_owner !== result.owner ||
        attempt.attemptNo !== row.attempt_count + 1
      ) {
        return null;
      }
      this.#q(
        `INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, status_code, error_kind, verdict,
           next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        deliveryId,
        attempt.attemptNo,
        attempt.startedAt,
        attempt.durationMs,
        attempt.statusCode,
        attempt.errorKind,
        attempt.verdict,
        attempt.nextAttemptAt,
      );
      let state: DeliveryState = nextState;
      let next: number | null = null;
      let supersededBy: string | null = null;
      if (nextState === 'retrying') {
        // A newer state of the contact exists: this older list must never be sent again (ARCHITECTURE §2).
        if (row.newer_id !== null) {
          state = 'superseded';
          supersededBy = row.newer_id;
        } else next = attempt.nextAttemptAt ?? endedAt;
      }
      const updated = this.#q(
        `UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_owner = NULL, attempt_count = attempt_count + 1,
           first_attempt_at = COALESCE(first_attempt_at, ?), superseded_by = ?,
           last_error = CASE WHEN ? THEN last_error ELSE ? END, updated_at = ?
         WHERE seq = ? RETURNING ${DELIVERY_COLUMNS}`,
      ).get(
        state,
        next,
        attempt.startedAt,
        supersededBy,
        nextState === 'delivered' ? 1 : 0,
        reason,
        endedAt,
        row.seq,
      ) as SqliteDeliveryRow;
      if (supersededBy !== null) this.#noteSuperseded(updated, supersededBy, endedAt, attempt);
      return this.#delivery(updated);
    });
  }

  async release(deliveryId: string, owner: string, dueAt: number): Promise<void> {
    assertId('deliveryId', deliveryId);
    assertId('owner', owner);
    assertTime('dueAt', dueAt);
    return this.#grouped(() => {
      const row = this.#q(
        `SELECT d.seq, d.body IS NOT NULL AS frozen, ${NEWER_ID} AS newer_id FROM deliveries d
         WHERE d.id = ? AND d.state = 'in_flight' AND d.lease_owner = ?`,
      ).get(deliveryId, owner) as { seq: number; frozen: number; newer_id: string | null } | undefined;
      if (row === undefined) return;
      if (row.newer_id !== null) this.#supersede(row.seq, row.newer_id, dueAt);
      else {
        this.#q(
          'UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_owner = NULL, updated_at = ? WHERE seq = ?',
        ).run(row.frozen ? 'retrying' : 'pending', dueAt, dueAt, row.seq);
      }
    });
  }

  async advanceGivenBack(accountId: string, now: number): Promise<number> {
    assertId('accountId', accountId);
    assertTime('now', now);
    const key = this.#key(accountId);
    if (key === undefined) return 0;
    return this.#tx(() => {
      // One statement per lane, each over its lane's index (a pending delivery due later was never attempted: given
      // back; a retrying one only when release wrote its due time, see Store.advanceGivenBack).
      const pending = this.#q(
        `UPDATE deliveries SET next_attempt_at = ?, updated_at = ?
         WHERE account_key = ? AND state = 'pending' AND next_attempt_at > ?`,
      ).run(now, now, key, now).changes;
      const retrying = this.#q(
        `UPDATE deliveries SET next_attempt_at = ?, updated_at = ?
         WHERE account_key = ? AND state = 'retrying' AND next_attempt_at > ? AND updated_at = next_attempt_at`,
      ).run(now, now, key, now).changes;
      return pending + retrying;
    });
  }

  // ---------------------------------------------------------------- reads

  async getDelivery(id: string): Promise<{ delivery: Delivery; attempts: Attempt[] } | null> {
    assertId('id', id);
    const row = this.#q(`SELECT ${DELIVERY_COLUMNS} FROM deliveries WHERE id = ?`).get(id) as
      SqliteDeliveryRow | undefined;
    if (row === undefined) return null;
    const attempts = this.#q('SELECT * FROM attempts WHERE delivery_id = ? ORDER BY attempt_no').all(
      id,
    ) as AttemptRow[];
    return { delivery: this.#delivery(row), attempts: attempts.map(attemptFromRow) };
  }

  async listDeliveries(filter: DeliveryFilter, limit: number, cursor: string | null): Promise<DeliveryPage> {
    assertInt('limit', limit, 1, MAX_PAGE_SIZE);
    // Read first: a token of another listing is refused even when this one is empty (an unknown account).
    const after = cursor === null ? null : decodeCursor(cursor, filter);
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.accountId !== undefined) {
      const key = this.#key(assertId('filter.accountId', filter.accountId));
      if (key === undefined) return { deliveries: [], nextCursor: null };
      where.push('account_key = ?');
      params.push(key);
    }
    if (filter.externalCustomerId !== undefined) {
      where.push('external_customer_id = ?');
      params.push(assertId('filter.externalCustomerId', filter.externalCustomerId));
    }
    if (filter.states !== undefined && filter.states.length > 0) {
      filter.states.forEach((s, i) => {
        if (!DELIVERY_STATES.includes(s))
          throw new StoreError('invalid_argument', `filter.states[${i}]: unknown state`);
      });
      where.push(`state IN (${filter.states.map(() => '?').join(', ')})`);
      params.push(...filter.states);
    }
    if (after !== null) {
      where.push('seq < ?');
      params.push(after);
    }
    const rows = this.#q(
      `SELECT ${DELIVERY_COLUMNS} FROM deliveries ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''}
       ORDER BY seq DESC LIMIT ?`,
    ).all(...params, limit + 1) as SqliteDeliveryRow[];
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return {
      deliveries: page.map((row) => this.#delivery(row)),
      nextCursor: rows.length > limit && last !== undefined ? encodeCursor(Number(last.seq), filter) : null,
    };
  }

  // ---------------------------------------------------------------- replay, sweep, stats

  async retryDelivery(id: string, now: number, options: TraceOptions = {}): Promise<RetryResult | null> {
    assertId('id', id);
    assertTime('now', now);
    const traceparent = assertTraceparent(options.traceparent);
    return this.#tx(() => {
      const row = this.#q(`SELECT ${DELIVERY_COLUMNS}, ${NEWER_ID} AS newer_id FROM deliveries d WHERE d.id = ?`).get(
        id,
      ) as (SqliteDeliveryRow & { newer_id: string | null }) | undefined;
      if (row === undefined) return null;
      const seq = Number(row.seq);
      if (row.state === 'in_flight') return { delivery: this.#delivery(row), replacedByNewer: false };
      if (row.state === 'retrying' || row.state === 'pending') {
        // Made due now when it was waiting (a retry's backoff, a claim given back for later).
        const updated = this.#q(
          `UPDATE deliveries SET next_attempt_at = MIN(next_attempt_at, ?), updated_at = ?,
             traceparent = COALESCE(?, traceparent) WHERE seq = ? RETURNING ${DELIVERY_COLUMNS}`,
        ).get(now, now, traceparent, seq) as SqliteDeliveryRow;
        return { delivery: this.#delivery(updated), replacedByNewer: false };
      }
      if (row.newer_id === null) {
        // Still the contact's newest: the same id and the same bytes again (ARCHITECTURE §1).
        const updated = this.#q(
          `UPDATE deliveries SET state = ?, next_attempt_at = ?, superseded_by = NULL, lease_owner = NULL,
             updated_at = ?, traceparent = COALESCE(?, traceparent) WHERE seq = ? RETURNING ${DELIVERY_COLUMNS}`,
        ).get(row.body === null ? 'pending' : 'retrying', now, now, traceparent, seq) as SqliteDeliveryRow;
        return { delivery: this.#delivery(updated), replacedByNewer: false };
      }
      // A newer state exists: send that, never this older list after it.
      const pendingId = this.#ensurePending(row.account_key, row.external_customer_id, now, traceparent);
      const pending = this.#q(`SELECT ${DELIVERY_COLUMNS} FROM deliveries WHERE id = ?`).get(
        pendingId,
      ) as SqliteDeliveryRow;
      return { delivery: this.#delivery(pending), replacedByNewer: true };
    });
  }

  async sweep(now: number, options: SweepOptions): Promise<SweepResult> {
    assertTime('now', now);
    const retention = assertInt('terminalRetentionMs', options.terminalRetentionMs, 0);
    const limit = assertInt('limit', options.limit, 1);
    return this.#tx(() => {
      const gone = this.#q(
        `DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages WHERE expires_at <= ? LIMIT ?)
         RETURNING account_key AS account, external_customer_id, id`,
      ).all(now, limit) as Array<ExpiredRow<number>>;
      const refreshed = options.refreshExpired === true ? this.#refreshExpired(gone, now) : 0;
      const messages = gone.length;
      if (messages >= limit) return { deleted: messages, refreshed };
      // A contact's newest delivery goes last (only once no older one of its contact is left; the older ones go
      // whenever due): "is there a newer delivery" (retryDelivery, claims) sees only rows still here, so with the
      // newer list gone first a replay of the older one would send it after the newer.
      const deliveries = this.#q(
        `DELETE FROM deliveries WHERE seq IN (SELECT d.seq FROM deliveries d
           WHERE d.state IN ('delivered', 'failed', 'superseded') AND d.updated_at <= ?
             AND (EXISTS (SELECT 1 FROM deliveries n WHERE n.account_key = d.account_key
                    AND n.external_customer_id = d.external_customer_id AND n.seq > d.seq)
               OR NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.account_key = d.account_key
                    AND o.external_customer_id = d.external_customer_id AND o.seq < d.seq))
           LIMIT ?)`,
      ).run(now - retention, limit - messages).changes;
      return { deleted: messages + deliveries, refreshed };
    });
  }

  /**
   * The refresh of {@link Store.sweep} (`refreshExpired`), inside its transaction, after the delete. The lists the
   * receiver may hold are the newest one it answered 2xx to and every one built after it (frozen, or in flight and not
   * frozen yet: read before the expiry, it may hold the message, so it counts as unknown); all that were built when
   * none was delivered. Each is tested where it is (see expiredIdPatterns); none at all: unknown.
   */
  #refreshExpired(gone: ReadonlyArray<ExpiredRow<number>>, now: number): number {
    const hooked = this.#q('SELECT 1 FROM webhooks WHERE account_key = ?');
    const held = this.#q(
      `WITH lists AS (SELECT d.message_ids FROM deliveries d WHERE d.account_key = @account AND d.external_customer_id = @contact
           AND (d.message_ids IS NOT NULL OR d.state = 'in_flight')
           AND d.seq >= COALESCE((SELECT e.seq FROM deliveries e WHERE e.account_key = @account
             AND e.external_customer_id = @contact AND e.state = 'delivered' ORDER BY e.seq DESC LIMIT 1), 0))
       SELECT NOT EXISTS (SELECT 1 FROM lists) OR EXISTS (SELECT 1 FROM lists l WHERE l.message_ids IS NULL
           OR EXISTS (SELECT 1 FROM json_each(@patterns) p WHERE instr(l.message_ids, p.value) > 0)) AS held`,
    );
    let refreshed = 0;
    for (const { account, contacts } of expiredByContact(gone)) {
      if (hooked.get(account) === undefined) continue;
      for (const [contact, expired] of contacts) {
        const row = held.get({ patterns: expiredIdPatterns(expired), account, contact }) as { held: number };
        if (row.held !== 1) continue;
        this.#ensurePending(account, contact, now, null);
        refreshed++;
      }
    }
    return refreshed;
  }

  async stats(now: number): Promise<{ byState: Record<DeliveryState, number>; oldestDueAt: number | null }> {
    assertTime('now', now);
    const byState = emptyByState();
    // One count per state, each over that state's partial index (no index covers every row's state).
    for (const row of this.#q(STATS_COUNTS_SQL).all() as Array<{ state: DeliveryState; n: number }>) {
      byState[row.state] = row.n;
    }
    // The oldest due delivery, over each lane's covering index, leaving out accounts whose webhook is disabled: their
    // deliveries wait by design until it is enabled, as claims leave them, and would only make the backlog alarm fire
    // for a customer's choice. Those accounts are read once (materialized, few), not probed for every delivery. An
    // account without a webhook stays in: its deliveries are due and never claimed, and must show.
    const due = this.#q(
      `WITH disabled (account_key) AS MATERIALIZED (SELECT account_key FROM webhooks WHERE enabled = 0)
       SELECT MIN(t) AS t FROM (
         SELECT MIN(next_attempt_at) AS t FROM deliveries
         WHERE state = 'pending' AND next_attempt_at <= ? AND account_key NOT IN disabled
         UNION ALL
         SELECT MIN(next_attempt_at) AS t FROM deliveries
         WHERE state = 'retrying' AND next_attempt_at <= ? AND account_key NOT IN disabled)`,
    ).get(now, now) as { t: number | null };
    return { byState, oldestDueAt: due.t };
  }

  // ---------------------------------------------------------------- outcomes

  async emitOutcome(outcome: DeliveryOutcome): Promise<void> {
    if (this.#db === null) throw new StoreError('closed', 'the store is closed');
    // After the caller's await resumes nothing of the emit is left, and listeners never run inside it.
    queueMicrotask(() => this.#listeners.dispatch(outcome));
  }

  onOutcome(listener: (outcome: DeliveryOutcome) => void): () => void {
    return this.#listeners.add(listener);
  }
}

/**
 * Applies the migrations the database lacks, all in one transaction, after undoing any withdrawn migration it records
 * (see {@link planMigrations}).
 */
export function migrateSqlite(
  db: Database.Database,
  migrations: readonly Migration[],
  withdrawn: readonly WithdrawnMigration[] = SQLITE_WITHDRAWN_MIGRATIONS,
): void {
  const apply = db.transaction(() => {
    db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`);
    const recorded = db
      .prepare('SELECT version, name FROM schema_migrations ORDER BY version')
      .all() as MigrationRecord[];
    const plan = planMigrations(recorded, migrations, withdrawn);
    for (const w of plan.undo) {
      db.exec(w.undo);
      db.prepare('DELETE FROM schema_migrations WHERE version = ?').run(w.version);
    }
    const record = db.prepare(
      "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    );
    for (const m of plan.apply) {
      db.exec(m.sql);
      record.run(m.version, m.name);
    }
  });
  apply.immediate();
}
