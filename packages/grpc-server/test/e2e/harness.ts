/**
 * End-to-end helpers: a real server (in-process `startServer` on 127.0.0.1:0, or the real `main.ts` as a
 * child process), the generated grpc-js clients over a real socket, and fresh stores of both engines (SQLite
 * and PostgreSQL) to run each test on.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  credentials,
  makeGenericClientConstructor,
  type Metadata,
  type ServiceError,
  type status,
} from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { pino } from 'pino';
import { decodeStatusDetails, type DecodedStatusDetails } from '../../src/api/errors.js';
import { DEFAULT_CONFIG, type ServerConfig } from '../../src/config.js';
import {
  DeliveryServiceClient,
  GetDeliveryRequest,
  ListDeliveriesRequest,
  RetryDeliveryRequest,
  type DeepPartial,
  type Delivery,
  type GetDeliveryResponse,
  type ListDeliveriesResponse,
  type RetryDeliveryResponse,
  type WatchDeliveriesResponse,
} from '../../src/gen/app_inbox/v1/delivery.js';
import {
  MessageServiceClient,
  PublishMessagesRequest,
  ResyncContactsRequest,
  type InboxMessage,
  type PublishMessagesResponse,
  type ResyncContactsResponse,
} from '../../src/gen/app_inbox/v1/message.js';
import {
  DeleteWebhookRequest,
  GetWebhookRequest,
  UpdateWebhookRequest,
  UpsertWebhookRequest,
  WebhookServiceClient,
  type DeleteWebhookResponse,
  type GetWebhookResponse,
  type UpdateWebhookResponse,
  type UpsertWebhookResponse,
} from '../../src/gen/app_inbox/v1/webhook.js';
import { startServer, type RunningServer, type StartOptions } from '../../src/server.js';
import { createTestDatabase } from '../../src/store/postgres/test-db.js';
import type { Store } from '../../src/store/types.js';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

/** A store engine to run the end-to-end tests on, and how to get a fresh store location for one test. */
export interface StoreTarget {
  engine: 'sqlite' | 'postgres';
  /**
   * A location for a new, empty store: a file in a new temporary directory (SQLite), or a new database
   * created on `APP_INBOX_TEST_PG_URL` (PostgreSQL; rejects with a message saying how to start the test
   * cluster when the variable is unset). Servers started on the same location share their data.
   */
  newUrl(): Promise<string>;
  /** Removes every store this target created (temporary directories, databases); call in afterAll. */
  release(): Promise<void>;
}

/**
 * Both engines, always (issue 5: the end-to-end suite runs against both stores). Each call returns new
 * targets that track what they create, so every `describe.each(storeUrls())` block gets its own stores and
 * frees them in its afterAll. The PostgreSQL target fails (not skips) when `APP_INBOX_TEST_PG_URL` is unset:
 * CI always sets it (`.ci/run` sources scripts/pg-test-cluster.sh).
 */
export function storeUrls(): StoreTarget[] {
  const dirs: string[] = [];
  const databases: Array<{ drop(): Promise<void> }> = [];
  return [
    {
      engine: 'sqlite',
      newUrl() {
        const dir = mkdtempSync(join(tmpdir(), 'app-inbox-e2e-'));
        dirs.push(dir);
        return Promise.resolve(join(dir, 'store.db'));
      },
      release() {
        for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
        return Promise.resolve();
      },
    },
    {
      engine: 'postgres',
      async newUrl() {
        const database = await createTestDatabase();
        databases.push(database);
        return database.url;
      },
      async release() {
        // WITH (FORCE): a connection a failed test left open does not keep its database alive.
        await Promise.all(databases.splice(0).map((d) => d.drop()));
      },
    },
  ];
}

/**
 * The secrets-at-rest key of every test server: one fixed key, so that servers sharing one PostgreSQL
 * database (in-process or child processes) can open each other's sealed webhook secrets. Not a real secret.
 */
export const TEST_SECRET_KEYS = `test:${Buffer.alloc(32, 7).toString('base64')}`;

/**
 * A configuration for tests: port 0, fast polling, a short request timeout and backoff so retries take
 * milliseconds, not seconds; the test receivers on 127.0.0.1 allow-listed (the SSRF guard refuses loopback
 * otherwise, @see SECURITY.md).
 */
