/**
 * The reseal command (SECURITY.md "Key rotation", step 3) never makes up a key. Run on a SQLite store without
 * APP_INBOX_SECRET_KEYS, --secret-key-file or `<db dir>/secret.key` (a database copied without its key file), it
 * used to generate a new `k1` key beside the database and report `{"checked":N,"resealed":0,"failed":[]}`, exit
 * 0: every secret looked sealed with the primary key (same id), while none could be opened.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { secretBoxForStore } from '../../src/security/setup.js';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

describe('reseal without a key', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('exits 2 naming the missing key file, and creates none', async () => {
    dir = mkdtempSync(join(tmpdir(), 'reseal-keys-'));
    const dbFile = join(dir, 'app-inbox.db');
    const { APP_INBOX_SECRET_KEYS: _keys, APP_INBOX_SECRET_KEY_FILE: _file, ...env } = process.env;
    const child = spawn(
      process.execPath,
      ['--conditions=@app-inbox/source', '--import', 'tsx', 'src/security/reseal-main.ts', '--store', dbFile],
      { cwd: PACKAGE_DIR, stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, NODE_OPTIONS: '' } },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const [code] = (await once(child, 'exit')) as [number | null];
    expect({ code, stdout }).toEqual({ code: 2, stdout: '' });
    expect(stderr).toContain(
      `reseal-secrets: no encryption key for secrets at rest: ${join(dir, 'secret.key')} does not exist`,
    );
    expect(existsSync(join(dir, 'secret.key'))).toBe(false);
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
