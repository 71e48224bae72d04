/**
 * `npm run demo -- --exit` (the script itself, as the nx target runs it): it starts the server and the mock
 * receiver, delivers the sample messages, and its summary says what happened.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

describe('the demo', () => {
  it('delivers the samples, retries the contact answered 503 once, skips the one without id, and exits', async () => {
    const child = spawn(
      process.execPath,
      ['--conditions=@app-inbox/source', '--import', 'tsx', 'demo/demo.ts', '--exit', '--receiver-port', '0'],
      { cwd: PACKAGE_DIR, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const [code] = (await once(child, 'close')) as [number | null];
    clearTimeout(timer);

    expect(stderr).toBe('');
    expect(code).toBe(0);
    // Progress as the outcomes arrive, the retry included.
    expect(stdout).toMatch(/carol\s+retrying\s+attempt 1, HTTP 503/);
    expect(stdout).toMatch(/\[4\/4\]\s+\w+\s+delivered/);
    // The summary table.
    const uuid = '[0-9a-f-]{36}';
    for (const contact of ['alice', 'bob', 'dave']) {
      expect(stdout).toMatch(new RegExp(`^${contact}\\s+${uuid}\\s+1\\s+200\\s+delivered$`, 'm'));
    }
    expect(stdout).toMatch(new RegExp(`^carol\\s+${uuid}\\s+2\\s+503, 200\\s+delivered after 1 retry$`, 'm'));
    expect(stdout).toMatch(/^\(none\)\s+-\s+0\s+-\s+skipped: message 5 has no externalCustomerId$/m);
    expect(stdout).toContain('delivered 4, retried 1, failed 0, skipped 1');
    expect(stdout).toMatch(/Receiver page \(every request, its headers and body\): http:\/\/127\.0\.0\.1:\d+\//);
    // The Basic auth password is random and never printed; the summary only says there is one.
    expect(stdout).toContain('Basic auth user "demo", a random password');
  });
});
