/**
 * @app-inbox/grpc-server — the gRPC delivery server: start it in-process, read its configuration, and call
 * it with the generated clients (`v1`).
 */
export const VERSION = '0.1.0';

export * as v1 from './api/proto.js';
export { startServer, engineOptionsFromConfig, describeStore, PROTO_DIR, SERVICE_NAMES } from './server.js';
export type { RunningServer, StartOptions } from './server.js';
export {
  loadConfig,
  createCommand,
  configMarkdownTable,
  ConfigError,
  HelpShown,
  DEFAULT_CONFIG,
  OPTION_SPECS,
} from './config.js';
export type { LogLevel, OptionSpec, ServerConfig } from './config.js';
export { API_ERROR_CODES, ApiError, ERROR_DOMAIN, GRPC_STATUS_BY_CODE, decodeStatusDetails } from './api/errors.js';
export type { ApiErrorCode, DecodedStatusDetails, FieldViolation } from './api/errors.js';
export { createApi } from './api/services.js';
export type { Api, ApiDependencies } from './api/services.js';
export { MAX_MESSAGES_PER_PUBLISH } from './api/requests.js';
// For internal callers: TLS / mutual TLS / bearer-token credentials of the generated clients. @see SECURITY.md
export { clientCredentials, generateKeyLine } from './security/index.js';
export type { ClientAccess, ClientAccessOptions } from './security/index.js';
// Observability (issue 8): the logger the server uses (secrets censored), its metrics' type. @see OPERATIONS.md
export { createLogger, logAttempt } from './observability/index.js';
export type { AttemptEvent, Metrics, QueueStats } from './observability/index.js';
