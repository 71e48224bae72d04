/**
 * The server's options: one table ({@link OPTION_SPECS}) from which the command-line flags, the environment
 * variables, the validation and the README's configuration table (CONFIG.md) are all derived, so they cannot
 * drift apart. Precedence: flag, then environment variable, then default. Validated once at start; a bad
 * value stops the server with a message naming the option, where it came from and its bound.
 * @see CONVENTIONS §7
 */
import { Command, CommanderError } from 'commander';
import { z } from 'zod';
import { DEFAULT_BACKOFF } from '@app-inbox/core';
import { MIN_TOKEN_LENGTH, TOKEN_NOT_ASCII, isAsciiToken } from './security/grpc-auth.js';
import { validateAddressPolicy } from './security/ssrf.js';
import { isKeywordValueConninfo, redactCredentials } from './security/redact.js';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface ServerConfig {
  /** `host:port` the gRPC server listens on; port 0 picks a free port. Default `127.0.0.1:50051`. */
  grpcAddress: string;
  /**
   * Where the durable store lives: a SQLite file (a path, or `sqlite:PATH`; its directory is created) or a
   * PostgreSQL URL (`postgres://…`). Default `./data/app-inbox.db` (relative to the working directory).
   */
  store: string;
  /**
   * PostgreSQL only: connections in this process's pool (connections); the LISTEN connection of
   * WatchDeliveries comes on top. Size the server's `max_connections` for N processes × (this + 1). Default 10.
   */
  pgPoolSize: number;
  /**
   * SQLite only: the page cache of the store's connection (MiB). Default 32: in the backlog benchmark (1,000,000
   * messages) 64 MiB cost 40 MiB more peak memory for no faster ingest or drain (bench/README.md).
   */
  sqliteCacheMib: number;
  /** Timeout of one webhook request, connection to last body byte (milliseconds). Default 15,000. @see SPEC §5 */
  requestTimeoutMs: number;
  /**
   * How long a claimed delivery belongs to this process before another may take it (milliseconds); must be
   * longer than `requestTimeoutMs` so a live attempt is never taken over. Default 45,000.
   */
  leaseMs: number;
  /** Longest idle wait of a delivery lane between two claims when nothing woke it (milliseconds). Default 200. */
  pollIntervalMs: number;
  /** Deliveries in flight at once on their first attempt, over all endpoints. Default 64. */
  firstLaneConcurrency: number;
  /** Deliveries in flight at once on a retry, over all endpoints. Default 32. */
  retryLaneConcurrency: number;
  /** Requests in flight at once to one endpoint (one account's webhook). Default 16. */
  perEndpointConcurrency: number;
  /**
   * An attempt running longer than this stops counting against its lane's concurrency (not its endpoint's):
   * endpoints that hang cannot hold every slot; a lane has at most 4 times its concurrency in flight (ms). Default 2,000.
   */
  slowAttemptMs: number;
  /**
   * Request bodies the attempts under way (and the retries claimed that wait for their endpoint) may hold in memory;
   * past it no new body is built (one at a time at most) and nothing is claimed until attempts end, a claim of
   * retries brings bodies only up to the room left (one attempt always goes) (MiB). Default 256.
   */
  maxBodyMemoryMib: number;
  /**
   * Message time-to-live given to a webhook upserted without `default_message_ttl_seconds`; it applies to
   * that account's messages published without their own TTL or expiry (seconds). Default 86,400 (1 day).
   */
  defaultMessageTtlSeconds: number;
  /**
   * How long a webhook's replaced signing secret keeps signing beside the new one (both signatures in
   * `webhook-signature`), so that its receiver can move to the new secret without refusing requests meanwhile; 0
   * replaces it at once (seconds). Default 86,400 (1 day).
   */
  signingSecretOverlapSeconds: number;
  /** Bytes of a webhook's response body read at most; the rest is discarded. Default 65,536. */
  maxResponseBytes: number;
  /** Base delay of the exponential backoff (milliseconds). Default 1,000. */
  backoffBaseMs: number;
  /** Longest delay between two attempts (milliseconds). Default 3,600,000 (1 hour). */
  backoffMaxMs: number;
  /** Attempts of a delivery at most, the first included; then it fails. Default 20. */
  maxAttempts: number;
  /** Longest time a delivery is retried, counted from its first attempt (milliseconds). Default 86,400,000 (1 day). */
  maxAgeMs: number;
  /** Log level of the JSON logs (pino). Default `info`. */
  logLevel: LogLevel;
  /**
   * `host:port` of the Prometheus metrics endpoint (`GET /metrics`, `GET /healthz`); port 0 picks a free one.
   * Empty: no metrics server. Default `127.0.0.1:9464` (loopback only). @see OPERATIONS.md
   */
  metricsAddress: string;
  /**
   * OTLP/HTTP endpoint traces are exported to (`<endpoint>/v1/traces`), e.g. `http://collector:4318`. Empty:
   * the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, and with neither,
   * tracing is off. Default empty. @see OPERATIONS.md
   */
  otlpEndpoint: string;
  /** How long a graceful shutdown waits for in-flight deliveries before returning them to the queue (milliseconds). Default 10,000. */
  shutdownDeadlineMs: number;
  /** Interval of the sweeper that deletes expired messages and old finished deliveries (milliseconds). Default 60,000. */
  sweepIntervalMs: number;
  /**
   * Interval of the readiness probe of the store (milliseconds; a probe not answered within it fails): while the
   * store does not answer, the gRPC health service reports NOT_SERVING and `GET /readyz` 503. Default 5,000.
   * @see OPERATIONS.md
   */
  storeProbeIntervalMs: number;
  /**
   * Whether the sweeper sends a contact its list again once a message of the list it was sent expired, so that the
   * receiver (which replaces its copy with each list) drops it within a sweep interval. Default true.
   */
  refreshOnExpiry: boolean;
  /** How long finished deliveries (delivered, failed, superseded) are kept for inspection and replay (milliseconds). Default 604,800,000 (7 days). */
  terminalRetentionMs: number;
  /** Largest gRPC request accepted (bytes); a PublishMessages of 10,000 messages needs several MiB. Default 67,108,864 (64 MiB). */
  maxRequestBytes: number;
  /**
   * WatchDeliveries streams open at once (count); one more is RESOURCE_EXHAUSTED. Every stream is told every outcome
   * (and filters it), so each one costs work per delivery. Default 1,000.
   */
  maxWatchStreams: number;
  /**
   * HTTP/2 receive window of each gRPC connection and stream (bytes): how much a client may send before the
   * server acknowledges it. Node's default of 64 KiB made large PublishMessages calls wait on the event loop.
   * Default 4,194,304 (4 MiB). @see src/api/receive-window.ts
   */
  grpcReceiveWindowBytes: number;
  /**
   * Also allow webhook URLs on private networks (RFC 1918, unique local fc00::/7, CGNAT 100.64.0.0/10).
   * Loopback, link-local, cloud metadata and reserved addresses stay refused. Default false. @see SECURITY.md
   */
  webhookAllowPrivate: boolean;
  /**
   * Webhook destinations allowed whatever their address: IPs (`127.0.0.1`), CIDR blocks (`10.1.0.0/16`) or
   * exact host names. Default empty: only public addresses (secure by default; tests and the local demo set
   * `127.0.0.1`). @see SECURITY.md
   */
  webhookAllowList: string[];
  /**
   * Keys sealing webhook secrets at rest, `id:base64key` comma list, the first one seals (env only:
   * `APP_INBOX_SECRET_KEYS`). Default empty: `secretKeyFile`, else `<SQLite dir>/secret.key` (created).
   */
  secretKeys: string;
  /** File of `id:base64key` lines (first seals). Default empty: see `secretKeys`. Required for PostgreSQL if no keys. */
  secretKeyFile: string;
  /** PEM certificate chain of the gRPC server; with `tlsKeyFile` the API is served over TLS. Default empty (plaintext). */
  tlsCertFile: string;
  /** PEM private key of `tlsCertFile`. Default empty. */
  tlsKeyFile: string;
  /** PEM CA bundle client certificates must chain to (mutual TLS). Default empty (no client certificate asked). */
  tlsClientCaFile: string;
  /** Bearer tokens accepted on every call but health (env only: `APP_INBOX_GRPC_TOKENS`). Default empty (no token). */
  grpcTokens: string[];
  /** File of bearer tokens, one per line. Default empty. */
  grpcTokenFile: string;
  /** An endpoint failing (no 2xx) without a break for this long is paused (milliseconds). Default 300,000 (5 min). */
  circuitOpenAfterMs: number;
  /** ... and for at least this many attempts. Default 5. */
  circuitMinFailures: number;
  /** First wait before a paused endpoint gets one probe delivery; doubles after each failed probe (milliseconds). Default 30,000. */
  circuitProbeIntervalMs: number;
  /** Longest wait between two probes (milliseconds). Default 300,000 (5 min). */
  circuitProbeMaxIntervalMs: number;
}

