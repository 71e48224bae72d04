/**
 * A message's expiry reaches the receiver (`--refresh-on-expiry`, on by default): once the sweeper deletes a message
 * that a contact's last list held, the contact is sent its list again without it, so that a receiver that replaces
 * its copy with each list (SPEC §4) stops showing it. Real server, real gRPC client, real mock receiver.
 */
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { accountId, eventually, inboxMessage, startTestServer, storeUrls, type TestServer } from './harness.js';

/** Long enough for the first list to be built before the message expires on a slow machine (see publish.test.ts). */
const SHORT_TTL_MS = 1_500;
const SWEEP_INTERVAL_MS = 100;

describe.each(storeUrls())('expired messages leave the receiver ($engine)', ({ newUrl, release }) => {
  let t: TestServer | undefined;
  let receiver: MockReceiver | undefined;

  afterEach(async () => {
    await t?.stop();
    await receiver?.close();
    t = receiver = undefined;
  });
  afterAll(() => release());

  async function start(refreshOnExpiry: boolean): Promise<{ server: TestServer; hook: MockReceiver; acc: string }> {
    const server = (t = await startTestServer(await newUrl(), { sweepIntervalMs: SWEEP_INTERVAL_MS, refreshOnExpiry }));
    const hook = (receiver = await createMockReceiver());
    const acc = accountId();
    await server.clients.upsertWebhook({ accountId: acc, url: `${hook.url}/in`, signingSecret: '' });
    return { server, hook, acc };
  }

  function idsOf(hook: MockReceiver, contact: string): string[] | undefined {
    return hook.records.lastAccepted(contact)?.messages.map((m) => m.id);
  }

  it('sends the list again without the expired message, and [] to a contact left with none', async () => {
    const { server, hook, acc } = await start(true);
    const shortLived = inboxMessage('c', { expiresAtMs: Date.now() + SHORT_TTL_MS });
    const lasting = inboxMessage('c', { ttlSeconds: 3600 });
    const alone = inboxMessage('alone', { expiresAtMs: Date.now() + SHORT_TTL_MS });
    await server.clients.publishMessages({ accountId: acc, messages: [shortLived, lasting, alone] });
    const first = await eventually(() => idsOf(hook, 'c'), 10_000, "c's first list");
    expect([...first].sort()).toEqual([shortLived.id, lasting.id].sort());
    expect(await eventually(() => idsOf(hook, 'alone'), 10_000, "alone's first list")).toEqual([alone.id]);

    // No publish after it: the sweep alone brings the lists without the expired messages.
    await eventually(() => (idsOf(hook, 'c')?.length === 1 ? true : undefined), 10_000, "c's list after expiry");
    expect(idsOf(hook, 'c')).toEqual([lasting.id]);
    await eventually(() => (idsOf(hook, 'alone')?.length === 0 ? true : undefined), 10_000, 'an empty list');
    expect(hook.records.list({ externalCustomerId: 'c' })).toHaveLength(2);

    // Once sent, nothing more: later sweeps find no list holding an expired message.
    await new Promise((r) => setTimeout(r, 10 * SWEEP_INTERVAL_MS));
    expect(hook.records.list({ externalCustomerId: 'c' })).toHaveLength(2);
    expect(hook.records.list({ externalCustomerId: 'alone' })).toHaveLength(2);
    // Counted for the operator: one refresh for each of the two contacts.
    expect((await server.server.metrics.expiryRefreshes.get()).values[0]?.value).toBe(2);
  });

  it('sends nothing on expiry with --refresh-on-expiry false: the receiver keeps the message', async () => {
    const { server, hook, acc } = await start(false);
    const shortLived = inboxMessage('c', { expiresAtMs: Date.now() + SHORT_TTL_MS });
    await server.clients.publishMessages({ accountId: acc, messages: [shortLived] });
    expect(await eventually(() => idsOf(hook, 'c'), 10_000, 'the first list')).toEqual([shortLived.id]);
    // Past the expiry and ten sweep intervals: still the one list.
    await new Promise((r) => setTimeout(r, Math.max(0, shortLived.expiresAtMs! - Date.now()) + 10 * SWEEP_INTERVAL_MS));
    expect(hook.records.list({ externalCustomerId: 'c' })).toHaveLength(1);
    expect((await server.server.metrics.expiryRefreshes.get()).values[0]?.value).toBe(0);
  });
});
