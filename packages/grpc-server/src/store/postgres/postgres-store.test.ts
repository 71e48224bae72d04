import { randomUUID } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import type { StoredMessage } from '@app-inbox/core';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { deliveredOutcome, storeConformanceSuite } from '../conformance.js';
import { openStore } from '../index.js';
import type { AttemptResult, ClaimedDelivery, Delivery, DeliveryOutcome, Lane } from '../types.js';
import {
  CLAIM_MESSAGES_SQL,
  CLAIM_SQL,
  FREEZE_SQL,
  migratePostgres,
  openPostgresStore,
  PostgresStore,
  RECORD_FINAL_SQL,
  SESSION_SETTINGS,
  STATS_OLDEST_DUE_SQL,
  SWEEP_SQL,
} from './postgres-store.js';
import { POSTGRES_MIGRATIONS } from './schema.js';
import { createTestDatabase } from './test-db.js';

// Fails (does not skip) without APP_INBOX_TEST_PG_URL: see createTestDatabase.
let db: Awaited<ReturnType<typeof createTestDatabase>>;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

async function sql(url: string, text: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(text, params);
  } finally {
    await client.end();
  }
}

storeConformanceSuite('postgres', async () => {
  const store = await openPostgresStore({ connectionString: db.url, poolSize: 4 });
  // A clean database per test, one CREATE DATABASE per file.
  await sql(db.url, 'TRUNCATE webhooks, messages, deliveries, attempts RESTART IDENTITY');
  return { store, cleanup: () => store.close() };
});

/** Polls `check` every 10 ms until it holds. */
async function until(check: () => Promise<boolean>): Promise<void> {
  while (!(await check())) await new Promise((resolve) => setTimeout(resolve, 10));
}

