/**
 * The real process entry (`src/main.ts`): refuses a bad configuration before doing anything, and prints
 * its help. (Crash and restart of the process: restart.test.ts.)
 */
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { withSealedSecrets } from '../../src/security/sealed-store.js';
import { secretBoxForStore } from '../../src/security/setup.js';
import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { failure, spawnServer, type ChildServer } from './harness.js';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

function runMain(args: string[], env: NodeJS.ProcessEnv = {}, user: { uid?: number; gid?: number } = {}) {
  return spawnSync(process.execPath, ['--conditions=@app-inbox/source', '--import', 'tsx', 'src/main.ts', ...args], {
    cwd: PACKAGE_DIR,
    env: { ...process.env, NODE_OPTIONS: '', ...env },
    encoding: 'utf8',
    timeout: 20_000,
    ...user,
  });
}

const KEYS = { APP_INBOX_SECRET_KEYS: `k1:${Buffer.alloc(32, 7).toString('base64')}` };
const START = ['--grpc-address', '127.0.0.1:0', '--metrics-address', 'off', '--log-level', 'silent'];

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

  it('names the store on stderr when it cannot be opened, even with --log-level silent (exit 1)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'process-store-'));
    try {
      // A path under a regular file: refused to root as well.
      const file = join(dir, 'not-a-dir');
      writeFileSync(file, '');
      const underFile = runMain([...START, '--store', join(file, 'x.db')], KEYS);
      expect(underFile.status).toBe(1);
      expect(underFile.stdout).toBe('');
      expect(underFile.stderr).toMatch(
        new RegExp(`^app-inbox-server: --store ${join(file, 'x.db')}: cannot open the store: .*\n$`),
      );

      // A directory this user cannot write (run as nobody when the tests run as root, who may write anywhere).
      const readOnly = join(dir, 'read-only');
      mkdirSync(readOnly, { mode: 0o555 });
      chmodSync(dir, 0o755);
      const asRoot = process.getuid?.() === 0;
      const denied = runMain(
        [...START, '--store', join(readOnly, 'x.db')],
        KEYS,
        asRoot ? { uid: 65534, gid: 65534 } : {},
      );
      expect(denied.status).toBe(1);
      expect(denied.stderr).toBe(
        `app-inbox-server: --store ${join(readOnly, 'x.db')}: cannot open the store: unable to open database file (SQLITE_CANTOPEN); can this user create and write files in its directory?\n`,
      );

      // A PostgreSQL URL is shown without its password.
      const pg = runMain([...START, '--store', 'postgres://app:hunter2-secret@127.0.0.1:1/none'], KEYS);
      expect(pg.status).toBe(1);
      expect(pg.stderr).toMatch(
        /^app-inbox-server: --store postgres:\/\/app:\*\*\*@127\.0\.0\.1:1\/none: cannot open the store: /,
      );
      expect(pg.stderr).not.toContain('hunter2-secret');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names --grpc-address or --metrics-address in one line on stderr when its address is taken (exit 1)', async () => {
    // The port stays bound while spawnSync blocks this process: the kernel refuses the child's listen.
    // Before: grpc-js's own "E No address added out of total 1 resolved" line, then a message naming no option
    // (and for the metrics port, only Node's "listen EADDRINUSE"): with both on 127.0.0.1, which one to change?
    const taken = createNetServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const address = `127.0.0.1:${(taken.address() as AddressInfo).port}`;
    const dir = mkdtempSync(join(tmpdir(), 'process-listen-'));
    try {
      const store = ['--store', join(dir, 'x.db'), '--log-level', 'silent'];
      const grpc = runMain(['--grpc-address', address, '--metrics-address', 'off', ...store], KEYS);
      expect(grpc.status).toBe(1);
      expect(grpc.stderr).toBe(
        `app-inbox-server: --grpc-address ${address}: cannot listen: listen EADDRINUSE: address already in use ${address}\n`,
      );
      const metrics = runMain(['--grpc-address', '127.0.0.1:0', '--metrics-address', address, ...store], KEYS);
      expect(metrics.status).toBe(1);
      expect(metrics.stderr).toBe(
        `app-inbox-server: --metrics-address ${address}: cannot listen: listen EADDRINUSE: address already in use ${address}\n`,
      );
    } finally {
      taken.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a second server on the same SQLite file (exit 1), and starts once the first is killed', async () => {
    // SQLite serves one server process: a second one claimed beside the first, neither seeing the other's state.
    const dir = mkdtempSync(join(tmpdir(), 'process-lock-'));
    const store = join(dir, 'one.db');
    let first: ChildServer | undefined;
    let third: ChildServer | undefined;
    try {
      first = await spawnServer(store, []);
      const second = runMain(['--store', store, ...START], KEYS);
      expect(second.status).toBe(1);
      expect(second.stderr).toBe(
        `app-inbox-server: --store ${store}: cannot open the store: another server is running on this SQLite database ` +
          `(it holds ${store}.lock): SQLite serves one server process; stop that one, or use PostgreSQL ` +
          '(--store postgres://...) for several\n',
      );
      // SIGKILL leaves no stale lock: the operating system drops it with the process.
      await first.kill('SIGKILL');
      third = await spawnServer(store, []);
      expect((await failure(third.clients.getWebhook({ accountId: 'none' }))).code).toBe(status.NOT_FOUND);
    } finally {
      await first?.kill('SIGKILL');
      await third?.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a SQLite database whose secrets were sealed with a secret.key that is missing (exit 2)', async () => {
    // A database restored without its key file got a new key, which opens none of its secrets.
    const dir = mkdtempSync(join(tmpdir(), 'process-key-'));
    const store = join(dir, 'sealed.db');
    try {
      const { box } = secretBoxForStore({ store, secretKeys: '', secretKeyFile: '' });
      const sealed = withSealedSecrets(await openSqliteStore({ path: store }), box);
      await sealed.upsertWebhook(
        'acct',
        {
          url: 'https://r.example/h',
          maxMessagesPerContact: 10,
          enabled: true,
          auth: { type: 'basic', username: 'u', password: 'p' },
        },
        1,
      );
      await sealed.close();
      rmSync(join(dir, 'secret.key'));
      const result = runMain(['--store', store, ...START], { APP_INBOX_SECRET_KEYS: '' });
      expect(result.status).toBe(2);
      expect(result.stderr).toContain(
        `${store} holds the secrets of 1 webhook(s), sealed with the key of ${join(dir, 'secret.key')}, which is missing`,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('exits on SIGTERM when the reader of its stdout and stderr is gone (its parent was killed)', async () => {
    // pino's asynchronous destination flushed synchronously at exit and retried a write failing with EPIPE every
    // 100 ms, forever: a server started by a wrapper that was killed (npm start, nx) never exited after SIGTERM.
    const dir = mkdtempSync(join(tmpdir(), 'process-orphan-'));
    const child = spawn(
      process.execPath,
      [
        '--conditions=@app-inbox/source',
        '--import',
        'tsx',
        'src/main.ts',
        '--store',
        join(dir, 'a.db'),
        ...START,
        '--log-level',
        'info',
      ],
      { cwd: PACKAGE_DIR, env: { ...process.env, NODE_OPTIONS: '', ...KEYS }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const exited = once(child, 'exit');
    try {
      let out = '';
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`not listening within 30 s: ${out}`)), 30_000);
        child.stdout.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          if (out.includes('gRPC server listening')) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      // The reading ends close, as when the parent dies: the server's next write fails with EPIPE.
      child.stdout.destroy();
      child.stderr.destroy();
      child.kill('SIGTERM');
      const timeout = new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 15_000).unref());
      const outcome = await Promise.race([exited.then(([code, signal]) => ({ code, signal })), timeout]);
      expect(outcome).toEqual({ code: 0, signal: null });
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
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
