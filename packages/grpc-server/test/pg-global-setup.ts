/**
 * vitest global setup: when APP_INBOX_TEST_PG_URL is not set and a PostgreSQL server is installed (Debian's
 * `postgresql` package: /usr/lib/postgresql/<version>/bin), starts the throwaway cluster of
 * `scripts/pg-test-cluster.sh` on a free port for this run, exports its URL to the test files (and the server
 * processes they start), and stops it at the end. So `npm test` needs no sourced script on a machine with PostgreSQL
 * installed; `.ci/run` (and anyone who set the variable) keeps its own server. With no PostgreSQL installed nothing
 * starts, and the PostgreSQL tests fail naming the variable (test-db.ts): never a skip.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { TEST_PG_URL_VARIABLE } from '../src/store/postgres/test-db.js';

const SCRIPT = fileURLToPath(new URL('../../../scripts/pg-test-cluster.sh', import.meta.url));
const POSTGRES_LIB = '/usr/lib/postgresql';

function postgresInstalled(): boolean {
  if (!existsSync(POSTGRES_LIB)) return false;
  return readdirSync(POSTGRES_LIB).some((version) => existsSync(`${POSTGRES_LIB}/${version}/bin/initdb`));
}

/** A TCP port free on 127.0.0.1 right now. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

export default async function setup(): Promise<(() => void) | undefined> {
  const configured = process.env[TEST_PG_URL_VARIABLE];
  if ((configured !== undefined && configured !== '') || !postgresInstalled()) return undefined;
  const port = await freePort();
  // The script's own start (initdb, pg_ctl; as the postgres user when run as root); it prints its data directory.
  const started = execFileSync(
    'bash',
    ['-c', `source "${SCRIPT}" && pg_cluster_start >&2 && echo "$PG_TEST_DIR" && echo "$PG_TEST_BIN"`],
    {
      env: { ...process.env, APP_INBOX_TEST_PG_PORT: String(port) },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  )
    .trim()
    .split('\n');
  const [dir, bin] = [started.at(-2), started.at(-1)];
  process.env[TEST_PG_URL_VARIABLE] = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return () => {
    execFileSync('bash', ['-c', `source "${SCRIPT}" && pg_cluster_stop`], {
      env: { ...process.env, PG_TEST_DIR: dir, PG_TEST_BIN: bin },
      stdio: 'inherit',
    });
  };
}
