import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StoredMessage, WebhookConfig } from '@app-inbox/core';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openSqliteStore, type SqliteStore } from '../store/sqlite/sqlite-store.js';
import {
  countPlaintextWebhookSecrets,
  resealAllWebhookSecrets,
  resealWebhookSecrets,
  sealWebhookSecrets,
  webhookNeedsRotation,
  withSealedSecrets,
} from './sealed-store.js';
import { createSecretBox, type SecretBox } from './secrets.js';

const T0 = 1_700_000_000_000;
const PASSWORD = `pw-${randomUUID()}-ünïcødé`;
const SIGNING_SECRET = `whsec_${randomBytes(24).toString('base64')}`;

const key = (id: string) => ({ id, key: randomBytes(32) });
const k1 = key('k1');
const k2 = key('k2');

function config(password = PASSWORD): WebhookConfig {
  return {
    url: 'https://hooks.example.com/inbox',
    auth: { type: 'basic', username: 'acme', password },
    maxMessagesPerContact: 1000,
    enabled: true,
    signingSecret: SIGNING_SECRET,
  };
}

function message(externalCustomerId: string): StoredMessage {
  return {
    externalCustomerId,
    id: randomUUID(),
    createdDate: T0,
    title: 't',
    content: 'c',
    category: 'news',
    expiresAt: T0 + 86_400_000,
  };
}

