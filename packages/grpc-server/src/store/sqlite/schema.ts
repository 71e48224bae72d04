/**
 * Versioned migrations of the SQLite engine, applied in order in one transaction at open and recorded
 * in `schema_migrations`. A migration is never edited once released: add a new version instead.
 *
 * Sized for 1,000,000 messages and 100,000 contacts: every query of the hot path (publish, claim,
 * contactMessages, sweep) is an index seek or an ordered index range, never a scan of a table.
 * Messages and deliveries name their account by a small integer key (`accounts`), not by the account
 * id: index entries stay short, which is most of the cost of inserting into them.
 */
import type { Migration, WithdrawnMigration } from '../shared.js';

export const SQLITE_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
CREATE TABLE accounts (
  account_key INTEGER PRIMARY KEY,
  account_id  TEXT NOT NULL UNIQUE
);

CREATE TABLE webhooks (
  account_id     TEXT PRIMARY KEY,
  account_key    INTEGER NOT NULL UNIQUE REFERENCES accounts (account_key),
  config         TEXT NOT NULL,    -- the whole WebhookConfig as JSON, secrets included
  enabled        INTEGER NOT NULL, -- copy of config.enabled, for claims
  message_ttl_ms INTEGER NOT NULL,
  created_at     INTEGER NOT NULL,
  updated_at     INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE messages (
  account_key          INTEGER NOT NULL,
  id                   TEXT NOT NULL,
  external_customer_id TEXT NOT NULL,
  created_date         INTEGER NOT NULL,
  expires_at           INTEGER NOT NULL,
  title                TEXT NOT NULL,
  content              TEXT NOT NULL,
  image                TEXT,
  link                 TEXT,
  category             TEXT NOT NULL,
  custom_data          TEXT,
  PRIMARY KEY (account_key, id)
);
-- contactMessages: newest first (createdDate desc, id asc) without a sort. @see SPEC §4
CREATE INDEX messages_contact ON messages (account_key, external_customer_id, created_date DESC, id);
CREATE INDEX messages_expiry ON messages (expires_at);

CREATE TABLE deliveries (
  seq                  INTEGER PRIMARY KEY, -- creation order: cursors and "the contact's newest"
  id                   TEXT NOT NULL UNIQUE,
  account_key          INTEGER NOT NULL,
  external_customer_id TEXT NOT NULL,
  state                TEXT NOT NULL
    CHECK (state IN ('pending', 'in_flight', 'retrying', 'delivered', 'failed', 'superseded')),
  created_at           INTEGER NOT NULL,
  updated_at           INTEGER NOT NULL,
  next_attempt_at      INTEGER,            -- due time; the lease end while in_flight; NULL when terminal
  lease_owner          TEXT,
  attempt_count        INTEGER NOT NULL DEFAULT 0,
  first_attempt_at     INTEGER,
  body                 BLOB,               -- frozen at the first attempt (ARCHITECTURE §1)
  message_ids          TEXT,               -- JSON array, frozen with the body
  superseded_by        TEXT,
  last_error           TEXT
);
-- ARCHITECTURE §2 as constraints: one pending and one in-flight delivery per contact at most.
CREATE UNIQUE INDEX deliveries_one_pending ON deliveries (account_key, external_customer_id) WHERE state = 'pending';
CREATE UNIQUE INDEX deliveries_one_in_flight ON deliveries (account_key, external_customer_id) WHERE state = 'in_flight';
CREATE INDEX deliveries_retrying_contact ON deliveries (account_key, external_customer_id) WHERE state = 'retrying';
-- The two lanes, per account in due order: a claim reads O(batch) rows.
CREATE INDEX deliveries_lane_first ON deliveries (account_key, next_attempt_at, seq) WHERE state = 'pending';
CREATE INDEX deliveries_lane_retry ON deliveries (account_key, next_attempt_at, seq) WHERE state = 'retrying';
-- Expired leases, oldest due, counts by state.
CREATE INDEX deliveries_state_due ON deliveries (state, next_attempt_at);
-- "A newer delivery of the contact exists", and listing by contact / by account.
CREATE INDEX deliveries_contact ON deliveries (account_key, external_customer_id, seq);
CREATE INDEX deliveries_account ON deliveries (account_key, seq);
-- Sweep of old terminal deliveries.
CREATE INDEX deliveries_terminal ON deliveries (state, updated_at) WHERE state IN ('delivered', 'failed', 'superseded');

CREATE TABLE attempts (
  delivery_id     TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
  attempt_no      INTEGER NOT NULL,
  started_at      INTEGER NOT NULL,
  duration_ms     INTEGER NOT NULL,
  status_code     INTEGER,
  error_kind      TEXT,
  verdict         TEXT NOT NULL CHECK (verdict IN ('delivered', 'retry', 'failed')),
  next_attempt_at INTEGER,
  PRIMARY KEY (delivery_id, attempt_no)
) WITHOUT ROWID;
`,
  },
  {
    version: 2,
    name: 'delivery traceparent',
    // The W3C traceparent of the RPC that created (or replayed) the delivery: its attempts' spans are
    // children of it, however much later and in whichever process they run. NULL when tracing is off. @see issue 8
    sql: `ALTER TABLE deliveries ADD COLUMN traceparent TEXT;`,
  },
  {
    version: 3,
    name: 'lease index only over in-flight deliveries',
    // deliveries_state_due indexed every row by (state, next_attempt_at), so each state change of every
    // delivery (created, claimed, recorded) moved its entry: more pages per commit on the hottest path
    // (issue 6 profile). Its only hot reader is the reap of expired leases, which needs in-flight rows alone;
    // the counts by state read the per-state partial indexes instead.
    sql: `
DROP INDEX deliveries_state_due;
CREATE INDEX deliveries_lease_due ON deliveries (next_attempt_at) WHERE state = 'in_flight';
`,
  },
  {
    version: 4,
    name: 'message ids found by a 52-bit key',
    // Each message went into the primary key (account_key, id) at a random place (ids are random UUIDs): most of
    // the pages an ingest commit wrote. An index of a 52-bit integer key of the id (messageIdKey) holds the same
    // entries in about a third of the space. publish looks the id up by its key and compares the account and the
    // whole id on the rows found (keys may collide), then inserts: ids stay unique per account, as SQLite has one
    // writer (nothing can come between the lookup and the insert). Scenario 1 (ingest), three runs in turn:
    // 34,978 / 34,668 / 30,967 -> 37,349 / 38,717 / 39,160 messages/s (issue 6, bench/README "Fifth round").
    // The table is rebuilt once; `app_inbox_id_key` is registered on the store's connection.
    sql: `
CREATE TABLE messages_v4 (
  account_key          INTEGER NOT NULL,
  id                   TEXT NOT NULL,
  id_key               INTEGER NOT NULL,
  external_customer_id TEXT NOT NULL,
  created_date         INTEGER NOT NULL,
  expires_at           INTEGER NOT NULL,
  title                TEXT NOT NULL,
  content              TEXT NOT NULL,
  image                TEXT,
  link                 TEXT,
  category             TEXT NOT NULL,
  custom_data          TEXT
);
INSERT INTO messages_v4 (account_key, id, id_key, external_customer_id, created_date, expires_at, title, content,
  image, link, category, custom_data)
  SELECT account_key, id, app_inbox_id_key(id), external_customer_id, created_date, expires_at, title, content,
    image, link, category, custom_data FROM messages ORDER BY rowid;
DROP TABLE messages;
ALTER TABLE messages_v4 RENAME TO messages;
CREATE INDEX messages_id_key ON messages (id_key);
CREATE INDEX messages_contact ON messages (account_key, external_customer_id, created_date DESC, id);
CREATE INDEX messages_expiry ON messages (expires_at);
`,
  },
];

/**
 * Migrations that builds on main released and later commits reverted (see {@link WithdrawnMigration}): a database one
 * of those builds opened records them, and the start undoes them. Each `undo` leaves the schema of the version before.
 */
export const SQLITE_WITHDRAWN_MIGRATIONS: readonly WithdrawnMigration[] = [
  {
    // 4038f6a, reverted by db2007b: the frozen body and message ids had moved to delivery_bodies, keyed by seq, and
    // the first attempt's time was the freeze's until an attempt was recorded.
    version: 5,
    name: 'frozen bodies in a table of their own',
    undo: `
ALTER TABLE deliveries ADD COLUMN body BLOB;
ALTER TABLE deliveries ADD COLUMN message_ids TEXT;
UPDATE deliveries SET body = b.body, message_ids = b.message_ids,
  first_attempt_at = COALESCE(deliveries.first_attempt_at, b.frozen_at)
  FROM delivery_bodies b WHERE b.seq = deliveries.seq;
DROP TABLE delivery_bodies;
`,
  },
  {
    // 1f88e30, reverted by 3616cd5: a count of the leases taken back since the last attempt.
    version: 5,
    name: 'lease losses of a delivery',
    undo: `ALTER TABLE deliveries DROP COLUMN lease_losses;`,
  },
];

/**
 * The 52-bit key of a message id (migration 4): two 32-bit FNV-1a lanes over its UTF-16 units, 26 bits of each.
 * Any string works; for random UUIDs it spreads like the id itself. A safe integer, so SQLite stores it as an
 * INTEGER and JavaScript reads it back exactly.
 */
export function messageIdKey(id: string): number {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ id.length;
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    a = Math.imul(a ^ c, 16777619);
    b = Math.imul(b ^ c, 2246822519);
  }
  return (a >>> 6) * 67_108_864 + (b >>> 6);
}
