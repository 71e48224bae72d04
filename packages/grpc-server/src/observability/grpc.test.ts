import {
  Metadata,
  Server,
  ServerCredentials,
  credentials,
  makeGenericClientConstructor,
  status,
  type Client,
  type ClientReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type ServiceError,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { instrumentGrpc, grpcStatusName } from './grpc.js';
import { createMetrics, type Metrics } from './metrics.js';
import { currentTraceparent, initTracing, withLinkedSpan, type Tracing } from './tracing.js';

/** A hand-written JSON service, so this test does not depend on the project's proto. */
interface EchoRequest {
  text: string;
  fail?: number;
  throw?: boolean;
  count?: number;
  hang?: boolean;
}
interface EchoResponse {
  text: string;
  traceparent?: string | null;
}

const json = {
  serialize: (value: unknown) => Buffer.from(JSON.stringify(value)),
  deserialize: (bytes: Buffer) => JSON.parse(bytes.toString('utf8')) as unknown,
};
const method = (path: string, responseStream: boolean) => ({
  path,
  requestStream: false,
  responseStream,
  requestSerialize: json.serialize,
  requestDeserialize: json.deserialize,
  responseSerialize: json.serialize,
  responseDeserialize: json.deserialize,
});
const EchoService = {
  say: method('/test.v1.Echo/Say', false),
  count: method('/test.v1.Echo/Count', true),
} satisfies ServiceDefinition;

interface EchoClient extends Client {
  say(
    request: EchoRequest,
    metadata: Metadata,
    callback: (error: ServiceError | null, response?: EchoResponse) => void,
  ): void;
  count(request: EchoRequest, metadata?: Metadata): ClientReadableStream<EchoResponse>;
}
const EchoClientCtor = makeGenericClientConstructor(EchoService, 'Echo') as unknown as new (
  address: string,
  creds: ReturnType<typeof credentials.createInsecure>,
) => EchoClient;

/** Handlers that answer what the request asks for; `say` also reports the traceparent it runs under. */
function echoImplementation(onSay?: () => Promise<void>) {
  return {
    say(call: ServerUnaryCall<EchoRequest, EchoResponse>, callback: sendUnaryData<EchoResponse>) {
      const request = call.request;
      if (request.throw) throw new Error('handler bug');
      if (request.fail !== undefined) {
        callback({ code: request.fail, details: 'refused' });
        return;
      }
      const traceparent = currentTraceparent();
      // The span context must survive an await inside the handler.
      void (onSay?.() ?? Promise.resolve()).then(() => callback(null, { text: request.text, traceparent }));
    },
    count(call: ServerWritableStream<EchoRequest, EchoResponse>) {
      const request = call.request;
      for (let i = 0; i < (request.count ?? 0); i++) call.write({ text: `${request.text}-${i}` });
      if (request.hang) return; // never ends: the client cancels
      if (request.fail !== undefined) call.emit('error', { code: request.fail, details: 'stream refused' });
      else call.end();
    },
  };
}

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function serve(metrics: Metrics, tracing?: Tracing, onSay?: () => Promise<void>): Promise<EchoClient> {
  const server = new Server();
  server.addService(
    EchoService,
    instrumentGrpc(EchoService, echoImplementation(onSay), metrics, tracing ? { tracer: tracing.tracer } : {}),
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (error, p) =>
      error ? reject(error) : resolve(p),
    ),
  );
  cleanups.push(() => new Promise<void>((resolve) => server.tryShutdown(() => resolve())));
  const client = new EchoClientCtor(`127.0.0.1:${port}`, credentials.createInsecure());
  cleanups.push(() => client.close());
  return client;
}

function say(
  client: EchoClient,
  request: EchoRequest,
  metadata = new Metadata(),
): Promise<{ error: ServiceError | null; response?: EchoResponse }> {
  return new Promise((resolve) => client.say(request, metadata, (error, response) => resolve({ error, response })));
}

function drain(stream: ClientReadableStream<EchoResponse>): Promise<{ items: EchoResponse[]; code: number }> {
  const items: EchoResponse[] = [];
  return new Promise((resolve) => {
    stream.on('data', (item: EchoResponse) => items.push(item));
    stream.on('error', (error: ServiceError) => resolve({ items, code: error.code }));
    stream.on('status', (s: { code: number }) => {
      if (s.code === status.OK) resolve({ items, code: s.code });
    });
  });
}

async function callCounts(metrics: Metrics): Promise<Record<string, number>> {
  const { values } = await metrics.grpcCalls.get();
  return Object.fromEntries(values.map((v) => [`${String(v.labels.method)} ${String(v.labels.code)}`, v.value]));
}

