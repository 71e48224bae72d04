/**
 * Wires the process together: store → delivery engine → gRPC server (API, health, reflection) → sweeper,
 * and takes it apart again in the reverse order. Usable in-process (tests start it on port 0).
 * @see ARCHITECTURE "Where things live", CONVENTIONS §8
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Server, type ServerCredentials } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { DEFAULT_BACKOFF, type BackoffOptions } from '@app-inbox/core';
import type { Logger } from 'pino';
import { decodeFailuresAsInvalidArgument } from './api/decoding.js';
import { reflectionDefinition } from './api/reflection.js';
import { raiseReceiveWindow } from './api/receive-window.js';
import { createApi, type Api } from './api/services.js';
import type { ServerConfig } from './config.js';
import { redactCredentials } from './security/redact.js';
import { CircuitBreaker, resumeSavedEndpoints, type CircuitStateListener } from './delivery/circuit.js';
import { DeliveryEngine, STOP_GIVE_BACK_MS, resolveEngineOptions, type EngineOptions } from './delivery/engine.js';
import { createSender } from './delivery/sender.js';
import { DeliveryServiceService } from './gen/app_inbox/v1/delivery.js';
import { MessageServiceService } from './gen/app_inbox/v1/message.js';
import { WebhookServiceService } from './gen/app_inbox/v1/webhook.js';
import { instrumentGrpc } from './observability/grpc.js';
import { createLogger } from './observability/logger.js';
import { startMetricsServer, parseListenAddress, type RunningMetricsServer } from './observability/metrics-server.js';
import { createMetrics, type Metrics } from './observability/metrics.js';
import { initTracing, resolveTracesUrl } from './observability/tracing.js';
import { createAuthInterceptor, createTokenAuthenticator, serverCredentials } from './security/grpc-auth.js';
import { countPlaintextWebhookSecrets, withSealedSecrets } from './security/sealed-store.js';
import { grpcTokens, secretBoxForStore } from './security/setup.js';
import type { SecretBox } from './security/secrets.js';
import type { AddressPolicy, Resolver } from './security/ssrf.js';
import { openStore, sqliteFile, SqliteStore } from './store/index.js';
import { lockSqliteForServer } from './store/sqlite/server-lock.js';
import type { Store } from './store/types.js';
import { every, type Periodic } from './periodic.js';
import { startStoreProbe } from './store/probe.js';
import { within } from './within.js';

/** The fully qualified names of the API's services (health reports each, and '' for the whole server). */
export const SERVICE_NAMES = [
  'app_inbox.v1.WebhookService',
  'app_inbox.v1.MessageService',
  'app_inbox.v1.DeliveryService',
] as const;

/** The .proto sources, shipped with the package: `proto/` beside `src/` and `dist/`. */
export const PROTO_DIR = fileURLToPath(new URL('../proto/', import.meta.url));
const API_PROTO_FILES = ['app_inbox/v1/webhook.proto', 'app_inbox/v1/message.proto', 'app_inbox/v1/delivery.proto'];

/** Most rows one sweep call deletes; the sweeper calls again while a call fills it (bounded per tick). */
const SWEEP_BATCH = 1_000;
const SWEEP_BATCHES_PER_TICK = 20;

export interface StartOptions {
  /** Default: a JSON logger (secrets censored, see observability/logger.ts) at `config.logLevel` on stdout. */
  logger?: Logger;
  /** Milliseconds since the epoch, for the API and the engine. Default `Date.now`. */
  clock?: () => number;
  /** Numbers in [0, 1) for backoff jitter. Default `Math.random`. */
  random?: () => number;
  /**
   * Engine options that {@link ServerConfig} does not set (tests: `errorDelayMs`, `backoff.jitter`,
   * `backoff.retryAfterMinMs`); the configuration's own values win over these.
   */
  engine?: EngineOverrides;
  /**
   * A store to use instead of opening `config.store` (then it is still closed by `close()`). It is wrapped
   * like an opened one, so webhook secrets are sealed in it with the key of `config`.
   */
  store?: Store;
  /**
   * Resolver of webhook host names, for the SSRF check when a webhook is saved and again when connecting
   * (tests inject one to play DNS rebinding). Default: the system resolver.
   */
  resolve?: Resolver;
  /** Told on every circuit breaker state change (metrics hook here). Default: nothing. */
  onCircuitStateChange?: CircuitStateListener;
  /**
   * Where the standard `OTEL_*` variables are read when `config.otlpEndpoint` is empty
   * (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SDK_DISABLED`). Default `process.env`.
   */
  env?: Readonly<Record<string, string | undefined>>;
}

