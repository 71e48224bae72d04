/**
 * Throwaway databases for tests that need a real PostgreSQL (issue 5: no mock of the database).
 * The server comes from `APP_INBOX_TEST_PG_URL` (`scripts/pg-test-cluster.sh` starts one and exports
 * it; `.ci/run` does the same); each call creates its own database there, so test files never share
 * state and can run side by side.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** The variable naming the test server: a URL whose user may CREATE DATABASE. */
export const TEST_PG_URL_VARIABLE = 'APP_INBOX_TEST_PG_URL';

/** The server URL for tests; a clear error (not a skip) when it is not configured. */
export function testServerUrl(): string {
  const url = process.env[TEST_PG_URL_VARIABLE];
  if (url === undefined || url === '') {
    throw new Error(
      `${TEST_PG_URL_VARIABLE} is not set: the PostgreSQL tests need a real server. Install Debian's postgresql ` +
        'package (the grpc-server suite then starts a throwaway cluster for its run), start one with ' +
        '`source scripts/pg-test-cluster.sh && pg_cluster_start` (it exports the variable), or set ' +
        `${TEST_PG_URL_VARIABLE}=postgres://user@host:port/postgres for a server where that user may CREATE DATABASE.`,
    );
  }
  return url;
}

/** Creates `app_inbox_test_<random>` on the test server; `drop()` removes it, closing its connections. */
export async function createTestDatabase(): Promise<{ url: string; name: string; drop(): Promise<void> }> {
  const server = testServerUrl();
  const name = `app_inbox_test_${randomBytes(6).toString('hex')}`;
  await withAdmin(server, (admin) => admin.query(`CREATE DATABASE ${name}`));
  const url = new URL(server);
  url.pathname = `/${name}`;
  let dropped = false;
  return {
    url: url.toString(),
    name,
    async drop() {
      if (dropped) return;
      dropped = true;
      await withAdmin(server, (admin) => admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
}

async function withAdmin(url: string, fn: (client: pg.Client) => Promise<unknown>): Promise<void> {
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    await fn(admin);
  } finally {
    await admin.end();
  }
}
