import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it } from 'vitest';
import type { AttemptEvent } from './attempt.js';
import {
  TracingOptionError,
  annotateAttemptSpan,
  currentTraceparent,
  initTracing,
  resolveTracesUrl,
  withLinkedSpan,
  type Tracing,
} from './tracing.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function track(tracing: Tracing): Tracing {
  cleanups.push(() => tracing.shutdown());
  return tracing;
}

function inMemory(): { tracing: Tracing; exporter: InMemorySpanExporter; spans: () => Promise<ReadableSpan[]> } {
  const exporter = new InMemorySpanExporter();
  const tracing = track(initTracing({ serviceName: 'unit', exporter, exportDelayMs: 20 }));
  return {
    tracing,
    exporter,
    spans: async () => {
      await tracing.forceFlush();
      return exporter.getFinishedSpans();
    },
  };
}

const TRACE_ID = '0af7651916cd43dd8448eb211c80319c';
const PARENT_ID = 'b7ad6b7169203331';
const STORED = `00-${TRACE_ID}-${PARENT_ID}-01`;

describe('resolveTracesUrl', () => {
  it('is off without an endpoint, and when the SDK is disabled', () => {
    expect(resolveTracesUrl({ env: {} })).toBeNull();
    expect(resolveTracesUrl({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: '  ' } })).toBeNull();
    expect(
      resolveTracesUrl({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' } }),
    ).toBeNull();
  });

  it('appends /v1/traces to a base endpoint and uses a traces endpoint as is; the option wins', () => {
    expect(resolveTracesUrl({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' } })).toBe(
      'http://collector:4318/v1/traces',
    );
    expect(
      resolveTracesUrl({
        env: {
          OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318',
          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://b/custom/traces',
        },
      }),
    ).toBe('https://b/custom/traces');
    expect(
      resolveTracesUrl({ otlpEndpoint: 'http://opt:4318', env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318' } }),
    ).toBe('http://opt:4318/v1/traces');
  });

  it('refuses a value that is not an http(s) URL, naming where it came from', () => {
    expect(() => resolveTracesUrl({ otlpEndpoint: 'collector:4318', env: {} })).toThrow(TracingOptionError);
    expect(() => resolveTracesUrl({ otlpEndpoint: 'ftp://collector', env: {} })).toThrow(
      /tracing option otlpEndpoint: must be an http\(s\) URL/,
    );
    expect(() => resolveTracesUrl({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'nope' } })).toThrow(
      /OTEL_EXPORTER_OTLP_ENDPOINT/,
    );
  });

  it('never shows the password of a collector URL, refused or taken', () => {
    let refused: unknown;
    try {
      resolveTracesUrl({ otlpEndpoint: 'ftp://user:s3cret@collector:4318', env: {} });
    } catch (error) {
      refused = error;
    }
    expect(String(refused)).toContain('ftp://user:***@collector:4318');
    expect(String(refused)).not.toContain('s3cret');
    const tracing = initTracing({
      serviceName: 's',
      serviceVersion: '1',
      otlpEndpoint: 'http://u:s3cret@127.0.0.1:9',
      env: {},
    });
    try {
      // What the start-up log shows.
      expect(tracing.exportUrl).toBe('http://u:***@127.0.0.1:9/v1/traces');
    } finally {
      void tracing.shutdown();
    }
  });
});

describe('tracing off', () => {
  it('gives a no-op tracer that records nothing and yields no traceparent', async () => {
    const tracing = track(initTracing({ serviceName: 'off', env: {} }));
    expect(tracing.enabled).toBe(false);
    expect(tracing.exportUrl).toBeNull();
    const seen = tracing.tracer.startActiveSpan('rpc', (span) => {
      const result = { recording: span.isRecording(), traceparent: currentTraceparent() };
      span.end();
      return result;
    });
    expect(seen).toEqual({ recording: false, traceparent: null });
    // An attempt still runs and returns its value.
    await expect(withLinkedSpan(tracing.tracer, 'attempt', STORED, {}, async () => 7)).resolves.toBe(7);
    await tracing.shutdown();
  });

  it('refuses an empty service name', () => {
    expect(() => initTracing({ serviceName: ' ', env: {} })).toThrow(/tracing option serviceName/);
  });
});

describe('carrying the trace across the store', () => {
  it('currentTraceparent names the active span; a span started from it later shares the trace id', async () => {
    const { tracing, spans } = inMemory();
    expect(currentTraceparent()).toBeNull();
    const stored = tracing.tracer.startActiveSpan('PublishMessages', (span) => {
      const value = currentTraceparent();
      span.end();
      return value;
    });
    expect(stored).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);

    // As the worker would: no span active, only the stored string.
    expect(trace.getActiveSpan()).toBeUndefined();
    const inner = await withLinkedSpan(
      tracing.tracer,
      'delivery.attempt',
      stored,
      { 'app_inbox.delivery.id': 'd-9' },
      async () => {
        await new Promise((resolve) => setTimeout(resolve, 2));
        return currentTraceparent();
      },
    );
    const finished = await spans();
    const rpc = finished.find((s) => s.name === 'PublishMessages');
    const attempt = finished.find((s) => s.name === 'delivery.attempt');
    expect(attempt?.spanContext().traceId).toBe(rpc?.spanContext().traceId);
    expect(attempt?.parentSpanContext?.spanId).toBe(rpc?.spanContext().spanId);
    expect(attempt?.attributes['app_inbox.delivery.id']).toBe('d-9');
    // Inside the attempt, the active span is the attempt itself (across the await).
    expect(inner).toBe(`00-${attempt?.spanContext().traceId}-${attempt?.spanContext().spanId}-01`);
  });

  it('continues a traceparent read back from storage exactly', async () => {
    const { tracing, spans } = inMemory();
    await withLinkedSpan(tracing.tracer, 'delivery.attempt', STORED, {}, () => undefined, { kind: SpanKind.CLIENT });
    const [attempt] = await spans();
    expect(attempt?.spanContext().traceId).toBe(TRACE_ID);
    expect(attempt?.parentSpanContext?.spanId).toBe(PARENT_ID);
    expect(attempt?.kind).toBe(SpanKind.CLIENT);
  });

  it('starts a new trace when the stored value is null or malformed', async () => {
    const { tracing, spans } = inMemory();
    await withLinkedSpan(tracing.tracer, 'none', null, {}, () => undefined);
    await withLinkedSpan(tracing.tracer, 'garbage', '00-not-a-traceparent', {}, () => undefined);
    await withLinkedSpan(tracing.tracer, 'zeros', `00-${'0'.repeat(32)}-${PARENT_ID}-01`, {}, () => undefined);
    const finished = await spans();
    expect(finished.map((s) => s.name).sort()).toEqual(['garbage', 'none', 'zeros']);
    for (const span of finished) {
      expect(span.parentSpanContext).toBeUndefined();
      expect(span.spanContext().traceId).not.toBe(TRACE_ID);
    }
  });

  it('records a thrown error on the span, ends it, and rethrows', async () => {
    const { tracing, spans } = inMemory();
    await expect(
      withLinkedSpan(tracing.tracer, 'boom', STORED, {}, async () => {
        throw new Error('store down');
      }),
    ).rejects.toThrow('store down');
    const [span] = await spans();
    expect(span?.status).toEqual({ code: SpanStatusCode.ERROR, message: 'store down' });
    expect(span?.events.map((e) => e.name)).toEqual(['exception']);
    expect(span?.ended).toBe(true);
  });

  it('annotates an attempt with host and port only, and marks a non-2xx answer as an error', async () => {
    const { tracing, spans } = inMemory();
    const event: AttemptEvent = {
      deliveryId: 'd-1',
      accountId: 'acc-1',
      url: 'https://user:pw@hooks.example.com/in/secret-path?token=abc',
      attemptNo: 2,
      outcome: 'retrying',
      statusCode: 503,
      errorKind: null,
      durationMs: 40,
    };
    await withLinkedSpan(tracing.tracer, 'a503', STORED, {}, (span) => annotateAttemptSpan(span, event));
    await withLinkedSpan(tracing.tracer, 'a200', STORED, {}, (span) =>
      annotateAttemptSpan(span, { ...event, url: 'http://127.0.0.1:8080/x', outcome: 'delivered', statusCode: 200 }),
    );
    await withLinkedSpan(tracing.tracer, 'timeout', STORED, {}, (span) =>
      annotateAttemptSpan(span, { ...event, statusCode: null, errorKind: 'timeout' }),
    );
    const byName = new Map((await spans()).map((s) => [s.name, s]));
    const failed = byName.get('a503');
    expect(failed?.attributes).toEqual({
      'app_inbox.delivery.id': 'd-1',
      'app_inbox.account.id': 'acc-1',
      'app_inbox.delivery.attempt': 2,
      'app_inbox.delivery.outcome': 'retrying',
      'http.request.method': 'POST',
      'server.address': 'hooks.example.com',
      'server.port': 443,
      'http.response.status_code': 503,
      'error.type': '503',
    });
    expect(failed?.status).toEqual({ code: SpanStatusCode.ERROR, message: '503' });
    expect(JSON.stringify(failed?.attributes)).not.toMatch(/secret-path|token|pw/);
    expect(byName.get('a200')?.status.code).toBe(SpanStatusCode.UNSET);
    expect(byName.get('a200')?.attributes['server.port']).toBe(8080);
    expect(byName.get('timeout')?.attributes['error.type']).toBe('timeout');
  });
});

/** A stand-in for an OpenTelemetry collector: records every OTLP/HTTP request. */
async function startCollector() {
  const requests: Array<{ method: string; path: string; contentType: string; body: unknown }> = [];
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      requests.push({
        method: req.method ?? '',
        path: req.url ?? '',
        contentType: req.headers['content-type'] ?? '',
        body: text ? (JSON.parse(text) as unknown) : null,
      });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests };
}

interface OtlpBody {
  resourceSpans: Array<{
    resource: { attributes: Array<{ key: string; value: { stringValue?: string } }> };
    scopeSpans: Array<{ spans: Array<{ name: string; traceId: string; spanId: string; parentSpanId?: string }> }>;
  }>;
}

function exportedSpans(requests: Array<{ body: unknown }>) {
  return requests.flatMap((r) =>
    (r.body as OtlpBody).resourceSpans.flatMap((rs) =>
      rs.scopeSpans.flatMap((ss) =>
        ss.spans.map((s) => ({
          ...s,
          service: rs.resource.attributes.find((a) => a.key === 'service.name')?.value.stringValue,
        })),
      ),
    ),
  );
}

describe('OTLP export', () => {
  it('POSTs spans as OTLP/JSON to <endpoint>/v1/traces when the endpoint option is set', async () => {
    const collector = await startCollector();
    const tracing = track(
      initTracing({ serviceName: 'otlp-unit', serviceVersion: '1.2.3', otlpEndpoint: collector.url, env: {} }),
    );
    expect(tracing.enabled).toBe(true);
    expect(tracing.exportUrl).toBe(`${collector.url}/v1/traces`);

    const stored = tracing.tracer.startActiveSpan('PublishMessages', (span) => {
      const value = currentTraceparent();
      span.end();
      return value;
    });
    await withLinkedSpan(tracing.tracer, 'delivery.attempt', stored, {}, () => undefined);
    await tracing.shutdown();

    expect(collector.requests.length).toBeGreaterThan(0);
    for (const r of collector.requests) {
      expect([r.method, r.path]).toEqual(['POST', '/v1/traces']);
      expect(r.contentType).toMatch(/^application\/json/);
    }
    const spans = exportedSpans(collector.requests);
    const rpc = spans.find((s) => s.name === 'PublishMessages');
    const attempt = spans.find((s) => s.name === 'delivery.attempt');
    expect(rpc?.service).toBe('otlp-unit');
    expect(attempt?.traceId).toBe(rpc?.traceId);
    expect(attempt?.parentSpanId).toBe(rpc?.spanId);
    // The global registration is undone: a tracer obtained now is a no-op.
    expect(trace.getTracer('after').startSpan('x').isRecording()).toBe(false);
  });

  it('is turned on by OTEL_EXPORTER_OTLP_ENDPOINT in the environment', async () => {
    const collector = await startCollector();
    const tracing = track(
      initTracing({ serviceName: 'otlp-env', env: { OTEL_EXPORTER_OTLP_ENDPOINT: collector.url } }),
    );
    expect(tracing.enabled).toBe(true);
    tracing.tracer.startSpan('from-env').end();
    await tracing.shutdown();
    expect(exportedSpans(collector.requests).map((s) => [s.name, s.service])).toEqual([['from-env', 'otlp-env']]);
  });
});