export interface RunningServer {
  /** `host:port` actually bound (the real port when the configuration asked for port 0). */
  readonly address: string;
  readonly port: number;
  /** The store, wrapped so that webhook secrets are sealed at rest (reads give plaintext). */
  readonly store: Store;
  readonly engine: DeliveryEngine;
  /** The circuit breaker of this process (issue 7): every endpoint's circuit state. */
  readonly circuit: CircuitBreaker;
  /** This server's Prometheus metrics (their own registry). */
  readonly metrics: Metrics;
  /**
   * `host:port` the metrics endpoint listens on (the real port when the configuration asked for port 0),
   * e.g. `127.0.0.1:9464`, so `http://<metricsAddress>/metrics`; null when `metricsAddress` is off.
   */
  readonly metricsAddress: string | null;
  /** Where spans are exported (the OTLP traces URL), null when tracing is off. */
  readonly tracesUrl: string | null;
  /**
   * Ordered, idempotent shutdown against one deadline, `deadlineMs` from the call: health NOT_SERVING and watch
   * streams ended; no new calls, calls in progress finish (cut at the deadline); at the same time the engine stops
   * claiming and its attempts in flight finish until that deadline, then go back to the queue; the sweeper stops;
   * the store closes. Past the deadline nothing waits long for a store that stopped answering: close() resolves at
   * most about 3.5 s after it. Errors are collected and thrown together.
   */
  close(deadlineMs?: number): Promise<void>;
}

/** Engine options beyond the configuration; `backoff` may be partial. */
export type EngineOverrides = Partial<Omit<EngineOptions, 'backoff'>> & { backoff?: Partial<BackoffOptions> };

/** The engine's options from the server configuration (which wins) and `overrides` (for the rest). */
export function engineOptionsFromConfig(config: ServerConfig, overrides: EngineOverrides = {}): Partial<EngineOptions> {
  const { backoff, ...rest } = overrides;
  return {
    ...rest,
    requestTimeoutMs: config.requestTimeoutMs,
    leaseMs: config.leaseMs,
    pollIntervalMs: config.pollIntervalMs,
    firstLaneConcurrency: config.firstLaneConcurrency,
    retryLaneConcurrency: config.retryLaneConcurrency,
    perEndpointConcurrency: config.perEndpointConcurrency,
    slowAttemptMs: config.slowAttemptMs,
    maxBodyBytesInMemory: config.maxBodyMemoryMib * 1024 * 1024,
    maxResponseBytes: config.maxResponseBytes,
    backoff: {
      ...DEFAULT_BACKOFF,
      ...backoff,
      baseDelayMs: config.backoffBaseMs,
      maxDelayMs: config.backoffMaxMs,
      maxAttempts: config.maxAttempts,
      maxAgeMs: config.maxAgeMs,
    },
  };
}

function loadReflectionDefinition() {
  // Loaded from the same .proto files the TypeScript was generated from, plus the standard health
  // service's, so `buf curl` / grpcurl can call every service without a local copy of the schema; with protoc's
  // names for map entries (UpsertWebhookRequest.headers), without which those tools refuse webhook.proto.
  return reflectionDefinition(
    loadSync([...API_PROTO_FILES, 'grpc/health/v1/health.proto'], { includeDirs: [PROTO_DIR], keepCase: true }),
  );
}

function bind(server: Server, address: string, credentials: ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (error, port) =>
      error ? reject(new ListenError('--grpc-address', address, error)) : resolve(port),
    );
  });
}

/** `host:port` with the bound port in place of the configured one. */
function boundAddress(configured: string, port: number): string {
  return `${configured.slice(0, configured.lastIndexOf(':'))}:${port}`;
}

