/**
 * Versioned migrations of the PostgreSQL engine. They run at start inside one transaction holding
 * `pg_advisory_xact_lock(MIGRATION_LOCK_KEY)`, so processes starting together apply each version
 * exactly once (the others wait, then find nothing left to do). Never edit a released migration.
 *
 * Keys are `COLLATE "C"`: byte order, so `id` ties sort like the core's code-unit order for the ASCII
 * ids the service uses, and index comparisons are cheaper than with a linguistic collation.
 */
import type { Migration, WithdrawnMigration } from '../shared.js';

/** Advisory lock key of the migrations: any constant shared by every process of the service. */
export const MIGRATION_LOCK_KEY = 0x61707069_6e626f78n; // 'appinbox'

export const POSTGRES_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
CREATE TABLE webhooks (
  account_id     text COLLATE "C" PRIMARY KEY,
  config         text NOT NULL,    -- the whole WebhookConfig as JSON, secrets included
  enabled        boolean NOT NULL, -- copy of config.enabled, for claims
  message_ttl_ms bigint NOT NULL,
  created_at     bigint NOT NULL,
  updated_at     bigint NOT NULL
);

CREATE TABLE messages (
  account_id           text COLLATE "C" NOT NULL,
  id                   text COLLATE "C" NOT NULL,
  external_customer_id text COLLATE "C" NOT NULL,
  created_date         bigint NOT NULL,
  expires_at           bigint NOT NULL,
  title                text NOT NULL,
  content              text NOT NULL,
  image                text,
  link                 text,
  category             text NOT NULL,
  custom_data          text,
  PRIMARY KEY (account_id, id)
);
CREATE INDEX messages_contact ON messages (account_id, external_customer_id, created_date DESC, id);
CREATE INDEX messages_expiry ON messages (expires_at);

CREATE TABLE deliveries (
  seq                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id                   text COLLATE "C" NOT NULL UNIQUE,
  account_id           text COLLATE "C" NOT NULL,
  external_customer_id text COLLATE "C" NOT NULL,
  state                text NOT NULL
    CHECK (state IN ('pending', 'in_flight', 'retrying', 'delivered', 'failed', 'superseded')),
  created_at           bigint NOT NULL,
  updated_at           bigint NOT NULL,
  next_attempt_at      bigint,          -- due time; the lease end while in_flight; NULL when terminal
  lease_owner          text,
  attempt_count        integer NOT NULL DEFAULT 0,
  first_attempt_at     bigint,
  body                 bytea,           -- frozen at the first attempt (ARCHITECTURE §1)
  message_ids          text,            -- JSON array, frozen with the body
  superseded_by        text,
  last_error           text
);
-- ARCHITECTURE §2 as constraints, across every process: one pending and one in-flight delivery per contact.
CREATE UNIQUE INDEX deliveries_one_pending ON deliveries (account_id, external_customer_id) WHERE state = 'pending';
CREATE UNIQUE INDEX deliveries_one_in_flight ON deliveries (account_id, external_customer_id) WHERE state = 'in_flight';
CREATE INDEX deliveries_retrying_contact ON deliveries (account_id, external_customer_id) WHERE state = 'retrying';
CREATE INDEX deliveries_lane_first ON deliveries (account_id, next_attempt_at, seq) WHERE state = 'pending';
CREATE INDEX deliveries_lane_retry ON deliveries (account_id, next_attempt_at, seq) WHERE state = 'retrying';
CREATE INDEX deliveries_state_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_contact ON deliveries (account_id, external_customer_id, seq);
CREATE INDEX deliveries_account ON deliveries (account_id, seq);
CREATE INDEX deliveries_terminal ON deliveries (state, updated_at) WHERE state IN ('delivered', 'failed', 'superseded');

