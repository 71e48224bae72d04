/**
 * Secrets at rest end to end (issue 7): a real server on a real SQLite file, its pino logs captured at
 * trace level, a real mock receiver that demands Basic auth. A webhook is saved with a password, a
 * signing secret and an own header carrying an API key; then the database file and its WAL, every log line and every
 * read RPC answer are scanned for the secrets (and their encodings): none is found. Deliveries still authenticate at the
 * receiver and carry a signature that verifies, also after a restart that reads the generated key file.
 */
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { status } from '@grpc/grpc-js';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DeliveryState,
  GetDeliveryResponse,
  ListDeliveriesResponse,
  WatchDeliveriesResponse,
} from '../../src/gen/app_inbox/v1/delivery.js';
import {
  GetWebhookResponse,
  UpdateWebhookResponse,
  UpsertWebhookResponse,
} from '../../src/gen/app_inbox/v1/webhook.js';
import { openStore } from '../../src/store/index.js';
import { runCli } from '../cli/run-cli.js';
import {
  accountId,
  deliveryIn,
  eventually,
  failure,
  inboxMessage,
  signatureValid,
  startTestServer,
  testConfig,
  watch,
  type TestServer,
} from '../e2e/harness.js';
import { startServer } from '../../src/server.js';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

/** Captures every log line the server writes (JSON, one per line). */
function captureLogs(): { logger: pino.Logger; text: () => string } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString('utf8'));
      done();
    },
  });
  return { logger: pino({ level: 'trace' }, sink), text: () => chunks.join('') };
}

/** Which of `needles` occur in `haystack` (bytes or text). */
function found(haystack: Buffer | string, needles: readonly string[]): string[] {
  const bytes = typeof haystack === 'string' ? Buffer.from(haystack, 'utf8') : haystack;
  return needles.filter((n) => bytes.includes(Buffer.from(n, 'utf8')));
}

/** Runs the reseal command (`npm run secrets:reseal`'s script) on `dbFile` with `secretKeys`. */
function reseal(dbFile: string, secretKeys: string): Promise<{ code: number | null; stdout: string }> {
  const child = spawn(
    process.execPath,
    ['--conditions=@app-inbox/source', '--import', 'tsx', 'src/security/reseal-main.ts', '--store', dbFile],
    {
      cwd: PACKAGE_DIR,
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, NODE_OPTIONS: '', APP_INBOX_SECRET_KEYS: secretKeys },
    },
  );
  let stdout = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  return once(child, 'exit').then(([code]) => ({ code: code as number | null, stdout }));
}