export function testConfig(store: string, overrides: Partial<ServerConfig> = {}): ServerConfig {
  return {
    ...DEFAULT_CONFIG,
    grpcAddress: '127.0.0.1:0',
    store,
    requestTimeoutMs: 1_000,
    leaseMs: 3_000,
    pollIntervalMs: 20,
    backoffBaseMs: 20,
    backoffMaxMs: 200,
    maxAttempts: 5,
    logLevel: 'silent',
    shutdownDeadlineMs: 2_000,
    webhookAllowList: ['127.0.0.1'],
    secretKeys: TEST_SECRET_KEYS,
    // No metrics endpoint unless a test asks for one (`metricsAddress: '127.0.0.1:0'`): the default port
    // 9464 would be shared by every server of the run.
    metricsAddress: '',
    ...overrides,
  };
}

/** Backoff for tests: no jitter (exact delays), `Retry-After` honoured down to 10 ms and up to 500 ms. */
export const TEST_BACKOFF = { jitter: 0, retryAfterMinMs: 10, retryAfterMaxMs: 500 } as const;

type Callback<Res> = (error: ServiceError | null, response: Res) => void;

function unary<Res>(invoke: (callback: Callback<Res>) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    invoke((error, response) => (error ? reject(error) : resolve(response)));
  });
}

/**
 * The generated grpc-js clients of the three services on one channel, with each unary RPC as a promise
 * that takes a partial request (defaults filled in by the generated `fromPartial`).
 */
export class Clients {
  readonly webhook: WebhookServiceClient;
  readonly message: MessageServiceClient;
  readonly delivery: DeliveryServiceClient;

  constructor(address: string) {
    const creds = credentials.createInsecure();
    this.webhook = new WebhookServiceClient(address, creds);
    // The other clients share the first one's channel.
    const options = { channelOverride: this.webhook.getChannel() };
    this.message = new MessageServiceClient(address, creds, options);
    this.delivery = new DeliveryServiceClient(address, creds, options);
  }

  upsertWebhook(r: DeepPartial<UpsertWebhookRequest>): Promise<UpsertWebhookResponse> {
    return unary((cb) => this.webhook.upsertWebhook(UpsertWebhookRequest.fromPartial(r), cb));
  }
  updateWebhook(r: DeepPartial<UpdateWebhookRequest>): Promise<UpdateWebhookResponse> {
    return unary((cb) => this.webhook.updateWebhook(UpdateWebhookRequest.fromPartial(r), cb));
  }
  getWebhook(r: DeepPartial<GetWebhookRequest>): Promise<GetWebhookResponse> {
    return unary((cb) => this.webhook.getWebhook(GetWebhookRequest.fromPartial(r), cb));
  }
  deleteWebhook(r: DeepPartial<DeleteWebhookRequest>): Promise<DeleteWebhookResponse> {
    return unary((cb) => this.webhook.deleteWebhook(DeleteWebhookRequest.fromPartial(r), cb));
  }
  publishMessages(r: DeepPartial<PublishMessagesRequest>): Promise<PublishMessagesResponse> {
    return unary((cb) => this.message.publishMessages(PublishMessagesRequest.fromPartial(r), cb));
  }
  resyncContacts(r: DeepPartial<ResyncContactsRequest>): Promise<ResyncContactsResponse> {
    return unary((cb) => this.message.resyncContacts(ResyncContactsRequest.fromPartial(r), cb));
  }
  getDelivery(r: DeepPartial<GetDeliveryRequest>): Promise<GetDeliveryResponse> {
    return unary((cb) => this.delivery.getDelivery(GetDeliveryRequest.fromPartial(r), cb));
  }
  listDeliveries(r: DeepPartial<ListDeliveriesRequest>): Promise<ListDeliveriesResponse> {
    return unary((cb) => this.delivery.listDeliveries(ListDeliveriesRequest.fromPartial(r), cb));
  }
  retryDelivery(r: DeepPartial<RetryDeliveryRequest>): Promise<RetryDeliveryResponse> {
    return unary((cb) => this.delivery.retryDelivery(RetryDeliveryRequest.fromPartial(r), cb));
  }

  close(): void {
    this.message.close();
    this.delivery.close();
    this.webhook.close();
  }
}

/** The clients on one channel to `address`. */
export function connect(address: string): Clients {
  return new Clients(address);
}

/** A failed call's error with its decoded rich details. */
export interface CallFailure {
  code: status;
  details: string;
  metadata: Metadata;
  rich: DecodedStatusDetails | null;
}

