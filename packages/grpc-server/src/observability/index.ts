/**
 * Observability of the server: structured logs with secrets censored, Prometheus metrics and their HTTP
 * endpoint, gRPC call instrumentation, and OpenTelemetry traces carried from the RPC to each attempt.
 * @see issue 8
 */
export { endpointHost, statusClass } from './attempt.js';
export type { AttemptEvent, AttemptOutcomeLabel, StatusClass } from './attempt.js';
export {
  LOG_LEVELS,
  HEADER_MAP_KEYS,
  LoggerOptionError,
  PUBLIC_HEADER_NAMES,
  REDACTED,
  SECRET_KEYS,
  URL_KEYS,
  attemptLogFields,
  attemptLogLevel,
  censorValue,
  createLogger,
  logAttempt,
} from './logger.js';
export type { AttemptLogFields, LogLevel, LoggerOptions } from './logger.js';
export { ATTEMPT_DURATION_BUCKETS, CIRCUIT_STATE_VALUES, GRPC_DURATION_BUCKETS, createMetrics } from './metrics.js';
export type { CircuitStateLabel, Metrics, MetricsOptions, QueueStats } from './metrics.js';
export {
  DEFAULT_METRICS_ADDRESS,
  MetricsServerOptionError,
  parseListenAddress,
  startMetricsServer,
} from './metrics-server.js';
export type { MetricsServerOptions, RunningMetricsServer } from './metrics-server.js';
export { grpcStatusName, instrumentGrpc } from './grpc.js';
export type { InstrumentGrpcOptions } from './grpc.js';
export {
  SPAN_ATTRIBUTES,
  TracingOptionError,
  annotateAttemptSpan,
  contextFromTraceparent,
  currentTraceparent,
  extractTraceContext,
  initTracing,
  resolveTracesUrl,
  withLinkedSpan,
} from './tracing.js';
export type { LinkedSpanOptions, Tracing, TracingOptions } from './tracing.js';
