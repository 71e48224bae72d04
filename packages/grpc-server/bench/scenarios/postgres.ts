/**
 * Scenario 6, PostgreSQL: scenarios 1 and 2 on the shared store, with one and with two server processes
 * on one fresh database each (created, then dropped). With two processes the publishes alternate between
 * them and both deliver to the same receiver; the raw ceiling then uses both processes' connections.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { newResult, type BenchContext, type ScenarioResult } from '../lib/context.js';
import { measureEndToEnd } from './end-to-end.js';
import { measureIngest } from './ingest.js';

async function admin(url: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** A fresh database on the server of `serverUrl`, dropped after `fn`. */
export async function withDatabase<T>(serverUrl: string, fn: (url: string) => Promise<T>): Promise<T> {
  const name = `app_inbox_bench_${randomBytes(5).toString('hex')}`;
  await admin(serverUrl, `CREATE DATABASE ${name}`);
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  try {
    return await fn(url.toString());
  } finally {
    await admin(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
}

export async function runPostgres(ctx: BenchContext): Promise<ScenarioResult> {
  const result = newResult('6', 'PostgreSQL: scenarios 1 and 2 with one and two server processes');
  const serverUrl = ctx.options.pgUrl;
  if (serverUrl === null) {
    result.notes.push('skipped: set APP_INBOX_TEST_PG_URL or pass --pg URL (a user that may CREATE DATABASE)');
    return result;
  }
  const total = ctx.options.quick ? 50_000 : 200_000;
  const sizes = ctx.options.quick
    ? { burst: 5_000, latencySeconds: 5, rawSeconds: 3 }
    : { burst: 20_000, latencySeconds: 10, rawSeconds: 5 };
  for (const count of [1, 2]) {
    const prefix = `${count} proc.: `;
    await withDatabase(serverUrl, (url) =>
      ctx.withServers(`s6-pg-${count}p`, url, count, [], result, async (servers, clients) => {
        await measureIngest(ctx, servers, clients, total, result, prefix);
        await measureEndToEnd(ctx, servers, clients, sizes, ctx.options.connections * count, result, prefix);
      }),
    );
  }
  return result;
}
