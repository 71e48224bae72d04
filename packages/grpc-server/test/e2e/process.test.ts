/**
 * The real process entry (`src/main.ts`): refuses a bad configuration before doing anything, and prints
 * its help. (Crash and restart of the process: restart.test.ts.)
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

function runMain(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, ['--conditions=@app-inbox/source', '--import', 'tsx', 'src/main.ts', ...args], {
    cwd: PACKAGE_DIR,
    env: { ...process.env, NODE_OPTIONS: '', ...env },
    encoding: 'utf8',
    timeout: 20_000,
  });
}

describe('app-inbox-server process', () => {
  it('refuses to start on a bad configuration, naming every bad option and its bound', () => {
    const result = runMain(['--request-timeout-ms', 'fast', '--store', 'sqlite:/dev/null/never-created.db'], {
      APP_INBOX_MAX_ATTEMPTS: '0',
    });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain(
      '--request-timeout-ms (flag) must be an integer from 100 to 600,000 (ms); got "fast"',
    );
    expect(result.stderr).toContain(
      '--max-attempts (from env APP_INBOX_MAX_ATTEMPTS) must be an integer from 1 to 1,000',
    );
    // Nothing started: no log line on stdout.
    expect(result.stdout).toBe('');
  });

  it('refuses a bad token file naming --grpc-token-file, the file and the line (exit 2, the token not shown)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'process-tokens-'));
    try {
      const file = join(dir, 'tokens.txt');
      writeFileSync(file, '# callers\nshort-token\n', { mode: 0o600 });
      const result = runMain(
        ['--grpc-address', '127.0.0.1:0', '--metrics-address', 'off', '--store', join(dir, 'x.db')],
        { APP_INBOX_GRPC_TOKENS: 'env-token-0123456789abcdef', APP_INBOX_GRPC_TOKEN_FILE: file },
      );
      expect(result.status).toBe(2);
      expect(result.stderr).toContain(
        `app-inbox-server: --grpc-token-file: ${file} line 2: a token must be at least 16`,
      );
      expect(result.stderr).not.toContain('short-token');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('prints every option with its variable and default on --help', () => {
    const result = runMain(['--help']);
    expect(result.status).toBe(0);
    for (const text of [
      '--grpc-address <value>',
      'APP_INBOX_GRPC_ADDRESS',
      'DATABASE_URL',
      'default 127.0.0.1:50051',
      '--shutdown-deadline-ms',
    ]) {
      expect(result.stdout).toContain(text);
    }
  });
});
