/**
 * Structured JSON logs (pino) with secrets redacted by configuration: every logger made here, and every
 * child of it, censors the fields named in {@link SECRET_KEYS} whatever the call site passes, so a
 * careless `log.info({ webhook })` cannot leak a Basic auth password or a signing secret.
 * @see SPEC §2 (a password is a secret: never logged)
 */
import { pino, type DestinationStream, type Level, type Logger, type LoggerOptions as PinoOptions } from 'pino';
import { endpointHost, type AttemptEvent, type AttemptOutcomeLabel } from './attempt.js';

/** Log levels, most to least severe; `silent` logs nothing. */
export type LogLevel = Level | 'silent';

export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** What replaces a redacted value. */
export const REDACTED = '[redacted]';

/**
 * Field names whose value is a secret wherever they appear, at any depth, in log objects, child bindings
 * and errors' own properties. Matched exactly (hence both spellings of the HTTP header names).
 */
export const SECRET_KEYS: readonly string[] = [
  'password',
  'signingSecret',
  'signing_secret',
  // A rotation's replaced signing secret (WebhookRecord), still valid for its overlap.
  'previousSigningSecret',
  'secret',
  'token',
  'accessToken',
  'refreshToken',
  'apiKey',
  'authorization',
  'Authorization',
  'proxy-authorization',
  'cookie',
  'Cookie',
  // A PostgreSQL error's `detail` may echo a row ("Failing row contains (...)": a message's content, a webhook's
  // configuration); its message, code, constraint and table say what went wrong.
  'detail',
];

/**
 * URL fields: logged as their origin only (`https://host:port`), because the path, query and user info of
 * a webhook URL may carry a token or a password.
 */
export const URL_KEYS: readonly string[] = ['url', 'webhookUrl'];

/** Objects nested deeper than this are replaced by {@link DEPTH_LIMIT_MARK} rather than walked. */
const MAX_DEPTH = 10;
const DEPTH_LIMIT_MARK = '[depth limit]';

const SECRET_KEY_SET = new Set(SECRET_KEYS);
const URL_KEY_SET = new Set(URL_KEYS);

/** The origin of a URL, or {@link REDACTED} when the value is not a parsable URL. */
function urlOrigin(value: string): string {
  try {
    const origin = new URL(value).origin;
    return origin === 'null' ? REDACTED : origin;
  } catch {
    return REDACTED;
  }
}

function censorEntry(key: string, value: unknown, depth: number): unknown {
  if (value === undefined) return value;
  if (SECRET_KEY_SET.has(key)) return REDACTED;
  if (URL_KEY_SET.has(key) && typeof value === 'string') return urlOrigin(value);
  return censorValue(value, depth + 1);
}

/**
 * A copy of `value` with every {@link SECRET_KEYS} field replaced by {@link REDACTED} and every
 * {@link URL_KEYS} string reduced to its origin, at any depth. Copy on write: a value without secrets is
 * returned as is (no allocation), which keeps the per-line cost near pino's own. Errors become pino's
 * serialized form (type, message with causes, stack, own properties) so their own properties are checked
 * too.
 */
export function censorValue(value: unknown, depth = 0): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (depth > MAX_DEPTH) return DEPTH_LIMIT_MARK;
  if (value instanceof Error) return censorValue({ ...pino.stdSerializers.err(value) }, depth);
  if (Array.isArray(value)) {
    let copy: unknown[] | null = null;
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      const censored = censorValue(item, depth + 1);
      if (censored !== item) (copy ??= value.slice())[i] = censored;
    }
    return copy ?? value;
  }
  // Buffers, dates and objects that choose their JSON form are written by their own toJSON.
  if (ArrayBuffer.isView(value) || typeof (value as { toJSON?: unknown }).toJSON === 'function') return value;
  const record = value as Record<string, unknown>;
  let copy: Record<string, unknown> | null = null;
  for (const key of Object.keys(record)) {
    const item = record[key];
    const censored = censorEntry(key, item, depth);
    if (censored !== item) (copy ??= { ...record })[key] = censored;
  }
  return copy ?? value;
}

export interface LoggerOptions {
  /** Least severe level written. Default `info`. */
  level?: LogLevel;
  /** Where the JSON lines go. Default standard output, written synchronously (nothing lost on a crash). */
  destination?: DestinationStream;
  /** Fields added to every line, e.g. `{ service: 'app-inbox-webhooks' }`. Default pino's (pid and hostname). */
  base?: Record<string, unknown>;
  /**
   * More fields to censor, as exact pino `redact` paths (e.g. `request.body.pin`), on top of the
   * {@link SECRET_KEYS} censored everywhere. Default none.
   */
  extraRedactPaths?: readonly string[];
}

