/**
 * The shared engine: PostgreSQL through a `pg` pool, for several server processes on one database
 * (issue 5). Claims use `FOR UPDATE SKIP LOCKED` so a delivery is in flight on one worker at a time;
 * the partial unique indexes of the schema make "one pending / one in flight per contact" hold across
 * processes even in races the queries cannot see; transactions that lose such a race (unique
 * violation, deadlock, serialization failure) are run again from the start.
 *
 * Outcomes travel by NOTIFY on one channel and are received on a dedicated LISTEN connection, so
 * `onOutcome` sees those of every process. A payload larger than NOTIFY allows is sent in chunks
 * within one statement and put back together by the listener.
 * @see ARCHITECTURE §1-§3
 */
import { createHash, randomBytes } from 'node:crypto';
import pg from 'pg';
import type { StoredMessage } from '@app-inbox/core';
import { StoreError } from '../errors.js';
import { TurnBatch } from './turn-batch.js';
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
  RateTokenLease,
  RetryResult,
  Store,
  SweepOptions,
  SweepResult,
  TraceOptions,
  WebhookRecord,
  WebhookSettings,
} from '../types.js';
import { MIGRATION_LOCK_KEY, POSTGRES_MIGRATIONS, POSTGRES_WITHDRAWN_MIGRATIONS } from './schema.js';
import { within } from '../../within.js';

export interface PostgresStoreOptions {
  /** `postgres://user:password@host:port/database`. */
  connectionString: string;
  /** Connections in the pool (connections). Default 10. The LISTEN connection comes on top. */
  poolSize?: number;
  /** NOTIFY channel of the outcomes. Default `app_inbox_outcomes`; every process of a deployment must agree. */
  channel?: string;
  /** Delay before the LISTEN connection is opened again after it broke (ms). Default 1,000. */
  listenReconnectMs?: number;
  /**
   * Longest wait for a new connection to open (ms): a database that does not answer fails the call after this
   * instead of at the system's TCP connect timeout (about two minutes). Not a bound on waiting for a pooled
   * connection: a call waits for one as long as the statements holding them take. Default 10,000.
   */
  connectTimeoutMs?: number;
  /**
   * How long `close()` waits for the statements still on their way (ms); then it cuts the connections, so that a
   * database that stopped answering (a network partition) cannot keep it waiting for ever: those statements fail
   * (what they would have written is not lost work: a claim not recorded comes back when its lease expires).
   * Default 1,000.
   */
  closeTimeoutMs?: number;
  /**
   * `idle_in_transaction_session_timeout` of the store's sessions (ms): PostgreSQL ends a session of this process
   * that stays this long inside a transaction without a statement running. A process stalled in the middle of one
   * (SIGSTOP, a VM pause, a host gone without closing its sockets) held its row locks until it resumed, or until TCP
   * keepalive gave up (hours): every other process's publishes to the contacts it had locked waited as long, and
   * with them that process's pool. The store's transactions send their statements back to back, so a live one is
   * never idle that long; one ended so fails, and nothing it did is kept. Default 30,000 (under the default lease,
   * so a stalled claim's locks are gone before its lease ends); 0 turns it off.
   */
  idleInTransactionTimeoutMs?: number;
  /**
   * Publishes of at most this many messages run as a named statement, parsed once per connection; larger ones
   * are parsed and planned at each call (see {@link PostgresStore.publish}). Default 64; 0 parses every call.
   */
  namedPublishMaxMessages?: number;
  /**
   * A claim reads its first attempts' messages with it (`ClaimedDelivery.messages`) up to this many bytes of their
   * text in all; the contacts past it are left to the engine, which reads their lists one at a time (a list of
   * 1,000 messages of the largest size is near 100 MB: 64 of them in one claim took the process down). Default
   * 8 MiB.
   */
  claimMessagesMaxBytes?: number;
}

type Client = pg.PoolClient;

/** Opens a pool, applies the migrations and starts listening for outcomes. */
export async function openPostgresStore(options: PostgresStoreOptions): Promise<PostgresStore> {
  const store = new PostgresStore(options);
  try {
    await store.migrate();
    await store.listen();
  } catch (error) {
    await store.close();
    throw error;
  }
  return store;
}

const DELIVERY_COLUMNS = `d.seq, d.id, d.account_id, d.external_customer_id, d.state, d.created_at, d.updated_at,
  d.next_attempt_at, d.lease_owner, d.attempt_count, d.first_attempt_at, d.body, d.message_ids, d.superseded_by,
  d.last_error, d.traceparent`;

/** The newest delivery of the same contact created after `d` (by sequence), or NULL. */
const NEWER_ID = `(SELECT n.id FROM deliveries n
   WHERE n.account_id = d.account_id AND n.external_customer_id = d.external_customer_id AND n.seq > d.seq
   ORDER BY n.seq DESC LIMIT 1)`;

/**
 * True when no delivery of `d`'s contact is in flight (ARCHITECTURE §2: one in flight per contact). A subquery run
 * for each candidate (`OFFSET 0` keeps the planner from turning it into a join), answered by a probe of
 * deliveries_one_in_flight by both its columns: a unique index, so the planner expects one row at most, and the lease
 * index cannot serve it (see migration 4); the contact's other indexes would read its past deliveries too. As a join it was
 * planned, with statistics taken when nothing was in flight, as a scan of every in-flight delivery of the account for
 * each candidate (500 in flight, 64 candidates: 32,000 rows read; issue 6).
 */
const CONTACT_NOT_IN_FLIGHT = `NOT EXISTS (SELECT 1 FROM deliveries f WHERE f.account_id = d.account_id
          AND f.external_customer_id = d.external_customer_id AND f.state = 'in_flight' OFFSET 0)`;

/*
 * Claimed rows are named by key and owner: `d.lease_owner = <owner>` without `d.state = 'in_flight'`. A lease owner is
 * set exactly while a delivery is in flight (constraint deliveries_leased_in_flight, migration 5), so the owner says
 * it; naming the state too let the planner read these few rows from a partial index of in-flight deliveries instead
 * of by key (freeze, record: the whole index, 39,085 entries, believed near empty by statistics taken when nothing
 * was in flight; issue 6, bench/README "Seventh round").
 */

/** What a `superseded` outcome needs of a delivery row (`d` or `t`). */
const supersededColumns = (alias: string): string =>
  ['id', 'account_id', 'external_customer_id', 'attempt_count', 'message_ids', 'superseded_by']
    .map((c) => `${alias}.${c}`)
    .join(', ');

type SupersededDbRow = SupersededRow & { account_id: string; superseded_by: string | null };

const LANE_STATE: Record<Lane, 'pending' | 'retrying'> = { first: 'pending', retry: 'retrying' };

/**
 * recordAttempt of an attempt to be retried, in one statement (so in one transaction): `cur` locks the delivery
 * when `$2` still holds its claim and `$3` is its next attempt number (READ COMMITTED re-checks that on the
 * newest row version after a wait); the attempt is inserted and the delivery updated only when it is not to be
 * superseded (`newer_id`). No row: the claim is not ours; `claimed` false: a newer delivery exists.
 */
const RECORD_RETRY_SQL = `WITH cur AS (
    SELECT d.seq, ${NEWER_ID} AS newer_id FROM deliveries d
    WHERE d.id = $1 AND d.lease_owner = $2 AND d.attempt_count = $3::integer - 1
    FOR UPDATE OF d),
  ok AS (SELECT seq FROM cur WHERE newer_id IS NULL),
  ins AS (
    INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, status_code, error_kind, verdict,
      next_attempt_at)
    SELECT $1, $3::integer, $4::bigint, $5::bigint, $6::integer, $7::text, $8::text, $9::bigint FROM ok),
  upd AS (
    UPDATE deliveries d SET state = 'retrying', next_attempt_at = $10, lease_owner = NULL,
      attempt_count = attempt_count + 1, first_attempt_at = COALESCE(first_attempt_at, $4::bigint), superseded_by = NULL,
      last_error = $11, updated_at = $12
    FROM ok WHERE d.seq = ok.seq
    RETURNING ${DELIVERY_COLUMNS})
  SELECT c.newer_id, u.seq IS NOT NULL AS claimed, u.* FROM cur c LEFT JOIN upd u ON true`;

/**
 * recordAttempt for several attempts that end their deliveries (delivered or failed), in one statement: those
 * that ended in one turn of the event loop (see {@link TurnBatch}). Each is recorded when its delivery is still
 * claimed by that owner and the attempt is its next one (READ COMMITTED re-checks that after a wait, as in
 * {@link RECORD_RETRY_SQL}); the deliveries recorded come back. A final state is never superseded, so there is
 * no newer delivery to look for. Rows are named by `id = ANY($1)` (unique-index probes, whatever the
 * statistics: see claimSql) and locked in `seq` order, so two of these statements never deadlock.
 * `last_error` NULL keeps the delivery's own (a delivered attempt leaves the last failure as it was).
 */
export const RECORD_FINAL_SQL = `WITH f AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[], $5::bigint[], $6::integer[], $7::text[],
        $8::text[], $9::bigint[], $10::text[], $11::text[], $12::bigint[])
      AS f(id, owner, attempt_no, started_at, duration_ms, status_code, error_kind, verdict, next_attempt_at, state,
        last_error, ended_at)),
  cur AS (
    SELECT d.seq, f.* FROM deliveries d JOIN f ON f.id = d.id
    WHERE d.id = ANY ($1::text[]) AND d.lease_owner = f.owner
      AND d.attempt_count = f.attempt_no - 1
    ORDER BY d.seq
    FOR UPDATE OF d),
  ins AS (
    INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, status_code, error_kind, verdict,
      next_attempt_at)
    SELECT id, attempt_no, started_at, duration_ms, status_code, error_kind, verdict, next_attempt_at FROM cur)
  UPDATE deliveries d SET state = c.state, next_attempt_at = NULL, lease_owner = NULL,
    attempt_count = d.attempt_count + 1, first_attempt_at = COALESCE(d.first_attempt_at, c.started_at),
    superseded_by = NULL, last_error = COALESCE(c.last_error, d.last_error), updated_at = c.ended_at
  FROM cur c WHERE d.seq = ANY (ARRAY(SELECT seq FROM cur)) AND d.seq = c.seq
  RETURNING ${DELIVERY_COLUMNS}`;

/**
 * claimDue in one statement, for the common case: no lease to take back and (retry lane) no candidate to
 * supersede, else it changes nothing and says `slow` (then {@link PostgresStore.claimDue} does it step by step,
 * where those outcomes are NOTIFYed in the same transaction). The same choice as the steps: accounts by oldest
 * due delivery, up to `$3` (maxPerAccount, at most the limit) candidates each in due order, skipping locked rows
 * and contacts in flight, the first `$4` (the limit) of them in account order claimed. The accounts are visited in
 * that order and no further than the limit needs (the LIMIT over an incremental sort stops pulling): with every
 * account's candidates read and locked, then ranked, a claim of 32 among 200 due accounts read 6,400 rows (12 ms
 * instead of 1.6). Candidates read past the limit are locked only until the statement ends.
 *
 * Its values reach the planner only through `v`, as values of a subquery: every plan of the statement is then the
 * same plan, so PostgreSQL's plan cache keeps the generic one after five runs instead of planning each claim for its
 * values (planning cost more than running it: 0.46 ms against 0.40). Known values made the custom plans of a few
 * small first claims (or of claims excluding 50 accounts or more) look cheaper than the generic plan, and some
 * connections planned every claim. The early stop is the planner's choice of an incremental sort: PostgreSQL 15
 * prefers a full sort (every due account's candidates read, as before) when its statistics show about one account
 * with due work, which is right while that is true and costs what the old statement did until the next analyze.
 *
 * Written so that every step is an index probe whatever the planner believes of the table sizes: in a young or
 * fast-growing database (statistics taken when `deliveries` held a few thousand rows, autovacuum's analyze a
 * minute away) a join of the claimed rows to `deliveries` by `seq` was planned as a hash join over a sequential
 * scan of the whole table, in every claim. The rows to update are therefore named by an array of `seq`
 * (primary-key probes).
 */