/** Awaits a call that must fail, and returns its status and decoded `grpc-status-details-bin`. */
export async function failure(promise: Promise<unknown>): Promise<CallFailure> {
  try {
    await promise;
  } catch (error) {
    const e = error as ServiceError;
    return { code: e.code, details: e.details, metadata: e.metadata, rich: decodeStatusDetails(e.metadata) };
  }
  throw new Error('the call succeeded, but a failure was expected');
}

/** A server started in-process with its clients. */
export interface TestServer {
  server: RunningServer;
  clients: Clients;
  stop(): Promise<void>;
}

export async function startTestServer(
  store: string,
  overrides: Partial<ServerConfig> = {},
  options: StartOptions = {},
): Promise<TestServer> {
  const { engine, ...rest } = options;
  const server = await startServer(testConfig(store, overrides), {
    logger: pino({ level: 'silent' }),
    // The other start options (clock, logger, resolver, circuit hook...) pass through as given.
    ...rest,
    engine: { errorDelayMs: 50, ...engine, backoff: { ...TEST_BACKOFF, ...engine?.backoff } },
  });
  const clients = connect(server.address);
  let stopped: Promise<void> | null = null;
  return {
    server,
    clients,
    stop() {
      stopped ??= (async () => {
        clients.close();
        await server.close(500);
      })();
      return stopped;
    },
  };
}

/**
 * Whether `headers` (a received request's) carry a Standard Webhooks signature of `body` made with `secret`
 * (`whsec_…`): verified here, independently of the server's code.
 */
export function signatureValid(secret: string, headers: Record<string, unknown>, body: Uint8Array): boolean {
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  const expected = createHmac('sha256', key)
    .update(`${String(headers['webhook-id'])}.${String(headers['webhook-timestamp'])}.`)
    .update(body)
    .digest('base64');
  return String(headers['webhook-signature']).split(' ').includes(`v1,${expected}`);
}

/**
 * `store` with `before` run ahead of each call of its method `method` (given the store and the call's arguments): what
 * a call to another process would do between a read and a write. Every other method is the store's own.
 */
export function beforeEachCall<K extends 'createWebhookIfAbsent' | 'replaceWebhookIfUnchanged'>(
  store: Store,
  method: K,
  before: (target: Store, args: Parameters<Store[K]>) => Promise<void>,
): Store {
  return new Proxy(store, {
    get(target, property) {
      // Bound to the real store: its private (#) fields are not reachable through a proxy.
      const value = Reflect.get(target, property, target) as unknown;
      if (typeof value !== 'function') return value;
      const bound = (value as (...a: unknown[]) => unknown).bind(target);
      if (property !== method) return bound;
      return async (...args: Parameters<Store[K]>) => {
        await before(target, args);
        return bound(...args);
      };
    },
  });
}

/** `store` with `before` run ahead of each `replaceWebhookIfUnchanged` (see {@link beforeEachCall}). */
export function beforeEachCompareAndSet(
  store: Store,
  before: (target: Store, args: Parameters<Store['replaceWebhookIfUnchanged']>) => Promise<void>,
): Store {
  return beforeEachCall(store, 'replaceWebhookIfUnchanged', before);
}

/** A unique account id for one test. */
export function accountId(label = 'acct'): string {
  return `${label}-${randomUUID()}`;
}

let seq = 0;
/** A valid message; the id is a fresh UUID and createdDate increases with every call. */
export function inboxMessage(externalCustomerId: string, overrides: Partial<InboxMessage> = {}): InboxMessage {
  seq += 1;
  return {
    externalCustomerId,
    id: randomUUID(),
    createdDate: Date.now() - 60_000 + seq,
    title: `title ${seq}`,
    content: `content ${seq}`,
    category: 'news',
    ...overrides,
  };
}

/** Polls `probe` until it returns a value other than undefined, or fails after `timeoutMs`. */
const HealthClient = makeGenericClientConstructor(healthService, 'Health');

/** The standard gRPC health service's `Check` of `service` ('' for the whole server): its status name. */
export function checkHealth(address: string, service: string): Promise<string> {
  const client = new HealthClient(address, credentials.createInsecure());
  return new Promise<string>((resolve, reject) => {
    (
      client as unknown as Record<
        string,
        (r: object, cb: (e: ServiceError | null, r: { status: string }) => void) => void
      >
    ).check!({ service }, (error, response) => {
      client.close();
      if (error) reject(error);
      else resolve(response.status);
    });
  });
}

