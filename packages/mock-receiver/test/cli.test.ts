/**
 * The `mock-receiver` program, run as a real process (tsx, sources of this package and of core).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { message, newSigningSecret, post, signedHeaders } from './helpers.js';

const packageDir = fileURLToPath(new URL('..', import.meta.url));
const running = new Set<ChildProcess>();

afterEach(() => {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
});

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

function run(args: string[], env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(process.execPath, ['--conditions=@app-inbox/source', '--import', 'tsx', 'src/cli.ts', ...args], {
    cwd: packageDir,
    env: { ...process.env, NODE_OPTIONS: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let out = '';
  let err = '';
  child.stdout?.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, stdout: () => out, stderr: () => err, exited };
}

async function waitForOutput(r: Run, pattern: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const match = pattern.exec(r.stdout());
    if (match !== null) return match;
    if (r.child.exitCode !== null) throw new Error(`exited ${r.child.exitCode}: ${r.stderr()}`);
    if (Date.now() > deadline) throw new Error(`no ${pattern} in time; stdout: ${r.stdout()} stderr: ${r.stderr()}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

describe('mock-receiver CLI', () => {
  it('--help lists the flags, the scenarios and the rule format', async () => {
    const r = run(['--help']);
    expect(await r.exited).toBe(0);
    const help = r.stdout();
    for (const flag of [
      '--port',
      '--host',
      '--username',
      '--password',
      '--max-messages',
      '--scenario',
      '--rule',
      '--record-limit',
      '--no-strict',
      '--signing-secret-env',
      '--signature-tolerance-seconds',
    ]) {
      expect(help).toContain(flag);
    }
    expect(help).toContain('rate-limited');
    expect(help).toContain('"answers"');
  });

  it('starts, checks auth and the limit, logs each request, and stops on SIGTERM', async () => {
    const r = run([
      '--port',
      '0',
      '--username',
      'qa',
      '--password',
      'pw-from-cli',
      '--max-messages',
      '2',
      '--retry-after',
      '5',
    ]);
    const [, url] = await waitForOutput(r, /listening on (http:\/\/127\.0\.0\.1:\d+)/);
    const receiver = { url: url ?? '' };
    const auth = { username: 'qa', password: 'pw-from-cli' };
    expect((await post(receiver, { body: [message('c-1')], auth, deliveryId: 'cli-1' })).status).toBe(200);
    expect((await post(receiver, { body: [message('c-1')] })).status).toBe(401);
    const limited = await post(receiver, { body: [message('c-1'), message('c-1'), message('c-1')], auth });
    expect(limited.status).toBe(429);
    expect(limited.headers['retry-after']).toBe('5');
    await waitForOutput(r, /POST \/webhook 200 contacts=c-1 messages=1 id=cli-1/);
    expect(r.stdout()).not.toContain('pw-from-cli');
    // A command line is readable by every user of the host: `ps` showed the password given by --password.
    const shown = execFileSync('ps', ['-o', 'args=', '-p', String(r.child.pid)], { encoding: 'utf8' });
    expect(shown).toContain('--password *** --max-messages 2');
    expect(shown).not.toContain('pw-from-cli');

    r.child.kill('SIGTERM');
    expect(await r.exited).toBe(0);
  });

  it('checks signatures with the secrets of --signing-secret-env, and prints none of them', async () => {
    const [current, previous] = [newSigningSecret(), newSigningSecret()];
    const r = run(['--port', '0', '--signing-secret-env', 'QA_HOOK_SECRETS', '--signature-tolerance-seconds', '60'], {
      QA_HOOK_SECRETS: `${current}, ${previous}`,
    });
    const [, url] = await waitForOutput(r, /listening on (http:\/\/127\.0\.0\.1:\d+)/);
    await waitForOutput(r, /signature: 2 secrets, tolerance 60 s;/);
    const receiver = { url: url ?? '' };
    const body = JSON.stringify([message('c-1')]);
    const byOld = await signedHeaders(body, previous, { deliveryId: 'sig-old' });
    expect((await post(receiver, { body, headers: byOld })).status).toBe(200);
    expect((await post(receiver, { body, deliveryId: 'sig-none' })).status).toBe(401);
    const late = await signedHeaders(body, current, { deliveryId: 'sig-late', timestampSeconds: 1_000_000_000 });
    expect((await post(receiver, { body, headers: late })).status).toBe(401);
    await waitForOutput(r, /POST \/webhook 200 contacts=c-1 messages=1 id=sig-old signature=valid/);
    await waitForOutput(r, /POST \/webhook 401 contacts=c-1 messages=1 id=sig-none signature=missing/);
    await waitForOutput(r, /POST \/webhook 401 contacts=c-1 messages=1 id=sig-late signature=stale/);
    const shown = execFileSync('ps', ['-o', 'args=', '-p', String(r.child.pid)], { encoding: 'utf8' });
    for (const secret of [current, previous]) {
      const key = secret.slice('whsec_'.length);
      expect(r.stdout()).not.toContain(key);
      expect(r.stderr()).not.toContain(key);
      expect(shown).not.toContain(key);
    }
    r.child.kill('SIGTERM');
    expect(await r.exited).toBe(0);
  });

  it('refuses a --signing-secret-env variable that is unset or holds a bad secret, without printing it', async () => {
    const unset = run(['--port', '0', '--signing-secret-env', 'QA_NO_SUCH_VARIABLE']);
    expect(await unset.exited).toBe(2);
    expect(unset.stderr()).toContain(
      '--signing-secret-env names an environment variable that is not set or holds no secret',
    );
    const bad = run(['--port', '0', '--signing-secret-env', 'QA_HOOK_SECRETS'], {
      QA_HOOK_SECRETS: `${newSigningSecret()} whsec_hunter2-not-base64`,
    });
    expect(await bad.exited).toBe(2);
    expect(bad.stderr()).toContain('--signing-secret-env (secret #2) must be "whsec_" followed by standard base64');
    expect(bad.stderr()).not.toContain('hunter2');
  });

  it('keeps serving when the reader of its output goes away (mock-receiver | head -1)', async () => {
    // Before: the next line written threw EPIPE, an unhandled 'error' event that killed the receiver.
    const r = run(['--port', '0']);
    const [, url] = await waitForOutput(r, /listening on (http:\/\/127\.0\.0\.1:\d+)/);
    const receiver = { url: url ?? '' };
    r.child.stdout?.destroy();
    for (let i = 0; i < 3; i += 1) {
      expect((await post(receiver, { body: [message('c-1')] })).status).toBe(200);
    }
    expect(r.child.exitCode).toBeNull();
    expect(r.stderr()).not.toContain('EPIPE');
    r.child.kill('SIGTERM');
    expect(await r.exited).toBe(0);
  });

  it('logs one line per request: a body cannot forge a log line or send terminal escapes', async () => {
    const r = run(['--port', '0']);
    const [, url] = await waitForOutput(r, /listening on (http:\/\/127\.0\.0\.1:\d+)/);
    const receiver = { url: url ?? '' };
    const forged = 'c-1\n2026-01-01T00:00:00.000Z POST /forged 200 contacts=admin\u001b[2J\r';
    expect((await post(receiver, { body: [message(forged)], deliveryId: 'forge-1' })).status).toBe(200);
    expect((await post(receiver, { body: [message('c-2')], deliveryId: 'after-1' })).status).toBe(200);
    await waitForOutput(r, /id=after-1/);
    const lines = r.stdout().split('\n');
    expect(lines.filter((line) => line.includes('POST /'))).toHaveLength(2);
    expect(r.stdout()).not.toContain('\u001b');
    expect(r.stdout()).not.toContain('\r');
    expect(lines.find((line) => line.includes('id=forge-1'))).toContain(
      'contacts=c-1\\n2026-01-01T00:00:00.000Z POST /forged 200 contacts=admin\\u001b[2J\\r',
    );
    r.child.kill('SIGTERM');
    expect(await r.exited).toBe(0);
  });

  it('applies --scenario and --rule', async () => {
    const r = run([
      '--port',
      '0',
      '--scenario',
      'bad-gateway',
      '--rule',
      '{"match":{"path":"/ok"},"answers":[{"status":204}],"repeat":true}',
      '--quiet',
    ]);
    const [, url] = await waitForOutput(r, /listening on (http:\/\/127\.0\.0\.1:\d+)/);
    expect((await post({ url: url ?? '' }, { body: [message('c-1')] })).status).toBe(502);
    expect((await post({ url: url ?? '' }, { path: '/ok', body: [message('c-1')] })).status).toBe(204);
    r.child.kill('SIGTERM');
    expect(await r.exited).toBe(0);
  });

  it('refuses a bad flag with a clear message', async () => {
    const r = run(['--port', 'eighty']);
    expect(await r.exited).not.toBe(0);
    expect(r.stderr()).toContain('--port must be an integer from 0 to 65535');
  });

  it('refuses options that are wrong together, naming the flag', async () => {
    const r = run(['--port', '0', '--username', 'qa']);
    expect(await r.exited).toBe(2);
    expect(r.stderr()).toContain('--password is required when username is set');
  });

  it('names the repeated --rule whose id another one uses', async () => {
    const rule = JSON.stringify({ id: 'outage', answers: [{ status: 503 }] });
    const r = run(['--port', '0', '--rule', rule, '--rule', rule]);
    expect(await r.exited).toBe(2);
    expect(r.stderr()).toContain('--rule #2.id is used by another rule');
  });
});