const claimSql = (lane: Lane): string => {
  const state = LANE_STATE[lane];
  return `WITH v AS (SELECT $1::bigint AS now, $2::text[] AS excluded, $3::integer AS per_account, $4::integer AS lim,
      $7::bigint AS max_bytes),
  expired AS (
    SELECT EXISTS (SELECT 1 FROM deliveries e WHERE e.state = 'in_flight' AND e.next_attempt_at <= (SELECT now FROM v))
      AS found),
  acc AS MATERIALIZED (
    SELECT w.account_id, w.config, w.enabled, w.message_ttl_ms, w.created_at, w.updated_at, x.due FROM webhooks w
    CROSS JOIN LATERAL (SELECT d.next_attempt_at AS due FROM deliveries d
      WHERE d.account_id = w.account_id AND d.state = '${state}' ORDER BY d.next_attempt_at LIMIT 1) x
    WHERE w.enabled AND x.due <= (SELECT now FROM v) AND NOT (w.account_id = ANY ((SELECT excluded FROM v)::text[]))
      AND NOT (SELECT found FROM expired)),
  cand AS MATERIALIZED (
    SELECT r.seq, r.newer_id, r.rank FROM (
      SELECT s.seq, s.newer_id, row_number() OVER w AS rank, sum(s.bytes) OVER w AS upto
      FROM (SELECT a.due, a.account_id, c.seq, c.next_attempt_at, c.newer_id, c.bytes
        FROM (SELECT account_id, due FROM acc ORDER BY due, account_id) a CROSS JOIN LATERAL (
          SELECT d.seq, d.next_attempt_at, ${lane === 'retry' ? NEWER_ID : 'NULL::text'} AS newer_id,
            coalesce(octet_length(d.body), 0)::bigint AS bytes FROM deliveries d
          WHERE d.account_id = a.account_id AND d.state = '${state}' AND d.next_attempt_at <= (SELECT now FROM v)
            AND ${CONTACT_NOT_IN_FLIGHT}
          ORDER BY d.next_attempt_at, d.seq LIMIT (SELECT per_account FROM v)
          FOR UPDATE OF d SKIP LOCKED) c
        ORDER BY a.due, a.account_id, c.next_attempt_at, c.seq LIMIT (SELECT lim FROM v)) s
      WINDOW w AS (ORDER BY s.due, s.account_id, s.next_attempt_at, s.seq)) r
    WHERE r.rank = 1 OR r.upto <= (SELECT max_bytes FROM v)),
  guard AS (
    SELECT (SELECT found FROM expired) OR EXISTS (SELECT 1 FROM cand WHERE newer_id IS NOT NULL) AS slow),
  upd AS (
    UPDATE deliveries d SET state = 'in_flight', lease_owner = $5, next_attempt_at = $6, updated_at = $1
    WHERE d.seq = ANY (ARRAY(SELECT p.seq FROM cand p)) AND NOT (SELECT slow FROM guard)
    RETURNING ${DELIVERY_COLUMNS})
  SELECT g.slow, c.rank, u.*, a.config AS w_config, a.enabled AS w_enabled, a.message_ttl_ms AS w_message_ttl_ms,
    a.created_at AS w_created_at, a.updated_at AS w_updated_at
  FROM guard g LEFT JOIN (upd u JOIN cand c ON c.seq = u.seq JOIN acc a ON a.account_id = u.account_id) ON true
  ORDER BY c.rank`;
};

/**
 * `stats`' oldest due delivery: the first due of each account with due work in each lane, found by skipping from
 * account to account along the lane's index (a recursive probe per account, as no index orders every account's due
 * deliveries together since migration 4). From `deliveries`, not `webhooks`: a delivery replayed after its account's
 * webhook was deleted is due and never claimed, and must show. An account whose webhook is disabled is left out (one
 * probe of the webhook's key per account found): its deliveries wait by design until it is enabled, as claims leave
 * them, and would only make the backlog alarm fire for a customer's choice.
 */
const oldestDueOf = (state: 'pending' | 'retrying', name: string): string => `${name} AS (
    (SELECT d.account_id, d.next_attempt_at FROM deliveries d WHERE d.state = '${state}'
     ORDER BY d.account_id, d.next_attempt_at LIMIT 1)
    UNION ALL
    SELECT n.account_id, n.next_attempt_at FROM ${name} CROSS JOIN LATERAL (
      SELECT d.account_id, d.next_attempt_at FROM deliveries d
      WHERE d.state = '${state}' AND d.account_id > ${name}.account_id
      ORDER BY d.account_id, d.next_attempt_at LIMIT 1) n)`;
/** @internal exported for the plan test in postgres-store.test.ts. */
export const STATS_OLDEST_DUE_SQL = `WITH RECURSIVE ${oldestDueOf('pending', 'p')}, ${oldestDueOf('retrying', 'r')}
  SELECT MIN(x.due) AS t FROM (
    SELECT account_id, next_attempt_at AS due FROM p UNION ALL SELECT account_id, next_attempt_at FROM r) x
  WHERE x.due <= $1
    AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.account_id = x.account_id AND NOT w.enabled)`;

/** @internal exported for the plan test in postgres-store.test.ts. */
export const CLAIM_SQL: Record<Lane, string> = { first: claimSql('first'), retry: claimSql('retry') };

/**
 * sweep's deletes ($1 a time, $2 the limit): messages expired at `$1`, then deliveries finished before `$1`. Rows
 * are named by their address (a TID scan) or primary key, not by a join on the key: a join was planned as a hash
 * join over a sequential scan of every message when many had expired, to delete `limit` of them. SKIP LOCKED:
 * several processes may sweep at once without waiting on each other. A contact's newest delivery goes last (only
 * once no older one of its contact is left; the older ones go whenever due; probed per candidate on
 * deliveries_contact, `OFFSET 0` keeping each a probe, not a join): "is there a newer delivery" (retryDelivery,
 * claims) sees only rows still here, so with the newer list gone first a replay of the older one would send it
 * after the newer.
 */
export const SWEEP_SQL = {
  messages: `DELETE FROM messages WHERE ctid = ANY (ARRAY(
      SELECT ctid FROM messages WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED))
    RETURNING account_id AS account, external_customer_id, id`,
  deliveries: `DELETE FROM deliveries WHERE seq = ANY (ARRAY(
      SELECT d.seq FROM deliveries d WHERE d.state IN ('delivered', 'failed', 'superseded') AND d.updated_at <= $1
        AND (EXISTS (SELECT 1 FROM deliveries n WHERE n.account_id = d.account_id
               AND n.external_customer_id = d.external_customer_id AND n.seq > d.seq OFFSET 0)
          OR NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.account_id = d.account_id
               AND o.external_customer_id = d.external_customer_id AND o.seq < d.seq OFFSET 0))
      LIMIT $2 FOR UPDATE OF d SKIP LOCKED))`,
} as const;

/**
 * Key-share lock of an account's webhook, taken by a transaction before any of the account's deliveries: compatible
 * with UpsertWebhook's update and a publish's lock, waits for a DeleteWebhook (which deletes the row first, then the
 * deliveries), so that neither holds a delivery the other waits for. No row: none is locked.
 */
const LOCK_WEBHOOK_SQL = 'SELECT 1 FROM webhooks WHERE account_id = $1 FOR KEY SHARE';

type ClaimDbRow = DeliveryRow & {
  slow: boolean;
  rank: string | null;
  w_config: string;
  w_enabled: boolean;
  w_message_ttl_ms: string;
  w_created_at: string;
  w_updated_at: string;
};

/** Characters of an outcome per NOTIFY frame built in SQL (see notifySupersededSql). */
const SQL_CHUNK_CHARS = 1900;

/**
 * A CTE body that NOTIFYs on channel `$<channel>` the `superseded` outcome (see `supersededOutcome` in
 * shared.ts: the same JSON) of each row of CTE `rows` (the columns of {@link supersededColumns}), at `$<at>`,
 * in the statement that superseded them, hence in its transaction. Chunked like {@link notifyFrames}:
 * `substr` counts characters, and 1,900 of at most 4 bytes each keep a frame under 8,000 bytes.
 */
const notifySupersededSql = (rows: string, channel: number, at: number): string => `SELECT pg_notify($${channel},
    o.emit_id || ' ' || g.i || ' ' || o.n || ' ' || substr(o.j, g.i * ${SQL_CHUNK_CHARS} + 1, ${SQL_CHUNK_CHARS})) AS sent
  FROM (SELECT j, greatest(1, ceil(length(j) / ${SQL_CHUNK_CHARS}.0)::integer) AS n, emit_id FROM (
    SELECT json_build_object('deliveryId', r.id, 'accountId', r.account_id, 'externalCustomerId',
      r.external_customer_id, 'state', 'superseded', 'messageIds', COALESCE(r.message_ids::json, '[]'::json),
      'attemptNo', r.attempt_count, 'statusCode', NULL, 'errorKind', NULL, 'nextAttemptAt', NULL, 'at', $${at}::bigint,
      'supersededBy', r.superseded_by)::text AS j,
      left(md5(random()::text || r.id), 16) AS emit_id
    FROM ${rows} r) x) o
  CROSS JOIN LATERAL generate_series(0, o.n - 1) AS g(i)`;

/**
 * publish in one statement (its own transaction): insert the messages (known ids skipped), then give each contact
 * that got one its pending delivery (`pend`): a new one, or the existing one through the upsert on the "one pending
 * per contact" index, which locks it (a no-op update) so that no worker claims it before these messages are
 * committed with it; a pending delivery another publish is inserting is waited for, and one a claim takes first
 * makes the upsert insert a new one. The contacts' retrying deliveries are superseded and announced (`ret`, `sup`).
 * Contacts in order, messages in id order: two publishes lock in the same order (no deadlock).
 *
 * `ret` locks the retries with SKIP LOCKED, as {@link PostgresStore.#ensurePendingOf} does: waiting for one deadlocked
 * with a batched record ({@link RECORD_FINAL_SQL}, which locks its deliveries in seq order, not by contact). A retry
 * claimed in flight since this statement began is locked in its new version (and left); this held a's so, then waited
 * for b's, which the record held while it waited for a's, until deadlock_timeout (1 s). A retry another transaction
 * holds (a claim, a record, a replay) is left retrying: it is superseded when it is next claimed (a claim supersedes a
 * retry whose contact has a newer delivery), so it is never sent after the pending delivery; one in flight is sent
 * before it (one in flight per contact). A publish then waits for no row a record holds: a record locks in-flight
 * deliveries only, never a webhook, a message or a pending delivery.
 *
 * `hook` takes a key-share lock on the account's webhook (compatible with UpsertWebhook's update, not with
 * DeleteWebhook's delete), always and before any other lock: the messages' insert reads it first (a lock taken after
 * the deliveries' upsert deadlocked with a DeleteWebhook, which deletes the webhook row first and the deliveries next).
 * With `$17` (requireWebhook) nothing is inserted when the account has no webhook: a DeleteWebhook that began first is
 * waited for (then there is none), and one that comes later waits for this publish and then deletes what it stored.
 *
 * The existing pending delivery is found by the upsert's own arbiter index, never by a planned lookup: a lookup
 * (`d.account_id = $1 AND d.external_customer_id = c AND d.state = 'pending'`, once per contact) was planned in a
 * young database, statistics taken when `deliveries` was small, on the first-lane index (same predicate, same
 * leading column) instead of this one, filtering every pending delivery of the account for each contact: a
 * publish of 999 messages then took about 2 s instead of 30 ms once 20,000 deliveries were pending (issue 6).
 */
