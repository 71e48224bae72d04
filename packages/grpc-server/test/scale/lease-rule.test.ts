/**
 * The lease rule of issue 5: a claim's lease must be longer than the request timeout, or a slow receiver
 * could have the same delivery in flight on two workers (the first still waiting for its answer when the
 * second takes the expired claim). The server refuses such a configuration before it touches the store,
 * from the command line (exit 2) and from `startServer` alike.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineOptionError } from '../../src/delivery/engine.js';
import { startServer } from '../../src/server.js';
import { createTestDatabase } from '../../src/store/postgres/test-db.js';
import { TEST_SECRET_KEYS, testConfig } from '../e2e/harness.js';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

/** Whether the migrations ran on a database (its schema_migrations table exists). */
async function migrated(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ t: string | null }>(`SELECT to_regclass('schema_migrations')::text AS t`);
    return rows[0]?.t !== null;
  } finally {
    await client.end();
  }
}

describe('the lease must be longer than the request timeout', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterAll(async () => {
    for (const fn of cleanups.splice(0)) await fn();
  });

  it.each([
    ['equal to', '5000', '5000'],
    ['shorter than', '4000', '5000'],
  ])(
    'the process refuses a lease %s the timeout (exit 2), leaving the database untouched',
    async (_, lease, timeout) => {
      const database = await createTestDatabase();
      cleanups.push(() => database.drop());
      const result = spawnSync(
        process.execPath,
        [
          '--conditions=@app-inbox/source',
          '--import',
          'tsx',
          'src/main.ts',
          '--store',
          database.url,
          '--grpc-address',
          '127.0.0.1:0',
          '--lease-ms',
          lease,
          '--request-timeout-ms',
          timeout,
        ],
        {
          cwd: PACKAGE_DIR,
          env: { ...process.env, NODE_OPTIONS: '', APP_INBOX_SECRET_KEYS: TEST_SECRET_KEYS },
          encoding: 'utf8',
          timeout: 20_000,
        },
      );
      expect(result.status).toBe(2);
      expect(result.stderr).toContain(
        `--lease-ms (${lease}) must be greater than --request-timeout-ms (${timeout}), or another worker could take over a live attempt`,
      );
      expect(result.stdout).toBe(''); // nothing started, not even a log line
      expect(await migrated(database.url)).toBe(false);
    },
  );

  it('startServer refuses it too, naming leaseMs, before it creates a SQLite file or migrates a database', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'app-inbox-lease-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const database = await createTestDatabase();
    cleanups.push(() => database.drop());
    const sqlitePath = join(dir, 'never', 'store.db');
    for (const store of [sqlitePath, database.url]) {
      const refused = await startServer(testConfig(store, { requestTimeoutMs: 2_000, leaseMs: 2_000 })).then(
        () => null,
        (error: unknown) => error,
      );
      expect(refused).toBeInstanceOf(EngineOptionError);
      expect(refused).toMatchObject({ code: 'INVALID_ENGINE_OPTION', option: 'leaseMs' });
      expect((refused as Error).message).toContain('must be greater than requestTimeoutMs (2000), got 2000');
    }
    expect(existsSync(join(dir, 'never'))).toBe(false);
    expect(await migrated(database.url)).toBe(false);
  });
});