export async function startServer(config: ServerConfig, options: StartOptions = {}): Promise<RunningServer> {
  const logger = options.logger ?? createLogger({ level: config.logLevel });
  const clock = options.clock ?? Date.now;
  // Security settings are read (key and certificate files included) before anything opens, so a bad one
  // stops the start with an error naming it. @see SECURITY.md
  const securityLog = logger.child({ component: 'security' });
  const { box, origin: keyOrigin } = secretBoxForStore({
    store: config.store,
    secretKeys: config.secretKeys,
    secretKeyFile: config.secretKeyFile,
    onWarning: (message) => securityLog.warn(message),
  });
  const credentials = serverCredentials({
    tlsCertFile: config.tlsCertFile,
    tlsKeyFile: config.tlsKeyFile,
    tlsClientCaFile: config.tlsClientCaFile,
  });
  const tokens = grpcTokens(config.grpcTokens, config.grpcTokenFile);
  const authenticator = tokens.length > 0 ? createTokenAuthenticator(tokens) : null;
  const addressPolicy: AddressPolicy = { allowPrivate: config.webhookAllowPrivate, allowList: config.webhookAllowList };

  // The delivery options (above all: the lease longer than the request timeout) are checked before the store
  // opens, so a refused configuration leaves nothing behind: no file created, no migration run.
  resolveEngineOptions(engineOptionsFromConfig(config, options.engine), config.requestTimeoutMs);
  // The same for the observability options: a bad metrics address or OTLP endpoint names itself here.
  const metricsListen =
    config.metricsAddress === '' ? null : parseListenAddress(config.metricsAddress, 'metricsAddress');
  const tracingEnv = options.env ?? process.env;
  resolveTracesUrl({ otlpEndpoint: config.otlpEndpoint, env: tracingEnv });

  // One server per SQLite file (store/sqlite/server-lock.ts); taken before the store opens, given back after it closes.
  const serverLock = options.store === undefined ? lockConfiguredStore(config) : null;
  let rawStore: Store;
  try {
    rawStore = options.store ?? (await openConfiguredStore(config));
  } catch (error) {
    serverLock?.release();
    throw error;
  }
  // Passwords and signing secrets are sealed (AES-256-GCM) before either engine writes them.
  const store = withSealedSecrets(rawStore, box, {
    onSecretError: (accountId, error) =>
      securityLog.error(
        { accountId, code: (error as { code?: unknown }).code },
        'a webhook secret cannot be opened (key missing or value altered): its deliveries are postponed until the webhook is saved again',
      ),
  });
  const cleanup: Array<() => Promise<void>> = [() => store.close().finally(() => serverLock?.release())];
  try {
    // Traces: off unless an OTLP endpoint is configured (then the tracer is a no-op). @see OPERATIONS.md
    const tracing = initTracing({
      serviceName: 'app-inbox-webhooks',
      otlpEndpoint: config.otlpEndpoint,
      env: tracingEnv,
    });
    cleanup.unshift(() => tracing.shutdown());
    const tracer = tracing.enabled ? tracing.tracer : undefined;
    // Queue gauges are read from the store at scrape time: true across every process sharing it.
    const metricsLog = logger.child({ component: 'metrics' });
    const metrics = createMetrics({
      statsProvider: (now) => store.stats(now),
      clock,
      onCollectError: (error) => metricsLog.error({ err: error }, 'reading the queue counts for a scrape failed'),
      // Process metrics (GC, event loop) cost observers; only worth it when something scrapes them.
      processMetrics: metricsListen !== null,
    });
    const engineOptions = engineOptionsFromConfig(config, options.engine);
    // The sender carries the connect-time SSRF guard; the engine gets it injected, so the server closes it.
    const sender = createSender({
      requestTimeoutMs: config.requestTimeoutMs,
      maxResponseBytes: config.maxResponseBytes,
      addressPolicy,
      ...(options.resolve ? { resolve: options.resolve } : {}),
    });
    cleanup.unshift(() => sender.close());
    const circuitLog = logger.child({ component: 'circuit' });
    const circuit = new CircuitBreaker({
      options: {
        openAfterMs: config.circuitOpenAfterMs,
        minFailures: config.circuitMinFailures,
        probeIntervalMs: config.circuitProbeIntervalMs,
        maxProbeIntervalMs: config.circuitProbeMaxIntervalMs,
        // A probe whose claim was given back never reports; after a lease another one may go.
        probeTimeoutMs: config.leaseMs,
        // An endpoint is held by a Retry-After no longer than the delivery that got it waits.
        holdMaxMs: engineOptions.backoff?.retryAfterMaxMs ?? DEFAULT_BACKOFF.retryAfterMaxMs,
      },
      onStateChange: (accountId, state, view) => {
        const level = state === 'open' ? 'warn' : 'info';
        circuitLog[level]({ accountId, ...view }, `endpoint circuit ${state}`);
        metrics.setCircuitState(accountId, state);
        options.onCircuitStateChange?.(accountId, state, view);
      },
    });
    const engine = new DeliveryEngine({
      store,
      sender,
      health: circuit,
      logger: logger.child({ component: 'delivery' }),
      metrics,
      ...(tracer ? { tracer } : {}),
      clock,
      ...(options.random ? { random: options.random } : {}),
      options: engineOptions,
    });
    const api: Api = createApi({
      store,
      wake: (lane) => engine.wake(lane),
      webhookSaved: (before, after) => engine.webhookSaved(before, after),
      now: clock,
      logger: logger.child({ component: 'api' }),
      defaultMessageTtlSeconds: config.defaultMessageTtlSeconds,
      signingSecretOverlapMs: config.signingSecretOverlapSeconds * 1000,
      maxWatchStreams: config.maxWatchStreams,
      addressPolicy,
      ...(options.resolve ? { resolve: options.resolve } : {}),
      circuit,
      metrics,
    });
    const server = new Server({
      'grpc.max_receive_message_length': config.maxRequestBytes,
      // Bearer tokens: every call but health ends UNAUTHENTICATED without a valid one.
      ...(authenticator ? { interceptors: [createAuthInterceptor(authenticator)] } : {}),
    });
    raiseReceiveWindow(server, config.grpcReceiveWindowBytes);
    // A request that cannot be decoded (an int64 beyond 2^53, bytes that are not protobuf) is INVALID_ARGUMENT
    // naming the field, not grpc-js's INTERNAL.
    const apiLog = logger.child({ component: 'api' });
    // Outermost, every call is counted (grpc_server_calls_total) and, with tracing, gets a SERVER span whose
    // context the handlers store on the deliveries they create.
    const services = [
      decodeFailuresAsInvalidArgument(WebhookServiceService, api.webhook, apiLog),
      decodeFailuresAsInvalidArgument(MessageServiceService, api.message, apiLog),
      decodeFailuresAsInvalidArgument(DeliveryServiceService, api.delivery, apiLog),
    ] as const;
    for (const [definition, implementation] of services) {
      server.addService(definition, instrumentGrpc(definition, implementation, metrics, tracer ? { tracer } : {}));
    }
    const health = new HealthImplementation({
      '': 'NOT_SERVING',
      ...Object.fromEntries(SERVICE_NAMES.map((n) => [n, 'NOT_SERVING'])),
    });
    health.addToServer(server);
    new ReflectionService(loadReflectionDefinition()).addToServer(server);

    let closing: Promise<void> | null = null;
    /** Why the store is not ready (its readiness probe failed or went unanswered); null while it answers. */
    let storeProblem: string | null = null;
    const metricsServer: RunningMetricsServer | null =
      metricsListen === null
        ? null
        : await startMetricsServer({
            ...metricsListen,
            metrics,
            // 503 once shutdown began, so a load balancer probing /healthz drains this process.
            healthy: () => closing === null,
            notReady: () => (closing !== null ? 'shutting down' : storeProblem),
            onError: (error) => metricsLog.error({ err: error }, 'a metrics scrape failed'),
          }).catch((error: unknown) => {
            throw new ListenError('--metrics-address', config.metricsAddress, error);
          });
    if (metricsServer !== null) cleanup.unshift(() => metricsServer.close());
    const metricsAddress = metricsServer === null ? null : metricsServer.url.replace(/^http:\/\//, '');

    const port = await bind(server, config.grpcAddress, credentials);
    cleanup.unshift(() => new Promise<void>((resolve) => server.tryShutdown(() => resolve())));
    engine.start();
    const sweeper = startSweeper(store, config, clock, metrics, logger.child({ component: 'sweeper' }));
    const secretsCheck = startPlaintextSecretsCheck(rawStore, box, securityLog);
    // Endpoints paused by a 410 Gone resume once their webhook is saved again, also when another process saved it.
    const resumer = every(
      config.circuitProbeIntervalMs,
      async (stopped) => {
        await resumeSavedEndpoints(
          circuit,
          // The raw store: only updatedAt is needed, so a secret that cannot be opened does not stop the check.
          async (accountId) => (await rawStore.getWebhook(accountId))?.updatedAt ?? null,
          stopped,
          (accountId, error) =>
            circuitLog.error({ err: error, accountId }, 'reading the webhook of a paused endpoint failed'),
        );
      },
      (error) => circuitLog.error({ err: error }, 'checking the webhooks of endpoints paused by 410 failed'),
    );
    for (const name of ['', ...SERVICE_NAMES]) health.setStatus(name, 'SERVING');
    const storeLog = logger.child({ component: 'store' });
    const storeProbe = startStoreProbe(rawStore, config.storeProbeIntervalMs, (problem, error) => {
      storeProblem = problem;
      metrics.storeReachable.set(problem === null ? 1 : 0);
      if (closing !== null) return;
      for (const name of ['', ...SERVICE_NAMES]) health.setStatus(name, problem === null ? 'SERVING' : 'NOT_SERVING');
      if (problem === null) storeLog.info('the store answers again: health SERVING, /readyz 200');
      else storeLog.warn({ err: error, problem }, 'the store does not answer: health NOT_SERVING, /readyz 503');
    });
    const address = boundAddress(config.grpcAddress, port);

    const close = async (deadlineMs: number): Promise<void> => {
      const errors: unknown[] = [];
      const step = async (what: string, fn: () => Promise<void>) => {
        try {
          await fn();
        } catch (error) {
          logger.error({ err: error, step: what }, 'shutdown step failed');
          errors.push(error);
        }
      };
      // One deadline for the whole shutdown, from now: the calls in progress and the deliveries in flight share it
      // (waiting for the one, then again for the other, doubled it). Past it, what is left waits a bounded time:
      // the engine STOP_GIVE_BACK_MS for claims to go back, the steps after it FINAL_STEP_MS, the store its
      // closeTimeoutMs; a store that stopped answering is not waited for beyond those (nothing accepted is lost:
      // the store is the queue, claims abandoned come back when their leases expire).
      const began = performance.now();
      const msUntil = (sinceBeganMs: number) => Math.max(0, began + sinceBeganMs - performance.now());
      const giveBackEnd = deadlineMs + STOP_GIVE_BACK_MS;
      const bounded = async (what: string, fn: () => Promise<void>, ms: number) => {
        if ((await within(step(what, fn), ms, 'timeout')) === 'timeout') {
          logger.warn({ step: what, waitedMs: ms }, 'shutdown step still running at its bound: not waited for');
        }
      };
      // 1. Stop intake and deliveries together: report NOT_SERVING (load balancers drain), end watch streams,
      //    refuse new calls and let the calls in progress finish, cut at the deadline; meanwhile the engine stops
      //    claiming, its deliveries in flight finish until the same deadline, the rest go back to the queue; the
      //    sweeper and the circuit's check finish their current store call.
      for (const name of ['', ...SERVICE_NAMES]) health.setStatus(name, 'NOT_SERVING');
      api.endWatches();
      await Promise.all([
        step('grpc', () => shutdownGrpc(server, deadlineMs)),
        step('engine', () => engine.stop(deadlineMs, STOP_GIVE_BACK_MS)),
        bounded('sweeper', () => sweeper.stop(), msUntil(giveBackEnd)),
        bounded('store probe', () => storeProbe.stop(), msUntil(giveBackEnd)),
        bounded('circuit', () => resumer.stop(), msUntil(giveBackEnd)),
        bounded('secrets check', () => secretsCheck.stop(), msUntil(giveBackEnd)),
      ]);
      // 2. The sender's connections close; observability: the metrics endpoint stops, the spans ended so far are
      //    exported.
      const finalMs = Math.max(msUntil(giveBackEnd), FINAL_STEP_MS);
      await Promise.all([
        bounded('sender', () => sender.close(), finalMs),
        ...(metricsServer !== null ? [bounded('metrics', () => metricsServer.close(), finalMs)] : []),
        bounded('tracing', () => tracing.shutdown(), finalMs),
      ]);
      // 3. The store last: everything above may still write to it (PostgreSQL: bounded by its closeTimeoutMs).
      await step('store', () => store.close());
      serverLock?.release();
      if (errors.length > 0) throw new AggregateError(errors, 'shutdown finished with errors');
    };
    logger.info(
      {
        address,
        store: describeStore(config.store),
        ...(rawStore instanceof SqliteStore ? { sqliteCacheMib: rawStore.cacheSizeKiB / 1024 } : {}),
        tls: config.tlsCertFile === '' ? 'off' : config.tlsClientCaFile === '' ? 'tls' : 'mutual_tls',
        tokens: authenticator !== null,
        secretKeys: keyOrigin,
        metrics: metricsServer === null ? 'off' : `${metricsServer.url}/metrics`,
        traces: tracing.exportUrl ?? 'off',
      },
      'gRPC server listening',
    );
    return {
      address,
      port,
      store,
      engine,
      circuit,
      metrics,
      metricsAddress,
      tracesUrl: tracing.exportUrl,
      close(deadlineMs = config.shutdownDeadlineMs) {
        closing ??= close(deadlineMs);
        return closing;
      },
    };
  } catch (error) {
    for (const fn of cleanup) await fn().catch(() => undefined);
    throw error;
  }
}

/**
 * The store could not be opened at start: a SQLite file in a directory this user cannot write, a path under a
 * regular file, PostgreSQL unreachable or refusing the login. The message names `--store` and its location
 * (without a password) and the cause; the driver's own ("unable to open database file") names neither.
 */
export class StoreOpenError extends Error {
  override readonly name = 'StoreOpenError';
  readonly code = 'store_unavailable' as const;
  constructor(store: string, cause: unknown) {
    const error = cause as { message?: unknown; code?: unknown };
    const shown = redactCredentials(store);
    // A driver quoting the URL it was given must not show the password either.
    const message = (typeof error?.message === 'string' ? error.message : String(cause)).replaceAll(store, shown);
    const code = typeof error?.code === 'string' && !message.includes(error.code) ? ` (${error.code})` : '';
    const hint = /^(SQLITE_CANTOPEN|SQLITE_READONLY|EACCES|EPERM|EROFS)/.test(String(error?.code))
      ? '; can this user create and write files in its directory?'
      : /^(EEXIST|ENOTDIR)$/.test(String(error?.code))
        ? '; a part of its directory path is a file, not a directory'
        : '';
    super(`--store ${shown}: cannot open the store: ${message}${code}${hint}`, { cause });
  }
}

/**
 * The gRPC or metrics address could not be listened on at start (taken by another process, not an address of this
 * machine). The message names the option and the address; grpc-js's own ("No address added out of total 1
 * resolved errors: [...]") and Node's name neither, and with both servers on 127.0.0.1 the port alone does not say
 * which option to change.
 */
export class ListenError extends Error {
  override readonly name = 'ListenError';
  readonly code = 'listen_failed' as const;
  constructor(option: '--grpc-address' | '--metrics-address', address: string, cause: unknown) {
    const text = cause instanceof Error ? cause.message : String(cause);
    // grpc-js wraps the listen errors of every resolved address: keep those.
    const inner = /errors: \[(.*)\]$/s.exec(text)?.[1] ?? text;
    super(`${option} ${address}: cannot listen: ${inner}`, { cause });
  }
}

/** The server lock of a SQLite file store (null for PostgreSQL and `:memory:`); refused as the store's open is. */
function lockConfiguredStore(config: ServerConfig): { release(): void } | null {
  const path = sqliteFile(config.store);
  if (path === null) return null;
  try {
    prepareStoreLocation(config.store);
    return lockSqliteForServer(path);
  } catch (error) {
    throw new StoreOpenError(config.store, error);
  }
}

/** Opens the configured store; a SQLite file's directory was made by {@link lockConfiguredStore}, which runs first. */
async function openConfiguredStore(config: ServerConfig): Promise<Store> {
  try {
    return await openStore(config.store, {
      postgres: { poolSize: config.pgPoolSize },
      sqlite: { cacheSizeKiB: config.sqliteCacheMib * 1024 },
    });
  } catch (error) {
    throw new StoreOpenError(config.store, error);
  }
}

/**
 * Creates the directory of a SQLite file (the default `./data/app-inbox.db` must work in a fresh clone);
 * PostgreSQL URLs and `:memory:` pass through.
 */
export function prepareStoreLocation(url: string): string {
  const path = sqliteFile(url);
  if (path !== null) mkdirSync(dirname(path), { recursive: true });
  return url;
}

/**
 * How long each shutdown step after the engine's (sender, metrics, tracing, run together) may take at least, when
 * the deadline and the engine's give-back time have already passed (milliseconds).
 */
const FINAL_STEP_MS = 1_000;

/** Stops accepting calls; calls in progress get `deadlineMs`, then every connection is cut. */
function shutdownGrpc(server: Server, deadlineMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, deadlineMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** The store location for the logs: a URL without its password (see {@link redactCredentials}). */
export function describeStore(url: string): string {
  return redactCredentials(url);
}

/**
 * Deletes expired messages and old finished deliveries every `sweepIntervalMs`, so storage stays bounded; with
 * `refreshOnExpiry`, a contact whose list held an expired message is sent its list again (Store.sweep).
 */
function startSweeper(
  store: Store,
  config: ServerConfig,
  clock: () => number,
  metrics: Metrics,
  logger: Logger,
): Periodic {
  return every(
    config.sweepIntervalMs,
    async (stopped) => {
      let removed = 0;
      let refreshed = 0;
      for (let i = 0; i < SWEEP_BATCHES_PER_TICK && !stopped(); i++) {
        const swept = await store.sweep(clock(), {
          terminalRetentionMs: config.terminalRetentionMs,
          limit: SWEEP_BATCH,
          refreshExpired: config.refreshOnExpiry,
        });
        removed += swept.deleted;
        refreshed += swept.refreshed;
        metrics.expiryRefreshes.inc(swept.refreshed);
        if (swept.deleted < SWEEP_BATCH) break;
      }
      if (removed > 0) logger.info({ removed, refreshed }, 'swept expired messages and old deliveries');
    },
    (error) => logger.error({ err: error }, 'sweep failed; trying again at the next interval'),
  );
}

/** The reseal command as an operator runs it from the repository (SECURITY.md "Key rotation" step 3). */
const RESEAL_COMMAND =
  "APP_INBOX_SECRET_KEYS=<this server's keys> npm run secrets:reseal -w @app-inbox/grpc-server -- --store <path or postgres URL>";

/**
 * Warns once, at start, when webhooks keep a secret (password, signing secret, header value) in plaintext: saved by
 * a build before encryption at rest, they stay so until the reseal command or a re-save (OPERATIONS.md "Upgrading"). In the
 * background, so the start does not wait: one read per webhook, as the reseal command finds them. Names how many,
 * never an account or a value; debug says when none is found.
 */
function startPlaintextSecretsCheck(rawStore: Store, box: SecretBox, logger: Logger): Periodic {
  let stopped = false;
  const running = countPlaintextWebhookSecrets(rawStore, box, { stopped: () => stopped }).then(
    (report) => {
      if (report === null) return;
      if (report.plaintext === 0) {
        logger.debug({ webhooks: report.checked }, 'webhook secrets at rest: none stored in plaintext');
        return;
      }
      logger.warn(
        { webhooks: report.plaintext },
        `${report.plaintext} webhook(s) keep secrets (a password, signing secret or header value) in plaintext in the ` +
          `store (saved before encryption at rest): seal them once with the reseal command, ${RESEAL_COMMAND} ` +
          '(built: node dist/security/reseal-main.js --store ...; SECURITY.md "Key rotation" step 3), or save them again',
      );
    },
    (error: unknown) => {
      if (!stopped) logger.warn({ err: error }, 'checking for webhook secrets stored in plaintext failed');
    },
  );
  return {
    async stop() {
      stopped = true;
      await running;
    },
  };
}
