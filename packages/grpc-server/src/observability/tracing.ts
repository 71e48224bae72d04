/**
 * OpenTelemetry traces from the RPC that accepted a message to each delivery attempt.
 *
 * Off unless an OTLP endpoint is configured: then the tracer is a no-op and costs nothing. A delivery is
 * sent by a worker long after (and maybe in another process than) the RPC that created it, so the
 * context cannot flow in memory: the RPC's W3C `traceparent` ({@link currentTraceparent}) is stored on
 * the delivery row, and each attempt's span is started as its child ({@link withLinkedSpan}).
 * @see https://www.w3.org/TR/trace-context/
 */
import {
  ProxyTracerProvider,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  context,
  defaultTextMapGetter,
  defaultTextMapSetter,
  isSpanContextValid,
  propagation,
  trace,
  type Attributes,
  type Context,
  type Span,
  type TextMapGetter,
  type Tracer,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_SERVICE_NAME,
  ATTR_SERVICE_VERSION,
} from '@opentelemetry/semantic-conventions';
import { redactCredentials } from '../security/redact.js';
import { statusClass, type AttemptEvent } from './attempt.js';

export interface TracingOptions {
  /**
   * OTLP/HTTP base endpoint of a collector, e.g. `http://otel-collector:4318`; spans are POSTed (JSON) to
   * `<endpoint>/v1/traces`. Default: the environment's `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (a full URL,
   * used as is), else `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL). None of them: tracing is off.
   */
  otlpEndpoint?: string;
  /** `service.name` of the spans, e.g. `app-inbox-webhooks`. */
  serviceName: string;
  /** `service.version` of the spans. Default none. */
  serviceVersion?: string;
  /** Where the `OTEL_*` variables are read. Default `process.env`. `OTEL_SDK_DISABLED=true` turns tracing off. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Export to this exporter instead of OTLP (tests, debugging); turns tracing on. Default none. */
  exporter?: SpanExporter;
  /** Longest wait before a batch of ended spans is exported (milliseconds). Default 5,000. */
  exportDelayMs?: number;
}

export interface Tracing {
  /** True when spans are recorded and exported. */
  readonly enabled: boolean;
  /** The tracer to start spans with: a no-op one when tracing is off. */
  readonly tracer: Tracer;
  /** Where spans go (the OTLP traces URL, or `custom exporter`), null when off; for the start-up log. */
  readonly exportUrl: string | null;
  /** Exports the spans ended so far. */
  forceFlush(): Promise<void>;
  /** Exports what is left and unregisters the global tracer, context manager and propagator. Idempotent. */
  shutdown(): Promise<void>;
}

/** Error thrown for an invalid tracing option. */
export class TracingOptionError extends Error {
  readonly code = 'INVALID_TRACING_OPTION';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`tracing option ${option}: ${message}`);
    this.name = 'TracingOptionError';
  }
}

const INSTRUMENTATION_SCOPE = '@app-inbox/grpc-server';

/** Carries W3C `traceparent`/`tracestate`; used directly, so it works whether or not a global propagator is set. */
const w3c = new W3CTraceContextPropagator();

function checkHttpUrl(value: string, option: string): string {
  const protocol = URL.canParse(value) ? new URL(value).protocol : null;
  if (protocol !== 'http:' && protocol !== 'https:') {
    throw new TracingOptionError(option, `must be an http(s) URL, got ${JSON.stringify(redactCredentials(value))}`);
  }
  return value;
}

/** `<base>/v1/traces`, without doubling a trailing slash. */
function tracesUrl(base: string): string {
  return `${base.replace(/\/+$/, '')}/v1/traces`;
}

/**
 * The OTLP traces URL that the options and environment ask for, or null when tracing is off.
 * @throws TracingOptionError naming the option or variable that is not an http(s) URL
 */
export function resolveTracesUrl(options: Pick<TracingOptions, 'otlpEndpoint' | 'env'>): string | null {
  const env = options.env ?? process.env;
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return null;
  if (options.otlpEndpoint !== undefined && options.otlpEndpoint.trim() !== '') {
    return tracesUrl(checkHttpUrl(options.otlpEndpoint.trim(), 'otlpEndpoint'));
  }
  const signal = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  if (signal) return checkHttpUrl(signal, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  if (base) return tracesUrl(checkHttpUrl(base, 'OTEL_EXPORTER_OTLP_ENDPOINT'));
  return null;
}

/**
 * Starts tracing when an endpoint (or exporter) is configured: a tracer provider registered globally (its
 * AsyncLocalStorage context manager is what carries the active span across `await`), spans batched to
 * the exporter. Otherwise returns a no-op tracer and registers nothing. Call once per process.
 */
export function initTracing(options: TracingOptions): Tracing {
  if (typeof options.serviceName !== 'string' || options.serviceName.trim() === '') {
    throw new TracingOptionError('serviceName', 'must be a non-empty string');
  }
  const exportDelayMs = options.exportDelayMs ?? 5_000;
  if (!Number.isSafeInteger(exportDelayMs) || exportDelayMs <= 0) {
    throw new TracingOptionError('exportDelayMs', `must be a positive integer, got ${String(exportDelayMs)}`);
  }
  const url = options.exporter ? null : resolveTracesUrl(options);
  if (!options.exporter && url === null) {
    // A private proxy provider with no delegate: its tracers stay no-ops even if something else
    // registers a global provider later.
    const tracer = new ProxyTracerProvider().getTracer(INSTRUMENTATION_SCOPE);
    return {
      enabled: false,
      tracer,
      exportUrl: null,
      forceFlush: async () => undefined,
      shutdown: async () => undefined,
    };
  }

  const exporter = options.exporter ?? new OTLPTraceExporter({ url: url ?? undefined });
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({
      [ATTR_SERVICE_NAME]: options.serviceName,
      ...(options.serviceVersion ? { [ATTR_SERVICE_VERSION]: options.serviceVersion } : {}),
    }),
    spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: exportDelayMs })],
  });
  provider.register();
  let closing: Promise<void> | null = null;
  return {
    enabled: true,
    tracer: provider.getTracer(INSTRUMENTATION_SCOPE),
    exportUrl: url === null ? 'custom exporter' : redactCredentials(url),
    forceFlush: () => provider.forceFlush(),
    shutdown() {
      closing ??= provider.shutdown().finally(() => {
        trace.disable();
        context.disable();
        propagation.disable();
      });
      return closing;
    },
  };
}