describe('withSealedSecrets over the SQLite store', () => {
  let dir: string;
  let raw: SqliteStore;
  let box: SecretBox;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sealed-store-'));
    raw = await openSqliteStore({ path: join(dir, 'inbox.db'), synchronous: 'normal' });
    box = createSecretBox({ keys: [k1], primaryKeyId: 'k1' });
  });
  afterEach(async () => {
    await raw.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('stores only ciphertext (no plaintext anywhere in the database files) and reads back plaintext', async () => {
    const store = withSealedSecrets(raw, box);
    const written = await store.upsertWebhook('acct-1', config(), T0);
    expect(written.auth?.password).toBe(PASSWORD);
    expect(written.signingSecret).toBe(SIGNING_SECRET);
    await expect(store.getWebhook('acct-1')).resolves.toMatchObject({
      auth: { type: 'basic', username: 'acme', password: PASSWORD },
      signingSecret: SIGNING_SECRET,
      url: 'https://hooks.example.com/inbox',
    });

    const stored = await raw.getWebhook('acct-1');
    expect(stored?.auth?.password.startsWith('enc:v1:k1:')).toBe(true);
    expect(stored?.signingSecret?.startsWith('enc:v1:k1:')).toBe(true);
    expect(stored?.auth?.username).toBe('acme');

    // Scan every byte the engine wrote (database, WAL, shared memory) for either secret.
    const db = new Database(join(dir, 'inbox.db'), { readonly: true });
    const row = db.prepare('SELECT config FROM webhooks WHERE account_id = ?').get('acct-1') as { config: string };
    db.close();
    expect(row.config).toContain('enc:v1:k1:');
    for (const file of readdirSync(dir)) {
      const bytes = readFileSync(join(dir, file));
      expect(bytes.includes(Buffer.from(PASSWORD)), file).toBe(false);
      expect(bytes.includes(Buffer.from(SIGNING_SECRET)), file).toBe(false);
    }
  });

  it('createWebhookIfAbsent seals too, and answers null (writing nothing) where a webhook is already there', async () => {
    const store = withSealedSecrets(raw, box);
    const created = await store.createWebhookIfAbsent('acct-1', config(), T0);
    expect(created?.auth?.password).toBe(PASSWORD);
    expect(created?.signingSecret).toBe(SIGNING_SECRET);
    const stored = await raw.getWebhook('acct-1');
    expect(stored?.auth?.password.startsWith('enc:v1:k1:')).toBe(true);
    expect(stored?.signingSecret?.startsWith('enc:v1:k1:')).toBe(true);
    await expect(
      store.createWebhookIfAbsent('acct-1', { ...config(), signingSecret: 'whsec_other' }, T0 + 1),
    ).resolves.toBeNull();
    await expect(raw.getWebhook('acct-1')).resolves.toEqual(stored);
  });

  it('hands claimed deliveries their webhook with secrets opened', async () => {
    const store = withSealedSecrets(raw, box);
    await store.upsertWebhook('acct-1', config(), T0);
    await store.publish({ accountId: 'acct-1', messages: [message('c-1')], now: T0 });
    const claimed = await store.claimDue({ lane: 'first', limit: 10, now: T0, leaseMs: 30_000, owner: 'w1' });
    expect(claimed).toHaveLength(1);
    expect(claimed[0]?.webhook.auth?.password).toBe(PASSWORD);
    expect(claimed[0]?.webhook.signingSecret).toBe(SIGNING_SECRET);
  });

  it('releases, instead of failing the whole claim, a delivery whose secret cannot be opened', async () => {
    const store = withSealedSecrets(raw, box, {
      onSecretError: (accountId, error) => errors.push([accountId, (error as { code?: string }).code ?? '']),
      retryDelayMs: 5_000,
    });
    const errors: Array<[string, string]> = [];
    await store.upsertWebhook('good', config(), T0);
    // Sealed with a key this process does not have (e.g. removed before rotation finished).
    await withSealedSecrets(raw, createSecretBox({ keys: [k2], primaryKeyId: 'k2' })).upsertWebhook(
      'broken',
      config(),
      T0,
    );
    await store.publish({ accountId: 'good', messages: [message('c-1')], now: T0 });
    await store.publish({ accountId: 'broken', messages: [message('c-2')], now: T0 });

    const claimed = await store.claimDue({ lane: 'first', limit: 10, now: T0, leaseMs: 30_000, owner: 'w1' });
    expect(claimed.map((c) => c.webhook.accountId)).toEqual(['good']);
    expect(errors).toEqual([['broken', 'secret_key_unknown']]);
    // Nothing dropped: the broken account's delivery is pending again, due after the delay.
    const page = await raw.listDeliveries({ accountId: 'broken' }, 10, null);
    expect(page.deliveries).toHaveLength(1);
    expect(page.deliveries[0]).toMatchObject({ state: 'pending', nextAttemptAt: T0 + 5_000 });
  });

  it('reads a webhook whose secret cannot be opened with that secret still sealed, and says so', async () => {
    const errors: string[] = [];
    const store = withSealedSecrets(raw, box, { onSecretError: (accountId) => errors.push(accountId) });
    await withSealedSecrets(raw, createSecretBox({ keys: [k2], primaryKeyId: 'k2' })).upsertWebhook(
      'lost-key',
      config(),
      T0,
    );
    // The account stays manageable (GetWebhook shows only whether a secret is set; a re-save replaces it).
    const read = await store.getWebhook('lost-key');
    expect(read?.auth?.password).toMatch(/^enc:v1:k2:/);
    expect(read?.signingSecret).toMatch(/^enc:v1:k2:/);
    expect(errors).toEqual(['lost-key']);
    const resaved = await store.upsertWebhook('lost-key', config('a new password'), T0 + 1);
    expect(resaved.auth?.password).toBe('a new password');
    expect((await store.getWebhook('lost-key'))?.auth?.password).toBe('a new password');
  });

  it('rotates: an old-key secret still opens, and resealWebhookSecrets moves it to the new primary', async () => {
    await withSealedSecrets(raw, box).upsertWebhook('acct-1', config(), T0);
    const rotated = createSecretBox({ keys: [k2, k1], primaryKeyId: 'k2' });
    const store = withSealedSecrets(raw, rotated);
    await expect(store.getWebhook('acct-1')).resolves.toMatchObject({ auth: { password: PASSWORD } });
    const before = await raw.getWebhook('acct-1');
    expect(before && webhookNeedsRotation(before, rotated)).toBe(true);

    await expect(resealWebhookSecrets(raw, rotated, 'acct-1')).resolves.toBe(true);
    const after = await raw.getWebhook('acct-1');
    expect(after?.auth?.password.startsWith('enc:v1:k2:')).toBe(true);
    expect(after?.signingSecret?.startsWith('enc:v1:k2:')).toBe(true);
    // Not a save of the webhook: its updatedAt stays (a new one lifts a 410 pause, gives back waiting claims).
    expect(after).toMatchObject({
      url: before?.url,
      maxMessagesPerContact: 1000,
      enabled: true,
      createdAt: T0,
      updatedAt: before?.updatedAt,
    });
    await expect(resealWebhookSecrets(raw, rotated, 'acct-1')).resolves.toBe(false);

    // The old key can now be dropped.
    const newOnly = withSealedSecrets(raw, createSecretBox({ keys: [k2], primaryKeyId: 'k2' }));
    await expect(newOnly.getWebhook('acct-1')).resolves.toMatchObject({
      auth: { password: PASSWORD },
      signingSecret: SIGNING_SECRET,
    });
  });

  it('never undoes an UpsertWebhook or a DeleteWebhook that answered OK while it was re-sealing', async () => {
    await withSealedSecrets(raw, box).upsertWebhook('saved', config(), T0);
    await withSealedSecrets(raw, box).upsertWebhook('deleted', config(), T0);
    const rotated = createSecretBox({ keys: [k2, k1], primaryKeyId: 'k2' });
    // A server process (with the rotated keys) answers a call between the reseal's read and its write.
    const server = withSealedSecrets(raw, rotated);
    const between: Record<string, () => Promise<unknown>> = {
      saved: () => server.upsertWebhook('saved', { ...config('the new password'), enabled: false }, T0 + 5),
      deleted: () => server.deleteWebhook('deleted'),
    };
    const racing = new Proxy(raw, {
      get(target, property) {
        if (property !== 'getWebhook') {
          const value: unknown = Reflect.get(target, property, target);
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        }
        return async (accountId: string) => {
          const read = await target.getWebhook(accountId);
          const call = between[accountId];
          delete between[accountId];
          await call?.();
          return read;
        };
      },
    });

    const report = await resealAllWebhookSecrets(racing, rotated);
    expect(report.failed).toEqual([]);
    // The save stands (disabled, its new password), sealed with the primary key by the server.
    await expect(server.getWebhook('saved')).resolves.toMatchObject({
      enabled: false,
      auth: { password: 'the new password' },
      updatedAt: T0 + 5,
    });
    expect((await raw.getWebhook('saved'))?.auth?.password.startsWith('enc:v1:k2:')).toBe(true);
    // The deleted webhook stays deleted.
    await expect(raw.getWebhook('deleted')).resolves.toBeNull();
  });

  it('resealAllWebhookSecrets rotates every account page by page and reports the ones it cannot open', async () => {
    const old = withSealedSecrets(raw, box);
    for (let i = 0; i < 5; i++) await old.upsertWebhook(`acct-${i}`, config(), T0);
    await raw.upsertWebhook('legacy-plaintext', config(), T0);
    const lost = createSecretBox({ keys: [key('gone')], primaryKeyId: 'gone' });
    await withSealedSecrets(raw, lost).upsertWebhook('lost-key', config(), T0);
    const rotated = createSecretBox({ keys: [k2, k1], primaryKeyId: 'k2' });

    const report = await resealAllWebhookSecrets(raw, rotated, { pageSize: 2 });
    expect(report).toEqual({
      checked: 7,
      resealed: 6,
      failed: [{ accountId: 'lost-key', code: 'secret_key_unknown' }],
    });
    for (let i = 0; i < 5; i++) {
      expect((await raw.getWebhook(`acct-${i}`))?.auth?.password.startsWith('enc:v1:k2:')).toBe(true);
    }
    expect((await raw.getWebhook('legacy-plaintext'))?.signingSecret?.startsWith('enc:v1:k2:')).toBe(true);
    // Nothing left to do: a second run rewrites nothing.
    await expect(resealAllWebhookSecrets(raw, rotated)).resolves.toMatchObject({ checked: 7, resealed: 0 });
    // k1 can go: every account but the broken one opens with k2 alone.
    const newOnly = withSealedSecrets(raw, createSecretBox({ keys: [k2], primaryKeyId: 'k2' }));
    await expect(newOnly.getWebhook('acct-4')).resolves.toMatchObject({ auth: { password: PASSWORD } });
  });

  it('opens plaintext written before encryption was on, and reseal encrypts it', async () => {
    await raw.upsertWebhook('legacy', config(), T0);
    const store = withSealedSecrets(raw, box);
    await expect(store.getWebhook('legacy')).resolves.toMatchObject({ auth: { password: PASSWORD } });
    await expect(resealWebhookSecrets(raw, box, 'legacy')).resolves.toBe(true);
    expect((await raw.getWebhook('legacy'))?.auth?.password.startsWith('enc:v1:k1:')).toBe(true);
  });

  it('countPlaintextWebhookSecrets counts, page by page, the webhooks with a secret in plaintext, and only those', async () => {
    const sealed = withSealedSecrets(raw, box);
    for (let i = 0; i < 3; i++) await sealed.upsertWebhook(`sealed-${i}`, config(), T0);
    // Sealed with a key not loaded here (an older or lost one): sealed all the same, the reseal command's business.
    await withSealedSecrets(raw, createSecretBox({ keys: [k2], primaryKeyId: 'k2' })).upsertWebhook(
      'other-key',
      config(),
      T0,
    );
    await raw.upsertWebhook('no-secrets', { url: config().url, maxMessagesPerContact: 1000, enabled: true }, T0);
    // Before encryption at rest: both secrets in plaintext; or one of them only (the other saved sealed since).
    await raw.upsertWebhook('legacy-both', config(), T0);
    await raw.upsertWebhook(
      'legacy-signing',
      { ...sealWebhookSecrets(config(), box), signingSecret: SIGNING_SECRET },
      T0,
    );

    await expect(countPlaintextWebhookSecrets(raw, box, { pageSize: 2 })).resolves.toEqual({
      checked: 7,
      plaintext: 2,
    });
    // Stopped (the server shutting down): no count, rather than a short one.
    await expect(countPlaintextWebhookSecrets(raw, box, { stopped: () => true })).resolves.toBeNull();
    // Re-sealed: none left.
    await resealAllWebhookSecrets(raw, box);
    await expect(countPlaintextWebhookSecrets(raw, box)).resolves.toEqual({ checked: 7, plaintext: 0 });
  });

  it("seals the values of the webhook's own headers like the password: at rest, in a claim, on reseal and in the count", async () => {
    const apiKey = `k_live_${randomUUID()}`;
    const bearer = `Bearer ${randomUUID()}`;
    const headers = { 'x-api-key': apiKey, authorization: bearer };
    const withHeaders = { ...config(), auth: undefined, headers };
    const store = withSealedSecrets(raw, box);
    expect((await store.upsertWebhook('acct-1', withHeaders, T0)).headers).toEqual(headers);
    await expect(store.getWebhook('acct-1')).resolves.toMatchObject({ headers });
    // The names stay readable (a read shows them); each value is sealed on its own.
    const stored = await raw.getWebhook('acct-1');
    expect(Object.keys(stored?.headers ?? {})).toEqual(['x-api-key', 'authorization']);
    for (const value of Object.values(stored?.headers ?? {})) expect(value.startsWith('enc:v1:k1:')).toBe(true);
    for (const file of readdirSync(dir)) {
      const bytes = readFileSync(join(dir, file));
      expect(bytes.includes(Buffer.from(apiKey)), file).toBe(false);
      expect(bytes.includes(Buffer.from(bearer)), file).toBe(false);
    }
    await store.publish({ accountId: 'acct-1', messages: [message('c-1')], now: T0 });
    const [claimed] = await store.claimDue({ lane: 'first', limit: 1, now: T0, leaseMs: 30_000, owner: 'w1' });
    expect(claimed?.webhook.headers).toEqual(headers);

    // A header value in plaintext (saved before it was sealed) is counted and resealed like a password.
    await raw.upsertWebhook(
      'legacy-header',
      { ...sealWebhookSecrets(withHeaders, box), headers: { ...stored?.headers, 'x-api-key': apiKey } },
      T0,
    );
    await expect(countPlaintextWebhookSecrets(raw, box)).resolves.toEqual({ checked: 2, plaintext: 1 });
    const rotated = createSecretBox({ keys: [k2, k1], primaryKeyId: 'k2' });
    await expect(resealAllWebhookSecrets(raw, rotated)).resolves.toEqual({ checked: 2, resealed: 2, failed: [] });
    for (const acct of ['acct-1', 'legacy-header']) {
      const resealed = await raw.getWebhook(acct);
      for (const value of Object.values(resealed?.headers ?? {})) expect(value.startsWith('enc:v1:k2:')).toBe(true);
      await expect(withSealedSecrets(raw, rotated).getWebhook(acct)).resolves.toMatchObject({ headers });
    }
  });

  it('seals a configured password even when it looks like a sealed value', async () => {
    const lookalike = 'enc:v1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
    const store = withSealedSecrets(raw, box);
    await store.upsertWebhook('acct-1', config(lookalike), T0);
    await expect(store.getWebhook('acct-1')).resolves.toMatchObject({ auth: { password: lookalike } });
  });

  it('passes every other method through to the engine', async () => {
    const store = withSealedSecrets(raw, box);
    await store.upsertWebhook('acct-1', config(), T0);
    const result = await store.publish({ accountId: 'acct-1', messages: [message('c-1')], now: T0 });
    expect(result.inserted).toBe(1);
    await expect(store.stats(T0)).resolves.toMatchObject({ byState: expect.objectContaining({ pending: 1 }) });
    await expect(store.deleteWebhook('acct-1')).resolves.toBe(true);
    await expect(store.getWebhook('acct-1')).resolves.toBeNull();
  });
});
