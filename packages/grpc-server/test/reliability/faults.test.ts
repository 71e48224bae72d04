/**
 * Receiver faults, each from a real misbehaving endpoint (node:http, node:net, node:https on 127.0.0.1) and
 * seen through a real server and its gRPC API: connection reset, a hang past the timeout, a body that drips,
 * a huge body, a redirect, a TLS error. Each attempt is classified by core's table (CLASSIFICATION_TABLE)
 * and retried or failed as it says, and GetDelivery tells why. Then isolation: while one endpoint hangs,
 * another one's deliveries keep their pace.
 * @see SPEC §5, issue 7 "Receiver faults"
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLASSIFICATION_TABLE, errorKind, statusRule } from '@app-inbox/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AttemptVerdict, DeliveryState, type Delivery } from '../../src/gen/app_inbox/v1/delivery.js';
import { TIMEOUT_CODE } from '../../src/delivery/sender.js';
import { startReceiver, type TestReceiver } from '../delivery/http-receiver.js';
import { deliveryIn, inboxMessage, startTestServer, type TestServer } from '../e2e/harness.js';

const TERMINAL = [DeliveryState.DELIVERY_STATE_DELIVERED, DeliveryState.DELIVERY_STATE_FAILED];
const MAX_ATTEMPTS = 3;
const REQUEST_TIMEOUT_MS = 600;

/** What the core table says for an error kind / a status: the test asserts the table, not a copy of it. */
const verdictOfKind = (kind: keyof typeof CLASSIFICATION_TABLE.error) => CLASSIFICATION_TABLE.error[kind].verdict;
const PROTO_VERDICT = {
  delivered: AttemptVerdict.ATTEMPT_VERDICT_DELIVERED,
  retry: AttemptVerdict.ATTEMPT_VERDICT_RETRY,
  failed: AttemptVerdict.ATTEMPT_VERDICT_FAILED,
} as const;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'app-inbox-faults-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A closer for each endpoint a test opened. */
const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

async function httpEndpoint(handler: Parameters<typeof startReceiver>[0]): Promise<TestReceiver> {
  const receiver = await startReceiver(handler);
  closers.push(() => receiver.close());
  return receiver;
}

async function listen(server: NetServer | HttpsServer): Promise<number> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return (server.address() as AddressInfo).port;
}

/** A self-signed certificate for 127.0.0.1, made by openssl: valid, but trusted by nobody. */
function selfSignedCertificate(): { key: Buffer; cert: Buffer } {
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-keyout',
      'self.key',
      '-out',
      'self.crt',
    ],
    { cwd: dir, stdio: 'pipe' },
  );
  return { key: readFileSync(join(dir, 'self.key')), cert: readFileSync(join(dir, 'self.crt')) };
}