export async function eventually<T>(
  probe: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until the delivery reaches one of `states` (store names) and returns it. */
export async function deliveryIn(
  clients: Clients,
  deliveryId: string,
  states: readonly number[],
  timeoutMs = 10_000,
): Promise<Delivery> {
  return eventually(
    async () => {
      const { delivery } = await clients.getDelivery({ deliveryId, includeBody: true });
      return delivery !== undefined && states.includes(delivery.state) ? delivery : undefined;
    },
    timeoutMs,
    `delivery ${deliveryId} in state ${states.join('/')}`,
  );
}

/** Collects a WatchDeliveries stream until cancelled; `ended` resolves with the stream's final status code. */
export function watch(
  clients: Clients,
  account: string,
): { events: WatchDeliveriesResponse[]; cancel(): void; ready: Promise<void>; ended: Promise<status> } {
  const events: WatchDeliveriesResponse[] = [];
  const stream = clients.delivery.watchDeliveries({ accountId: account });
  stream.on('data', (e: WatchDeliveriesResponse) => events.push(e));
  stream.on('error', () => undefined);
  const ended = new Promise<status>((resolve) => stream.on('status', (s: { code: status }) => resolve(s.code)));
  // The server sends the response headers once it has subscribed: from then on no outcome is missed.
  const ready = new Promise<void>((resolve) => stream.once('metadata', () => resolve()));
  return { events, cancel: () => stream.cancel(), ready, ended };
}

export interface ChildServer {
  address: string;
  /** The process id (its delivery engine's claims carry it: `host:pid:random`). */
  pid: number;
  clients: Clients;
  /** Sends `signal` (default SIGKILL) and resolves with the exit code once the process is gone. */
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Options of {@link spawnServer}. */
export interface SpawnOptions {
  /** Called with every JSON log line of the process (stdout), parsed. Default: lines are only scanned for the address. */
  onLog?: (entry: Record<string, unknown>) => void;
}

/** Starts `src/main.ts` under tsx as a separate process on port 0 and reads its bound address from its log. */
export async function spawnServer(
  store: string,
  extraArgs: string[],
  options: SpawnOptions = {},
): Promise<ChildServer> {
  const child: ChildProcess = spawn(
    process.execPath,
    [
      // Sibling packages resolve to their sources, as in the tests (no build needed).
      '--conditions=@app-inbox/source',
      '--import',
      'tsx',
      'src/main.ts',
      '--grpc-address',
      '127.0.0.1:0',
      '--store',
      store,
      '--log-level',
      'info',
      // The test receivers listen on 127.0.0.1, which the SSRF guard refuses unless allow-listed.
      '--webhook-allow-list',
      '127.0.0.1',
      // Several servers run at once: none takes the default metrics port (a test may pass its own).
      '--metrics-address',
      'off',
      ...extraArgs,
    ],
    {
      cwd: PACKAGE_DIR,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NODE_OPTIONS: '', APP_INBOX_SECRET_KEYS: TEST_SECRET_KEYS },
    },
  );
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  const address = await new Promise<string>((resolve, reject) => {
    let found = false;
    // Complete lines are parsed once each; only the unfinished last line is kept (a debug log can be large).
    let partial = '';
    // 30 s: tsx compiles the sources at start, which takes several seconds on a loaded 2-core machine. A server that
    // did not start is killed, not left running after the test.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the server did not start within 30 s: ${stderr}`));
    }, 30_000);
    child.stdout?.on('data', (chunk: Buffer) => {
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.startsWith('{') || (found && options.onLog === undefined)) continue;
        let entry: Record<string, unknown>;
        try {
          entry = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue; // not a log line of ours
        }
        options.onLog?.(entry);
        if (!found && entry.msg === 'gRPC server listening' && typeof entry.address === 'string') {
          found = true;
          clearTimeout(timer);
          resolve(entry.address);
        }
      }
    });
    void exited.then((code) => reject(new Error(`the server exited with ${code} before listening: ${stderr}`)));
  });
  const clients = connect(address);
  let killed: Promise<number | null> | null = null;
  return {
    address,
    pid: child.pid ?? -1,
    clients,
    kill(signal = 'SIGKILL') {
      killed ??= (async () => {
        clients.close();
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        return exited;
      })();
      return killed;
    },
  };
}
