/**
 * The one conformance suite every store engine must pass, run against the real engine
 * (CONVENTIONS §4). It exercises every method and every rule of the {@link Store} interface:
 * ARCHITECTURE §1 (immutable deliveries), §2 (coalescing, supersede, one in flight per contact),
 * §3 (the store is the queue, claims are leases).
 *
 * Each test gets a fresh store from `makeStore` and uses its own account ids.
 */
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { StoredMessage, WebhookConfig } from '@app-inbox/core';
import type { Attempt, ClaimedDelivery, Delivery, DeliveryOutcome, Lane, Store } from './types.js';

export interface ConformanceOptions {
  /** Runs of the random model test. Default 30. */
  modelRuns?: number;
}

/** A fixed clock origin: every time in the suite is T0 + something (ms). */
const T0 = 1_700_000_000_000;
const DAY = 24 * 60 * 60 * 1000;
const LEASE = 60_000;

const encoder = new TextEncoder();

function account(): string {
  return `acct-${randomUUID()}`;
}

function webhook(overrides: Partial<WebhookConfig> = {}): WebhookConfig {
  return {
    url: 'https://receiver.example/hook',
    auth: { type: 'basic', username: 'user', password: 's3cret-password' },
    maxMessagesPerContact: 1000,
    enabled: true,
    signingSecret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
    ...overrides,
  };
}

function message(contact: string, overrides: Partial<StoredMessage> = {}): StoredMessage {
  return {
    externalCustomerId: contact,
    id: randomUUID(),
    createdDate: T0,
    title: 'Hello',
    content: 'A message',
    category: 'promo',
    expiresAt: T0 + DAY,
    ...overrides,
  };
}

/** A `delivered` outcome of one attempt of a new delivery id, at T0 (what a test emits); `overrides` on top. */
export function deliveredOutcome(overrides: Partial<DeliveryOutcome> = {}): DeliveryOutcome {
  return {
    deliveryId: randomUUID(),
    accountId: 'acct',
    externalCustomerId: 'c',
    state: 'delivered',
    messageIds: [],
    attemptNo: 1,
    statusCode: 200,
    errorKind: null,
    nextAttemptAt: null,
    at: T0,
    ...overrides,
  };
}

