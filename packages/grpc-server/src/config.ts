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

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface ServerConfig {
  /** `host:port` the gRPC server listens on; port 0 picks a free port. Default `127.0.0.1:50051`. */
  grpcAddress: string;
  /**
   * Where the durable store lives: a SQLite file (a path, or `sqlite:PATH`; its directory is created) or a
   * PostgreSQL URL (`postgres://…`). Default `./data/app-inbox.db` (relative to the working directory).
   */
  store: string;
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
   * Message time-to-live given to a webhook upserted without `default_message_ttl_seconds`; it applies to
   * that account's messages published without their own TTL or expiry (seconds). Default 86,400 (1 day).
   */
  defaultMessageTtlSeconds: number;
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
  /** How long a graceful shutdown waits for in-flight deliveries before returning them to the queue (milliseconds). Default 10,000. */
  shutdownDeadlineMs: number;
  /** Interval of the sweeper that deletes expired messages and old finished deliveries (milliseconds). Default 60,000. */
  sweepIntervalMs: number;
  /** How long finished deliveries (delivered, failed, superseded) are kept for inspection and replay (milliseconds). Default 604,800,000 (7 days). */
  terminalRetentionMs: number;
  /** Largest gRPC request accepted (bytes); a PublishMessages of 10,000 messages needs several MiB. Default 67,108,864 (64 MiB). */
  maxRequestBytes: number;
}

/** The defaults of every option. @see ServerConfig for units */
export const DEFAULT_CONFIG: Readonly<ServerConfig> = Object.freeze({
  grpcAddress: '127.0.0.1:50051',
  store: './data/app-inbox.db',
  requestTimeoutMs: 15_000,
  leaseMs: 45_000,
  pollIntervalMs: 200,
  firstLaneConcurrency: 64,
  retryLaneConcurrency: 32,
  perEndpointConcurrency: 16,
  defaultMessageTtlSeconds: 86_400,
  maxResponseBytes: 65_536,
  // The retry schedule is the core's (SPEC §5); see the README for the delays it gives.
  backoffBaseMs: DEFAULT_BACKOFF.baseDelayMs,
  backoffMaxMs: DEFAULT_BACKOFF.maxDelayMs,
  maxAttempts: DEFAULT_BACKOFF.maxAttempts,
  maxAgeMs: DEFAULT_BACKOFF.maxAgeMs,
  logLevel: 'info',
  shutdownDeadlineMs: 10_000,
  sweepIntervalMs: 60_000,
  terminalRetentionMs: 604_800_000,
  maxRequestBytes: 64 * 1024 * 1024,
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
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

function int(min: number, max: number): z.ZodType {
  return z.coerce.number().int().min(min).max(max);
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
    bound: 'a file path, sqlite:PATH, or a postgres:// URL',
    schema: z.string().min(1).regex(STORE),
  },
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
    'defaultMessageTtlSeconds',
    '--default-message-ttl-seconds',
    's',
    1,
    365 * 86_400,
    'Message TTL given to a webhook configured without one; applies to its messages published without a TTL or expiry.',
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
    'Longest time a delivery is retried, from its first attempt.',
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
  intOption(
    'shutdownDeadlineMs',
    '--shutdown-deadline-ms',
    'ms',
    0,
    600_000,
    'On SIGTERM/SIGINT, how long in-flight deliveries may finish before they are returned to the queue.',
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
  for (const spec of OPTION_SPECS) {
    const dflt = DEFAULT_CONFIG[spec.key];
    program.option(
      `${spec.flag} <value>`,
      `${spec.description} ${spec.unit ? `[${spec.unit}] ` : ''}(env ${spec.env.join(' or ')}; default ${String(dflt)})`,
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
    const result = spec.schema.safeParse(source.raw);
    if (result.success) {
      config[spec.key] = result.data;
    } else {
      problems.push(
        `${spec.flag} (${describeSource(source)}) must be ${spec.bound}${spec.unit && spec.unit !== 'count' ? ` (${spec.unit})` : ''}; got ${JSON.stringify(source.raw)}`,
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
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return parsed;
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
    const dflt = DEFAULT_CONFIG[spec.key];
    const shown = typeof dflt === 'number' ? fmt(dflt) : dflt;
    const env = spec.env.map((e) => `\`${e}\``).join(' or ');
    return `| \`${spec.flag}\` | ${env} | \`${shown}\` | ${spec.unit || '—'} | ${spec.description} Valid: ${spec.bound}. |`;
  });
  return [
    '| flag | environment variable | default | unit | meaning |',
    '| --- | --- | --- | --- | --- |',
    ...rows,
  ].join('\n');
}
