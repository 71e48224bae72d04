/**
 * One server per SQLite file. The SQLite store serves one process: its account keys and its outcome notifications
 * live in that process, and a second server on the same file would claim beside it with neither seeing the other's
 * state. A server therefore holds an exclusive SQLite lock on `<database>.lock` (a small file beside the database)
 * for as long as it runs: SQLite's own file locks, which the operating system releases when the process ends, however
 * it ends (SIGKILL included), so a crash never leaves a stale lock behind. Other processes that only open the store
 * (the reseal command) do not take it.
 */
import Database from 'better-sqlite3';

/** Raised when another server holds the lock of the database. */
export class SqliteServerLockedError extends Error {
  override readonly name = 'SqliteServerLockedError';
  constructor(readonly lockFile: string) {
    super(
      `another server is running on this SQLite database (it holds ${lockFile}): SQLite serves one server process; ` +
        'stop that one, or use PostgreSQL (--store postgres://...) for several',
    );
  }
}

/** The lock file of the database at `path`. */
export function serverLockFile(path: string): string {
  return `${path}.lock`;
}

/**
 * Takes the server lock of the SQLite database at `path`, or throws {@link SqliteServerLockedError} at once when
 * another server (in this process or another) holds it. `release()` gives it back (idempotent).
 */
export function lockSqliteForServer(path: string): { file: string; release(): void } {
  const file = serverLockFile(path);
  // timeout 0: a held lock is an answer, not something to wait for.
  const db = new Database(file, { timeout: 0 });
  try {
    db.pragma('locking_mode = EXCLUSIVE');
    // Nothing is ever written: no journal file beside it either.
    db.pragma('journal_mode = MEMORY');
    db.exec('BEGIN EXCLUSIVE');
  } catch (error) {
    db.close();
    if ((error as { code?: unknown }).code === 'SQLITE_BUSY') throw new SqliteServerLockedError(file);
    throw error;
  }
  return {
    file,
    release() {
      if (db.open) db.close();
    },
  };
}