CREATE TABLE attempts (
  delivery_id     text COLLATE "C" NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
  attempt_no      integer NOT NULL,
  started_at      bigint NOT NULL,
  duration_ms     bigint NOT NULL,
  status_code     integer,
  error_kind      text,
  verdict         text NOT NULL CHECK (verdict IN ('delivered', 'retry', 'failed')),
  next_attempt_at bigint,
  PRIMARY KEY (delivery_id, attempt_no)
);
`,
  },
  {
    version: 2,
    name: 'delivery traceparent',
    // The W3C traceparent of the RPC that created (or replayed) the delivery: its attempts' spans are
    // children of it, however much later and in whichever process they run. NULL when tracing is off. @see issue 8
    sql: `ALTER TABLE deliveries ADD COLUMN traceparent text;`,
  },
  {
    version: 3,
    name: 'room for in-place updates of deliveries',
    // A publish to a contact that already has a pending delivery locks it by an update that changes no indexed
    // column (see PUBLISH_SQL). With full pages the new row version went to another page, with a new entry in every
    // index of the table; with room left on each page most stay on their page as heap-only tuples (HOT), no index
    // touched. Ingest of 1,000-message publishes to contacts with pending deliveries: about 35,000 -> 46,000
    // messages/s (issue 6, bench/README "Fifth round"). Pages written before this migration stay as full as they
    // are; new ones keep 30% free.
    sql: `ALTER TABLE deliveries SET (fillfactor = 70);`,
  },
  {
    version: 4,
    name: 'lease index only over in-flight deliveries',
    // deliveries_state_due indexed every row by (state, next_attempt_at), and the planner used it where it was not
    // meant to: with statistics taken when nothing was in flight, a claim's check that a candidate's contact is not in
    // flight scanned every in-flight delivery (and the entries left by those that moved on) for each candidate, and
    // the oldest due delivery of an account was looked for by walking every account's pending deliveries (issue 6,
    // bench/README "Seventh round"). Its readers: the expired-lease check and reap, which need in-flight rows alone,
    // as SQLite's migration 3 did. `next_attempt_at IS NOT NULL` (always true of an in-flight row, and implied by the
    // reap's `next_attempt_at <= $1`) keeps this index out of the claim's per-contact check, which then has one
    // index to answer it: deliveries_one_in_flight, by both its columns. Terminal rows are no longer indexed by
    // state and due time at all.
    sql: `
DROP INDEX deliveries_state_due;
CREATE INDEX deliveries_lease_due ON deliveries (next_attempt_at) WHERE state = 'in_flight' AND next_attempt_at IS NOT NULL;
`,
  },
  {
    version: 5,
    name: 'a lease owner exactly while in flight',
    // Every statement already kept this (a claim sets the owner with the state, every way out of in_flight clears it);
    // now it is a constraint, because the statements that name a claimed row rely on it: they check the owner and not
    // the state, which would let the planner read a partial index of in-flight rows instead of the row's key (see
    // postgres-store.ts). Checked once over the table here.
    sql: `
ALTER TABLE deliveries ADD CONSTRAINT deliveries_leased_in_flight CHECK ((state = 'in_flight') = (lease_owner IS NOT NULL));
`,
  },
  {
    version: 6,
    name: 'enabled webhooks by index',
    // The store's sessions plan sequential scans only where no index serves (enable_seqscan = off, see
    // postgres-store.ts); the claim's walk over the enabled webhooks had none, so its plan carried the planner's
    // penalty for a forced sequential scan (10^10), and every cost compared above that node lost its meaning. With
    // this index no statement of the store needs a sequential scan.
    sql: `CREATE INDEX webhooks_enabled ON webhooks (account_id) WHERE enabled;`,
  },
  {
    version: 7,
    name: 'shared rate-limit buckets',
    // One token bucket per rate-limited webhook, shared by every process on the database, so that
    // `rateLimitPerSecond` holds for the service and not for each process (see leaseRateTokens in postgres-store.ts).
    // Times are the database's clock: processes whose clocks differ still refill one bucket alike. `granted` is what
    // the last lease took, for that lease's RETURNING (which sees only the new row). A row is deleted with its
    // webhook; one left behind (a lease racing the delete) is harmless: it is a full bucket a second later, as a new
    // one starts. Not the withdrawn migration 7 ('lease losses of a delivery'), which a start undoes first.
    sql: `
CREATE TABLE rate_buckets (
  account_id  text COLLATE "C" PRIMARY KEY,
  tokens      double precision NOT NULL,
  granted     integer NOT NULL,
  refilled_at timestamptz NOT NULL
);
`,
  },
];

/**
 * Migrations that builds on main released and later commits reverted (see {@link WithdrawnMigration}): a database one
 * of those builds opened records them, and the start undoes them (each in a transaction of its own, under the
 * migration lock). Each `undo` leaves the schema of the version before.
 */
export const POSTGRES_WITHDRAWN_MIGRATIONS: readonly WithdrawnMigration[] = [
  {
    // cb837a8, reverted by c5c9179: the frozen body and message ids had moved to delivery_bodies, and the first
    // attempt's time was the freeze's until an attempt was recorded. This build's migration 4 is then applied.
    version: 4,
    name: 'frozen bodies in a table of their own',
    undo: `
ALTER TABLE deliveries ADD COLUMN body bytea, ADD COLUMN message_ids text;
UPDATE deliveries d SET body = b.body, message_ids = b.message_ids,
  first_attempt_at = COALESCE(d.first_attempt_at, b.frozen_at)
  FROM delivery_bodies b WHERE b.delivery_id = d.id;
DROP TABLE delivery_bodies;
`,
  },
  {
    // 1f88e30, reverted by 3616cd5: a count of the leases taken back since the last attempt.
    version: 7,
    name: 'lease losses of a delivery',
    undo: `ALTER TABLE deliveries DROP COLUMN lease_losses;`,
  },
];