describe('secrets at rest (real server, real SQLite file, trace logs)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'app-inbox-secrets-'));
  const dbFile = join(dir, 'store.db');
  const username = `hook-user-${randomUUID()}`;
  const password = `pw-${randomUUID()}`;
  const signingSecret = `whsec_${randomBytes(32).toString('base64')}`;
  /** The value of the webhook's own `x-api-key` header: a secret like the password. */
  const apiKey = `k_live_${randomUUID()}`;
  /** The secrets, and the forms they could leak in: the Basic header's base64 and the bare signing key. */
  const secrets = [
    password,
    signingSecret,
    signingSecret.slice('whsec_'.length),
    Buffer.from(`${username}:${password}`).toString('base64'),
    apiKey,
  ];
  const logs = captureLogs();
  let receiver: MockReceiver;
  let t: TestServer;
  const account = accountId('sealed');

  beforeAll(async () => {
    receiver = await createMockReceiver({ username, password });
    // No key configured (the harness's fixed test key removed): the server must create <db dir>/secret.key.
    t = await startTestServer(dbFile, { secretKeys: '', logLevel: 'trace' }, { logger: logs.logger });
  });
  afterAll(async () => {
    await t.stop();
    await receiver.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('generates <db dir>/secret.key with mode 0600 when no key is configured', () => {
    const keyFile = join(dir, 'secret.key');
    expect(existsSync(keyFile)).toBe(true);
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(readFileSync(keyFile, 'utf8')).toMatch(/^k1:[A-Za-z0-9+/]{43}=$/m);
    expect(logs.text()).toContain('generated_file');
  });

  it('delivers with Basic auth and a valid signature, while no secret is in the database, the logs or any answer', async () => {
    const upserted = await t.clients.upsertWebhook({
      accountId: account,
      url: `${receiver.url}/hooks`,
      basicAuth: { username, password },
      signingSecret,
      headers: { 'X-Api-Key': apiKey },
    });
    const watcher = watch(t.clients, account);
    await watcher.ready;
    const published = await t.clients.publishMessages({ accountId: account, messages: [inboxMessage('c-1')] });
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    const delivered = await deliveryIn(t.clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    await expect.poll(() => watcher.events.length).toBeGreaterThan(0);
    watcher.cancel();

    // The receiver (which answers 401 without the right credentials) accepted it, and the signature verifies.
    const [request] = receiver.records.list();
    expect(request?.answer.status).toBe(200);
    expect(delivered.attempts.map((a) => a.statusCode)).toEqual([200]);
    expect(signatureValid(signingSecret, request!.headers, delivered.body)).toBe(true);
    // The header went out with its value: what is missing below is missing because it is kept secret.
    expect(request?.headers['x-api-key']).toBe(apiKey);
    // The verifier is not a rubber stamp: another secret does not verify the same header.
    expect(signatureValid(`whsec_${randomBytes(32).toString('base64')}`, request!.headers, delivered.body)).toBe(false);

    // UpdateWebhook keeps the secrets it never returns; its write seals them again (the database is scanned below).
    const updated = await t.clients.updateWebhook({
      accountId: account,
      updateMask: ['max_messages_per_contact'],
      maxMessagesPerContact: 50,
    });
    expect(updated.webhook).toMatchObject({ maxMessagesPerContact: 50, hasSigningSecret: true });

    // Every read answer, encoded as sent on the wire and as JSON.
    const got = await t.clients.getWebhook({ accountId: account });
    expect(got.webhook).toMatchObject({
      basicAuth: { username, hasPassword: true },
      hasSigningSecret: true,
      headerNames: ['x-api-key'],
    });
    const listed = await t.clients.listDeliveries({ accountId: account });
    const fetched = await t.clients.getDelivery({ deliveryId, includeBody: true });
    const answers = [
      UpsertWebhookResponse.encode(upserted).finish(),
      UpdateWebhookResponse.encode(updated).finish(),
      GetWebhookResponse.encode(got).finish(),
      ListDeliveriesResponse.encode(listed).finish(),
      GetDeliveryResponse.encode(fetched).finish(),
      ...watcher.events.map((e) => WatchDeliveriesResponse.encode(e).finish()),
    ].map((b) => Buffer.from(b));
    for (const answer of answers) expect(found(answer, secrets)).toEqual([]);
    expect(
      found(
        JSON.stringify([
          UpsertWebhookResponse.toJSON(upserted),
          UpdateWebhookResponse.toJSON(updated),
          GetWebhookResponse.toJSON(got),
          ListDeliveriesResponse.toJSON(listed),
          GetDeliveryResponse.toJSON(fetched),
        ]),
        secrets,
      ),
    ).toEqual([]);
    // Positive control: the username and the header's name are not secrets and are in the answer, so the scan can
    // see content.
    expect(found(Buffer.concat(answers), [username, 'x-api-key'])).toEqual([username, 'x-api-key']);

    // The database file and its write-ahead log, while the server runs.
    const files = [dbFile, `${dbFile}-wal`].filter((f) => existsSync(f));
    expect(files.length).toBeGreaterThan(0);
    const dbBytes = Buffer.concat(files.map((f) => readFileSync(f)));
    expect(found(dbBytes, secrets)).toEqual([]);
    expect(found(dbBytes, [username, 'x-api-key', 'enc:v1:k1:'])).toEqual([username, 'x-api-key', 'enc:v1:k1:']);

    // A refused save whose header value is bad (a line break after the key) is logged, the value in it never.
    const refused = await failure(
      t.clients.updateWebhook({
        accountId: account,
        updateMask: ['headers'],
        headers: { 'x-api-key': `${apiKey}\r\n` },
      }),
    );
    expect(refused.code).toBe(status.INVALID_ARGUMENT);
    expect(found(JSON.stringify([refused.details, refused.rich]), secrets)).toEqual([]);

    // Every log line, at trace level (the logger has no redaction: no code path may log a secret).
    const logText = logs.text();
    expect(logText).toContain('rpc refused');
    expect(logText).toContain(deliveryId);
    expect(found(logText, secrets)).toEqual([]);
  });

  it('stores sealed values (the raw store sees enc:v1), and a restart opens them with the generated key file', async () => {
    await t.stop();
    const raw = await openStore(dbFile);
    try {
      const stored = await raw.getWebhook(account);
      expect(stored?.auth?.password).toMatch(/^enc:v1:k1:/);
      expect(stored?.signingSecret).toMatch(/^enc:v1:k1:/);
      expect(stored?.headers?.['x-api-key']).toMatch(/^enc:v1:k1:/);
      expect(stored?.auth?.username).toBe(username);
    } finally {
      await raw.close();
    }
    // After the stop (checkpointed) the file still has no secret.
    expect(found(readFileSync(dbFile), secrets)).toEqual([]);

    receiver.records.clear();
    t = await startTestServer(dbFile, { secretKeys: '' }, { logger: logs.logger });
    const published = await t.clients.publishMessages({ accountId: account, messages: [inboxMessage('c-2')] });
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    await deliveryIn(t.clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    expect(receiver.records.list().map((r) => r.answer.status)).toEqual([200]);
    expect(receiver.records.list()[0]?.headers['x-api-key']).toBe(apiKey);
  });
});

describe('key rotation (SECURITY.md): new key first, re-seal, drop the old key', () => {
  const dir = mkdtempSync(join(tmpdir(), 'app-inbox-rotate-'));
  const dbFile = join(dir, 'store.db');
  const k1 = `k1:${randomBytes(32).toString('base64')}`;
  const k2 = `k2:${randomBytes(32).toString('base64')}`;
  let receiver: MockReceiver;
  const servers: TestServer[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await receiver.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function deliversWith(secretKeys: string, account: string): Promise<void> {
    const t = await startTestServer(dbFile, { secretKeys });
    servers.push(t);
    const published = await t.clients.publishMessages({ accountId: account, messages: [inboxMessage('c-1')] });
    await deliveryIn(t.clients, published.deliveries[0]?.deliveryId ?? '', [DeliveryState.DELIVERY_STATE_DELIVERED]);
    await t.stop();
  }

  it('re-seals every webhook with the new key, after which the old key is not needed', async () => {
    receiver = await createMockReceiver({ username: 'rot-user', password: 'rot-password-1' });
    const accounts = [accountId('rot'), accountId('rot')];
    const first = await startTestServer(dbFile, { secretKeys: k1 });
    servers.push(first);
    for (const account of accounts) {
      await first.clients.upsertWebhook({
        accountId: account,
        url: `${receiver.url}/hook`,
        basicAuth: { username: 'rot-user', password: 'rot-password-1' },
      });
    }
    await first.stop();

    // 1-2. The new key first, the old one kept: old values still open, deliveries still authenticate.
    await deliversWith(`${k2},${k1}`, accounts[0]!);
    // 3. Re-seal.
    const run = await reseal(dbFile, `${k2},${k1}`);
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({ primaryKeyId: 'k2', checked: 2, resealed: 2, failed: [] });
    const raw = await openStore(dbFile);
    try {
      for (const account of accounts) {
        expect((await raw.getWebhook(account))?.auth?.password).toMatch(/^enc:v1:k2:/);
      }
    } finally {
      await raw.close();
    }
    // 4. The old key removed: everything still opens and authenticates.
    await deliversWith(k2, accounts[1]!);
    expect(receiver.records.list().map((r) => r.answer.status)).toEqual([200, 200]);
    // Without the new key nothing opens: the reseal command says so and exits 1.
    const wrong = await reseal(dbFile, `k9:${randomBytes(32).toString('base64')}`);
    expect(wrong.code).toBe(1);
    expect(JSON.parse(wrong.stdout)).toMatchObject({
      checked: 2,
      resealed: 0,
      failed: [{ code: 'secret_key_unknown' }, { code: 'secret_key_unknown' }],
    });
  });
});

describe('an upgrade from a build before encryption at rest (OPERATIONS.md): a warning at start until resealed', () => {
  const dir = mkdtempSync(join(tmpdir(), 'app-inbox-plaintext-'));
  const dbFile = join(dir, 'store.db');
  const k1 = `k1:${randomBytes(32).toString('base64')}`;
  const password = `legacy-pw-${randomUUID()}`;
  const signingSecret = `whsec_${randomBytes(32).toString('base64')}`;
  const servers: TestServer[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  /** Starts a server on the store and returns its start-time secrets check log line (the warning or debug's none). */
  async function startAndCheck(): Promise<{ entry: Record<string, unknown>; text: string }> {
    const logs = captureLogs();
    const t = await startTestServer(dbFile, { secretKeys: k1 }, { logger: logs.logger });
    servers.push(t);
    const entry = await eventually(
      () =>
        logs
          .text()
          .split('\n')
          .filter((line) => line.startsWith('{'))
          .map((line) => JSON.parse(line) as Record<string, unknown>)
          .find((e) => e.component === 'security' && /plaintext/.test(String(e.msg))),
      10_000,
      'the start-time check of the secrets at rest',
    );
    await t.stop();
    return { entry, text: logs.text() };
  }

  it('names how many webhooks keep plaintext secrets and the command, never a value; says nothing once resealed', async () => {
    // One webhook saved sealed by this build, two as a build before b4103ac stored them: in plaintext.
    const first = await startTestServer(dbFile, { secretKeys: k1 });
    servers.push(first);
    await first.clients.upsertWebhook({
      accountId: accountId('sealed'),
      url: 'http://127.0.0.1:9/hook',
      signingSecret,
    });
    await first.stop();
    const raw = await openStore(dbFile);
    try {
      for (const account of [accountId('legacy'), accountId('legacy')]) {
        const auth = { type: 'basic' as const, username: 'legacy-user', password };
        await raw.upsertWebhook(
          account,
          { url: 'http://127.0.0.1:9/hook', auth, signingSecret, maxMessagesPerContact: 1000, enabled: true },
          Date.now(),
        );
      }
    } finally {
      await raw.close();
    }

    const before = await startAndCheck();
    expect(before.entry).toMatchObject({ level: 40, webhooks: 2 });
    expect(before.entry.msg).toMatch(
      /^2 webhook\(s\) keep secrets \(a password, signing secret or header value\) in plaintext/,
    );
    expect(before.entry.msg).toContain('npm run secrets:reseal -w @app-inbox/grpc-server -- --store');
    expect(found(before.text, [password, signingSecret, signingSecret.slice('whsec_'.length)])).toEqual([]);

    // The command it names seals them; the next start says nothing (debug: none found).
    const run = await reseal(dbFile, k1);
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ checked: 3, resealed: 2, failed: [] });
    const after = await startAndCheck();
    expect(after.entry).toMatchObject({
      level: 20,
      webhooks: 3,
      msg: 'webhook secrets at rest: none stored in plaintext',
    });
    expect(after.text).not.toMatch(/"level":40/);
  });
});

describe('a lost key (SECURITY.md): the account stays usable and a re-save recovers it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'app-inbox-lost-key-'));
  const dbFile = join(dir, 'store.db');
  let receiver: MockReceiver;
  const servers: TestServer[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await receiver.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes messages and shows the webhook without its key, and delivers once the webhook is saved again', async () => {
    receiver = await createMockReceiver({ username: 'lost-user', password: 'new-password' });
    const account = accountId('lost');
    const first = await startTestServer(dbFile, { secretKeys: `k2:${randomBytes(32).toString('base64')}` });
    servers.push(first);
    await first.clients.upsertWebhook({
      accountId: account,
      url: `${receiver.url}/hook`,
      basicAuth: { username: 'lost-user', password: 'sealed-with-k2' },
      headers: { 'x-api-key': 'k_sealed_with_k2' },
    });
    await first.stop();

    // k2 is gone (SECURITY.md rotation step 4 once named the wrong key to remove; a lost secret.key is the same).
    const second = await startTestServer(dbFile, { secretKeys: `k1:${randomBytes(32).toString('base64')}` });
    servers.push(second);
    const shown = await second.clients.getWebhook({ accountId: account });
    expect(shown.webhook).toMatchObject({
      basicAuth: { username: 'lost-user', hasPassword: true },
      headerNames: ['x-api-key'],
    });
    const published = await second.clients.publishMessages({ accountId: account, messages: [inboxMessage('c-1')] });
    const deliveryId = published.deliveries[0]?.deliveryId ?? '';
    expect(deliveryId).not.toBe('');
    // UpdateWebhook would keep the password it cannot open (re-sealing the sealed text as if it were one): refused,
    // naming what to send again, and nothing changes.
    const kept = await failure(
      second.clients.updateWebhook({ accountId: account, updateMask: ['enabled'], enabled: false }),
    );
    expect(kept.code).toBe(status.FAILED_PRECONDITION);
    expect(kept.details).toContain('name basic_auth and headers in update_mask');
    expect(kept.details).not.toContain('k_sealed_with_k2');
    // The command line cannot name update_mask: it says how to recover with its own commands.
    const disable = await runCli(['--address', second.server.address, 'webhook', 'disable', account]);
    expect(disable.code).toBe(1);
    expect(disable.stderr).toContain('FAILED_PRECONDITION');
    expect(disable.stderr).toContain(`app-inbox webhook set ${account} --url`);
    expect(disable.stderr).toContain('--password-env');
    expect(disable.stderr).not.toContain('sealed-with-k2');
    expect(disable.stderr).not.toContain('enc:v1');
    expect((await second.clients.getWebhook({ accountId: account })).webhook).toEqual(shown.webhook);
    // Re-saved with its password: the postponed delivery goes out, sealed with the key now loaded.
    const saved = await second.clients.upsertWebhook({
      accountId: account,
      url: `${receiver.url}/hook`,
      basicAuth: { username: 'lost-user', password: 'new-password' },
    });
    expect(saved.created).toBe(false);
    await second.clients.retryDelivery({ deliveryId });
    await deliveryIn(second.clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED], 10_000);
    expect(receiver.records.list().map((r) => r.answer.status)).toEqual([200]);
  });
});

