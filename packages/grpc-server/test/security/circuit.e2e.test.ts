/**
 * Circuit breaking end to end (issue 7): a real server, a real mock receiver that answers 503 to every
 * request. The endpoint's circuit opens (GetWebhook shows OPEN), after which the receiver sees nothing but
 * one probe per probe interval; when the receiver recovers, a probe closes the circuit and every waiting
 * delivery is delivered: nothing is dropped, and paused deliveries burn no attempt. Small config values
 * (hundreds of milliseconds) stand in for the production minutes.
 */
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import { CircuitState } from '../../src/gen/app_inbox/v1/webhook.js';
import type { CircuitState as StoreCircuitState } from '../../src/store/types.js';
import {
  accountId,
  deliveryIn,
  eventually,
  inboxMessage,
  spawnServer,
  startTestServer,
  storeUrls,
  type ChildServer,
  type TestServer,
} from '../e2e/harness.js';
import { createTestDatabase } from '../../src/store/postgres/test-db.js';

const OPEN_AFTER_MS = 300;
const PROBE_MS = 400;
const PROBE_MAX_MS = 800;
/** How long the test watches the open circuit before the receiver recovers. */
const WATCH_MS = 1_700;

describe.each(storeUrls())('circuit breaker ($engine)', (target) => {
  let t: TestServer | undefined;
  let receiver: MockReceiver | undefined;
  afterEach(async () => {
    await t?.stop();
    await receiver?.close();
  });
  afterAll(() => target.release());

  it('opens on a failing endpoint, lets one probe through per interval, and delivers everything once it recovers', async () => {
    const transitions: Array<{ state: StoreCircuitState; at: number }> = [];
    const account = accountId('circuit');
    receiver = await createMockReceiver({ rules: [{ answers: [{ status: 503 }], repeat: true }] });
    t = await startTestServer(
      await target.newUrl(),
      {
        circuitOpenAfterMs: OPEN_AFTER_MS,
        circuitMinFailures: 3,
        circuitProbeIntervalMs: PROBE_MS,
        circuitProbeMaxIntervalMs: PROBE_MAX_MS,
        // Retries alone would go on for minutes: only the circuit limits the requests here.
        maxAttempts: 1_000,
        maxAgeMs: 600_000,
        backoffBaseMs: 20,
        backoffMaxMs: 50,
      },
      {
        onCircuitStateChange: (accountIdChanged, state) => {
          if (accountIdChanged === account) transitions.push({ state, at: Date.now() });
        },
      },
    );
    const { clients } = t;
    await clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook` });
    const contacts = ['c-1', 'c-2', 'c-3'];
    const published = await clients.publishMessages({
      accountId: account,
      messages: contacts.map((c) => inboxMessage(c)),
    });
    expect(published.deliveries).toHaveLength(3);

    // 1. The circuit opens, and GetWebhook says so.
    const open = await eventually(
      async () => {
        const { webhook } = await clients.getWebhook({ accountId: account });
        return webhook?.circuit?.state === CircuitState.CIRCUIT_STATE_OPEN ? webhook.circuit : undefined;
      },
      10_000,
      'the circuit to open',
    );
    expect(open.consecutiveFailures).toBeGreaterThanOrEqual(3);
    const openedAt = open.sinceMs ?? 0;
    expect(open.nextProbeAtMs).toBe(openedAt + PROBE_MS);
    const failuresBeforeOpen = receiver.records.list().length;
    expect(failuresBeforeOpen).toBeGreaterThanOrEqual(3);

    // 2. While it is open, only probes go out: one at a time, at the probe interval (doubling, capped).
    // The watch is the WATCH_MS after the circuit opened, by the server's clock (the same as this process's): counted
    // from when this test saw it open instead, a late look (a loaded machine) took in the third probe, due at +2000.
    const watchEnd = openedAt + WATCH_MS;
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, watchEnd - Date.now())));
    const attemptStarts = async () => {
      const starts: number[] = [];
      for (const { deliveryId } of published.deliveries) {
        const { delivery } = await clients.getDelivery({ deliveryId });
        starts.push(...(delivery?.attempts ?? []).map((a) => a.startTimeMs));
      }
      return starts.sort((a, b) => a - b);
    };
    const starts = await attemptStarts();
    // An attempt admitted just before the circuit opened may start a few milliseconds after it.
    expect(starts.filter((at) => at > openedAt + 100 && at < openedAt + PROBE_MS)).toEqual([]);
    const probes = starts.filter((at) => at >= openedAt + PROBE_MS && at < watchEnd);
    // Probes are due at +400 and +1200 (then +2000, past the watch).
    expect(probes.length).toBeGreaterThanOrEqual(1);
    expect(probes.length).toBeLessThanOrEqual(2);
    for (let i = 1; i < probes.length; i++) {
      expect(probes[i]! - probes[i - 1]!).toBeGreaterThanOrEqual(PROBE_MS * 2);
    }
    // The receiver saw at most the requests in flight when it opened (one per contact) and the probes.
    const receivedInWatch = receiver.records.list().filter((r) => Date.parse(r.receivedAt) < watchEnd);
    expect(receivedInWatch.length - failuresBeforeOpen).toBeLessThanOrEqual(contacts.length + 2);
    // Without the circuit, 3 deliveries retrying every 50 ms would have sent about a hundred requests.
    expect(transitions.map((x) => x.state).slice(0, 3)).toEqual(['open', 'half_open', 'open']);
    const { webhook: stillOpen } = await clients.getWebhook({ accountId: account });
    expect(stillOpen?.circuit?.state).not.toBe(CircuitState.CIRCUIT_STATE_CLOSED);

    // 3. The receiver recovers: the next probe closes the circuit and every waiting delivery goes out.
    receiver.control.clear();
    for (const { deliveryId } of published.deliveries) {
      await deliveryIn(clients, deliveryId, [DeliveryState.DELIVERY_STATE_DELIVERED], 10_000);
    }
    for (const contact of contacts) expect(receiver.records.lastAccepted(contact)?.messages).toHaveLength(1);
    const { webhook } = await clients.getWebhook({ accountId: account });
    expect(webhook?.circuit).toEqual({
      state: CircuitState.CIRCUIT_STATE_CLOSED,
      sinceMs: undefined,
      consecutiveFailures: 0,
      nextProbeAtMs: undefined,
    });
    expect(transitions.at(-2)?.state).toBe('half_open');
    expect(transitions.at(-1)?.state).toBe('closed');

    // Paused deliveries were given back without an attempt: every recorded attempt is a request received.
    let attempts = 0;
    for (const { deliveryId } of published.deliveries) {
      const { delivery } = await clients.getDelivery({ deliveryId });
      attempts += delivery?.attempts.length ?? 0;
    }
    expect(attempts).toBe(receiver.records.list().length);
  });

  /**
   * A server whose account's endpoint answered 410 to its first delivery (failed), with probes every 100-200 ms if
   * there were any (each would fail a waiting delivery for good: a 410 is final).
   */
  async function goneEndpoint(label: string) {
    const account = accountId(label);
    receiver = await createMockReceiver({ rules: [{ answers: [{ status: 410 }] }] });
    t = await startTestServer(await target.newUrl(), {
      circuitOpenAfterMs: 60_000,
      circuitProbeIntervalMs: 100,
      circuitProbeMaxIntervalMs: 200,
    });
    const { clients } = t;
    const url = `${receiver.url}/hook`;
    await clients.upsertWebhook({ accountId: account, url });
    const first = await clients.publishMessages({ accountId: account, messages: [inboxMessage('c-1')] });
    const gone = await deliveryIn(clients, first.deliveries[0]?.deliveryId ?? '', [
      DeliveryState.DELIVERY_STATE_FAILED,
    ]);
    return { account, clients, url, gone, server: t.server, mock: receiver };
  }

  it('a 410 Gone opens the circuit at once, with no probe; re-saving the webhook closes it and the rest is delivered', async () => {
    const { account, clients, url, gone, mock } = await goneEndpoint('gone');
    expect(gone.attempts.map((a) => a.statusCode)).toEqual([410]);
    const { webhook } = await clients.getWebhook({ accountId: account });
    expect(webhook?.circuit).toMatchObject({ state: CircuitState.CIRCUIT_STATE_OPEN, consecutiveFailures: 1 });

    // Paused: a new message waits (not sent, not dropped), over many probe intervals.
    const second = await clients.publishMessages({ accountId: account, messages: [inboxMessage('c-2')] });
    const waitingId = second.deliveries[0]?.deliveryId ?? '';
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(mock.records.list()).toHaveLength(1);
    const { delivery: waiting } = await clients.getDelivery({ deliveryId: waitingId });
    expect(waiting?.state).toBe(DeliveryState.DELIVERY_STATE_PENDING);
    expect(waiting?.attempts).toEqual([]);

    // The customer fixes the endpoint; the operator saves the webhook again, unchanged (Standard Webhooks: 410
    // disables it; saving it is how it is resumed).
    const resumed = await clients.upsertWebhook({ accountId: account, url });
    expect(resumed.webhook?.circuit?.state).toBe(CircuitState.CIRCUIT_STATE_CLOSED);
    await deliveryIn(clients, waitingId, [DeliveryState.DELIVERY_STATE_DELIVERED]);
    expect(mock.records.lastAccepted('c-2')?.messages).toHaveLength(1);
  });

  it('a webhook saved by another process resumes the endpoint paused by its 410 here, at the next probe interval', async () => {
    const { account, clients, server } = await goneEndpoint('gone-elsewhere');
    const second = await clients.publishMessages({ accountId: account, messages: [inboxMessage('c-2')] });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect((await clients.getWebhook({ accountId: account })).webhook?.circuit?.state).toBe(
      CircuitState.CIRCUIT_STATE_OPEN,
    );
    // Saved through the shared store, as another server process would (this one's API is not called).
    const stored = await server.store.getWebhook(account);
    await server.store.upsertWebhook(account, { ...stored!, messageTtlMs: stored!.messageTtlMs }, Date.now());
    await deliveryIn(clients, second.deliveries[0]?.deliveryId ?? '', [DeliveryState.DELIVERY_STATE_DELIVERED]);
    expect((await clients.getWebhook({ accountId: account })).webhook?.circuit?.state).toBe(
      CircuitState.CIRCUIT_STATE_CLOSED,
    );
  });

  it('a save by another process in the same millisecond as the save the 410 answered resumes it all the same', async () => {
    const { account, clients, server } = await goneEndpoint('gone-same-ms');
    const second = await clients.publishMessages({ accountId: account, messages: [inboxMessage('c-2')] });
    // Another process whose clock reads the millisecond of the save the 410 answered (or is behind it): only a
    // later updatedAt for this save tells this process's circuit that it is not the one the 410 answered.
    const stored = await server.store.getWebhook(account);
    await server.store.upsertWebhook(account, { ...stored!, messageTtlMs: stored!.messageTtlMs }, stored!.updatedAt);
    await deliveryIn(clients, second.deliveries[0]?.deliveryId ?? '', [DeliveryState.DELIVERY_STATE_DELIVERED]);
  });
});

describe('circuit breaker across processes (PostgreSQL)', () => {
  it('resumes an endpoint paused by its 410 in this process when another process saves the webhook', async () => {
    const database = await createTestDatabase();
    const receiver = await createMockReceiver({ rules: [{ answers: [{ status: 410 }] }] });
    let here: TestServer | undefined;
    let other: ChildServer | undefined;
    try {
      here = await startTestServer(database.url, {
        circuitOpenAfterMs: 60_000,
        circuitProbeIntervalMs: 100,
        circuitProbeMaxIntervalMs: 200,
      });
      const account = accountId('gone-other-process');
      const url = `${receiver.url}/hook`;
      await here.clients.upsertWebhook({ accountId: account, url });
      const first = await here.clients.publishMessages({ accountId: account, messages: [inboxMessage('c-1')] });
      await deliveryIn(here.clients, first.deliveries[0]?.deliveryId ?? '', [DeliveryState.DELIVERY_STATE_FAILED]);
      expect((await here.clients.getWebhook({ accountId: account })).webhook?.circuit?.state).toBe(
        CircuitState.CIRCUIT_STATE_OPEN,
      );
      // Another server process on the same database takes the save, over its own gRPC API.
      other = await spawnServer(database.url, []);
      await other.clients.upsertWebhook({ accountId: account, url });
      await eventually(
        async () =>
          (await here!.clients.getWebhook({ accountId: account })).webhook?.circuit?.state ===
          CircuitState.CIRCUIT_STATE_CLOSED
            ? true
            : undefined,
        5_000,
        'the circuit of this process closed',
      );
    } finally {
      await other?.kill('SIGTERM');
      await here?.stop();
      await receiver.close();
      await database.drop();
    }
  });
});
