/**
 * `app-inbox`, the command-line client, run as a child process against a real server (in this process,
 * 127.0.0.1 port 0) delivering to the mock receiver: every command, its human and JSON output, its errors
 * and exit codes.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import {
  accountId,
  deliveryIn,
  eventually,
  inboxMessage,
  startTestServer,
  storeUrls,
  type TestServer,
} from '../e2e/harness.js';
import { runCli, startCli } from './run-cli.js';

const PASSWORD = 'cli-pa55word-secret';
const SIGNING_SECRET = `whsec_${Buffer.alloc(32, 5).toString('base64')}`;

describe('app-inbox command-line client', () => {
  const [sqlite] = storeUrls();
  let t: TestServer;
  let receiver: MockReceiver;
  let dir: string;

  beforeAll(async () => {
    t = await startTestServer(await sqlite!.newUrl());
    dir = mkdtempSync(join(tmpdir(), 'app-inbox-cli-'));
  });
  afterEach(async () => {
    await receiver?.close();
  });
  afterAll(async () => {
    await t?.stop();
    await sqlite?.release();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The client's arguments with the test server's address first. */
  const cli = (...args: string[]) => ['--address', t.server.address, ...args];

  async function accountWithReceiver(options: Parameters<typeof createMockReceiver>[0] = {}): Promise<string> {
    receiver = await createMockReceiver(options);
    const acct = accountId();
    await t.clients.upsertWebhook({ accountId: acct, url: `${receiver.url}/hook` });
    return acct;
  }

  function file(name: string, content: unknown): string {
    const path = join(dir, `${randomUUID()}-${name}`);
    writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
    return path;
  }

  /** A message in the seed's format, as a publish file holds it. */
  function seedMessage(contact: string | null, extra: Record<string, unknown> = {}) {
    const { ttlSeconds: _ttl, expiresAtMs: _exp, ...m } = inboxMessage(contact ?? '');
    if (contact === null) delete (m as Partial<typeof m>).externalCustomerId;
    return { ...m, ...extra };
  }

  it('sets a webhook with the password from stdin and the secret from a variable, and never prints them', async () => {
    receiver = await createMockReceiver();
    const acct = accountId();
    const set = await runCli(
      cli(
        'webhook',
        'set',
        acct,
        '--url',
        `${receiver.url}/hook`,
        '--username',
        'hook-user',
        '--password-stdin',
        '--signing-secret-env',
        'HOOK_SECRET',
        '--max-messages',
        '50',
        '--ttl-seconds',
        '600',
        '--rate-limit',
        '25',
      ),
      { stdin: `${PASSWORD}\n`, env: { HOOK_SECRET: SIGNING_SECRET } },
    );
    expect(set.stderr).toBe('');
    expect(set.code).toBe(0);
    expect(set.stdout).toContain(`Webhook of account ${acct} created.`);
    expect(set.stdout).toMatch(/basic auth\s+hook-user \(password set\)/);
    expect(set.stdout).toMatch(/signing secret\s+set/);
    expect(set.stdout).toMatch(/max messages\s+50 per contact/);
    expect(set.stdout).toMatch(/message TTL\s+600 s/);
    expect(set.stdout).toMatch(/rate limit\s+25 requests\/s/);

    const stored = await t.server.store.getWebhook(acct);
    expect(stored).toMatchObject({
      auth: { type: 'basic', username: 'hook-user', password: PASSWORD },
      signingSecret: SIGNING_SECRET,
      maxMessagesPerContact: 50,
      rateLimitPerSecond: 25,
      enabled: true,
    });

    const get = await runCli(cli('--json', 'webhook', 'get', acct));
    expect(get.code).toBe(0);
    const shown = JSON.parse(get.stdout) as { webhook: Record<string, unknown> };
    expect(shown.webhook).toMatchObject({
      accountId: acct,
      url: `${receiver.url}/hook`,
      basicAuth: { username: 'hook-user', hasPassword: true },
      hasSigningSecret: true,
      maxMessagesPerContact: 50,
      defaultMessageTtlSeconds: 600,
    });
    for (const output of [set.stdout, set.stderr, get.stdout, get.stderr]) {
      expect(output).not.toContain(PASSWORD);
      expect(output).not.toContain(SIGNING_SECRET);
    }

    // A new signing secret: the one it replaces signs too for the overlap, which the view shows.
    const rotated = await runCli(
      cli('webhook', 'set', acct, '--url', `${receiver.url}/hook`, '--signing-secret-env', 'HOOK_SECRET'),
      { env: { HOOK_SECRET: `whsec_${Buffer.alloc(32, 6).toString('base64')}` } },
    );
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).toMatch(/signing secret\s+set \(the one it replaced signs too until \d{4}-/);
    expect(rotated.stdout).not.toContain(SIGNING_SECRET);

    const disabled = await runCli(cli('webhook', 'set', acct, '--url', `${receiver.url}/other`, '--disabled'));
    expect(disabled.code).toBe(0);
    expect(disabled.stdout).toContain('replaced');
    expect(await t.server.store.getWebhook(acct)).toMatchObject({ enabled: false, url: `${receiver.url}/other` });
    expect((await t.server.store.getWebhook(acct))?.auth).toBeUndefined();

    const deleted = await runCli(cli('webhook', 'delete', acct));
    expect(deleted).toMatchObject({ code: 0, stdout: `Webhook of account ${acct} deleted.\n` });
    const missing = await runCli(cli('webhook', 'get', acct));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`NOT_FOUND: account "${acct}" has no webhook`);
  });

  it("sets the webhook's own headers from variables (--header-env), shows their names only, and sends them", async () => {
    receiver = await createMockReceiver();
    const acct = accountId();
    const apiKey = `k_live_${randomUUID()}`;
    const set = await runCli(
      cli(
        'webhook',
        'set',
        acct,
        '--url',
        `${receiver.url}/hook`,
        '--header-env',
        'X-Api-Key=HOOK_API_KEY',
        '--header-env',
        'x-route=HOOK_ROUTE',
      ),
      { env: { HOOK_API_KEY: apiKey, HOOK_ROUTE: 'eu-route' } },
    );
    expect(set.stderr).toBe('');
    expect(set.code).toBe(0);
    expect(set.stdout).toMatch(/headers\s+x-api-key, x-route \(values not shown\)/);
    expect((await t.server.store.getWebhook(acct))?.headers).toEqual({ 'x-api-key': apiKey, 'x-route': 'eu-route' });

    const human = await runCli(cli('webhook', 'get', acct));
    const asJson = await runCli(cli('--json', 'webhook', 'get', acct));
    expect(human.stdout).toMatch(/headers\s+x-api-key, x-route \(values not shown\)/);
    expect((JSON.parse(asJson.stdout) as { webhook: unknown }).webhook).toMatchObject({
      headerNames: ['x-api-key', 'x-route'],
    });
    for (const output of [set.stdout, human.stdout, asJson.stdout]) {
      expect(output).not.toContain(apiKey);
      expect(output).not.toContain('eu-route');
    }

    const published = await t.clients.publishMessages({ accountId: acct, messages: [inboxMessage('c-1')] });
    await deliveryIn(t.clients, published.deliveries[0]!.deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    expect(receiver.records.list()[0]?.headers).toMatchObject({ 'x-api-key': apiKey, 'x-route': 'eu-route' });

    // A refused header: the server names it (exit 1), and the value read from the variable is never printed.
    const refused = await runCli(
      cli('webhook', 'set', acct, '--url', `${receiver.url}/hook`, '--header-env', 'Host=HOOK_API_KEY'),
      { env: { HOOK_API_KEY: apiKey } },
    );
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('INVALID_ARGUMENT');
    expect(refused.stderr).toContain('headers["host"]');
    expect(refused.stderr).not.toContain(apiKey);
    // Saved again without --header-env: no headers (the whole configuration is replaced).
    const plain = await runCli(cli('webhook', 'set', acct, '--url', `${receiver.url}/hook`));
    expect(plain.stdout).toMatch(/headers\s+none/);
  });

  it('disables and enables a webhook, keeping its password and signing secret (UpdateWebhook)', async () => {
    const acct = await accountWithReceiver();
    await t.clients.upsertWebhook({
      accountId: acct,
      url: `${receiver.url}/hook`,
      basicAuth: { username: 'hook-user', password: PASSWORD },
      signingSecret: SIGNING_SECRET,
    });
    const disabled = await runCli(cli('webhook', 'disable', acct));
    expect(disabled).toMatchObject({ code: 0, stderr: '' });
    expect(disabled.stdout).toContain(`Webhook of account ${acct} disabled.`);
    expect(disabled.stdout).toMatch(/basic auth\s+hook-user \(password set\)/);
    expect(await t.server.store.getWebhook(acct)).toMatchObject({
      enabled: false,
      auth: { username: 'hook-user', password: PASSWORD },
      signingSecret: SIGNING_SECRET,
    });
    const enabled = await runCli(cli('--json', 'webhook', 'enable', acct));
    expect(enabled.code).toBe(0);
    expect(JSON.parse(enabled.stdout)).toMatchObject({ webhook: { enabled: true, hasSigningSecret: true } });
    expect(await t.server.store.getWebhook(acct)).toMatchObject({ enabled: true, auth: { password: PASSWORD } });
    const missing = await runCli(cli('webhook', 'enable', accountId()));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('NOT_FOUND');
  });

  it('publishes a file: counts, the contact without an externalCustomerId skipped, the deliveries made', async () => {
    const acct = await accountWithReceiver();
    const path = file('messages.json', [
      seedMessage('c-1'),
      seedMessage(null),
      seedMessage('c-2', { ttlSeconds: 3600, link: 'https://example.com/x' }),
    ]);
    const published = await runCli(cli('publish', acct, path));
    expect(published.stderr).toBe('');
    expect(published.code).toBe(0);
    expect(published.stdout).toContain(
      `Published 3 messages to account ${acct}: 2 accepted, 0 duplicates, 1 skipped without externalCustomerId.`,
    );
    expect(published.stdout).toContain('Skipped (no externalCustomerId): index 1');
    expect(published.stdout).toMatch(/^c-1\s+[0-9a-f-]{36}$/m);
    expect(published.stdout).toMatch(/^c-2\s+[0-9a-f-]{36}$/m);
    await eventually(() => (receiver.records.list().length === 2 ? true : undefined), 10_000, 'two deliveries');
    expect(receiver.records.lastAccepted('c-2')?.messages[0]).toMatchObject({ link: 'https://example.com/x' });

    // Again, from standard input, as JSON: every id is known now.
    const again = await runCli(cli('--json', 'publish', acct, '-'), {
      stdin: JSON.stringify([seedMessage('c-3')]),
    });
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ accepted: 1, deliveries: [{ externalCustomerId: 'c-3' }] });
  });

  it('publishes a big file in calls of 10,000 with progress on stderr, and names a bad message by its index in the file', async () => {
    const acct = await accountWithReceiver({ maxMessagesPerContact: 10_000 });
    const many = Array.from({ length: 10_003 }, (_, i) => seedMessage(`c-${i % 3}`));
    const big = await runCli(cli('publish', acct, file('big.json', many)));
    expect(big.code).toBe(0);
    expect(big.stderr).toContain('published 10,000 / 10,003 messages (99%)');
    expect(big.stderr).toContain('published 10,003 / 10,003 messages (100%)');
    expect(big.stdout).toContain('10,003 accepted');
    expect(big.stdout).toContain('3 contacts scheduled');

    // The second call fails: the error names the file's index, and says the first call was committed.
    const bad = [...Array.from({ length: 10_001 }, () => seedMessage('d')), seedMessage('d', { id: 'not-a-uuid' })];
    const failed = await runCli(cli('publish', acct, file('bad.json', bad)));
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain('INVALID_ARGUMENT: 1 invalid field in call 2 of 2');
    expect(failed.stderr).toContain('messages[10001].id: must be a UUID');
    expect(failed.stderr).toContain('the 10,000 messages before that call were published');
  });

  it('refuses a file that is not a list of messages before calling the server (exit 2)', async () => {
    const acct = accountId();
    const result = await runCli(
      cli('publish', acct, file('odd.json', [{ ...seedMessage('c'), createdDate: 'yesterday', colour: 'red' }, 7])),
    );
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('3 problems in the messages');
    expect(result.stderr).toContain('[0].createdDate: must be an integer');
    expect(result.stderr).toContain('[0].colour: is not a known field');
    expect(result.stderr).toContain('[1]: must be an object, got a number');
    const missing = await runCli(cli('publish', acct, join(dir, 'no-such-file.json')));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('no-such-file.json: cannot be read (ENOENT)');
  });

  it('shows an INVALID_ARGUMENT with the status name and every bad field, human and JSON', async () => {
    const acct = await accountWithReceiver();
    const path = file('invalid.json', [seedMessage('c', { id: 'nope' }), seedMessage('c', { image: 'ftp://x' })]);
    const human = await runCli(cli('publish', acct, path));
    expect(human.code).toBe(1);
    expect(human.stdout).toBe('');
    expect(human.stderr).toMatch(/^app-inbox: INVALID_ARGUMENT: 2 invalid fields\n/);
    expect(human.stderr).toContain('  messages[0].id: must be a UUID');
    expect(human.stderr).toContain('  messages[1].image:');

    const asJson = await runCli(cli('--json', 'publish', acct, path));
    expect(asJson.code).toBe(1);
    const error = (JSON.parse(asJson.stderr) as { error: { code: string; fieldViolations: Array<{ field: string }> } })
      .error;
    expect(error.code).toBe('INVALID_ARGUMENT');
    expect(error.fieldViolations.map((v) => v.field)).toEqual(['messages[0].id', 'messages[1].image']);
  });

  it('shows the body of a delivery larger than a default client may receive (4 MiB)', async () => {
    const acct = await accountWithReceiver();
    // 1,000 messages of 5,000 characters: a body of about 5 MB.
    const messages = Array.from({ length: 1_000 }, () => inboxMessage('large', { content: 'x'.repeat(5_000) }));
    const published = await t.clients.publishMessages({ accountId: acct, messages });
    const id = published.deliveries[0]!.deliveryId;
    await eventually(async () => {
      const { delivery } = await t.clients.getDelivery({ deliveryId: id });
      return delivery?.state === DeliveryState.DELIVERY_STATE_DELIVERED ? delivery : undefined;
    });
    const show = await runCli(cli('deliveries', 'show', id, '--body'));
    expect(show.stderr).toBe('');
    expect(show.code).toBe(0);
    expect(show.stdout.length).toBeGreaterThan(5_000_000);
  });

  it('lists, shows and retries deliveries', async () => {
    const acct = await accountWithReceiver();
    const published = await t.clients.publishMessages({ accountId: acct, messages: [inboxMessage('c-1')] });
    const id = published.deliveries[0]!.deliveryId;
    await deliveryIn(t.clients, id, [DeliveryState.DELIVERY_STATE_DELIVERED]);

    const list = await runCli(cli('deliveries', 'list', '--account', acct, '--state', 'delivered,failed'));
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/^DELIVERY\s+ACCOUNT\s+CONTACT\s+STATE\s+ATTEMPTS\s+LAST ERROR\s+UPDATED$/m);
    expect(list.stdout).toMatch(new RegExp(`^${id}\\s+${acct}\\s+c-1\\s+delivered\\s+1\\s+-\\s`, 'm'));
    const none = await runCli(cli('deliveries', 'list', '--account', acct, '--state', 'failed'));
    expect(none.stdout).toBe('No deliveries.\n');
    const badState = await runCli(cli('deliveries', 'list', '--state', 'lost'));
    expect(badState.code).toBe(2);
    expect(badState.stderr).toContain('--state: "lost" is not one of pending, in_flight');

    const show = await runCli(cli('deliveries', 'show', id, '--body'));
    expect(show.code).toBe(0);
    expect(show.stdout).toMatch(/state\s+delivered/);
    expect(show.stdout).toMatch(/^1\s+\S+Z\s+\d+ ms\s+HTTP 200\s+delivered\s+-$/m);
    expect(show.stdout).toContain(`"externalCustomerId":"c-1"`);

    const retry = await runCli(cli('deliveries', 'retry', id));
    expect(retry.code).toBe(0);
    expect(retry.stdout).toContain(`Delivery ${id} will be sent again (retrying`);
    await receiver.records.waitFor((r) => r.deliveryId === id && r.duplicate, 10_000);

    const shown = await runCli(cli('--json', 'deliveries', 'show', id));
    expect(JSON.parse(shown.stdout)).toMatchObject({ delivery: { id, attemptCount: 2 } });
    const unknown = await runCli(cli('deliveries', 'show', randomUUID()));
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('NOT_FOUND');
  });

  it('resyncs named contacts or all of them', async () => {
    const acct = await accountWithReceiver();
    await t.clients.publishMessages({ accountId: acct, messages: [inboxMessage('a'), inboxMessage('b')] });
    const named = await runCli(cli('resync', acct, 'a', 'ghost'));
    expect(named.code).toBe(0);
    expect(named.stdout).toContain('2 contacts scheduled');
    expect(named.stdout).toMatch(/^ghost\s+[0-9a-f-]{36}$/m);
    const all = await runCli(cli('--json', 'resync', acct, '--all'));
    expect(
      (JSON.parse(all.stdout) as { deliveries: Array<{ externalCustomerId: string }> }).deliveries
        .map((d) => d.externalCustomerId)
        .sort(),
    ).toEqual(['a', 'b']);
    const neither = await runCli(cli('resync', acct));
    expect(neither.code).toBe(2);
    expect(neither.stderr).toContain('name the contacts or give --all');
  });

  it('keeps a --token out of the process title (ps) while it runs', async () => {
    // A command line is readable by every user of the host: `ps` showed the bearer token of a running watch.
    const token = 'cli-bearer-token-0123456789';
    const watcher = startCli(cli('--token', token, 'watch', '--account', accountId()));
    await eventually(() => (watcher.stderr().includes('watching outcomes') ? true : undefined), 20_000, 'the watch');
    const shown = execFileSync('ps', ['-o', 'args=', '-p', String(watcher.child.pid)], { encoding: 'utf8' });
    watcher.child.kill('SIGINT');
    expect((await watcher.done).code).toBe(0);
    expect(shown).toContain('--token *** watch --account');
    expect(shown).not.toContain(token);
  });

  it('watches outcomes as they happen, until interrupted', async () => {
    const acct = await accountWithReceiver();
    const watcher = startCli(cli('--json', 'watch', '--account', acct));
    await eventually(() => (watcher.stderr().includes('watching outcomes') ? true : undefined), 20_000, 'the watch');
    const published = await t.clients.publishMessages({ accountId: acct, messages: [inboxMessage('w')] });
    const line = await eventually(() => watcher.stdout().split('\n')[0] || undefined, 10_000, 'an outcome line');
    watcher.child.kill('SIGINT');
    const result = await watcher.done;
    expect(result.code).toBe(0);
    expect(JSON.parse(line)).toMatchObject({
      deliveryId: published.deliveries[0]!.deliveryId,
      accountId: acct,
      externalCustomerId: 'w',
      state: 'DELIVERY_STATE_DELIVERED',
      attemptNo: 1,
      statusCode: 200,
    });
  });

  it('says when the server cannot be reached (exit 1) and refuses bad options (exit 2)', async () => {
    const unreachable = await runCli(['--address', '127.0.0.1:1', '--timeout', '5', 'webhook', 'get', 'a']);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toContain('UNAVAILABLE: cannot reach the server at 127.0.0.1:1');
    // An empty address (a variable left unset): grpc-js threw, the client printed a stack trace and exited 1.
    for (const [args, env, name] of [
      [['--address', '', 'webhook', 'get', 'a'], {}, '--address'],
      [['webhook', 'get', 'a'], { APP_INBOX_ADDRESS: '' }, 'APP_INBOX_ADDRESS'],
    ] as const) {
      const empty = await runCli(args, { env });
      expect(empty.code).toBe(2);
      expect(empty.stderr).toBe(
        `app-inbox: ${name}: empty is not a server address: give host:port, e.g. 127.0.0.1:50051 (a port from 1 to 65,535)\n`,
      );
    }
    const badOption = await runCli(cli('webhook', 'set', 'a', '--url', 'http://x', '--max-messages', 'lots'));
    expect(badOption.code).toBe(2);
    expect(badOption.stderr).toContain("option '--max-messages <n>' argument 'lots' is invalid");
    expect(badOption.stderr).toContain('--max-messages must be a positive integer');
  });

  it("ends quietly when its output is closed early (| head -1): no EPIPE stack trace, the command's exit code", async () => {
    // The reader is gone before the client writes: its first write fails with EPIPE, as behind `| head -1`.
    const closedOutput = (args: string[]) => {
      const run = startCli(args);
      run.child.stdout!.destroy();
      return run.done;
    };
    const help = await closedOutput(['--help']);
    expect(help).toMatchObject({ code: 0, stderr: '' });

    // A publish the server accepted is not reported as failed because nobody read its summary.
    const acct = await accountWithReceiver();
    const published = await closedOutput(
      cli('publish', acct, file('m5.json', [seedMessage('p-1'), seedMessage('p-2')])),
    );
    expect(published).toMatchObject({ code: 0, stderr: '' });
    await eventually(() => (receiver.records.list().length === 2 ? true : undefined), 10_000, 'two deliveries');

    // A watch ends at its first outcome, as `watch | head -1` should, instead of running on unheard.
    const watcher = startCli(cli('watch', '--account', acct));
    watcher.child.stdout!.destroy();
    await eventually(() => (watcher.stderr().includes('watching outcomes') ? true : undefined), 20_000, 'the watch');
    await t.clients.publishMessages({ accountId: acct, messages: [inboxMessage('w')] });
    const watched = await watcher.done;
    expect(watched.code).toBe(0);
    expect(watched.stderr).not.toContain('EPIPE');
  });

  it('prints help for the program and its commands', async () => {
    const root = await runCli(['--help']);
    expect(root.code).toBe(0);
    for (const command of ['webhook', 'publish', 'resync', 'deliveries', 'watch']) {
      expect(root.stdout).toContain(command);
    }
    expect(root.stdout).toContain('--address <host:port>');
    expect(root.stdout).toContain('Exit codes');
    const sub = await runCli(['webhook', 'set', '--help']);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toContain('Usage: app-inbox webhook set [options] <account>');
    expect(sub.stdout).toContain('--password-stdin');
  });
});