const PUBLISH_SQL = `WITH hook AS MATERIALIZED (SELECT count(*) AS n FROM
      (SELECT 1 FROM webhooks WHERE account_id = $1 FOR KEY SHARE) w),
  ins AS (
    INSERT INTO messages (account_id, id, external_customer_id, created_date, expires_at, title, content, image, link,
      category, custom_data)
    SELECT $1, u.* FROM hook h CROSS JOIN unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[],
      $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) u
    WHERE h.n > 0 OR NOT $17::boolean
    ON CONFLICT (account_id, id) DO NOTHING
    RETURNING external_customer_id),
  touched AS (SELECT DISTINCT external_customer_id AS contact FROM ins),
  pend AS (
    INSERT INTO deliveries (id, account_id, external_customer_id, state, created_at, updated_at, next_attempt_at,
      traceparent)
    SELECT n.id, $1, n.contact, 'pending', $14, $14, $14, $15::text FROM unnest($12::text[], $13::text[]) AS n(id, contact)
    WHERE n.contact IN (SELECT contact FROM touched)
    ORDER BY n.contact
    ON CONFLICT (account_id, external_customer_id) WHERE state = 'pending'
      DO UPDATE SET updated_at = deliveries.updated_at
    RETURNING external_customer_id, id),
  ret AS (
    -- Every condition on the locked row itself: READ COMMITTED re-checks them on the row's newest version (one a claim
    -- took in flight since the statement began is locked in that version and left; a condition in a joined subquery
    -- would not be re-checked, and could supersede a claim). SKIP LOCKED: see above.
    SELECT x.seq, p.id FROM pend p CROSS JOIN LATERAL (SELECT x.seq FROM deliveries x WHERE x.account_id = $1
      AND x.external_customer_id = p.external_customer_id AND x.state = 'retrying' FOR UPDATE OF x SKIP LOCKED) x),
  sup AS (
    UPDATE deliveries d SET state = 'superseded', superseded_by = r.id, next_attempt_at = NULL, lease_owner = NULL,
      updated_at = $14
    FROM ret r WHERE d.seq = ANY (ARRAY(SELECT seq FROM ret)) AND d.seq = r.seq
    RETURNING ${supersededColumns('d')}),
  sent AS MATERIALIZED (${notifySupersededSql('sup', 16, 14)})
  SELECT (SELECT count(*) FROM ins) AS inserted, (SELECT count(*) FROM sent) AS notified,
    (SELECT n FROM hook) > 0 AS hooked, p.external_customer_id, p.id
  FROM (SELECT 1) one LEFT JOIN pend p ON true`;

/**
 * The messages of several contacts ($1 account ids, $2 contacts, $3 limits, $4 now), as a FROM item: those available
 * at `now`, newest first with ties by id (SPEC §4), at most the contact's limit (`m`), each with the 1-based position
 * of its contact in the arrays (`r.i`). {@link CONTACT_MESSAGES_SQL} and {@link CLAIM_MESSAGES_SQL} read from it.
 */
const CONTACT_LISTS = `unnest($1::text[], $2::text[], $3::integer[]) WITH ORDINALITY AS r(account_id, contact, lim, i)
  CROSS JOIN LATERAL (SELECT * FROM messages m WHERE m.account_id = r.account_id
      AND m.external_customer_id = r.contact AND m.expires_at > $4
    ORDER BY m.created_date DESC, m.id ASC LIMIT r.lim) m`;

/** The messages of several contacts ({@link CONTACT_LISTS}), in order: contactMessages reads a contact with it. */
const CONTACT_MESSAGES_SQL = `SELECT r.i, m.account_id, m.id, m.external_customer_id, m.created_date, m.expires_at, m.title,
    m.content, m.image, m.link, m.category, m.custom_data
  FROM ${CONTACT_LISTS}
  ORDER BY r.i, m.created_date DESC, m.id ASC`;

/**
 * A claim's read of its contacts' messages ({@link CONTACT_LISTS}) within a budget ($5 bytes of the
 * messages' text, as `octet_length` reads it from the row without fetching TOASTed values). The contacts, in
 * order, whose lists fit in it together come whole (`kept`); each later contact with messages comes as one row with
 * `kept` false and no text, so its list is neither fetched nor sent (the engine reads it itself). A contact
 * without messages comes as no row: its list is empty.
 * @internal exported for the test of a claim whose read fails (postgres-store.test.ts).
 */
export const CLAIM_MESSAGES_SQL = `SELECT x.i, x.upto <= $5 AS kept, x.account_id, x.id, x.external_customer_id, x.created_date,
    x.expires_at, x.category,
    CASE WHEN x.upto <= $5 THEN x.title END AS title, CASE WHEN x.upto <= $5 THEN x.content END AS content,
    CASE WHEN x.upto <= $5 THEN x.image END AS image, CASE WHEN x.upto <= $5 THEN x.link END AS link,
    CASE WHEN x.upto <= $5 THEN x.custom_data END AS custom_data
  FROM (
    SELECT r.i, m.*,
      sum(octet_length(m.title) + octet_length(m.content) + coalesce(octet_length(m.image), 0)
        + coalesce(octet_length(m.link), 0) + coalesce(octet_length(m.custom_data), 0)) OVER (ORDER BY r.i) AS upto,
      row_number() OVER (PARTITION BY r.i ORDER BY m.created_date DESC, m.id ASC) AS n
    FROM ${CONTACT_LISTS}
  ) x
  WHERE x.upto <= $5 OR x.n = 1
  ORDER BY x.i, x.created_date DESC, x.id ASC`;

/**
 * freeze for several deliveries at once ($1 ids, $2 owners, $3 bodies, $4 message ids as JSON, $5 nows): each is
 * frozen when it is still claimed by that owner, unexpired and without a body; the ids of those frozen come back.
 * The rows are named by `id = ANY($1)` (unique-index probes, whatever the statistics: see claimSql) and locked in
 * `seq` order (`cur`; READ COMMITTED re-checks the conditions after a wait), as {@link RECORD_FINAL_SQL} and
 * DeleteWebhook lock theirs. Updated as found, they were locked in the plan's order (the calls', the ids' or the rows'
 * place in the table), and a DeleteWebhook holding x's while it waited for y's, which a freeze held while it waited
 * for x's, waited until deadlock_timeout (1 s; seen in a stress run). The bodies are not carried through the sort and
 * the lock: `cur` keeps each row's position in the arrays, and the update reads its values there.
 * @internal exported for the plan test in postgres-store.test.ts.
 */
export const FREEZE_SQL = `WITH cur AS (
    SELECT d.seq, k.i FROM deliveries d
    JOIN unnest($1::text[], $2::text[], $5::bigint[]) WITH ORDINALITY AS k(id, owner, now, i) ON k.id = d.id
    WHERE d.id = ANY ($1::text[]) AND d.lease_owner = k.owner AND d.next_attempt_at > k.now AND d.body IS NULL
    ORDER BY d.seq
    FOR UPDATE OF d)
  UPDATE deliveries d SET body = ($3::bytea[])[c.i], message_ids = ($4::text[])[c.i],
    first_attempt_at = COALESCE(d.first_attempt_at, ($5::bigint[])[c.i]), updated_at = ($5::bigint[])[c.i]
  FROM cur c WHERE d.seq = ANY (ARRAY(SELECT seq FROM cur)) AND d.seq = c.seq
  RETURNING d.id`;

/** A freeze call waiting for its statement (see {@link PostgresStore.freeze}). */
interface QueuedFreeze {
  id: string;
  owner: string;
  body: Buffer;
  messageIds: string;
  now: number;
}

/** A recordAttempt call ending its delivery, waiting for its statement (see {@link PostgresStore.recordAttempt}). */
interface QueuedRecord {
  deliveryId: string;
  result: AttemptResult;
  reason: string;
}

/**
 * Takes up to $3 tokens from the account's shared bucket ($1), refilled at $2 a second up to $2 (see
 * {@link PostgresStore.leaseRateTokens}). One statement: concurrent leases of one account wait on each other's row lock,
 * and each then refills and takes from the row as the one before left it (ON CONFLICT DO UPDATE works on the newest
 * version of the row), so together they never take more than the bucket held. "Now" is the database's clock, read by
 * an update once it holds the row lock (the SET is computed then), so each lease of an account reads a later time than
 * the one before, and refills exactly the time since. Only a clock set back reads an earlier one: the row then takes the
 * new clock's time and refills nothing this once; keeping the later time instead, the bucket refilled nothing until
 * the clock caught up with it (set back an hour, its webhook got no request for an hour). A new row is a full bucket,
 * less what this lease takes.
 */
export const LEASE_RATE_TOKENS_SQL = `INSERT INTO rate_buckets AS b (account_id, tokens, granted, refilled_at)
SELECT $1, $2::integer - n.g, n.g, clock_timestamp() FROM (SELECT LEAST($3::integer, $2::integer) AS g) n
ON CONFLICT (account_id) DO UPDATE SET (tokens, granted, refilled_at) = (
  SELECT t.avail - t.g, t.g, t.now
  FROM (SELECT a.avail, a.now, LEAST($3::integer, floor(a.avail)::integer) AS g
        FROM (SELECT c.now, LEAST($2::integer::double precision,
                b.tokens + GREATEST(0, extract(epoch FROM c.now - b.refilled_at))::double precision
                  * $2::integer) AS avail
              FROM (SELECT clock_timestamp() AS now) c) a) t)
RETURNING granted, tokens`;

/**
 * SQLSTATEs after which the whole transaction is run again: a concurrent transaction won a race on
 * one of the per-contact unique indexes, or a deadlock / serialization failure was broken.
 */
const RETRY_SQLSTATES: ReadonlySet<string> = new Set(['23505', '40001', '40P01']);
const MAX_TX_RUNS = 8;

/** Outcomes NOTIFYed by one statement at most (outcomes). */
const OUTBOX_BATCH = 256;

/** NOTIFY payloads must stay under 8,000 bytes: 2,400 UTF-16 units is at most 7,200 UTF-8 bytes. */
const CHUNK_UNITS = 2400;

/** The planner settings of the store's sessions (see the constructor). @internal exported for the plan tests. */
export const SESSION_SETTINGS = ['SET jit = off', 'SET enable_seqscan = off'] as const;

/** Names of the hot statements, by text (see {@link named}). */
const statementNames = new Map<string, string>();

/**
 * A named statement: each connection parses and plans it once, then only binds and executes it, where an
 * unnamed one is parsed again at every call. The name is a digest of the text, so two texts never share a
 * name (pg refuses that) and every process names a text alike. Only for fixed texts with explicit columns:
 * a prepared `SELECT *` would fail after a migration changed the table.
 */
function named(text: string, values: unknown[]): pg.QueryConfig {
  let name = statementNames.get(text);
  if (name === undefined) {
    name = `ai_${createHash('sha1').update(text).digest('hex').slice(0, 24)}`;
    statementNames.set(text, name);
  }
  return { name, text, values };
}

/** After close() cut the connections, how long it waits at most for the pool to end (ms). */
const CUT_SETTLE_MS = 500;

