/**
 * The store: the durable state of the service and its queue (ARCHITECTURE §3). One interface, two
 * engines; {@link openStore} picks one from a URL.
 */
import { StoreError } from './errors.js';
import { openPostgresStore, type PostgresStoreOptions } from './postgres/postgres-store.js';
import { openSqliteStore, type SqliteStoreOptions } from './sqlite/sqlite-store.js';
import type { Store } from './types.js';

export type * from './types.js';
export { STORE_ERROR_CODES, StoreError, isStoreError } from './errors.js';
export type { StoreErrorCode } from './errors.js';
export {
  DEFAULT_MESSAGE_TTL_MS,
  DELIVERY_STATES,
  TERMINAL_STATES,
  MAX_PAGE_SIZE,
  replacedSigningSecretAt,
} from './shared.js';
export { SqliteStore, openSqliteStore } from './sqlite/sqlite-store.js';
export type { SqliteStoreOptions } from './sqlite/sqlite-store.js';
export { PostgresStore, openPostgresStore } from './postgres/postgres-store.js';
export type { PostgresStoreOptions } from './postgres/postgres-store.js';

/** Engine options that {@link openStore} passes on; the URL decides which apply. */
export interface OpenStoreOptions {
  /** Options of the SQLite engine (the path comes from the URL). Defaults: see {@link SqliteStoreOptions}. */
  sqlite?: Omit<SqliteStoreOptions, 'path'>;
  /** Options of the PostgreSQL engine (the URL is the connection string). Defaults: see {@link PostgresStoreOptions}. */
  postgres?: Omit<PostgresStoreOptions, 'connectionString'>;
}

/**
 * The path a SQLite store location names (`sqlite:<path>` or a plain path; it may be `:memory:` or empty), or null for a
 * PostgreSQL URL (`postgres://`, `postgresql://`, any case).
 */
export function sqlitePath(url: string): string | null {
  if (/^postgres(ql)?:\/\//i.test(url)) return null;
  return url.startsWith('sqlite:') ? url.slice('sqlite:'.length) : url;
}

/** The SQLite database file a store location names, or null for PostgreSQL, `:memory:` or no path. */
export function sqliteFile(url: string): string | null {
  const path = sqlitePath(url);
  return path === null || path === '' || path === ':memory:' ? null : path;
}

/**
 * Opens and migrates the store a URL names:
 * - `postgres://...` or `postgresql://...`: {@link PostgresStore} (several processes may share it);
 * - `sqlite:<path>`, `sqlite::memory:` or a plain file path: {@link SqliteStore} (one process).
 */
export async function openStore(url: string, options: OpenStoreOptions = {}): Promise<Store> {
  if (typeof url !== 'string' || url.trim() === '') {
    throw new StoreError('invalid_argument', 'store: must be a postgres:// URL, sqlite:<path> or a file path');
  }
  const path = sqlitePath(url);
  if (path === null) return openPostgresStore({ ...options.postgres, connectionString: url });
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new StoreError(
      'invalid_argument',
      `store: unsupported scheme in ${url.split(':')[0]}:// (postgres:// or sqlite:)`,
    );
  }
  if (path === '') throw new StoreError('invalid_argument', 'store: sqlite: needs a path, e.g. sqlite:./data/inbox.db');
  return openSqliteStore({ ...options.sqlite, path });
}
