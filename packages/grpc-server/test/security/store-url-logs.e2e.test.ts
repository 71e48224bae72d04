/**
 * The store URL in the start-up log: a PostgreSQL URL opens a store whatever the case of its scheme, and its
 * password (in the userinfo or as `?password=`) never reaches the log (the test server trusts every password,
 * so one can be given).
 */
import { execFileSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { status } from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/observability/logger.js';
import { createTestDatabase } from '../../src/store/postgres/test-db.js';
import { spawnServer, startTestServer } from '../e2e/harness.js';

describe('the store URL in the logs', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterAll(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn();
  });

  for (const [scheme, where] of [
    ['postgres', 'userinfo'],
    ['POSTGRES', 'userinfo'],
    ['PostgreSQL', 'userinfo'],
    ['postgres', 'query'],
  ] as const) {
    it(`leaves out the password of a ${scheme}:// URL given in its ${where}`, async () => {
      const database = await createTestDatabase();
      cleanups.push(() => database.drop());
      const url = new URL(database.url);
      // node-postgres takes the password from the userinfo or from a `password` query parameter.
      if (where === 'userinfo') url.password = 'hunter2-secret';
      else url.searchParams.set('password', 'hunter2-secret');
      const withScheme = `${scheme}${url.toString().slice(url.protocol.length - 1)}`;
      const lines: string[] = [];
      const destination = new Writable({
        write(chunk: Buffer, _encoding, done) {
          lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
          done();
        },
      });
      const t = await startTestServer(withScheme, {}, { logger: createLogger({ level: 'info', destination }) });
      cleanups.push(() => t.stop());
      // The store answers (the URL was taken), and the log names it without the password.
      await expect(t.clients.getWebhook({ accountId: 'acct' })).rejects.toMatchObject({ code: status.NOT_FOUND });
      const started = lines
        .map((l) => JSON.parse(l) as { msg: string; store?: string })
        .find((l) => l.msg === 'gRPC server listening');
      // (The scheme as the URL parser writes it: lower case.)
      expect(started?.store).toBe(withScheme.replace('hunter2-secret', '***').replace(scheme, scheme.toLowerCase()));
      expect(lines.join('\n')).not.toContain('hunter2-secret');
    });
  }

  it('leaves the password of a --store URL out of the process title (ps, /proc/<pid>/cmdline)', async () => {
    // The command line of a process is readable by every user of the host: `ps` showed the password of
    // `--store postgres://app:pass@...`, the form POSTGRES.md gives.
    const database = await createTestDatabase();
    cleanups.push(() => database.drop());
    const url = new URL(database.url);
    url.password = 'hunter2-secret';
    const child = await spawnServer(url.toString(), []);
    cleanups.push(async () => void (await child.kill('SIGTERM')));
    await expect(child.clients.getWebhook({ accountId: 'acct' })).rejects.toMatchObject({ code: status.NOT_FOUND });
    const shown = execFileSync('ps', ['-o', 'args=', '-p', String(child.pid)], { encoding: 'utf8' });
    expect(shown).toContain(`--store ${url.toString().replace('hunter2-secret', '***')}`);
    expect(shown).not.toContain('hunter2-secret');
    // The whole command line, not cut short (the title must fit in the memory of the original one).
    expect(shown.trim()).toMatch(/ --metrics-address off$/);
  });
});