function bytesOf(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

function attempt(delivery: Delivery, verdict: Attempt['verdict'], at: number, extra: Partial<Attempt> = {}): Attempt {
  return {
    deliveryId: delivery.id,
    attemptNo: delivery.attemptCount + 1,
    startedAt: at,
    durationMs: 12,
    statusCode: verdict === 'delivered' ? 200 : verdict === 'failed' ? 400 : 503,
    errorKind: null,
    verdict,
    nextAttemptAt: null,
    ...extra,
  };
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export function storeConformanceSuite(
  name: string,
  makeStore: () => Promise<{ store: Store; cleanup: () => Promise<void> }>,
  options: ConformanceOptions = {},
): void {
  describe(`Store conformance: ${name}`, () => {
    let store: Store;
    let cleanup: (() => Promise<void>) | undefined;

    beforeEach(async () => {
      const made = await makeStore();
      store = made.store;
      cleanup = made.cleanup;
    });

    afterEach(async () => {
      await cleanup?.();
      cleanup = undefined;
    });

    /** Creates the account's webhook and returns the account id. */
    async function withWebhook(overrides: Partial<WebhookConfig> = {}): Promise<string> {
      const acct = account();
      await store.upsertWebhook(acct, webhook(overrides), T0);
      return acct;
    }

    async function publishOne(acct: string, contact: string, now = T0, overrides: Partial<StoredMessage> = {}) {
      const m = message(contact, overrides);
      const result = await store.publish({ accountId: acct, messages: [m], now });
      const entry = result.deliveries.find((d) => d.externalCustomerId === contact);
      if (entry === undefined) throw new Error('publish scheduled no delivery');
      return { message: m, deliveryId: entry.deliveryId };
    }

    async function claim(lane: Lane, now: number, owner = 'worker-1', limit = 100, extra = {}) {
      return store.claimDue({ lane, limit, now, leaseMs: LEASE, owner, ...extra });
    }

    /** What the delivery engine does on a first attempt: build from the contact's messages and freeze. */
    async function build(c: ClaimedDelivery, owner: string, now: number): Promise<Uint8Array> {
      const d = c.delivery;
      const messages = await store.contactMessages(
        d.accountId,
        d.externalCustomerId,
        now,
        c.webhook.maxMessagesPerContact,
      );
      const body = bytesOf(messages);
      expect(
        await store.freeze(
          d.id,
          owner,
          body,
          messages.map((m) => m.id),
          now,
        ),
      ).toBe(true);
      return body;
    }

    async function settle(
      c: ClaimedDelivery,
      owner: string,
      now: number,
      verdict: Attempt['verdict'],
      retryAt?: number,
    ) {
      const d = c.delivery;
      const nextState = verdict === 'delivered' ? 'delivered' : verdict === 'failed' ? 'failed' : 'retrying';
      const updated = await store.recordAttempt(d.id, {
        owner,
        attempt: attempt(d, verdict, now, { nextAttemptAt: retryAt ?? null }),
        nextState,
      });
      if (updated === null) throw new Error('recordAttempt refused');
      return updated;
    }

    /** A contact's delivery that went out once and now waits for a retry at `retryAt`. */
    async function retryingDelivery(acct: string, contact: string, now: number, retryAt: number) {
      const { deliveryId } = await publishOne(acct, contact, now);
      const [c] = (await claim('first', now)).filter((x) => x.delivery.id === deliveryId);
      if (c === undefined) throw new Error('not claimed');
      const body = await build(c, 'worker-1', now);
      const updated = await settle(c, 'worker-1', now + 1, 'retry', retryAt);
      expect(updated.state).toBe('retrying');
      return { deliveryId, body };
    }

    // ------------------------------------------------------------ ping

    describe('ping', () => {
      it('answers while the store is open and fails once it is closed (the readiness probe)', async () => {
        await expect(store.ping()).resolves.toBeUndefined();
        // Bounded (the probe's form), several times: a connection it used and gave back still serves.
        for (let i = 0; i < 3; i++) await expect(store.ping(5_000)).resolves.toBeUndefined();
        await store.close();
        await expect(store.ping()).rejects.toThrow();
        await expect(store.ping(5_000)).rejects.toThrow();
      });
    });

    // ------------------------------------------------------------ webhooks

    describe('webhooks', () => {
      it('creates a webhook with defaults and keeps every secret for the sender', async () => {
        const acct = account();
        const created = await store.upsertWebhook(acct, webhook(), T0);
        expect(created).toEqual({
          ...webhook(),
          accountId: acct,
          messageTtlMs: DAY,
          createdAt: T0,
          updatedAt: T0,
        });
        expect(await store.getWebhook(acct)).toEqual(created);
        expect(await store.getWebhook(account())).toBeNull();
      });

      it("keeps the webhook's own headers for the sender, through a save, a compare-and-set and a claim", async () => {
        // In the configuration's JSON, like the other settings: no column of their own, on either engine.
        const headers = { 'x-api-key': 'k_live_1', authorization: 'Bearer t', 'x-route': 'eu west' };
        const acct = account();
        const created = await store.upsertWebhook(acct, webhook({ auth: undefined, headers }), T0);
        expect(created.headers).toEqual(headers);
        expect(await store.getWebhook(acct)).toEqual(created);
        await publishOne(acct, 'c', T0);
        const [claimed] = await store.claimDue({ lane: 'first', limit: 1, now: T0 + 1, leaseMs: 30_000, owner: 'w-h' });
        expect(claimed?.webhook.headers).toEqual(headers);
        const replaced = await store.replaceWebhookIfUnchanged(
          acct,
          webhook({ headers: { 'x-other': 'v' } }),
          T0 + 2,
          created.updatedAt,
        );
        expect(replaced?.headers).toEqual({ 'x-other': 'v' });
        // A save without headers has none: not the ones before.
        expect((await store.upsertWebhook(acct, webhook(), T0 + 3)).headers).toBeUndefined();
        await expect(
          store.upsertWebhook(acct, webhook({ headers: { 'x-a': 1 } as unknown as Record<string, string> }), T0 + 4),
        ).rejects.toMatchObject({ code: 'invalid_argument', message: expect.stringContaining('config.headers') });
      });

      it('replaces the whole configuration on upsert, keeping createdAt', async () => {
        const acct = await withWebhook();
        const replaced = await store.upsertWebhook(
          acct,
          { url: 'http://other.example/x', maxMessagesPerContact: 5, enabled: false, messageTtlMs: 3_600_000 },
          T0 + 10,
        );
        expect(replaced).toEqual({
          url: 'http://other.example/x',
          maxMessagesPerContact: 5,
          enabled: false,
          accountId: acct,
          messageTtlMs: 3_600_000,
          createdAt: T0,
          updatedAt: T0 + 10,
        });
        expect(await store.getWebhook(acct)).toEqual(replaced);
      });

      it('gives each save a later updatedAt than the one before, within one millisecond or after a clock step back', async () => {
        // updatedAt names a save: a claim made under one save is not sent after another (checkClaim), a 410 pauses
        // the save it answered, and replaceWebhookIfUnchanged must not overwrite a save it did not read.
        const acct = await withWebhook();
        const first = await store.getWebhook(acct);
        const sameMs = await store.upsertWebhook(acct, { ...webhook(), url: 'http://other.example/x' }, T0);
        expect(sameMs.updatedAt).toBe(T0 + 1);
        const stepBack = await store.upsertWebhook(acct, webhook(), T0 - 60_000);
        expect(stepBack).toMatchObject({ createdAt: T0, updatedAt: T0 + 2 });
        expect(await store.getWebhook(acct)).toEqual(stepBack);
        // The save read first is gone: a compare-and-set naming it changes nothing.
        await expect(store.replaceWebhookIfUnchanged(acct, webhook(), T0, first!.updatedAt)).resolves.toBeNull();
        // A later clock wins as before.
        expect((await store.upsertWebhook(acct, webhook(), T0 + 50)).updatedAt).toBe(T0 + 50);
      });

      it('replaceWebhookIfUnchanged replaces only the save it names, and never creates a webhook', async () => {
        const acct = await withWebhook();
        const other = { url: 'http://other.example/x', maxMessagesPerContact: 5, enabled: false };
        // Saved again since T0: nothing changes.
        const saved = await store.upsertWebhook(acct, webhook(), T0 + 5);
        await expect(store.replaceWebhookIfUnchanged(acct, other, T0 + 10, T0)).resolves.toBeNull();
        expect(await store.getWebhook(acct)).toEqual(saved);
        // Still the save it names: replaced, createdAt kept.
        const replaced = await store.replaceWebhookIfUnchanged(acct, other, T0 + 10, T0 + 5);
        expect(replaced).toEqual({ ...other, accountId: acct, messageTtlMs: DAY, createdAt: T0, updatedAt: T0 + 10 });
        expect(await store.getWebhook(acct)).toEqual(replaced);
        // Deleted: stays deleted.
        await store.deleteWebhook(acct);
        await expect(store.replaceWebhookIfUnchanged(acct, other, T0 + 20, T0 + 10)).resolves.toBeNull();
        expect(await store.getWebhook(acct)).toBeNull();
      });

      it('createWebhookIfAbsent creates only where there is no webhook, and changes nothing where there is', async () => {
        const acct = account();
        const created = await store.createWebhookIfAbsent(acct, webhook(), T0);
        expect(created).toEqual({ ...webhook(), accountId: acct, messageTtlMs: DAY, createdAt: T0, updatedAt: T0 });
        const other = { url: 'http://other.example/x', maxMessagesPerContact: 5, enabled: false };
        await expect(store.createWebhookIfAbsent(acct, other, T0 + 10)).resolves.toBeNull();
        expect(await store.getWebhook(acct)).toEqual(created);
        // Deleted: it may be created again.
        await store.deleteWebhook(acct);
        const again = await store.createWebhookIfAbsent(acct, other, T0 + 20);
        expect(again).toEqual({ ...other, accountId: acct, messageTtlMs: DAY, createdAt: T0 + 20, updatedAt: T0 + 20 });
        expect(await store.getWebhook(acct)).toEqual(again);
      });

      it('lists the accounts that have a webhook in ascending pages (for re-sealing secrets)', async () => {
        const prefix = account();
        const mine = [`${prefix}-b`, `${prefix}-a`, `${prefix}-c`];
        for (const acct of mine) await store.upsertWebhook(acct, webhook(), T0);
        await store.deleteWebhook(`${prefix}-c`);
        // Other tests may share the store: page from just before the prefix and keep what is ours.
        const seen: string[] = [];
        let after: string | null = prefix;
        for (;;) {
          const page: string[] = await store.listWebhookAccounts(after, 2);
          expect(page.length).toBeLessThanOrEqual(2);
          seen.push(...page);
          if (page.length < 2 || !page.every((a) => a.startsWith(prefix))) break;
          after = page[page.length - 1] ?? null;
        }
        expect(seen.filter((a) => a.startsWith(prefix))).toEqual([`${prefix}-a`, `${prefix}-b`]);
        expect([...seen].sort()).toEqual(seen);
        expect((await store.listWebhookAccounts(null, 1000)).length).toBeGreaterThanOrEqual(2);
        await expect(store.listWebhookAccounts(null, 0)).rejects.toMatchObject({
          code: 'invalid_argument',
          message: expect.stringContaining('limit'),
        });
      });

      it('rejects bad arguments with an error naming the field', async () => {
        await expect(store.upsertWebhook('', webhook(), T0)).rejects.toMatchObject({
          code: 'invalid_argument',
          message: expect.stringContaining('accountId'),
        });
        await expect(
          store.upsertWebhook(account(), { ...webhook(), messageTtlMs: 0 } as WebhookConfig, T0),
        ).rejects.toMatchObject({ code: 'invalid_argument', message: expect.stringContaining('messageTtlMs') });
        const err = await store.upsertWebhook(account(), { ...webhook(), url: '' }, T0).catch((e: unknown) => e);
        expect(String((err as Error).message)).not.toContain('s3cret-password');
      });

      it('deletes the webhook, its messages and all its deliveries, finished ones with their attempts', async () => {
        const acct = await withWebhook();
        const done = await publishOne(acct, 'c-done');
        const [c] = await claim('first', T0);
        await build(c!, 'worker-1', T0);
        await settle(c!, 'worker-1', T0, 'delivered');
        const waiting = await publishOne(acct, 'c-wait');
        const other = await withWebhook();
        const kept = await publishOne(other, 'c-other');

        expect(await store.deleteWebhook(acct)).toBe(true);
        expect(await store.getWebhook(acct)).toBeNull();
        expect(await store.contactMessages(acct, 'c-wait', T0, 10)).toEqual([]);
        expect(await store.getDelivery(waiting.deliveryId)).toBeNull();
        // Its body holds the deleted message: kept, a replay would send it once the account has a webhook again.
        expect(await store.getDelivery(done.deliveryId)).toBeNull();
        expect(await store.retryDelivery(done.deliveryId, T0 + 1)).toBeNull();
        expect((await store.listDeliveries({ accountId: acct }, 10, null)).deliveries).toEqual([]);
        expect((await store.getDelivery(kept.deliveryId))?.delivery.state).toBe('pending');
        expect(await store.contactMessages(other, 'c-other', T0, 10)).toHaveLength(1);
        expect(await store.deleteWebhook(acct)).toBe(false);
      });
    });

    // ------------------------------------------------------------ publish

    describe('publish', () => {
      it('with requireWebhook, stores nothing for an account without a webhook (never had one, or deleted)', async () => {
        const acct = await withWebhook();
        const kept = message('a');
        expect(
          (await store.publish({ accountId: acct, messages: [kept], now: T0, requireWebhook: true })).inserted,
        ).toBe(1);
        expect(await store.deleteWebhook(acct)).toBe(true);
        const stats = await store.stats(T0);
        for (const accountId of [acct, account()]) {
          await expect(
            store.publish({ accountId, messages: [message('a'), message('b')], now: T0 + 1, requireWebhook: true }),
          ).rejects.toMatchObject({ name: 'StoreError', code: 'webhook_missing' });
          expect(await store.contactMessages(accountId, 'a', T0 + 1, 10)).toEqual([]);
          expect((await store.listDeliveries({ accountId }, 10, null)).deliveries).toEqual([]);
        }
        expect(await store.stats(T0)).toEqual(stats);
        // Without it the store takes messages for any account (as before).
        const other = account();
        expect((await store.publish({ accountId: other, messages: [message('a')], now: T0 })).inserted).toBe(1);
      });

      it('stores the messages and schedules one pending delivery per touched contact, due now', async () => {
        const acct = await withWebhook();
        const messages = [message('b'), message('a'), message('b'), message('c')];
        const result = await store.publish({ accountId: acct, messages, now: T0 + 5 });
        expect(result.inserted).toBe(4);
        expect(result.duplicates).toBe(0);
        expect(result.deliveries.map((d) => d.externalCustomerId)).toEqual(['a', 'b', 'c']);
        expect(new Set(result.deliveries.map((d) => d.deliveryId)).size).toBe(3);
        for (const entry of result.deliveries) {
          const found = await store.getDelivery(entry.deliveryId);
          expect(found).toEqual({
            delivery: {
              id: entry.deliveryId,
              accountId: acct,
              externalCustomerId: entry.externalCustomerId,
              state: 'pending',
              createdAt: T0 + 5,
              updatedAt: T0 + 5,
              nextAttemptAt: T0 + 5,
              attemptCount: 0,
              firstAttemptAt: null,
              body: null,
              messageIds: null,
              supersededBy: null,
              lastError: null,
              traceparent: null,
            },
            attempts: [],
          });
        }
      });

      it('round-trips every field of a message, absent optional fields staying absent', async () => {
        const acct = await withWebhook();
        const full = message('c', {
          image: 'https://img.example/a.png',
          link: '',
          customData: '{"k":[1,"é"]}',
          title: 'Ünïcode ✓',
        });
        const bare = message('c', { createdDate: T0 - 1 });
        await store.publish({ accountId: acct, messages: [full, bare], now: T0 });
        expect(await store.contactMessages(acct, 'c', T0, 10)).toEqual([full, bare]);
      });

      it('is idempotent on the message id within an account, not across accounts', async () => {
        const acct = await withWebhook();
        const messages = [message('a'), message('b')];
        const first = await store.publish({ accountId: acct, messages, now: T0 });
        expect(first.inserted).toBe(2);
        const again = await store.publish({
          accountId: acct,
          messages: messages.map((m) => ({ ...m, title: 'changed' })),
          now: T0 + 1,
        });
        expect(again).toEqual({ inserted: 0, duplicates: 2, deliveries: [] });
        expect((await store.contactMessages(acct, 'a', T0, 10))[0]?.title).toBe('Hello');
        expect((await store.listDeliveries({ accountId: acct }, 100, null)).deliveries).toHaveLength(2);

        const other = await withWebhook();
        expect((await store.publish({ accountId: other, messages, now: T0 })).inserted).toBe(2);
      });

      it('counts a repeated id inside one call as a duplicate, the first one winning', async () => {
        const acct = await withWebhook();
        const m = message('a');
        const result = await store.publish({ accountId: acct, messages: [m, { ...m, title: 'second' }], now: T0 });
        expect(result.inserted).toBe(1);
        expect(result.duplicates).toBe(1);
        expect(await store.contactMessages(acct, 'a', T0, 10)).toEqual([m]);
      });

      it('coalesces new messages of a contact into its pending delivery', async () => {
        const acct = await withWebhook();
        const first = await publishOne(acct, 'c', T0);
        const second = await publishOne(acct, 'c', T0 + 100, { createdDate: T0 + 100 });
        expect(second.deliveryId).toBe(first.deliveryId);
        const page = await store.listDeliveries({ accountId: acct, externalCustomerId: 'c' }, 10, null);
        expect(page.deliveries.map((d) => d.id)).toEqual([first.deliveryId]);
        // It keeps its place in the queue (due time of the first publish).
        expect(page.deliveries[0]?.nextAttemptAt).toBe(T0);
        const [c] = await claim('first', T0 + 100);
        const body = await build(c!, 'worker-1', T0 + 100);
        expect(JSON.parse(new TextDecoder().decode(body))).toEqual([second.message, first.message]);
      });

      it('opens a new pending delivery once the previous one was claimed', async () => {
        const acct = await withWebhook();
        const first = await publishOne(acct, 'c', T0);
        await claim('first', T0);
        const second = await publishOne(acct, 'c', T0 + 1);
        expect(second.deliveryId).not.toBe(first.deliveryId);
        expect((await store.getDelivery(first.deliveryId))?.delivery.state).toBe('in_flight');
        expect((await store.getDelivery(second.deliveryId))?.delivery.state).toBe('pending');
      });

      it('supersedes the contact’s retrying delivery with the new pending one', async () => {
        const acct = await withWebhook();
        const old = await retryingDelivery(acct, 'c', T0, T0 + 10_000);
        const fresh = await publishOne(acct, 'c', T0 + 5);
        const oldNow = (await store.getDelivery(old.deliveryId))!.delivery;
        expect(oldNow).toMatchObject({ state: 'superseded', supersededBy: fresh.deliveryId, nextAttemptAt: null });
        expect(oldNow.body).toEqual(old.body);
        expect(await claim('retry', T0 + 20_000)).toEqual([]);
        expect((await claim('first', T0 + 20_000)).map((c) => c.delivery.id)).toEqual([fresh.deliveryId]);
      });

      it('rejects a message without an externalCustomerId', async () => {
        const acct = await withWebhook();
        await expect(
          store.publish({ accountId: acct, messages: [message('ok'), message('')], now: T0 }),
        ).rejects.toMatchObject({
          code: 'invalid_argument',
          message: expect.stringContaining('messages[1].externalCustomerId'),
        });
        expect(await store.contactMessages(acct, 'ok', T0, 10)).toEqual([]);
      });
    });

    // ------------------------------------------------------------ claims

    describe('claimDue', () => {
      it('claims under a lease and returns the delivery with its webhook', async () => {
        const acct = await withWebhook();
        const { deliveryId } = await publishOne(acct, 'c', T0);
        const claimed = await store.claimDue({ lane: 'first', limit: 10, now: T0 + 3, leaseMs: 30_000, owner: 'w-a' });
        expect(claimed).toHaveLength(1);
        expect(claimed[0]!.leaseUntil).toBe(T0 + 30_003);
        expect(claimed[0]!.delivery).toMatchObject({
          id: deliveryId,
          state: 'in_flight',
          nextAttemptAt: T0 + 30_003,
          body: null,
          attemptCount: 0,
        });
        expect(claimed[0]!.webhook).toEqual(await store.getWebhook(acct));
        expect((await store.getDelivery(deliveryId))?.delivery.state).toBe('in_flight');
        // Claimed once: a second claim finds nothing.
        expect(await claim('first', T0 + 4, 'w-b')).toEqual([]);
      });

      it('keeps first attempts and retries in separate lanes', async () => {
        const acct = await withWebhook();
        const retry = await retryingDelivery(acct, 'r', T0, T0 + 1000);
        const first = await publishOne(acct, 'p', T0 + 2);
        expect((await claim('retry', T0 + 999)).map((c) => c.delivery.id)).toEqual([]);
        expect((await claim('first', T0 + 2000)).map((c) => c.delivery.id)).toEqual([first.deliveryId]);
        const retried = await claim('retry', T0 + 2000);
        expect(retried.map((c) => c.delivery.id)).toEqual([retry.deliveryId]);
        // A retry resends the frozen bytes.
        expect(retried[0]!.delivery.body).toEqual(retry.body);
        expect(retried[0]!.delivery.attemptCount).toBe(1);
      });

      it('claims in due order and honours the limit', async () => {
        const acct = await withWebhook();
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) ids.push((await publishOne(acct, `c${i}`, T0 + 10 * (5 - i))).deliveryId);
        // Due times: c4 (T0+10) < c3 < c2 < c1 < c0 (T0+50).
        const expected = [...ids].reverse();
        expect((await claim('first', T0 + 100, 'w', 2)).map((c) => c.delivery.id)).toEqual(expected.slice(0, 2));
        expect((await claim('first', T0 + 100, 'w', 2)).map((c) => c.delivery.id)).toEqual(expected.slice(2, 4));
        expect((await claim('first', T0 + 100, 'w', 2)).map((c) => c.delivery.id)).toEqual(expected.slice(4));
        expect(await claim('first', T0 + 100, 'w', 2)).toEqual([]);
      });

      it('does not claim what is not due yet', async () => {
        const acct = await withWebhook();
        await publishOne(acct, 'c', T0 + 500);
        expect(await claim('first', T0 + 499)).toEqual([]);
        expect(await claim('first', T0 + 500)).toHaveLength(1);
      });

      it('orders accounts by their oldest due delivery and caps each with maxPerAccount', async () => {
        const a = await withWebhook();
        const b = await withWebhook();
        for (let i = 0; i < 3; i++) await publishOne(a, `a${i}`, T0 + 10 + i);
        for (let i = 0; i < 3; i++) await publishOne(b, `b${i}`, T0 + i);
        const claimed = await claim('first', T0 + 100, 'w', 4, { maxPerAccount: 2 });
        expect(claimed.map((c) => c.delivery.externalCustomerId)).toEqual(['b0', 'b1', 'a0', 'a1']);
      });

      it('brings frozen bodies up to maxBodyBytes, but always its first delivery', async () => {
        // A retry carries its body (up to near 100 MB): 32 of them in one claim took the process down.
        const acct = await withWebhook();
        const sizes: number[] = [];
        for (let i = 0; i < 4; i++) {
          const { body } = await retryingDelivery(acct, `c${i}`, T0 + i, T0 + 1_000);
          sizes.push(body.byteLength);
        }
        const ids = async (maxBodyBytes: number) => {
          const claimed = await claim('retry', T0 + 2_000, 'w', 100, { maxBodyBytes });
          const taken = claimed.map((c) => c.delivery.externalCustomerId);
          // Given back at once, for the next claim of this test.
          for (const c of claimed) await store.release(c.delivery.id, 'w', T0 + 1_000);
          return taken;
        };
        expect(await ids(sizes[0]! + sizes[1]!)).toEqual(['c0', 'c1']);
        expect(await ids(sizes[0]! + sizes[1]! - 1)).toEqual(['c0']);
        expect(await ids(0)).toEqual(['c0']);
        expect(await ids(Number.MAX_SAFE_INTEGER)).toEqual(['c0', 'c1', 'c2', 'c3']);
        // With a lease to take back first (PostgreSQL then claims step by step): the same rule.
        await publishOne(acct, 'gone', T0 + 5);
        expect(
          await store.claimDue({ lane: 'first', limit: 100, now: T0 + 6, leaseMs: 10, owner: 'gone' }),
        ).toHaveLength(1);
        expect(await ids(sizes[0]! + sizes[1]! - 1)).toEqual(['c0']);
        expect(await ids(sizes[0]! + sizes[1]! + sizes[2]!)).toEqual(['c0', 'c1', 'c2']);
        // Pending deliveries have no body yet: a claim of them is not cut (the one taken back is pending again).
        for (let i = 0; i < 3; i++) await publishOne(acct, `p${i}`, T0 + 10 + i);
        expect(await claim('first', T0 + 2_000, 'w', 100, { maxBodyBytes: 0 })).toHaveLength(4);
      });

      it('does not let an account whose due work is blocked hold up the others', async () => {
        const blocked = await withWebhook();
        const other = await withWebhook();
        await publishOne(blocked, 'hot', T0);
        await claim('first', T0, 'w', 1);
        await publishOne(blocked, 'hot', T0 + 1); // due first, but its contact is in flight
        const waiting = await publishOne(other, 'c', T0 + 2);
        expect((await claim('first', T0 + 3, 'w', 1)).map((c) => c.delivery.id)).toEqual([waiting.deliveryId]);
      });

      it('skips excluded accounts, disabled webhooks and accounts without a webhook', async () => {
        const excluded = await withWebhook();
        const disabled = await withWebhook({ enabled: false });
        const missing = account();
        const open = await withWebhook();
        for (const acct of [excluded, disabled, missing, open]) await publishOne(acct, 'c', T0);
        const claimed = await claim('first', T0, 'w', 100, { excludeAccounts: [excluded] });
        expect(claimed.map((c) => c.delivery.accountId)).toEqual([open]);
        // Enabling the webhook releases its backlog.
        await store.upsertWebhook(disabled, webhook({ enabled: true }), T0 + 1);
        expect(
          (await claim('first', T0 + 1, 'w', 100, { excludeAccounts: [excluded] })).map((c) => c.delivery.accountId),
        ).toEqual([disabled]);
        expect((await claim('first', T0 + 1)).map((c) => c.delivery.accountId)).toEqual([excluded]);
      });

      it('never has two deliveries of one contact in flight', async () => {
        const acct = await withWebhook();
        const first = await publishOne(acct, 'c', T0);
        const [c1] = await claim('first', T0);
        const second = await publishOne(acct, 'c', T0 + 1);
        const other = await publishOne(acct, 'd', T0 + 1);
        expect((await claim('first', T0 + 2)).map((c) => c.delivery.id)).toEqual([other.deliveryId]);
        await build(c1!, 'worker-1', T0 + 2);
        await settle(c1!, 'worker-1', T0 + 3, 'delivered');
        expect(c1!.delivery.id).toBe(first.deliveryId);
        expect((await claim('first', T0 + 4)).map((c) => c.delivery.id)).toEqual([second.deliveryId]);
      });

      it('takes an expired claim back: the old owner can no longer freeze or record', async () => {
        const acct = await withWebhook();
        const { deliveryId } = await publishOne(acct, 'c', T0);
        const [a] = await claim('first', T0, 'w-a');
        expect(await claim('first', T0 + LEASE - 1, 'w-b')).toEqual([]);
        expect(await claim('retry', T0 + LEASE - 1, 'w-b')).toEqual([]);
        // Never built: it goes back to the first lane.
        const [b] = await claim('first', T0 + LEASE, 'w-b');
        expect(b?.delivery.id).toBe(deliveryId);
        expect(await store.freeze(deliveryId, 'w-a', bytesOf(['a']), [], T0 + LEASE)).toBe(false);
        expect(
          await store.recordAttempt(deliveryId, {
            owner: 'w-a',
            attempt: attempt(a!.delivery, 'delivered', T0 + LEASE),
            nextState: 'delivered',
          }),
        ).toBeNull();
        const bodyB = await build(b!, 'w-b', T0 + LEASE + 1);
        const done = await settle(b!, 'w-b', T0 + LEASE + 2, 'delivered');
        expect(done.body).toEqual(bodyB);
        expect((await store.getDelivery(deliveryId))?.attempts).toHaveLength(1);
      });

      it('checkClaim: the claim still held and the webhook as it is now, null once the claim is gone', async () => {
        const acct = await withWebhook();
        const { deliveryId } = await publishOne(acct, 'c', T0);
        const [a] = await claim('first', T0, 'w-a');
        const claimedWith = a!.webhook.updatedAt;
        expect(await store.checkClaim(deliveryId, 'w-a')).toEqual({
          webhookUpdatedAt: claimedWith,
          webhookEnabled: true,
        });
        expect(await store.checkClaim(deliveryId, 'w-b')).toBeNull();
        expect(await store.checkClaim('no-such-delivery', 'w-a')).toBeNull();
        // Saved again (disabled) while the claim is held: the check says so.
        await store.upsertWebhook(acct, webhook({ enabled: false }), T0 + 5);
        expect(await store.checkClaim(deliveryId, 'w-a')).toEqual({ webhookUpdatedAt: T0 + 5, webhookEnabled: false });
        // Taken back after its lease by another owner: gone for the first.
        await store.upsertWebhook(acct, webhook(), T0 + 6);
        const [b] = await claim('first', T0 + LEASE, 'w-b');
        expect(b?.delivery.id).toBe(deliveryId);
        expect(await store.checkClaim(deliveryId, 'w-a')).toBeNull();
        expect(await store.checkClaim(deliveryId, 'w-b')).toEqual({ webhookUpdatedAt: T0 + 6, webhookEnabled: true });
        await settle(b!, 'w-b', T0 + LEASE + 1, 'failed');
        expect(await store.checkClaim(deliveryId, 'w-b')).toBeNull();
      });

      it('retries an expired frozen claim with the same bytes, or supersedes it when the contact moved on', async () => {
        const acct = await withWebhook();
        const kept = await publishOne(acct, 'kept', T0);
        const moved = await publishOne(acct, 'moved', T0);
        const claimed = await claim('first', T0, 'w-a');
        const bodies = new Map<string, Uint8Array>();
        for (const c of claimed) bodies.set(c.delivery.id, await build(c, 'w-a', T0));
        const newer = await publishOne(acct, 'moved', T0 + 1);

        const later = T0 + LEASE + 1;
        const retried = await claim('retry', later, 'w-b');
        expect(retried.map((c) => c.delivery.id)).toEqual([kept.deliveryId]);
        expect(retried[0]!.delivery.body).toEqual(bodies.get(kept.deliveryId));
        expect((await store.getDelivery(moved.deliveryId))?.delivery).toMatchObject({
          state: 'superseded',
          supersededBy: newer.deliveryId,
        });
        expect((await claim('first', later, 'w-b')).map((c) => c.delivery.id)).toEqual([newer.deliveryId]);
      });

      it('supersedes instead of claiming a retry whose contact has a newer delivery', async () => {
        const acct = await withWebhook();
        const old = await publishOne(acct, 'c', T0);
        const [c] = await claim('first', T0);
        await build(c!, 'worker-1', T0);
        const newer = await publishOne(acct, 'c', T0 + 1);
        // Recording "retry" while a newer pending exists makes the old one superseded at once.
        const updated = await settle(c!, 'worker-1', T0 + 2, 'retry', T0 + 10);
        expect(updated).toMatchObject({ state: 'superseded', supersededBy: newer.deliveryId, nextAttemptAt: null });
        expect(updated.id).toBe(old.deliveryId);
        expect(await claim('retry', T0 + 100)).toEqual([]);
      });

      it('rejects bad claim options', async () => {
        await expect(claim('first', T0, 'w', 0)).rejects.toMatchObject({
          code: 'invalid_argument',
          message: expect.stringContaining('limit'),
        });
        await expect(
          store.claimDue({ lane: 'first', limit: 1, now: T0, leaseMs: 0, owner: 'w' }),
        ).rejects.toMatchObject({
          code: 'invalid_argument',
          message: expect.stringContaining('leaseMs'),
        });
      });
    });

    // ------------------------------------------------------------ freeze and attempts

    describe('freeze and recordAttempt', () => {
      it('freezes the body once, for the owner of a live claim only', async () => {
        const acct = await withWebhook();
        const { deliveryId } = await publishOne(acct, 'c', T0);
        await claim('first', T0, 'w-a');
        const body = new Uint8Array([0, 1, 2, 250, 255, 91, 93]);
        expect(await store.freeze(deliveryId, 'w-b', body, ['m'], T0 + 1)).toBe(false);
        expect(await store.freeze(deliveryId, 'w-a', body, ['m'], T0 + LEASE)).toBe(false); // lease over
        expect(await store.freeze(deliveryId, 'w-a', body, ['m1', 'm2'], T0 + 5)).toBe(true);
        expect(await store.freeze(deliveryId, 'w-a', bytesOf('other'), ['x'], T0 + 6)).toBe(false);
        const d = (await store.getDelivery(deliveryId))!.delivery;
        expect(d.body).toEqual(body);
        expect(d.messageIds).toEqual(['m1', 'm2']);
        expect(d.firstAttemptAt).toBe(T0 + 5);
        expect(await store.freeze(randomUUID(), 'w-a', body, [], T0)).toBe(false);
      });

      it('records each attempt and moves to delivered, failed or retrying', async () => {
        const acct = await withWebhook();
        const ids = {
          ok: (await publishOne(acct, 'ok')).deliveryId,
          bad: (await publishOne(acct, 'bad')).deliveryId,
          later: (await publishOne(acct, 'later')).deliveryId,
        };
        const claimed = new Map((await claim('first', T0, 'w')).map((c) => [c.delivery.externalCustomerId, c]));
        for (const c of claimed.values()) await build(c, 'w', T0);

        const ok = await store.recordAttempt(ids.ok, {
          owner: 'w',
          attempt: attempt(claimed.get('ok')!.delivery, 'delivered', T0 + 1),
          nextState: 'delivered',
        });
        expect(ok).toMatchObject({ state: 'delivered', nextAttemptAt: null, attemptCount: 1, lastError: null });

        const bad = await store.recordAttempt(ids.bad, {
          owner: 'w',
          attempt: attempt(claimed.get('bad')!.delivery, 'failed', T0 + 1),
          nextState: 'failed',
        });
        expect(bad).toMatchObject({ state: 'failed', nextAttemptAt: null, attemptCount: 1, lastError: 'http_400' });

        const timeout: Attempt = {
          ...attempt(claimed.get('later')!.delivery, 'retry', T0 + 1),
          statusCode: null,
          errorKind: 'timeout',
          durationMs: 15_000,
          nextAttemptAt: T0 + 40_000,
        };
        const later = await store.recordAttempt(ids.later, { owner: 'w', attempt: timeout, nextState: 'retrying' });
        expect(later).toMatchObject({
          state: 'retrying',
          nextAttemptAt: T0 + 40_000,
          attemptCount: 1,
          firstAttemptAt: T0,
          lastError: 'timeout',
        });

        // Second attempt of the retrying one, then its history.
        const [again] = await claim('retry', T0 + 40_000, 'w2');
        const second = attempt(again!.delivery, 'delivered', T0 + 40_001);
        expect(second.attemptNo).toBe(2);
        const done = await store.recordAttempt(ids.later, { owner: 'w2', attempt: second, nextState: 'delivered' });
        expect(done).toMatchObject({ state: 'delivered', attemptCount: 2, firstAttemptAt: T0 });
        expect((await store.getDelivery(ids.later))?.attempts).toEqual([timeout, second]);
      });

      it('refuses an attempt from a non-owner, with a wrong number, or on a delivery not in flight', async () => {
        const acct = await withWebhook();
        const { deliveryId } = await publishOne(acct, 'c');
        const pendingDelivery = (await store.getDelivery(deliveryId))!.delivery;
        const rec = (owner: string, a: Attempt) =>
          store.recordAttempt(deliveryId, { owner, attempt: a, nextState: 'delivered' });
        expect(await rec('w', attempt(pendingDelivery, 'delivered', T0))).toBeNull();
        const [c] = await claim('first', T0, 'w');
        expect(await rec('intruder', attempt(c!.delivery, 'delivered', T0))).toBeNull();
        expect(await rec('w', { ...attempt(c!.delivery, 'delivered', T0), attemptNo: 2 })).toBeNull();
        expect((await store.getDelivery(deliveryId))?.attempts).toEqual([]);
        expect(await rec('w', attempt(c!.delivery, 'delivered', T0))).not.toBeNull();
        expect(await rec('w', attempt(c!.delivery, 'delivered', T0))).toBeNull();
        expect(
          await store.recordAttempt(randomUUID(), {
            owner: 'w',
            attempt: attempt(c!.delivery, 'delivered', T0),
            nextState: 'delivered',
          }),
        ).toBeNull();
      });
    });

    // ------------------------------------------------------------ messages and resync

    describe('contactMessages', () => {
      it('lists available messages newest first, ties by id, without expired ones, capped', async () => {
        const acct = await withWebhook();
        const tieA = message('c', { id: '00000000-0000-4000-8000-00000000000a', createdDate: T0 + 5 });
        const tieB = message('c', { id: '00000000-0000-4000-8000-00000000000b', createdDate: T0 + 5 });
        const newest = message('c', { createdDate: T0 + 9 });
        const oldest = message('c', { createdDate: T0 - 100 });
        const expiring = message('c', { createdDate: T0 + 50, expiresAt: T0 + 1000 });
        await store.publish({ accountId: acct, messages: [tieB, oldest, expiring, tieA, newest], now: T0 });
        await store.publish({ accountId: acct, messages: [message('other')], now: T0 });
        await store.publish({ accountId: await withWebhook(), messages: [message('c')], now: T0 });

        expect(await store.contactMessages(acct, 'c', T0 + 999, 10)).toEqual([expiring, newest, tieA, tieB, oldest]);
        expect(await store.contactMessages(acct, 'c', T0 + 1000, 10)).toEqual([newest, tieA, tieB, oldest]);
        expect(await store.contactMessages(acct, 'c', T0 + 1000, 2)).toEqual([newest, tieA]);
        expect(await store.contactMessages(acct, 'nobody', T0, 10)).toEqual([]);
      });
    });

    describe('resync', () => {
      it('schedules the named contacts, coalescing and superseding like publish', async () => {
        const acct = await withWebhook();
        const retrying = await retryingDelivery(acct, 'retrying', T0, T0 + 50_000);
        const pending = await publishOne(acct, 'pending');
        const result = await store.resync(acct, ['retrying', 'pending', 'empty', 'pending'], T0 + 10);
        expect(result.map((r) => r.externalCustomerId)).toEqual(['empty', 'pending', 'retrying']);
        const byContact = new Map(result.map((r) => [r.externalCustomerId, r.deliveryId]));
        expect(byContact.get('pending')).toBe(pending.deliveryId);
        expect((await store.getDelivery(retrying.deliveryId))?.delivery).toMatchObject({
          state: 'superseded',
          supersededBy: byContact.get('retrying'),
        });
        expect((await store.getDelivery(byContact.get('empty')!))?.delivery).toMatchObject({
          state: 'pending',
          nextAttemptAt: T0 + 10,
        });
      });

      it("schedules every contact with available messages for 'all'", async () => {
        const acct = await withWebhook();
        await store.publish({
          accountId: acct,
          messages: [message('x'), message('y'), message('gone', { expiresAt: T0 + 5 })],
          now: T0,
        });
        const [c] = await claim('first', T0); // one of them is in flight: resync still gives it a new pending
        const result = await store.resync(acct, 'all', T0 + 10);
        expect(result.map((r) => r.externalCustomerId)).toEqual(['x', 'y']);
        expect(result.map((r) => r.deliveryId)).not.toContain(c!.delivery.id);
        expect(await store.resync(account(), 'all', T0)).toEqual([]);
      });
    });

    // ------------------------------------------------------------ reads

    describe('getDelivery and listDeliveries', () => {
      it('returns null for an unknown id', async () => {
        expect(await store.getDelivery(randomUUID())).toBeNull();
      });

      it('filters by account, contact and state, newest first', async () => {
        const a = await withWebhook();
        const b = await withWebhook();
        const a1 = await publishOne(a, 'c1');
        const a2 = await publishOne(a, 'c2');
        const b1 = await publishOne(b, 'c1');
        const [inFlight] = await claim('first', T0, 'w', 1);
        const ids = (p: { deliveries: Delivery[] }) => p.deliveries.map((d) => d.id);

        expect(ids(await store.listDeliveries({ accountId: a }, 10, null))).toEqual([a2.deliveryId, a1.deliveryId]);
        expect(ids(await store.listDeliveries({ accountId: a, externalCustomerId: 'c1' }, 10, null))).toEqual([
          a1.deliveryId,
        ]);
        expect(ids(await store.listDeliveries({ accountId: b }, 10, null))).toEqual([b1.deliveryId]);
        expect(ids(await store.listDeliveries({ accountId: a, states: ['in_flight'] }, 10, null))).toEqual(
          inFlight!.delivery.accountId === a ? [inFlight!.delivery.id] : [],
        );
        const all = await store.listDeliveries({ states: ['pending', 'in_flight'] }, 10, null);
        expect(new Set(ids(all))).toEqual(new Set([a1.deliveryId, a2.deliveryId, b1.deliveryId]));
        expect(ids(await store.listDeliveries({ accountId: a, states: ['failed'] }, 10, null))).toEqual([]);
        await expect(store.listDeliveries({}, 0, null)).rejects.toMatchObject({ code: 'invalid_argument' });
        await expect(store.listDeliveries({}, 10, 'not-a-cursor')).rejects.toMatchObject({
          code: 'invalid_argument',
          message: expect.stringContaining('cursor'),
        });
      });

      it('pages with a cursor without duplicates or misses, even while new deliveries arrive', async () => {
        const acct = await withWebhook();
        const created: string[] = [];
        for (let i = 0; i < 23; i++)
          created.push((await publishOne(acct, `c${String(i).padStart(2, '0')}`)).deliveryId);
        const seen: string[] = [];
        let cursor: string | null = null;
        let pages = 0;
        do {
          const page: { deliveries: Delivery[]; nextCursor: string | null } = await store.listDeliveries(
            { accountId: acct },
            5,
            cursor,
          );
          seen.push(...page.deliveries.map((d) => d.id));
          cursor = page.nextCursor;
          pages++;
          // Arrivals during paging are newer than every cursor: they never shift the remaining pages.
          await publishOne(acct, `late${pages}`);
        } while (cursor !== null && pages < 20);
        expect(pages).toBe(5);
        expect(seen).toEqual([...created].reverse());
        const exact = await store.listDeliveries({ accountId: acct, externalCustomerId: 'c00' }, 1, null);
        expect(exact.nextCursor).toBeNull();
      });

      it('takes a cursor only with the filter it was made for (AIP-158), states in any order', async () => {
        const a = await withWebhook();
        const b = await withWebhook();
        const [a1, a2] = [await publishOne(a, 'c1'), await publishOne(a, 'c2')];
        const [b1, b2] = [await publishOne(b, 'c1'), await publishOne(b, 'c2')];
        const ofB = await store.listDeliveries({ accountId: b }, 1, null);
        expect(ofB.deliveries.map((d) => d.id)).toEqual([b2.deliveryId]);
        // B's cursor positions after b2, which is newer than a1 and a2: with A's filter it would skip both.
        for (const other of [
          { accountId: a },
          { accountId: b, externalCustomerId: 'c1' },
          { accountId: b, states: ['failed' as const] },
          {},
          { accountId: `acct-${randomUUID()}` }, // an account with no deliveries at all
        ]) {
          await expect(store.listDeliveries(other, 10, ofB.nextCursor), JSON.stringify(other)).rejects.toMatchObject({
            code: 'invalid_argument',
            message: expect.stringContaining('cursor'),
          });
        }
        const next = await store.listDeliveries({ accountId: b }, 10, ofB.nextCursor);
        expect(next.deliveries.map((d) => d.id)).toEqual([b1.deliveryId]);
        // The same states, in another order or repeated, are the same listing.
        const byStates = await store.listDeliveries({ accountId: a, states: ['pending', 'failed'] }, 1, null);
        const rest = await store.listDeliveries(
          { accountId: a, states: ['failed', 'pending', 'failed'] },
          10,
          byStates.nextCursor,
        );
        expect([...byStates.deliveries, ...rest.deliveries].map((d) => d.id)).toEqual([a2.deliveryId, a1.deliveryId]);
      });
    });

    // ------------------------------------------------------------ replay

    describe('retryDelivery', () => {
      async function failedDelivery(acct: string, contact: string) {
        const { deliveryId } = await publishOne(acct, contact);
        const c = (await claim('first', T0)).find((x) => x.delivery.id === deliveryId)!;
        const body = await build(c, 'worker-1', T0);
        await settle(c, 'worker-1', T0 + 1, 'failed');
        return { deliveryId, body };
      }

      it('replays a failed delivery that is still the newest: same id, same bytes, due now', async () => {
        const acct = await withWebhook();
        const failed = await failedDelivery(acct, 'c');
        const result = await store.retryDelivery(failed.deliveryId, T0 + 100);
        expect(result?.replacedByNewer).toBe(false);
        expect(result?.delivery).toMatchObject({
          id: failed.deliveryId,
          state: 'retrying',
          nextAttemptAt: T0 + 100,
          attemptCount: 1,
          lastError: 'http_400',
        });
        const [c] = await claim('retry', T0 + 100);
        expect(c?.delivery.id).toBe(failed.deliveryId);
        expect(c?.delivery.body).toEqual(failed.body);
        await settle(c!, 'worker-1', T0 + 101, 'delivered');
        expect((await store.getDelivery(failed.deliveryId))?.attempts.map((a) => a.verdict)).toEqual([
          'failed',
          'delivered',
        ]);
      });

      it('sends the newer state instead when the contact moved on', async () => {
        const acct = await withWebhook();
        const failed = await failedDelivery(acct, 'c');
        const newer = await publishOne(acct, 'c', T0 + 5);
        const result = await store.retryDelivery(failed.deliveryId, T0 + 10);
        expect(result).toMatchObject({ replacedByNewer: true, delivery: { id: newer.deliveryId, state: 'pending' } });
        expect((await store.getDelivery(failed.deliveryId))?.delivery.state).toBe('failed');

        // The newer one went out too: a replay of the old one schedules a fresh state of the contact.
        const [c] = await claim('first', T0 + 10);
        await build(c!, 'worker-1', T0 + 10);
        await settle(c!, 'worker-1', T0 + 11, 'delivered');
        const again = await store.retryDelivery(failed.deliveryId, T0 + 20);
        expect(again?.replacedByNewer).toBe(true);
        expect(again?.delivery).toMatchObject({ state: 'pending', externalCustomerId: 'c', nextAttemptAt: T0 + 20 });
        expect(again?.delivery.id).not.toBe(newer.deliveryId);
      });

      it('leaves deliveries already on their way as they are, and makes a waiting retry or pending one due now', async () => {
        const acct = await withWebhook();
        const retrying = await retryingDelivery(acct, 'r', T0, T0 + 90_000);
        const pending = await publishOne(acct, 'p');
        expect(await store.retryDelivery(pending.deliveryId, T0 + 1)).toMatchObject({
          replacedByNewer: false,
          delivery: { id: pending.deliveryId, state: 'pending', nextAttemptAt: T0 },
        });
        expect(await store.retryDelivery(retrying.deliveryId, T0 + 2)).toMatchObject({
          replacedByNewer: false,
          delivery: { id: retrying.deliveryId, state: 'retrying', nextAttemptAt: T0 + 2 },
        });
        // Given back for later without an attempt (its webhook's secret could not be opened): due now again.
        const postponed = await publishOne(acct, 'q', T0 + 3);
        const [claimed] = (await claim('first', T0 + 3)).filter((c) => c.delivery.id === postponed.deliveryId);
        await store.release(claimed!.delivery.id, 'worker-1', T0 + 60_000);
        expect(await store.retryDelivery(postponed.deliveryId, T0 + 4)).toMatchObject({
          replacedByNewer: false,
          delivery: { id: postponed.deliveryId, state: 'pending', nextAttemptAt: T0 + 4 },
        });
        expect(await store.retryDelivery(randomUUID(), T0)).toBeNull();
      });

      it('leaves a delivery in flight as it is: still claimed by its worker, not made due beside its attempt', async () => {
        const acct = await withWebhook();
        const { deliveryId } = await publishOne(acct, 'f');
        const [c] = (await claim('first', T0)).filter((x) => x.delivery.id === deliveryId);
        await build(c!, 'worker-1', T0);
        const before = (await store.getDelivery(deliveryId))!.delivery;

        expect(await store.retryDelivery(deliveryId, T0 + 5)).toMatchObject({
          replacedByNewer: false,
          delivery: { id: deliveryId, state: 'in_flight' },
        });
        expect((await store.getDelivery(deliveryId))?.delivery).toEqual(before);
        // No second worker can take it while its attempt is under way, and that attempt still records.
        expect((await claim('retry', T0 + 5, 'worker-2')).map((x) => x.delivery.id)).not.toContain(deliveryId);
        expect((await settle(c!, 'worker-1', T0 + 6, 'delivered')).state).toBe('delivered');
      });
    });

    // ------------------------------------------------------------ release

    describe('release', () => {
      it('gives claims back to their lane at dueAt, only for their owner', async () => {
        const acct = await withWebhook();
        const unbuilt = await publishOne(acct, 'u');
        const built = await publishOne(acct, 'b');
        const claimed = new Map((await claim('first', T0, 'w')).map((c) => [c.delivery.id, c]));
        await build(claimed.get(built.deliveryId)!, 'w', T0);

        await store.release(unbuilt.deliveryId, 'intruder', T0 + 1);
        expect((await store.getDelivery(unbuilt.deliveryId))?.delivery.state).toBe('in_flight');

        await store.release(unbuilt.deliveryId, 'w', T0 + 500);
        await store.release(built.deliveryId, 'w', T0 + 500);
        expect((await store.getDelivery(unbuilt.deliveryId))?.delivery).toMatchObject({
          state: 'pending',
          nextAttemptAt: T0 + 500,
          attemptCount: 0,
        });
        expect((await store.getDelivery(built.deliveryId))?.delivery).toMatchObject({
          state: 'retrying',
          nextAttemptAt: T0 + 500,
        });
        expect(await claim('first', T0 + 499)).toEqual([]);
        expect((await claim('first', T0 + 500)).map((c) => c.delivery.id)).toEqual([unbuilt.deliveryId]);
        expect((await claim('retry', T0 + 500)).map((c) => c.delivery.id)).toEqual([built.deliveryId]);
      });

      it('supersedes a released claim whose contact has a newer delivery', async () => {
        const acct = await withWebhook();
        const old = await publishOne(acct, 'c');
        await claim('first', T0, 'w');
        const newer = await publishOne(acct, 'c', T0 + 1);
        await store.release(old.deliveryId, 'w', T0 + 2);
        expect((await store.getDelivery(old.deliveryId))?.delivery).toMatchObject({
          state: 'superseded',
          supersededBy: newer.deliveryId,
        });
      });
    });

    describe('advanceGivenBack', () => {
      it("makes due now the account's claims given back for later, never a retry's backoff nor another account's", async () => {
        const acct = await withWebhook();
        const other = await withWebhook();
        const unbuilt = await publishOne(acct, 'unbuilt');
        const built = await publishOne(acct, 'built');
        const soon = await publishOne(acct, 'soon');
        const elsewhere = await publishOne(other, 'elsewhere');
        const claimed = new Map((await claim('first', T0, 'w')).map((c) => [c.delivery.id, c]));
        await build(claimed.get(built.deliveryId)!, 'w', T0);
        await store.release(unbuilt.deliveryId, 'w', T0 + 30_000);
        await store.release(built.deliveryId, 'w', T0 + 30_000);
        // Given back due before `now`: already due, left alone.
        await store.release(soon.deliveryId, 'w', T0 + 500);
        await store.release(elsewhere.deliveryId, 'w', T0 + 30_000);
        // Sent once, waiting for its backoff: not given back.
        const backoff = await retryingDelivery(acct, 'backoff', T0, T0 + 30_000);

        expect(await store.advanceGivenBack(acct, T0 + 1_000)).toBe(2);
        const due = async (id: string) => (await store.getDelivery(id))?.delivery;
        expect(await due(unbuilt.deliveryId)).toMatchObject({ state: 'pending', nextAttemptAt: T0 + 1_000 });
        expect(await due(built.deliveryId)).toMatchObject({ state: 'retrying', nextAttemptAt: T0 + 1_000 });
        expect(await due(soon.deliveryId)).toMatchObject({ state: 'pending', nextAttemptAt: T0 + 500 });
        expect(await due(backoff.deliveryId)).toMatchObject({ state: 'retrying', nextAttemptAt: T0 + 30_000 });
        expect(await due(elsewhere.deliveryId)).toMatchObject({ state: 'pending', nextAttemptAt: T0 + 30_000 });
        // Claimed as they are due now, in their lanes; the backoff still waits.
        const first = await claim('first', T0 + 1_000, 'w2');
        expect(first.map((c) => c.delivery.id).sort()).toEqual([soon.deliveryId, unbuilt.deliveryId].sort());
        expect((await claim('retry', T0 + 1_000, 'w2')).map((c) => c.delivery.id)).toEqual([built.deliveryId]);
        // Again: nothing more to advance (what was advanced is due, the backoff is not a give-back).
        expect(await store.advanceGivenBack(acct, T0 + 2_000)).toBe(0);
        expect(await store.advanceGivenBack(account(), T0 + 2_000)).toBe(0);
      });

      it('rejects bad arguments with an error naming the field', async () => {
        await expect(store.advanceGivenBack('', T0)).rejects.toThrow(/accountId/);
        await expect(store.advanceGivenBack(account(), Number.NaN)).rejects.toThrow(/now/);
      });
    });

    // ------------------------------------------------------------ sweep and stats

    describe('sweep', () => {
      it('deletes expired messages and old terminal deliveries, bounded by the limit', async () => {
        const acct = await withWebhook();
        await store.publish({
          accountId: acct,
          messages: [
            message('e', { expiresAt: T0 + 10 }),
            message('e', { expiresAt: T0 + 20 }),
            message('e', { expiresAt: T0 + 30 }),
            message('e', { expiresAt: T0 + DAY }),
          ],
          now: T0,
        });
        const old = await publishOne(acct, 'old', T0);
        const recent = await publishOne(acct, 'recent', T0);
        const waiting = await publishOne(acct, 'waiting', T0);
        const claimed = new Map((await claim('first', T0, 'w')).map((c) => [c.delivery.id, c]));
        await build(claimed.get(old.deliveryId)!, 'w', T0);
        await settle(claimed.get(old.deliveryId)!, 'w', T0, 'delivered');
        await build(claimed.get(recent.deliveryId)!, 'w', T0);
        await settle(claimed.get(recent.deliveryId)!, 'w', T0 + 5000, 'failed');
        await store.release(waiting.deliveryId, 'w', T0);

        const opts = { terminalRetentionMs: 1000, limit: 2 };
        // T0 + 2000: 3 expired messages and 1 old terminal delivery ('old', finished at T0 + 12).
        expect((await store.sweep(T0 + 2000, opts)).deleted).toBe(2);
        expect((await store.sweep(T0 + 2000, opts)).deleted).toBe(2);
        expect((await store.sweep(T0 + 2000, opts)).deleted).toBe(0);
        expect(await store.contactMessages(acct, 'e', T0, 10)).toHaveLength(1);
        expect(await store.getDelivery(old.deliveryId)).toBeNull();
        expect((await store.getDelivery(recent.deliveryId))?.delivery.state).toBe('failed');
        expect((await store.getDelivery(waiting.deliveryId))?.delivery.state).toBe('pending');
        expect((await store.sweep(T0 + 10_000, { terminalRetentionMs: 1000, limit: 100 })).deleted).toBe(1);
        expect(await store.getDelivery(recent.deliveryId)).toBeNull();
      });

      it("deletes a contact's older deliveries first, so that a replay never finds an older list the newest", async () => {
        const acct = await withWebhook();
        // The older list failed (kept for replay), the newer one was delivered; retention has passed for both.
        const older = await publishOne(acct, 'c', T0);
        const [first] = await claim('first', T0, 'w');
        await build(first!, 'w', T0);
        await settle(first!, 'w', T0 + 1, 'failed');
        const newer = await publishOne(acct, 'c', T0 + 10);
        const [second] = await claim('first', T0 + 10, 'w');
        await build(second!, 'w', T0 + 10);
        await settle(second!, 'w', T0 + 11, 'delivered');
        const later = T0 + 10_000;
        // One at a time (the sweeper works through a backlog in batches): the older goes first.
        expect((await store.sweep(later, { terminalRetentionMs: 1000, limit: 1 })).deleted).toBe(1);
        expect(await store.getDelivery(older.deliveryId)).toBeNull();
        expect((await store.getDelivery(newer.deliveryId))?.delivery.state).toBe('delivered');
        // Had the newer gone first, replaying the older would have resent the older list after the newer one.
        expect(await store.retryDelivery(older.deliveryId, later)).toBeNull();
        expect((await store.sweep(later, { terminalRetentionMs: 1000, limit: 1 })).deleted).toBe(1);
        expect(await store.getDelivery(newer.deliveryId)).toBeNull();
      });

      it("deletes all but a busy contact's newest delivery in one sweep, and the newest in the next", async () => {
        const acct = await withWebhook();
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) {
          ids.push((await publishOne(acct, 'busy', T0 + i * 10)).deliveryId);
          const [c] = await claim('first', T0 + i * 10, 'w');
          await build(c!, 'w', T0 + i * 10);
          await settle(c!, 'w', T0 + i * 10 + 1, 'delivered');
        }
        const options = { terminalRetentionMs: 1000, limit: 1000 };
        // Not one per contact per sweep: a contact with more than one delivery per sweep interval would pile up.
        expect((await store.sweep(T0 + 10_000, options)).deleted).toBe(4);
        expect((await store.getDelivery(ids[4]!))?.delivery.state).toBe('delivered');
        expect((await store.sweep(T0 + 10_000, options)).deleted).toBe(1);
        expect((await store.sweep(T0 + 10_000, options)).deleted).toBe(0);
      });
    });

    describe('sweep with refreshExpired', () => {
      /** Claims the account's due deliveries at `now`, builds each and records a 200; returns each contact's list. */
      async function deliverAll(acct: string, now: number): Promise<Record<string, string[]>> {
        const lists: Record<string, string[]> = {};
        for (const c of (await claim('first', now)).filter((x) => x.delivery.accountId === acct)) {
          const body = await build(c, 'worker-1', now);
          await settle(c, 'worker-1', now + 1, 'delivered');
          const sent = JSON.parse(new TextDecoder().decode(body)) as StoredMessage[];
          lists[c.delivery.externalCustomerId] = sent.map((m) => m.id);
        }
        return lists;
      }

      async function pendingOf(acct: string, contact: string): Promise<Delivery[]> {
        const page = await store.listDeliveries({ accountId: acct, externalCustomerId: contact }, 100, null);
        return page.deliveries.filter((d) => d.state === 'pending');
      }

      it('gives a contact whose newest list held an expired message a pending delivery without it', async () => {
        const acct = await withWebhook();
        const short = message('x', { expiresAt: T0 + 100, createdDate: T0 + 1 });
        const long = message('x', { expiresAt: T0 + DAY });
        const only = message('y', { expiresAt: T0 + 100 });
        await store.publish({ accountId: acct, messages: [short, long, only], now: T0 });
        expect(await deliverAll(acct, T0)).toEqual({ x: [short.id, long.id], y: [only.id] });

        const later = T0 + 1000;
        expect(await store.sweep(later, { terminalRetentionMs: DAY, limit: 100, refreshExpired: true })).toEqual({
          deleted: 2,
          refreshed: 2,
        });
        const [x] = await pendingOf(acct, 'x');
        const [y] = await pendingOf(acct, 'y');
        expect(x).toMatchObject({ state: 'pending', nextAttemptAt: later });
        expect(y).toMatchObject({ state: 'pending', nextAttemptAt: later });
        // Built now, x's list is the message left and y's is empty: the receiver's copies lose the expired ones.
        expect(await deliverAll(acct, later)).toEqual({ x: [long.id], y: [] });
        // Nothing expired since: the next sweep refreshes nobody.
        expect(await store.sweep(later + 10, { terminalRetentionMs: DAY, limit: 100, refreshExpired: true })).toEqual({
          deleted: 0,
          refreshed: 0,
        });
        expect(await pendingOf(acct, 'x')).toEqual([]);
      });

      it('gives nothing to a contact whose newest list had already left the expired message out', async () => {
        const acct = await withWebhook();
        const expiring = message('z', { expiresAt: T0 + 100 });
        await store.publish({ accountId: acct, messages: [expiring], now: T0 });
        expect(await deliverAll(acct, T0)).toEqual({ z: [expiring.id] });
        // The next list, built after the expiry but before any sweep, already leaves it out.
        const { message: fresh } = await publishOne(acct, 'z', T0 + 200);
        expect(await deliverAll(acct, T0 + 200)).toEqual({ z: [fresh.id] });
        expect(await store.sweep(T0 + 1000, { terminalRetentionMs: DAY, limit: 100, refreshExpired: true })).toEqual({
          deleted: 1,
          refreshed: 0,
        });
        expect(await pendingOf(acct, 'z')).toEqual([]);
      });

      it('refreshes a contact whose newer list failed without the message: the delivered one before held it', async () => {
        const acct = await withWebhook();
        const expiring = message('f', { expiresAt: T0 + 100 });
        await store.publish({ accountId: acct, messages: [expiring], now: T0 });
        expect(await deliverAll(acct, T0)).toEqual({ f: [expiring.id] });
        // The next list, built after the expiry, is answered 400: the receiver still has the first one.
        const { deliveryId } = await publishOne(acct, 'f', T0 + 200);
        const [c] = (await claim('first', T0 + 200)).filter((x) => x.delivery.id === deliveryId);
        await build(c!, 'worker-1', T0 + 200);
        expect((await settle(c!, 'worker-1', T0 + 201, 'failed')).state).toBe('failed');
        expect(await store.sweep(T0 + 1000, { terminalRetentionMs: DAY, limit: 100, refreshExpired: true })).toEqual({
          deleted: 1,
          refreshed: 1,
        });
        expect(await pendingOf(acct, 'f')).toHaveLength(1);
      });

      it('refreshes contacts named with quotes, commas, braces, backslashes and non-ASCII, and only those', async () => {
        const acct = await withWebhook();
        const odd = ['a,"b"', '{c}', 'd\\e', 'NULL', 'é 😀', "f'g"];
        const expiring = odd.map((c) => message(c, { expiresAt: T0 + 100 }));
        const kept = message('h\\"i"');
        await store.publish({ accountId: acct, messages: [...expiring, kept], now: T0 });
        expect(Object.keys(await deliverAll(acct, T0)).sort()).toEqual([...odd, kept.externalCustomerId].sort());
        expect(await store.sweep(T0 + 1000, { terminalRetentionMs: DAY, limit: 100, refreshExpired: true })).toEqual({
          deleted: 6,
          refreshed: 6,
        });
        expect(await deliverAll(acct, T0 + 1000)).toEqual(Object.fromEntries(odd.map((c) => [c, []])));
      });

      it('refreshes a contact whose list was built before the expiry and is frozen after the sweep', async () => {
        const acct = await withWebhook();
        const { message: lasting } = await publishOne(acct, 'w', T0);
        expect(await deliverAll(acct, T0)).toEqual({ w: [lasting.id] });
        const { message: expiring } = await publishOne(acct, 'w', T0 + 10, {
          expiresAt: T0 + 100,
          createdDate: T0 + 10,
        });
        // The engine claims the delivery and builds its list before the message expires ...
        const [c] = (await claim('first', T0 + 50)).filter((x) => x.delivery.accountId === acct);
        const messages = await store.contactMessages(acct, 'w', T0 + 50, 1000);
        expect(messages.map((m) => m.id)).toEqual([expiring.id, lasting.id]);
        // ... the sweep runs before the list is frozen: no frozen list of the contact holds the expired message yet ...
        expect(await store.sweep(T0 + 1000, { terminalRetentionMs: DAY, limit: 100, refreshExpired: true })).toEqual({
          deleted: 1,
          refreshed: 1,
        });
        // ... and the list is frozen and sent with it: the receiver holds the expired message, so it is sent again.
        expect(
          await store.freeze(
            c!.delivery.id,
            'worker-1',
            bytesOf(messages),
            messages.map((m) => m.id),
            T0 + 50,
          ),
        ).toBe(true);
        await settle(c!, 'worker-1', T0 + 1001, 'delivered');
        expect(await pendingOf(acct, 'w')).toHaveLength(1);
        expect(await deliverAll(acct, T0 + 1002)).toEqual({ w: [lasting.id] });
      });

      it('supersedes a retry that would resend an expired message; without the option it changes nothing', async () => {
        const acct = await withWebhook();
        /** The contact's list of one message expiring at `expiresAt`, sent once and now waiting for a retry. */
        async function retryOf(contact: string, expiresAt: number): Promise<string> {
          const { deliveryId } = await publishOne(acct, contact, T0, { expiresAt });
          const [c] = (await claim('first', T0)).filter((x) => x.delivery.id === deliveryId);
          await build(c!, 'worker-1', T0);
          expect((await settle(c!, 'worker-1', T0 + 1, 'retry', T0 + 50_000)).state).toBe('retrying');
          return deliveryId;
        }
        const a = await retryOf('a', T0 + 100);
        const b = await retryOf('b', T0 + 2000);

        expect(await store.sweep(T0 + 1000, { terminalRetentionMs: DAY, limit: 100 })).toEqual({
          deleted: 1,
          refreshed: 0,
        });
        expect((await store.getDelivery(a))?.delivery.state).toBe('retrying');
        expect(await pendingOf(acct, 'a')).toEqual([]);

        expect(await store.sweep(T0 + 3000, { terminalRetentionMs: DAY, limit: 100, refreshExpired: true })).toEqual({
          deleted: 1,
          refreshed: 1,
        });
        const [pending] = await pendingOf(acct, 'b');
        expect(pending).toMatchObject({ nextAttemptAt: T0 + 3000 });
        expect((await store.getDelivery(b))?.delivery).toMatchObject({
          state: 'superseded',
          supersededBy: pending!.id,
        });
        expect((await store.getDelivery(a))?.delivery.state).toBe('retrying');
      });
    });

    describe('stats', () => {
      it('counts deliveries by state and reports the oldest due one', async () => {
        const empty = await store.stats(T0);
        expect(empty).toEqual({
          byState: { pending: 0, in_flight: 0, retrying: 0, delivered: 0, failed: 0, superseded: 0 },
          oldestDueAt: null,
        });
        const acct = await withWebhook();
        await retryingDelivery(acct, 'r', T0, T0 + 300);
        await publishOne(acct, 'p1', T0 + 100);
        await publishOne(acct, 'p2', T0 + 200);
        await publishOne(acct, 'f', T0 + 400);
        const claimed = await claim('first', T0 + 400, 'w', 1);
        expect(claimed.map((c) => c.delivery.externalCustomerId)).toEqual(['p1']);
        const stats = await store.stats(T0 + 250);
        expect(stats.byState).toEqual({
          pending: 2,
          in_flight: 1,
          retrying: 1,
          delivered: 0,
          failed: 0,
          superseded: 0,
        });
        expect(stats.oldestDueAt).toBe(T0 + 200);
        expect((await store.stats(T0 + 199)).oldestDueAt).toBeNull();
      });

      it('counts and dates the due deliveries of an account without a webhook, which no claim takes', async () => {
        // The API refuses a publish without a webhook; the store takes one (and a publish racing DeleteWebhook
        // on PostgreSQL can leave such a delivery behind): due, never sent.
        const acct = account();
        await publishOne(acct, 'p1', T0 + 50);
        await publishOne(acct, 'p2', T0 + 40);
        expect([...(await claim('first', T0 + 60)), ...(await claim('retry', T0 + 60))]).toEqual([]);
        expect(await store.stats(T0 + 60)).toEqual({
          byState: { pending: 2, in_flight: 0, retrying: 0, delivered: 0, failed: 0, superseded: 0 },
          oldestDueAt: T0 + 40,
        });
        expect((await store.stats(T0 + 39)).oldestDueAt).toBeNull();
      });

      it('dates no delivery of a disabled webhook, which waits by design, and dates them again once it is enabled', async () => {
        // Disabled with a retrying delivery (claims leave both lanes of a disabled webhook alone).
        const retried = await withWebhook();
        await retryingDelivery(retried, 'r', T0, T0 + 20);
        await store.upsertWebhook(retried, webhook({ enabled: false }), T0 + 2);
        // Disabled from the start: it keeps taking messages, and sends nothing.
        const off = await withWebhook({ enabled: false });
        await publishOne(off, 'p', T0 + 10);
        expect([...(await claim('first', T0 + 60)), ...(await claim('retry', T0 + 60))]).toEqual([]);
        // Counted by state all the same, but not dated: nothing is due that the service would send.
        expect(await store.stats(T0 + 60)).toEqual({
          byState: { pending: 1, in_flight: 0, retrying: 1, delivered: 0, failed: 0, superseded: 0 },
          oldestDueAt: null,
        });
        // Beside them, an enabled account's due delivery is the oldest.
        const on = await withWebhook();
        await publishOne(on, 'p', T0 + 30);
        expect((await store.stats(T0 + 60)).oldestDueAt).toBe(T0 + 30);
        // Enabled again: due, and dated from when they were due.
        await store.upsertWebhook(off, webhook(), T0 + 61);
        expect((await store.stats(T0 + 62)).oldestDueAt).toBe(T0 + 10);
        await store.upsertWebhook(retried, webhook(), T0 + 63);
        expect((await store.stats(T0 + 64)).oldestDueAt).toBe(T0 + 10);
        expect((await store.stats(T0 + 9)).oldestDueAt).toBeNull();
      });
    });

    // ------------------------------------------------------------ outcomes

    describe('outcomes', () => {
      function outcome(overrides: Partial<DeliveryOutcome> = {}): DeliveryOutcome {
        return deliveredOutcome({ messageIds: [randomUUID(), randomUUID()], ...overrides });
      }

      it('delivers emitted outcomes to every subscriber until it unsubscribes', async () => {
        const seenA: DeliveryOutcome[] = [];
        const seenB: DeliveryOutcome[] = [];
        const offA = store.onOutcome((o) => seenA.push(o));
        const offThrowing = store.onOutcome(() => {
          throw new Error('a broken listener');
        });
        const offB = store.onOutcome((o) => seenB.push(o));
        const first = outcome();
        const second = outcome({ state: 'retrying', statusCode: null, errorKind: 'timeout', nextAttemptAt: T0 + 9 });
        await store.emitOutcome(first);
        await store.emitOutcome(second);
        await waitFor(() => seenA.length === 2 && seenB.length === 2, 'two outcomes');
        expect(seenA).toEqual([first, second]);
        expect(seenB).toEqual([first, second]);

        offA();
        offThrowing();
        const third = outcome({ state: 'failed', statusCode: 400 });
        await store.emitOutcome(third);
        await waitFor(() => seenB.length === 3, 'the third outcome');
        expect(seenB[2]).toEqual(third);
        expect(seenA).toHaveLength(2);
        offB();
      });

      it('carries a delivery with a thousand message ids intact', async () => {
        const seen: DeliveryOutcome[] = [];
        const off = store.onOutcome((o) => seen.push(o));
        // Larger than a PostgreSQL NOTIFY payload: engines must not truncate it.
        const big = outcome({ messageIds: Array.from({ length: 1000 }, () => randomUUID()) });
        await store.emitOutcome(big);
        await waitFor(() => seen.length === 1, 'the big outcome');
        expect(seen[0]).toEqual(big);
        off();
      });
    });

    describe('superseded outcomes (announced by the store itself)', () => {
      /** Outcomes of `acct` as the store announces them. */
      function watchAccount(acct: string) {
        const seen: DeliveryOutcome[] = [];
        const off = store.onOutcome((o) => {
          if (o.accountId === acct) seen.push(o);
        });
        return {
          off,
          /**
           * Every outcome announced so far: a marker emitted now arrives after everything committed before
           * it (in process, and on PostgreSQL's one LISTEN connection in commit order), so waiting for it
           * also shows that nothing more (no second announcement) is on its way.
           */
          async settled(): Promise<DeliveryOutcome[]> {
            const marker = `marker-${randomUUID()}`;
            await store.emitOutcome(
              deliveredOutcome({ deliveryId: marker, accountId: acct, externalCustomerId: 'marker' }),
            );
            await waitFor(() => seen.some((o) => o.deliveryId === marker), 'the marker outcome');
            return seen.filter((o) => !o.deliveryId.startsWith('marker-'));
          },
        };
      }

      /** The message ids a frozen body carries, in its order. */
      const idsOf = (body: Uint8Array): string[] =>
        (JSON.parse(new TextDecoder().decode(body)) as StoredMessage[]).map((m) => m.id);

      function superseded(
        acct: string,
        deliveryId: string,
        supersededBy: string,
        at: number,
        extra: Partial<DeliveryOutcome> = {},
      ): DeliveryOutcome {
        return {
          deliveryId,
          accountId: acct,
          externalCustomerId: 'c',
          state: 'superseded',
          messageIds: [],
          attemptNo: 0,
          statusCode: null,
          errorKind: null,
          nextAttemptAt: null,
          at,
          supersededBy,
          ...extra,
        };
      }

      it('publish and resync announce the retrying delivery they supersede, once', async () => {
        const acct = await withWebhook();
        const watch = watchAccount(acct);
        const old = await retryingDelivery(acct, 'c', T0, T0 + 10_000);
        const sent = (await store.getDelivery(old.deliveryId))!.delivery.messageIds;
        const fresh = await publishOne(acct, 'c', T0 + 5);
        // Coalesced into the pending delivery: nothing is superseded, nothing announced.
        await publishOne(acct, 'c', T0 + 6);
        expect(await watch.settled()).toEqual([
          superseded(acct, old.deliveryId, fresh.deliveryId, T0 + 5, { messageIds: sent!, attemptNo: 1 }),
        ]);

        // The fresh one goes out and waits for a retry; a resync of the contact supersedes it in turn.
        const [c] = await claim('first', T0 + 10);
        const body = await build(c!, 'worker-1', T0 + 10);
        await settle(c!, 'worker-1', T0 + 11, 'retry', T0 + 10_000);
        const [resynced] = await store.resync(acct, ['c'], T0 + 20);
        const outcomes = await watch.settled();
        expect(outcomes).toHaveLength(2);
        expect(outcomes[1]).toEqual(
          superseded(acct, fresh.deliveryId, resynced!.deliveryId, T0 + 20, {
            messageIds: idsOf(body),
            attemptNo: 1,
          }),
        );
        watch.off();
      });

      it('recordAttempt announces a retry it turns into a supersede, with that attempt', async () => {
        const acct = await withWebhook();
        const watch = watchAccount(acct);
        const old = await publishOne(acct, 'c', T0);
        const [c] = await claim('first', T0);
        await build(c!, 'worker-1', T0);
        const newer = await publishOne(acct, 'c', T0 + 1);
        expect(await watch.settled()).toEqual([]); // the old one is in flight: not superseded yet
        const timeout = { statusCode: null, errorKind: 'timeout' };
        const updated = await store.recordAttempt(old.deliveryId, {
          owner: 'worker-1',
          attempt: attempt(c!.delivery, 'retry', T0 + 2, { ...timeout, nextAttemptAt: T0 + 50 }),
          nextState: 'retrying',
          reason: 'timeout',
        });
        expect(updated).toMatchObject({ state: 'superseded', supersededBy: newer.deliveryId });
        // endedAt: startedAt + durationMs (12 ms in these tests).
        expect(await watch.settled()).toEqual([
          superseded(acct, old.deliveryId, newer.deliveryId, T0 + 2 + 12, {
            messageIds: [old.message.id],
            attemptNo: 1,
            ...timeout,
          }),
        ]);
        watch.off();
      });

      it('release and an expired lease taken back by claimDue announce what they supersede', async () => {
        const acct = await withWebhook();
        const watch = watchAccount(acct);
        // Released: never built, never attempted.
        const released = await publishOne(acct, 'c', T0);
        await claim('first', T0, 'w');
        const newer = await publishOne(acct, 'c', T0 + 1);
        await store.release(released.deliveryId, 'w', T0 + 2);
        // Its worker died after building it: the next claim after the lease takes it back as superseded.
        const [next] = await claim('first', T0 + 3, 'w');
        expect(next?.delivery.id).toBe(newer.deliveryId);
        const body = await build(next!, 'w', T0 + 3);
        const newest = await publishOne(acct, 'c', T0 + 4);
        const later = T0 + 3 + LEASE + 1;
        expect(await claim('retry', later, 'w-b')).toEqual([]);
        expect(await watch.settled()).toEqual([
          superseded(acct, released.deliveryId, newer.deliveryId, T0 + 2),
          superseded(acct, newer.deliveryId, newest.deliveryId, later, { messageIds: idsOf(body) }),
        ]);
        watch.off();
      });

      it('retryDelivery announces the newer retrying delivery its replay supersedes', async () => {
        const acct = await withWebhook();
        const watch = watchAccount(acct);
        const failed = await publishOne(acct, 'c', T0);
        const [f] = await claim('first', T0);
        await build(f!, 'worker-1', T0);
        await settle(f!, 'worker-1', T0 + 1, 'failed');
        const newer = await publishOne(acct, 'c', T0 + 5);
        const [n] = await claim('first', T0 + 5);
        const body = await build(n!, 'worker-1', T0 + 5);
        await settle(n!, 'worker-1', T0 + 6, 'retry', T0 + 10_000);
        const replay = await store.retryDelivery(failed.deliveryId, T0 + 7);
        expect(replay?.replacedByNewer).toBe(true);
        expect(await watch.settled()).toEqual([
          superseded(acct, newer.deliveryId, replay!.delivery.id, T0 + 7, {
            messageIds: idsOf(body),
            attemptNo: 1,
          }),
        ]);
        watch.off();
      });
    });

    describe('trace context (traceparent)', () => {
      const tp = (n: number) => `00-${n.toString(16).padStart(32, 'a')}-${n.toString(16).padStart(16, 'b')}-01`;

      it("stores the publishing call's traceparent on the deliveries it creates, and null without one", async () => {
        const acct = await withWebhook();
        const traced = await store.publish({ accountId: acct, messages: [message('c1')], now: T0, traceparent: tp(1) });
        const plain = await store.publish({ accountId: acct, messages: [message('c2')], now: T0 });
        expect((await store.getDelivery(traced.deliveries[0]!.deliveryId))?.delivery.traceparent).toBe(tp(1));
        expect((await store.getDelivery(plain.deliveries[0]!.deliveryId))?.delivery.traceparent).toBeNull();
        // What a worker claims carries it: the attempt's span is started from it.
        const claimed = await claim('first', T0);
        const byContact = new Map(claimed.map((c) => [c.delivery.externalCustomerId, c.delivery.traceparent]));
        expect(Object.fromEntries(byContact)).toEqual({ c1: tp(1), c2: null });
      });

      it('keeps the first trace of a coalesced pending delivery', async () => {
        const acct = await withWebhook();
        const first = await store.publish({ accountId: acct, messages: [message('c')], now: T0, traceparent: tp(2) });
        const second = await store.publish({
          accountId: acct,
          messages: [message('c')],
          now: T0 + 1,
          traceparent: tp(3),
        });
        expect(second.deliveries[0]?.deliveryId).toBe(first.deliveries[0]?.deliveryId);
        expect((await store.getDelivery(first.deliveries[0]!.deliveryId))?.delivery.traceparent).toBe(tp(2));
      });

      it("stores the resync call's traceparent on the deliveries it creates", async () => {
        const acct = await withWebhook();
        const [entry] = await store.resync(acct, ['nobody'], T0, { traceparent: tp(4) });
        expect((await store.getDelivery(entry!.deliveryId))?.delivery.traceparent).toBe(tp(4));
      });

      it("moves a replayed delivery into the replay's trace, and gives a delivery created by a replay its trace", async () => {
        const acct = await withWebhook();
        const { deliveryId } = await publishOne(acct, 'c');
        const c = (await claim('first', T0)).find((x) => x.delivery.id === deliveryId)!;
        await build(c, 'worker-1', T0);
        await settle(c, 'worker-1', T0 + 1, 'failed');
        const replayed = await store.retryDelivery(deliveryId, T0 + 10, { traceparent: tp(5) });
        expect(replayed?.delivery).toMatchObject({ id: deliveryId, traceparent: tp(5) });
        // A replay without a trace keeps the one it has.
        expect((await store.retryDelivery(deliveryId, T0 + 11))?.delivery.traceparent).toBe(tp(5));

        const older = await retryingDelivery(acct, 'd', T0 + 20, T0 + 1_000);
        await store.retryDelivery(older.deliveryId, T0 + 21, { traceparent: tp(6) });
        expect((await store.getDelivery(older.deliveryId))?.delivery.traceparent).toBe(tp(6));
        await publishOne(acct, 'd', T0 + 22); // supersedes it: the replay then creates/sends the newest state
        const moved = await store.retryDelivery(older.deliveryId, T0 + 23, { traceparent: tp(7) });
        expect(moved?.replacedByNewer).toBe(true);
        // The contact's pending delivery existed already (the publish made it): it keeps its own trace.
        expect(moved?.delivery.traceparent).toBeNull();
      });

      it('refuses a malformed traceparent, naming it, and stores nothing', async () => {
        const acct = await withWebhook();
        await expect(
          store.publish({ accountId: acct, messages: [message('c')], now: T0, traceparent: 'not-a-trace' }),
        ).rejects.toMatchObject({ code: 'invalid_argument', message: expect.stringContaining('traceparent') });
        await expect(store.resync(acct, ['c'], T0, { traceparent: '00-zz' })).rejects.toMatchObject({
          code: 'invalid_argument',
        });
        expect((await store.listDeliveries({ accountId: acct }, 10, null)).deliveries).toEqual([]);
      });
    });

    describe('attempt reasons', () => {
      it('refuses an attempt whose number or error kind cannot be stored, naming the field', async () => {
        const acct = await withWebhook();
        const published = await publishOne(acct, 'bad-attempt');
        const [claimed] = await claim('first', T0, 'w');
        await build(claimed!, 'w', T0);
        const bad: Array<[Partial<Attempt>, string]> = [
          [{ attemptNo: 2 ** 31 }, 'attempt.attemptNo'],
          [{ errorKind: 'Time out\u0000' }, 'attempt.errorKind'],
          [{ errorKind: '' }, 'attempt.errorKind'],
        ];
        for (const [extra, field] of bad) {
          await expect(
            store.recordAttempt(published.deliveryId, {
              owner: 'w',
              attempt: attempt(claimed!.delivery, 'failed', T0 + 1, extra),
              nextState: 'failed',
            }),
          ).rejects.toMatchObject({ code: 'invalid_argument', message: expect.stringContaining(field) });
        }
        expect((await store.getDelivery(published.deliveryId))?.attempts).toEqual([]);
        const recorded = await store.recordAttempt(published.deliveryId, {
          owner: 'w',
          attempt: attempt(claimed!.delivery, 'failed', T0 + 1, { statusCode: null, errorKind: 'body_too_large' }),
          nextState: 'failed',
        });
        expect(recorded?.state).toBe('failed');
      });

      it('keeps the reason of the last failed attempt as lastError, and refuses a malformed one', async () => {
        const acct = await withWebhook();
        const gaveUp = await publishOne(acct, 'gave-up');
        const unnamed = await publishOne(acct, 'unnamed');
        const claimed = new Map((await claim('first', T0, 'w')).map((c) => [c.delivery.id, c]));
        const first = claimed.get(gaveUp.deliveryId)!;
        await build(first, 'w', T0);
        await build(claimed.get(unnamed.deliveryId)!, 'w', T0);
        for (const reason of ['', 'x'.repeat(201)]) {
          await expect(
            store.recordAttempt(gaveUp.deliveryId, {
              owner: 'w',
              attempt: attempt(first.delivery, 'failed', T0 + 1),
              nextState: 'failed',
              reason,
            }),
          ).rejects.toMatchObject({ code: 'invalid_argument', message: expect.stringContaining('reason') });
        }
        expect((await store.getDelivery(gaveUp.deliveryId))?.attempts).toEqual([]);
        const failed = await store.recordAttempt(gaveUp.deliveryId, {
          owner: 'w',
          attempt: attempt(first.delivery, 'failed', T0 + 1),
          nextState: 'failed',
          reason: 'max_attempts:http_503',
        });
        expect(failed).toMatchObject({ state: 'failed', lastError: 'max_attempts:http_503' });
        // Without a reason: the status (or error kind) as before.
        const plain = await settle(claimed.get(unnamed.deliveryId)!, 'w', T0 + 1, 'retry', T0 + 100);
        expect(plain.lastError).toBe('http_503');
        // A delivered attempt keeps the last failure's reason (the history says what happened before).
        const [again] = await claim('retry', T0 + 100, 'w');
        const done = await store.recordAttempt(unnamed.deliveryId, {
          owner: 'w',
          attempt: attempt(again!.delivery, 'delivered', T0 + 101),
          nextState: 'delivered',
          reason: 'ignored',
        });
        expect(done).toMatchObject({ state: 'delivered', lastError: 'http_503' });
      });
    });

    // ------------------------------------------------------------ the model test

    describe('random operation sequences', () => {
      type Op =
        | { kind: 'publish'; contact: number; count: number }
        | { kind: 'resync'; contact: number }
        | { kind: 'claim'; lane: Lane }
        | { kind: 'settle'; pick: number; verdict: Attempt['verdict'] }
        | { kind: 'release'; pick: number }
        | { kind: 'expire' };

      const opArb: fc.Arbitrary<Op> = fc.oneof(
        {
          weight: 4,
          arbitrary: fc.record({
            kind: fc.constant('publish' as const),
            contact: fc.nat(3),
            count: fc.integer({ min: 1, max: 3 }),
          }),
        },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('resync' as const), contact: fc.nat(3) }) },
        {
          weight: 4,
          arbitrary: fc.record({ kind: fc.constant('claim' as const), lane: fc.constantFrom<Lane>('first', 'retry') }),
        },
        {
          weight: 4,
          arbitrary: fc.record({
            kind: fc.constant('settle' as const),
            pick: fc.nat(7),
            verdict: fc.constantFrom<Attempt['verdict']>('delivered', 'retry', 'failed'),
          }),
        },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('release' as const), pick: fc.nat(7) }) },
        { weight: 1, arbitrary: fc.constant({ kind: 'expire' as const }) },
      );

      it('never puts two deliveries of a contact in flight and never loses a message', async () => {
        await fc.assert(
          fc.asyncProperty(fc.array(opArb, { minLength: 10, maxLength: 40, size: 'max' }), async (ops) => {
            const acct = await withWebhook();
            const contacts = ['c0', 'c1', 'c2', 'c3'];
            const published = new Map<string, string[]>(contacts.map((c) => [c, []]));
            /** Claims the model holds; `live` until time jumps past their lease. */
            const held: Array<{ claimed: ClaimedDelivery; owner: string; live: boolean }> = [];
            const deliveredOrder = new Map<string, string[]>(contacts.map((c) => [c, []]));
            let now = T0;
            let owners = 0;

            async function deliveries(): Promise<Delivery[]> {
              return (await store.listDeliveries({ accountId: acct }, 1000, null)).deliveries;
            }

            async function settleHeld(index: number, verdict: Attempt['verdict']): Promise<void> {
              const [h] = held.splice(index, 1);
              if (h === undefined) return;
              const d = h.claimed.delivery;
              if (d.body === null) {
                const messages = await store.contactMessages(acct, d.externalCustomerId, now, 1000);
                const frozen = await store.freeze(
                  d.id,
                  h.owner,
                  bytesOf(messages),
                  messages.map((m) => m.id),
                  now,
                );
                // A live claim can always freeze; a stale one must not send at all.
                if (h.live) expect(frozen).toBe(true);
                if (!frozen) return;
              }
              const current = (await store.getDelivery(d.id))?.delivery;
              const nextState = verdict === 'delivered' ? 'delivered' : verdict === 'failed' ? 'failed' : 'retrying';
              const updated = await store.recordAttempt(d.id, {
                owner: h.owner,
                attempt: attempt(current ?? d, verdict, now, { nextAttemptAt: now + 5 }),
                nextState,
              });
              if (h.live) expect(updated).not.toBeNull();
              if (updated?.state === 'delivered') deliveredOrder.get(d.externalCustomerId)!.push(d.id);
            }

            async function checkInvariants(): Promise<void> {
              const all = await deliveries();
              const rank = new Map(all.map((d, i) => [d.id, all.length - i])); // higher = newer
              for (const contact of contacts) {
                const mine = all.filter((d) => d.externalCustomerId === contact);
                expect(mine.filter((d) => d.state === 'in_flight').length).toBeLessThanOrEqual(1);
                expect(mine.filter((d) => d.state === 'pending').length).toBeLessThanOrEqual(1);
                // Every published message is on its way: a pending or unbuilt claim will carry it,
                // or a frozen, non-superseded delivery already does.
                const coversAll = mine.some(
                  (d) => d.state === 'pending' || (d.state === 'in_flight' && d.body === null),
                );
                if (!coversAll) {
                  const carried = new Set(
                    mine.filter((d) => d.state !== 'superseded').flatMap((d) => d.messageIds ?? []),
                  );
                  for (const id of published.get(contact)!) expect(carried.has(id)).toBe(true);
                }
                // The receiver never gets an older list after a newer one.
                const ranks = deliveredOrder.get(contact)!.map((id) => rank.get(id) ?? 0);
                expect(ranks).toEqual([...ranks].sort((a, b) => a - b));
              }
            }

            for (const op of ops) {
              now += 1;
              switch (op.kind) {
                case 'publish': {
                  const contact = contacts[op.contact]!;
                  const messages = Array.from({ length: op.count }, (_, i) =>
                    message(contact, { createdDate: now + i, expiresAt: now + DAY }),
                  );
                  await store.publish({ accountId: acct, messages, now });
                  published.get(contact)!.push(...messages.map((m) => m.id));
                  break;
                }
                case 'resync':
                  await store.resync(acct, [contacts[op.contact]!], now);
                  break;
                case 'claim': {
                  const owner = `w${owners++}`;
                  const claimed = await store.claimDue({ lane: op.lane, limit: 3, now, leaseMs: 1000, owner });
                  for (const c of claimed) {
                    // Never the same delivery on two live claims.
                    expect(held.some((h) => h.live && h.claimed.delivery.id === c.delivery.id)).toBe(false);
                    held.push({ claimed: c, owner, live: true });
                  }
                  break;
                }
                case 'settle':
                  if (held.length > 0) await settleHeld(op.pick % held.length, op.verdict);
                  break;
                case 'release': {
                  const [h] = held.splice(op.pick % Math.max(1, held.length), 1);
                  if (h !== undefined) await store.release(h.claimed.delivery.id, h.owner, now);
                  break;
                }
                case 'expire':
                  now += 1001;
                  for (const h of held) h.live = false;
                  break;
              }
              await checkInvariants();
            }

            // Drain: every contact's newest delivery ends delivered (or failed, kept) with all its messages.
            held.length = 0;
            for (let round = 0; round < 40; round++) {
              now += 1001;
              let progressed = false;
              for (const lane of ['first', 'retry'] as const) {
                const owner = `drain${owners++}`;
                for (const c of await store.claimDue({ lane, limit: 50, now, leaseMs: 1000, owner })) {
                  held.push({ claimed: c, owner, live: true });
                  await settleHeld(held.length - 1, 'delivered');
                  progressed = true;
                }
              }
              if (!progressed) break;
            }
            await checkInvariants();
            const all = await deliveries();
            expect(all.filter((d) => ['pending', 'in_flight', 'retrying'].includes(d.state))).toEqual([]);
            for (const contact of contacts) {
              const newest = all.find((d) => d.externalCustomerId === contact);
              if (published.get(contact)!.length === 0) continue;
              expect(newest === undefined ? 'none' : newest.state).toMatch(/^(delivered|failed)$/);
              expect(new Set(newest!.messageIds)).toEqual(new Set(published.get(contact)));
            }
          }),
          { numRuns: options.modelRuns ?? 30 },
        );
      });
    });
  });
}
