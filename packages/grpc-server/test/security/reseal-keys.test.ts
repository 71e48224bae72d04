/**
 * The reseal command (SECURITY.md "Key rotation", step 3) never makes up a key. Run on a SQLite store without
 * APP_INBOX_SECRET_KEYS, --secret-key-file or `<db dir>/secret.key` (a database copied without its key file), it
 * used to generate a new `k1` key beside the database and report `{"checked":N,"resealed":0,"failed":[]}`, exit
 * 0: every secret looked sealed with the primary key (same id), while none could be opened. Nor does it make up a
 * database: a mistyped or relative `--store` created an empty one and reported `{"checked":0,...}`, exit 0.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { secretBoxForStore } from '../../src/security/setup.js';
import { openStore } from '../../src/store/index.js';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

async function reseal(
  dbFile: string,
  keys: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { APP_INBOX_SECRET_KEYS: _keys, APP_INBOX_SECRET_KEY_FILE: _file, ...env } = process.env;
  const child = spawn(
    process.execPath,
    ['--conditions=@app-inbox/source', '--import', 'tsx', 'src/security/reseal-main.ts', '--store', dbFile],
    { cwd: PACKAGE_DIR, stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, NODE_OPTIONS: '', ...keys } },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, stderr };
}

describe('reseal without a key or a database', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('exits 2 naming the missing key file, and creates none', async () => {
    dir = mkdtempSync(join(tmpdir(), 'reseal-keys-'));
    const dbFile = join(dir, 'app-inbox.db');
    // The database exists (a server ran on it), its key file does not (copied without it).
    await (await openStore(dbFile)).close();
    const { code, stdout, stderr } = await reseal(dbFile);
    expect({ code, stdout }).toEqual({ code: 2, stdout: '' });
    expect(stderr).toContain(
      `reseal-secrets: no encryption key for secrets at rest: ${join(dir, 'secret.key')} does not exist`,
    );
    expect(existsSync(join(dir, 'secret.key'))).toBe(false);
  }, 30_000);

  it('exits 2 on a SQLite store that does not exist, and creates none (keys given)', async () => {
    // Before: an empty database was created and `{"checked":0,"resealed":0,"failed":[]}` reported, exit 0.
    dir = mkdtempSync(join(tmpdir(), 'reseal-keys-'));
    const dbFile = join(dir, 'typo.db');
    const run = await reseal(dbFile, { APP_INBOX_SECRET_KEYS: `k2:${Buffer.alloc(32, 9).toString('base64')}` });
    expect({ code: run.code, stdout: run.stdout }).toEqual({ code: 2, stdout: '' });
    expect(run.stderr).toContain(`reseal-secrets: --store ${dbFile}: no such database`);
    expect(existsSync(dbFile)).toBe(false);
  }, 30_000);

  it('secretBoxForStore still creates the key file for the server (createKeyFile left out)', () => {
    dir = mkdtempSync(join(tmpdir(), 'reseal-keys-'));
    const { origin } = secretBoxForStore({ store: join(dir, 'app-inbox.db'), secretKeys: '', secretKeyFile: '' });
    expect(origin).toBe('generated_file');
    expect(existsSync(join(dir, 'secret.key'))).toBe(true);
    // …and the reseal command's setup then reads that file.
    const again = secretBoxForStore({
      store: join(dir, 'app-inbox.db'),
      secretKeys: '',
      secretKeyFile: '',
      createKeyFile: false,
    });
    expect(again.box.primaryKeyId).toBe('k1');
  });
});
