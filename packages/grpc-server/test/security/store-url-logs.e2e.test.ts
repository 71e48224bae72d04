/**
 * The store URL in the start-up log: a PostgreSQL URL opens a store whatever the case of its scheme, and its
 * password (in the userinfo or as `?password=`) never reaches the log (the test server trusts every password,
 * so one can be given).
 */
import { Writable } from 'node:stream';
import { status } from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/observability/logger.js';
import { createTestDatabase } from '../../src/store/postgres/test-db.js';
import { startTestServer } from '../e2e/harness.js';

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
});