/** Error thrown for an invalid logger option. */
export class LoggerOptionError extends Error {
  readonly code = 'INVALID_LOGGER_OPTION';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`logger option ${option}: ${message}`);
    this.name = 'LoggerOptionError';
  }
}

type ChildFn = Logger['child'];

/**
 * A pino logger writing one JSON object per line (ISO `time`, level names, errors under `err`) whose
 * secrets are censored by configuration: {@link SECRET_KEYS} and {@link URL_KEYS} at any depth of every
 * logged object, of every child's bindings and of errors, plus `extraRedactPaths`.
 *
 * Why not only pino's `redact` wildcard paths: measured here, each wildcard path costs about 1.5 µs per
 * line whether or not the field is present, so covering these keys at four depths took ~100 µs per line;
 * the key walk below costs under 1 µs. Exact `redact` paths are cheap and are still used for extras.
 * Not covered (say so in reviews): secrets inside the message string or printf-style arguments.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? 'info';
  if (!LOG_LEVELS.includes(level)) {
    throw new LoggerOptionError('level', `must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(level)}`);
  }
  const extra = options.extraRedactPaths ?? [];
  const pinoOptions: PinoOptions = {
    level,
    formatters: {
      // Level names rather than numbers: log pipelines and humans filter on "error", not 50.
      level: (label) => ({ level: label }),
      log: (object) => censorValue(object) as Record<string, unknown>,
    },
    // The log formatter already turned errors into censored plain objects; an error logged under `err`
    // without going through it (it always does) would still be censored here.
    serializers: { err: (value: unknown) => censorValue(value) },
    timestamp: pino.stdTimeFunctions.isoTime,
    ...(extra.length > 0 ? { redact: { paths: [...extra], censor: REDACTED } } : {}),
    ...(options.base ? { base: censorValue(options.base) as Record<string, unknown> } : {}),
  };
  // Standard output, written synchronously: each line is out when the call returns, nothing is left to flush at exit.
  // pino's default (asynchronous) destination flushes synchronously at exit, and when stdout is a pipe or socket
  // whose reader is gone (the parent that started the server was killed) that flush retried its failing write every
  // 100 ms, forever: the server never exited after SIGTERM. A synchronous write fails at once (EPIPE), after which
  // pino stops writing.
  const logger = pino(pinoOptions, options.destination ?? pino.destination({ dest: 1, sync: true }));
  // Child bindings bypass the log formatter (pino serializes them once, at child creation): censor them on
  // the way in. Children are created from their parent's prototype chain, so grandchildren inherit this.
  const child = logger.child;
  const censoredChild = function (
    this: Logger,
    bindings: Parameters<ChildFn>[0],
    childOptions?: Parameters<ChildFn>[1],
  ) {
    return child.call(this, censorValue(bindings) as Parameters<ChildFn>[0], childOptions);
  };
  Object.defineProperty(logger, 'child', { value: censoredChild, writable: true, configurable: true });
  return logger;
}

/** The fields of the one log line per delivery attempt (issue 8). */
export interface AttemptLogFields {
  deliveryId: string;
  accountId: string;
  /** `host[:port]` of the webhook URL: never the full URL (its path or query may hold a token). */
  endpointHost: string;
  attemptNo: number;
  outcome: AttemptOutcomeLabel;
  /** Present when the receiver answered. */
  statusCode?: number;
  /** Present when no answer came (`timeout`, `refused`, ...). */
  errorKind?: string;
  durationMs: number;
}

/** The per-attempt log fields of an attempt; the URL is reduced to its host. */
export function attemptLogFields(event: AttemptEvent): AttemptLogFields {
  return {
    deliveryId: event.deliveryId,
    accountId: event.accountId,
    endpointHost: endpointHost(event.url),
    attemptNo: event.attemptNo,
    outcome: event.outcome,
    ...(event.statusCode !== null ? { statusCode: event.statusCode } : {}),
    ...(event.errorKind !== null ? { errorKind: event.errorKind } : {}),
    durationMs: Math.round(event.durationMs),
  };
}

/** Level of the attempt line: `warn` when the delivery failed for good (needs a human), else `info`. */
export function attemptLogLevel(outcome: AttemptOutcomeLabel): 'info' | 'warn' {
  return outcome === 'failed' ? 'warn' : 'info';
}

/** Writes the one line per attempt: `{"msg":"delivery attempt", deliveryId, accountId, endpointHost, ...}`. */
export function logAttempt(logger: Logger, event: AttemptEvent): void {
  logger[attemptLogLevel(event.outcome)](attemptLogFields(event), 'delivery attempt');
}