/** The defaults of every option. @see ServerConfig for units */
export const DEFAULT_CONFIG: Readonly<ServerConfig> = Object.freeze({
  grpcAddress: '127.0.0.1:50051',
  store: './data/app-inbox.db',
  pgPoolSize: 10,
  sqliteCacheMib: 32,
  requestTimeoutMs: 15_000,
  leaseMs: 45_000,
  pollIntervalMs: 200,
  firstLaneConcurrency: 64,
  retryLaneConcurrency: 32,
  perEndpointConcurrency: 16,
  slowAttemptMs: 2_000,
  maxBodyMemoryMib: 256,
  defaultMessageTtlSeconds: 86_400,
  signingSecretOverlapSeconds: 86_400,
  maxResponseBytes: 65_536,
  // The retry schedule is the core's (SPEC §5); see the README for the delays it gives.
  backoffBaseMs: DEFAULT_BACKOFF.baseDelayMs,
  backoffMaxMs: DEFAULT_BACKOFF.maxDelayMs,
  maxAttempts: DEFAULT_BACKOFF.maxAttempts,
  maxAgeMs: DEFAULT_BACKOFF.maxAgeMs,
  logLevel: 'info',
  metricsAddress: '127.0.0.1:9464',
  otlpEndpoint: '',
  shutdownDeadlineMs: 10_000,
  sweepIntervalMs: 60_000,
  storeProbeIntervalMs: 5_000,
  refreshOnExpiry: true,
  terminalRetentionMs: 604_800_000,
  maxRequestBytes: 64 * 1024 * 1024,
  maxWatchStreams: 1_000,
  grpcReceiveWindowBytes: 4 * 1024 * 1024,
  // Secure by default (issue 7): no private destination, no key or token on a command line.
  webhookAllowPrivate: false,
  webhookAllowList: Object.freeze([]) as unknown as string[],
  secretKeys: '',
  secretKeyFile: '',
  tlsCertFile: '',
  tlsKeyFile: '',
  tlsClientCaFile: '',
  grpcTokens: Object.freeze([]) as unknown as string[],
  grpcTokenFile: '',
  circuitOpenAfterMs: 300_000,
  circuitMinFailures: 5,
  circuitProbeIntervalMs: 30_000,
  circuitProbeMaxIntervalMs: 300_000,
});