/** True when a session running a statement that contains `statement` waits for a lock (as `watcher` sees it). */
async function waiting(watcher: pg.Client, statement: string): Promise<boolean> {
  // The watcher may be inside a transaction, where pg_stat_activity is read once and kept: read it afresh.
  await watcher.query('SELECT pg_stat_clear_snapshot()');
  const { rows } = await watcher.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`,
    [`%${statement}%`],
  );
  return rows[0]!.n > 0;
}

/** Both plans a named statement may run: planned for the values (its first executions) and generic. */
const PLAN_MODES = ['force_custom_plan', 'force_generic_plan'] as const;

interface PlanNode {
  type: string;
  relation: string | undefined;
  /** The index an index scan node reads (bitmap index scans have no relation, only this). */
  index: string | undefined;
  /** The planner's estimated total cost of the node. */
  totalCost: number;
  /** How the node feeds its parent ('Outer', 'Inner', 'Member', 'InitPlan', ...); undefined at the top. */
  parentRelationship: string | undefined;
  /** Rows the node read and its filter dropped, over all its loops (`analyze` only; 0 otherwise). */
  removedByFilter: number;
  /** Rows the node read, kept or dropped by its filter, over all its loops (`analyze` only; 0 otherwise). */
  rowsRead: number;
  /** Pairs of rows a join node formed and its join filter dropped, over all its loops (`analyze` only). */
  removedByJoinFilter: number;
  children: PlanNode[];
}

/** The nodes of an EXPLAIN (FORMAT JSON) result, depth first. */
function nodesOf(plan: pg.QueryResult): PlanNode[] {
  const nodes: PlanNode[] = [];
  const walk = (raw: Record<string, unknown>): PlanNode => {
    const loops = Number(raw['Actual Loops'] ?? 1);
    const node: PlanNode = {
      type: String(raw['Node Type']),
      relation: raw['Relation Name'] as string | undefined,
      index: raw['Index Name'] as string | undefined,
      totalCost: Number(raw['Total Cost']),
      parentRelationship: raw['Parent Relationship'] as string | undefined,
      removedByFilter: Number(raw['Rows Removed by Filter'] ?? 0) * loops,
      rowsRead: (Number(raw['Actual Rows'] ?? 0) + Number(raw['Rows Removed by Filter'] ?? 0)) * loops,
      removedByJoinFilter: Number(raw['Rows Removed by Join Filter'] ?? 0) * loops,
      children: [],
    };
    nodes.push(node);
    for (const child of (raw['Plans'] as Record<string, unknown>[] | undefined) ?? []) node.children.push(walk(child));
    return node;
  };
  walk((plan.rows[0] as { 'QUERY PLAN': Array<{ Plan: Record<string, unknown> }> })['QUERY PLAN'][0]!.Plan);
  return nodes;
}

/** The schema version a database was migrated to. */
async function schemaVersion(client: pg.Client): Promise<number> {
  return (await client.query<{ v: number }>('SELECT MAX(version) AS v FROM schema_migrations')).rows[0]!.v;
}

/** The planner settings the store's sessions run with (see the PostgresStore constructor). */
async function applySessionSettings(client: pg.Client): Promise<void> {
  for (const setting of SESSION_SETTINGS) await client.query(setting);
}

/**
 * The plan PostgreSQL would run for `text` with `params` in `mode` on a session of the store (its settings; without
 * them with `storeSettings` false), its nodes depth first. With `analyze` the statement runs (EXPLAIN ANALYZE), in a
 * transaction rolled back afterwards.
 */
async function planNodes(
  url: string,
  text: string,
  params: unknown[],
  mode: (typeof PLAN_MODES)[number],
  { analyze = false, storeSettings = true } = {},
): Promise<PlanNode[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    if (storeSettings) await applySessionSettings(client);
    await client.query('BEGIN');
    await client.query(`SET LOCAL plan_cache_mode = ${mode}`);
    const plan = await client.query(`EXPLAIN (${analyze ? 'ANALYZE, ' : ''}FORMAT JSON) ${text}`, params);
    await client.query('ROLLBACK');
    return nodesOf(plan);
  } finally {
    await client.end();
  }
}

/** Rows of deliveries read by a plan's scans (index entries too), and in-flight rows a join paired to drop. */
const deliveryRowsRead = (nodes: PlanNode[]): number =>
  nodes.reduce(
    (sum, n) =>
      sum + n.removedByJoinFilter + (n.relation === 'deliveries' || n.index?.startsWith('deliveries') ? n.rowsRead : 0),
    0,
  );

/** FREEZE_SQL's parameters: `ids` claimed by `owner` frozen at `at` with an empty list. */
const freezeParams = (ids: string[], owner: string, at: number): unknown[] => [
  ids,
  ids.map(() => owner),
  ids.map(() => Buffer.from('[]')),
  ids.map(() => '[]'),
  ids.map(() => at),
];

/** RECORD_FINAL_SQL's parameters: `ids` claimed by `owner` delivered by a first attempt (200) started at `at`. */
const recordFinalParams = (ids: string[], owner: string, at: number): unknown[] => [
  ids,
  ids.map(() => owner),
  ids.map(() => 1),
  ids.map(() => at),
  ids.map(() => 5),
  ids.map(() => 200),
  ids.map(() => null),
  ids.map(() => 'delivered'),
  ids.map(() => null),
  ids.map(() => 'delivered'),
  ids.map(() => null),
  ids.map(() => at + 5),
];

/**
 * Runs `fn` with a store on a database of its own (statistics and rows that no other test touches), then closes
 * the store and drops the database, whatever happened.
 */
async function withOwnDatabase(
  fn: (store: PostgresStore, url: string) => Promise<void>,
  { poolSize = 2 } = {},
): Promise<void> {
  const fresh = await createTestDatabase();
  let store: PostgresStore | null = null;
  try {
    store = await openPostgresStore({ connectionString: fresh.url, poolSize });
    await fn(store, fresh.url);
  } finally {
    await store?.close();
    await fresh.drop();
  }
}

describe('PostgresStore', () => {
  const T0 = 1_700_000_000_000;
  /** The webhook most tests give their account: lists of up to 10 messages, enabled. */
  const HOOK = { url: 'https://r.example/h', maxMessagesPerContact: 10, enabled: true } as const;
  /** A message for `contact`, published at T0 and available for a day. */
  const storedMessage = (contact: string, extra: Partial<StoredMessage> = {}): StoredMessage => ({
    externalCustomerId: contact,
    id: randomUUID(),
    createdDate: T0,
    title: 't',
    content: 'c',
    category: 'k',
    expiresAt: T0 + 86_400_000,
    ...extra,
  });
  /**
   * A fresh account (its webhook on) with one message for each of `contacts`, their deliveries claimed by `w`
   * at T0 in contact order, and a counter of the statements the store sends from then on whose text matches a
   * pattern (every query goes through its pool; call `restore` when done counting).
   */
  async function claimedFresh(store: PostgresStore, contacts: string[]) {
    const account = `acct-${randomUUID()}`;
    await store.upsertWebhook(account, HOOK, T0);
    await store.publish({ accountId: account, now: T0, messages: contacts.map((contact) => storedMessage(contact)) });
    const claimed = await store.claimDue({
      lane: 'first',
      limit: contacts.length,
      now: T0,
      leaseMs: 60_000,
      owner: 'w',
    });
    const query = vi.spyOn(pg.Pool.prototype, 'query');
    const statements = (pattern: RegExp) =>
      query.mock.calls.filter((args) => pattern.test(String((args[0] as { text?: string }).text))).length;
    return { account, claimed, statements, restore: () => query.mockRestore() };
  }
  /** A first attempt of `c` by owner `w`, answered 200 at T0 + 1. */
  const deliveredFirstTime = (c: ClaimedDelivery): AttemptResult => ({
    owner: 'w',
    attempt: {
      deliveryId: c.delivery.id,
      attemptNo: 1,
      startedAt: T0 + 1,
      durationMs: 2,
      statusCode: 200,
      errorKind: null,
      verdict: 'delivered',
      nextAttemptAt: null,
    },
    nextState: 'delivered',
  });
  /**
   * The newest delivery of `contact` as another store on the database sees it (after the one under test closed);
   * the account's unsent deliveries are then deleted, so that no other test claims them.
   */
  async function reopenedDelivery(account: string, contact: string): Promise<Delivery | undefined> {
    const reopened = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
    try {
      return (await reopened.listDeliveries({ accountId: account, externalCustomerId: contact }, 1, null))
        .deliveries[0];
    } finally {
      await reopened.deleteWebhook(account);
      await reopened.close();
    }
  }
  const outcomeBase = (): DeliveryOutcome => deliveredOutcome({ accountId: 'a', at: T0 });

  it('is what openStore opens for a postgres:// or postgresql:// URL', async () => {
    for (const url of [db.url, db.url.replace(/^postgres:/, 'postgresql:')]) {
      const store = await openStore(url, { postgres: { poolSize: 1 } });
      try {
        expect(store).toBeInstanceOf(PostgresStore);
        expect(await store.getWebhook('nobody')).toBeNull();
      } finally {
        await store.close();
      }
    }
  });

  it('applies each migration once when several processes start together', async () => {
    const fresh = await createTestDatabase();
    try {
      const stores = await Promise.all(
        Array.from({ length: 4 }, () => openPostgresStore({ connectionString: fresh.url, poolSize: 1 })),
      );
      await stores[0]!.migrate();
      await Promise.all(stores.map((s) => s.close()));
      const { rows } = await sql(fresh.url, 'SELECT version, name FROM schema_migrations ORDER BY version');
      expect(rows).toEqual(POSTGRES_MIGRATIONS.map((m) => ({ version: m.version, name: m.name })));
    } finally {
      await fresh.drop();
    }
  });

  it('refuses a database migrated by a newer version of the service', async () => {
    const fresh = await createTestDatabase();
    try {
      await (await openPostgresStore({ connectionString: fresh.url, poolSize: 1 })).close();
      await sql(fresh.url, "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')");
      await expect(openPostgresStore({ connectionString: fresh.url, poolSize: 1 })).rejects.toMatchObject({
        code: 'schema_too_new',
      });
    } finally {
      await fresh.drop();
    }
  });

  it('shows the outcomes of one process to another', async () => {
    const a = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
    const b = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
    try {
      const seen: DeliveryOutcome[] = [];
      b.onOutcome((o) => seen.push(o));
      const outcome: DeliveryOutcome = {
        deliveryId: randomUUID(),
        accountId: 'a',
        externalCustomerId: 'ü-contact',
        state: 'failed',
        messageIds: Array.from({ length: 300 }, () => randomUUID()),
        attemptNo: 3,
        statusCode: 400,
        errorKind: null,
        nextAttemptAt: null,
        at: T0,
      };
      await a.emitOutcome(outcome);
      const end = Date.now() + 5000;
      while (seen.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
      expect(seen).toEqual([outcome]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('sends outcomes emitted at once, in shared NOTIFY statements, each exactly once and intact', async () => {
    const a = await openPostgresStore({ connectionString: db.url, poolSize: 2 });
    const b = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
    try {
      const seen: DeliveryOutcome[] = [];
      b.onOutcome((o) => seen.push(o));
      const outcomes: DeliveryOutcome[] = Array.from({ length: 300 }, (_, i) => ({
        deliveryId: randomUUID(),
        accountId: 'a',
        externalCustomerId: `c${i}`,
        state: 'delivered',
        // Every tenth one needs several frames.
        messageIds: Array.from({ length: i % 10 === 0 ? 200 : 2 }, () => randomUUID()),
        attemptNo: 1,
        statusCode: 200,
        errorKind: null,
        nextAttemptAt: null,
        at: T0 + i,
      }));
      await Promise.all(outcomes.map((o) => a.emitOutcome(o)));
      const end = Date.now() + 5000;
      while (seen.length < outcomes.length && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 50)); // no duplicate arrives late
      const byId = (x: DeliveryOutcome, y: DeliveryOutcome): number => x.at - y.at;
      expect([...seen].sort(byId)).toEqual(outcomes);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
    await expect(a.emitOutcome({ ...outcomeBase(), state: 'failed' })).rejects.toMatchObject({ code: 'closed' });
  });

  it('publishes alike with the statement named (small calls) or parsed at each call, and checks the bound', async () => {
    const T = T0 + 1_000;
    const message = (contact: string, id: string) => ({
      externalCustomerId: contact,
      id,
      createdDate: T,
      title: 't',
      content: 'c',
      category: 'k',
      expiresAt: T + 86_400_000,
    });
    const ids = Array.from({ length: 80 }, () => randomUUID());
    // Small calls (named by default), a repeat (duplicates), then a call over the bound (always parsed).
    const calls = [
      [message('c1', ids[0]!), message('c1', ids[1]!), message('c2', ids[2]!)],
      [message('c1', ids[0]!), message('c2', ids[3]!)],
      ids.slice(4).map((id, i) => message(`c${i % 3}`, id)),
    ];
    const seen: unknown[] = [];
    for (const namedPublishMaxMessages of [64, 0]) {
      const store = await openPostgresStore({ connectionString: db.url, poolSize: 1, namedPublishMaxMessages });
      try {
        const account = `acct-${randomUUID()}`;
        const counts = [];
        for (let round = 0; round < 2; round++) {
          for (const messages of calls) {
            const r = await store.publish({ accountId: account, messages, now: T });
            counts.push([r.inserted, r.duplicates, r.deliveries.map((d) => d.externalCustomerId)]);
          }
        }
        const lists = await Promise.all(
          ['c0', 'c1', 'c2'].map(async (c) => (await store.contactMessages(account, c, T, 1000)).map((m) => m.id)),
        );
        seen.push({ counts, lists });
      } finally {
        await store.close();
      }
    }
    expect(seen[0]).toEqual(seen[1]);
    expect((seen[0] as { counts: unknown[] }).counts.slice(0, 3)).toEqual([
      [3, 0, ['c1', 'c2']],
      [1, 1, ['c2']],
      [76, 0, ['c0', 'c1', 'c2']],
    ]);
    expect(() => new PostgresStore({ connectionString: db.url, namedPublishMaxMessages: -1 })).toThrow(
      /namedPublishMaxMessages/,
    );
  });

  it('runs its sessions without JIT, and with sequential scans only where no index serves', async () => {
    // The server's defaults are on; the store's own connections must say off.
    expect((await sql(db.url, 'SHOW jit')).rows[0].jit).toBe('on');
    expect((await sql(db.url, 'SHOW enable_seqscan')).rows[0].enable_seqscan).toBe('on');
    let pool: pg.Pool | null = null;
    const query = vi.spyOn(pg.Pool.prototype, 'query');
    const store = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
    try {
      expect(await store.getWebhook('nobody')).toBeNull();
      pool = query.mock.contexts[0] as pg.Pool;
      query.mockRestore();
      // The pool's only connection, asked on its own session.
      const { rows } = await pool.query<{ jit: string }>('SHOW jit');
      expect(rows[0]!.jit).toBe('off');
      const seqScans = await pool.query<{ enable_seqscan: string }>('SHOW enable_seqscan');
      expect(seqScans.rows[0]!.enable_seqscan).toBe('off');
    } finally {
      query.mockRestore();
      await store.close();
    }
  });

  it('claims by index however small deliveries was when the connection first ran the claim', async () => {
    // A named statement run a few times on a connection gets a generic plan, kept until the table is analyzed again.
    // One made while deliveries held a handful of rows updated the claimed rows by a sequential scan of the whole
    // table in every claim (issue 6 bench: 13,374 pages read to claim 32, 8 ms a claim instead of 0.4).
    await withOwnDatabase(
      async (store, url) => {
        // The store's pool (one connection: the one that claims), as the `this` of its calls.
        const spy = vi.spyOn(pg.Pool.prototype, 'query');
        try {
          // No analyze by autovacuum in between: it would have the claim planned again for the grown table.
          await sql(url, 'ALTER TABLE deliveries SET (autovacuum_enabled = false)');
          const account = 'acct';
          await store.upsertWebhook(
            account,
            { url: 'https://r.example/h', maxMessagesPerContact: 1000, enabled: true },
            T0,
          );
          const claim = (limit: number) =>
            store.claimDue({ lane: 'first', limit, now: T0 + 1, leaseMs: 60_000, owner: 'w' });
          for (let i = 0; i < 8; i++) {
            await store.publish({ accountId: account, now: T0, messages: [storedMessage(`early${i}`)] });
            await claim(1);
          }
          for (let k = 0; k < 12; k++) {
            const messages = Array.from({ length: 1000 }, (_, i) => storedMessage(`c${k}-${i}`));
            await store.publish({ accountId: account, now: T0, messages });
          }
          /** Sequential scans of deliveries so far, the store connection's own flushed first. */
          const pool = spy.mock.contexts[0] as pg.Pool;
          const seqScans = async () => {
            await pool.query('SELECT pg_stat_force_next_flush()');
            await pool.query('SELECT 1'); // the flush happens as the connection goes idle after the line above
            const { rows } = await sql(
              url,
              "SELECT pg_stat_clear_snapshot(), seq_scan FROM pg_stat_user_tables WHERE relname = 'deliveries'",
            );
            return Number((rows[0] as { seq_scan: string }).seq_scan);
          };
          const before = await seqScans();
          expect(await claim(32)).toHaveLength(32);
          expect(await seqScans()).toBe(before);
          // The plan itself, as the connection runs it: generic, made when the table was small, run on 12,000 rows.
          const client = await pool.connect();
          try {
            const prepared = async () =>
              (
                await client.query<{ name: string; generic_plans: string }>(
                  'SELECT name, generic_plans FROM pg_prepared_statements WHERE statement = $1',
                  [CLAIM_SQL.first],
                )
              ).rows[0]!;
            const before = await prepared();
            expect(Number(before.generic_plans)).toBeGreaterThan(0);
            await client.query('BEGIN');
            // EXECUTE takes its values as literals, not bound parameters.
            const plan = await client.query(
              `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE ${before.name}(${T0 + 1}, '{}', 32, 32, 'w', ${T0 + 60_000}, ${Number.MAX_SAFE_INTEGER})`,
            );
            await client.query('ROLLBACK');
            // It ran the generic plan, made at 8 rows: 32 candidates read, checked and updated, the account's first
            // due delivery, not 12,000 rows.
            expect(Number((await prepared()).generic_plans)).toBe(Number(before.generic_plans) + 1);
            expect(deliveryRowsRead(nodesOf(plan))).toBeLessThanOrEqual(200);
          } finally {
            client.release();
          }
        } finally {
          spy.mockRestore();
        }
      },
      { poolSize: 1 },
    );
  });

  it('claims, publishes and records through index probes even with statistics taken when the table was small', async () => {
    // Autovacuum analyzes a minute or more after a burst: until then the planner believed `deliveries` held a
    // handful of rows and joined the claimed rows to it by a sequential scan of the whole table, in every claim.
    await withOwnDatabase(async (opened, url) => {
      const account = 'acct';
      await opened.upsertWebhook(
        account,
        { url: 'https://r.example/h', maxMessagesPerContact: 1000, enabled: true },
        T0,
      );
      const publish = (from: number, count: number, accountId = account) =>
        opened.publish({
          accountId,
          now: T0,
          messages: Array.from({ length: count }, (_, i) => storedMessage(`c${String(from + i).padStart(5, '0')}`)),
        });
      // Statistics taken when the table held deliveries of another account only: this account is new to the planner,
      // as an account that starts with a burst is until autovacuum's next analyze.
      await publish(0, 1000, 'other');
      await sql(url, 'ANALYZE deliveries');
      await publish(20, 6000);
      const ids = Array.from({ length: 8 }, () => randomUUID());
      const statements = {
        'claim first': [CLAIM_SQL.first, [T0 + 1, [], 32, 32, 'w', T0 + 60_000, Number.MAX_SAFE_INTEGER]],
        'claim retry': [CLAIM_SQL.retry, [T0 + 1, [], 32, 32, 'w', T0 + 60_000, Number.MAX_SAFE_INTEGER]],
        'record final': [RECORD_FINAL_SQL, recordFinalParams(ids, 'w', T0)],
        freeze: [FREEZE_SQL, freezeParams(ids, 'w', T0)],
      } as const;
      // Both plans a named statement may run: planned for the values (its first executions) and generic.
      for (const mode of PLAN_MODES) {
        for (const [lane, [text, params]] of Object.entries(statements)) {
          // The statement's own shape: without the sessions' `enable_seqscan = off`, which would hide a scan it invites.
          const scans = (await planNodes(url, text, [...params], mode, { storeSettings: false }))
            .filter((node) => node.type === 'Seq Scan' && node.relation !== 'webhooks')
            .map((node) => node.relation);
          expect({ mode, lane, scans }).toEqual({ mode, lane, scans: [] });
        }
      }
      // A publish of 50 messages to contacts that each have a pending delivery already (the usual case for a busy
      // contact), run for real in a transaction rolled back: it reads no pending delivery of another contact. The
      // lookup it had planned on the first-lane index read all 6,000 of them for each contact.
      const query = vi.spyOn(pg.Pool.prototype, 'query');
      await publish(100, 50);
      const captured = query.mock.calls
        .map((args) => args[0] as unknown as pg.QueryConfig)
        .find((config) => /^WITH hook AS/.test(String(config?.text)));
      query.mockRestore();
      for (const mode of PLAN_MODES) {
        const values = [...captured!.values!];
        values[1] = (values[1] as string[]).map(() => randomUUID()); // new message ids, so they are inserted again
        const nodes = await planNodes(url, captured!.text, values, mode, { analyze: true });
        const removed = nodes
          .filter((node) => node.relation === 'deliveries')
          .reduce((sum, node) => sum + node.removedByFilter, 0);
        expect({ mode, removed }).toEqual({ mode, removed: 0 });
      }
      // And the statement itself claims what is due, in order.
      const claimed = await opened.claimDue({ lane: 'first', limit: 5, now: T0 + 1, leaseMs: 60_000, owner: 'w' });
      expect(claimed.map((c) => c.delivery.externalCustomerId)).toEqual([
        'c00020',
        'c00021',
        'c00022',
        'c00023',
        'c00024',
      ]);
    });
  });

  it('claims, freezes and records by key, however many deliveries are in flight unseen by the planner', async () => {
    // Statistics taken when nothing was in flight (the planner then believes an in-flight check finds nothing
    // wherever it looks), then 500 in flight and 3,000 index entries left by deliveries that were in flight: the
    // check that a candidate's contact is not in flight read every in-flight delivery of the account for each
    // candidate (32,000 rows for 64), the expired-lease check read all 500, the oldest due delivery of each account
    // was found by walking the pending deliveries of every account, and the freeze and record of 10 claimed
    // deliveries read every entry of the in-flight lease index (a bitmap AND with their ids; issue 6, bench/README
    // "Seventh round").
    await withOwnDatabase(async (opened, url) => {
      await sql(url, 'ALTER TABLE deliveries SET (autovacuum_enabled = false)'); // keep the dead entries
      for (const account of ['acct', 'other']) {
        await opened.upsertWebhook(
          account,
          { url: 'https://r.example/h', maxMessagesPerContact: 1000, enabled: true },
          T0,
        );
      }
      const contacts = (prefix: string, count: number) =>
        Array.from({ length: count }, (_, i) => storedMessage(`${prefix}${String(i).padStart(5, '0')}`));
      await opened.publish({ accountId: 'other', now: T0, messages: contacts('o', 1000) });
      await sql(url, 'ANALYZE deliveries');
      for (let k = 0; k < 10; k++)
        await opened.publish({ accountId: 'acct', now: T0, messages: contacts(`c${k}-`, 1000) });
      const move = (count: number, from: string, to: string, due: number | null) =>
        sql(
          url,
          `UPDATE deliveries SET state = $3, lease_owner = CASE WHEN $3 = 'in_flight' THEN 'x' END, next_attempt_at = $4
           WHERE seq = ANY (ARRAY(SELECT seq FROM deliveries WHERE account_id = 'acct' AND state = $2 ORDER BY seq LIMIT $1))`,
          [count, from, to, due],
        );
      await move(3000, 'pending', 'in_flight', T0 + 60_000);
      await move(3000, 'in_flight', 'delivered', null);
      await move(500, 'pending', 'in_flight', T0 + 60_000);
      await move(500, 'pending', 'retrying', T0);
      const ids: string[] = [];
      for (const lane of ['first', 'retry'] as const) {
        for (const mode of PLAN_MODES) {
          const nodes = await planNodes(
            url,
            CLAIM_SQL[lane],
            [T0 + 1, [], 64, 64, 'w', T0 + 60_000, Number.MAX_SAFE_INTEGER],
            mode,
            {
              analyze: true,
            },
          );
          // Candidates (64 an account) read, their contacts checked, 64 updated, the first due of 2 accounts.
          expect(deliveryRowsRead(nodes), `${lane} lane, ${mode}`).toBeLessThanOrEqual(1000);
          // No node left to a forced sequential scan (its 10^10 penalty would swamp every cost above it).
          expect(nodes[0]!.totalCost, `${lane} lane, ${mode}`).toBeLessThan(1e9);
        }
        const claimed = await opened.claimDue({ lane, limit: 64, now: T0 + 1, leaseMs: 60_000, owner: 'w' });
        expect(claimed).toHaveLength(64);
        if (lane === 'first') ids.push(...claimed.slice(0, 10).map((c) => c.delivery.id));
      }
      const statements = {
        freeze: [FREEZE_SQL, freezeParams(ids, 'w', T0 + 2)],
        'record final': [RECORD_FINAL_SQL, recordFinalParams(ids, 'w', T0 + 2)],
      } as const;
      for (const [name, [text, params]] of Object.entries(statements)) {
        for (const mode of PLAN_MODES) {
          const nodes = await planNodes(url, text, [...params], mode, { analyze: true });
          // 10 rows found by id and updated (record: each paired with the 10 it names, about 150): the lease index
          // holds 3,628 entries.
          expect(deliveryRowsRead(nodes), `${name}, ${mode}`).toBeLessThanOrEqual(200);
        }
      }
      const stats = await opened.stats(T0 + 1);
      expect(stats).toEqual({
        byState: {
          pending: 10_000 - 4000 - 64 + 1000,
          in_flight: 628,
          retrying: 436,
          delivered: 3000,
          failed: 0,
          superseded: 0,
        },
        oldestDueAt: T0,
      });
      // Found account by account along the lanes' indexes: not by reading 6,936 pending deliveries; each account's
      // webhook (disabled ones are left out) probed by its key, not found by a forced sequential scan.
      for (const mode of PLAN_MODES) {
        const nodes = await planNodes(url, STATS_OLDEST_DUE_SQL, [T0 + 1], mode, { analyze: true });
        expect(deliveryRowsRead(nodes), `oldest due, ${mode}`).toBeLessThanOrEqual(20);
        expect(nodes[0]!.totalCost, `oldest due, ${mode}`).toBeLessThan(1e9);
      }
    });
  });

  it('claims from as many due accounts as it takes, not from every due account', async () => {
    // 200 accounts with work due: a claim of 32 read and locked 32 candidates in each (6,400 rows, 12 ms) to rank them
    // all and keep the first 32 (issue 6 review).
    await withOwnDatabase(async (opened, url) => {
      for (let a = 0; a < 200; a++) {
        const account = `a${String(a).padStart(3, '0')}`;
        await opened.upsertWebhook(account, HOOK, T0);
        const messages = Array.from({ length: 50 }, (_, i) => storedMessage(`c${String(i).padStart(2, '0')}`));
        await opened.publish({ accountId: account, now: T0 + a, messages });
      }
      await sql(url, 'ANALYZE');
      for (const mode of PLAN_MODES) {
        const nodes = await planNodes(
          url,
          CLAIM_SQL.first,
          [T0 + 1000, [], 20, 32, 'w', T0 + 60_000, Number.MAX_SAFE_INTEGER],
          mode,
          {
            analyze: true,
          },
        );
        // The first due delivery of each of the 200 accounts, about 41 candidates of the first 3, 32 updated.
        expect(deliveryRowsRead(nodes), mode).toBeLessThanOrEqual(400);
      }
      // A connection keeps the generic plan, also when claims exclude many accounts (saturated or paused): with the
      // excluded list known to the planner, 50 or more made every claim's custom plan look cheaper, planned each time.
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        await applySessionSettings(client);
        const excluded = Array.from({ length: 60 }, (_, i) => `a${100 + i}`);
        for (let run = 0; run < 8; run++) {
          await client.query('BEGIN');
          await client.query({
            name: 'claim_first',
            text: CLAIM_SQL.first,
            values: [T0 + 1000, excluded, 20, 1 + run, 'w', T0 + 60_000, Number.MAX_SAFE_INTEGER],
          });
          await client.query('ROLLBACK');
        }
        const { rows } = await client.query(
          "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'claim_first'",
        );
        expect(rows[0]).toEqual({ generic_plans: '3', custom_plans: '5' });
      } finally {
        await client.end();
      }
      // The same choice as ranking them all: the oldest account's 20 (its limit), then the next account's 12.
      const claimed = await opened.claimDue({
        lane: 'first',
        limit: 32,
        maxPerAccount: 20,
        now: T0 + 1000,
        leaseMs: 60_000,
        owner: 'w',
      });
      expect(claimed.map((c) => `${c.delivery.accountId}/${c.delivery.externalCustomerId}`)).toEqual([
        ...Array.from({ length: 20 }, (_, i) => `a000/c${String(i).padStart(2, '0')}`),
        ...Array.from({ length: 12 }, (_, i) => `a001/c${String(i).padStart(2, '0')}`),
      ]);
    });
  });

  it('refuses a lease owner outside in_flight and an in-flight delivery without one (migration 5)', async () => {
    // The statements that name a claimed row check its owner and not its state: they rely on this.
    await withOwnDatabase(async (opened, url) => {
      await opened.upsertWebhook('acct', HOOK, T0);
      const { deliveries } = await opened.publish({ accountId: 'acct', now: T0, messages: [storedMessage('c')] });
      const id = deliveries[0]!.deliveryId;
      const attempt = (set: string) =>
        sql(url, `UPDATE deliveries SET ${set} WHERE id = $1`, [id]).then(
          () => 'accepted',
          (error: { code?: string; constraint?: string }) => `${error.code} ${error.constraint}`,
        );
      expect(await attempt(`lease_owner = 'w'`)).toBe('23514 deliveries_leased_in_flight');
      expect(await attempt(`state = 'in_flight'`)).toBe('23514 deliveries_leased_in_flight');
      expect(await attempt(`state = 'in_flight', lease_owner = 'w'`)).toBe('accepted');
      expect(await attempt(`state = 'retrying'`)).toBe('23514 deliveries_leased_in_flight');
    });
  });

  describe('a migration behind a lock', () => {
    // Migration 6 builds an index on `webhooks` (it needs a SHARE lock); another session holds ROW EXCLUSIVE on that
    // table in an open transaction, as any transaction that wrote a webhook does until it ends.
    const indexing = POSTGRES_MIGRATIONS.find((m) => m.version === 6)!;
    const upTo = (version: number) => POSTGRES_MIGRATIONS.filter((m) => m.version <= version);

    /** A database at `from`, `webhooks` held by another session, and the session that will migrate it. */
    async function withHeldTable(
      from: number,
      fn: (held: {
        migrator: pg.Client;
        migratorPid: number;
        holder: pg.Client;
        writer: pg.Client;
        url: string;
        release: () => Promise<unknown>;
      }) => Promise<void>,
    ): Promise<void> {
      const fresh = await createTestDatabase();
      const [migrator, holder, writer] = [1, 2, 3].map(() => new pg.Client({ connectionString: fresh.url }));
      try {
        for (const c of [migrator!, holder!, writer!]) await c.connect();
        await migratePostgres(migrator!, upTo(from));
        const { rows } = await migrator!.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
        // Bounds the test should a migration ever wait for the lock without end again.
        await migrator!.query('SET statement_timeout = 10000');
        await holder!.query('BEGIN');
        await holder!.query('LOCK TABLE webhooks IN ROW EXCLUSIVE MODE');
        await fn({
          migrator: migrator!,
          migratorPid: rows[0]!.pid,
          holder: holder!,
          writer: writer!,
          url: fresh.url,
          release: () => holder!.query('COMMIT'),
        });
      } finally {
        for (const c of [migrator, holder, writer]) await c?.end().catch(() => undefined);
        await fresh.drop();
      }
    }

    /** Until the migrating session waits for a lock (bounded: 5 s). */
    async function waitingForLock(url: string, pid: number): Promise<void> {
      for (let i = 0; ; i++) {
        const { rows } = await sql(
          url,
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`,
          [pid],
        );
        if (rows[0].n === 1) return;
        if (i >= 500) throw new Error('the migration never waited for the table');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }

    it('does not hold up the writes queued behind it, and is applied once the lock is free', async () => {
      await withHeldTable(5, async ({ migrator, migratorPid, writer, url, release }) => {
        const migrating = migratePostgres(migrator, upTo(6), { lockTimeoutMs: 100, attempts: 1_000, retryDelayMs: 20 });
        migrating.catch(() => undefined); // awaited below; reported there if it fails
        await waitingForLock(url, migratorPid);
        // A write conflicts with the SHARE lock the migration waits for: without lock_timeout it would queue behind
        // that wait until the holder ends (here: never, so statement_timeout fails it after 5 s).
        await writer.query('SET statement_timeout = 5000');
        await writer.query('BEGIN');
        await writer.query('LOCK TABLE webhooks IN ROW EXCLUSIVE MODE');
        await writer.query('COMMIT');
        expect(await schemaVersion(writer)).toBe(5);
        // The holder's transaction ends: the next try applies the migration.
        await release();
        await migrating;
        expect(await schemaVersion(writer)).toBe(6);
      });
    });

    it('commits each version on its own: an applied one holds no lock while the next one waits', async () => {
      // From version 3: migrations 4 and 5 lock `deliveries` (an index dropped and built, a constraint checked).
      await withHeldTable(3, async ({ migrator, migratorPid, writer, url, release }) => {
        const migrating = migratePostgres(migrator, upTo(6), {
          lockTimeoutMs: 3_000,
          attempts: 1_000,
          retryDelayMs: 20,
        });
        migrating.catch(() => undefined);
        await waitingForLock(url, migratorPid);
        expect(await schemaVersion(writer)).toBe(5);
        // Within a third of one lock wait: with the versions in one transaction it waited for the whole try.
        await writer.query('SET statement_timeout = 1000');
        await writer.query('UPDATE deliveries SET updated_at = updated_at WHERE seq = -1');
        await release();
        await migrating;
        expect(await schemaVersion(writer)).toBe(6);
      });
    });

    it('is tried again after a deadlock with a transaction of the service', async () => {
      // A transaction that wrote `webhooks` and then writes `deliveries` (as deleteWebhook does), against a migration
      // that locks them the other way round (a made-up version 7: none of the real ones locks both).
      const both = {
        version: 7,
        name: 'deliveries then webhooks',
        sql: 'LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE; LOCK TABLE webhooks IN SHARE MODE;',
      };
      await withHeldTable(6, async ({ migrator, migratorPid, holder, writer, url, release }) => {
        // The migration is to be the one PostgreSQL ends: its deadlock check comes after 1 s of waiting (the default
        // deadlock_timeout), the holder's after 20 s (superusers only: elsewhere a slow machine may pick the holder).
        await holder.query('SET deadlock_timeout = 20000').catch(() => undefined);
        // Longer than deadlock_timeout (1 s): PostgreSQL finds the deadlock before the lock wait times out.
        const migrating = migratePostgres(migrator, [...upTo(6), both], {
          lockTimeoutMs: 8_000,
          attempts: 3,
          retryDelayMs: 20,
        });
        migrating.catch(() => undefined);
        await waitingForLock(url, migratorPid);
        // The holder now writes deliveries, which the waiting migration has locked: a deadlock. PostgreSQL ends the
        // migration's statement (it has waited longer), the holder's write goes through, and once it commits the
        // migration's next try is applied.
        await holder.query('UPDATE deliveries SET updated_at = updated_at WHERE seq = -1');
        await release();
        await migrating;
        expect(await schemaVersion(writer)).toBe(7);
      });
    });

    it('gives up after its tries with a conflict naming the migration, the versions before it applied', async () => {
      await withHeldTable(3, async ({ migrator, writer }) => {
        const failed = await migratePostgres(migrator, upTo(6), {
          lockTimeoutMs: 50,
          attempts: 3,
          retryDelayMs: 10,
        }).then(
          () => null,
          (error: unknown) => error,
        );
        expect(failed).toMatchObject({ name: 'StoreError', code: 'conflict' });
        expect((failed as Error).message).toMatch(
          new RegExp(`^migration 6 \\(${indexing.name}\\) could not lock its table in 3 tries of 50 ms`),
        );
        expect(await schemaVersion(writer)).toBe(5);
      });
    });
  });

  it('upgrades a database of version 3 holding deliveries in every state, then goes on with them', async () => {
    // Migrations 4 and 5 on rows left by a running service: the CHECK of 5 holds for them, and the claims, records
    // and counts that rely on both work on those rows.
    const fresh = await createTestDatabase();
    const client = new pg.Client({ connectionString: fresh.url });
    await client.connect();
    let store: PostgresStore | null = null;
    try {
      await migratePostgres(
        client,
        POSTGRES_MIGRATIONS.filter((m) => m.version <= 3),
      );
      const old = new PostgresStore({ connectionString: fresh.url, poolSize: 1 }); // not migrated further
      await old.upsertWebhook('acct', HOOK, T0);
      await old.publish({ accountId: 'acct', now: T0, messages: ['a', 'b', 'c', 'd'].map((c) => storedMessage(c)) });
      const claimed = await old.claimDue({ lane: 'first', limit: 3, now: T0 + 1, leaseMs: 60_000, owner: 'w' });
      const attempt = (claim: ClaimedDelivery, statusCode: number) => ({
        deliveryId: claim.delivery.id,
        attemptNo: 1,
        startedAt: T0 + 2,
        durationMs: 1,
        statusCode,
        errorKind: null,
        verdict: statusCode === 200 ? ('delivered' as const) : ('retry' as const),
        nextAttemptAt: statusCode === 200 ? null : T0 + 10,
      });
      await old.recordAttempt(claimed[0]!.delivery.id, {
        owner: 'w',
        attempt: attempt(claimed[0]!, 200),
        nextState: 'delivered',
      });
      await old.recordAttempt(claimed[1]!.delivery.id, {
        owner: 'w',
        attempt: attempt(claimed[1]!, 503),
        nextState: 'retrying',
      });
      await old.close();

      store = await openPostgresStore({ connectionString: fresh.url, poolSize: 2 });
      expect(await schemaVersion(client)).toBe(POSTGRES_MIGRATIONS.at(-1)!.version);
      expect(await store.stats(T0 + 10)).toEqual({
        byState: { pending: 1, in_flight: 1, retrying: 1, delivered: 1, failed: 0, superseded: 0 },
        oldestDueAt: T0,
      });
      // The delivery claimed before the upgrade is recorded by its owner; the pending and the retrying are claimed.
      const inFlight = claimed[2]!;
      const recorded = await store.recordAttempt(inFlight.delivery.id, {
        owner: 'w',
        attempt: attempt(inFlight, 200),
        nextState: 'delivered',
      });
      expect(recorded?.state).toBe('delivered');
      const first = await store.claimDue({ lane: 'first', limit: 10, now: T0 + 10, leaseMs: 60_000, owner: 'w2' });
      const retry = await store.claimDue({ lane: 'retry', limit: 10, now: T0 + 10, leaseMs: 60_000, owner: 'w2' });
      expect([...first, ...retry].map((c) => c.delivery.externalCustomerId).sort()).toEqual(
        [claimed[1]!.delivery.externalCustomerId, 'd'].sort(),
      );
    } finally {
      await store?.close();
      await client.end();
      await fresh.drop();
    }
  });

  describe('a database migrated by a build whose migration was reverted', () => {
    // Migration 4 of cb837a8 (reverted by c5c9179), as it was released: the bodies moved to a table of their own.
    const frozenBodies = {
      version: 4,
      name: 'frozen bodies in a table of their own',
      sql: `
CREATE TABLE delivery_bodies (
  delivery_id text COLLATE "C" PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
  body        bytea NOT NULL,
  message_ids text NOT NULL,  -- JSON array
  frozen_at   bigint NOT NULL
);
INSERT INTO delivery_bodies (delivery_id, body, message_ids, frozen_at)
  SELECT id, body, COALESCE(message_ids, '[]'), COALESCE(first_attempt_at, updated_at) FROM deliveries
  WHERE body IS NOT NULL;
ALTER TABLE deliveries DROP COLUMN body, DROP COLUMN message_ids;
`,
    };
    // Migration 7 of 1f88e30 (reverted by 3616cd5), as it was released.
    const leaseLosses = {
      version: 7,
      name: 'lease losses of a delivery',
      sql: 'ALTER TABLE deliveries ADD COLUMN lease_losses integer NOT NULL DEFAULT 0;',
    };
    const upTo = (version: number) => POSTGRES_MIGRATIONS.filter((m) => m.version <= version);
    const recorded = async (client: pg.Client) =>
      (await client.query('SELECT version, name FROM schema_migrations ORDER BY version')).rows;
    const columns = async (client: pg.Client) =>
      (
        await client.query<{ column_name: string }>(
          "SELECT column_name FROM information_schema.columns WHERE table_name = 'deliveries'",
        )
      ).rows.map((r) => r.column_name);

    it.each([
      ['as cb837a8 left it', [] as number[]],
      ['with migrations 5 and 6 applied over it by a build before the undo', [5, 6]],
    ])('gets its frozen bodies back from delivery_bodies (%s), and this build migration 4', async (_, over) => {
      // Before the undo, the version-4 record passed for this build's migration 4: every statement naming body
      // failed (column d.body does not exist), so no delivery was read, claimed or sent.
      const fresh = await createTestDatabase();
      const client = new pg.Client({ connectionString: fresh.url });
      await client.connect();
      let store: PostgresStore | null = null;
      try {
        await migratePostgres(client, upTo(3));
        const old = new PostgresStore({ connectionString: fresh.url, poolSize: 1 }); // not migrated further
        await old.upsertWebhook('acct', HOOK, T0);
        await old.publish({ accountId: 'acct', now: T0, messages: ['a', 'b', 'c'].map((c) => storedMessage(c)) });
        const [retried, inFlight] = await old.claimDue({
          lane: 'first',
          limit: 2,
          now: T0 + 1,
          leaseMs: 60_000,
          owner: 'w',
        });
        const bodyOf = (contact: string) => Buffer.from(`[{"contact":"${contact}"}]`);
        for (const claim of [retried!, inFlight!]) {
          const contact = claim.delivery.externalCustomerId;
          expect(await old.freeze(claim.delivery.id, 'w', bodyOf(contact), [`m-${contact}`], T0 + 2)).toBe(true);
        }
        await old.recordAttempt(retried!.delivery.id, {
          owner: 'w',
          attempt: {
            deliveryId: retried!.delivery.id,
            attemptNo: 1,
            startedAt: T0 + 2,
            durationMs: 1,
            statusCode: 503,
            errorKind: null,
            verdict: 'retry',
            nextAttemptAt: T0 + 10,
          },
          nextState: 'retrying',
        });
        await old.close();
        await migratePostgres(
          client,
          [...upTo(3), frozenBodies, ...POSTGRES_MIGRATIONS.filter((m) => over.includes(m.version))],
          {},
          [],
        );
        // cb837a8's freeze left first_attempt_at to the first recorded attempt (the freeze's time stood for it).
        await client.query('UPDATE deliveries SET first_attempt_at = NULL WHERE id = $1', [inFlight!.delivery.id]);
        expect(await columns(client)).not.toContain('body');

        store = await openPostgresStore({ connectionString: fresh.url, poolSize: 2 });
        expect(await recorded(client)).toEqual(POSTGRES_MIGRATIONS.map((m) => ({ version: m.version, name: m.name })));
        expect(
          (await client.query("SELECT to_regclass('delivery_bodies') AS t, to_regclass('deliveries_lease_due') AS i"))
            .rows[0],
        ).toEqual({ t: null, i: 'deliveries_lease_due' });
        for (const claim of [retried!, inFlight!]) {
          const contact = claim.delivery.externalCustomerId;
          const read = await store.getDelivery(claim.delivery.id);
          expect(Buffer.from(read!.delivery.body!)).toEqual(bodyOf(contact));
          expect(read!.delivery.messageIds).toEqual([`m-${contact}`]);
          expect(read!.delivery.firstAttemptAt).toBe(T0 + 2);
        }
        // The retry is claimed with its frozen body, the lease taken back, the pending one claimed and frozen.
        const retry = await store.claimDue({ lane: 'retry', limit: 10, now: T0 + 60_002, leaseMs: 60_000, owner: 'x' });
        expect(retry.map((c) => [c.delivery.id, Buffer.from(c.delivery.body!).toString()]).sort()).toEqual(
          [retried!, inFlight!].map((c) => [c.delivery.id, bodyOf(c.delivery.externalCustomerId).toString()]).sort(),
        );
        const [pending] = await store.claimDue({
          lane: 'first',
          limit: 10,
          now: T0 + 60_002,
          leaseMs: 60_000,
          owner: 'x',
        });
        expect(await store.freeze(pending!.delivery.id, 'x', bodyOf('c'), ['m-c'], T0 + 60_003)).toBe(true);
      } finally {
        await store?.close();
        await client.end();
        await fresh.drop();
      }
    });

    it('drops the lease-loss count of 1f88e30 instead of refusing to start as if it were newer', async () => {
      // Before: 'the database is at schema version 7, this build knows up to 6: upgrade the service', on the newest
      // build; and a future migration 7 of this build would have been taken as applied.
      const fresh = await createTestDatabase();
      const client = new pg.Client({ connectionString: fresh.url });
      await client.connect();
      let store: PostgresStore | null = null;
      try {
        await migratePostgres(client, [...upTo(6), leaseLosses], {}, []);
        store = await openPostgresStore({ connectionString: fresh.url, poolSize: 1 });
        expect(await recorded(client)).toEqual(POSTGRES_MIGRATIONS.map((m) => ({ version: m.version, name: m.name })));
        expect(await columns(client)).not.toContain('lease_losses');
        await store.upsertWebhook('acct', HOOK, T0);
        await store.publish({ accountId: 'acct', now: T0, messages: [storedMessage('a')] });
        expect(await store.claimDue({ lane: 'first', limit: 1, now: T0, leaseMs: 1000, owner: 'w' })).toHaveLength(1);
      } finally {
        await store?.close();
        await client.end();
        await fresh.drop();
      }
    });

    it('refuses a migration it does not know under the number of one of its own, changing nothing', async () => {
      const fresh = await createTestDatabase();
      const client = new pg.Client({ connectionString: fresh.url });
      await client.connect();
      try {
        await migratePostgres(client, [...upTo(5), { version: 6, name: 'from another branch', sql: 'SELECT 1' }]);
        await expect(openPostgresStore({ connectionString: fresh.url, poolSize: 1 })).rejects.toMatchObject({
          code: 'schema_too_new',
          message: expect.stringMatching(/records migration 6 as 'from another branch'/),
        });
        expect((await recorded(client)).at(-1)).toEqual({ version: 6, name: 'from another branch' });
      } finally {
        await client.end();
        await fresh.drop();
      }
    });
  });

  it('reads the messages of a claim up to claimMessagesMaxBytes, leaving the contacts past it to the engine', async () => {
    // 64 lists of 1,000 messages of the largest size (near 100 MB each) were read with one claim: the process died.
    // A database of its own: the claim takes every due delivery, and other tests leave some in the shared one.
    const fresh = await createTestDatabase();
    const store = await openPostgresStore({ connectionString: fresh.url, poolSize: 2, claimMessagesMaxBytes: 5_000 });
    const account = `acct-${randomUUID()}`;
    try {
      await store.upsertWebhook(account, HOOK, T0);
      const sized = (contact: string, createdDate: number, bytes: number) =>
        storedMessage(contact, {
          createdDate,
          title: 't',
          content: 'c',
          customData: JSON.stringify('x'.repeat(bytes)),
        });
      await store.publish({
        accountId: account,
        now: T0,
        messages: [
          sized('a-small', T0 - 3, 1_000),
          sized('a-small', T0 - 2, 1_000),
          { ...sized('b-empty', T0 - 1, 10), expiresAt: T0 + 1 },
          sized('c-large', T0 - 4, 4_000),
          sized('d-small', T0 - 5, 10),
        ],
      });
      const now = T0 + 10;
      const claimed = await store.claimDue({ lane: 'first', limit: 10, now, leaseMs: 60_000, owner: 'w' });
      const byContact = new Map(claimed.map((c) => [c.delivery.externalCustomerId, c]));
      expect([...byContact.keys()].sort()).toEqual(['a-small', 'b-empty', 'c-large', 'd-small']);
      // In the claim's order, the lists that fit in 5,000 bytes together come whole, as contactMessages reads them;
      // an empty one (its message expired) is empty; from the first that does not fit on, none comes.
      const order = claimed.map((c) => c.delivery.externalCustomerId);
      let room = 5_000;
      let cut = false;
      for (const contact of order) {
        const expected = await store.contactMessages(account, contact, now, 10);
        const bytes = expected.reduce((n, m) => n + m.title.length + m.content.length + (m.customData?.length ?? 0), 0);
        cut ||= bytes > room;
        room -= bytes;
        if (cut) expect(byContact.get(contact)?.messages, contact).toBeUndefined();
        else expect(byContact.get(contact)?.messages, contact).toEqual(expected);
      }
      // The lists (2,000 + 0 + 4,000 + 10 bytes of customData) do not all fit: some come, some do not.
      expect(claimed.filter((c) => c.messages === undefined).length).toBeGreaterThanOrEqual(1);
      expect(claimed.filter((c) => (c.messages?.length ?? 0) > 0).length).toBeGreaterThanOrEqual(1);
    } finally {
      await store.close();
      await fresh.drop();
    }
  });

  it("gives each first claim the contact's messages as contactMessages would, and none once the body is frozen", async () => {
    const store = await openPostgresStore({ connectionString: db.url, poolSize: 2 });
    const account = `acct-${randomUUID()}`;
    try {
      await store.upsertWebhook(account, { url: 'https://r.example/h', maxMessagesPerContact: 3, enabled: true }, T0);
      const message = (contact: string, i: number, createdDate: number, extra: Partial<StoredMessage> = {}) =>
        storedMessage(contact, {
          id: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
          createdDate,
          title: `t${i}`,
          ...extra,
        });
      const messages: StoredMessage[] = [
        message('c1', 0, T0 - 10),
        message('c1', 2, T0 - 5), // ties with 1 on createdDate: 1 comes first (ids ascending)
        message('c1', 1, T0 - 5, { image: 'https://i.example/1.png' }),
        message('c1', 3, T0 - 20),
        message('c1', 4, T0 - 30),
        message('c1', 5, T0 - 1, { expiresAt: T0 + 1 }), // the newest, but expired at the claim's now
        message('c2', 6, T0 - 1, { link: 'https://l.example', customData: '{"a":1}' }),
      ];
      await store.publish({ accountId: account, messages, now: T0 });
      const now = T0 + 10;
      const claimed = await store.claimDue({ lane: 'first', limit: 10, now, leaseMs: 60_000, owner: 'w' });
      expect(claimed).toHaveLength(2);
      for (const claim of claimed) {
        const expected = await store.contactMessages(account, claim.delivery.externalCustomerId, now, 3);
        expect(claim.messages).toEqual(expected);
      }
      expect(claimed[0]!.messages!.map((m) => m.title)).toEqual(['t1', 't2', 't0']);
      expect(claimed[1]!.messages!.map((m) => m.title)).toEqual(['t6']);
      // A retry resends its frozen body: no messages are read for it.
      const first = claimed[0]!;
      expect(await store.freeze(first.delivery.id, 'w', new Uint8Array([1]), ['x'], now)).toBe(true);
      await store.recordAttempt(first.delivery.id, {
        owner: 'w',
        attempt: {
          deliveryId: first.delivery.id,
          attemptNo: 1,
          startedAt: now,
          durationMs: 1,
          statusCode: 503,
          errorKind: null,
          verdict: 'retry',
          nextAttemptAt: now + 1,
        },
        nextState: 'retrying',
      });
      const [retry] = await store.claimDue({ lane: 'retry', limit: 10, now: now + 2, leaseMs: 60_000, owner: 'w' });
      expect(retry?.delivery.id).toBe(first.delivery.id);
      expect(retry?.messages).toBeUndefined();
    } finally {
      await store.deleteWebhook(account); // its deliveries still in flight are not left to other tests
      await store.close();
    }
  });

  it('supersedes at claim time, never sends, a retrying delivery whose contact has a newer one', async () => {
    // The state a record can leave when it commits "retrying" while a publish's transaction that creates the newer
    // pending delivery (and supersedes the contact's retrying ones) had not seen it yet: READ COMMITTED. Made here by
    // hand; the claim must still never send the older list after the newer one (ARCHITECTURE §2).
    await withOwnDatabase(async (opened, url) => {
      await opened.upsertWebhook('acct', HOOK, T0);
      const older = (await opened.publish({ accountId: 'acct', now: T0, messages: [storedMessage('c')] }))
        .deliveries[0]!.deliveryId;
      const [c] = await opened.claimDue({ lane: 'first', limit: 10, now: T0, leaseMs: 60_000, owner: 'w' });
      expect(c?.delivery.id).toBe(older);
      expect(await opened.freeze(older, 'w', new Uint8Array([1]), ['x'], T0)).toBe(true);
      const newer = (await opened.publish({ accountId: 'acct', now: T0 + 1, messages: [storedMessage('c')] }))
        .deliveries[0]!.deliveryId;
      await sql(
        url,
        `UPDATE deliveries SET state = 'retrying', lease_owner = NULL, next_attempt_at = $2, attempt_count = 1
         WHERE id = $1`,
        [older, T0 + 5],
      );
      const outcomes: DeliveryOutcome[] = [];
      opened.onOutcome((o) => outcomes.push(o));

      expect(await opened.claimDue({ lane: 'retry', limit: 10, now: T0 + 10, leaseMs: 60_000, owner: 'w' })).toEqual(
        [],
      );
      expect((await opened.getDelivery(older))?.delivery).toMatchObject({ state: 'superseded', supersededBy: newer });
      await expect
        .poll(() => outcomes.map((o) => [o.deliveryId, o.state, o.supersededBy]))
        .toEqual([[older, 'superseded', newer]]);
      // The newer one goes out in its own lane.
      const [first] = await opened.claimDue({ lane: 'first', limit: 10, now: T0 + 10, leaseMs: 60_000, owner: 'w' });
      expect(first?.delivery.id).toBe(newer);
    });
  });

  it('freezes the deliveries of one turn together, each call answered for its own delivery', async () => {
    const store = await openPostgresStore({ connectionString: db.url, poolSize: 2 });
    const { account, claimed, statements, restore } = await claimedFresh(store, ['a', 'b', 'c', 'd']);
    try {
      const [a, b, c, d] = claimed;
      const body = (n: number) => new Uint8Array([n]);
      const answers = await Promise.all([
        store.freeze(a!.delivery.id, 'w', body(1), ['m1'], T0 + 1),
        store.freeze(b!.delivery.id, 'someone-else', body(2), ['m2'], T0 + 1), // not its claim
        store.freeze(c!.delivery.id, 'w', body(3), ['m3'], T0 + 1),
        store.freeze(c!.delivery.id, 'w', body(4), ['m4'], T0 + 1), // frozen already by the call before
        store.freeze(d!.delivery.id, 'w', body(5), ['m5'], T0 + 60_001), // its lease has ended
      ]);
      expect(answers).toEqual([true, false, true, false, false]);
      const bodies = await Promise.all(
        [a, b, c, d].map(async (x) => (await store.getDelivery(x!.delivery.id))!.delivery.body),
      );
      expect(bodies.map((bytes) => (bytes === null ? null : [...bytes]))).toEqual([[1], null, [3], null]);
      expect((await store.getDelivery(c!.delivery.id))!.delivery.messageIds).toEqual(['m3']);
      // Two statements (the second for the delivery asked twice), not five.
      expect(statements(/SET body = /)).toBe(2);
      restore();
      // Queued freezes are sent by close(), not dropped.
      const pending = store.freeze(b!.delivery.id, 'w', body(6), ['m6'], T0 + 2);
      await store.close();
      expect(await pending).toBe(true);
    } finally {
      restore();
      await store.close();
    }
    const b = await reopenedDelivery(account, 'b');
    expect(b?.body === null ? null : [...b!.body!]).toEqual([6]);
  });

  it('publishes to contacts with a pending delivery by updates that mostly stay on their page (HOT)', async () => {
    // The upsert that locks an existing pending delivery writes a new version of its row. Without free space on
    // the page (fillfactor, migration 3) every one moved to another page with an entry in every index.
    const fresh = await createTestDatabase();
    const store = await openPostgresStore({ connectionString: fresh.url, poolSize: 1 });
    try {
      const contacts = Array.from({ length: 600 }, (_, i) => `c${String(i).padStart(4, '0')}`);
      const publishAll = async () => {
        for (let i = 0; i < contacts.length; i += 100) {
          await store.publish({
            accountId: 'acct',
            now: T0,
            messages: contacts.slice(i, i + 100).map((contact) => storedMessage(contact)),
          });
        }
      };
      const pages = async () =>
        new Map(
          (
            await sql(
              fresh.url,
              "SELECT id, (ctid::text::point)[0]::int AS page FROM deliveries WHERE state = 'pending'",
            )
          ).rows.map((row: { id: string; page: number }) => [row.id, row.page]),
        );
      await publishAll();
      const before = await pages();
      await publishAll(); // the same contacts again: their pending deliveries are kept, and locked
      const after = await pages();
      expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
      const moved = [...after].filter(([id, page]) => before.get(id) !== page).length;
      // About 290 of 600 here (a statement's own old versions cannot be pruned while it runs); 517 with full pages.
      expect(moved).toBeLessThan((contacts.length * 2) / 3);
    } finally {
      await store.close();
      await fresh.drop();
    }
  });

  it('sweeps by row address and primary key, never a join over the whole table, whatever the statistics', async () => {
    // The delete of expired messages once joined a LIMITed subquery to `messages` on the key: with many
    // messages expired, a hash join over a sequential scan of every one of them, to delete `limit`.
    await withOwnDatabase(async (opened, url) => {
      const publish = (from: number, count: number, expiresAt: number) =>
        opened.publish({
          accountId: 'acct',
          now: T0,
          messages: Array.from({ length: count }, (_, i) => storedMessage(`c${from + i}`, { expiresAt })),
        });
      await publish(0, 20, T0 + 86_400_000);
      await sql(url, 'ANALYZE messages');
      await sql(url, 'ANALYZE deliveries');
      await publish(20, 6000, T0 + 1); // expired from T0 + 1 on
      await sql(url, "UPDATE deliveries SET state = 'delivered', updated_at = $1", [T0]);
      const statements = {
        messages: [SWEEP_SQL.messages, [T0 + 10, 500], 'Tid Scan'],
        deliveries: [SWEEP_SQL.deliveries, [T0 + 10, 500], 'Index Scan'],
      } as const;
      for (const mode of PLAN_MODES) {
        for (const [table, [text, params, scan]] of Object.entries(statements)) {
          const nodes = await planNodes(url, text, [...params], mode, { storeSettings: false });
          // The rows to delete are reached directly (the Delete's own scan); the subquery that names them stops
          // at the limit, and nothing joins.
          const target = nodes[0]!.children.find((child) => child.relation === table);
          const joins = nodes.filter((node) => /Join|Nested Loop/.test(node.type)).map((node) => node.type);
          expect({ mode, table, target: target?.type, joins }).toEqual({ mode, table, target: scan, joins: [] });
          if (table === 'deliveries') {
            // "A newer delivery of the contact, or no older one": probes per candidate, on the contact index.
            const probes = nodes.filter((node) => node.parentRelationship === 'SubPlan').map((node) => node.index);
            expect({ mode, probes }).toEqual({ mode, probes: ['deliveries_contact', 'deliveries_contact'] });
          }
        }
      }
      // And the sweep deletes what it should, within its limit.
      expect((await opened.sweep(T0 + 10, { terminalRetentionMs: 0, limit: 500 })).deleted).toBe(500);
      const left = await sql(url, 'SELECT count(*)::int AS n FROM messages WHERE expires_at <= $1', [T0 + 10]);
      expect(left.rows[0].n).toBe(5500);
    });
  });

  it('records the final attempts of one turn together, each call answered for its own delivery', async () => {
    const store = await openPostgresStore({ connectionString: db.url, poolSize: 2 });
    const { account, claimed, statements, restore } = await claimedFresh(store, ['a', 'b', 'c', 'd', 'e']);
    try {
      const [a, b, c, d, e] = claimed;
      const attempt = (x: ClaimedDelivery | undefined, statusCode: number, attemptNo = 1) => ({
        deliveryId: x!.delivery.id,
        attemptNo,
        startedAt: T0 + 10,
        durationMs: 5,
        statusCode,
        errorKind: null,
        verdict:
          statusCode === 200 ? ('delivered' as const) : statusCode === 503 ? ('retry' as const) : ('failed' as const),
        nextAttemptAt: statusCode === 503 ? T0 + 1_000 : null,
      });
      const answers = await Promise.all([
        store.recordAttempt(a!.delivery.id, { owner: 'w', attempt: attempt(a, 200), nextState: 'delivered' }),
        store.recordAttempt(b!.delivery.id, { owner: 'other', attempt: attempt(b, 200), nextState: 'delivered' }),
        store.recordAttempt(c!.delivery.id, { owner: 'w', attempt: attempt(c, 400), nextState: 'failed' }),
        // The same delivery again: attempt 1 is recorded by the call before, so this one is not the next.
        store.recordAttempt(c!.delivery.id, { owner: 'w', attempt: attempt(c, 200), nextState: 'delivered' }),
        store.recordAttempt(d!.delivery.id, { owner: 'w', attempt: attempt(d, 200, 2), nextState: 'delivered' }),
        // A retry goes by its own statement (it may be superseded), in the same turn.
        store.recordAttempt(e!.delivery.id, { owner: 'w', attempt: attempt(e, 503), nextState: 'retrying' }),
      ]);
      expect(answers.map((x) => x && { state: x.state, attemptCount: x.attemptCount, lastError: x.lastError })).toEqual(
        [
          { state: 'delivered', attemptCount: 1, lastError: null },
          null,
          { state: 'failed', attemptCount: 1, lastError: 'http_400' },
          null,
          null,
          { state: 'retrying', attemptCount: 1, lastError: 'http_503' },
        ],
      );
      // Two statements for the five final calls (the second for the delivery asked twice), one for the retry.
      expect(statements(/^WITH f AS/)).toBe(2);
      expect(statements(/^WITH cur AS/)).toBe(1);
      restore();
      const stored = await Promise.all([a, b, c, d].map(async (x) => (await store.getDelivery(x!.delivery.id))!));
      expect(
        stored.map((x) => [x.delivery.state, x.attempts.map((t) => [t.attemptNo, t.statusCode, t.verdict])]),
      ).toEqual([
        ['delivered', [[1, 200, 'delivered']]],
        ['in_flight', []],
        ['failed', [[1, 400, 'failed']]],
        ['in_flight', []],
      ]);
      // Queued records are sent by close(), not dropped.
      const pending = store.recordAttempt(b!.delivery.id, {
        owner: 'w',
        attempt: attempt(b, 200),
        nextState: 'delivered',
      });
      await store.close();
      expect((await pending)?.state).toBe('delivered');
    } finally {
      restore();
      await store.close();
    }
    expect((await reopenedDelivery(account, 'b'))?.state).toBe('delivered');
  });

  it('records re-check the claim after waiting for a row: one taken over meanwhile is not recorded', async () => {
    const store = await openPostgresStore({ connectionString: db.url, poolSize: 2 });
    const { account, claimed, restore } = await claimedFresh(store, ['x', 'y', 'z']);
    restore();
    const other = new pg.Client({ connectionString: db.url });
    await other.connect();
    try {
      // Another process takes y's claim over and holds its row while the records are sent.
      await other.query('BEGIN');
      await other.query("UPDATE deliveries SET lease_owner = 'other' WHERE id = $1", [claimed[1]!.delivery.id]);
      const recorded = Promise.all(claimed.map((c) => store.recordAttempt(c.delivery.id, deliveredFirstTime(c))));
      // Commit the takeover only once the record statement waits for that row's lock.
      for (let waited = 0; ; waited += 20) {
        // Inside a transaction pg_stat_activity is read once and kept: read it afresh each time.
        await other.query('SELECT pg_stat_clear_snapshot()');
        const { rows } = await other.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'WITH f AS%'",
        );
        if (rows[0].n > 0) break;
        if (waited > 10_000) throw new Error('the record statement never waited for the row');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await other.query('COMMIT');
      expect((await recorded).map((d) => d?.state ?? null)).toEqual(['delivered', null, 'delivered']);
      const y = await store.getDelivery(claimed[1]!.delivery.id);
      const { rows } = await other.query('SELECT lease_owner FROM deliveries WHERE id = $1', [claimed[1]!.delivery.id]);
      expect({ state: y?.delivery.state, owner: rows[0].lease_owner, attempts: y?.attempts.length }).toEqual({
        state: 'in_flight',
        owner: 'other',
        attempts: 0,
      });
    } finally {
      await other.end();
      await store.deleteWebhook(account);
      await store.close();
    }
  });

  it('records each attempt on its own when the batched statement lost a race, answering every call', async () => {
    const store = await openPostgresStore({ connectionString: db.url, poolSize: 2 });
    const { account, claimed, restore } = await claimedFresh(store, ['a', 'b']);
    restore();
    const original = pg.Pool.prototype.query;
    let refused = 0;
    const query = vi.spyOn(pg.Pool.prototype, 'query').mockImplementation(function (this: pg.Pool, ...args: unknown[]) {
      const text = String((args[0] as { text?: string } | undefined)?.text ?? args[0]);
      if (text.startsWith('WITH f AS') && refused++ === 0) {
        return Promise.reject(Object.assign(new Error('deadlock detected'), { code: '40P01' }));
      }
      return (original as (...a: unknown[]) => unknown).apply(this, args);
    } as typeof original);
    try {
      const answers = await Promise.all(claimed.map((c) => store.recordAttempt(c.delivery.id, deliveredFirstTime(c))));
      expect({ refused, states: answers.map((d) => d?.state) }).toEqual({
        refused: 1,
        states: ['delivered', 'delivered'],
      });
      const stored = await Promise.all(
        claimed.map(async (c) => (await store.getDelivery(c.delivery.id))!.attempts.length),
      );
      expect(stored).toEqual([1, 1]);
    } finally {
      query.mockRestore();
      await store.deleteWebhook(account);
      await store.close();
    }
  });

  it('still answers a claim whose messages could not be read, leaving them to contactMessages', async () => {
    const store = await openPostgresStore({ connectionString: db.url, poolSize: 2 });
    const account = `acct-${randomUUID()}`;
    const original = pg.Pool.prototype.query;
    const query = vi.spyOn(pg.Pool.prototype, 'query').mockImplementation(function (this: pg.Pool, ...args: unknown[]) {
      const text = String((args[0] as { text?: string } | undefined)?.text ?? args[0]);
      if (text === CLAIM_MESSAGES_SQL) return Promise.reject(new Error('connection lost'));
      return (original as (...a: unknown[]) => unknown).apply(this, args);
    } as typeof original);
    try {
      await store.upsertWebhook(account, HOOK, T0);
      await store.publish({
        accountId: account,
        now: T0,
        messages: [storedMessage('a')],
      });
      const claimed = await store.claimDue({ lane: 'first', limit: 1, now: T0, leaseMs: 60_000, owner: 'w' });
      expect(claimed).toHaveLength(1);
      expect(claimed[0]!.messages).toBeUndefined();
    } finally {
      query.mockRestore();
      await store.deleteWebhook(account); // its delivery still in flight is not left to other tests
      await store.close();
    }
  });

  it('settles a freeze whose statement waits for a connection when the store closes', async () => {
    // A database of its own: the 5,000 deliveries it leaves pending must not be claimed by other tests.
    const fresh = await createTestDatabase();
    // Waited for however long it takes here (the bound on close() is tested below).
    const store = await openPostgresStore({ connectionString: fresh.url, poolSize: 1, closeTimeoutMs: 60_000 });
    const account = `acct-${randomUUID()}`;
    try {
      await store.upsertWebhook(account, HOOK, T0);
      await store.publish({ accountId: account, now: T0, messages: [storedMessage('a')] });
      const [a] = await store.claimDue({ lane: 'first', limit: 1, now: T0, leaseMs: 60_000, owner: 'w' });
      // The pool's only connection is busy with a large publish while the freeze's statement is sent.
      const busy = store.publish({
        accountId: account,
        now: T0,
        messages: Array.from({ length: 5_000 }, (_, i) => storedMessage(`x${i}`)),
      });
      const frozen = store.freeze(a!.delivery.id, 'w', new Uint8Array([1]), ['m'], T0 + 1);
      await new Promise((resolve) => setImmediate(resolve)); // the flush has started and waits for the connection
      await new Promise((resolve) => setImmediate(resolve));
      const closed = store.close();
      const outcome = await Promise.race([
        frozen,
        new Promise((resolve) => setTimeout(() => resolve('still waiting'), 10_000)),
      ]);
      expect(outcome).toBe(true);
      await busy;
      await closed;
    } finally {
      await store.close();
      await fresh.drop();
    }
  });

  it('closes within closeTimeoutMs when a statement does not return, cutting the connections', async () => {
    const store = await openPostgresStore({ connectionString: db.url, poolSize: 2, closeTimeoutMs: 300 });
    // Another session holds the webhooks table: the store's statement waits for it (as it would for a database that
    // stopped answering) until its connection is cut.
    const locker = new pg.Client({ connectionString: db.url });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE webhooks IN ACCESS EXCLUSIVE MODE');
      const stuck = store.upsertWebhook(
        `acct-${randomUUID()}`,
        {
          url: 'https://r.example/h',
          maxMessagesPerContact: 10,
          enabled: true,
        },
        T0,
      );
      const settled = stuck.then(
        () => 'written',
        () => 'failed',
      );
      // Until the statement waits for the lock, as the database sees it: a fixed 100 ms assumed it would be there by
      // then, which a loaded machine need not honour. pg_stat_activity is a snapshot kept for the transaction: cleared
      // before each look.
      const waitingForLock = async () => {
        await locker.query('SELECT pg_stat_clear_snapshot()');
        const { rows } = await locker.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        );
        return rows[0]!.n > 0;
      };
      for (const deadline = Date.now() + 10_000; !(await waitingForLock());) {
        if (Date.now() > deadline) throw new Error('the statement never waited for the lock');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(await Promise.race([settled, 'waiting'])).toBe('waiting');
      const closing = Date.now();
      await store.close();
      const took = Date.now() - closing;
      // The close timeout, then the cut: not the lock's lifetime (until the end of the test). The upper bound leaves
      // room for a loaded machine; it is no measure of speed.
      expect(took).toBeGreaterThanOrEqual(250);
      expect(took).toBeLessThan(300 + 3_000);
      expect(await settled).toBe('failed');
      await expect(store.getWebhook('x')).rejects.toMatchObject({ code: 'closed' });
    } finally {
      await locker.query('ROLLBACK').catch(() => undefined);
      await locker.end();
      await store.close();
    }
  });

  it("ends the session of a process stalled inside a transaction: another process's publish does not wait on it", async () => {
    // Process A reaches the database through a relay that stops forwarding (both ways, sockets kept open) right after
    // A's ResyncContacts sent its upsert of the contact's pending delivery (which locks it): A is stalled (SIGSTOP, a VM
    // pause, a host gone) inside its transaction, the row locked. Process B then publishes to that contact.
    let frozen = false;
    const sockets = new Set<Socket>();
    const target = new URL(db.url);
    const relay = createServer((client) => {
      const upstream = connect(Number(target.port || 5432), target.hostname);
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on('error', () => undefined);
      }
      client.on('data', (chunk: Buffer) => {
        if (frozen) return;
        upstream.write(chunk);
        if (chunk.includes('INSERT INTO deliveries')) frozen = true;
      });
      upstream.on('data', (chunk: Buffer) => void (frozen || client.write(chunk)));
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    const viaRelay = new URL(db.url);
    viaRelay.hostname = '127.0.0.1';
    viaRelay.port = String((relay.address() as AddressInfo).port);
    const b = await openPostgresStore({ connectionString: db.url, poolSize: 2 });
    const a = await openPostgresStore({
      connectionString: viaRelay.toString(),
      poolSize: 1,
      idleInTransactionTimeoutMs: 300,
      closeTimeoutMs: 100,
    });
    try {
      const account = `acct-${randomUUID()}`;
      await b.upsertWebhook(account, { url: 'https://r.example/h', maxMessagesPerContact: 10, enabled: false }, T0);
      await b.publish({ accountId: account, now: T0, messages: [storedMessage('c')] });
      const stalled = a.resync(account, ['c'], T0).then(
        () => 'resynced',
        () => 'failed',
      );
      await vi.waitFor(() => expect(frozen).toBe(true), { timeout: 10_000 });
      const published = b
        .publish({ accountId: account, now: T0 + 1, messages: [storedMessage('c')] })
        .then((result) => result.inserted);
      // Without the timeout B waits for as long as A is stalled (here: for ever).
      const waitedFor = await Promise.race([
        published,
        new Promise((r) => setTimeout(() => r('still waiting'), 15_000)),
      ]);
      expect(waitedFor).toBe(1);
      expect(await Promise.race([stalled, 'still stalled'])).toBe('still stalled');
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => relay.close(() => resolve()));
      await a.close();
      await b.close();
    }
  });

  it('announces what publish supersedes from inside its statement, whatever the size, with multi-byte text', async () => {
    const a = await openPostgresStore({ connectionString: db.url, poolSize: 2 });
    const b = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
    try {
      const account = `acct-${randomUUID()}`;
      await a.upsertWebhook(account, { url: 'https://r.example/h', maxMessagesPerContact: 1000, enabled: true }, T0);
      const message = (id: string) => ({
        externalCustomerId: 'kontakt-ü',
        id,
        createdDate: T0,
        title: 't',
        content: 'c',
        category: 'k',
        expiresAt: T0 + 86_400_000,
      });
      const first = await a.publish({ accountId: account, messages: [message('m0')], now: T0 });
      const [claimed] = await a.claimDue({ lane: 'first', limit: 1, now: T0, leaseMs: 60_000, owner: 'w' });
      expect(claimed?.delivery.id).toBe(first.deliveries[0]!.deliveryId);
      // About 40,000 characters, nearly all of them 3 or 4 bytes in UTF-8: many frames, each under the NOTIFY
      // limit of 8,000 bytes only if they are cut by bytes, not by characters alone.
      const ids = Array.from({ length: 1000 }, (_, i) => `${i}-${'😀€'.repeat(18)}`);
      expect(await a.freeze(claimed!.delivery.id, 'w', new Uint8Array([1]), ids, T0)).toBe(true);
      const retried = await a.recordAttempt(claimed!.delivery.id, {
        owner: 'w',
        attempt: {
          deliveryId: claimed!.delivery.id,
          attemptNo: 1,
          startedAt: T0,
          durationMs: 5,
          statusCode: 503,
          errorKind: null,
          verdict: 'retry',
          nextAttemptAt: T0 + 60_000,
        },
        nextState: 'retrying',
      });
      expect(retried?.state).toBe('retrying');

      const seen: DeliveryOutcome[] = [];
      b.onOutcome((o) => seen.push(o));
      const second = await a.publish({ accountId: account, messages: [message('m1')], now: T0 + 10 });
      const end = Date.now() + 5000;
      while (seen.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 50)); // announced once
      expect(seen).toEqual([
        {
          deliveryId: claimed!.delivery.id,
          accountId: account,
          externalCustomerId: 'kontakt-ü',
          state: 'superseded',
          messageIds: ids,
          attemptNo: 1,
          statusCode: null,
          errorKind: null,
          nextAttemptAt: null,
          at: T0 + 10,
          supersededBy: second.deliveries[0]!.deliveryId,
        },
      ]);
      const old = await a.getDelivery(claimed!.delivery.id);
      expect(old?.delivery).toMatchObject({ state: 'superseded', supersededBy: second.deliveries[0]!.deliveryId });
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  describe('deleteWebhook while a publish commits', () => {
    /**
     * Runs deleteWebhook with its last statement (`DELETE FROM messages`) held up by another session holding a row
     * of the account's messages (any slow statement would do), publishes `contacts` meanwhile, then lets it go on.
     * Returns what is left of the account: its messages (by contact), its unsent deliveries, and the publish's
     * answer (or its error).
     */
    async function deleteAroundPublish(contacts: string[], requireWebhook = false) {
      let found: { messages: string[]; open: Delivery[]; published: string[] | { error: unknown } } | null = null;
      await withOwnDatabase(
        async (store, url) => {
          const account = 'acct';
          const hook = { url: 'https://r.example/h', maxMessagesPerContact: 1000, enabled: true };
          await store.upsertWebhook(account, hook, T0);
          const held = storedMessage('c');
          await store.publish({ accountId: account, messages: [held], now: T0 });
          const blocker = new pg.Client({ connectionString: url });
          await blocker.connect();
          try {
            await blocker.query('BEGIN');
            await blocker.query('SELECT 1 FROM messages WHERE id = $1 FOR UPDATE', [held.id]);
            const deleting = store.deleteWebhook(account);
            await until(() => waiting(blocker, 'DELETE FROM messages'));
            let settled = false;
            const publishing = store
              .publish({
                accountId: account,
                messages: contacts.map((c) => storedMessage(c)),
                now: T0 + 1,
                requireWebhook,
              })
              .then(
                (result) => result.deliveries.map((d) => d.deliveryId),
                (error: unknown) => ({ error }),
              )
              .finally(() => (settled = true));
            // The publish waits for the webhook row the delete has taken.
            await until(async () => settled || (await waiting(blocker, 'WITH hook AS')));
            await blocker.query('COMMIT');
            expect(await deleting).toBe(true);
            const published = await publishing;
            const messages: string[] = [];
            for (const contact of ['c', 'd']) {
              for (const m of await store.contactMessages(account, contact, T0 + 2, 1000)) {
                messages.push(m.externalCustomerId);
              }
            }
            const open = (
              await store.listDeliveries({ accountId: account, states: ['pending', 'in_flight', 'retrying'] }, 10, null)
            ).deliveries;
            found = { messages, open, published };
          } finally {
            await blocker.end();
          }
        },
        { poolSize: 4 },
      );
      return found!;
    }

    for (const [what, contact] of [
      ['that joined a pending delivery the delete took', 'c'],
      ['of a new contact', 'd'],
    ] as const) {
      it(`leaves a publish ${what} whole: its message with the pending delivery it was answered`, async () => {
        // Messages deleted before the deliveries, such a publish lost its pending delivery and kept its message.
        const left = await deleteAroundPublish([contact]);
        expect(left.messages).toEqual([contact]);
        expect(left.open.map((d) => [d.id, d.externalCustomerId, d.state])).toEqual([
          [(left.published as string[])[0], contact, 'pending'],
        ]);
      });
    }

    it('leaves nothing of a publish that requires the webhook: it waits for the delete, then stores nothing', async () => {
      // Its webhook looked up before the delete, such a publish (PublishMessages) stored messages and a pending
      // delivery for an account without a webhook: due for ever, sent if a webhook came back.
      const left = await deleteAroundPublish(['c', 'd'], true);
      expect(left.published).toEqual({ error: expect.objectContaining({ code: 'webhook_missing' }) });
      expect(left.messages).toEqual([]);
      expect(left.open).toEqual([]);
    });

    it('deletes the webhook of an account that keeps publishing (no serialization failure)', async () => {
      await withOwnDatabase(
        async (store) => {
          const account = 'busy';
          await store.upsertWebhook(
            account,
            { url: 'https://r.example/h', maxMessagesPerContact: 1000, enabled: true },
            T0,
          );
          const contacts = Array.from({ length: 200 }, (_, i) => `c${i}`);
          await store.publish({ accountId: account, messages: contacts.map((c) => storedMessage(c)), now: T0 });
          let stop = false;
          const loop = async (offset: number) => {
            for (let i = offset; !stop; i += 3) {
              await store.publish({ accountId: account, messages: [storedMessage(contacts[i % 200]!)], now: T0 + 1 });
            }
          };
          const loops = [loop(0), loop(1), loop(2)];
          await new Promise((resolve) => setTimeout(resolve, 100));
          await expect(store.deleteWebhook(account)).resolves.toBe(true);
          stop = true;
          await Promise.all(loops);
        },
        { poolSize: 6 },
      );
    });
  });

  it('two processes claiming at once: no delivery or contact twice in flight, nothing lost', async () => {
    const stores = [
      await openPostgresStore({ connectionString: db.url, poolSize: 3 }),
      await openPostgresStore({ connectionString: db.url, poolSize: 3 }),
    ];
    const account = `acct-${randomUUID()}`;
    const contacts = Array.from({ length: 60 }, (_, i) => `c${i}`);
    const published = new Map<string, string[]>(contacts.map((c) => [c, []]));
    const start = Date.now();
    // Wall time moves the virtual clock, but leases (60 s) never expire within the test.
    const now = (): number => T0 + (Date.now() - start);
    let event = 0;
    const holding = new Map<string, string>(); // contact -> delivery id, between claim and settle
    const violations: string[] = [];
    const claimsBy = [0, 0];
    const delivered = new Map<string, number>(); // delivery id -> times recorded as delivered
    let done = false;

    try {
      await stores[0]!.upsertWebhook(
        account,
        { url: 'https://r.example/h', maxMessagesPerContact: 1000, enabled: true },
        T0,
      );

      async function worker(index: number, lane: Lane): Promise<void> {
        const store = stores[index % 2]!;
        const owner = `p${index % 2}-w${index}`;
        while (!done) {
          const claimed: ClaimedDelivery[] = await store.claimDue({
            lane,
            limit: 8,
            now: now(),
            leaseMs: 60_000,
            owner,
          });
          event++;
          if (claimed.length === 0) {
            await new Promise((r) => setTimeout(r, 3));
            continue;
          }
          claimsBy[index % 2]! += claimed.length;
          for (const c of claimed) {
            const contact = c.delivery.externalCustomerId;
            const other = holding.get(contact);
            if (other !== undefined) violations.push(`${contact}: ${c.delivery.id} claimed while ${other} in flight`);
            holding.set(contact, c.delivery.id);
          }
          await Promise.all(
            claimed.map(async (c) => {
              const d = c.delivery;
              if (d.body === null) {
                const messages = await store.contactMessages(account, d.externalCustomerId, now(), 1000);
                const body = new TextEncoder().encode(JSON.stringify(messages.map((m) => m.id)));
                expect(
                  await store.freeze(
                    d.id,
                    owner,
                    body,
                    messages.map((m) => m.id),
                    now(),
                  ),
                ).toBe(true);
              }
              const verdict = Math.random() < 0.3 ? 'retry' : 'delivered';
              // Stop holding before the attempt commits: the observed interval stays inside the real one.
              holding.delete(d.externalCustomerId);
              const t = now();
              const updated = await store.recordAttempt(d.id, {
                owner,
                attempt: {
                  deliveryId: d.id,
                  attemptNo: d.attemptCount + 1,
                  startedAt: t,
                  durationMs: 1,
                  statusCode: verdict === 'delivered' ? 200 : 503,
                  errorKind: null,
                  verdict,
                  nextAttemptAt: verdict === 'retry' ? t + 2 : null,
                },
                nextState: verdict === 'delivered' ? 'delivered' : 'retrying',
              });
              expect(updated).not.toBeNull();
              if (updated?.state === 'delivered') delivered.set(d.id, (delivered.get(d.id) ?? 0) + 1);
            }),
          );
        }
      }

      async function publisher(): Promise<void> {
        for (let round = 0; round < 6; round++) {
          const store = stores[round % 2]!;
          const messages = contacts.map((contact) => ({
            externalCustomerId: contact,
            id: randomUUID(),
            createdDate: T0 + round,
            title: 't',
            content: 'c',
            category: 'k',
            expiresAt: T0 + 86_400_000,
          }));
          await store.publish({ accountId: account, messages, now: now() });
          for (const m of messages) published.get(m.externalCustomerId)!.push(m.id);
          await new Promise((r) => setTimeout(r, 15));
        }
        // Then wait until nothing of the account is left to send (bounded by the test timeout).
        for (;;) {
          const open = await stores[0]!.listDeliveries(
            { accountId: account, states: ['pending', 'in_flight', 'retrying'] },
            1,
            null,
          );
          if (open.deliveries.length === 0) break;
          await new Promise((r) => setTimeout(r, 10));
        }
        done = true;
      }

      await Promise.all([publisher(), worker(0, 'first'), worker(1, 'first'), worker(2, 'retry'), worker(3, 'retry')]);

      expect(violations).toEqual([]);
      expect(claimsBy[0]).toBeGreaterThan(0);
      expect(claimsBy[1]).toBeGreaterThan(0);
      expect([...delivered.values()].every((n) => n === 1)).toBe(true);
      expect(event).toBeGreaterThan(0);
      const all = (await stores[0]!.listDeliveries({ accountId: account }, 1000, null)).deliveries;
      expect(all.length).toBeGreaterThanOrEqual(contacts.length);
      expect(all.filter((d) => d.state !== 'delivered' && d.state !== 'superseded')).toEqual([]);
      // Every contact's newest delivery went out with every message of the contact.
      for (const contact of contacts) {
        const [newest] = (await stores[1]!.listDeliveries({ accountId: account, externalCustomerId: contact }, 1, null))
          .deliveries;
        expect(newest?.state).toBe('delivered');
        expect(new Set(newest?.messageIds)).toEqual(new Set(published.get(contact)));
      }
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  it('refreshes the contacts of many accounts in a few statements, not a few per account', async () => {
    await withOwnDatabase(async (store) => {
      const accounts = Array.from({ length: 30 }, (_, i) => `acct-${i}`);
      for (const account of accounts) {
        await store.upsertWebhook(account, HOOK, T0);
        await store.publish({
          accountId: account,
          now: T0,
          messages: ['c', 'd'].map((c) => storedMessage(c, { expiresAt: T0 + 100 })),
        });
      }
      for (;;) {
        const claimed = await store.claimDue({ lane: 'first', limit: 100, now: T0, leaseMs: 60_000, owner: 'w' });
        if (claimed.length === 0) break;
        for (const c of claimed) {
          const ids = c.messages!.map((m) => m.id);
          expect(await store.freeze(c.delivery.id, 'w', new Uint8Array([1]), ids, T0)).toBe(true);
          expect(await store.recordAttempt(c.delivery.id, deliveredFirstTime(c))).not.toBeNull();
        }
      }
      const query = vi.spyOn(pg.Client.prototype, 'query');
      try {
        const removed = await store.sweep(T0 + 1000, {
          terminalRetentionMs: 86_400_000,
          limit: 100,
          refreshExpired: true,
        });
        expect(removed).toEqual({ deleted: 60, refreshed: 60 });
        // BEGIN, the delete, the webhooks, the lists, the upsert, the retries superseded, COMMIT; then the deliveries'
        // delete. A few statements per account (4,004 for 1,000 accounts: 0.8 s holding every lock taken) is not.
        expect(query.mock.calls.length).toBeLessThanOrEqual(10);
      } finally {
        query.mockRestore();
      }
      expect((await store.stats(T0 + 1000)).byState.pending).toBe(60);
    });
  });

  describe('a sweep refreshing contacts while a publish to them commits', () => {
    it('locks the contacts in the order a publish does: neither waits out a deadlock (deadlock_timeout)', async () => {
      await withOwnDatabase(
        async (store, url) => {
          const account = 'acct';
          await store.upsertWebhook(account, HOOK, T0);
          // a, b and c each get a list holding a message that expires; b and c then get a pending delivery, a does not.
          await store.publish({
            accountId: account,
            now: T0,
            messages: ['a', 'b', 'c'].map((c) => storedMessage(c, { expiresAt: T0 + 100 })),
          });
          const claimed = await store.claimDue({ lane: 'first', limit: 10, now: T0, leaseMs: 60_000, owner: 'w' });
          expect(claimed).toHaveLength(3);
          for (const c of claimed) {
            const ids = c.messages!.map((m) => m.id);
            expect(await store.freeze(c.delivery.id, 'w', new Uint8Array([1]), ids, T0)).toBe(true);
            expect(await store.recordAttempt(c.delivery.id, deliveredFirstTime(c))).not.toBeNull();
          }
          await store.publish({ accountId: account, now: T0 + 10, messages: ['b', 'c'].map((c) => storedMessage(c)) });

          // Another session (a claim, a publish) holds c's pending delivery for a moment: the sweep, which has locked
          // b's by then, waits for it; a publish to a and b comes meanwhile.
          const blocker = new pg.Client({ connectionString: url });
          await blocker.connect();
          try {
            await blocker.query('BEGIN');
            await blocker.query(
              `SELECT 1 FROM deliveries WHERE account_id = $1 AND external_customer_id = 'c' AND state = 'pending'
               FOR UPDATE`,
              [account],
            );
            const sweeping = store.sweep(T0 + 1000, {
              terminalRetentionMs: 86_400_000,
              limit: 100,
              refreshExpired: true,
            });
            await until(() => waiting(blocker, 'deliveries'));
            const publishing = store.publish({
              accountId: account,
              now: T0 + 1000,
              messages: ['a', 'b'].map((c) => storedMessage(c)),
            });
            await until(() => waiting(blocker, 'WITH hook AS'));
            const released = Date.now();
            await blocker.query('COMMIT');
            await Promise.all([sweeping, publishing]);
            // A deadlock is found only once one of them has waited deadlock_timeout (1 s), then run again.
            expect(Date.now() - released).toBeLessThan(800);
          } finally {
            await blocker.end();
          }
          const open = await store.listDeliveries({ accountId: account, states: ['pending'] }, 10, null);
          expect(open.deliveries.map((d) => d.externalCustomerId).sort()).toEqual(['a', 'b', 'c']);
        },
        { poolSize: 4 },
      );
    });
  });

  it("resyncs while the account's webhook is deleted without a deadlock: the resync takes the webhook first", async () => {
    await withOwnDatabase(
      async (store, url) => {
        const account = 'acct';
        await store.upsertWebhook(account, HOOK, T0);
        // y's pending delivery first, so the delete (by the account's deliveries, in order) takes it before x's.
        await store.publish({ accountId: account, now: T0, messages: [storedMessage('y')] });
        await store.publish({ accountId: account, now: T0, messages: [storedMessage('x')] });
        const blocker = new pg.Client({ connectionString: url });
        await blocker.connect();
        try {
          // Another session (a claim, a publish) holds x's pending delivery for a moment.
          await blocker.query('BEGIN');
          await blocker.query(
            `SELECT 1 FROM deliveries WHERE account_id = $1 AND external_customer_id = 'x' AND state = 'pending'
             FOR UPDATE`,
            [account],
          );
          const resyncing = store.resync(account, ['x', 'y'], T0 + 1);
          await until(() => waiting(blocker, 'deliveries'));
          let deleted = false;
          const deleting = store.deleteWebhook(account).finally(() => (deleted = true));
          // The delete waits: for the resync's webhook lock, or (on the code before) for x's pending delivery once it
          // has deleted y's, which the resync locks next.
          await until(async () => deleted || (await waiting(blocker, 'DELETE FROM')));
          const released = Date.now();
          await blocker.query('COMMIT');
          await Promise.all([resyncing, deleting]);
          // A deadlock is found only once one of them has waited deadlock_timeout (1 s), then run again.
          expect(Date.now() - released).toBeLessThan(800);
        } finally {
          await blocker.end();
        }
      },
      { poolSize: 4 },
    );
  });

  /**
   * A contact's delivery that went out once and waits for a retry, then `run` (a publish or a resync of the contact)
   * while another transaction holds that retry (a claim, a replay, a record): `run` does not wait for it and leaves it
   * retrying beside the newer pending delivery. The retry's id.
   */
  async function retryLeftBehind(
    store: PostgresStore,
    url: string,
    account: string,
    run: (store: PostgresStore, account: string) => Promise<unknown>,
  ): Promise<string> {
    await store.upsertWebhook(account, HOOK, T0);
    await store.publish({ accountId: account, now: T0, messages: [storedMessage('a')] });
    const [c] = await store.claimDue({ lane: 'first', limit: 1, now: T0, leaseMs: 60_000, owner: 'w' });
    expect(await store.freeze(c!.delivery.id, 'w', new Uint8Array([1]), [], T0)).toBe(true);
    const retry = { ...deliveredFirstTime(c!), nextState: 'retrying' as const };
    retry.attempt = { ...retry.attempt, statusCode: 503, verdict: 'retry', nextAttemptAt: T0 + 10 };
    expect((await store.recordAttempt(c!.delivery.id, retry))?.state).toBe('retrying');
    const holder = new pg.Client({ connectionString: url });
    await holder.connect();
    let done: Promise<unknown> | undefined;
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE', [c!.delivery.id]);
      done = run(store, account);
      const first = await Promise.race([
        done.then(() => 'done'),
        new Promise((resolve) => setTimeout(() => resolve('waiting'), 800)),
      ]);
      expect(first).toBe('done');
    } finally {
      await holder.query('COMMIT');
      await holder.end();
      await done;
    }
    expect((await store.getDelivery(c!.delivery.id))?.delivery.state).toBe('retrying');
    return c!.delivery.id;
  }

  const publishA = (store: PostgresStore, account: string) =>
    store.publish({ accountId: account, now: T0 + 20, messages: [storedMessage('a')] });

  // A record locks by key, and so waited for a resync's or a publish's locks in another order than they took them: a
  // deadlock, deadlock_timeout long. Both now take the retries they can lock now (SKIP LOCKED).
  it.each([
    { call: 'resync', run: (store: PostgresStore, account: string) => store.resync(account, ['a'], T0 + 20) },
    { call: 'publish', run: publishA },
  ])(
    '$call supersedes retries without waiting for one another transaction holds; that one is superseded at its claim',
    async ({ run }) => {
      await withOwnDatabase(
        async (store, url) => {
          const retryId = await retryLeftBehind(store, url, 'acct', run);
          // Left retrying, the older list is superseded when claimed, never sent after the pending delivery.
          expect(await store.claimDue({ lane: 'retry', limit: 10, now: T0 + 20, leaseMs: 60_000, owner: 'w' })).toEqual(
            [],
          );
          const [pending] = await store.claimDue({
            lane: 'first',
            limit: 10,
            now: T0 + 20,
            leaseMs: 60_000,
            owner: 'w',
          });
          expect((await store.getDelivery(retryId))?.delivery).toMatchObject({
            state: 'superseded',
            supersededBy: pending!.delivery.id,
          });
        },
        { poolSize: 4 },
      );
    },
  );

  it('RetryDelivery of a retry left behind beside a newer delivery answers with the newer one, never "retried"', async () => {
    // Made due again and answered replacedByNewer: false, the retry was then superseded by its claim and never sent:
    // the caller was told of a retry that could not happen.
    await withOwnDatabase(
      async (store, url) => {
        const retryId = await retryLeftBehind(store, url, 'acct', publishA);
        const pendingId = (await store.listDeliveries({ accountId: 'acct', states: ['pending'] }, 10, null))
          .deliveries[0]!.id;
        const replay = await store.retryDelivery(retryId, T0 + 30);
        expect({ replaced: replay?.replacedByNewer, id: replay?.delivery.id, state: replay?.delivery.state }).toEqual({
          replaced: true,
          id: pendingId,
          state: 'pending',
        });
        expect((await store.getDelivery(retryId))?.delivery).toMatchObject({
          state: 'superseded',
          supersededBy: pendingId,
        });
      },
      { poolSize: 4 },
    );
  });

  describe('batched records and freezes (they lock their deliveries in seq order, without the webhook) against', () => {
    /** Attempt `attemptNo` of `c` by owner `w`, answered 200 at T0 + 21: it ends the delivery (a batched record). */
    const delivered = (c: ClaimedDelivery, attemptNo: number): AttemptResult => ({
      owner: 'w',
      attempt: { ...deliveredFirstTime(c).attempt, attemptNo, startedAt: T0 + 21 },
      nextState: 'delivered',
    });
    const RECORD = 'SET state = c.state';

    /**
     * Another session holds the delivery `heldId` for a moment; `batch` (a batched record or freeze, whose statement
     * contains `statement`) waits for it, then a DeleteWebhook of `account` comes and waits too. Once the row is let
     * go, both end without either waiting out a deadlock (deadlock_timeout, 1 s, then run again); the batch's answers.
     */
    async function batchThenDelete<T>(
      store: PostgresStore,
      url: string,
      account: string,
      heldId: string,
      statement: string,
      batch: () => Promise<T[]>,
    ): Promise<T[]> {
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      let batched: Promise<T[]> | undefined;
      let deleting: Promise<boolean> | undefined;
      try {
        await holder.query('BEGIN');
        await holder.query('SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE', [heldId]);
        batched = batch();
        await until(() => waiting(holder, statement));
        let deleted = false;
        deleting = store.deleteWebhook(account).finally(() => (deleted = true));
        await until(async () => deleted || (await waiting(holder, 'DELETE FROM deliveries')));
        const released = Date.now();
        await holder.query('COMMIT');
        const answers = await batched;
        expect(await deleting).toBe(true);
        expect(Date.now() - released).toBeLessThan(800);
        return answers;
      } finally {
        await holder.end();
        await Promise.allSettled([batched, deleting]);
      }
    }

    it("DeleteWebhook, by a record: neither waits out a deadlock (deadlock_timeout), as the delete locks the account's deliveries in seq order too", async () => {
      await withOwnDatabase(
        async (store, url) => {
          const account = 'acct';
          await store.upsertWebhook(account, HOOK, T0);
          // The account's history: 2,000 finished deliveries. Statistics that show them make a delete of the account's
          // deliveries a bitmap scan, which takes the rows in their order in the table, not in seq order.
          await sql(
            url,
            `INSERT INTO deliveries (id, account_id, external_customer_id, state, created_at, updated_at)
             SELECT 'old-' || g, $1, 'old-' || g, 'delivered', $2, $2 FROM generate_series(1, 2000) g`,
            [account, T0],
          );
          await sql(url, 'ANALYZE deliveries');
          // x's delivery before y's (seq), then frozen after it: its row's newest version comes after y's in the table.
          await store.publish({ accountId: account, now: T0, messages: ['x', 'y'].map((c) => storedMessage(c)) });
          const claimed = await store.claimDue({ lane: 'first', limit: 10, now: T0, leaseMs: 60_000, owner: 'w' });
          const [x, y] = ['x', 'y'].map((contact) => claimed.find((c) => c.delivery.externalCustomerId === contact)!);
          // (At T0 + 1: a changed updated_at makes the update a new row version with index entries of its own, not a HOT
          // one, which a scan reaches through the row's first version.)
          for (const c of [y!, x!]) {
            expect(await store.freeze(c.delivery.id, 'w', new Uint8Array([1]), [], T0 + 1)).toBe(true);
          }
          const order = await sql(
            url,
            `SELECT x.seq < y.seq AS seq_before, x.ctid > y.ctid AS row_after FROM deliveries x, deliveries y
             WHERE x.id = $1 AND y.id = $2`,
            [x!.delivery.id, y!.delivery.id],
          );
          expect(order.rows[0]).toEqual({ seq_before: true, row_after: true });

          // Another session (a claim's lease reaper, a record of another process) holds x's delivery for a moment: the
          // record of x and y waits for it, then the DeleteWebhook comes and waits for it too: for x's delivery at
          // once (seq order), or once it has deleted y's, which the record locks next (the table's order, on the code
          // before).
          const answers = await batchThenDelete(store, url, account, x!.delivery.id, RECORD, () =>
            Promise.all([x!, y!].map((c) => store.recordAttempt(c.delivery.id, delivered(c, 1)))),
          );
          expect(answers.map((d) => d?.state)).toEqual(['delivered', 'delivered']);
          // Every delivery of the account is gone, with its attempts.
          expect((await sql(url, 'SELECT count(*)::int AS n FROM deliveries')).rows[0].n).toBe(0);
          expect((await sql(url, 'SELECT count(*)::int AS n FROM attempts')).rows[0].n).toBe(0);
        },
        { poolSize: 4 },
      );
    });

    it('DeleteWebhook, by a freeze: neither waits out a deadlock (deadlock_timeout), as the freeze locks its deliveries in seq order too', async () => {
      await withOwnDatabase(
        async (store, url) => {
          const account = 'acct';
          await store.upsertWebhook(account, HOOK, T0);
          // x's delivery before y's (seq); y's asked first, its id first (an id starts with its publish's time; in one
          // publish its contacts' ids differ by random bits only) and its row first: locked as found, in the order of
          // the calls, of the ids or of the rows (the plan's), y's went first.
          await store.publish({ accountId: account, now: T0 + 5, messages: [storedMessage('x')] });
          await store.publish({ accountId: account, now: T0, messages: [storedMessage('y')] });
          const claimed = await store.claimDue({ lane: 'first', limit: 10, now: T0 + 5, leaseMs: 60_000, owner: 'w' });
          const [x, y] = ['x', 'y'].map((contact) => claimed.find((c) => c.delivery.externalCustomerId === contact)!);
          expect(y!.delivery.id < x!.delivery.id).toBe(true);
          // And x's row after y's in the table (where any update of it may put it: a claim's, a release's).
          await sql(url, 'UPDATE deliveries SET updated_at = updated_at + 1 WHERE id = $1', [x!.delivery.id]);

          // Another session (a record of another process, say) holds y's delivery for a moment: the freeze of x and y
          // waits for it, then the DeleteWebhook comes and waits: for x's delivery, which the freeze holds (seq
          // order), or (on the code before) for y's, once it has deleted x's, which the freeze locks next.
          const answers = await batchThenDelete(store, url, account, y!.delivery.id, 'SET body = ', () =>
            Promise.all([y!, x!].map((c) => store.freeze(c.delivery.id, 'w', new Uint8Array([1]), [], T0 + 6))),
          );
          expect(answers).toEqual([true, true]);
          expect((await sql(url, 'SELECT count(*)::int AS n FROM deliveries')).rows[0].n).toBe(0);
        },
        { poolSize: 4 },
      );
    });

    it('a publish superseding retries: neither waits out a deadlock (deadlock_timeout), as the publish leaves a retry another transaction holds', async () => {
      await withOwnDatabase(
        async (store, url) => {
          const account = 'acct';
          await store.upsertWebhook(account, HOOK, T0);
          // b's delivery before a's (seq), both retrying: a record locks b's first, a publish to both supersedes a's first.
          for (const contact of ['b', 'a']) {
            await store.publish({ accountId: account, now: T0, messages: [storedMessage(contact)] });
          }
          for (const c of await store.claimDue({ lane: 'first', limit: 10, now: T0, leaseMs: 60_000, owner: 'w' })) {
            expect(await store.freeze(c.delivery.id, 'w', new Uint8Array([1]), [], T0)).toBe(true);
            const retry = { ...deliveredFirstTime(c), nextState: 'retrying' as const };
            retry.attempt = { ...retry.attempt, statusCode: 503, verdict: 'retry', nextAttemptAt: T0 + 10 };
            expect((await store.recordAttempt(c.delivery.id, retry))?.state).toBe('retrying');
          }
          const webhookHolder = new pg.Client({ connectionString: url });
          const rowHolder = new pg.Client({ connectionString: url });
          await webhookHolder.connect();
          await rowHolder.connect();
          let publishing: Promise<unknown> | undefined;
          let records: Promise<Array<Delivery | null>> | undefined;
          try {
            // A publish to a and b begins (its snapshot shows both deliveries retrying) and waits for the webhook, which
            // another session holds for a moment (any slow statement before its supersede would do).
            await webhookHolder.query('BEGIN');
            await webhookHolder.query('SELECT 1 FROM webhooks WHERE account_id = $1 FOR UPDATE', [account]);
            let published = false;
            publishing = store
              .publish({ accountId: account, now: T0 + 20, messages: ['a', 'b'].map((c) => storedMessage(c)) })
              .finally(() => (published = true));
            await until(() => waiting(webhookHolder, 'WITH hook AS'));
            // Meanwhile both retries are claimed again, and a's is held by another session for a moment.
            const retried = await store.claimDue({
              lane: 'retry',
              limit: 10,
              now: T0 + 20,
              leaseMs: 60_000,
              owner: 'w',
            });
            const [a, b] = ['a', 'b'].map((contact) => retried.find((c) => c.delivery.externalCustomerId === contact)!);
            await rowHolder.query('BEGIN');
            await rowHolder.query('SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE', [a!.delivery.id]);
            await webhookHolder.query('COMMIT');
            // The publish's supersede comes to a's delivery, in flight since its snapshot: it waits for it to lock it (on
            // the code before, then b's), or leaves it.
            await until(async () => published || (await waiting(rowHolder, 'WITH hook AS')));
            // Both attempts end in one record: b's delivery locked first (seq), then a's.
            records = Promise.all([b!, a!].map((c) => store.recordAttempt(c.delivery.id, delivered(c, 2))));
            await until(() => waiting(rowHolder, RECORD));
            const released = Date.now();
            await rowHolder.query('COMMIT');
            const answers = await records;
            await publishing;
            // A deadlock is found only once one of them has waited deadlock_timeout (1 s), then run again.
            expect(Date.now() - released).toBeLessThan(800);
            expect(answers.map((d) => d?.state)).toEqual(['delivered', 'delivered']);
          } finally {
            await webhookHolder.end();
            await rowHolder.end();
            await Promise.allSettled([publishing, records]);
          }
          // The publish's messages wait in a pending delivery of each contact.
          const open = await store.listDeliveries({ accountId: account, states: ['pending'] }, 10, null);
          expect(open.deliveries.map((d) => d.externalCustomerId).sort()).toEqual(['a', 'b']);
        },
        { poolSize: 4 },
      );
    });
  });

  describe('leaseRateTokens: the rate-limit bucket every process shares', () => {
    /** Moves the account's bucket `ms` into the past, as if that much time had gone by since its last lease. */
    const age = (account: string, ms: number) =>
      sql(
        db.url,
        `UPDATE rate_buckets SET refilled_at = refilled_at - $2 * interval '1 millisecond' WHERE account_id = $1`,
        [account, ms],
      );

    it('starts full, refills by the database clock at the rate, and never holds more than one second of it', async () => {
      const store = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
      /**
       * Leases and checks what came: `granted` exactly, and the wait for the next token at most `maxMs`, and more than 0
       * when `maxMs` is: the bucket keeps refilling between two statements, by the few ms the test takes (more on a
       * loaded machine), so only the bounds are exact.
       */
      const lease = async (account: string, rate: number, want: number, granted: number, maxMs: number) => {
        const got = await store.leaseRateTokens(account, rate, want);
        expect(got.granted).toBe(granted);
        expect(got.nextTokenInMs).toBeLessThanOrEqual(maxMs);
        if (maxMs > 0) expect(got.nextTokenInMs).toBeGreaterThan(0);
        return got;
      };
      try {
        const account = `acct-${randomUUID()}`;
        // Full at first: a second's worth, no more, then empty until the next token (1/5 s).
        await lease(account, 5, 3, 3, 0);
        await lease(account, 5, 5, 2, 200);
        await lease(account, 5, 5, 0, 200);
        // 450 ms later: two tokens and a quarter of one.
        await age(account, 450);
        await lease(account, 5, 5, 2, 150);
        // An hour later: still one second's worth.
        await age(account, 3_600_000);
        await lease(account, 5, 5, 5, 200);
        // A lowered rate holds the bucket to its own size at once.
        await age(account, 3_600_000);
        await lease(account, 2, 1, 1, 0);
        await lease(account, 2, 2, 1, 500);
        // A bad argument is refused before the database is asked.
        await expect(store.leaseRateTokens(account, 5, 6)).rejects.toMatchObject({ code: 'invalid_argument' });
        await expect(store.leaseRateTokens(account, 0, 1)).rejects.toMatchObject({ code: 'invalid_argument' });
      } finally {
        await store.close();
      }
    });

    it("keeps refilling after the database's clock is set back", async () => {
      // Before: the row kept the later time it had (GREATEST of the two), so nothing refilled until the clock caught up
      // with it: set back an hour (a step of NTP, a failover to a server whose clock is behind), every rate-limited
      // webhook on the database got no request for an hour.
      const store = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
      try {
        const account = `acct-${randomUUID()}`;
        expect((await store.leaseRateTokens(account, 5, 5)).granted).toBe(5);
        // The row's time an hour ahead of the clock: as if the clock had been set back an hour since.
        await age(account, -3_600_000);
        expect((await store.leaseRateTokens(account, 5, 5)).granted).toBe(0);
        // A second at 5 a second refills the bucket as it would have without the step.
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        expect((await store.leaseRateTokens(account, 5, 5)).granted).toBeGreaterThanOrEqual(4);
      } finally {
        await store.close();
      }
    });

    it('never gives two processes leasing at once more than the bucket holds together', async () => {
      const stores = [
        await openPostgresStore({ connectionString: db.url, poolSize: 4 }),
        await openPostgresStore({ connectionString: db.url, poolSize: 4 }),
      ];
      try {
        const account = `acct-${randomUUID()}`;
        const RATE = 40;
        const started = performance.now();
        // 2 x 40 leases of 3 tokens at once, 240 wanted from a bucket of 40 refilled at 40 a second.
        const leases = await Promise.all(
          stores.flatMap((store) => Array.from({ length: 40 }, () => store.leaseRateTokens(account, RATE, 3))),
        );
        const elapsedS = (performance.now() - started) / 1000;
        const granted = leases.reduce((sum, l) => sum + l.granted, 0);
        // All of the full bucket went, and no more than what it refilled while the leases ran (the database read its
        // clock within the test's interval).
        expect(granted).toBeGreaterThanOrEqual(RATE);
        expect(granted).toBeLessThanOrEqual(RATE + Math.floor(elapsedS * RATE));
        expect(leases.every((l) => l.granted >= 0 && l.granted <= 3)).toBe(true);
        // Both processes were answered by the same bucket: an empty lease says when the next token comes.
        expect(leases.filter((l) => l.granted === 0).every((l) => l.nextTokenInMs > 0)).toBe(true);
      } finally {
        await Promise.all(stores.map((s) => s.close()));
      }
    });

    it('says how long a lease waited for a connection, which the bucket cannot have handed tokens out during', async () => {
      // Before: nothing said it, and the limiter counted the tokens' 250 ms from the call: a lease that waited that
      // long for a connection of a busy pool brought tokens already expired, and its endpoint's deliveries waited.
      const store = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
      const holder = new pg.Client({ connectionString: db.url });
      await holder.connect();
      try {
        const [busy, queued] = [`acct-${randomUUID()}`, `acct-${randomUUID()}`];
        await store.leaseRateTokens(busy, 5, 1);
        // Another session locks the first account's row: its next lease holds the store's only connection meanwhile.
        await holder.query('BEGIN');
        await holder.query('SELECT 1 FROM rate_buckets WHERE account_id = $1 FOR UPDATE', [busy]);
        const blocked = store.leaseRateTokens(busy, 5, 1);
        await new Promise((resolve) => setTimeout(resolve, 50));
        const started = performance.now();
        const waiting = store.leaseRateTokens(queued, 5, 1);
        await new Promise((resolve) => setTimeout(resolve, 300));
        await holder.query('COMMIT');
        const [first, second] = await Promise.all([blocked, waiting]);
        const elapsed = performance.now() - started;
        // The blocked one had its connection at once (its wait was for the row, in the database).
        expect(first.queuedMs).toBeLessThan(50);
        expect(first.granted).toBe(1);
        // The other one waited for the connection, at least until the commit, and no longer than the whole call.
        expect(second.queuedMs).toBeGreaterThanOrEqual(290);
        expect(second.queuedMs).toBeLessThanOrEqual(elapsed);
        expect(second.granted).toBe(1);
      } finally {
        await holder.end();
        await store.close();
      }
    });

    it('deletes the bucket with the webhook', async () => {
      const store = await openPostgresStore({ connectionString: db.url, poolSize: 1 });
      try {
        const account = `acct-${randomUUID()}`;
        await store.upsertWebhook(account, HOOK, T0);
        await store.leaseRateTokens(account, 5, 5);
        const rows = async () =>
          (await sql(db.url, 'SELECT count(*)::int AS n FROM rate_buckets WHERE account_id = $1', [account])).rows[0].n;
        expect(await rows()).toBe(1);
        expect(await store.deleteWebhook(account)).toBe(true);
        expect(await rows()).toBe(0);
      } finally {
        await store.close();
      }
    });
  });
});