describe('receiver faults, classified by the core table', () => {
  let t: TestServer;

  beforeAll(async () => {
    t = await startTestServer(join(dir, 'faults.db'), {
      requestTimeoutMs: REQUEST_TIMEOUT_MS,
      leaseMs: 5_000,
      maxAttempts: MAX_ATTEMPTS,
      backoffBaseMs: 30,
      backoffMaxMs: 60,
      maxResponseBytes: 64 * 1024,
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  /** Points a new account at `url`, publishes one message and waits until its delivery is finished. */
  async function deliverTo(url: string): Promise<Delivery> {
    const account = `faults-${randomUUID()}`;
    await t.clients.upsertWebhook({ accountId: account, url, signingSecret: '' });
    const published = await t.clients.publishMessages({ accountId: account, messages: [inboxMessage('c')] });
    return deliveryIn(t.clients, published.deliveries[0]?.deliveryId ?? '', TERMINAL, 20_000);
  }

  /** A retryable error: every attempt carries the kind, the last one fails, and lastError says why. */
  function expectRetriedThenFailed(delivery: Delivery, kind: keyof typeof CLASSIFICATION_TABLE.error): void {
    expect(verdictOfKind(kind)).toBe('retry');
    expect(delivery.state).toBe(DeliveryState.DELIVERY_STATE_FAILED);
    expect(delivery.attempts.map((a) => [a.statusCode, a.errorKind, a.verdict])).toEqual([
      ...Array.from({ length: MAX_ATTEMPTS - 1 }, () => [undefined, kind, AttemptVerdict.ATTEMPT_VERDICT_RETRY]),
      [undefined, kind, AttemptVerdict.ATTEMPT_VERDICT_FAILED],
    ]);
    expect(delivery.lastError).toBe(`max_attempts:${kind}`);
  }

  it('connection reset: kind `reset`, retried until the attempts run out', async () => {
    let connections = 0;
    const server = createNetServer((socket) => {
      connections++;
      // Read the request, then RST instead of answering.
      socket.once('data', () => socket.resetAndDestroy());
    });
    const port = await listen(server);
    const delivery = await deliverTo(`http://127.0.0.1:${port}/hook`);
    expectRetriedThenFailed(delivery, 'reset');
    expect(connections).toBe(MAX_ATTEMPTS);
  });

  it('a hang past the request timeout: kind `timeout`, each attempt cut at the timeout, retried', async () => {
    expect(errorKind(TIMEOUT_CODE)).toBe('timeout');
    const endpoint = await httpEndpoint(() => undefined); // reads the request, never answers
    const delivery = await deliverTo(endpoint.url);
    expectRetriedThenFailed(delivery, 'timeout');
    expect(endpoint.requests).toHaveLength(MAX_ATTEMPTS);
    for (const attempt of delivery.attempts) {
      expect(attempt.durationMs).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50);
      // Cut at the timeout, not left hanging: generous bound for a loaded machine.
      expect(attempt.durationMs).toBeLessThan(REQUEST_TIMEOUT_MS + 2_000);
    }
  });

  it('a body that drips 1 byte/s after the status: judged by the status, cut at the timeout', async () => {
    const timers = new Set<NodeJS.Timeout>();
    closers.push(async () => timers.forEach((timer) => clearInterval(timer)));
    const drip = (status: number) =>
      httpEndpoint((_req, res) => {
        res.writeHead(status, { 'content-type': 'text/plain' });
        res.write('.');
        const timer = setInterval(
          () => (res.writableEnded || res.destroyed ? clearInterval(timer) : res.write('.')),
          1_000,
        );
        timers.add(timer);
        res.on('close', () => clearInterval(timer));
      });

    // 200 then a dripping body: the receiver said OK; the rest of the body does not matter.
    const ok = await drip(200);
    const delivered = await deliverTo(ok.url);
    expect(statusRule(200).verdict).toBe('delivered');
    expect(delivered.state).toBe(DeliveryState.DELIVERY_STATE_DELIVERED);
    expect(delivered.attempts).toHaveLength(1);
    expect(delivered.attempts[0]).toMatchObject({ statusCode: 200, verdict: AttemptVerdict.ATTEMPT_VERDICT_DELIVERED });
    expect(delivered.attempts[0]?.errorKind).toBeUndefined();
    expect(delivered.attempts[0]?.durationMs).toBeLessThan(REQUEST_TIMEOUT_MS + 2_000);

    // 503 then a dripping body: retried per the 503 row, each attempt bounded by the timeout.
    const unavailable = await drip(503);
    const failed = await deliverTo(unavailable.url);
    expect(statusRule(503).verdict).toBe('retry');
    expect(failed.state).toBe(DeliveryState.DELIVERY_STATE_FAILED);
    expect(failed.attempts.map((a) => [a.statusCode, a.verdict])).toEqual([
      [503, AttemptVerdict.ATTEMPT_VERDICT_RETRY],
      [503, AttemptVerdict.ATTEMPT_VERDICT_RETRY],
      [503, AttemptVerdict.ATTEMPT_VERDICT_FAILED],
    ]);
    expect(failed.lastError).toBe('max_attempts:http_503');
    expect(unavailable.requests).toHaveLength(MAX_ATTEMPTS);
  });

  it('a huge response body: read up to the cap only, judged by the status', async () => {
    const total = 512 * 1024 * 1024;
    const written = new Map<number, number>();
    const huge = (status: number) =>
      httpEndpoint((_req, res) => {
        res.writeHead(status, { 'content-type': 'application/octet-stream', 'content-length': String(total) });
        const chunk = Buffer.alloc(64 * 1024, 0x61);
        let sent = 0;
        const pump = () => {
          while (sent < total && !res.destroyed) {
            sent += chunk.length;
            written.set(status, sent);
            if (!res.write(chunk)) return void res.once('drain', pump);
          }
          if (sent >= total) res.end();
        };
        pump();
      });

    const ok = await huge(200);
    const delivered = await deliverTo(ok.url);
    expect(delivered.state).toBe(DeliveryState.DELIVERY_STATE_DELIVERED);
    expect(delivered.attempts[0]).toMatchObject({ statusCode: 200, verdict: AttemptVerdict.ATTEMPT_VERDICT_DELIVERED });

    const overloaded = await huge(502);
    const failed = await deliverTo(overloaded.url);
    expect(failed.attempts.map((a) => [a.statusCode, a.verdict])).toEqual([
      [502, PROTO_VERDICT[statusRule(502).verdict]],
      [502, AttemptVerdict.ATTEMPT_VERDICT_RETRY],
      [502, AttemptVerdict.ATTEMPT_VERDICT_FAILED],
    ]);
    expect(failed.lastError).toBe('max_attempts:http_502');
    // The sender stopped reading at its 64 KiB cap and dropped the connection: the endpoints could only push
    // what the socket buffers took, nowhere near the 512 MiB body.
    for (const status of [200, 502]) expect(written.get(status) ?? 0).toBeLessThan(64 * 1024 * 1024);
  });

  it('a 302 redirect is not followed: failed at once, as the core table says for 3xx', async () => {
    const target = await httpEndpoint((_req, res) => res.end('ok'));
    const redirecting = await httpEndpoint((_req, res) => {
      res.writeHead(302, { location: target.url });
      res.end();
    });
    const delivery = await deliverTo(redirecting.url);
    expect(statusRule(302).verdict).toBe('failed');
    expect(delivery.state).toBe(DeliveryState.DELIVERY_STATE_FAILED);
    expect(delivery.attempts.map((a) => [a.statusCode, a.verdict])).toEqual([
      [302, AttemptVerdict.ATTEMPT_VERDICT_FAILED],
    ]);
    expect(delivery.lastError).toBe('http_302');
    expect(redirecting.requests).toHaveLength(1);
    expect(target.requests).toHaveLength(0);
  });

  it('a TLS error (self-signed certificate): kind `tls`, retried per the table, never sent', async () => {
    let requests = 0;
    const server = createHttpsServer(selfSignedCertificate(), (_req, res) => {
      requests++;
      res.end('ok');
    });
    let handshakeErrors = 0;
    server.on('tlsClientError', () => handshakeErrors++);
    const port = await listen(server);
    const delivery = await deliverTo(`https://127.0.0.1:${port}/hook`);
    expectRetriedThenFailed(delivery, 'tls');
    expect(requests).toBe(0);
    expect(handshakeErrors).toBe(MAX_ATTEMPTS);
  });
});

describe('isolation: a hanging endpoint does not slow a healthy one', () => {
  /** Request timeout of this server: the bad endpoint holds every attempt this long. */
  const HANG_MS = 5_000;

  it('keeps the healthy endpoint’s delivery latency (p95 under 1 s) while another one hangs for 5 s', async () => {
    const t = await startTestServer(join(dir, 'isolation.db'), {
      requestTimeoutMs: HANG_MS,
      leaseMs: HANG_MS + 5_000,
      maxAttempts: 5,
      backoffBaseMs: 50,
      backoffMaxMs: 100,
    });
    closers.push(() => t.stop());
    const published = new Map<string, number>();
    const healthy = await httpEndpoint((req, res, received) => {
      res.end('ok');
      const body = JSON.parse(received.body.toString('utf8')) as Array<{ externalCustomerId: string }>;
      for (const m of body)
        if (!published.has(`got:${m.externalCustomerId}`)) published.set(`got:${m.externalCustomerId}`, received.at);
    });
    let hanging = 0;
    const bad = await httpEndpoint(() => {
      hanging++; // never answers: each attempt holds its connection until the 5 s timeout
    });
    const healthyAccount = `healthy-${randomUUID()}`;
    const badAccount = `hanging-${randomUUID()}`;
    await t.clients.upsertWebhook({ accountId: healthyAccount, url: healthy.url, signingSecret: '' });
    await t.clients.upsertWebhook({ accountId: badAccount, url: bad.url, signingSecret: '' });

    /** Publishes to a new healthy contact every 40 ms for `count` rounds; returns each one's latency (ms). */
    async function healthyLatencies(label: string, count: number): Promise<number[]> {
      const contacts: string[] = [];
      for (let i = 0; i < count; i++) {
        const contact = `${label}-${i}`;
        contacts.push(contact);
        published.set(contact, Date.now());
        await t.clients.publishMessages({ accountId: healthyAccount, messages: [inboxMessage(contact)] });
        await new Promise((r) => setTimeout(r, 40));
      }
      const deadline = Date.now() + 15_000;
      while (contacts.some((c) => !published.has(`got:${c}`)) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      return contacts.map((c) => (published.get(`got:${c}`) ?? Infinity) - published.get(c)!);
    }
    const p95 = (values: number[]) => [...values].sort((a, b) => a - b)[Math.ceil(values.length * 0.95) - 1]!;

    const baseline = await healthyLatencies('baseline', 40);
    // The bad endpoint gets more work than its 16 connections: its backlog waits, its slots hang.
    await t.clients.publishMessages({
      accountId: badAccount,
      messages: Array.from({ length: 60 }, (_, i) => inboxMessage(`bad-${i}`)),
    });
    const hangStarted = Date.now();
    while (hanging < 16 && Date.now() - hangStarted < 3_000) await new Promise((r) => setTimeout(r, 10));
    expect(hanging).toBeGreaterThanOrEqual(16);
    const during = await healthyLatencies('during', 40);
    // The measurement ran while the bad endpoint was hanging (its first attempts end after 5 s).
    expect(Date.now() - hangStarted).toBeLessThan(HANG_MS + 4_000);
    expect(bad.active).toBeGreaterThan(0);

    expect(baseline.every(Number.isFinite)).toBe(true);
    expect(during.every(Number.isFinite)).toBe(true);
    // Generous bounds (2 shared cores): a deliberately slow machine still passes, a head-of-line block would not.
    expect(p95(baseline)).toBeLessThan(1_000);
    expect(p95(during)).toBeLessThan(1_000);
  });
});
