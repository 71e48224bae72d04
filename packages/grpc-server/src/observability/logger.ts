/**
 * Structured JSON logs (pino) with secrets redacted by configuration: every logger made here, and every
 * child of it, censors the fields named in {@link SECRET_KEYS} and the values of {@link HEADER_MAP_KEYS} maps
 * whatever the call site passes, so a careless `log.info({ webhook })` cannot leak a Basic auth password, a signing
 * secret or a header's API key.
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
 * and errors' own properties. Matched exactly (hence both spellings of the HTTP header names). See also
 * {@link HEADER_MAP_KEYS}.
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
 * Header maps (a webhook's own `headers`, a request's headers): logged with their names, and every value
 * {@link REDACTED} but those of {@link PUBLIC_HEADER_NAMES}. A webhook's own header is most often an API key under a
 * name of the customer's choosing (`x-api-key`, `x-acme-token`), which no list of secret names could foresee, so the
 * list is of the names known to be harmless instead; the names alone still say what was configured or sent.
 */
export const HEADER_MAP_KEYS: readonly string[] = ['headers'];

/**
 * Headers whose value is never a secret, shown in a {@link HEADER_MAP_KEYS} map (lower case, matched in any case):
 * the ones the service sends besides `authorization` and `webhook-signature`, and common answer headers. A webhook's
 * own headers can never use these names but `accept`, `date`, `location` and `retry-after`, which it rarely would.
 */
export const PUBLIC_HEADER_NAMES: readonly string[] = [
  'content-type',
  'content-length',
  'user-agent',
  'webhook-id',
  'webhook-timestamp',
  'app-inbox-contact',
  'accept',
  'date',
  'location',
  'retry-after',
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
const HEADER_MAP_KEY_SET = new Set(HEADER_MAP_KEYS);
const PUBLIC_HEADER_SET = new Set(PUBLIC_HEADER_NAMES);
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
  if (HEADER_MAP_KEY_SET.has(key)) return censorHeaderMap(value);
  if (URL_KEY_SET.has(key) && typeof value === 'string') return urlOrigin(value);
  return censorValue(value, depth + 1);
}

/**
 * A header map with its names kept and each value {@link REDACTED} but a public one's (see
 * {@link PUBLIC_HEADER_NAMES}); anything else under a header map's key is redacted whole. Copy on write, as
 * {@link censorValue}: a map of public headers only is returned as it is.
 */
function censorHeaderMap(value: unknown): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || ArrayBuffer.isView(value)) {
    return REDACTED;
  }
  const record = value as Record<string, unknown>;
  let copy: Record<string, unknown> | null = null;
  for (const name of Object.keys(record)) {
    if (record[name] === undefined || PUBLIC_HEADER_SET.has(name.toLowerCase())) continue;
    (copy ??= { ...record })[name] = REDACTED;
  }
  return copy ?? value;
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
