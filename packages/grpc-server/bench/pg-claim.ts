/**
 * `npm run bench:pg-claim -w @app-inbox/grpc-server -- [--pg URL] [--contacts 40000] [--claims 200]`:
 * what one claim of 32 deliveries costs PostgreSQL in three states of the planner's statistics: right after a
 * burst (`deliveries` last analyzed when it held 100 rows, `webhooks` never: autovacuum analyzes a table only
 * after 50 of its rows changed, which a handful of accounts never reach), once `deliveries` is analyzed, and with
 * both analyzed. The claim statement is the store's own (`CLAIM_SQL`), run as a named statement inside a
 * transaction that is rolled back, so every call sees the same pending deliveries. Equal medians mean the plan
 * does not depend on the statistics (the point of its primary-key probes: see `claimSql` in postgres-store.ts).
 */
import type { StoredMessage } from '@app-inbox/core';
import { Command } from 'commander';
import pg from 'pg';
import { CLAIM_SQL, openPostgresStore, type PostgresStore } from '../src/store/postgres/postgres-store.js';
import { positiveInt } from './lib/cli.js';
import { storedMessage } from './lib/publish.js';
import { fmt, percentile, wallMs } from './lib/stats.js';
import { withDatabase } from './scenarios/postgres.js';

const BATCH = 32;

/** `count` contacts from `from` on, 3 messages each, published in calls of 1,000 contacts. */
async function publishContacts(store: PostgresStore, from: number, count: number, now: number): Promise<void> {
  for (let start = from; start < from + count; start += 1_000) {
    const messages: StoredMessage[] = [];
    for (let c = start; c < Math.min(from + count, start + 1_000); c++) {
      const contact = `contact-${String(c).padStart(7, '0')}`;
      messages.push(storedMessage(contact, now), storedMessage(contact, now), storedMessage(contact, now));
    }
    await store.publish({ accountId: 'bench', now, messages });
  }
}

/** Milliseconds of each of `claims` claims of {@link BATCH}, each rolled back. */
async function timeClaims(client: pg.Client, claims: number, now: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < claims; i++) {
    await client.query('BEGIN');
    const t0 = wallMs();
    const { rows } = await client.query({
      name: 'claim_first',
      text: CLAIM_SQL.first,
      values: [now, [], BATCH, BATCH, 'bench', now + 60_000, Number.MAX_SAFE_INTEGER],
    });
    times.push(wallMs() - t0);
    await client.query('ROLLBACK');
    if (rows.length !== BATCH) throw new Error(`a claim took ${rows.length} deliveries, not ${BATCH}`);
  }
  return times;
}

async function main(): Promise<void> {
  const opts = new Command()
    .option('--pg <url>', 'PostgreSQL server (a database is created and dropped)', process.env.APP_INBOX_TEST_PG_URL)
    .option('--contacts <n>', 'pending deliveries published after the statistics were taken', positiveInt, 40_000)
    .option('--claims <n>', 'claims timed in each state of the statistics', positiveInt, 200)
    .parse()
    .opts<{ pg?: string; contacts: number; claims: number }>();
  if (!opts.pg) throw new Error('--pg URL or APP_INBOX_TEST_PG_URL is required');

  await withDatabase(opts.pg, async (url) => {
    const store = await openPostgresStore({ connectionString: url, poolSize: 2 });
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const now = Date.now();
      await store.upsertWebhook(
        'bench',
        { url: 'https://receiver.example/h', maxMessagesPerContact: 1000, enabled: true },
        now,
      );
      await publishContacts(store, 0, 100, now);
      await client.query('ANALYZE deliveries');
      await publishContacts(store, 100, opts.contacts, now);
      // The store's own sessions run without JIT (see the PostgresStore constructor); so does this one.
      await client.query('SET jit = off');
      const states: Array<[string, number[]]> = [];
      states.push(['deliveries analyzed at 100 rows, webhooks never', await timeClaims(client, opts.claims, now + 1)]);
      await client.query('ANALYZE deliveries');
      states.push(['deliveries analyzed, webhooks never', await timeClaims(client, opts.claims, now + 1)]);
      await client.query('ANALYZE webhooks');
      states.push(['both analyzed', await timeClaims(client, opts.claims, now + 1)]);
      console.log(
        `${fmt(opts.contacts + 100)} pending deliveries, claims of ${BATCH} (median of ${opts.claims} each, rolled back):`,
      );
      const last = percentile(states[2]![1], 50);
      for (const [label, times] of states) {
        const p50 = percentile(times, 50);
        console.log(`  ${`${label}:`.padEnd(52)} ${p50.toFixed(3)} ms (${((p50 / last) * 100).toFixed(0)}%)`);
      }
    } finally {
      await client.end();
      await store.close();
    }
  });
}

await main();
