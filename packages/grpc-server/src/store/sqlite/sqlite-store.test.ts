import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { storeConformanceSuite } from '../conformance.js';
import { migrateSqlite, openSqliteStore, SqliteStore } from './sqlite-store.js';
import { messageIdKey, SQLITE_MIGRATIONS } from './schema.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'app-inbox-sqlite-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

// A real file (WAL and all), a new one per test.
storeConformanceSuite('sqlite (file)', async () => {
  const store = await openSqliteStore({ path: join(dir, `store-${Math.random().toString(36).slice(2)}.db`) });
  return { store, cleanup: () => store.close() };
});

describe('SqliteStore', () => {
  const T0 = 1_700_000_000_000;
  const message = (id: string) => ({
    externalCustomerId: 'c',
    id,
    createdDate: T0,
    title: 't',
    content: 'x',
    category: 'k',
    expiresAt: T0 + 60_000,
  });

  it('keeps committed data across a close and a reopen', async () => {
    const path = join(dir, 'durable.db');
    const first = await openSqliteStore({ path });
    await first.upsertWebhook('a', { url: 'https://r.example/h', maxMessagesPerContact: 10, enabled: true }, T0);
    const published = await first.publish({ accountId: 'a', messages: [message('m1'), message('m2')], now: T0 });
    await first.close();

    const second = await openSqliteStore({ path });
    expect((await second.getWebhook('a'))?.url).toBe('https://r.example/h');
    expect((await second.contactMessages('a', 'c', T0, 10)).map((m) => m.id)).toEqual(['m1', 'm2']);
    const [claimed] = await second.claimDue({ lane: 'first', limit: 10, now: T0, leaseMs: 1000, owner: 'w' });
    expect(claimed?.delivery.id).toBe(published.deliveries[0]?.deliveryId);
    await second.close();
  });

  it('keeps every acknowledged publish when the process is killed with SIGKILL', async () => {
    const path = join(dir, 'killed.db');
    const child = join(dir, 'child.mts');
    const storeModule = fileURLToPath(new URL('./sqlite-store.ts', import.meta.url));
    // The child publishes in a loop and prints each acknowledged batch; it never closes the store.
    writeFileSync(
      child,
      `import { openSqliteStore } from ${JSON.stringify(storeModule)};
       const store = await openSqliteStore({ path: ${JSON.stringify(path)} });
       for (let batch = 0; ; batch++) {
         const messages = Array.from({ length: 200 }, (_, i) => ({ externalCustomerId: 'c' + (i % 20),
           id: batch + '-' + i, createdDate: ${T0} + batch, title: 't', content: 'x', category: 'k',
           expiresAt: ${T0} + 60000 }));
         await store.publish({ accountId: 'a', messages, now: ${T0} });
         process.stdout.write('ack ' + batch + '\\n');
       }`,
    );
    const proc = spawn(process.execPath, ['--import', 'tsx', child], { stdio: ['ignore', 'pipe', 'inherit'] });
    let acknowledged = -1;
    await new Promise<void>((resolve, reject) => {
      proc.on('error', reject);
      proc.on('exit', (code, signal) => (signal === 'SIGKILL' ? resolve() : reject(new Error(`child exited ${code}`))));
      proc.stdout.setEncoding('utf8');
      proc.stdout.on('data', (chunk: string) => {
        for (const line of chunk.split('\n')) {
          const match = /^ack (\d+)$/.exec(line);
          if (match) acknowledged = Math.max(acknowledged, Number(match[1]));
        }
        if (acknowledged >= 20) proc.kill('SIGKILL');
      });
    });
    expect(acknowledged).toBeGreaterThanOrEqual(20);
    const store = await openSqliteStore({ path });
    try {
      for (let batch = 0; batch <= acknowledged; batch++) {
        for (const i of [0, 199]) {
          const ids = (await store.contactMessages('a', `c${i % 20}`, T0, 10_000)).map((m) => m.id);
          expect(ids).toContain(`${batch}-${i}`);
        }
      }
      const page = await store.listDeliveries({ accountId: 'a' }, 100, null);
      expect(page.deliveries).toHaveLength(20);
    } finally {
      await store.close();
    }
  });

  it('gives its connection the page cache asked for, 32 MiB by default', async () => {
    const small = await openSqliteStore({ path: join(dir, 'cache-small.db'), cacheSizeKiB: 2048 });
    const standard = await openSqliteStore({ path: join(dir, 'cache-default.db') });
    try {
      expect(small.cacheSizeKiB).toBe(2048);
      expect(standard.cacheSizeKiB).toBe(32_768);
    } finally {
      await Promise.all([small.close(), standard.close()]);
    }
    expect(() => new SqliteStore({ path: join(dir, 'cache-bad.db'), cacheSizeKiB: 0 })).toThrow(/cacheSizeKiB/);
  });

  it('applies migrations once, however often it is opened', async () => {
    const path = join(dir, 'migrations.db');
    const store = await openSqliteStore({ path });
    await store.migrate();
    await store.close();
    await (await openSqliteStore({ path })).close();
    const db = new Database(path, { readonly: true });
    try {
      const rows = db.prepare('SELECT version, name FROM schema_migrations ORDER BY version').all();
      expect(rows).toEqual(SQLITE_MIGRATIONS.map((m) => ({ version: m.version, name: m.name })));
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      db.close();
    }
  });

  it('migrates a version 2 database with deliveries: the lease index replaces the state index', async () => {
    const path = join(dir, 'v2.db');
    const old = new Database(path);
    migrateSqlite(
      old,
      SQLITE_MIGRATIONS.filter((m) => m.version <= 2),
    );
    old.close();
    const store = await openSqliteStore({ path });
    await store.upsertWebhook('a', { url: 'https://r.example/h', maxMessagesPerContact: 10, enabled: true }, T0);
    await store.publish({
      accountId: 'a',
      messages: [message('m1'), { ...message('m2'), externalCustomerId: 'd' }],
      now: T0,
    });
    await store.claimDue({ lane: 'first', limit: 1, now: T0, leaseMs: 1000, owner: 'w' });
    expect((await store.stats(T0)).byState).toMatchObject({ pending: 1, in_flight: 1, retrying: 0, delivered: 0 });
    // The expired lease is found through the new index and its delivery goes back to its lane.
    await store.claimDue({ lane: 'retry', limit: 1, now: T0 + 2000, leaseMs: 1000, owner: 'w' });
    expect((await store.stats(T0 + 2000)).byState).toMatchObject({ pending: 2, in_flight: 0 });
    await store.close();
    const db = new Database(path, { readonly: true });
    try {
      const indexes = (
        db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'").all() as Array<{
          name: string;
        }>
      ).map((r) => r.name);
      expect(indexes).toContain('deliveries_lease_due');
      expect(indexes).not.toContain('deliveries_state_due');
      const plan = db
        .prepare("EXPLAIN QUERY PLAN SELECT seq FROM deliveries WHERE state = 'in_flight' AND next_attempt_at <= 1")
        .all() as Array<{ detail: string }>;
      expect(plan.map((r) => r.detail).join(' ')).toContain('deliveries_lease_due');
    } finally {
      db.close();
    }
  });

  it('migrates a version 3 database with messages: each gets its key, and ids stay unique per account', async () => {
    const path = join(dir, 'v3.db');
    const old = new Database(path);
    migrateSqlite(
      old,
      SQLITE_MIGRATIONS.filter((m) => m.version <= 3),
    );
    old.prepare("INSERT INTO accounts (account_id) VALUES ('a')").run();
    const stored = old.prepare(
      `INSERT INTO messages (account_key, id, external_customer_id, created_date, expires_at, title, content, category)
       VALUES (1, ?, 'c', ?, ?, 't', 'x', 'k')`,
    );
    stored.run('00000000-0000-4000-8000-000000000001', T0, T0 + 86_400_000);
    stored.run('00000000-0000-4000-8000-000000000002', T0 + 1, T0 + 86_400_000);
    old.close();
    const store = await openSqliteStore({ path });
    try {
      const known = { ...message('dup'), id: '00000000-0000-4000-8000-000000000001', externalCustomerId: 'c' };
      const fresh = { ...message('new'), externalCustomerId: 'c' };
      const result = await store.publish({ accountId: 'a', messages: [known, fresh, fresh], now: T0 + 2 });
      expect({ inserted: result.inserted, duplicates: result.duplicates }).toEqual({ inserted: 1, duplicates: 2 });
      // The same id in another account is another message.
      expect((await store.publish({ accountId: 'b', messages: [known], now: T0 + 2 })).inserted).toBe(1);
      const ids = (await store.contactMessages('a', 'c', T0 + 2, 10)).map((m) => m.id);
      expect(ids.sort()).toEqual(
        ['00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000002', fresh.id].sort(),
      );
    } finally {
      await store.close();
    }
    const db = new Database(path, { readonly: true });
    try {
      const rows = db.prepare('SELECT id, id_key FROM messages').all() as Array<{ id: string; id_key: number }>;
      expect(rows.length).toBe(4);
      expect(rows.every((r) => r.id_key === messageIdKey(r.id))).toBe(true);
      const plan = db
        .prepare('EXPLAIN QUERY PLAN SELECT 1 FROM messages WHERE id_key = ? AND account_key = ? AND id = ?')
        .all(1, 1, 'x') as Array<{ detail: string }>;
      expect(plan.map((r) => r.detail).join(' ')).toContain('messages_id_key');
    } finally {
      db.close();
    }
  });

  it('keys message ids into 52-bit safe integers that differ for ids one character apart', () => {
    const base = '6f1c2a9e-0b7d-4c51-9e3a-2f8d4b6c1a70';
    const keys = new Set<number>([messageIdKey(base)]);
    for (let i = 0; i < base.length; i++) {
      if (base[i] === '-') continue;
      keys.add(messageIdKey(base.slice(0, i) + (base[i] === '0' ? '1' : '0') + base.slice(i + 1)));
    }
    expect(keys.size).toBe(33);
    for (const key of keys) expect(Number.isSafeInteger(key) && key >= 0 && key < 2 ** 52).toBe(true);
  });

  it('refuses a database migrated by a newer version of the service', async () => {
    const path = join(dir, 'newer.db');
    await (await openSqliteStore({ path })).close();
    const db = new Database(path);
    db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 'x')").run();
    db.close();
    await expect(openSqliteStore({ path })).rejects.toMatchObject({ code: 'schema_too_new' });
  });

  describe('a database migrated by a build whose migration was reverted', () => {
    // Migration 5 of 4038f6a (reverted by db2007b), as it was released: the bodies moved to a table of their own.
    const frozenBodies = {
      version: 5,
      name: 'frozen bodies in a table of their own',
      sql: `
CREATE TABLE delivery_bodies (
  seq         INTEGER PRIMARY KEY REFERENCES deliveries (seq) ON DELETE CASCADE,
  body        BLOB NOT NULL,
  message_ids TEXT NOT NULL, -- JSON array
  frozen_at   INTEGER NOT NULL
);
INSERT INTO delivery_bodies (seq, body, message_ids, frozen_at)
  SELECT seq, body, COALESCE(message_ids, '[]'), COALESCE(first_attempt_at, updated_at) FROM deliveries
  WHERE body IS NOT NULL;
ALTER TABLE deliveries DROP COLUMN body;
ALTER TABLE deliveries DROP COLUMN message_ids;
`,
    };
    // Migration 5 of 1f88e30 (reverted by 3616cd5), as it was released.
    const leaseLosses = {
      version: 5,
      name: 'lease losses of a delivery',
      sql: 'ALTER TABLE deliveries ADD COLUMN lease_losses INTEGER NOT NULL DEFAULT 0;',
    };
    const current = SQLITE_MIGRATIONS.map((m) => ({ version: m.version, name: m.name }));
    const inspect = (path: string) => {
      const db = new Database(path, { readonly: true });
      try {
        return {
          migrations: db.prepare('SELECT version, name FROM schema_migrations ORDER BY version').all(),
          columns: (db.prepare('PRAGMA table_info(deliveries)').all() as Array<{ name: string }>).map((c) => c.name),
          bodies: db.prepare("SELECT name FROM sqlite_master WHERE name = 'delivery_bodies'").all().length,
        };
      } finally {
        db.close();
      }
    };

    it('gets its frozen bodies back from delivery_bodies instead of refusing to start as if it were newer', async () => {
      // Before: 'the database is at schema version 5, this build knows up to 4: upgrade the service', on the newest
      // build, with the bodies of the deliveries waiting for a retry out of its reach.
      const path = join(dir, 'bodies.db');
      const old = await openSqliteStore({ path });
      await old.upsertWebhook('a', { url: 'https://r.example/h', maxMessagesPerContact: 10, enabled: true }, T0);
      await old.publish({
        accountId: 'a',
        messages: ['c', 'd', 'e'].map((c, i) => ({ ...message(`m${i}`), externalCustomerId: c })),
        now: T0,
      });
      const [retried, inFlight] = await old.claimDue({ lane: 'first', limit: 2, now: T0, leaseMs: 1000, owner: 'w' });
      const bodyOf = (contact: string) => Buffer.from(`[{"contact":"${contact}"}]`);
      for (const claim of [retried!, inFlight!]) {
        const contact = claim.delivery.externalCustomerId;
        expect(await old.freeze(claim.delivery.id, 'w', bodyOf(contact), [`m-${contact}`], T0 + 1)).toBe(true);
      }
      await old.recordAttempt(retried!.delivery.id, {
        owner: 'w',
        attempt: {
          deliveryId: retried!.delivery.id,
          attemptNo: 1,
          startedAt: T0 + 1,
          durationMs: 1,
          statusCode: 503,
          errorKind: null,
          verdict: 'retry',
          nextAttemptAt: T0 + 10,
        },
        nextState: 'retrying',
      });
      await old.close();
      const raw = new Database(path);
      migrateSqlite(raw, [...SQLITE_MIGRATIONS, frozenBodies], []);
      // 4038f6a's freeze left first_attempt_at to the first recorded attempt (the freeze's time stood for it).
      raw.prepare('UPDATE deliveries SET first_attempt_at = NULL WHERE id = ?').run(inFlight!.delivery.id);
      raw.close();
      expect(inspect(path).columns).not.toContain('body');

      const store = await openSqliteStore({ path });
      try {
        for (const claim of [retried!, inFlight!]) {
          const contact = claim.delivery.externalCustomerId;
          const read = await store.getDelivery(claim.delivery.id);
          expect(Buffer.from(read!.delivery.body!)).toEqual(bodyOf(contact));
          expect(read!.delivery.messageIds).toEqual([`m-${contact}`]);
          expect(read!.delivery.firstAttemptAt).toBe(T0 + 1);
        }
        // The retry and the lease taken back are claimed with their frozen bodies; the pending one is frozen anew.
        const retry = await store.claimDue({ lane: 'retry', limit: 10, now: T0 + 2000, leaseMs: 1000, owner: 'x' });
        expect(retry.map((c) => [c.delivery.id, Buffer.from(c.delivery.body!).toString()]).sort()).toEqual(
          [retried!, inFlight!].map((c) => [c.delivery.id, bodyOf(c.delivery.externalCustomerId).toString()]).sort(),
        );
        const [pending] = await store.claimDue({ lane: 'first', limit: 10, now: T0 + 2000, leaseMs: 1000, owner: 'x' });
        expect(await store.freeze(pending!.delivery.id, 'x', bodyOf('e'), ['m-e'], T0 + 2001)).toBe(true);
      } finally {
        await store.close();
      }
      expect(inspect(path)).toMatchObject({ migrations: current, bodies: 0 });
    });

    it('drops the lease-loss count of 1f88e30 instead of refusing to start as if it were newer', async () => {
      const path = join(dir, 'lease-losses.db');
      await (await openSqliteStore({ path })).close();
      const raw = new Database(path);
      migrateSqlite(raw, [...SQLITE_MIGRATIONS, leaseLosses], []);
      raw.close();
      const store = await openSqliteStore({ path });
      try {
        await store.upsertWebhook('a', { url: 'https://r.example/h', maxMessagesPerContact: 10, enabled: true }, T0);
        await store.publish({ accountId: 'a', messages: [message('m1')], now: T0 });
        expect(await store.claimDue({ lane: 'first', limit: 1, now: T0, leaseMs: 1000, owner: 'w' })).toHaveLength(1);
      } finally {
        await store.close();
      }
      const after = inspect(path);
      expect(after.migrations).toEqual(current);
      expect(after.columns).not.toContain('lease_losses');
    });

    it('refuses a migration it does not know under the number of one of its own, changing nothing', async () => {
      const path = join(dir, 'branch.db');
      const raw = new Database(path);
      migrateSqlite(raw, [...SQLITE_MIGRATIONS.slice(0, -1), { version: 4, name: 'from another branch', sql: '' }], []);
      raw.close();
      await expect(openSqliteStore({ path })).rejects.toMatchObject({
        code: 'schema_too_new',
        message: expect.stringMatching(/records migration 4 as 'from another branch'/),
      });
      expect(inspect(path).migrations.at(-1)).toEqual({ version: 4, name: 'from another branch' });
    });
  });

  it('works in memory and refuses calls once closed', async () => {
    const store = await openSqliteStore({ path: ':memory:' });
    expect(await store.getWebhook('a')).toBeNull();
    await store.close();
    await store.close(); // idempotent
    await expect(store.getWebhook('a')).rejects.toMatchObject({ code: 'closed' });
  });

  it('commits the writes of one turn together, in call order, and a failing write alone', async () => {
    const path = join(dir, 'group.db');
    const store = await openSqliteStore({ path });
    // A second connection sees only what is committed.
    const observer = new Database(path, { readonly: true });
    const committed = () => (observer.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number }).n;
    try {
      await store.upsertWebhook('a', { url: 'https://r.example/h', maxMessagesPerContact: 10, enabled: true }, T0);
      const first = store.publish({ accountId: 'a', messages: [message('m1')], now: T0 });
      const again = store.publish({ accountId: 'a', messages: [message('m1'), message('m2')], now: T0 });
      const other = store.publish({
        accountId: 'a',
        messages: [{ ...message('m3'), externalCustomerId: 'd' }],
        now: T0,
      });
      // Nothing is committed until the group commits, at the end of this turn of the event loop.
      expect(committed()).toBe(0);
      const [a, b, c] = await Promise.all([first, again, other]);
      expect(committed()).toBe(3);
      // In call order: the second publish found m1 already stored by the first.
      expect([a.inserted, a.duplicates, b.inserted, b.duplicates, c.inserted]).toEqual([1, 0, 1, 1, 1]);
      expect(b.deliveries[0]?.deliveryId).toBe(a.deliveries[0]?.deliveryId);

      const claims = await store.claimDue({ lane: 'first', limit: 10, now: T0, leaseMs: 10_000, owner: 'w' });
      expect(claims).toHaveLength(2);
      const [one, two] = claims.map((claim) => claim.delivery.id) as [string, string];
      // A body that throws when read inside the group: that write fails alone, the other one commits.
      const unreadable = new Uint8Array(2);
      Object.defineProperty(unreadable, 'buffer', {
        get() {
          throw new Error('unreadable body');
        },
      });
      const body = new TextEncoder().encode('[]');
      const settled = await Promise.allSettled([
        store.freeze(one, 'w', unreadable, [], T0),
        store.freeze(two, 'w', body, [], T0),
      ]);
      expect(settled[0]).toMatchObject({ status: 'rejected', reason: { message: 'unreadable body' } });
      expect(settled[1]).toEqual({ status: 'fulfilled', value: true });
      expect((await store.getDelivery(two))?.delivery.body).toEqual(body);
      // The failed write left no trace: the delivery can still be frozen once.
      expect((await store.getDelivery(one))?.delivery.body).toBeNull();
      expect(await store.freeze(one, 'w', body, [], T0)).toBe(true);
    } finally {
      observer.close();
      await store.close();
    }
  });

  it('rejects every write of a group that SQLite rolled back whole (disk full), and runs none after it', async () => {
    const path = join(dir, 'full.db');
    // The store's own connection, to give it a small disk: max_page_count stands for a full one.
    const transaction = vi.spyOn(Database.prototype, 'transaction');
    const store = await openSqliteStore({ path });
    const conn = transaction.mock.contexts[0] as Database.Database;
    transaction.mockRestore();
    try {
      await store.publish({ accountId: 'a', messages: [message('m0')], now: T0 });
      conn.pragma(`max_page_count = ${(conn.pragma('page_count', { simple: true }) as number) + 40}`);
      const contact = (id: string, c: string, content = 'x') => ({ ...message(id), externalCustomerId: c, content });
      const results = await Promise.allSettled([
        store.publish({ accountId: 'a', messages: [contact('m1', 'c1')], now: T0 }),
        store.publish({ accountId: 'a', messages: [contact('m2', 'c2', 'x'.repeat(1_000_000))], now: T0 }),
        store.publish({ accountId: 'a', messages: [contact('m3', 'c3')], now: T0 }),
      ]);
      // All three refused with the disk's error (not "cannot commit - no transaction is active"), and none stored:
      // the third had committed on its own before.
      expect(
        results.map((r) => (r.status === 'rejected' ? (r.reason as { code?: string }).code : 'fulfilled')),
      ).toEqual(['SQLITE_FULL', 'SQLITE_FULL', 'SQLITE_FULL']);
      const stored = async (c: string) => (await store.contactMessages('a', c, T0, 10)).length;
      expect([await stored('c1'), await stored('c2'), await stored('c3')]).toEqual([0, 0, 0]);
      // And the store goes on once there is room.
      conn.pragma('max_page_count = 1073741823');
      expect((await store.publish({ accountId: 'a', messages: [contact('m3', 'c3')], now: T0 })).inserted).toBe(1);
    } finally {
      await store.close();
    }
  });

  it('commits the writes still queued when it is closed', async () => {
    const path = join(dir, 'close.db');
    const store = await openSqliteStore({ path });
    const published = store.publish({ accountId: 'a', messages: [message('m1')], now: T0 });
    await store.close();
    expect((await published).inserted).toBe(1);
    const reopened = await openSqliteStore({ path });
    expect((await reopened.contactMessages('a', 'c', T0, 10)).map((m) => m.id)).toEqual(['m1']);
    await reopened.close();
  });

  it('rejects bad options naming them', () => {
    expect(() => new SqliteStore({ path: '' })).toThrow(/path/);
    expect(() => new SqliteStore({ path: ':memory:', busyTimeoutMs: -1 })).toThrow(/busyTimeoutMs/);
  });
});
