/**
 * Signing-secret rotation end to end: a save that changes a webhook's signing secret keeps the replaced one signing
 * beside it for `--signing-secret-overlap-seconds`, so a receiver that still verifies with the old secret keeps
 * accepting requests while it moves to the new one (Standard Webhooks: several signatures in `webhook-signature`).
 * Real server, real gRPC client, a real mock receiver; the signatures are checked with node:crypto, not the
 * server's code, and the replaced secret is read back from the store as it is at rest (sealed).
 */
import { randomBytes } from 'node:crypto';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import { openStore } from '../../src/store/index.js';
import type { Store } from '../../src/store/types.js';
import {
  accountId,
  beforeEachCall,
  beforeEachCompareAndSet,
  deliveryIn,
  inboxMessage,
  signatureValid,
  startTestServer,
  storeUrls,
  type TestServer,
} from './harness.js';

const newSecret = () => `whsec_${randomBytes(32).toString('base64')}`;

describe.each(storeUrls())('signing-secret rotation ($engine)', (target) => {
  let t: TestServer | undefined;
  let receiver: MockReceiver | undefined;
  let raw: Store | undefined;

  afterEach(async () => {
    await t?.stop();
    await receiver?.close();
    t = undefined;
    receiver = undefined;
    raw = undefined;
  });
  afterAll(() => target.release());

  async function start(overlapSeconds: number) {
    receiver = await createMockReceiver();
    const url = await target.newUrl();
    raw = await openStore(url);
    t = await startTestServer(url, { signingSecretOverlapSeconds: overlapSeconds }, { store: raw });
    return { clients: t.clients, mock: receiver, account: accountId('rotate') };
  }

  /** Publishes one message to `account`, waits for its delivery, and gives what its request was signed with. */
  async function deliverOne(account: string, contact: string) {
    const published = await t!.clients.publishMessages({ accountId: account, messages: [inboxMessage(contact)] });
    const deliveryId = published.deliveries[0]!.deliveryId;
    const delivery = await deliveryIn(t!.clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    const request = receiver!.records.list().find((r) => r.deliveryId === deliveryId)!;
    const header = request.headers['webhook-signature'];
    const signatures = header === undefined ? [] : String(header).split(' ');
    return {
      signatures,
      signedWith: (secret: string) => signatureValid(secret, request.headers, delivery.body),
      /** Whether the first signature of the header alone verifies with `secret`. */
      firstSignedWith: (secret: string) =>
        signatureValid(secret, { ...request.headers, 'webhook-signature': signatures[0] }, delivery.body),
    };
  }

  it('signs with both secrets during the overlap, then with the new one only; the old one is sealed at rest and never read back', async () => {
    const { clients, mock, account } = await start(3);
    const [a, b] = [newSecret(), newSecret()];
    await clients.upsertWebhook({ accountId: account, url: `${mock.url}/hook`, signingSecret: a });
    const before = await deliverOne(account, 'c-0');
    expect(before.signatures).toHaveLength(1);
    expect(before.signedWith(a)).toBe(true);

    const savedAt = Date.now();
    const rotated = await clients.updateWebhook({
      accountId: account,
      updateMask: ['signing_secret'],
      signingSecret: b,
    });
    const endsAt = rotated.webhook!.previousSigningSecretExpireTimeMs!;
    expect(endsAt).toBeGreaterThanOrEqual(savedAt + 3_000);
    expect(endsAt).toBeLessThanOrEqual(Date.now() + 3_000);
    expect((await clients.getWebhook({ accountId: account })).webhook).toMatchObject({
      hasSigningSecret: true,
      previousSigningSecretExpireTimeMs: endsAt,
    });
    expect(JSON.stringify(rotated)).not.toContain(a.slice(6));
    expect(JSON.stringify(rotated)).not.toContain(b.slice(6));
    // At rest, the replaced secret is sealed like the current one.
    const stored = await raw!.getWebhook(account);
    expect(stored?.previousSigningSecret).toMatch(/^enc:v1:/);
    expect(stored?.signingSecret).toMatch(/^enc:v1:/);

    const during = await deliverOne(account, 'c-1');
    expect(during.signatures).toHaveLength(2);
    expect(during.signedWith(b)).toBe(true);
    expect(during.signedWith(a)).toBe(true);
    // The current secret's signature first.
    expect(during.firstSignedWith(b)).toBe(true);

    // Another field changed alone lets the rotation run on, to the same end.
    const enabledAgain = await clients.updateWebhook({ accountId: account, updateMask: ['enabled'], enabled: true });
    expect(enabledAgain.webhook?.previousSigningSecretExpireTimeMs).toBe(endsAt);

    await new Promise((resolve) => setTimeout(resolve, Math.max(0, endsAt - Date.now()) + 50));
    expect(
      (await clients.getWebhook({ accountId: account })).webhook?.previousSigningSecretExpireTimeMs,
    ).toBeUndefined();
    const after = await deliverOne(account, 'c-2');
    expect(after.signatures).toHaveLength(1);
    expect(after.signedWith(b)).toBe(true);
    expect(after.signedWith(a)).toBe(false);
  });

  it('UpsertWebhook rotates too; a second change keeps only the secret it replaces; removing the secret ends signing', async () => {
    const { clients, mock, account } = await start(600);
    const [a, b, c] = [newSecret(), newSecret(), newSecret()];
    const url = `${mock.url}/hook`;
    await clients.upsertWebhook({ accountId: account, url, signingSecret: a });
    const toB = await clients.upsertWebhook({ accountId: account, url, signingSecret: b });
    expect(toB.webhook?.previousSigningSecretExpireTimeMs).toBeGreaterThan(Date.now());
    // The same secret again: the rotation goes on to the same end.
    const sameB = await clients.upsertWebhook({ accountId: account, url, signingSecret: b });
    expect(sameB.webhook?.previousSigningSecretExpireTimeMs).toBe(toB.webhook?.previousSigningSecretExpireTimeMs);

    await clients.upsertWebhook({ accountId: account, url, signingSecret: c });
    const delivered = await deliverOne(account, 'c-0');
    expect(delivered.signatures).toHaveLength(2);
    expect([delivered.signedWith(c), delivered.signedWith(b), delivered.signedWith(a)]).toEqual([true, true, false]);

    const unsigned = await clients.upsertWebhook({ accountId: account, url });
    expect(unsigned.webhook).toMatchObject({ hasSigningSecret: false });
    expect(unsigned.webhook?.previousSigningSecretExpireTimeMs).toBeUndefined();
    const plain = await deliverOne(account, 'c-1');
    expect(plain.signatures).toEqual([]);
  });

  it('a save between its read and its write: the secret that save set is the one kept signing, never the one it replaced', async () => {
    receiver = await createMockReceiver();
    const url = await target.newUrl();
    const account = accountId('rotate-race');
    const [a, b, c] = [newSecret(), newSecret(), newSecret()];
    const store = await openStore(url);
    let raced = false;
    // The first compare-and-set of the rotation to `c` finds the webhook saved again since its read, with `b` (as a
    // call to another process would leave it): it is refused, and the rotation reads again.
    const racing = beforeEachCompareAndSet(store, async (target, args) => {
      if (raced) return;
      raced = true;
      const { previousSigningSecret: _p, previousSigningSecretExpiresAt: _e, ...config } = args[1];
      await target.upsertWebhook(account, { ...config, signingSecret: b }, args[3] + 1);
    });
    t = await startTestServer(url, { signingSecretOverlapSeconds: 600 }, { store: racing });
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook`, signingSecret: a });
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook`, signingSecret: c });
    expect(raced).toBe(true);
    const delivered = await deliverOne(account, 'c-0');
    expect([delivered.signedWith(c), delivered.signedWith(b), delivered.signedWith(a)]).toEqual([true, true, false]);
  });

  it('an UpsertWebhook that keeps no rotation of its own, racing a rotation: the secret it replaces signs on', async () => {
    receiver = await createMockReceiver();
    const url = await target.newUrl();
    const account = accountId('rotate-race-upsert');
    const [a, b] = [newSecret(), newSecret()];
    const store = await openStore(url);
    let armed = false;
    // Between the read of an UpsertWebhook back to `a` (no rotation under way at that read) and its write, another
    // process rotates `a` to `b`: the save then replaces `b`, which must go on signing beside `a`.
    const rotateToB = async (target: Store, config: Parameters<Store['upsertWebhook']>[1]) => {
      if (!armed) return;
      armed = false;
      const { previousSigningSecret: _p, previousSigningSecretExpiresAt: _e, ...rest } = config;
      const stored = (await target.getWebhook(account))!;
      await target.upsertWebhook(
        account,
        {
          ...rest,
          signingSecret: b,
          previousSigningSecret: stored.signingSecret!,
          previousSigningSecretExpiresAt: Date.now() + 600_000,
        },
        stored.updatedAt + 1,
      );
    };
    const racing = new Proxy(store, {
      get(target, property) {
        const value = Reflect.get(target, property, target) as unknown;
        if (typeof value !== 'function') return value;
        const bound = (value as (...a: unknown[]) => unknown).bind(target);
        if (property !== 'upsertWebhook' && property !== 'replaceWebhookIfUnchanged') return bound;
        return async (...args: unknown[]) => {
          await rotateToB(target, args[1] as Parameters<Store['upsertWebhook']>[1]);
          return bound(...args);
        };
      },
    });
    t = await startTestServer(url, { signingSecretOverlapSeconds: 600 }, { store: racing });
    await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook`, signingSecret: a });
    armed = true;
    const saved = await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook`, signingSecret: a });
    expect(armed).toBe(false);
    expect(saved.webhook?.previousSigningSecretExpireTimeMs).toBeGreaterThan(Date.now());
    const delivered = await deliverOne(account, 'c-0');
    expect([delivered.signedWith(a), delivered.signedWith(b)]).toEqual([true, true]);
  });

  it('an UpsertWebhook that finds no webhook, racing a create with a secret: that secret signs on beside its own', async () => {
    receiver = await createMockReceiver();
    const url = await target.newUrl();
    const account = accountId('rotate-race-create');
    const [a, b] = [newSecret(), newSecret()];
    const store = await openStore(url);
    let raced = false;
    // Between the read of an UpsertWebhook that finds no webhook and its write, another process creates the webhook
    // with `b`, and answers OK: this save then replaces `b`, which must go on signing beside `a`.
    const racing = beforeEachCall(store, 'createWebhookIfAbsent', async (target, [, config, now]) => {
      if (raced) return;
      raced = true;
      await target.upsertWebhook(
        account,
        { url: config.url, maxMessagesPerContact: 1000, enabled: true, signingSecret: b },
        now,
      );
    });
    t = await startTestServer(url, { signingSecretOverlapSeconds: 600 }, { store: racing });
    const saved = await t.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook`, signingSecret: a });
    expect(raced).toBe(true);
    // The webhook was there when it wrote: not created by this call.
    expect(saved.created).toBe(false);
    expect(saved.webhook?.previousSigningSecretExpireTimeMs).toBeGreaterThan(Date.now());
    const delivered = await deliverOne(account, 'c-0');
    expect([delivered.signedWith(a), delivered.signedWith(b)]).toEqual([true, true]);
  });

  it('with --signing-secret-overlap-seconds 0 the new secret replaces the old one at once', async () => {
    const { clients, mock, account } = await start(0);
    const [a, b] = [newSecret(), newSecret()];
    await clients.upsertWebhook({ accountId: account, url: `${mock.url}/hook`, signingSecret: a });
    const rotated = await clients.updateWebhook({
      accountId: account,
      updateMask: ['signing_secret'],
      signingSecret: b,
    });
    expect(rotated.webhook?.previousSigningSecretExpireTimeMs).toBeUndefined();
    const delivered = await deliverOne(account, 'c-0');
    expect(delivered.signatures).toHaveLength(1);
    expect([delivered.signedWith(b), delivered.signedWith(a)]).toEqual([true, false]);
  });
});