describe('instrumentGrpc over a real gRPC connection', () => {
  it('counts unary calls by method and status code, and times them', async () => {
    const metrics = createMetrics({ processMetrics: false });
    const client = await serve(metrics);

    expect((await say(client, { text: 'a' })).response?.text).toBe('a');
    expect((await say(client, { text: 'b' })).response?.text).toBe('b');
    expect((await say(client, { text: 'c', fail: status.INVALID_ARGUMENT })).error?.code).toBe(status.INVALID_ARGUMENT);
    expect((await say(client, { text: 'd', fail: status.NOT_FOUND })).error?.code).toBe(status.NOT_FOUND);
    expect((await say(client, { text: 'e', throw: true })).error?.code).toBe(status.UNKNOWN);

    expect(await callCounts(metrics)).toEqual({
      'test.v1.Echo/Say OK': 2,
      'test.v1.Echo/Say INVALID_ARGUMENT': 1,
      'test.v1.Echo/Say NOT_FOUND': 1,
      'test.v1.Echo/Say UNKNOWN': 1,
    });
    const durations = await metrics.grpcCallDuration.get();
    const count = durations.values.find((v) => v.metricName === 'grpc_server_call_duration_seconds_count');
    expect(count?.value).toBe(5);
    expect(count?.labels.method).toBe('test.v1.Echo/Say');
  });

  it('counts server-streaming calls when they end, fail or are cancelled by the client', async () => {
    const metrics = createMetrics({ processMetrics: false });
    const client = await serve(metrics);

    const ok = await drain(client.count({ text: 'n', count: 3 }));
    expect([ok.items.map((i) => i.text), ok.code]).toEqual([['n-0', 'n-1', 'n-2'], status.OK]);
    const failed = await drain(client.count({ text: 'f', count: 1, fail: status.RESOURCE_EXHAUSTED }));
    expect(failed.code).toBe(status.RESOURCE_EXHAUSTED);

    const hanging = client.count({ text: 'h', count: 1, hang: true });
    hanging.on('error', () => undefined); // the client's own CANCELLED
    await new Promise<void>((resolve) => hanging.once('data', () => resolve()));
    hanging.cancel();

    await vi.waitFor(async () => {
      expect(await callCounts(metrics)).toEqual({
        'test.v1.Echo/Count OK': 1,
        'test.v1.Echo/Count RESOURCE_EXHAUSTED': 1,
        'test.v1.Echo/Count CANCELLED': 1,
      });
    });
  });

  it('wraps only the methods of the definition that the implementation has', () => {
    const metrics = createMetrics({ processMetrics: false });
    const { say } = echoImplementation();
    const implementation = { say, notInDefinition: say };
    const wrapped = instrumentGrpc(EchoService, implementation, metrics);
    expect(wrapped.notInDefinition).toBe(say);
    expect(wrapped).not.toHaveProperty('count');
    expect(wrapped.say).not.toBe(say);
  });

  it('names status codes', () => {
    expect(grpcStatusName(status.OK)).toBe('OK');
    expect(grpcStatusName(status.DEADLINE_EXCEEDED)).toBe('DEADLINE_EXCEEDED');
    expect(grpcStatusName(99)).toBe('99');
  });
});

describe('instrumentGrpc with a tracer', () => {
  it('starts a server span under the caller traceparent, active in the handler, that an attempt span can continue', async () => {
    const exporter = new InMemorySpanExporter();
    const tracing = initTracing({ serviceName: 'grpc-test', exporter, exportDelayMs: 50 });
    cleanups.push(() => tracing.shutdown());
    const metrics = createMetrics({ processMetrics: false });
    const client = await serve(metrics, tracing, () => new Promise((resolve) => setTimeout(resolve, 5)));

    const callerTraceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const callerSpanId = '00f067aa0ba902b7';
    const metadata = new Metadata();
    metadata.set('traceparent', `00-${callerTraceId}-${callerSpanId}-01`);
    const { response } = await say(client, { text: 'traced' }, metadata);
    const stored = response?.traceparent ?? null;
    expect(stored).toMatch(new RegExp(`^00-${callerTraceId}-[0-9a-f]{16}-01$`));

    // Later, maybe in another process: the attempt continues the trace from the stored traceparent.
    await withLinkedSpan(
      tracing.tracer,
      'delivery.attempt',
      stored,
      { 'app_inbox.delivery.id': 'd-1' },
      () => undefined,
      {
        kind: SpanKind.CLIENT,
      },
    );
    const refused = await say(client, { text: 'x', fail: status.INTERNAL });
    expect(refused.error?.code).toBe(status.INTERNAL);
    await tracing.forceFlush();

    const spans = exporter.getFinishedSpans();
    const server = spans.find((s) => s.name === 'test.v1.Echo/Say' && s.spanContext().traceId === callerTraceId);
    const attempt = spans.find((s) => s.name === 'delivery.attempt');
    expect(server?.kind).toBe(SpanKind.SERVER);
    expect(server?.parentSpanContext?.spanId).toBe(callerSpanId);
    expect(server?.attributes).toMatchObject({
      'rpc.system.name': 'grpc',
      'rpc.method': 'test.v1.Echo/Say',
      'rpc.status_code': 'OK',
    });
    expect(server?.status.code).toBe(SpanStatusCode.UNSET);
    expect(stored?.split('-')[2]).toBe(server?.spanContext().spanId);
    expect(attempt?.spanContext().traceId).toBe(callerTraceId);
    expect(attempt?.parentSpanContext?.spanId).toBe(server?.spanContext().spanId);

    const failed = spans.find((s) => s.name === 'test.v1.Echo/Say' && s.attributes['rpc.status_code'] === 'INTERNAL');
    expect(failed?.status).toEqual({ code: SpanStatusCode.ERROR, message: 'INTERNAL' });
    // A call without a traceparent starts a trace of its own.
    expect(failed?.spanContext().traceId).not.toBe(callerTraceId);
    expect(failed?.parentSpanContext).toBeUndefined();
  });
});
