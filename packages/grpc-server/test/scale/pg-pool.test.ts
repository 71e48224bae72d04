/**
 * `--pg-pool-size`: how many PostgreSQL connections one server process opens at most (plus its LISTEN
 * connection), so that N processes can be fitted under the server's `max_connections`. @see POSTGRES.md
 */
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.js';
import { createTestDatabase } from '../../src/store/postgres/test-db.js';
import { accountId, inboxMessage, startTestServer, type TestServer } from '../e2e/harness.js';

describe('the PostgreSQL pool size option', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterAll(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn();
  });

  it('is read from --pg-pool-size or APP_INBOX_PG_POOL_SIZE, 10 by default, 1 to 1,000', () => {
    expect(loadConfig([], {}).pgPoolSize).toBe(10);
    expect(loadConfig(['--pg-pool-size', '4'], {}).pgPoolSize).toBe(4);
    expect(loadConfig([], { APP_INBOX_PG_POOL_SIZE: '25' }).pgPoolSize).toBe(25);
    let error: unknown;
    try {
      loadConfig(['--pg-pool-size', '0'], {});
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems).toEqual([
      '--pg-pool-size (flag) must be an integer from 1 to 1,000; got "0"',
    ]);
  });

  it('bounds the connections a server opens, however many calls run at once', async () => {
    const database = await createTestDatabase();
    cleanups.push(() => database.drop());
    const t: TestServer = await startTestServer(database.url, { pgPoolSize: 2 });
    cleanups.push(() => t.stop());
    const sql = new pg.Client({ connectionString: database.url });
    await sql.connect();
    cleanups.push(() => sql.end());

    const account = accountId();
    await t.clients.upsertWebhook({ accountId: account, url: 'http://127.0.0.1:9/in', signingSecret: '' });
    // Forty reads at once: a pool of 10 would open more than two connections for them.
    let peak = 0;
    const sample = async () => {
      const { rows } = await sql.query<{ n: string }>(
        'SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()',
      );
      peak = Math.max(peak, Number(rows[0]?.n));
    };
    for (let round = 0; round < 5; round++) {
      const reads = Array.from({ length: 40 }, () => t.clients.getWebhook({ accountId: account }));
      await Promise.all([...reads, sample()]);
      await sample();
    }
    // Two pool connections plus the LISTEN one.
    expect(peak).toBeGreaterThanOrEqual(2);
    expect(peak).toBeLessThanOrEqual(3);
  });

  it('makes a call wait for a free connection behind a long statement, not fail after the connect timeout', async () => {
    // The connect timeout (10 s) bounds opening a connection only: on the pool it also bounded the wait for a free
    // one, and a publish waiting behind a statement held up by a lock failed with INTERNAL after 10 s.
    const database = await createTestDatabase();
    cleanups.push(() => database.drop());
    const t = await startTestServer(database.url, { pgPoolSize: 1 });
    cleanups.push(() => t.stop());
    const account = accountId();
    await t.clients.upsertWebhook({ accountId: account, url: 'http://127.0.0.1:9/in', signingSecret: '' });

    const locker = new pg.Client({ connectionString: database.url });
    await locker.connect();
    cleanups.push(() => locker.end());
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE webhooks IN ACCESS EXCLUSIVE MODE');
    const outcome = (call: Promise<unknown>) =>
      call.then(
        () => 'ok',
        (error: { code?: number; details?: string }) => `error ${error.code}: ${error.details}`,
      );
    // The pool's only connection waits for the lock; the publish waits for that connection.
    const first = outcome(t.clients.getWebhook({ accountId: account }));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const publish = outcome(t.clients.publishMessages({ accountId: account, messages: [inboxMessage('c1')] }));
    setTimeout(() => void locker.query('ROLLBACK'), 11_000);
    expect(await first).toBe('ok');
    expect(await publish).toBe('ok');
  }, 40_000);
});
