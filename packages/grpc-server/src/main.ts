#!/usr/bin/env node
/**
 * The process entry (`app-inbox-server`, `npm start`): read and validate the configuration, start the
 * server, log the bound address, and shut down in order on SIGTERM/SIGINT; a second signal forces the exit.
 * @see CONVENTIONS §8
 */
import { ConfigError, HelpShown, loadConfig, type ServerConfig } from './config.js';
import { LoggerOptionError, createLogger } from './observability/logger.js';
import { MetricsServerOptionError } from './observability/metrics-server.js';
import { TracingOptionError } from './observability/tracing.js';
import { GrpcAuthConfigError, censorGrpcLogs } from './security/grpc-auth.js';
import { hideCredentialsInProcessTitle } from './security/redact.js';
import { SecretBoxError } from './security/secrets.js';
import { ListenError, StoreOpenError, startServer } from './server.js';

/** Exit code of a refused configuration (like sysexits' EX_USAGE family: not a crash). */
const EXIT_BAD_CONFIG = 2;

function readConfig(): ServerConfig {
  try {
    return loadConfig(process.argv.slice(2), process.env);
  } catch (error) {
    if (error instanceof HelpShown) process.exit(error.exitCode);
    if (error instanceof ConfigError) {
      process.stderr.write(`app-inbox-server: ${error.message}\nRun with --help for every option.\n`);
      process.exit(EXIT_BAD_CONFIG);
    }
    throw error;
  }
}

async function main(): Promise<void> {
  // `--store postgres://app:pass@...` is visible to every user in `ps` until the title replaces it.
  hideCredentialsInProcessTitle();
  // grpc-js's debug output (GRPC_TRACE) prints every call's headers: not the bearer token.
  censorGrpcLogs();
  const config = readConfig();
  // Secrets (passwords, signing secrets, tokens, Authorization headers) are censored at any depth of every
  // line by the logger itself, and webhook URLs are cut to their origin: defence in depth, since no code
  // path logs them. @see observability/logger.ts
  const logger = createLogger({ level: config.logLevel, base: { service: 'app-inbox-server', pid: process.pid } });
  // grpc-js writes its errors to stderr as text ("E No address added out of total 1 resolved" above the one-line
  // reason of a failed start): they go to the JSON log instead. Its info and debug output (GRPC_VERBOSITY,
  // GRPC_TRACE) stays on stderr; all of it without credentials (a second setter of grpc-js's one logger had undone
  // the censoring above).
  const grpcLog = logger.child({ component: 'grpc' });
  censorGrpcLogs((text) => grpcLog.error(text));
  let server: Awaited<ReturnType<typeof startServer>> | undefined;
  let signals = 0;
  const shutDown = (running: NonNullable<typeof server>): void => {
    running.close(config.shutdownDeadlineMs).then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, 'stopped with errors');
        process.exit(1);
      },
    );
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1;
    if (signals > 1) {
      // Nothing is lost by this: accepted messages are committed, and claims left behind expire.
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(130);
    }
    logger.info({ signal, deadlineMs: config.shutdownDeadlineMs }, 'shutting down');
    // Still starting: the shutdown begins once the server has started (below).
    if (server !== undefined) shutDown(server);
  };
  // Before the start, not after it: "gRPC server listening" is logged during the start, and a signal sent on seeing
  // it, before any handler was there, killed the process without its ordered shutdown.
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    server = await startServer(config, { logger });
  } catch (error) {
    logger.fatal({ err: error }, 'the server could not start');
    // A missing or bad key, certificate or token file is a configuration error, like a bad option.
    if (
      error instanceof SecretBoxError ||
      error instanceof GrpcAuthConfigError ||
      error instanceof LoggerOptionError ||
      error instanceof MetricsServerOptionError ||
      error instanceof TracingOptionError
    ) {
      const doc =
        error instanceof SecretBoxError || error instanceof GrpcAuthConfigError ? 'SECURITY.md' : 'OPERATIONS.md';
      process.stderr.write(`app-inbox-server: ${error.message}\nSee ${doc}.\n`);
      process.exit(EXIT_BAD_CONFIG);
    }
    // Anything else (the store cannot be opened, the address is taken) is said on stderr as well: the log line
    // above is on stdout, and absent with --log-level silent. Exit code 1: the options are valid, the
    // environment is not (yet): a restart may succeed once the database is up or the directory writable.
    const reason =
      error instanceof StoreOpenError || error instanceof ListenError
        ? error.message
        : `the server could not start: ${String(error)}`;
    process.stderr.write(`app-inbox-server: ${reason}\n`);
    process.exit(1);
  }
  if (signals > 0) shutDown(server);
}

main().catch((error: unknown) => {
  process.stderr.write(
    `app-inbox-server: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
