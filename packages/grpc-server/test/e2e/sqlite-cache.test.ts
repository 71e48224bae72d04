/**
 * `--sqlite-cache-mib`: the page cache of the SQLite store's connection, as SQLite reports it, in the server's
 * start line. @see CONFIG.md, bench/README.md (why 32 MiB)
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { startServer } from '../../src/server.js';
import { testConfig } from './harness.js';

describe('the SQLite page cache option', () => {
  const dir = mkdtempSync(join(tmpdir(), 'app-inbox-cache-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function startLine(overrides: { sqliteCacheMib?: number }): Promise<Record<string, unknown>> {
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line));
        done();
      },
    });
    const server = await startServer(testConfig(join(dir, `${randomUUID()}.db`), overrides), {
      logger: pino({ level: 'info' }, sink),
    });
    await server.close(500);
    const started = lines.find((l) => l.msg === 'gRPC server listening');
    if (started === undefined) throw new Error('no start line');
    return started;
  }

  it('is read from --sqlite-cache-mib or APP_INBOX_SQLITE_CACHE_MIB, 32 by default', () => {
    expect(loadConfig([], {}).sqliteCacheMib).toBe(32);
    expect(loadConfig(['--sqlite-cache-mib', '8'], {}).sqliteCacheMib).toBe(8);
    expect(loadConfig([], { APP_INBOX_SQLITE_CACHE_MIB: '128' }).sqliteCacheMib).toBe(128);
    expect(() => loadConfig(['--sqlite-cache-mib', '0'], {})).toThrow(/--sqlite-cache-mib \(flag\) must be an integer/);
  });

  it("reaches the store's connection: the server reports what SQLite took", async () => {
    expect((await startLine({ sqliteCacheMib: 3 })).sqliteCacheMib).toBe(3);
    expect((await startLine({})).sqliteCacheMib).toBe(32);
  });
});
