import { LIMITS, buildRequestHeaders, validateWebhookConfig } from '@app-inbox/core';
import { afterEach, describe, expect, it } from 'vitest';
import { createSender, type Sender, type SenderOptions } from '../../src/delivery/index.js';
import { closedPort, startReceiver, type Handler, type TestReceiver } from './http-receiver.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function receiver(handler?: Handler): Promise<TestReceiver> {
  const r = await startReceiver(handler);
  cleanups.push(() => r.close());
  return r;
}

function sender(options: SenderOptions = {}): Sender {
  const s = createSender(options);
  cleanups.push(() => s.close());
  return s;
}

const body = new TextEncoder().encode('[{"id":"a"}]');
const headers = { 'content-type': 'application/json', 'webhook-id': 'd-1' };

describe('sender', () => {
  it('POSTs the exact bytes and headers and reports a 2xx as a response', async () => {
    const r = await receiver((_req, res) => {
      res.statusCode = 204;
      // Answered 40 ms late: the attempt's duration covers the wait for the answer.
      setTimeout(() => res.end(), 40);
    });
    const result = await sender().send(`${r.url}?x=1`, headers, body);
    expect(result.outcome).toEqual({ kind: 'response', status: 204 });
    expect(result.statusCode).toBe(204);
    expect(result.errorKind).toBeNull();
    expect(result.durationMs).toBeGreaterThanOrEqual(35);
    expect(r.requests).toHaveLength(1);
    const [req] = r.requests;
    expect(req?.method).toBe('POST');
    expect(req?.path).toBe('/hook?x=1');
    expect(req?.headers['webhook-id']).toBe('d-1');
    expect(req?.headers['content-type']).toBe('application/json');
    expect(req?.body.equals(Buffer.from(body))).toBe(true);
  });

  it.each([400, 401, 410, 500, 502])('reports status %i as a response', async (status) => {
    const r = await receiver((_req, res) => {
      res.statusCode = status;
      res.end('nope');
    });
    const result = await sender().send(r.url, headers, body);
    expect(result.outcome).toEqual({ kind: 'response', status });
    expect(result.statusCode).toBe(status);
    expect(result.errorKind).toBeNull();
  });

  it('passes the raw Retry-After header on', async () => {
    const r = await receiver((_req, res) => {
      res.writeHead(503, { 'retry-after': '7' });
      res.end();
    });
    const result = await sender().send(r.url, headers, body);
    expect(result.outcome).toEqual({ kind: 'response', status: 503, retryAfter: '7' });
  });

  it("carries a webhook's own headers at their documented limits to a Node.js receiver with its default header limit", async () => {
    // Node.js (like IIS) reads at most 16 KiB of request line and headers by default and answers 431 past it, which
    // fails the delivery for good; a webhook saved within the documented limits must not be one it refuses.
    const r = await receiver();
    const own: Record<string, string> = {};
    let left: number = LIMITS.headersTotalBytes;
    for (let i = 0; left > 0; i++) {
      const name = `x-key-${i}`;
      const size = Math.min(LIMITS.headerValueBytes, left - name.length);
      own[name] = 'k'.repeat(size);
      left -= name.length + size;
    }
    const config = validateWebhookConfig({ url: r.url, headers: own });
    expect(config.ok).toBe(true);
    // The service's own headers beside them, as large as a plain ASCII configuration makes them: a 256-character
    // contact id, Basic auth, and two signatures (a rotation's overlap).
    const secret = (fill: number) => `whsec_${Buffer.alloc(32, fill).toString('base64')}`;
    const sent = await buildRequestHeaders({
      deliveryId: 'dlv_01J0000000000000000000000',
      externalCustomerId: 'c'.repeat(LIMITS.externalCustomerIdLength),
      body,
      timestampSeconds: 1_700_000_000,
      auth: { type: 'basic', username: 'u'.repeat(64), password: 'p'.repeat(256) },
      signingSecret: secret(1),
      previousSigningSecret: secret(2),
      headers: own,
    });
    const result = await sender().send(r.url, sent, body);
    expect(result.outcome).toEqual({ kind: 'response', status: 200 });
    expect(r.requests[0]?.headers['x-key-0']).toBe(own['x-key-0']);
  });

  it('times out a hanging receiver at requestTimeoutMs', async () => {
    const r = await receiver(() => {
      // never answers
    });
    const result = await sender({ requestTimeoutMs: 300 }).send(r.url, headers, body);
    expect(result.outcome).toEqual({ kind: 'error', code: 'ETIMEDOUT' });
    expect(result.errorKind).toBe('timeout');
    expect(result.statusCode).toBeNull();
    expect(result.durationMs).toBeGreaterThanOrEqual(250);
    expect(result.durationMs).toBeLessThan(3000);
  });

  it('waits up to requestTimeoutMs for a slow answer: no shorter undici timeout cuts it', async () => {
    // Headers after 1.2 s, then a body that trickles for another 1.2 s: both within the 4 s request timeout.
    const r = await receiver((_req, res) => {
      setTimeout(() => {
        res.writeHead(200);
        res.write('[');
        setTimeout(() => res.end(']'), 1_200);
      }, 1_200);
    });
    const result = await sender({ requestTimeoutMs: 4_000 }).send(r.url, headers, body);
    expect(result.outcome).toEqual({ kind: 'response', status: 200 });
    expect(result.durationMs).toBeGreaterThanOrEqual(2_000);
  });

  it('reports a refused connection', async () => {
    const port = await closedPort();
    const result = await sender().send(`http://127.0.0.1:${port}/hook`, headers, body);
    expect(result.outcome).toEqual({ kind: 'error', code: 'ECONNREFUSED' });
    expect(result.errorKind).toBe('refused');
  });

  it('reports a connection reset by the receiver', async () => {
    const r = await receiver((req) => {
      req.socket.resetAndDestroy();
    });
    const result = await sender().send(r.url, headers, body);
    expect(result.outcome.kind).toBe('error');
    expect(result.errorKind).toBe('reset');
    expect(result.statusCode).toBeNull();
  });

  it('reports a connection closed without an answer as a reset', async () => {
    const r = await receiver((req) => {
      req.socket.destroy();
    });
    const result = await sender().send(r.url, headers, body);
    expect(result.errorKind).toBe('reset');
  });

  it('does not follow a redirect: a 3xx is just a status', async () => {
    const r = await receiver((req, res) => {
      if (req.url === '/hook') {
        res.writeHead(307, { location: '/elsewhere' });
        res.end();
        return;
      }
      res.end('followed');
    });
    const result = await sender().send(r.url, headers, body);
    expect(result.outcome).toEqual({ kind: 'response', status: 307 });
    expect(r.requests.map((q) => q.path)).toEqual(['/hook']);
  });

  it('stops reading a huge response body at the cap and keeps the status', async () => {
    let written = 0;
    const r = await receiver((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 120);
      // An endless body: without the cap the read would only end at the request timeout.
      const pump = () => {
        while (!res.destroyed && written < 512 * 1024 * 1024) {
          written += chunk.length;
          if (!res.write(chunk)) {
            res.once('drain', pump);
            return;
          }
        }
      };
      pump();
    });
    const result = await sender({ maxResponseBytes: 1024, requestTimeoutMs: 10_000 }).send(r.url, headers, body);
    expect(result.outcome).toEqual({ kind: 'response', status: 200 });
    expect(result.durationMs).toBeLessThan(5_000);
    expect(written).toBeLessThan(512 * 1024 * 1024);
  });

  it('reuses a keep-alive connection for consecutive requests to one origin', async () => {
    const r = await receiver((_req, res) => res.end('ok'));
    const s = sender();
    // Between attempts the engine always does other work (recording the attempt), so the pool has marked the
    // connection idle again; a macrotask stands for that here.
    const tick = () => new Promise((resolve) => setImmediate(resolve));
    await s.send(r.url, headers, body);
    await tick();
    await s.send(r.url, headers, body);
    await tick();
    await s.send(`${r.url}/other`, headers, body);
    expect(r.requests).toHaveLength(3);
    expect(r.connections).toBe(1);
    expect(new Set(r.requests.map((q) => q.remotePort)).size).toBe(1);
  });

  it('opens at most connectionsPerOrigin connections and queues the rest', async () => {
    const r = await receiver((_req, res) => {
      setTimeout(() => res.end('ok'), 60);
    });
    const s = sender({ connectionsPerOrigin: 2 });
    const results = await Promise.all(Array.from({ length: 7 }, () => s.send(r.url, headers, body)));
    expect(results.map((x) => x.statusCode)).toEqual(Array(7).fill(200));
    expect(r.requests).toHaveLength(7);
    expect(r.connections).toBe(2);
    expect(r.maxActive).toBe(2);
  });

  it('has no cap per origin by default: requests in flight never wait for a connection', async () => {
    const r = await receiver((_req, res) => {
      setTimeout(() => res.end('ok'), 60);
    });
    const s = sender();
    const results = await Promise.all(Array.from({ length: 40 }, () => s.send(r.url, headers, body)));
    expect(results.map((x) => x.statusCode)).toEqual(Array(40).fill(200));
    expect(r.connections).toBe(40);
    expect(r.maxActive).toBe(40);
  });

  it('gives up at once when the caller aborts', async () => {
    const r = await receiver(() => {
      // never answers
    });
    const controller = new AbortController();
    const pending = sender({ requestTimeoutMs: 10_000 }).send(r.url, headers, body, controller.signal);
    setTimeout(() => controller.abort(), 50);
    const result = await pending;
    expect(result.outcome).toEqual({ kind: 'error', code: 'UND_ERR_ABORTED' });
    expect(result.durationMs).toBeLessThan(2_000);
  });

  it('reports an unparsable URL without throwing', async () => {
    const result = await sender().send('not a url', headers, body);
    expect(result.outcome).toEqual({ kind: 'error', code: 'ERR_INVALID_URL' });
  });

  describe('private address guard (addressPolicy, @see src/security/ssrf.ts)', () => {
    const strict = { allowPrivate: false, allowList: [] };

    it('refuses a loopback IP literal before connecting', async () => {
      const r = await receiver();
      const result = await sender({ addressPolicy: strict }).send(r.url, headers, body);
      expect(result.outcome).toEqual({ kind: 'error', code: 'blocked_address' });
      expect(result.errorKind).toBe('blocked_address');
      expect(r.connections).toBe(0);
    });

    it('refuses a name that resolves to loopback at connect time', async () => {
      const r = await receiver();
      const result = await sender({ addressPolicy: strict }).send(`http://localhost:${r.port}/hook`, headers, body);
      expect(result.errorKind).toBe('blocked_address');
      expect(r.connections).toBe(0);
    });

    it('lets allowed hosts through', async () => {
      const r = await receiver();
      const s = sender({ addressPolicy: { allowPrivate: false, allowList: ['127.0.0.1', 'localhost'] } });
      expect((await s.send(r.url, headers, body)).statusCode).toBe(200);
      expect((await s.send(`http://localhost:${r.port}/hook`, headers, body)).statusCode).toBe(200);
    });
  });

  it('rejects invalid options naming the option', () => {
    expect(() => createSender({ requestTimeoutMs: 0 })).toThrow(/requestTimeoutMs/);
    expect(() => createSender({ connectionsPerOrigin: 1.5 })).toThrow(/connectionsPerOrigin/);
    expect(() => createSender({ maxResponseBytes: -1 })).toThrow(/maxResponseBytes/);
  });
});
