/**
 * A PostgreSQL connection that ends while the store holds it in a transaction (the database restarted or failed
 * over, the backend was terminated, the network reset it) fails that call only: the real server process (main.ts)
 * keeps running and serving. The pool listens for a connection's errors only while the connection is idle; one
 * checked out for a transaction emitted its error with no listener, and the process died of it.
 */
import { status } from '@grpc/grpc-js';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  accountId,
  eventually,
  failure,
  inboxMessage,
  spawnServer,
  storeUrls,
  type ChildServer,
} from '../e2e/harness.js';

const target = storeUrls().find((t) => t.engine === 'postgres')!;

describe('a PostgreSQL connection lost in the middle of a transaction', () => {
  let server: ChildServer | undefined;
  let holder: pg.Client | undefined;
  afterEach(async () => {
    await holder?.end().catch(() => undefined);
    await server?.kill();
  });
  afterAll(() => target.release());

  it('fails that call with UNAVAILABLE; the process keeps serving', async () => {
    const url = await target.newUrl();
    server = await spawnServer(url, []);
    const acc = accountId();
    // Disabled: the pending delivery stays pending (no claim takes it).
    await server.clients.upsertWebhook({
      accountId: acc,
      url: 'http://127.0.0.1:9/in',
      signingSecret: '',
      enabled: false,
    });
    await server.clients.publishMessages({ accountId: acc, messages: [inboxMessage('c')] });

    // Another session locks the contact's pending delivery: the server's ResyncContacts waits for it inside its
    // transaction (SELECT ... FOR UPDATE), on a connection checked out of the pool.
    holder = new pg.Client({ connectionString: url });
    await holder.connect();
    await holder.query('BEGIN');
    await holder.query(
      "SELECT id FROM deliveries WHERE account_id = $1 AND external_customer_id = 'c' AND state = 'pending' FOR UPDATE",
      [acc],
    );
    const resync = failure(server.clients.resyncContacts({ accountId: acc, externalCustomerIds: ['c'] }));
    const waiting = await eventually(
      async () => {
        const { rows } = await holder!.query<{ pid: number }>(
          "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
        );
        return rows[0]?.pid;
      },
      10_000,
      'the server waiting for the lock',
    );
    await holder.query('SELECT pg_terminate_backend($1)', [waiting]);

    expect((await resync).code).toBe(status.UNAVAILABLE);
    await holder.query('ROLLBACK');
    // Still the same process, serving: the same call goes through now.
    expect(() => process.kill(server!.pid, 0)).not.toThrow();
    const again = await server.clients.resyncContacts({ accountId: acc, externalCustomerIds: ['c'] });
    expect(again.deliveries).toHaveLength(1);
    await expect(server.clients.getWebhook({ accountId: acc })).resolves.toMatchObject({
      webhook: { accountId: acc, enabled: false },
    });
  });
});
