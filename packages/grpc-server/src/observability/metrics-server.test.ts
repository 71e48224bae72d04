import { afterEach, describe, expect, it } from 'vitest';
import { createMetrics, type QueueStats } from './metrics.js';
import {
  MetricsServerOptionError,
  parseListenAddress,
  startMetricsServer,
  type RunningMetricsServer,
} from './metrics-server.js';

/** Parses Prometheus text exposition into `name{label="v",...}` (labels sorted) -> value. */
function parseExposition(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!match) throw new Error(`not an exposition line: ${line}`);
    const [, name, rawLabels, rawValue] = match;
    const labels = [...(rawLabels ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)]
      .map(([, k, v]) => `${k}="${v}"`)
      .sort();
    samples.set(`${name}{${labels.join(',')}}`, Number(rawValue));
  }
  return samples;
}

function key(name: string, labels: Record<string, string> = {}): string {
  const parts = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort();
  return `${name}{${parts.join(',')}}`;
}

const NOW = 1_800_000_000_000;
const servers: RunningMetricsServer[] = [];

async function start(...args: Parameters<typeof startMetricsServer>): Promise<RunningMetricsServer> {
  const server = await startMetricsServer(...args);
  servers.push(server);
  return server;
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

describe('GET /metrics over HTTP', () => {
  it('exposes recorded attempts, queue gauges read from the store, circuits, gRPC calls and process metrics', async () => {
    const statsCalls: number[] = [];
    const metrics = createMetrics({
      clock: () => NOW,
      statsProvider: async (now): Promise<QueueStats> => {
        statsCalls.push(now);
        return {
          byState: { pending: 4, in_flight: 1, retrying: 2, delivered: 10, failed: 1, superseded: 0 },
          oldestDueAt: NOW - 12_500,
        };
      },
    });
    metrics.recordAttempt({ accountId: 'acc-1', outcome: 'delivered', statusCode: 200, durationMs: 30 });
    metrics.recordAttempt({ accountId: 'acc-1', outcome: 'delivered', statusCode: 204, durationMs: 40 });
    metrics.recordAttempt({ accountId: 'acc-1', outcome: 'retrying', statusCode: 503, durationMs: 120 });
    metrics.recordAttempt({ accountId: 'acc-1', outcome: 'failed', statusCode: 400, durationMs: 8 });
    metrics.recordAttempt({ accountId: 'acc-2', outcome: 'retrying', statusCode: null, durationMs: 15_000 });
    metrics.setCircuitState('acc-2', 'open');
    metrics.setCircuitState('acc-1', 'closed');
    metrics.recordGrpcCall('app_inbox.v1.MessageService/PublishMessages', 'OK', 0.004);
    metrics.recordGrpcCall('app_inbox.v1.MessageService/PublishMessages', 'INVALID_ARGUMENT', 0.001);

    const server = await start({ host: '127.0.0.1', port: 0, metrics });
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const res = await fetch(`${server.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    const samples = parseExposition(await res.text());

    expect(samples.get(key('deliveries_total', { outcome: 'delivered', status_class: '2xx' }))).toBe(2);
    expect(samples.get(key('deliveries_total', { outcome: 'retrying', status_class: '5xx' }))).toBe(1);
    expect(samples.get(key('deliveries_total', { outcome: 'failed', status_class: '4xx' }))).toBe(1);
    expect(samples.get(key('deliveries_total', { outcome: 'retrying', status_class: 'error' }))).toBe(1);
    expect(samples.get(key('delivery_attempt_duration_seconds_count'))).toBe(5);
    expect(samples.get(key('delivery_attempt_duration_seconds_bucket', { le: '0.005' }))).toBe(0);
    expect(samples.get(key('delivery_attempt_duration_seconds_bucket', { le: '0.01' }))).toBe(1);
    expect(samples.get(key('delivery_attempt_duration_seconds_bucket', { le: '0.05' }))).toBe(3);
    expect(samples.get(key('delivery_attempt_duration_seconds_bucket', { le: '10' }))).toBe(4);
    expect(samples.get(key('delivery_attempt_duration_seconds_bucket', { le: '15' }))).toBe(5);
    expect(samples.get(key('delivery_attempt_duration_seconds_sum'))).toBeCloseTo(15.198, 6);
    expect(samples.get(key('endpoint_failures_total', { account: 'acc-1' }))).toBe(2);
    expect(samples.get(key('endpoint_failures_total', { account: 'acc-2' }))).toBe(1);
    expect(samples.get(key('endpoint_circuit_state', { account: 'acc-2' }))).toBe(2);
    expect(samples.get(key('endpoint_circuit_state', { account: 'acc-1' }))).toBe(0);
    expect(samples.get(key('delivery_queue_depth', { state: 'pending' }))).toBe(4);
    expect(samples.get(key('delivery_queue_depth', { state: 'retrying' }))).toBe(2);
    expect(samples.get(key('delivery_queue_depth', { state: 'delivered' }))).toBe(10);
    expect(samples.get(key('oldest_pending_delivery_age_seconds'))).toBe(12.5);
    const publish = 'app_inbox.v1.MessageService/PublishMessages';
    expect(samples.get(key('grpc_server_calls_total', { method: publish, code: 'OK' }))).toBe(1);
    expect(samples.get(key('grpc_server_calls_total', { method: publish, code: 'INVALID_ARGUMENT' }))).toBe(1);
    expect(samples.get(key('grpc_server_call_duration_seconds_count', { method: publish }))).toBe(2);
    expect(samples.get(key('process_cpu_user_seconds_total'))).toBeGreaterThan(0);
    expect(samples.has(key('nodejs_eventloop_lag_seconds'))).toBe(true);
    // Both queue gauges were fed by one store read, at the injected clock.
    expect(statsCalls).toEqual([NOW]);

    // A deleted account's series go away.
    metrics.forgetAccount('acc-2');
    const after = parseExposition(await (await fetch(`${server.url}/metrics`)).text());
    expect(after.has(key('endpoint_failures_total', { account: 'acc-2' }))).toBe(false);
    expect(after.has(key('endpoint_circuit_state', { account: 'acc-2' }))).toBe(false);
    expect(after.get(key('endpoint_failures_total', { account: 'acc-1' }))).toBe(2);
    expect(statsCalls).toHaveLength(2);
  });

  it('reports 0 age when nothing is due, and leaves the queue gauges empty when the store cannot be read', async () => {
    let fail = false;
    const errors: unknown[] = [];
    const metrics = createMetrics({
      clock: () => NOW,
      processMetrics: false,
      onCollectError: (error) => errors.push(error),
      statsProvider: async () => {
        if (fail) throw new Error('store unreachable');
        return { byState: { pending: 0 }, oldestDueAt: null };
      },
    });
    const server = await start({ port: 0, metrics });
    const ok = parseExposition(await (await fetch(`${server.url}/metrics`)).text());
    expect(ok.get(key('oldest_pending_delivery_age_seconds'))).toBe(0);
    expect(ok.get(key('delivery_queue_depth', { state: 'pending' }))).toBe(0);
    expect(ok.has(key('process_cpu_user_seconds_total'))).toBe(false);

    fail = true;
    const res = await fetch(`${server.url}/metrics`);
    expect(res.status).toBe(200);
    const broken = parseExposition(await res.text());
    expect(broken.get(key('oldest_pending_delivery_age_seconds'))).toBeNaN();
    expect(broken.has(key('delivery_queue_depth', { state: 'pending' }))).toBe(false);
    expect(errors).toHaveLength(1);
    expect((errors[0] as Error).message).toBe('store unreachable');
  });
});

describe('the metrics HTTP server', () => {
  it('answers /healthz from the health callback, 404 elsewhere, 405 to other methods, HEAD without a body', async () => {
    let healthy = true;
    const metrics = createMetrics({ processMetrics: false });
    const server = await start({ port: 0, metrics, healthy: () => healthy });

    const ok = await fetch(`${server.url}/healthz`);
    expect([ok.status, await ok.text()]).toEqual([200, 'ok\n']);
    healthy = false;
    const down = await fetch(`${server.url}/healthz`);
    expect(down.status).toBe(503);
    await down.text();

    const missing = await fetch(`${server.url}/`);
    expect(missing.status).toBe(404);
    await missing.text();
    const post = await fetch(`${server.url}/metrics`, { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    await post.text();
    const head = await fetch(`${server.url}/metrics?x=1`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
  });

  it('answers /readyz from the readiness callback (200 ready, 503 with the reason), apart from /healthz', async () => {
    let reason: string | null = null;
    const server = await start({
      port: 0,
      metrics: createMetrics({ processMetrics: false }),
      healthy: () => true,
      notReady: () => reason,
    });
    const answer = async (path: string) => {
      const res = await fetch(`${server.url}${path}`);
      return [res.status, await res.text()];
    };
    expect(await answer('/readyz')).toEqual([200, 'ready\n']);
    reason = 'the store does not answer';
    expect(await answer('/readyz')).toEqual([503, 'not ready: the store does not answer\n']);
    // Liveness is not readiness: a process whose database is down is not to be restarted for it.
    expect(await answer('/healthz')).toEqual([200, 'ok\n']);
  });

  it('answers /readyz as /healthz when no readiness callback is given', async () => {
    let healthy = true;
    const server = await start({ port: 0, metrics: createMetrics({ processMetrics: false }), healthy: () => healthy });
    const ready = await fetch(`${server.url}/readyz`);
    expect([ready.status, await ready.text()]).toEqual([200, 'ready\n']);
    healthy = false;
    const down = await fetch(`${server.url}/readyz`);
    expect([down.status, await down.text()]).toEqual([503, 'not ready: shutting down\n']);
  });

  it('answers 500 and reports the error when a scrape fails', async () => {
    const errors: unknown[] = [];
    const server = await start({
      port: 0,
      metrics: { scrape: () => Promise.reject(new Error('collect exploded')) },
      onError: (error) => errors.push(error),
    });
    const res = await fetch(`${server.url}/metrics`);
    expect(res.status).toBe(500);
    expect(await res.text()).toBe('scrape failed\n');
    expect((errors[0] as Error).message).toBe('collect exploded');
  });

  it('stops listening on close, even with a kept-alive scraper connection, and close is idempotent', async () => {
    const server = await startMetricsServer({ port: 0, metrics: createMetrics({ processMetrics: false }) });
    const res = await fetch(`${server.url}/metrics`);
    await res.text();
    await Promise.all([server.close(), server.close()]);
    await expect(fetch(`${server.url}/metrics`)).rejects.toThrow();
  });

  it('refuses an invalid port, naming it', async () => {
    await expect(
      startMetricsServer({ port: 70_000, metrics: createMetrics({ processMetrics: false }) }),
    ).rejects.toThrow(new MetricsServerOptionError('port', 'must be an integer in 0..65535, got 70000'));
  });
});

describe('parseListenAddress', () => {
  it('reads host:port, bracketed IPv6 and port 0', () => {
    expect(parseListenAddress('127.0.0.1:9464')).toEqual({ host: '127.0.0.1', port: 9464 });
    expect(parseListenAddress('0.0.0.0:0')).toEqual({ host: '0.0.0.0', port: 0 });
    expect(parseListenAddress('[::1]:9464')).toEqual({ host: '::1', port: 9464 });
    expect(parseListenAddress('metrics.local:80')).toEqual({ host: 'metrics.local', port: 80 });
  });

  it('refuses anything else, naming the option', () => {
    for (const bad of ['9464', '127.0.0.1', '127.0.0.1:99999', ':9464', 'a:b', '::1:9464']) {
      expect(() => parseListenAddress(bad, 'metricsAddress')).toThrow(
        /metrics server option metricsAddress: must be host:port/,
      );
    }
  });
});
