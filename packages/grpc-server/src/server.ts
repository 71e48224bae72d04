/**
 * Wires the process together: store → delivery engine → gRPC server (API, health, reflection) → sweeper,
 * and takes it apart again in the reverse order. Usable in-process (tests start it on port 0).
 * @see ARCHITECTURE "Where things live", CONVENTIONS §8
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { DEFAULT_BACKOFF, type BackoffOptions } from '@app-inbox/core';
import { pino, type Logger } from 'pino';
import { createApi, type Api } from './api/services.js';
import type { ServerConfig } from './config.js';
import { DeliveryEngine, type EngineOptions } from './delivery/engine.js';
import { DeliveryServiceService } from './gen/app_inbox/v1/delivery.js';
import { MessageServiceService } from './gen/app_inbox/v1/message.js';
import { WebhookServiceService } from './gen/app_inbox/v1/webhook.js';
import { openStore } from './store/index.js';
import type { Store } from './store/types.js';

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
  /** Default: a pino logger at `config.logLevel` on stdout. */
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
  /** A store to use instead of opening `config.store` (then it is still closed by `close()`). */
  store?: Store;
}

export interface RunningServer {
  /** `host:port` actually bound (the real port when the configuration asked for port 0). */
  readonly address: string;
  readonly port: number;
  readonly store: Store;
  readonly engine: DeliveryEngine;
  /**
   * Ordered, idempotent shutdown: health NOT_SERVING and watch streams ended; no new calls, calls in progress
   * finish (forced after `deadlineMs`); the engine stops (attempts in flight get `deadlineMs` to finish, then
   * go back to the queue); the sweeper stops; the store closes. Errors are collected and thrown together.
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
  // service's, so `buf curl` / grpcurl can call every service without a local copy of the schema.
  return loadSync([...API_PROTO_FILES, 'grpc/health/v1/health.proto'], { includeDirs: [PROTO_DIR], keepCase: true });
}

function bind(server: Server, address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    );
  });
}

/** `host:port` with the bound port in place of the configured one. */
function boundAddress(configured: string, port: number): string {
  return `${configured.slice(0, configured.lastIndexOf(':'))}:${port}`;
}

export async function startServer(config: ServerConfig, options: StartOptions = {}): Promise<RunningServer> {
  const logger = options.logger ?? pino({ level: config.logLevel });
  const clock = options.clock ?? Date.now;
  const store = options.store ?? (await openStore(prepareStoreLocation(config.store)));
  const cleanup: Array<() => Promise<void>> = [() => store.close()];
  try {
    const engine = new DeliveryEngine({
      store,
      logger: logger.child({ component: 'delivery' }),
      clock,
      ...(options.random ? { random: options.random } : {}),
      options: engineOptionsFromConfig(config, options.engine),
    });
    const api: Api = createApi({
      store,
      wake: () => engine.wake(),
      now: clock,
      logger: logger.child({ component: 'api' }),
      defaultMessageTtlSeconds: config.defaultMessageTtlSeconds,
    });
    const server = new Server({
      'grpc.max_receive_message_length': config.maxRequestBytes,
    });
    server.addService(WebhookServiceService, api.webhook);
    server.addService(MessageServiceService, api.message);
    server.addService(DeliveryServiceService, api.delivery);
    const health = new HealthImplementation({
      '': 'NOT_SERVING',
      ...Object.fromEntries(SERVICE_NAMES.map((n) => [n, 'NOT_SERVING'])),
    });
    health.addToServer(server);
    new ReflectionService(loadReflectionDefinition()).addToServer(server);

    const port = await bind(server, config.grpcAddress);
    cleanup.unshift(() => new Promise<void>((resolve) => server.tryShutdown(() => resolve())));
    engine.start();
    const sweeper = startSweeper(store, config, clock, logger.child({ component: 'sweeper' }));
    for (const name of ['', ...SERVICE_NAMES]) health.setStatus(name, 'SERVING');
    const address = boundAddress(config.grpcAddress, port);

    let closing: Promise<void> | null = null;
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
      // 1. Stop intake: report NOT_SERVING (load balancers drain), end watch streams, refuse new calls
      //    and let the calls in progress finish, forced after the deadline.
      for (const name of ['', ...SERVICE_NAMES]) health.setStatus(name, 'NOT_SERVING');
      api.endWatches();
      await step('grpc', () => shutdownGrpc(server, deadlineMs));
      // 2. Deliveries in flight finish until the deadline, the rest go back to the queue.
      await step('engine', () => engine.stop(deadlineMs));
      // 3. The sweeper finishes its current batch.
      await step('sweeper', () => sweeper.stop());
      // 4. The store last: everything above may still write to it.
      await step('store', () => store.close());
      if (errors.length > 0) throw new AggregateError(errors, 'shutdown finished with errors');
    };
    logger.info({ address, store: describeStore(config.store) }, 'gRPC server listening');
    return {
      address,
      port,
      store,
      engine,
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
 * Creates the directory of a SQLite file (the default `./data/app-inbox.db` must work in a fresh clone);
 * PostgreSQL URLs and `:memory:` pass through.
 */
export function prepareStoreLocation(url: string): string {
  if (/^postgres(ql)?:\/\//i.test(url)) return url;
  const path = url.startsWith('sqlite:') ? url.slice('sqlite:'.length) : url;
  if (path !== '' && path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  return url;
}

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

/** The store location for the logs: a PostgreSQL URL without its password. */
export function describeStore(url: string): string {
  if (!/^postgres(ql)?:\/\//.test(url)) return url;
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') parsed.password = '***';
    return parsed.toString();
  } catch {
    return 'postgres://(unparsable URL)';
  }
}

interface Sweeper {
  stop(): Promise<void>;
}

/** Deletes expired messages and old finished deliveries every `sweepIntervalMs`, so storage stays bounded. */
function startSweeper(store: Store, config: ServerConfig, clock: () => number, logger: Logger): Sweeper {
  let running: Promise<void> | null = null;
  let stopped = false;
  const tick = async () => {
    let total = 0;
    for (let i = 0; i < SWEEP_BATCHES_PER_TICK && !stopped; i++) {
      const removed = await store.sweep(clock(), {
        terminalRetentionMs: config.terminalRetentionMs,
        limit: SWEEP_BATCH,
      });
      total += removed;
      if (removed < SWEEP_BATCH) break;
    }
    if (total > 0) logger.info({ removed: total }, 'swept expired messages and old deliveries');
  };
  const timer = setInterval(() => {
    if (running !== null || stopped) return;
    running = tick()
      .catch((error: unknown) => logger.error({ err: error }, 'sweep failed; trying again at the next interval'))
      .finally(() => {
        running = null;
      });
  }, config.sweepIntervalMs);
  timer.unref();
  return {
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}
