import { describe, expect, it } from 'vitest';
import { CIRCUIT_STATE_VALUES, createMetrics } from './metrics.js';

/** Current values of one metric, keyed by its labels in a stable order. */
async function values(metric: {
  get(): Promise<{ values: Array<{ labels: object; value: number; metricName?: string }> }>;
}) {
  const { values: list } = await metric.get();
  return Object.fromEntries(
    list.map((v) => [
      [
        v.metricName ?? '',
        ...Object.entries(v.labels)
          .map(([k, l]) => `${k}=${String(l)}`)
          .sort(),
      ]
        .join(' ')
        .trim(),
      v.value,
    ]),
  );
}

describe('createMetrics', () => {
  it('counts an attempt once in deliveries_total, the histogram and, unless 2xx, the endpoint failures', async () => {
    const metrics = createMetrics({ processMetrics: false });
    metrics.recordAttempt({ accountId: 'a', outcome: 'delivered', statusCode: 201, durationMs: 3 });
    metrics.recordAttempt({ accountId: 'a', outcome: 'superseded', statusCode: 429, durationMs: 3 });
    metrics.recordAttempt({ accountId: 'b', outcome: 'failed', statusCode: 302, durationMs: 3 });
    expect(await values(metrics.deliveriesTotal)).toEqual({
      'outcome=delivered status_class=2xx': 1,
      'outcome=superseded status_class=4xx': 1,
      'outcome=failed status_class=3xx': 1,
    });
    expect(await values(metrics.endpointFailures)).toEqual({ 'account=a': 1, 'account=b': 1 });
    const histogram = await values(metrics.attemptDuration);
    expect(histogram['delivery_attempt_duration_seconds_count']).toBe(3);
    expect(histogram['delivery_attempt_duration_seconds_bucket le=0.005']).toBe(3);
  });

  it('encodes circuit states as 0 closed, 1 half open, 2 open', async () => {
    const metrics = createMetrics({ processMetrics: false });
    metrics.setCircuitState('a', 'half_open');
    metrics.setCircuitState('b', 'open');
    metrics.setCircuitState('b', 'closed');
    expect(await values(metrics.circuitState)).toEqual({ 'account=a': 1, 'account=b': 0 });
    expect(CIRCUIT_STATE_VALUES).toEqual({ closed: 0, half_open: 1, open: 2 });
  });

  it('leaves the queue gauges out when no stats provider is given', async () => {
    const metrics = createMetrics({ processMetrics: false });
    const body = (await metrics.scrape()).body;
    expect(body).not.toContain('delivery_queue_depth');
    expect(body).not.toContain('oldest_pending_delivery_age_seconds');
    expect(body).toContain('# TYPE deliveries_total counter');
  });

  it('keeps a registry per instance, apart from the global one', async () => {
    const a = createMetrics({ processMetrics: false });
    const b = createMetrics({ processMetrics: false });
    a.recordGrpcCall('x/Y', 'OK', 0.01);
    expect(await values(a.grpcCalls)).toEqual({ 'code=OK method=x/Y': 1 });
    expect(await values(b.grpcCalls)).toEqual({});
    const { register } = await import('prom-client');
    expect(register.getSingleMetric('grpc_server_calls_total')).toBeUndefined();
  });
});
