import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteServerLockedError, lockSqliteForServer } from './server-lock.js';

describe('lockSqliteForServer', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a second holder (in the same process too) until the first releases, once or twice', () => {
    const dir = mkdtempSync(join(tmpdir(), 'server-lock-'));
    dirs.push(dir);
    const path = join(dir, 'store.db');
    const first = lockSqliteForServer(path);
    expect(first.file).toBe(`${path}.lock`);
    expect(existsSync(`${path}.lock-journal`)).toBe(false); // nothing beside the database but the lock file
    expect(() => lockSqliteForServer(path)).toThrow(SqliteServerLockedError);
    // Another database beside it is another lock.
    const other = lockSqliteForServer(join(dir, 'other.db'));
    first.release();
    first.release();
    const again = lockSqliteForServer(path);
    again.release();
    other.release();
  });
});
