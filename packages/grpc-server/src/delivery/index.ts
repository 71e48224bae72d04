/** The delivery workers: scheduler (engine), per-endpoint limiter, and undici sender. */
export {
  createSender,
  errorCodeOf,
  SenderOptionError,
  TIMEOUT_CODE,
  ABORTED_CODE,
  INVALID_URL_CODE,
} from './sender.js';
export type { Sender, SenderOptions, AttemptOutcomeWithTiming } from './sender.js';
export { EndpointLimiter } from './limiter.js';
export { CircuitBreaker, CircuitOptionError, DEFAULT_CIRCUIT_OPTIONS, resolveCircuitOptions } from './circuit.js';
export type { CircuitBreakerDeps, CircuitOptions, CircuitStateListener, CircuitView } from './circuit.js';
export { DeliveryEngine, EngineOptionError, NO_ENDPOINT_HEALTH, resolveEngineOptions } from './engine.js';
export type {
  DeliveryEngineDeps,
  EngineActivity,
  EngineOptions,
  EndpointAttemptEvent,
  EndpointHealth,
} from './engine.js';