describe('a shared PostgreSQL store requires a key', () => {
  const url = 'postgres://app:unused@127.0.0.1:1/none';

  it('startServer refuses to start, naming the variable and the option, before connecting', async () => {
    await expect(
      startServer(testConfig(url, { secretKeys: '' }), { logger: pino({ enabled: false }) }),
    ).rejects.toThrow(/PostgreSQL store needs an encryption key.*APP_INBOX_SECRET_KEYS or --secret-key-file/);
  });

  it('the program exits with the configuration error code and says why on stderr', async () => {
    const { APP_INBOX_SECRET_KEYS: _k, APP_INBOX_SECRET_KEY_FILE: _f, ...env } = process.env;
    const child = spawn(
      process.execPath,
      [
        '--conditions=@app-inbox/source',
        '--import',
        'tsx',
        'src/main.ts',
        '--store',
        url,
        '--grpc-address',
        '127.0.0.1:0',
      ],
      { cwd: PACKAGE_DIR, stdio: ['ignore', 'ignore', 'pipe'], env: { ...env, NODE_OPTIONS: '' } },
    );
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const [code] = (await once(child, 'exit')) as [number | null];
    expect(code).toBe(2);
    expect(stderr).toMatch(/PostgreSQL store needs an encryption key/);
  });
});
