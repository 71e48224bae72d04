import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openStore, SqliteStore, type Store } from './index.js';

describe('openStore', () => {
  const opened: Store[] = [];
  const dirs: string[] = [];
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((s) => s.close()));
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('opens a migrated SQLite store for a file path, sqlite:<path> and sqlite::memory:', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'app-inbox-open-'));
    dirs.push(dir);
    for (const url of [join(dir, 'plain.db'), `sqlite:${join(dir, 'prefixed.db')}`, 'sqlite::memory:']) {
      const store = await openStore(url);
      opened.push(store);
      expect(store).toBeInstanceOf(SqliteStore);
      expect((store as SqliteStore).path).toBe(url.replace(/^sqlite:/, ''));
      // Migrated: the tables exist.
      expect(await store.getWebhook('nobody')).toBeNull();
    }
  });

  it('rejects what names no store, naming the option', async () => {
    await expect(openStore('')).rejects.toMatchObject({
      code: 'invalid_argument',
      message: expect.stringMatching(/^store:/),
    });
    await expect(openStore('sqlite:')).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(openStore('mysql://db/x')).rejects.toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('mysql'),
    });
  });
});
