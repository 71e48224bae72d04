/**
 * The global setup of this suite (pg-global-setup.ts): with APP_INBOX_TEST_PG_URL unset and PostgreSQL installed (as
 * .ci/run installs it), it starts a throwaway cluster a client can use, exports its URL, and its teardown stops it.
 */
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { TEST_PG_URL_VARIABLE } from '../src/store/postgres/test-db.js';
import setup from './pg-global-setup.js';

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  try {
    await client.connect();
    return (await client.query<{ one: number }>('SELECT 1 AS one')).rows[0]?.one === 1;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

describe('pg-global-setup', () => {
  const configured = process.env[TEST_PG_URL_VARIABLE];
  afterEach(() => {
    if (configured === undefined) delete process.env[TEST_PG_URL_VARIABLE];
    else process.env[TEST_PG_URL_VARIABLE] = configured;
  });

  it('starts a cluster of its own when none is configured, and its teardown stops it', async () => {
    delete process.env[TEST_PG_URL_VARIABLE];
    const teardown = await setup();
    expect(teardown).toBeTypeOf('function');
    const url = process.env[TEST_PG_URL_VARIABLE];
    expect(url).toMatch(/^postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres$/);
    expect(url).not.toBe(configured);
    expect(await answers(url!)).toBe(true);
    teardown!();
    expect(await answers(url!)).toBe(false);
  }, 60_000);

  it('leaves a configured server alone', async () => {
    expect(await setup()).toBeUndefined();
    expect(process.env[TEST_PG_URL_VARIABLE]).toBe(configured);
  });
});