/**
 * The W3C `traceparent` of the span active in `ctx` (default: the current context), e.g.
 * `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`; null when no valid span is active (tracing
 * off, or outside any span). Store it with the work the span started.
 */
export function currentTraceparent(ctx: Context = context.active()): string | null {
  const spanContext = trace.getSpanContext(ctx);
  if (!spanContext || !isSpanContextValid(spanContext)) return null;
  const carrier: Record<string, string> = {};
  w3c.inject(trace.setSpanContext(ROOT_CONTEXT, spanContext), carrier, defaultTextMapSetter);
  return carrier.traceparent ?? null;
}

/**
 * A context whose parent span is the remote one in `carrier` (W3C headers, e.g. gRPC metadata), on top of
 * `base` (default the active context); `base` itself when the carrier has no valid `traceparent`.
 */
export function extractTraceContext<C>(
  carrier: C,
  getter: TextMapGetter<C>,
  base: Context = context.active(),
): Context {
  return w3c.extract(base, carrier, getter);
}

/** A context whose parent span is the one a stored `traceparent` names; `base` when null or malformed. */
export function contextFromTraceparent(traceparent: string | null, base: Context = context.active()): Context {
  if (traceparent === null) return base;
  return extractTraceContext({ traceparent }, defaultTextMapGetter, base);
}

export interface LinkedSpanOptions {
  /** Default `SpanKind.INTERNAL`; a delivery attempt is `SpanKind.CLIENT` (it makes an HTTP request). */
  kind?: SpanKind;
}

/**
 * Runs `fn` inside a new active span that is a child of the stored `traceparent` (same trace id), so the
 * span of an attempt made hours later, by any process, sits in the trace of the RPC that accepted the
 * messages. With a null or malformed `traceparent` the span starts where the current context is (a new
 * trace outside any span). The span ends when `fn` settles; a throw is recorded and marks it as an error.
 */
export async function withLinkedSpan<T>(
  tracer: Tracer,
  name: string,
  traceparent: string | null,
  attributes: Attributes,
  fn: (span: Span) => Promise<T> | T,
  options: LinkedSpanOptions = {},
): Promise<T> {
  const parent = contextFromTraceparent(traceparent);
  return tracer.startActiveSpan(name, { kind: options.kind ?? SpanKind.INTERNAL, attributes }, parent, async (span) => {
    try {
      return await fn(span);
    } catch (error) {
      span.recordException(error instanceof Error ? error : String(error));
      span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
      throw error;
    } finally {
      span.end();
    }
  });
}

/** Attribute keys of our own, for what semantic conventions have no name for. */
export const SPAN_ATTRIBUTES = Object.freeze({
  deliveryId: 'app_inbox.delivery.id',
  accountId: 'app_inbox.account.id',
  attemptNo: 'app_inbox.delivery.attempt',
  outcome: 'app_inbox.delivery.outcome',
});

/**
 * Records an attempt's result on its span (host and port only, never the URL's path or query), and marks
 * the span as an error when no 2xx came, as HTTP client spans are.
 */
export function annotateAttemptSpan(span: Span, event: AttemptEvent): void {
  const attributes: Attributes = {
    [SPAN_ATTRIBUTES.deliveryId]: event.deliveryId,
    [SPAN_ATTRIBUTES.accountId]: event.accountId,
    [SPAN_ATTRIBUTES.attemptNo]: event.attemptNo,
    [SPAN_ATTRIBUTES.outcome]: event.outcome,
    [ATTR_HTTP_REQUEST_METHOD]: 'POST',
  };
  try {
    const url = new URL(event.url);
    attributes[ATTR_SERVER_ADDRESS] = url.hostname;
    attributes[ATTR_SERVER_PORT] = url.port !== '' ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
  } catch {
    // An unparsable URL is not echoed into the trace.
  }
  if (event.statusCode !== null) attributes[ATTR_HTTP_RESPONSE_STATUS_CODE] = event.statusCode;
  const cls = statusClass(event.statusCode);
  if (cls !== '2xx') {
    const errorType = event.errorKind ?? (event.statusCode !== null ? String(event.statusCode) : 'error');
    attributes[ATTR_ERROR_TYPE] = errorType;
    span.setStatus({ code: SpanStatusCode.ERROR, message: errorType });
  }
  span.setAttributes(attributes);
}