/** One option: its flag, environment variables, documentation and schema. */
export interface OptionSpec {
  key: keyof ServerConfig;
  /** Long flag, e.g. `--request-timeout-ms`. */
  flag: string;
  /** Environment variables, first one wins. */
  env: readonly string[];
  /** Unit shown in the docs (`ms`, `s`, `bytes`, `count`, or empty). */
  unit: string;
  description: string;
  /** What a valid value is, in words, for error messages and docs. */
  bound: string;
  schema: z.ZodType;
  /**
   * Secret material (keys, tokens): read from the environment only, never from a flag, since a command
   * line is visible to every local user (`ps`) and kept in shell history. Default false.
   */
  envOnly?: boolean;
  /** A switch: `--flag` alone means true (`--flag false` also works). Default false. */
  isSwitch?: boolean;
  /** How a refused value is shown in the error (default: as given); for values that may hold a password. */
  shown?: (raw: string) => string;
  /**
   * An empty flag value is refused (the option's "none" is leaving the flag out): `--grpc-token-file "$UNSET"`
   * must not quietly turn token checks off, nor `--tls-cert-file "$UNSET"` serve plaintext. Default false.
   */
  emptyFlagRefused?: boolean;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * An integer option: a number (the defaults) or plain decimal digits, blanks around them ignored. Not
 * `z.coerce.number()`: it took an empty value as 0 (`--terminal-retention-ms "$UNSET"` deleted every finished
 * delivery at the next sweep) and read `0x1388`, `1e1` or `0b11` as numbers. No `_` or `,` separators.
 */
function int(min: number, max: number): z.ZodType {
  return z
    .union([
      z.number(),
      z
        .string()
        .trim()
        .regex(/^-?\d+$/)
        .transform(Number),
    ])
    .pipe(z.number().int().min(min).max(max));
}

const fmt = (n: number): string => n.toLocaleString('en-US');
const intBound = (min: number, max: number): string => `an integer from ${fmt(min)} to ${fmt(max)}`;

function intOption(
  key: keyof ServerConfig,
  flag: string,
  unit: string,
  min: number,
  max: number,
  description: string,
): OptionSpec {
  return { key, flag, env: [envName(flag)], unit, description, bound: intBound(min, max), schema: int(min, max) };
}

function envName(flag: string): string {
  return `APP_INBOX_${flag.replace(/^--/, '').replaceAll('-', '_').toUpperCase()}`;
}

const DAY_MS = 86_400_000;

/** A boolean from a switch (true), a variable or a flag value (`true/false/1/0/yes/no`). */
const BOOLEAN = z.union([
  z.boolean(),
  z
    .string()
    .trim()
    .toLowerCase()
    .pipe(z.enum(['true', 'false', '1', '0', 'yes', 'no']))
    .transform((s) => s === 'true' || s === '1' || s === 'yes'),
]);

/** A comma-separated list (blank entries dropped), or a list as is. */
const LIST = z.union([
  z.array(z.string()),
  z.string().transform((s) =>
    s
      .split(',')
      .map((e) => e.trim())
      .filter((e) => e !== ''),
  ),
]);

/** A file path, or empty for none (the default; an empty flag value is refused, see `emptyFlagRefused`). */
const PATH_OR_EMPTY = z.string().trim();

function fileOption(key: keyof ServerConfig, flag: string, description: string): OptionSpec {
  return {
    key,
    flag,
    env: [envName(flag)],
    unit: '',
    description,
    bound: 'a file path (leave the option out for none)',
    schema: PATH_OR_EMPTY,
    emptyFlagRefused: true,
  };
}

/** host:port with a port of 0-65535; the host may be a name, IPv4, or a bracketed IPv6 address. */
const ADDRESS = /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

/** A SQLite path or `sqlite:PATH`, or a PostgreSQL URL (what `openStore` accepts). */
const STORE = /^(?:postgres(?:ql)?:\/\/.+|sqlite:.+|[^:]+)$/i;

/** Every option, in the order of the docs. */
export const OPTION_SPECS: readonly OptionSpec[] = [
  {
    key: 'grpcAddress',
    flag: '--grpc-address',
    env: ['APP_INBOX_GRPC_ADDRESS'],
    unit: '',
    description: 'host:port the gRPC server listens on; port 0 picks a free port.',
    bound: 'host:port with a port from 0 to 65,535',
    schema: z
      .string()
      .regex(ADDRESS)
      .refine((s) => Number(ADDRESS.exec(s)?.[1]) <= 65_535),
  },
  {
    key: 'store',
    flag: '--store',
    env: ['APP_INBOX_STORE', 'DATABASE_URL'],
    unit: '',
    description:
      'The durable store: a SQLite file (a path or `sqlite:PATH`; its directory is created) or a PostgreSQL URL (`postgres://user:pass@host:5432/db`).',
    bound: 'a file path, sqlite:PATH (not :memory:), or a postgres:// URL',
    schema: z
      .string()
      .regex(STORE)
      // A blank value (`--store ' '`) is no path: it would open a file named by the blanks.
      .refine((s) => s.trim() !== '' && !/^sqlite::memory:$/i.test(s.trim()))
      // `host=db user=app password=...` (libpq's other form of a DATABASE_URL) is no file path: it would open a
      // SQLite file named by it, the password in its name and in the logs.
      .refine((s) => !isKeywordValueConninfo(s)),
    shown: redactCredentials,
  },
  intOption(
    'pgPoolSize',
    '--pg-pool-size',
    'count',
    1,
    1_000,
    "PostgreSQL only: connections in this process's pool; the LISTEN connection comes on top (ignored for SQLite).",
  ),
  intOption(
    'sqliteCacheMib',
    '--sqlite-cache-mib',
    'MiB',
    1,
    65_536,
    "SQLite only: the store connection's page cache (ignored for PostgreSQL).",
  ),
  intOption('requestTimeoutMs', '--request-timeout-ms', 'ms', 100, 600_000, 'Timeout of one webhook request.'),
  intOption(
    'leaseMs',
    '--lease-ms',
    'ms',
    1_000,
    DAY_MS,
    'How long a claimed delivery belongs to this process; must exceed --request-timeout-ms.',
  ),
  intOption(
    'pollIntervalMs',
    '--poll-interval-ms',
    'ms',
    10,
    60_000,
    'Longest idle wait of a delivery lane between two claims (new work wakes it at once).',
  ),
  intOption(
    'firstLaneConcurrency',
    '--first-lane-concurrency',
    'count',
    1,
    10_000,
    'Deliveries in flight at once on their first attempt.',
  ),
  intOption(
    'retryLaneConcurrency',
    '--retry-lane-concurrency',
    'count',
    1,
    10_000,
    'Deliveries in flight at once on a retry.',
  ),
  intOption(
    'perEndpointConcurrency',
    '--per-endpoint-concurrency',
    'count',
    1,
    1_000,
    'Requests in flight at once to one webhook endpoint.',
  ),
  intOption(
    'slowAttemptMs',
    '--slow-attempt-ms',
    'ms',
    10,
    600_000,
    "An attempt running longer than this stops counting against its lane's concurrency (still against its endpoint's), so endpoints that hang cannot hold every slot; a lane has at most 4 times its concurrency in flight.",
  ),
  intOption(
    'maxBodyMemoryMib',
    '--max-body-memory-mib',
    'MiB',
    1,
    65_536,
    'Request bodies the attempts under way (and the retries claimed that wait for their endpoint) may hold in memory: past it no new body is built (one at a time at most) and nothing is claimed until attempts end, a claim of retries brings bodies only up to the room left; one attempt always goes, however large its body. A list of 1,000 messages of the largest size is near 100 MB.',
  ),
  intOption(
    'defaultMessageTtlSeconds',
    '--default-message-ttl-seconds',
    's',
    1,
    365 * 86_400,
    'Message TTL given to a webhook configured without one; applies to its messages published without a TTL or expiry.',
  ),
  intOption(
    'signingSecretOverlapSeconds',
    '--signing-secret-overlap-seconds',
    's',
    0,
    30 * 86_400,
    "How long a webhook's replaced signing secret keeps signing beside the new one (both signatures in webhook-signature), so its receiver can move to the new secret without refusing requests; 0 replaces it at once.",
  ),
  intOption(
    'maxResponseBytes',
    '--max-response-bytes',
    'bytes',
    0,
    64 * 1024 * 1024,
    "Bytes of a webhook's response body read at most.",
  ),
  intOption(
    'backoffBaseMs',
    '--backoff-base-ms',
    'ms',
    1,
    DAY_MS,
    'Base delay of the exponential backoff (with jitter).',
  ),
  intOption('backoffMaxMs', '--backoff-max-ms', 'ms', 1, 7 * DAY_MS, 'Longest delay between two attempts.'),
  intOption('maxAttempts', '--max-attempts', 'count', 1, 1_000, 'Attempts of a delivery at most (the first included).'),
  intOption(
    'maxAgeMs',
    '--max-age-ms',
    'ms',
    1_000,
    30 * DAY_MS,
    'Longest time a delivery is retried, from its first attempt; at least --backoff-base-ms.',
  ),
  {
    key: 'logLevel',
    flag: '--log-level',
    env: ['APP_INBOX_LOG_LEVEL'],
    unit: '',
    description: 'Level of the JSON logs on stdout.',
    bound: `one of ${LOG_LEVELS.join(', ')}`,
    schema: z.enum(LOG_LEVELS),
  },
  {
    key: 'metricsAddress',
    flag: '--metrics-address',
    env: ['APP_INBOX_METRICS_ADDRESS'],
    unit: '',
    description:
      'host:port of the Prometheus endpoint (`/metrics`, `/healthz`); port 0 picks a free port; `off` (or an empty flag value) runs no metrics server. See OPERATIONS.md.',
    bound: 'host:port with a port from 0 to 65,535, or off',
    schema: z
      .string()
      .trim()
      .transform((s) => (s.toLowerCase() === 'off' ? '' : s))
      .refine((s) => s === '' || (ADDRESS.test(s) && Number(ADDRESS.exec(s)?.[1]) <= 65_535)),
  },
  {
    key: 'otlpEndpoint',
    flag: '--otlp-endpoint',
    env: ['APP_INBOX_OTLP_ENDPOINT'],
    unit: '',
    description:
      'OTLP/HTTP collector traces are sent to (`<endpoint>/v1/traces`), e.g. `http://127.0.0.1:4318`. Empty: the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; with none of them tracing is off.',
    bound: 'an http(s) URL, or empty',
    schema: z
      .string()
      .trim()
      .refine((s) => s === '' || /^https?:\/\/[^\s/]+/i.test(s)),
    shown: redactCredentials,
  },
  intOption(
    'shutdownDeadlineMs',
    '--shutdown-deadline-ms',
    'ms',
    0,
    600_000,
    'On SIGTERM/SIGINT, the one deadline of the whole shutdown, counted from the signal: gRPC calls in progress and in-flight deliveries may finish until then (together, not one after the other); then the calls are cut and the deliveries still in flight are returned to the queue. The process exits at most about 3.5 s after it, even when the database stops answering (see OPERATIONS.md, Shutdown).',
  ),
  intOption(
    'sweepIntervalMs',
    '--sweep-interval-ms',
    'ms',
    100,
    DAY_MS,
    'Interval of the sweeper deleting expired messages and old finished deliveries.',
  ),
  intOption(
    'storeProbeIntervalMs',
    '--store-probe-interval-ms',
    'ms',
    100,
    300_000,
    'Interval of the readiness probe of the store; while it fails, gRPC health is NOT_SERVING and /readyz 503.',
  ),
  {
    key: 'refreshOnExpiry',
    flag: '--refresh-on-expiry',
    env: ['APP_INBOX_REFRESH_ON_EXPIRY'],
    unit: '',
    description:
      "Send a contact its list again when the sweeper deletes an expired message that a list the receiver may hold held (the newest it answered 2xx to, or one built after it), so that the receiver drops it within a sweep interval; false: an expired message stays at the receiver until the contact's next list.",
    bound: 'true or false',
    schema: BOOLEAN,
    isSwitch: true,
  },
  intOption(
    'terminalRetentionMs',
    '--terminal-retention-ms',
    'ms',
    0,
    365 * DAY_MS,
    'How long finished deliveries are kept for inspection and replay.',
  ),
  intOption(
    'maxRequestBytes',
    '--max-request-bytes',
    'bytes',
    1024 * 1024,
    1024 * 1024 * 1024,
    'Largest gRPC request accepted (a PublishMessages of 10,000 messages needs several MiB).',
  ),
  intOption(
    'maxWatchStreams',
    '--max-watch-streams',
    'count',
    1,
    100_000,
    'WatchDeliveries streams open at once; one more is refused with RESOURCE_EXHAUSTED (each stream is told every outcome).',
  ),
  intOption(
    'grpcReceiveWindowBytes',
    '--grpc-receive-window-bytes',
    'bytes',
    65_535,
    64 * 1024 * 1024,
    'HTTP/2 receive window of each gRPC connection and stream: how much a client may send before the server acknowledges it.',
  ),
  {
    key: 'webhookAllowPrivate',
    flag: '--webhook-allow-private',
    env: ['APP_INBOX_WEBHOOK_ALLOW_PRIVATE'],
    unit: '',
    description:
      'Also allow webhook URLs on private networks (RFC 1918, fc00::/7, CGNAT); loopback, link-local and cloud metadata stay refused. See SECURITY.md.',
    bound: 'true or false',
    schema: BOOLEAN,
    isSwitch: true,
  },
  {
    key: 'webhookAllowList',
    flag: '--webhook-allow-list',
    env: ['APP_INBOX_WEBHOOK_ALLOW_LIST'],
    unit: '',
    description:
      'Comma list of webhook destinations allowed whatever their address: IPs, CIDR blocks or exact host names. Empty: public addresses only. For a receiver on this machine: `--webhook-allow-list 127.0.0.1`.',
    bound: 'a comma list of IPs, CIDRs or host names',
    schema: LIST,
  },
  {
    key: 'secretKeys',
    flag: '--secret-keys',
    env: ['APP_INBOX_SECRET_KEYS'],
    unit: '',
    description:
      'Keys sealing webhook passwords, signing secrets and header values at rest (AES-256-GCM): `id:base64key` comma list, the first seals, all open (rotation). Empty: --secret-key-file, else for SQLite `<db dir>/secret.key` (created, mode 0600). Generate: `echo k1:$(openssl rand -base64 32)`.',
    bound: 'id:base64key entries',
    schema: z.string().trim(),
    envOnly: true,
  },
  fileOption(
    'secretKeyFile',
    '--secret-key-file',
    'File of `id:base64key` lines (first seals). PostgreSQL needs this or APP_INBOX_SECRET_KEYS (every process the same keys).',
  ),
  fileOption(
    'tlsCertFile',
    '--tls-cert-file',
    'PEM certificate chain of the gRPC server: with --tls-key-file the API is served over TLS (plaintext when empty).',
  ),
  fileOption('tlsKeyFile', '--tls-key-file', 'PEM private key of --tls-cert-file.'),
  fileOption(
    'tlsClientCaFile',
    '--tls-client-ca-file',
    'PEM CA bundle client certificates must chain to: mutual TLS (needs --tls-cert-file).',
  ),
  {
    key: 'grpcTokens',
    flag: '--grpc-tokens',
    env: ['APP_INBOX_GRPC_TOKENS'],
    unit: '',
    description:
      'Comma list of bearer tokens (16+ characters) accepted on every call but health; without a valid `authorization: Bearer` header a call gets UNAUTHENTICATED. Empty with no token file: no token asked.',
    bound: 'a comma list of tokens',
    schema: LIST,
    envOnly: true,
  },
  fileOption(
    'grpcTokenFile',
    '--grpc-token-file',
    'File of bearer tokens, one per line (a line starting with `#` is a comment; a `#` inside a token is part of it); added to APP_INBOX_GRPC_TOKENS.',
  ),
  intOption(
    'circuitOpenAfterMs',
    '--circuit-open-after-ms',
    'ms',
    0,
    30 * DAY_MS,
    'Circuit breaker: an endpoint with no 2xx answer for this long (and --circuit-min-failures attempts) is paused; a 410 Gone pauses it at once.',
  ),
  intOption(
    'circuitMinFailures',
    '--circuit-min-failures',
    'count',
    1,
    1_000_000,
    'Circuit breaker: failed attempts in a row needed, besides the time, to pause an endpoint.',
  ),
  intOption(
    'circuitProbeIntervalMs',
    '--circuit-probe-interval-ms',
    'ms',
    10,
    DAY_MS,
    'Circuit breaker: wait before a paused endpoint gets one probe delivery; doubles after each failed probe.',
  ),
  intOption(
    'circuitProbeMaxIntervalMs',
    '--circuit-probe-max-interval-ms',
    'ms',
    10,
    7 * DAY_MS,
    'Circuit breaker: longest wait between two probes.',
  ),
];

/** The configuration is invalid; `problems` names each bad option. The server refuses to start. */
export class ConfigError extends Error {
  readonly code = 'invalid_config' as const;
  constructor(
    readonly problems: readonly string[],
    options?: ErrorOptions,
  ) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`, options);
    this.name = 'ConfigError';
  }
}

/** `--help` or `--version` was asked for: commander printed it; the process should exit with `exitCode`. */
export class HelpShown extends Error {
  readonly code = 'help_shown' as const;
  constructor(readonly exitCode: number) {
    super('help shown');
    this.name = 'HelpShown';
  }
}

type Source = { from: 'flag' | 'env' | 'default'; name: string; raw: unknown };

/** Builds the commander program of the server's options (used for parsing and for `--help`). */
export function createCommand(): Command {
  const program = new Command('app-inbox-server')
    .description('gRPC server that pushes App Inbox messages to customer webhooks.')
    .allowExcessArguments(false)
    .exitOverride()
    // Parse errors are thrown as ConfigError and printed once by the caller.
    .configureOutput({ outputError: () => undefined });
  const secrets = OPTION_SPECS.filter((spec) => spec.envOnly === true);
  program.addHelpText(
    'after',
    `\nSecrets come from the environment only (a command line is visible to other users):\n${secrets
      .map((spec) => `  ${spec.env.join(' or ')}: ${spec.description}`)
      .join('\n')}\nSee SECURITY.md.`,
  );
  for (const spec of OPTION_SPECS) {
    if (spec.envOnly === true) continue;
    program.option(
      `${spec.flag} ${spec.isSwitch === true ? '[value]' : '<value>'}`,
      `${spec.description} ${spec.unit ? `[${spec.unit}] ` : ''}(env ${spec.env.join(' or ')}; default ${shownDefault(spec)})`,
    );
  }
  return program;
}

/**
 * Reads the options from `argv` (without the node and script entries) and `env`, and validates them.
 * @throws ConfigError naming every bad option; HelpShown after `--help`.
 */
export function loadConfig(argv: readonly string[], env: NodeJS.ProcessEnv): ServerConfig {
  const program = createCommand();
  try {
    program.parse([...argv], { from: 'user' });
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') {
        throw new HelpShown(error.exitCode);
      }
      throw new ConfigError([error.message.replace(/^error: /, '')], { cause: error });
    }
    throw error;
  }
  const flags = program.opts<Record<string, string | undefined>>();
  const problems: string[] = [];
  const config: Record<string, unknown> = {};
  for (const spec of OPTION_SPECS) {
    const source = pick(spec, flags, env);
    if (
      spec.emptyFlagRefused === true &&
      source.from === 'flag' &&
      typeof source.raw === 'string' &&
      source.raw.trim() === ''
    ) {
      problems.push(`${spec.flag} (flag) must be ${spec.bound}; got an empty value`);
      continue;
    }
    const result = spec.schema.safeParse(source.raw);
    if (result.success) {
      config[spec.key] = result.data;
    } else {
      problems.push(
        `${spec.envOnly === true ? (spec.env[0] ?? spec.flag) : spec.flag} (${describeSource(source)}) must be ${spec.bound}${spec.unit && spec.unit !== 'count' ? ` (${spec.unit})` : ''}; got ${spec.envOnly === true ? 'a value (not shown: it is secret)' : JSON.stringify(typeof source.raw === 'string' && spec.shown !== undefined ? spec.shown(source.raw) : source.raw)}`,
      );
    }
  }
  const parsed = config as unknown as ServerConfig;
  if (problems.length === 0) {
    // Cross-option rules.
    if (parsed.leaseMs <= parsed.requestTimeoutMs) {
      problems.push(
        `--lease-ms (${parsed.leaseMs}) must be greater than --request-timeout-ms (${parsed.requestTimeoutMs}), or another worker could take over a live attempt`,
      );
    }
    if (parsed.backoffMaxMs < parsed.backoffBaseMs) {
      problems.push(
        `--backoff-max-ms (${parsed.backoffMaxMs}) must be at least --backoff-base-ms (${parsed.backoffBaseMs})`,
      );
    }
    // The first retry is due (1 − jitter) × the base after the first attempt, at the soonest: with an age shorter than
    // the base no retry (or most) could be scheduled, and every retryable answer would fail at once. @see SPEC §5
    if (parsed.maxAgeMs < parsed.backoffBaseMs) {
      problems.push(
        `--max-age-ms (${parsed.maxAgeMs}) must be at least --backoff-base-ms (${parsed.backoffBaseMs}): the first retry waits up to that long, so a retryable answer without a short Retry-After would fail at its first attempt`,
      );
    }
    problems.push(...securityProblems(parsed));
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return parsed;
}

/** Rules of the security and circuit options (issue 7); files are read (and named in errors) at start. */
function securityProblems(c: ServerConfig): string[] {
  const out: string[] = [];
  try {
    validateAddressPolicy({ allowPrivate: c.webhookAllowPrivate, allowList: c.webhookAllowList });
  } catch (error) {
    const message = (error as Error).message.replace(/^allowList\[(\d+)\]/, (_, i: string) => `entry ${Number(i) + 1}`);
    out.push(`--webhook-allow-list: ${message}`);
  }
  if ((c.tlsCertFile === '') !== (c.tlsKeyFile === '')) {
    out.push('--tls-cert-file and --tls-key-file must be set together');
  }
  if (c.tlsClientCaFile !== '' && c.tlsCertFile === '') {
    out.push('--tls-client-ca-file (mutual TLS) needs --tls-cert-file and --tls-key-file');
  }
  c.grpcTokens.forEach((token, i) => {
    // The token itself is never echoed.
    if (token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
      out.push(`APP_INBOX_GRPC_TOKENS entry ${i + 1} must be at least ${MIN_TOKEN_LENGTH} characters without spaces`);
    } else if (!isAsciiToken(token)) {
      out.push(`APP_INBOX_GRPC_TOKENS entry ${i + 1} ${TOKEN_NOT_ASCII}`);
    }
  });
  if (c.secretKeys !== '' && c.secretKeyFile !== '') {
    out.push('APP_INBOX_SECRET_KEYS and --secret-key-file are both set: set only one');
  }
  if (c.circuitProbeMaxIntervalMs < c.circuitProbeIntervalMs) {
    out.push(
      `--circuit-probe-max-interval-ms (${c.circuitProbeMaxIntervalMs}) must be at least --circuit-probe-interval-ms (${c.circuitProbeIntervalMs})`,
    );
  }
  return out;
}

/** The default of an option as the help and CONFIG.md show it. */
function shownDefault(spec: OptionSpec): string {
  const dflt = DEFAULT_CONFIG[spec.key];
  if (typeof dflt === 'number') return fmt(dflt);
  if (Array.isArray(dflt)) return dflt.length === 0 ? '(empty)' : dflt.join(',');
  if (dflt === '') return '(empty)';
  return String(dflt);
}

function pick(spec: OptionSpec, flags: Record<string, string | undefined>, env: NodeJS.ProcessEnv): Source {
  const flagValue = flags[camel(spec.flag)];
  if (flagValue !== undefined) return { from: 'flag', name: spec.flag, raw: flagValue };
  for (const name of spec.env) {
    const v = env[name];
    // An empty variable counts as unset (a common leftover of `VAR= cmd`), not as 0 or "".
    if (v !== undefined && v.trim() !== '') return { from: 'env', name, raw: v.trim() };
  }
  return { from: 'default', name: 'default', raw: DEFAULT_CONFIG[spec.key] };
}

function describeSource(source: Source): string {
  return source.from === 'flag' ? 'flag' : source.from === 'env' ? `from env ${source.name}` : 'default';
}

function camel(flag: string): string {
  return flag.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** The options table of the README, in markdown, generated from {@link OPTION_SPECS}. */
export function configMarkdownTable(): string {
  const rows = OPTION_SPECS.map((spec) => {
    const env = spec.env.map((e) => `\`${e}\``).join(' or ');
    const flag = spec.envOnly === true ? '— (env only: a secret)' : `\`${spec.flag}\``;
    return `| ${flag} | ${env} | \`${shownDefault(spec)}\` | ${spec.unit || '—'} | ${spec.description} Valid: ${spec.bound}. |`;
  });
  return [
    '| flag | environment variable | default | unit | meaning |',
    '| --- | --- | --- | --- | --- |',
    ...rows,
  ].join('\n');
}
