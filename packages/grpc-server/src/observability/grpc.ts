/**
 * Metrics (and, given a tracer, a server span) for every call of a grpc-js service implementation, by
 * wrapping its handlers: the handlers themselves stay free of observability code.
 */
import {
  status as Status,
  type Metadata,
  type ServerErrorResponse,
  type StatusObject,
  type ServiceDefinition,
  type UntypedHandleCall,
  type UntypedServiceImplementation,
  type sendUnaryData,
} from '@grpc/grpc-js';
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  context,
  trace,
  type Span,
  type TextMapGetter,
  type Tracer,
} from '@opentelemetry/api';
import {
  ATTR_RPC_METHOD,
  ATTR_RPC_STATUS_CODE,
  ATTR_RPC_SYSTEM_NAME,
  RPC_SYSTEM_NAME_VALUE_GRPC,
} from '@opentelemetry/semantic-conventions';
import type { Metrics } from './metrics.js';
import { extractTraceContext } from './tracing.js';

export interface InstrumentGrpcOptions {
  /**
   * Start a SERVER span per call, child of the caller's W3C `traceparent` metadata when it sent one, and
   * active while the handler runs (so `currentTraceparent()` inside it names this span). Default none.
   */
  tracer?: Tracer;
  /** Monotonic clock for durations (milliseconds). Default `performance.now`. */
  now?: () => number;
}

/**
 * Codes that mean the server failed (OpenTelemetry's rule for gRPC server spans); the others, such as
 * INVALID_ARGUMENT or NOT_FOUND, are the caller's mistake and do not mark the span as an error.
 */
const SERVER_ERROR_CODES: ReadonlySet<number> = new Set([
  Status.UNKNOWN,
  Status.DEADLINE_EXCEEDED,
  Status.UNIMPLEMENTED,
  Status.INTERNAL,
  Status.UNAVAILABLE,
  Status.DATA_LOSS,
]);

/** Status name of a gRPC code (`OK`, `INVALID_ARGUMENT`, ...); the number as text for a code outside the enum. */
export function grpcStatusName(code: number): string {
  return (Status as unknown as Record<number, string | undefined>)[code] ?? String(code);
}

/** The code grpc-js sends for an error handed to a callback or emitted on a stream (see its `serverErrorToStatus`). */
function codeOf(error: ServerErrorResponse | Partial<StatusObject>): number {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'number' && Number.isInteger(code) ? code : Status.UNKNOWN;
}

const metadataGetter: TextMapGetter<Metadata> = {
  keys: (metadata) => Object.keys(metadata.getMap()),
  get: (metadata, key) => {
    const values = metadata.get(key).filter((v): v is string => typeof v === 'string');
    return values.length > 0 ? values : undefined;
  },
};

/** The part of a grpc-js server call the wrapper uses (every call kind has it). */
interface CallLike {
  metadata: Metadata;
  on(event: string, listener: (...args: never[]) => void): unknown;
  once(event: string, listener: (...args: never[]) => void): unknown;
}

/**
 * Returns a copy of `implementation` whose handlers count each finished call in `grpc_server_calls_total`
 * {method, code} and time it in `grpc_server_call_duration_seconds` {method}; `method` is the full name
 * from `definition` (`app_inbox.v1.MessageService/PublishMessages`). Works for every call kind: unary and
 * client-streaming handlers are `(call, callback)`, server-streaming and bidi ones `(call)`. A call is
 * counted once, when its status is decided: the callback's error or success, the stream's `error` or
 * end, or CANCELLED when the client goes away first.
 *
 * Use: `server.addService(def, instrumentGrpc(def, impl, metrics, { tracer }))`.
 */
export function instrumentGrpc<S extends UntypedServiceImplementation>(
  definition: ServiceDefinition,
  implementation: S,
  metrics: Pick<Metrics, 'recordGrpcCall'>,
  options: InstrumentGrpcOptions = {},
): S {
  const now = options.now ?? (() => performance.now());
  const wrapped: UntypedServiceImplementation = { ...implementation };
  for (const [key, method] of Object.entries(definition)) {
    const handler = implementation[key] as UntypedHandleCall | undefined;
    if (typeof handler !== 'function') continue;
    const name = method.path.replace(/^\//, '');

    /** Starts the bookkeeping of one call; `settle` records it once; `run` calls the handler in the span's context. */
    const begin = (call: CallLike) => {
      const started = now();
      let span: Span | null = null;
      let run = (fn: () => void): void => fn();
      if (options.tracer) {
        const parent = extractTraceContext(call.metadata, metadataGetter, ROOT_CONTEXT);
        const callSpan = options.tracer.startSpan(
          name,
          {
            kind: SpanKind.SERVER,
            attributes: { [ATTR_RPC_SYSTEM_NAME]: RPC_SYSTEM_NAME_VALUE_GRPC, [ATTR_RPC_METHOD]: name },
          },
          parent,
        );
        const active = trace.setSpan(parent, callSpan);
        span = callSpan;
        run = (fn) => context.with(active, fn);
      }
      let settled = false;
      const settle = (code: number): void => {
        if (settled) return;
        settled = true;
        const statusName = grpcStatusName(code);
        metrics.recordGrpcCall(name, statusName, (now() - started) / 1000);
        if (span) {
          span.setAttribute(ATTR_RPC_STATUS_CODE, statusName);
          if (SERVER_ERROR_CODES.has(code)) span.setStatus({ code: SpanStatusCode.ERROR, message: statusName });
          span.end();
        }
      };
      call.once('cancelled', () => settle(Status.CANCELLED));
      return { settle, run };
    };

    if (method.responseStream) {
      const streamHandler = handler as (call: CallLike) => void;
      wrapped[key] = ((call: CallLike) => {
        const { settle, run } = begin(call);
        let code: number = Status.OK;
        // grpc-js turns an emitted error into the call's status and ends the stream; 'finish' follows.
        call.on('error', (error: ServerErrorResponse) => {
          code = codeOf(error);
        });
        call.once('finish', () => settle(code));
        // A destroyed stream closes without finishing.
        call.once('close', () => settle(code));
        try {
          run(() => streamHandler.call(implementation, call));
        } catch (error) {
          settle(Status.UNKNOWN); // grpc-js answers UNKNOWN to a handler that throws
          throw error;
        }
      }) as UntypedHandleCall;
    } else {
      const callbackHandler = handler as (call: CallLike, callback: sendUnaryData<unknown>) => void;
      wrapped[key] = ((call: CallLike, callback: sendUnaryData<unknown>) => {
        const { settle, run } = begin(call);
        const counted: sendUnaryData<unknown> = (error, value, trailer, flags) => {
          settle(error ? codeOf(error) : Status.OK);
          callback(error, value, trailer, flags);
        };
        try {
          run(() => callbackHandler.call(implementation, call, counted));
        } catch (error) {
          settle(Status.UNKNOWN);
          throw error;
        }
      }) as UntypedHandleCall;
    }
  }
  return wrapped as S;
}