/** Destroys a connection's socket at once (no Terminate message: the database may not be answering). */
function cut(client: pg.ClientBase): void {
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

export class PostgresStore implements Store {
  readonly #pool: pg.Pool;
  readonly #options: Required<Omit<PostgresStoreOptions, 'poolSize'>>;
  readonly #listeners = new OutcomeListeners();
  /** Chunked outcomes being put back together, by emit id. */
  readonly #assembling = new Map<string, { parts: string[]; received: number }>();
  /** Outcomes waiting for their NOTIFY (see {@link PostgresStore.#sendOutbox}). */
  readonly #outbox: Array<{ frames: string[]; resolve: () => void; reject: (error: unknown) => void }> = [];
  #emitting = false;
  #listenClient: pg.Client | null = null;
  #reconnectTimer: NodeJS.Timeout | null = null;
  #closed = false;
  /** The freezes of one turn of the event loop, sent as one statement (see {@link PostgresStore.#sendFreezes}). */
  readonly #freezes = new TurnBatch<QueuedFreeze, boolean>({
    key: (f) => f.id,
    send: (batch) => this.#sendFreezes(batch),
  });
  /** The final attempts of one turn, recorded by one statement (see {@link PostgresStore.#sendRecords}). */
  readonly #records = new TurnBatch<QueuedRecord, Delivery | null>({
    key: (r) => r.deliveryId,
    send: (batch) => this.#sendRecords(batch),
  });
  #closing: Promise<void> | null = null;
  /** The pool's connections (to cut them if `close()` times out: see {@link PostgresStoreOptions.closeTimeoutMs}). */
  readonly #connections = new Set<pg.PoolClient>();

  constructor(options: PostgresStoreOptions) {
    assertId('connectionString', options.connectionString);
    const poolSize = assertInt('poolSize', options.poolSize ?? 10, 1, 1000);
    const channel = options.channel ?? 'app_inbox_outcomes';
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(channel)) {
      throw new StoreError('invalid_argument', 'channel: must be a lower-case SQL identifier');
    }
    this.#options = {
      connectionString: options.connectionString,
      channel,
      listenReconnectMs: assertInt('listenReconnectMs', options.listenReconnectMs ?? 1000, 1),
      connectTimeoutMs: assertInt('connectTimeoutMs', options.connectTimeoutMs ?? 10_000, 1),
      closeTimeoutMs: assertInt('closeTimeoutMs', options.closeTimeoutMs ?? 1_000, 0),
      idleInTransactionTimeoutMs: assertInt(
        'idleInTransactionTimeoutMs',
        options.idleInTransactionTimeoutMs ?? 30_000,
        0,
        2_147_483_647,
      ),
      namedPublishMaxMessages: assertInt('namedPublishMaxMessages', options.namedPublishMaxMessages ?? 64, 0, 10_000),
      claimMessagesMaxBytes: assertInt('claimMessagesMaxBytes', options.claimMessagesMaxBytes ?? 8 * 1024 * 1024, 0),
    };
    // Planner settings of this store's sessions. Every statement here is a short statement that names its rows by a
    // key or reads an index in order, and the planner was wrong about them only when its statistics lagged behind
    // `deliveries`, which grows and churns fast (issue 6):
    // - JIT off: when stale statistics pushed a plan's estimated cost past jit_above_cost, PostgreSQL spent up to a
    //   second compiling it (a variant of the claim: 0.9 s of JIT, then 0.1 ms of execution).
    // - Sequential scans off (a last resort for the planner, still used where no index serves): a named statement's
    //   generic plan made while `deliveries` held a handful of rows scanned the whole table in every later claim
    //   (13,374 pages for 32 rows, 8 ms a claim), a plan kept until the table's next analyze, a minute or more away.
    // Set by the pool's hook on each new connection before its first use; not by the `options` startup parameter,
    // which a connection string's own `options` would silently replace and which PgBouncer refuses unless configured
    // for it. Best effort: a server that refuses one keeps its default.
    //
    // Timeouts: opening a connection is bounded by `connectTimeoutMs`, set on each client (the pool's own
    // connectionTimeoutMillis would also bound the wait for a free connection: a publish waiting behind statements
    // held up by a lock failed as INTERNAL after 10 s, and a 200's record failed and the delivery was sent again).
    // Statements are not: a server-side statement_timeout changes nothing when the database is unreachable (it cannot answer
    // either way) and would cut legitimate long work (the migrations, which wait on the migration lock for as long
    // as another process's take; a sweep or a claim behind a long lock); a client-side query_timeout gives up on a
    // statement the server may still commit (a recorded attempt reported as failed). A store that stops answering
    // cannot stop a shutdown: the engine abandons its calls after the deadline and close() cuts the connections.
    // A session idle inside a transaction is ended (`idleInTransactionTimeoutMs`, set with the planner settings):
    // that cuts no work, only the locks of a process that stopped in the middle of one.
    const connectTimeoutMs = this.#options.connectTimeoutMs;
    const settings = [
      ...SESSION_SETTINGS,
      `SET idle_in_transaction_session_timeout = ${this.#options.idleInTransactionTimeoutMs}`,
    ];
    this.#pool = new pg.Pool({
      connectionString: options.connectionString,
      max: poolSize,
      Client: class extends pg.Client {
        constructor(config?: pg.ClientConfig) {
          super({ ...config, connectionTimeoutMillis: connectTimeoutMs });
        }
      },
      onConnect: async (client) => {
        for (const setting of settings) await client.query(setting).catch(() => undefined);
      },
    });
    // An idle connection that breaks must not crash the process: the next query reports the problem.
    this.#pool.on('error', () => undefined);
    this.#pool.on('connect', (client) => {
      this.#connections.add(client);
      // Nor one that breaks while checked out for a transaction (the database restarted, the backend was terminated):
      // the pool listens to a connection only while it is idle, and a client emits its error besides failing its
      // query, so with no listener it was thrown and the process died. The query's failure is the caller's error,
      // and the pool drops the broken connection when it is given back.
      client.on('error', () => undefined);
    });
    this.#pool.on('remove', (client) => this.#connections.delete(client));
  }

  #assertOpen(): void {
    if (this.#closed) throw new StoreError('closed', 'the store is closed');
  }

  async #query<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
    this.#assertOpen();
    return this.#pool.query<R>(sql, params);
  }

  /** One named statement (see {@link named}) on a pooled connection: its own transaction. */
  async #run<R extends pg.QueryResultRow>(sql: string, params: unknown[]): Promise<pg.QueryResult<R>> {
    this.#assertOpen();
    return this.#pool.query<R>(named(sql, params));
  }

  /**
   * Runs `fn` in a READ COMMITTED transaction, again from the start when it lost a race (see
   * {@link RETRY_SQLSTATES}), with a short random pause so that racing processes spread out.
   */
  async #tx<T>(fn: (client: Client) => Promise<T>): Promise<T> {
    this.#assertOpen();
    for (let run = 1; ; run++) {
      const client = await this.#pool.connect();
      let broken: Error | undefined;
      try {
        await client.query('BEGIN');
        const result = await fn(client);
        await client.query('COMMIT');
        return result;
      } catch (error) {
        await client.query('ROLLBACK').catch((rollbackError: unknown) => {
          broken = rollbackError instanceof Error ? rollbackError : new Error('rollback failed');
        });
        const state = sqlState(error);
        if (state === undefined || !RETRY_SQLSTATES.has(state)) throw error;
        if (run >= MAX_TX_RUNS) {
          throw new StoreError('conflict', `transaction kept conflicting with concurrent ones (${state})`, {
            cause: error,
          });
        }
      } finally {
        client.release(broken);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 5 * run));
    }
  }

  async migrate(): Promise<void> {
    this.#assertOpen();
    const client = await this.#pool.connect();
    try {
      await migratePostgres(client, POSTGRES_MIGRATIONS);
    } finally {
      client.release();
    }
  }

  /** Opens the LISTEN connection (done by {@link openPostgresStore}); safe to call again. */
  async listen(): Promise<void> {
    this.#assertOpen();
    if (this.#listenClient !== null) return;
    const client = new pg.Client({
      connectionString: this.#options.connectionString,
      connectionTimeoutMillis: this.#options.connectTimeoutMs,
    });
    const broke = (): void => {
      if (this.#listenClient !== client) return;
      this.#listenClient = null;
      this.#assembling.clear();
      client.end().catch(() => undefined);
      this.#scheduleReconnect();
    };
    client.on('error', broke);
    client.on('end', broke);
    client.on('notification', (n) => {
      if (n.channel === this.#options.channel && n.payload !== undefined) this.#receive(n.payload);
    });
    this.#listenClient = client;
    try {
      await client.connect();
      await client.query(`LISTEN ${this.#options.channel}`);
    } catch (error) {
      this.#listenClient = null;
      await client.end().catch(() => undefined);
      throw error;
    }
  }

  #scheduleReconnect(): void {
    if (this.#closed || this.#reconnectTimer !== null) return;
    // Outcomes emitted while the connection is down are not seen here: WatchDeliveries is a live feed.
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.listen().catch(() => this.#scheduleReconnect());
    }, this.#options.listenReconnectMs);
    this.#reconnectTimer.unref();
  }

  async close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const listenClient = this.#listenClient;
    const graceful = this.#closeGracefully();
    if ((await within(graceful, this.#options.closeTimeoutMs, 'timeout')) !== 'timeout') return;
    // Statements still on their way after closeTimeoutMs: the database stopped answering (a partition leaves the
    // sockets open, no byte passing) or is overloaded. The connections are cut, so that those statements fail
    // instead of hanging and the pool can end. A call still waiting for a connection is left unsettled (pool.end()
    // does not settle it), so close() does not wait for `graceful` itself but for the pool, briefly.
    this.#closed = true;
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#listeners.clear();
    for (const client of new Set([...this.#connections, listenClient, this.#listenClient])) if (client) cut(client);
    this.#listenClient = null;
    const ended = this.#pool.ending ? Promise.resolve() : this.#pool.end().catch(() => undefined);
    await within(Promise.allSettled([graceful, ended]), CUT_SETTLE_MS, 'timeout');
  }

  async #closeGracefully(): Promise<void> {
    // Freezes and records already accepted are sent, not dropped: those queued and those on their way
    // (pool.end() would leave a query still waiting for a connection unsettled forever).
    // A call made while the other queue drained (a record after its freeze settled) is waited for too.
    while (!this.#freezes.idle || !this.#records.idle) {
      await Promise.all([this.#freezes.drain(), this.#records.drain()]);
    }
    this.#closed = true;
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#listeners.clear();
    const listenClient = this.#listenClient;
    this.#listenClient = null;
    await Promise.allSettled([listenClient?.end(), this.#pool.ending ? undefined : this.#pool.end()]);
  }

  // ---------------------------------------------------------------- webhooks

  async upsertWebhook(accountId: string, config: WebhookSettings, now: number): Promise<WebhookRecord> {
    // Each save gets a later updatedAt than the one before (Store.upsertWebhook).
    return (await this.#insertWebhook(
      accountId,
      config,
      now,
      `DO UPDATE SET config = excluded.config, enabled = excluded.enabled, message_ttl_ms = excluded.message_ttl_ms,
         updated_at = GREATEST(excluded.updated_at, webhooks.updated_at + 1)`,
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
    const { rows } = await this.#query<WebhookRow>(
      `INSERT INTO webhooks (account_id, config, enabled, message_ttl_ms, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $5)
       ON CONFLICT (account_id) ${onConflict}
       RETURNING *`,
      [accountId, stored.json, stored.enabled, stored.messageTtlMs, now],
    );
    return rows[0] === undefined ? null : webhookFromRow(rows[0]);
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
    const { rows } = await this.#query<WebhookRow>(
      `UPDATE webhooks SET config = $2, enabled = $3, message_ttl_ms = $4, updated_at = $5
       WHERE account_id = $1 AND updated_at = $6 RETURNING *`,
      [accountId, stored.json, stored.enabled, stored.messageTtlMs, now, ifUpdatedAt],
    );
    return rows[0] === undefined ? null : webhookFromRow(rows[0]);
  }

  async ping(timeoutMs?: number): Promise<void> {
    this.#assertOpen();
    const client = await this.#pool.connect();
    let failed: Error | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        if (timeoutMs !== undefined) {
          timer = setTimeout(() => {
            reject(new Error(`no answer to SELECT 1 within ${timeoutMs} ms`));
            // Its socket too: a dead one would stay open (and keep the process alive) until TCP gives up.
            cut(client);
          }, timeoutMs);
          timer.unref();
        }
        client.query('SELECT 1').then(() => resolve(), reject);
      });
    } catch (error) {
      failed = error instanceof Error ? error : new Error(String(error));
      throw error;
    } finally {
      clearTimeout(timer);
      // A connection that did not answer (or failed) is closed, not given back: the next ping opens a new one.
      client.release(failed);
    }
  }

  async getWebhook(accountId: string): Promise<WebhookRecord | null> {
    assertId('accountId', accountId);
    // Named, so its columns are listed (a prepared `SELECT *` fails once a migration changes the table): it runs
    // once per publish statement, and planning it cost four times its run (issue 6: 168 ms against 41 ms in 10 s).
    const { rows } = await this.#run<WebhookRow>(
      'SELECT account_id, config, enabled, message_ttl_ms, created_at, updated_at FROM webhooks WHERE account_id = $1',
      [accountId],
    );
    return rows[0] === undefined ? null : webhookFromRow(rows[0]);
  }

  async listWebhookAccounts(afterAccountId: string | null, limit: number): Promise<string[]> {
    assertInt('limit', limit, 1, MAX_PAGE_SIZE);
    // COLLATE "C": byte order, the same as SQLite's, whatever the database's collation.
    const { rows } = await this.#query<{ account_id: string }>(
      'SELECT account_id FROM webhooks WHERE account_id COLLATE "C" > $1 ORDER BY account_id COLLATE "C" LIMIT $2',
      [afterAccountId ?? '', limit],
    );
    return rows.map((r) => r.account_id);
  }

  async deleteWebhook(accountId: string): Promise<boolean> {
    assertId('accountId', accountId);
    // The deliveries go before the messages. The other way round, a publish committing between the two
    // statements was cut in two: its messages kept (committed after the messages' delete began), the pending
    // delivery it had joined deleted by the next statement, so nothing would send them once the webhook came back.
    // This way a publish that joined a pending delivery this deletes waits for it (the row is locked) and then
    // inserts a new one, and its messages are either deleted with the account's (committed before the messages'
    // delete began) or kept with that delivery; at worst a pending delivery is left without messages, which sends
    // the empty list if the webhook comes back. (REPEATABLE READ, one snapshot, was tried: every claim, record or
    // publish on the account meanwhile was a serialization failure, and a busy account could not be deleted.)
    return this.#tx(async (c) => {
      const existed = ((await c.query('DELETE FROM webhooks WHERE account_id = $1', [accountId])).rowCount ?? 0) > 0;
      // Every delivery goes, finished ones with their attempts: their frozen bodies hold the deleted messages, and a
      // replay of one once the account has a webhook again would send them (to whatever URL it has then).
      // Locked in seq order first, as a batched record of final attempts locks its deliveries (RECORD_FINAL_SQL, which
      // takes no webhook lock). A plain delete took them in its plan's order, for an account with many deliveries a
      // bitmap scan's (their place in the table): it deleted y's, then waited for x's, which a record held while it
      // waited for y's, until deadlock_timeout (1 s). Now it holds none after the one it waits for, so a record holding
      // that one gets the rest. The other statements that lock several of the account's deliveries lock them in seq
      // order too (a batched freeze, FREEZE_SQL), take its webhook lock first (publish, resync, replay, the sweep's
      // refresh: this delete and they wait for each other before any delivery) or skip locked rows (claims, the lease
      // reaper, the sweep's delete); only advanceGivenBack (by due time, when a rate limit is raised) does none of
      // these. Then deleted by key (primary-key probes, in any order: the rows are this transaction's).
      await c.query(
        `DELETE FROM deliveries WHERE seq = ANY (ARRAY(
           SELECT seq FROM deliveries WHERE account_id = $1 ORDER BY seq FOR UPDATE))`,
        [accountId],
      );
      await c.query('DELETE FROM messages WHERE account_id = $1', [accountId]);
      // Its shared rate-limit bucket too: the table does not grow with every webhook ever deleted.
      await c.query('DELETE FROM rate_buckets WHERE account_id = $1', [accountId]);
      return existed;
    });
  }

  // ---------------------------------------------------------------- publish / resync

  async publish(input: PublishInput): Promise<PublishResult> {
    const accountId = assertId('accountId', input.accountId);
    const now = assertTime('now', input.now);
    assertStoredMessages(input.messages);
    const traceparent = assertTraceparent(input.traceparent);
    // Inserting in id order makes two publishes that share ids wait on each other in the same order
    // (no deadlock); the sort is stable, so of two equal ids in one call the first still wins.
    const messages = [...input.messages].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const columns = {
      id: messages.map((m) => m.id),
      contact: messages.map((m) => m.externalCustomerId),
      created: messages.map((m) => m.createdDate),
      expires: messages.map((m) => m.expiresAt),
      title: messages.map((m) => m.title),
      content: messages.map((m) => m.content),
      image: messages.map((m) => m.image ?? null),
      link: messages.map((m) => m.link ?? null),
      category: messages.map((m) => m.category),
      custom: messages.map((m) => m.customData ?? null),
    };
    const contacts = distinctSorted(columns.contact);
    const params = [
      accountId,
      columns.id,
      columns.contact,
      columns.created,
      columns.expires,
      columns.title,
      columns.content,
      columns.image,
      columns.link,
      columns.category,
      columns.custom,
      contacts.map(() => newDeliveryId(now)),
      contacts,
      now,
      traceparent,
      this.#options.channel,
      input.requireWebhook === true,
    ];
    for (let run = 1; ; run++) {
      try {
        // Small calls (the usual traffic: a few messages as they happen) run the named statement: parsed once per
        // connection, it cost PostgreSQL about 40% less CPU per call and gave about 45% more calls per second
        // (bench/pg-publish.ts). Large ones stay unnamed: for batches of up to 10,000 messages the generic plan a named
        // statement falls back to made it several times slower, and parsing is little next to their work.
        type PublishRow = {
          inserted: string;
          hooked: boolean;
          external_customer_id: string | null;
          id: string | null;
        };
        const { rows } =
          messages.length <= this.#options.namedPublishMaxMessages
            ? await this.#run<PublishRow>(PUBLISH_SQL, params)
            : await this.#query<PublishRow>(PUBLISH_SQL, params);
        if (input.requireWebhook === true && !rows[0]!.hooked) {
          throw new StoreError('webhook_missing', `account ${JSON.stringify(accountId)} has no webhook`);
        }
        const inserted = Number(rows[0]!.inserted);
        const deliveries = rows
          .filter((r) => r.id !== null)
          .map((r) => ({ externalCustomerId: r.external_customer_id!, deliveryId: r.id! }))
          .sort((a, b) => (a.externalCustomerId < b.externalCustomerId ? -1 : 1));
        return { inserted, duplicates: messages.length - inserted, deliveries };
      } catch (error) {
        // A statement that fails changes nothing: run it again after a lost race, like #tx does.
        const state = sqlState(error);
        if (state === undefined || !RETRY_SQLSTATES.has(state)) throw error;
        if (run >= MAX_TX_RUNS) {
          throw new StoreError('conflict', `publish kept conflicting with concurrent ones (${state})`, {
            cause: error,
          });
        }
      }
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 5 * run));
    }
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
    return this.#tx(async (c) => {
      // The webhook first, as a publish and a sweep take it: a DeleteWebhook takes it first too (then the deliveries),
      // so a resync that locked a pending delivery before it waited for one the delete had taken: a deadlock.
      await c.query(LOCK_WEBHOOK_SQL, [accountId]);
      const contacts =
        externalCustomerIds === 'all'
          ? (
              await c.query<{ c: string }>(
                `SELECT DISTINCT external_customer_id AS c FROM messages WHERE account_id = $1 AND expires_at > $2
                 ORDER BY 1`,
                [accountId, now],
              )
            ).rows.map((r) => r.c)
          : distinctSorted(externalCustomerIds);
      return this.#ensurePending(c, accountId, contacts, now, traceparent);
    });
  }

  /**
   * Each contact's pending delivery (`contacts` sorted and distinct): the existing one, locked so that
   * no worker claims it before this transaction's messages are committed (they must be in it), or a
   * new one due now. The contacts' retrying deliveries are superseded by them (ARCHITECTURE §2). New
   * deliveries get `traceparent`; existing ones keep the trace of the call that created them.
   *
   * One upsert in contact order, as {@link PUBLISH_SQL}'s `pend`: the existing ones locked and the new ones inserted
   * contact by contact. Locking every existing one first and inserting the others next (two statements) took the
   * locks in another order than a publish: a sweep that had locked b's pending delivery and was about to insert a's
   * deadlocked with a publish that had inserted a's and waited for b's, and one of them waited out deadlock_timeout
   * (1 s) before it was ended and run again. A pending delivery a claim takes meanwhile leaves the arbiter index, so
   * the upsert inserts a new one, as a publish's does.
   */
  async #ensurePending(
    c: Client,
    accountId: string,
    contacts: readonly string[],
    now: number,
    traceparent: string | null,
  ): Promise<PublishResult['deliveries']> {
    const found = await this.#ensurePendingOf(
      c,
      contacts.map((contact) => ({ account: accountId, contact })),
      now,
      traceparent,
    );
    return found.map((f) => ({ externalCustomerId: f.contact, deliveryId: f.deliveryId }));
  }

  /**
   * {@link PostgresStore.#ensurePending} for contacts of any accounts (distinct pairs), in account and contact order:
   * a constant number of statements however many accounts (the sweep's refresh). The retries are found and locked by
   * a probe of each contact's retrying deliveries (deliveries_retrying_contact), then superseded by key, whatever the
   * statistics: a join of the pairs to `deliveries` may be planned over every row of it.
   *
   * SKIP LOCKED: a retry taken in flight since the statement began is locked in its new version and left (READ
   * COMMITTED re-checks the state), and waiting for one a record holds deadlocked with that record (it locks by key,
   * this by contact: this held b's in-flight version, the record c's, each waited for the other). One skipped because
   * a claim, a record or a replay holds it is superseded when it is next claimed (a claim supersedes a retry whose
   * contact has a newer delivery), so it is never sent after the pending delivery.
   */
  async #ensurePendingOf(
    c: Client,
    pairs: ReadonlyArray<{ account: string; contact: string }>,
    now: number,
    traceparent: string | null,
  ): Promise<Array<{ account: string; contact: string; deliveryId: string }>> {
    if (pairs.length === 0) return [];
    const accounts = pairs.map((p) => p.account);
    const contacts = pairs.map((p) => p.contact);
    const { rows } = await c.query<{ i: string; id: string }>(
      `WITH up AS (
         INSERT INTO deliveries (id, account_id, external_customer_id, state, created_at, updated_at, next_attempt_at,
           traceparent)
         SELECT n.id, n.account, n.contact, 'pending', $4, $4, $4, $5::text
         FROM unnest($1::text[], $2::text[], $3::text[]) AS n(account, contact, id)
         ORDER BY n.account, n.contact
         ON CONFLICT (account_id, external_customer_id) WHERE state = 'pending'
           DO UPDATE SET updated_at = deliveries.updated_at
         RETURNING account_id, external_customer_id, id)
       SELECT r.i, up.id FROM up
         JOIN unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(account, contact, i)
           ON r.account = up.account_id AND r.contact = up.external_customer_id`,
      [accounts, contacts, pairs.map(() => newDeliveryId(now)), now, traceparent],
    );
    const ids: string[] = [];
    for (const row of rows) ids[Number(row.i) - 1] = row.id;
    const result = pairs.map((p, k) => ({ ...p, deliveryId: ids[k]! }));
    // A waiting retry carries an older list than the pending delivery will: never send it again.
    const superseded = await c.query<SupersededDbRow>(
      `WITH p AS (
         SELECT t.seq, r.id FROM unnest($1::text[], $2::text[], $3::text[]) AS r(account, contact, id)
         CROSS JOIN LATERAL (SELECT x.seq FROM deliveries x WHERE x.account_id = r.account
           AND x.external_customer_id = r.contact AND x.state = 'retrying' FOR UPDATE OF x SKIP LOCKED) t)
       UPDATE deliveries d SET state = 'superseded', superseded_by = p.id, next_attempt_at = NULL,
         lease_owner = NULL, updated_at = $4
       FROM p WHERE d.seq = ANY (ARRAY(SELECT seq FROM p)) AND d.seq = p.seq
       RETURNING ${supersededColumns('d')}`,
      [accounts, contacts, ids, now],
    );
    await this.#announceSuperseded(c, superseded.rows, now);
    return result;
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
    const excluded = [...(options.excludeAccounts ?? [])];
    const state = LANE_STATE[lane];
    const leaseUntil = now + leaseMs;

    let rows: ClaimDbRow[] | null = null;
    try {
      // A named statement: planning it cost more than running it (0.46 ms against 0.68 ms a claim at 1,000
      // deliveries/s, issue 6). Its generic plan, made after a few runs on a connection and kept until the table is
      // analyzed again, may be made while `deliveries` is small; the sessions' `enable_seqscan = off` keeps that plan
      // on the indexes it was written for (see the constructor).
      ({ rows } = await this.#run<ClaimDbRow>(CLAIM_SQL[lane], [
        now,
        excluded,
        Math.min(maxPerAccount, limit),
        limit,
        owner,
        leaseUntil,
        maxBodyBytes,
      ]));
    } catch (error) {
      // Lost a race (see RETRY_SQLSTATES): the steps below run again with the retries of #tx.
      const code = sqlState(error);
      if (code === undefined || !RETRY_SQLSTATES.has(code)) throw error;
    }
    if (rows !== null && rows[0]?.slow === false) {
      const webhooks = new Map<string, WebhookRecord>();
      const claimed: ClaimedDelivery[] = [];
      for (const row of rows) {
        if (row.rank === null) continue; // nothing claimed
        let webhook = webhooks.get(row.account_id);
        if (webhook === undefined) {
          webhook = webhookFromRow({
            account_id: row.account_id,
            config: row.w_config,
            enabled: row.w_enabled,
            message_ttl_ms: row.w_message_ttl_ms,
            created_at: row.w_created_at,
            updated_at: row.w_updated_at,
          });
          webhooks.set(row.account_id, webhook);
        }
        claimed.push({ delivery: deliveryFromRow(row), webhook, leaseUntil });
      }
      await this.#attachMessages(claimed, now);
      return claimed;
    }

    return this.#tx(async (c) => {
      await this.#reapExpiredLeases(c, now);
      // Accounts with due work in this lane, oldest due first: one index probe per account, so a
      // disabled or excluded account's backlog is never walked. All of them, not just `limit`: an
      // account whose due work is blocked (its contacts are in flight) must not hold the others up.
      const accounts = await c.query<{ account_id: string }>(
        `SELECT w.account_id FROM webhooks w
         CROSS JOIN LATERAL (SELECT d.next_attempt_at AS due FROM deliveries d
           WHERE d.account_id = w.account_id AND d.state = '${state}' ORDER BY d.next_attempt_at LIMIT 1) x
         WHERE w.enabled AND x.due <= $1 AND NOT (w.account_id = ANY($2::text[]))
         ORDER BY x.due, w.account_id`,
        [now, excluded],
      );
      const accountIds = accounts.rows.map((r) => r.account_id);
      if (accountIds.length === 0) return [];
      const webhooks = new Map(
        (await c.query<WebhookRow>('SELECT * FROM webhooks WHERE account_id = ANY($1::text[])', [accountIds])).rows.map(
          (r) => [r.account_id, webhookFromRow(r)],
        ),
      );
      const claimed: ClaimedDelivery[] = [];
      // Frozen bodies up to maxBodyBytes, as the one-statement claim; `full` once one is refused.
      const takes = bodyBytesCut(maxBodyBytes);
      let full = false;
      for (const accountId of accountIds) {
        const webhook = webhooks.get(accountId);
        if (webhook === undefined) continue; // deleted since the first query
        let taken = 0;
        // Superseded candidates free their slot, so look again (bounded: each pass removes what it read).
        for (let pass = 0; pass < 4; pass++) {
          const want = Math.min(limit - claimed.length, maxPerAccount - taken);
          if (want <= 0) break;
          // SKIP LOCKED: rows another worker is claiming, or a publish is adding messages to, are left
          // for the next claim instead of waited for.
          const { rows } = await c.query<{ seq: string; newer_id: string | null; bytes: string }>(
            `SELECT d.seq, ${lane === 'retry' ? NEWER_ID : 'NULL::text'} AS newer_id,
               coalesce(octet_length(d.body), 0) AS bytes FROM deliveries d
             WHERE d.account_id = $1 AND d.state = '${state}' AND d.next_attempt_at <= $2
               AND ${CONTACT_NOT_IN_FLIGHT}
             ORDER BY d.next_attempt_at, d.seq LIMIT $3
             FOR UPDATE OF d SKIP LOCKED`,
            [accountId, now, want],
          );
          const stale = rows.filter((r) => r.newer_id !== null);
          for (const row of stale) await this.#supersede(c, row.seq, row.newer_id!, now);
          const seqs: string[] = [];
          for (const r of rows) {
            if (r.newer_id !== null) continue;
            if (!takes(Number(r.bytes))) {
              full = true;
              break;
            }
            seqs.push(r.seq);
          }
          if (seqs.length > 0) {
            const updated = await c.query<DeliveryRow>(
              `UPDATE deliveries d SET state = 'in_flight', lease_owner = $1, next_attempt_at = $2, updated_at = $3
               WHERE d.seq = ANY($4::bigint[]) RETURNING ${DELIVERY_COLUMNS}`,
              [owner, leaseUntil, now, seqs],
            );
            const bySeq = new Map(updated.rows.map((r) => [String(r.seq), r]));
            for (const seq of seqs) {
              const row = bySeq.get(seq);
              if (row !== undefined) claimed.push({ delivery: deliveryFromRow(row), webhook, leaseUntil });
            }
            taken += updated.rows.length;
          }
          if (full || stale.length === 0 || rows.length < want) break;
        }
        if (claimed.length >= limit || full) break;
      }
      return claimed;
    });
  }

  async #supersede(c: Client, seq: string | number, newerId: string, now: number): Promise<void> {
    const { rows } = await c.query<SupersededDbRow>(
      `UPDATE deliveries d SET state = 'superseded', superseded_by = $1, next_attempt_at = NULL, lease_owner = NULL,
         updated_at = $2 WHERE d.seq = $3 RETURNING ${supersededColumns('d')}`,
      [newerId, now, seq],
    );
    await this.#announceSuperseded(c, rows, now);
  }

  /**
   * NOTIFYs the `superseded` outcomes of rows this transaction superseded. A NOTIFY inside a transaction is
   * delivered at its COMMIT and dropped by a ROLLBACK (also by the runs {@link PostgresStore.#tx} repeats),
   * so an outcome is announced exactly when its change committed. @see DeliveryOutcome
   */
  async #announceSuperseded(c: Client, rows: readonly SupersededDbRow[], at: number, attempt?: Attempt): Promise<void> {
    const outcomes = rows
      .filter((r) => r.superseded_by !== null)
      .map((r) => supersededOutcome(r, r.account_id, r.superseded_by!, at, attempt));
    if (outcomes.length === 0) return;
    await c.query('SELECT pg_notify($1, f) FROM unnest($2::text[]) AS f', [
      this.#options.channel,
      outcomes.flatMap((o) => notifyFrames(o)),
    ]);
  }

  /**
   * Takes back claims whose lease ended (the worker died or stalled): a newer delivery of the contact
   * supersedes it; otherwise it goes back to its lane, due at the end of its lease so it keeps its place.
   */
  async #reapExpiredLeases(c: Client, now: number): Promise<void> {
    const { rows } = await c.query<SupersededDbRow>(
      `WITH expired AS (
         SELECT d.seq, d.body IS NOT NULL AS frozen, ${NEWER_ID} AS newer_id FROM deliveries d
         WHERE d.state = 'in_flight' AND d.next_attempt_at <= $1
         ORDER BY d.next_attempt_at LIMIT ${REAP_BATCH} FOR UPDATE OF d SKIP LOCKED)
       UPDATE deliveries t SET
         state = CASE WHEN e.newer_id IS NOT NULL THEN 'superseded' WHEN e.frozen THEN 'retrying' ELSE 'pending' END,
         superseded_by = e.newer_id,
         next_attempt_at = CASE WHEN e.newer_id IS NOT NULL THEN NULL ELSE t.next_attempt_at END,
         lease_owner = NULL, updated_at = $1
       FROM expired e WHERE t.seq = e.seq AND t.seq = ANY (ARRAY(SELECT seq FROM expired))
       RETURNING ${supersededColumns('t')}`,
      [now],
    );
    // superseded_by is set exactly on the rows that were superseded.
    await this.#announceSuperseded(c, rows, now);
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
    const [messages] = await this.#messagesOf([{ accountId, externalCustomerId, limit }], now, null);
    return messages!;
  }

  /**
   * The messages of each contact available at `now`, newest first (ties by id), at most its `limit`: one
   * statement however many contacts ({@link CONTACT_MESSAGES_SQL}).
   */
  async #messagesOf(
    contacts: ReadonlyArray<{ accountId: string; externalCustomerId: string; limit: number }>,
    now: number,
    maxBytes: number | null,
  ): Promise<Array<StoredMessage[] | undefined>> {
    const params: unknown[] = [
      contacts.map((c) => c.accountId),
      contacts.map((c) => c.externalCustomerId),
      // The statement's limits are `integer`; no list comes near that many messages.
      contacts.map((c) => Math.min(c.limit, 2_147_483_647)),
      now,
    ];
    const { rows } = await (maxBytes === null
      ? this.#run<MessageRow & { i: string; kept?: boolean }>(CONTACT_MESSAGES_SQL, params)
      : this.#run<MessageRow & { i: string; kept?: boolean }>(CLAIM_MESSAGES_SQL, [...params, maxBytes]));
    const lists: Array<StoredMessage[] | undefined> = contacts.map((): StoredMessage[] => []);
    for (const row of rows) {
      const k = Number(row.i) - 1;
      if (row.kept === false) lists[k] = undefined;
      else lists[k]?.push(messageFromRow(row));
    }
    return lists;
  }

  async checkClaim(deliveryId: string, owner: string): Promise<ClaimCheck | null> {
    assertId('deliveryId', deliveryId);
    assertId('owner', owner);
    // By key and owner, as the other statements of a claim (see above).
    const { rows } = await this.#run<{ updated_at: string | null; enabled: boolean | null }>(
      `SELECT w.updated_at, w.enabled FROM deliveries d LEFT JOIN webhooks w ON w.account_id = d.account_id
       WHERE d.id = $1 AND d.lease_owner = $2`,
      [deliveryId, owner],
    );
    const row = rows[0];
    if (row === undefined) return null;
    return {
      webhookUpdatedAt: row.updated_at === null ? null : Number(row.updated_at),
      webhookEnabled: row.enabled === true,
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
    this.#assertOpen();
    return this.#freezes.add({
      id: deliveryId,
      owner,
      body: Buffer.from(body.buffer, body.byteOffset, body.byteLength),
      messageIds: JSON.stringify(messageIds),
      now,
    });
  }

  /**
   * Gives each claimed delivery without a frozen body its contact's messages (`ClaimedDelivery.messages`), read
   * in one statement for the whole claim instead of one per delivery. Read after the claim
   * committed, never by the claim statement itself: a publish that attached messages to a pending delivery may
   * commit after the claim's snapshot was taken and before the claim locks that delivery, so only a later
   * statement is sure to see them (a message seen by no delivery would wait for the contact's next publish).
   */
  async #attachMessages(claimed: ClaimedDelivery[], now: number): Promise<void> {
    const first = claimed.filter((c) => c.delivery.body === null);
    if (first.length === 0) return;
    let lists: Array<StoredMessage[] | undefined>;
    try {
      lists = await this.#messagesOf(
        first.map((c) => ({
          accountId: c.delivery.accountId,
          externalCustomerId: c.delivery.externalCustomerId,
          limit: c.webhook.maxMessagesPerContact,
        })),
        now,
        this.#options.claimMessagesMaxBytes,
      );
    } catch {
      // The claim has committed: failing claimDue now would leave these deliveries in flight until their lease
      // ends. Without `messages` the engine reads each contact's list itself and handles a failure per delivery.
      return;
    }
    first.forEach((c, k) => {
      // Past the budget: no `messages`, the engine reads the list itself.
      const list = lists[k];
      if (list !== undefined) c.messages = list;
    });
  }

  /**
   * The freezes of one turn as one statement (the deliveries of one claim are frozen together: one round trip
   * and one transaction instead of one each), each answered for its own delivery.
   */
  async #sendFreezes(batch: QueuedFreeze[]): Promise<boolean[]> {
    const { rows } = await this.#run<{ id: string }>(FREEZE_SQL, [
      batch.map((f) => f.id),
      batch.map((f) => f.owner),
      batch.map((f) => f.body),
      batch.map((f) => f.messageIds),
      batch.map((f) => f.now),
    ]);
    const frozen = new Set(rows.map((r) => r.id));
    return batch.map((f) => frozen.has(f.id));
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
    if (nextState !== 'retrying') {
      // Delivered or failed: recorded with the other attempts that ended in this turn (one statement).
      this.#assertOpen();
      return this.#records.add({ deliveryId, result, reason });
    }
    const endedAt = attempt.startedAt + attempt.durationMs;
    // A retry in one statement, so one round trip and its own transaction: check the claim, insert the attempt,
    // update the delivery. A retry whose contact has a newer delivery is superseded instead, and that outcome
    // is NOTIFYed in the same transaction: the statement then changes nothing and #recordAttemptTx does it all.
    let rows: Array<DeliveryRow & { newer_id: string | null; claimed: boolean | null }>;
    try {
      ({ rows } = await this.#run<DeliveryRow & { newer_id: string | null; claimed: boolean | null }>(
        RECORD_RETRY_SQL,
        [
          deliveryId,
          result.owner,
          attempt.attemptNo,
          attempt.startedAt,
          attempt.durationMs,
          attempt.statusCode,
          attempt.errorKind,
          attempt.verdict,
          attempt.nextAttemptAt,
          attempt.nextAttemptAt ?? endedAt,
          reason,
          endedAt,
        ],
      ));
    } catch (error) {
      const state = sqlState(error);
      if (state === undefined || !RETRY_SQLSTATES.has(state)) throw error;
      return this.#recordAttemptTx(deliveryId, result); // lost a race: again, with the retries of #tx
    }
    const row = rows[0];
    if (row === undefined) return null; // not (or no longer) ours, or not the next attempt
    if (row.claimed === true) return deliveryFromRow(row);
    return this.#recordAttemptTx(deliveryId, result);
  }

  /**
   * The final attempts of one turn (see {@link RECORD_FINAL_SQL}), each answered with its delivery as recorded,
   * or null when it was not recorded (the claim is no longer its owner's, or not the next attempt). After a
   * lost race (a deadlock with another statement, say) each goes again on its own, with the retries of #tx.
   */
  async #sendRecords(batch: QueuedRecord[]): Promise<Array<Delivery | null | Promise<Delivery | null>>> {
    let rows: DeliveryRow[];
    try {
      ({ rows } = await this.#run<DeliveryRow>(RECORD_FINAL_SQL, [
        batch.map((r) => r.deliveryId),
        batch.map((r) => r.result.owner),
        batch.map((r) => r.result.attempt.attemptNo),
        batch.map((r) => r.result.attempt.startedAt),
        batch.map((r) => r.result.attempt.durationMs),
        batch.map((r) => r.result.attempt.statusCode),
        batch.map((r) => r.result.attempt.errorKind),
        batch.map((r) => r.result.attempt.verdict),
        batch.map((r) => r.result.attempt.nextAttemptAt),
        batch.map((r) => r.result.nextState),
        batch.map((r) => (r.result.nextState === 'delivered' ? null : r.reason)),
        batch.map((r) => r.result.attempt.startedAt + r.result.attempt.durationMs),
      ]));
    } catch (error) {
      const state = sqlState(error);
      if (state === undefined || !RETRY_SQLSTATES.has(state)) throw error;
      return batch.map((r) => this.#recordAttemptTx(r.deliveryId, r.result));
    }
    const recorded = new Map(rows.map((row) => [row.id, row]));
    return batch.map((r) => {
      const row = recorded.get(r.deliveryId);
      return row === undefined ? null : deliveryFromRow(row);
    });
  }

  /** {@link recordAttempt} step by step in a transaction, for the case where the delivery is superseded. */
  async #recordAttemptTx(deliveryId: string, result: AttemptResult): Promise<Delivery | null> {
    const { attempt, nextState } = result;
    const reason = attemptReason(result);
    const endedAt = attempt.startedAt + attempt.durationMs;
    return this.#tx(async (c) => {
      const { rows } = await c.query<{
        seq: string;
        state: DeliveryState;
        lease_owner: string | null;
        attempt_count: number;
        newer_id: string | null;
      }>(
        `SELECT d.seq, d.state, d.lease_owner, d.attempt_count, ${NEWER_ID} AS newer_id
         FROM deliveries d WHERE d.id = $1 FOR UPDATE OF d`,
        [deliveryId],
      );
      const row = rows[0];
      if (
        row === undefined ||
        row.state !== 'in_flight' ||
        row.lease_owner !== result.owner ||
        attempt.attemptNo !== Number(row.attempt_count) + 1
      ) {
        return null;
      }
      await c.query(
        `INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, status_code, error_kind, verdict,
           next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [
          deliveryId,
          attempt.attemptNo,
          attempt.startedAt,
          attempt.durationMs,
          attempt.statusCode,
          attempt.errorKind,
          attempt.verdict,
          attempt.nextAttemptAt,
        ],
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
      const updated = await c.query<DeliveryRow>(
        `UPDATE deliveries d SET state = $1, next_attempt_at = $2, lease_owner = NULL,
           attempt_count = attempt_count + 1, first_attempt_at = COALESCE(first_attempt_at, $3), superseded_by = $4,
           last_error = CASE WHEN $5 THEN last_error ELSE $6 END, updated_at = $7
         WHERE d.seq = $8 RETURNING ${DELIVERY_COLUMNS}`,
        [state, next, attempt.startedAt, supersededBy, nextState === 'delivered', reason, endedAt, row.seq],
      );
      const delivery = updated.rows[0]!;
      if (supersededBy !== null) {
        await this.#announceSuperseded(c, [{ ...delivery, superseded_by: supersededBy }], endedAt, attempt);
      }
      return deliveryFromRow(delivery);
    });
  }

  async release(deliveryId: string, owner: string, dueAt: number): Promise<void> {
    assertId('deliveryId', deliveryId);
    assertId('owner', owner);
    assertTime('dueAt', dueAt);
    await this.#tx(async (c) => {
      const { rows } = await c.query<{ seq: string; frozen: boolean; newer_id: string | null }>(
        `SELECT d.seq, d.body IS NOT NULL AS frozen, ${NEWER_ID} AS newer_id FROM deliveries d
         WHERE d.id = $1 AND d.lease_owner = $2 FOR UPDATE OF d`,
        [deliveryId, owner],
      );
      const row = rows[0];
      if (row === undefined) return;
      if (row.newer_id !== null) await this.#supersede(c, row.seq, row.newer_id, dueAt);
      else {
        await c.query(
          'UPDATE deliveries SET state = $1, next_attempt_at = $2, lease_owner = NULL, updated_at = $2 WHERE seq = $3',
          [row.frozen ? 'retrying' : 'pending', dueAt, row.seq],
        );
      }
    });
  }

  async advanceGivenBack(accountId: string, now: number): Promise<number> {
    assertId('accountId', accountId);
    assertTime('now', now);
    // One update per lane, each over its lane's index (one with both states read every delivery the account ever had,
    // finished ones too, by deliveries_account). Every condition on the target itself: a row that a claim or an attempt
    // changes meanwhile is checked again once it is free (READ COMMITTED), and left alone when no longer given back.
    const { rows } = await this.#query<{ n: string }>(
      `WITH p AS (UPDATE deliveries d SET next_attempt_at = $2, updated_at = $2
           WHERE d.account_id = $1 AND d.state = 'pending' AND d.next_attempt_at > $2 RETURNING 1),
         r AS (UPDATE deliveries d SET next_attempt_at = $2, updated_at = $2
           WHERE d.account_id = $1 AND d.state = 'retrying' AND d.next_attempt_at > $2
             AND d.updated_at = d.next_attempt_at RETURNING 1)
       SELECT (SELECT count(*) FROM p) + (SELECT count(*) FROM r) AS n`,
      [accountId, now],
    );
    return Number(rows[0]!.n);
  }

  // ---------------------------------------------------------------- reads

  async getDelivery(id: string): Promise<{ delivery: Delivery; attempts: Attempt[] } | null> {
    assertId('id', id);
    const { rows } = await this.#query<DeliveryRow>(`SELECT ${DELIVERY_COLUMNS} FROM deliveries d WHERE d.id = $1`, [
      id,
    ]);
    if (rows[0] === undefined) return null;
    const attempts = await this.#query<AttemptRow>(
      'SELECT * FROM attempts WHERE delivery_id = $1 ORDER BY attempt_no',
      [id],
    );
    return { delivery: deliveryFromRow(rows[0]), attempts: attempts.rows.map(attemptFromRow) };
  }

  async listDeliveries(filter: DeliveryFilter, limit: number, cursor: string | null): Promise<DeliveryPage> {
    assertInt('limit', limit, 1, MAX_PAGE_SIZE);
    const after = cursor === null ? null : decodeCursor(cursor, filter);
    const where: string[] = [];
    const params: unknown[] = [];
    const param = (value: unknown): string => {
      params.push(value);
      return `$${params.length}`;
    };
    if (filter.accountId !== undefined)
      where.push(`d.account_id = ${param(assertId('filter.accountId', filter.accountId))}`);
    if (filter.externalCustomerId !== undefined) {
      where.push(`d.external_customer_id = ${param(assertId('filter.externalCustomerId', filter.externalCustomerId))}`);
    }
    if (filter.states !== undefined && filter.states.length > 0) {
      filter.states.forEach((s, i) => {
        if (!DELIVERY_STATES.includes(s))
          throw new StoreError('invalid_argument', `filter.states[${i}]: unknown state`);
      });
      where.push(`d.state = ANY(${param([...filter.states])}::text[])`);
    }
    if (after !== null) where.push(`d.seq < ${param(after)}`);
    const { rows } = await this.#query<DeliveryRow>(
      `SELECT ${DELIVERY_COLUMNS} FROM deliveries d ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''}
       ORDER BY d.seq DESC LIMIT ${param(limit + 1)}`,
      params,
    );
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return {
      deliveries: page.map(deliveryFromRow),
      nextCursor: rows.length > limit && last !== undefined ? encodeCursor(Number(last.seq), filter) : null,
    };
  }

  // ---------------------------------------------------------------- replay, sweep, stats

  async retryDelivery(id: string, now: number, options: TraceOptions = {}): Promise<RetryResult | null> {
    assertId('id', id);
    assertTime('now', now);
    const traceparent = assertTraceparent(options.traceparent);
    return this.#tx(async (c) => {
      // The account's webhook before the delivery (see resync): a replay that locked it, then the contact's pending
      // delivery, deadlocked with a DeleteWebhook deleting that pending delivery and then waiting for this one.
      const account = await c.query<{ account_id: string }>('SELECT account_id FROM deliveries WHERE id = $1', [id]);
      if (account.rows[0] !== undefined) await c.query(LOCK_WEBHOOK_SQL, [account.rows[0].account_id]);
      const { rows } = await c.query<DeliveryRow & { newer_id: string | null }>(
        `SELECT ${DELIVERY_COLUMNS}, ${NEWER_ID} AS newer_id FROM deliveries d WHERE d.id = $1 FOR UPDATE OF d`,
        [id],
      );
      const row = rows[0];
      if (row === undefined) return null;
      if (row.state === 'in_flight') return { delivery: deliveryFromRow(row), replacedByNewer: false };
      // A retry with a newer delivery beside it (one a publish or resync left for its claim to supersede, as another
      // transaction held it: see PUBLISH_SQL) is never sent again: it goes the way of a replaced one, below.
      if ((row.state === 'retrying' && row.newer_id === null) || row.state === 'pending') {
        // Made due now when it was waiting (a retry's backoff, a claim given back for later).
        const updated = await c.query<DeliveryRow>(
          `UPDATE deliveries d SET next_attempt_at = LEAST(next_attempt_at, $1), updated_at = $1,
             traceparent = COALESCE($3, traceparent) WHERE d.seq = $2 RETURNING ${DELIVERY_COLUMNS}`,
          [now, row.seq, traceparent],
        );
        return { delivery: deliveryFromRow(updated.rows[0]!), replacedByNewer: false };
      }
      if (row.newer_id === null) {
        // Still the contact's newest: the same id and the same bytes again (ARCHITECTURE §1).
        const updated = await c.query<DeliveryRow>(
          `UPDATE deliveries d SET state = $1, next_attempt_at = $2, superseded_by = NULL, lease_owner = NULL,
             updated_at = $2, traceparent = COALESCE($4, traceparent) WHERE d.seq = $3 RETURNING ${DELIVERY_COLUMNS}`,
          [row.body === null ? 'pending' : 'retrying', now, row.seq, traceparent],
        );
        return { delivery: deliveryFromRow(updated.rows[0]!), replacedByNewer: false };
      }
      // A newer state exists: send that, never this older list after it.
      const [pending] = await this.#ensurePending(c, row.account_id, [row.external_customer_id], now, traceparent);
      const fresh = await c.query<DeliveryRow>(`SELECT ${DELIVERY_COLUMNS} FROM deliveries d WHERE d.id = $1`, [
        pending!.deliveryId,
      ]);
      return { delivery: deliveryFromRow(fresh.rows[0]!), replacedByNewer: true };
    });
  }

  async sweep(now: number, options: SweepOptions): Promise<SweepResult> {
    assertTime('now', now);
    const retention = assertInt('terminalRetentionMs', options.terminalRetentionMs, 0);
    const limit = assertInt('limit', options.limit, 1);
    return this.#tx(async (c) => {
      const gone = (await c.query<ExpiredRow<string>>(SWEEP_SQL.messages, [now, limit])).rows;
      const refreshed = options.refreshExpired === true ? await this.#refreshExpired(c, gone, now) : 0;
      const messages = gone.length;
      if (messages >= limit) return { deleted: messages, refreshed };
      const deliveries = (await c.query(SWEEP_SQL.deliveries, [now - retention, limit - messages])).rowCount ?? 0;
      return { deleted: messages + deliveries, refreshed };
    });
  }

  /**
   * The refresh of {@link Store.sweep} (`refreshExpired`), inside its transaction, after the delete. The accounts'
   * webhooks are key-share locked first, as a publish does, skipping one a DeleteWebhook holds: that call deletes the
   * webhook row, then the deliveries, then the messages, so waiting for it while holding its expired messages would
   * deadlock, and its account needs no list any more. Then a few statements for all the accounts together: a few per
   * account made a sweep of 1,000 messages of 1,000 accounts 4,004 statements (0.8 s), every lock taken held meanwhile.
   */
  async #refreshExpired(c: Client, gone: ReadonlyArray<ExpiredRow<string>>, now: number): Promise<number> {
    const byAccount = expiredByContact(gone);
    if (byAccount.length === 0) return 0;
    const hooked = await c.query<{ account_id: string }>(
      `SELECT account_id FROM webhooks WHERE account_id = ANY ($1::text[]) ORDER BY account_id
       FOR KEY SHARE SKIP LOCKED`,
      [byAccount.map((a) => a.account)],
    );
    const live = new Set(hooked.rows.map((r) => r.account_id));
    const pairs = byAccount
      .filter((a) => live.has(a.account))
      .flatMap(({ account, contacts }) =>
        [...contacts].map(([contact, expired]) => ({ account, contact, patterns: expiredIdPatterns(expired) })),
      );
    if (pairs.length === 0) return 0;
    // The lists the receiver may hold: the newest one it answered 2xx to and every one built after it (all that were
    // built when none was delivered), by the contact's own index (probes, whatever the statistics), each tested where
    // it is (see expiredIdPatterns). A delivery in flight without a list yet may hold the message (read before it
    // expired, frozen after this transaction): its null counts as unknown, as no list at all does.
    const held = await c.query<{ i: string }>(
      `SELECT r.i FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS r(account, contact, patterns, i)
       CROSS JOIN LATERAL (SELECT array_agg(d.message_ids) AS lists FROM deliveries d WHERE d.account_id = r.account
           AND d.external_customer_id = r.contact AND (d.message_ids IS NOT NULL OR d.state = 'in_flight')
           AND d.seq >= COALESCE((SELECT e.seq FROM deliveries e WHERE e.account_id = r.account
             AND e.external_customer_id = r.contact AND e.state = 'delivered' ORDER BY e.seq DESC LIMIT 1), 0)) l
       WHERE l.lists IS NULL
         OR EXISTS (SELECT 1 FROM unnest(l.lists) x(ids) WHERE x.ids IS NULL OR EXISTS (
           SELECT 1 FROM json_array_elements_text(r.patterns::json) p(x) WHERE strpos(x.ids, p.x) > 0))`,
      [pairs.map((p) => p.account), pairs.map((p) => p.contact), pairs.map((p) => p.patterns)],
    );
    const refresh = held.rows.map((r) => pairs[Number(r.i) - 1]!).map(({ account, contact }) => ({ account, contact }));
    await this.#ensurePendingOf(c, refresh, now, null);
    return refresh.length;
  }

  async stats(now: number): Promise<{ byState: Record<DeliveryState, number>; oldestDueAt: number | null }> {
    assertTime('now', now);
    const byState = emptyByState();
    const counts = await this.#query<{ state: DeliveryState; n: string }>(STATS_COUNTS_SQL);
    for (const row of counts.rows) byState[row.state] = Number(row.n);
    const due = await this.#query<{ t: string | null }>(STATS_OLDEST_DUE_SQL, [now]);
    const t = due.rows[0]?.t ?? null;
    return { byState, oldestDueAt: t === null ? null : Number(t) };
  }

  async leaseRateTokens(accountId: string, perSecond: number, want: number): Promise<RateTokenLease> {
    assertId('accountId', accountId);
    assertInt('perSecond', perSecond, 1, 1_000_000);
    assertInt('want', want, 1, perSecond);
    this.#assertOpen();
    // A connection first, timed: the wait for one (a busy pool) comes before the bucket hands anything out, so the
    // limiter counts its tokens' expiry from when the statement went out (queuedMs), not from the call.
    const calledAt = performance.now();
    const client = await this.#pool.connect();
    const queuedMs = performance.now() - calledAt;
    let row: { granted: number; tokens: number };
    try {
      row = (await client.query<typeof row>(named(LEASE_RATE_TOKENS_SQL, [accountId, perSecond, want]))).rows[0]!;
    } catch (error) {
      // As pool.query does: a connection whose statement failed is not reused.
      client.release(error instanceof Error ? error : true);
      throw error;
    }
    client.release();
    // Whole tokens only are taken: the next one is there once the fraction left has refilled to 1.
    const nextTokenInMs = row.tokens >= 1 ? 0 : Math.ceil(((1 - row.tokens) * 1000) / perSecond);
    return { granted: row.granted, nextTokenInMs, queuedMs };
  }

  // ---------------------------------------------------------------- outcomes

  async emitOutcome(outcome: DeliveryOutcome): Promise<void> {
    this.#assertOpen();
    const frames = notifyFrames(outcome);
    return new Promise<void>((resolve, reject) => {
      this.#outbox.push({ frames, resolve, reject });
      if (!this.#emitting) void this.#sendOutbox();
    });
  }

  /**
   * Sends the outcomes waiting in the outbox, one NOTIFY statement at a time: the first goes at once, and those
   * emitted while a statement is on its way go together in the next one (one round trip for many outcomes under
   * load). One statement is one transaction: an outcome's chunks are delivered together, or not at all, and
   * each emitOutcome resolves once its statement committed.
   */
  async #sendOutbox(): Promise<void> {
    this.#emitting = true;
    try {
      while (this.#outbox.length > 0) {
        const batch = this.#outbox.splice(0, OUTBOX_BATCH);
        try {
          await this.#run('SELECT pg_notify($1, f) FROM unnest($2::text[]) AS f', [
            this.#options.channel,
            batch.flatMap((entry) => entry.frames),
          ]);
          for (const entry of batch) entry.resolve();
        } catch (error) {
          for (const entry of batch) entry.reject(error);
        }
      }
    } finally {
      this.#emitting = false;
    }
  }

  onOutcome(listener: (outcome: DeliveryOutcome) => void): () => void {
    return this.#listeners.add(listener);
  }

  #receive(payload: string): void {
    const [emitId, index, count] = payload.split(' ', 3);
    if (emitId === undefined || index === undefined || count === undefined) return;
    const data = payload.slice(emitId.length + index.length + count.length + 3);
    const total = Number(count);
    let json: string;
    if (total === 1) json = data;
    else {
      const entry = this.#assembling.get(emitId) ?? { parts: new Array<string>(total).fill(''), received: 0 };
      this.#assembling.set(emitId, entry);
      entry.parts[Number(index)] = data;
      entry.received++;
      if (entry.received < total) return;
      this.#assembling.delete(emitId);
      json = entry.parts.join('');
    }
    let outcome: DeliveryOutcome;
    try {
      outcome = JSON.parse(json) as DeliveryOutcome;
    } catch {
      return; // not one of ours: another program NOTIFYing on the channel
    }
    this.#listeners.dispatch(outcome);
  }
}

/**
 * An outcome as NOTIFY payloads: `<emit id> <index> <count> <chunk>`, each under the NOTIFY size limit; the
 * listener puts the chunks of one emit id back together.
 */
function notifyFrames(outcome: DeliveryOutcome): string[] {
  const json = JSON.stringify(outcome);
  const emitId = randomBytes(8).toString('hex');
  const chunks: string[] = [];
  for (let start = 0; start < json.length;) {
    let end = Math.min(start + CHUNK_UNITS, json.length);
    // Never split a surrogate pair across two chunks.
    const last = json.charCodeAt(end - 1);
    if (end < json.length && last >= 0xd800 && last <= 0xdbff) end--;
    chunks.push(json.slice(start, end));
    start = end;
  }
  return chunks.map((chunk, i) => `${emitId} ${i} ${chunks.length} ${chunk}`);
}

/** How {@link migratePostgres} waits for the table locks its DDL needs. */
export interface MigrationLockOptions {
  /** Longest wait for one lock (`lock_timeout`, ms). Default 2,000. */
  lockTimeoutMs?: number;
  /** Tries of the pending migrations before giving up. Default 10. */
  attempts?: number;
  /** Pause between tries (ms). Default 1,000. */
  retryDelayMs?: number;
}

/**
 * SQLSTATEs after which a migration is tried again: a lock wait that reached `lock_timeout`, and a deadlock (a
 * transaction of the service that wrote `webhooks` then `deliveries` while a migration locked them the other way).
 */
const MIGRATION_RETRY_SQLSTATES = new Set(['55P03', '40P01']);

/**
 * Applies the migrations the database lacks, after undoing any withdrawn one it records (see {@link planMigrations}),
 * each step in a transaction of its own under the migration advisory lock (a version is all or nothing; processes
 * starting together queue on the lock, and each version is applied once).
 *
 * A migration's DDL waits for its table's lock at most `lockTimeoutMs` at a time, and its transaction is tried again
 * after a pause: while a DDL statement waits for a lock, PostgreSQL queues every later conflicting request behind
 * it, so a migration stuck behind one long transaction (a report, a process of the previous version in the middle
 * of a statement) would stop every write to the table for as long. One transaction per version keeps the locks an
 * applied version took from being held while the next one waits. After `attempts` tries the start fails with a
 * `conflict` error naming the migration; the versions before it stay applied.
 */
export async function migratePostgres(
  client: pg.ClientBase,
  migrations: readonly Migration[],
  options: MigrationLockOptions = {},
  withdrawn: readonly WithdrawnMigration[] = POSTGRES_WITHDRAWN_MIGRATIONS,
): Promise<void> {
  const lockTimeoutMs = assertInt('lockTimeoutMs', options.lockTimeoutMs ?? 2_000, 1, 2_147_483_647);
  const attempts = assertInt('attempts', options.attempts ?? 10, 1);
  const retryDelayMs = assertInt('retryDelayMs', options.retryDelayMs ?? 1_000, 0);
  const sorted = [...migrations].sort((a, b) => a.version - b.version);
  for (;;) {
    let applied: Migration | null = null;
    for (let attempt = 1; ; attempt++) {
      const waiting: { migration: Migration | null } = { migration: null };
      try {
        applied = await migrateNext(client, sorted, withdrawn, lockTimeoutMs, waiting);
        break;
      } catch (error) {
        const state = sqlState(error);
        if (state === undefined || !MIGRATION_RETRY_SQLSTATES.has(state) || waiting.migration === null) throw error;
        if (attempt >= attempts) {
          const { version, name } = waiting.migration;
          throw new StoreError(
            'conflict',
            `migration ${version} (${name}) could not lock its table in ${attempts} tries of ${lockTimeoutMs} ms: ` +
              'another session holds a conflicting lock on it (see pg_locks); it was not applied, start again',
            { cause: error },
          );
        }
      }
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs));
    }
    if (applied === null) return;
  }
}

/**
 * Takes one step, in one transaction: undoes the latest withdrawn migration the database records, else applies the
 * first of this build's migrations it lacks (see {@link planMigrations}); null when there is nothing left to do.
 */
async function migrateNext(
  client: pg.ClientBase,
  sorted: readonly Migration[],
  withdrawn: readonly WithdrawnMigration[],
  lockTimeoutMs: number,
  waiting: { migration: Migration | null },
): Promise<Migration | null> {
  await client.query('BEGIN');
  try {
    // Held until COMMIT: a second process starting now waits here, then sees the new version.
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY.toString()]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
    const { rows } = await client.query<MigrationRecord>(
      'SELECT version, name FROM schema_migrations ORDER BY version',
    );
    const plan = planMigrations(rows, sorted, withdrawn);
    const undo = plan.undo[0];
    const next: Migration | null =
      undo !== undefined
        ? { version: undo.version, name: `undo of withdrawn migration '${undo.name}'`, sql: undo.undo }
        : (plan.apply[0] ?? null);
    if (next !== null) {
      // After the advisory lock, which processes starting together wait on for as long as the migrations take.
      await client.query(`SET LOCAL lock_timeout = ${lockTimeoutMs}`);
      waiting.migration = next;
      await client.query(next.sql);
      if (undo !== undefined) await client.query('DELETE FROM schema_migrations WHERE version = $1', [undo.version]);
      else {
        await client.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [next.version, next.name]);
      }
    }
    await client.query('COMMIT');
    return next;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}
