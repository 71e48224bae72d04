/**
 * Soak test: the built server (`dist/main.js`) as a child process under a steady, varied workload for a bounded
 * time, its resources sampled at an interval, to see what grows while the workload does not.
 *
 *   npm run bench:soak -w @app-inbox/grpc-server -- [--minutes 3] [--pg URL] [--sample-seconds 12]
 *     [--rate 250] [--accounts 50] [--contacts 200] [--skip-build] [--out DIR]
 *
 * Receivers (node:http in this process, 127.0.0.1 port 0): `ok` (200), `flaky` (200 / 503 / 429 with Retry-After /
 * a few 400), `slow` (answers after 0.2-4 s, past the request timeout sometimes), `reset` (destroys half of the
 * connections), `flappy` (down 20 s of every 60 s). Workload: PublishMessages to `--accounts` accounts over
 * `--contacts` contacts each, short TTLs; UpsertWebhook (disable / enable / move to another receiver), DeleteWebhook
 * and re-create, short-lived accounts created and deleted, ResyncContacts, RetryDelivery of failed deliveries,
 * WatchDeliveries streams opened and cancelled, GetDelivery / ListDeliveries, a few invalid requests. The server
 * runs with short backoff, retention, sweep and circuit settings so that retries, give-ups, sweeps and circuit
 * changes all happen within minutes.
 *
 * Every sample: RSS (/proc), V8 heap used after a full GC (through the server's inspector, when this process has a
 * global WebSocket: Node 22, or Node 20 with --experimental-websocket, as the npm script runs it), active handles by
 * type, open fds and sockets, event-loop lag p99, server CPU, the store's files (SQLite db / -wal) or database size
 * (PostgreSQL), deliveries by state and messages, metric series (all, and those with an `account` label), and the
 * receivers' counts. Then the loss check: the workload stops, every account's webhook is moved to `ok` (enabled, no
 * rate limit) and its queue drained, and each contact with live messages must have had them all in the last list its
 * endpoint answered 200 to, unless its newest delivery failed (kept for replay) or is gone (swept); then every contact
 * is resynced and drained again, after which none may miss any. At the end: SIGTERM and the time to exit. The series
 * are printed as a table and written as JSON to `<out>/soak-<date>.json`; exit code 1 when the run itself broke, a
 * message was lost, or the server did not exit cleanly.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { credentials, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import pg from 'pg';
import { CONTACT_HEADER } from '@app-inbox/core';
import {
  DeliveryServiceClient,
  DeliveryState,
  type Delivery,
  type WatchDeliveriesResponse,
} from '../src/gen/app_inbox/v1/delivery.js';
import { MessageServiceClient, type InboxMessage } from '../src/gen/app_inbox/v1/message.js';
import { WebhookServiceClient } from '../src/gen/app_inbox/v1/webhook.js';
import { DIST_MAIN, PACKAGE_DIR, processCpuMs } from './lib/server-process.js';

// ---------------------------------------------------------------------------------------------------------------
// Options

const { values: opts } = parseArgs({
  options: {
    minutes: { type: 'string', default: '3' },
    pg: { type: 'string' },
    'sample-seconds': { type: 'string', default: '12' },
    rate: { type: 'string', default: '250' },
    accounts: { type: 'string', default: '50' },
    contacts: { type: 'string', default: '200' },
    'skip-build': { type: 'boolean', default: false },
    out: { type: 'string', default: join(PACKAGE_DIR, '../../bench-results') },
    help: { type: 'boolean', default: false },
  },
});
if (opts.help) {
  process.stdout.write(
    'npm run bench:soak -w @app-inbox/grpc-server -- [--minutes 3] [--pg URL] [--sample-seconds 12] [--rate 250]\n' +
      '  [--accounts 50] [--contacts 200] [--skip-build] [--out DIR]\n' +
      '--rate: messages published per second; --contacts: contacts per account; --pg: run on a fresh database there.\n',
  );
  process.exit(0);
}
function positive(name: string, text: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(`soak: --${name} must be a positive number, got ${text}\n`);
    process.exit(2);
  }
  return n;
}
const MINUTES = positive('minutes', opts.minutes);
const SAMPLE_MS = positive('sample-seconds', opts['sample-seconds']) * 1000;
const RATE = positive('rate', opts.rate);
const ACCOUNTS = Math.floor(positive('accounts', opts.accounts));
const CONTACTS = Math.floor(positive('contacts', opts.contacts));
const SHUTDOWN_DEADLINE_MS = 5_000;
/** The server's `--signing-secret-overlap-seconds`: short, so rotations overlap and expire within the run. */
const OVERLAP_MS = 30_000;
/**
 * How old the webhook an attempt was sent with may be: an attempt signs and is rate-limited with the webhook its
 * claim read, and a claim that waits for its slot longer than 250 ms reads it again; a few seconds cover that,
 * the body build and this process's own event-loop delays.
 */
const STALE_MS = 3_000;
/** The webhooks' `max_messages_per_contact`: a contact with more live messages is not checked for loss. */
const MAX_MESSAGES_PER_CONTACT = 50;
/** How long the end-of-run check waits for the moved endpoints' queues to drain. */
const DRAIN_TIMEOUT_MS = 120_000;
/** The server's `--sweep-interval-ms`: expired messages leave the receivers' lists within about this. */
const SWEEP_INTERVAL_MS = 10_000;

const newSecret = () => `whsec_${randomBytes(24 + Math.floor(Math.random() * 9)).toString('base64')}`;
/** A rate limit of 1-20/s, low ones more often (an account publishes a few deliveries a second). */
const newRate = () => (Math.random() < 0.5 ? 1 + Math.floor(Math.random() * 4) : 5 + Math.floor(Math.random() * 16));
const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)]!;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------------------------
// What each webhook is (as the driver saved it), and the receivers' checks against it

interface SecretSpan {
  secret: string;
  key: Buffer;
  /** Sent in a save from this time (Date.now ms)... */
  from: number;
  /** ...current until the save that replaced it was acknowledged (Infinity: still current)... */
  until: number;
  /** ...and signing beside its successor until then (a rotation's overlap; `until` when it had none). */
  prevUntil: number;
}

interface RateSpan {
  rate: number | undefined;
  from: number;
  until: number;
}

/**
 * One account's webhook as the driver saved it. Saves of an account are serialized (see {@link Workload}), so
 * their acknowledgements come in the server's order, and the server's rotation rule is replayed here: a changed
 * secret keeps the replaced one signing until the save plus the overlap, a second change drops the first, a removed
 * secret or a webhook created anew (also after DeleteWebhook) keeps none. Times are taken leniently (a new secret
 * from the moment its save is sent, an old one until its replacement is acknowledged).
 */
class HookModel {
  secret: string | undefined;
  rate: number | undefined;
  exists = false;
  lock: Promise<void> = Promise.resolve();
  readonly spans: SecretSpan[] = [];
  /** The last moment the webhook had no secret (Infinity: it has none now). */
  noSecretUntil = Number.POSITIVE_INFINITY;
  readonly rates: RateSpan[] = [{ rate: undefined, from: 0, until: Number.POSITIVE_INFINITY }];
  /** The receiver's token bucket for this endpoint (null: none checked yet, or not limited lately). */
  bucket: { tokens: number; at: number } | null = null;

  constructor(secret: string | undefined, rate: number | undefined) {
    this.secret = secret;
    this.rate = rate;
  }

  /** A save of `sent` (the secret and rate it carried), sent at `sentAt`, acknowledged at `ackAt`. */
  saved(sent: { secret: string | undefined; rate: number | undefined }, sentAt: number, ackAt: number): void {
    const created = !this.exists;
    this.exists = true;
    const current = this.spans.find((s) => s.until === Number.POSITIVE_INFINITY);
    if (current?.secret !== sent.secret) {
      for (const s of this.spans) s.prevUntil = Math.min(s.prevUntil, ackAt);
      if (current !== undefined) {
        current.until = ackAt;
        current.prevUntil = sent.secret !== undefined && !created ? ackAt + OVERLAP_MS : ackAt;
      }
      if (sent.secret === undefined) this.noSecretUntil = Number.POSITIVE_INFINITY;
      else {
        if (this.noSecretUntil === Number.POSITIVE_INFINITY) this.noSecretUntil = ackAt;
        const key = Buffer.from(sent.secret.slice('whsec_'.length), 'base64');
        this.spans.push({ secret: sent.secret, key, from: sentAt, until: Number.POSITIVE_INFINITY, prevUntil: 0 });
      }
    }
    const rate = this.rates[this.rates.length - 1]!;
    if (rate.rate !== sent.rate) {
      rate.until = ackAt;
      this.rates.push({ rate: sent.rate, from: sentAt, until: Number.POSITIVE_INFINITY });
    }
    this.#prune(ackAt);
  }

  deleted(ackAt: number): void {
    this.exists = false;
    for (const s of this.spans) {
      s.until = Math.min(s.until, ackAt);
      s.prevUntil = Math.min(Math.max(s.prevUntil, s.until), ackAt);
    }
    if (this.noSecretUntil !== Number.POSITIVE_INFINITY) this.noSecretUntil = Number.POSITIVE_INFINITY;
    const rate = this.rates[this.rates.length - 1]!;
    if (rate.rate !== undefined) {
      rate.until = ackAt;
      this.rates.push({ rate: undefined, from: ackAt, until: Number.POSITIVE_INFINITY });
    }
  }

  #prune(now: number): void {
    const old = now - OVERLAP_MS - 5 * 60_000;
    while (this.spans.length > 0 && Math.max(this.spans[0]!.until, this.spans[0]!.prevUntil) < old) this.spans.shift();
    while (this.rates.length > 1 && this.rates[0]!.until < old) this.rates.shift();
  }
}

interface Checks {
  requests: number;
  unknownAccount: number;
  signedValid: number;
  /** Valid with both the current and the previous secret (sent during a rotation's overlap). */
  signedTwice: number;
  unsignedAllowed: number;
  /** Signed, but with no secret the webhook had lately (nor in the last 5 min): a wrong signature. */
  sigWrong: number;
  /** Signed only with a secret the webhook had, but no longer current nor within its overlap. */
  sigStale: number;
  /** Unsigned while the webhook has had a secret for a while. */
  sigMissing: number;
  sigMalformed: number;
  rateChecked: number;
  rateExceeded: number;
  rateMaxOver: number;
  examples: string[];
}

function newChecks(): Checks {
  return {
    requests: 0,
    unknownAccount: 0,
    signedValid: 0,
    signedTwice: 0,
    unsignedAllowed: 0,
    sigWrong: 0,
    sigStale: 0,
    sigMissing: 0,
    sigMalformed: 0,
    rateChecked: 0,
    rateExceeded: 0,
    rateMaxOver: 0,
    examples: [],
  };
}

const checks = newChecks();
/** Every account's webhook model, by account id (the receivers' URLs end with it). */
const hooks = new Map<string, HookModel>();

function example(text: string): void {
  if (checks.examples.length < 12) checks.examples.push(`${new Date().toISOString()} ${text}`);
}

/** The rate limit an endpoint may have been sent under at `t`: the highest lately, undefined if any had none. */
function effectiveRate(hook: HookModel, t: number): number | undefined {
  let max = 0;
  for (const span of hook.rates) {
    if (span.until < t - STALE_MS || span.from > t) continue;
    if (span.rate === undefined) return undefined;
    max = Math.max(max, span.rate);
  }
  return max === 0 ? undefined : max;
}

/** At a request's arrival: at most rate at once plus rate per second after, with a small slack for bunching. */
function checkRate(account: string, hook: HookModel, t: number): void {
  const rate = effectiveRate(hook, t);
  if (rate === undefined) {
    hook.bucket = null;
    return;
  }
  const capacity = rate + Math.max(2, Math.ceil(rate * 0.2));
  const bucket = hook.bucket ?? { tokens: capacity, at: t };
  bucket.tokens = Math.min(capacity, bucket.tokens + ((t - bucket.at) * rate) / 1000);
  bucket.at = t;
  hook.bucket = bucket;
  checks.rateChecked++;
  if (bucket.tokens < 1) {
    checks.rateExceeded++;
    const over = 1 - bucket.tokens;
    checks.rateMaxOver = Math.max(checks.rateMaxOver, over);
    if (checks.rateExceeded <= 5) example(`rate exceeded: ${account} at ${rate}/s (capacity ${capacity})`);
    bucket.tokens = 0;
  } else bucket.tokens -= 1;
}

function checkSignature(account: string, hook: HookModel, t: number, req: IncomingMessage, body: Buffer): void {
  const header = req.headers['webhook-signature'];
  const id = req.headers['webhook-id'];
  const ts = req.headers['webhook-timestamp'];
  if (header === undefined) {
    if (hook.noSecretUntil >= t - STALE_MS) checks.unsignedAllowed++;
    else {
      checks.sigMissing++;
      example(`unsigned: ${account} ${String(id)}, secret since ${new Date(hook.noSecretUntil).toISOString()}`);
    }
    return;
  }
  const entries = String(header)
    .split(' ')
    .filter((e) => e.startsWith('v1,'))
    .map((e) => e.slice(3));
  if (entries.length === 0 || typeof id !== 'string' || typeof ts !== 'string' || !/^\d+$/.test(ts)) {
    checks.sigMalformed++;
    example(`malformed signature: ${account} ${String(id)} ${String(header).slice(0, 80)}`);
    return;
  }
  const matched = hook.spans.filter((span) => {
    const mac = createHmac('sha256', span.key).update(`${id}.${ts}.`).update(body).digest('base64');
    return entries.includes(mac);
  });
  const inWindow = matched.filter((s) => s.from <= t + 1_000 && (s.until >= t - STALE_MS || s.prevUntil >= t - 1_000));
  if (inWindow.length > 0) {
    checks.signedValid++;
    if (entries.length > 1 && matched.length > 1) checks.signedTwice++;
  } else if (matched.length > 0) {
    checks.sigStale++;
    const s = matched[0]!;
    example(
      `stale secret: ${account} ${id} signed with a secret current until ${new Date(s.until).toISOString()}, ` +
        `overlap until ${new Date(s.prevUntil).toISOString()}`,
    );
  } else {
    checks.sigWrong++;
    example(`wrong signature: ${account} ${id} (${entries.length} entries, ${hook.spans.length} known secrets)`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Receivers

type ReceiverName = 'ok' | 'flaky' | 'slow' | 'reset' | 'flappy';
const RECEIVER_NAMES: readonly ReceiverName[] = ['ok', 'flaky', 'slow', 'reset', 'flappy'];

interface Receiver {
  name: ReceiverName;
  port: number;
  url: string;
  counts: Record<string, number>;
  server: Server;
  sockets: Set<Socket>;
  up: boolean;
}

/**
 * The last list each contact's endpoint answered 200 to, at any receiver, by `account NUL contact`: the message ids
 * it held. A contact's lists arrive one at a time and never an older after a newer one, so the last is the newest.
 */
const lastReceived = new Map<string, Set<string>>();

const contactKey = (account: string, contact: string) => `${account}\u0000${contact}`;

/**
 * Each accepted message by id: its account, when its publish was sent, and when it has expired at the latest (the
 * server counts its TTL from a moment between the call and the answer, on this machine's clock).
 */
const published = new Map<string, { account: string; sentAt: number; expiresBy: number }>();
/** When each account's last DeleteWebhook answered OK: what it deleted may stay at the receivers (nothing to send). */
const deletedAt = new Map<string, number>();

/** Notes the list of a request answered 200 (its contact from the messages, or the header for an empty list). */
function received(account: string, req: IncomingMessage, body: Buffer): void {
  let list: Array<{ id: string; externalCustomerId: string }>;
  try {
    list = JSON.parse(body.toString('utf8')) as typeof list;
  } catch {
    return;
  }
  const header = req.headers[CONTACT_HEADER];
  const contact = list[0]?.externalCustomerId ?? (typeof header === 'string' ? decodeURIComponent(header) : '');
  lastReceived.set(contactKey(account, contact), new Set(list.map((m) => m.id)));
}

function answer(
  name: ReceiverName,
  req: IncomingMessage,
  res: ServerResponse,
  counts: Record<string, number>,
  onOk: () => void,
): void {
  const send = (status: number, headers: Record<string, string> = {}) => {
    counts[String(status)] = (counts[String(status)] ?? 0) + 1;
    if (status === 200) onOk();
    res.writeHead(status, headers).end();
  };
  const r = Math.random();
  switch (name) {
    case 'ok':
    case 'flappy':
      return send(200);
    case 'flaky':
      if (r < 0.6) return send(200);
      if (r < 0.8) return send(503, { 'retry-after': '1' });
      if (r < 0.95) return send(429, { 'retry-after': '2' });
      return send(400);
    case 'slow': {
      // The server's request timeout is 3 s: about a tenth of these time out.
      const timer = setTimeout(() => send(200), 200 + Math.random() * 3_800);
      res.on('close', () => clearTimeout(timer));
      return;
    }
    case 'reset':
      if (r < 0.5) {
        counts.reset = (counts.reset ?? 0) + 1;
        req.socket.destroy();
        return;
      }
      return send(200);
  }
}

async function listen(server: Server, port: number): Promise<number> {
  for (let i = 0; ; i++) {
    try {
      server.listen(port, '127.0.0.1');
      await once(server, 'listening');
      return (server.address() as AddressInfo).port;
    } catch (error) {
      if (i >= 50 || (error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
      await sleep(100);
    }
  }
}

async function startReceiver(name: ReceiverName): Promise<Receiver> {
  const counts: Record<string, number> = { requests: 0, bytes: 0 };
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    counts.requests!++;
    checks.requests++;
    const t = Date.now();
    const account = decodeURIComponent(/\/hook\/\w+\/([^/?]+)/.exec(req.url ?? '')?.[1] ?? '');
    const hook = hooks.get(account);
    if (hook === undefined) checks.unknownAccount++;
    else checkRate(account, hook, t);
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => {
      counts.bytes! += chunk.length;
      chunks.push(chunk);
    });
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      if (hook !== undefined) checkSignature(account, hook, t, req, body);
      answer(name, req, res, counts, () => received(account, req, body));
    });
    req.on('error', () => undefined);
  });
  server.on('connection', (socket) => {
    counts.connections = (counts.connections ?? 0) + 1;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('clientError', (_error, socket) => socket.destroy());
  const port = await listen(server, 0);
  return { name, port, url: `http://127.0.0.1:${port}/hook/${name}`, counts, server, sockets, up: true };
}

async function takeDown(receiver: Receiver): Promise<void> {
  receiver.up = false;
  const closed = new Promise<void>((resolve) => receiver.server.close(() => resolve()));
  receiver.server.closeAllConnections();
  for (const socket of receiver.sockets) socket.destroy();
  await closed;
}

async function bringUp(receiver: Receiver): Promise<void> {
  await listen(receiver.server, receiver.port);
  receiver.up = true;
}

// ---------------------------------------------------------------------------------------------------------------
// The server

interface ServerChild {
  child: ChildProcess;
  pid: number;
  address: string;
  metricsUrl: string;
  inspectorUrl: string | null;
  log: { lines: number; warn: number; error: number; sweptRows: number; lastProblems: string[] };
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function startServerChild(store: string, env: Record<string, string>, dir: string): Promise<ServerChild> {
  const args = [
    '--inspect=127.0.0.1:0',
    DIST_MAIN,
    ...['--grpc-address', '127.0.0.1:0', '--metrics-address', '127.0.0.1:0', '--store', store],
    ...['--webhook-allow-list', '127.0.0.1', '--log-level', 'info'],
    ...['--request-timeout-ms', '3000', '--lease-ms', '10000'],
    ...['--backoff-base-ms', '500', '--backoff-max-ms', '8000', '--max-attempts', '6', '--max-age-ms', '60000'],
    ...['--sweep-interval-ms', String(SWEEP_INTERVAL_MS), '--terminal-retention-ms', '60000'],
    ...['--circuit-open-after-ms', '15000', '--circuit-min-failures', '5'],
    ...['--circuit-probe-interval-ms', '3000', '--circuit-probe-max-interval-ms', '15000'],
    ...['--signing-secret-overlap-seconds', String(OVERLAP_MS / 1000)],
    ...['--max-watch-streams', '50', '--shutdown-deadline-ms', String(SHUTDOWN_DEADLINE_MS)],
  ];
  const child = spawn(process.execPath, args, {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env, NODE_OPTIONS: '' },
  });
  const exited = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  const log = { lines: 0, warn: 0, error: 0, sweptRows: 0, lastProblems: [] as string[] };
  const problem = (line: string) => {
    log.lastProblems.push(line.slice(0, 600));
    if (log.lastProblems.length > 20) log.lastProblems.shift();
  };
  let inspectorUrl: string | null = null;
  const stderrLines: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (line) => {
    const ws = /ws:\/\/\S+/.exec(line);
    if (ws && inspectorUrl === null) inspectorUrl = ws[0];
    else if (!line.includes('Debugger') && !line.includes('For help, see') && line.trim() !== '') {
      stderrLines.push(line);
      problem(`stderr: ${line}`);
    }
  });
  let started: ((v: { address: string; metrics: string }) => void) | null = null;
  const listening = new Promise<{ address: string; metrics: string }>((resolve) => (started = resolve));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    log.lines++;
    if (started !== null) {
      try {
        const entry = JSON.parse(line) as { msg?: string; address?: string; metrics?: string };
        if (entry.msg === 'gRPC server listening' && entry.address && entry.metrics) {
          started({ address: entry.address, metrics: entry.metrics });
          started = null;
        }
      } catch {
        // not JSON: kept as a problem below
      }
    }
    if (line.includes('"level":40')) {
      log.warn++;
      problem(line);
    } else if (line.includes('"level":50') || line.includes('"level":60')) {
      log.error++;
      problem(line);
    } else if (line.includes('swept expired messages')) {
      log.sweptRows += Number(/"removed":(\d+)/.exec(line)?.[1] ?? 0);
    } else if (!line.startsWith('{')) problem(line);
  });
  const first = await Promise.race([
    listening,
    exited.then(({ code }) => {
      throw new Error(`the server exited with code ${code} before listening:\n${stderrLines.join('\n')}`);
    }),
    sleep(30_000).then(() => {
      throw new Error('the server did not start in 30 s');
    }),
  ]);
  return {
    child,
    pid: child.pid!,
    address: first.address,
    metricsUrl: first.metrics,
    inspectorUrl,
    log,
    exited,
  };
}

/** A minimal Chrome DevTools Protocol client over the server's inspector (global WebSocket needed). */
class Inspector {
  #socket: WebSocket;
  #next = 1;
  #pending = new Map<number, (result: unknown) => void>();

  private constructor(socket: WebSocket) {
    this.#socket = socket;
    socket.addEventListener('message', (event) => {
      const message = JSON.parse(String(event.data)) as { id?: number; result?: unknown; error?: unknown };
      if (message.id !== undefined) {
        this.#pending.get(message.id)?.(message.error ? { error: message.error } : message.result);
        this.#pending.delete(message.id);
      }
    });
  }

  static async connect(url: string): Promise<Inspector | null> {
    const WS = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    if (WS === undefined) return null;
    const socket = new WS(url);
    await new Promise<void>((resolve, reject) => {
      socket.addEventListener('open', () => resolve());
      socket.addEventListener('error', () => reject(new Error(`cannot connect to the inspector at ${url}`)));
    });
    return new Inspector(socket);
  }

  call(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
    const id = this.#next++;
    this.#socket.send(JSON.stringify({ id, method, params }));
    return new Promise((resolve) => this.#pending.set(id, resolve));
  }

  async evaluate<T>(expression: string): Promise<T> {
    const result = (await this.call('Runtime.evaluate', { expression, returnByValue: true })) as {
      result?: { value?: T };
    };
    return result.result?.value as T;
  }

  close(): void {
    this.#socket.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// gRPC clients

type Callback<T> = (error: ServiceError | null, value?: T) => void;
function call<T>(fn: (cb: Callback<T>) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((error, value) => (error ? reject(error) : resolve(value as T))));
}

class Clients {
  readonly webhook: InstanceType<typeof WebhookServiceClient>;
  readonly message: InstanceType<typeof MessageServiceClient>;
  readonly delivery: InstanceType<typeof DeliveryServiceClient>;
  constructor(address: string) {
    const creds = credentials.createInsecure();
    this.webhook = new WebhookServiceClient(address, creds);
    const channelOverride = this.webhook.getChannel();
    this.message = new MessageServiceClient(address, creds, { channelOverride });
    this.delivery = new DeliveryServiceClient(address, creds, { channelOverride });
  }
  close(): void {
    this.delivery.close();
    this.message.close();
    this.webhook.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Workload

interface Stats {
  calls: Record<string, number>;
  errors: Record<string, number>;
  published: number;
  watchEvents: number;
  watchOpened: number;
  watchCancelled: number;
}

function codeName(error: unknown): string {
  const code = (error as { code?: number }).code;
  return code === undefined ? `no code: ${String(error).slice(0, 100)}` : String(code);
}

class Workload {
  /** Secret and rate-limit changes made, by kind. */
  readonly rotations: Record<string, number> = {};
  readonly stats: Stats = { calls: {}, errors: {}, published: 0, watchEvents: 0, watchOpened: 0, watchCancelled: 0 };
  readonly #clients: Clients;
  readonly #receivers: Receiver[];
  readonly #accounts: string[];
  /** Accounts with a webhook right now (publishes go only to those, but for a few on purpose). */
  readonly #live = new Set<string>();
  /** Recent delivery ids, a bounded ring. */
  readonly #recentIds: string[] = [];
  readonly #watches = new Set<ClientReadableStream<WatchDeliveriesResponse>>();
  readonly #loops: Array<{ timer: NodeJS.Timeout | null }> = [];
  /** Calls under way, waited for by {@link stop} (so that none meets the server's shutdown). */
  readonly #inFlight = new Set<Promise<unknown>>();
  #stopped = false;
  #ephemeral = 0;

  constructor(clients: Clients, receivers: Receiver[]) {
    this.#clients = clients;
    this.#receivers = receivers;
    this.#accounts = Array.from({ length: ACCOUNTS }, (_, i) => `soak-${String(i).padStart(2, '0')}`);
  }

  /** `force`: made after {@link stop} too (the end-of-run check's own calls; the workload's return null then). */
  async #rpc<T>(name: string, fn: () => Promise<T>, expectError = false, force = false): Promise<T | null> {
    if (this.#stopped && !force) return null;
    this.#count(this.stats.calls, name);
    const running = fn();
    this.#inFlight.add(running);
    try {
      return await running;
    } catch (error) {
      const key = `${name}:${codeName(error)}${expectError ? ' (expected)' : ''}`;
      this.#count(this.stats.errors, key);
      return null;
    } finally {
      this.#inFlight.delete(running);
    }
  }

  #receiverFor(account: string): Receiver {
    const index = Number(/\d+$/.exec(account)?.[0] ?? 0);
    return this.#receivers[index % this.#receivers.length]!;
  }

  #hook(account: string): HookModel {
    let hook = hooks.get(account);
    if (hook === undefined) {
      // About 40% of the webhooks sign, a third of them are rate-limited (1-20/s); short-lived ones are not limited.
      const secret = Math.random() < 0.4 ? newSecret() : undefined;
      const rate = !account.includes('eph') && Math.random() < 0.33 ? newRate() : undefined;
      hook = new HookModel(secret, rate);
      hooks.set(account, hook);
    }
    return hook;
  }

  /**
   * A save of the account's webhook (UpsertWebhook, UpdateWebhook, DeleteWebhook), one at a time per account, so
   * that the model replays them in the server's order. `change` updates the model's intent before the call and
   * the result says whether the save was made.
   */
  async #save(
    account: string,
    name: string,
    send: (sent: { secret: string | undefined; rate: number | undefined }) => Promise<unknown>,
    force = false,
  ): Promise<boolean> {
    const hook = this.#hook(account);
    const previous = hook.lock;
    let done!: () => void;
    hook.lock = new Promise<void>((resolve) => (done = resolve));
    await previous;
    try {
      const sent = { secret: hook.secret, rate: hook.rate };
      const sentAt = Date.now();
      const response = await this.#rpc(name, () => send(sent), false, force);
      if (response === null) return false;
      if (name === 'DeleteWebhook') {
        hook.deleted(Date.now());
        deletedAt.set(account, Date.now());
      } else hook.saved(sent, sentAt, Date.now());
      return true;
    } finally {
      done();
    }
  }

  #upsert(account: string, receiver: Receiver, enabled = true, force = false): Promise<boolean> {
    return this.#save(
      account,
      'UpsertWebhook',
      (hook) =>
        call((cb) =>
          this.#clients.webhook.upsertWebhook(
            {
              accountId: account,
              url: `${receiver.url}/${account}`,
              basicAuth: Math.random() < 0.5 ? { username: 'soak', password: 'pw' } : undefined,
              enabled,
              signingSecret: hook.secret ?? '',
              maxMessagesPerContact: MAX_MESSAGES_PER_CONTACT,
              rateLimitPerSecond: hook.rate,
              headers: {},
            },
            cb,
          ),
        ),
      force,
    );
  }

  #delete(account: string): Promise<boolean> {
    return this.#save(account, 'DeleteWebhook', () =>
      call((cb) => this.#clients.webhook.deleteWebhook({ accountId: account }, cb)),
    );
  }

  /** UpdateWebhook of one field: the signing secret or the rate limit, as the model now says. */
  #update(account: string, field: 'signing_secret' | 'rate_limit_per_second'): Promise<boolean> {
    return this.#save(account, 'UpdateWebhook', (hook) =>
      call((cb) =>
        this.#clients.webhook.updateWebhook(
          {
            accountId: account,
            updateMask: [field],
            url: '',
            basicAuth: undefined,
            signingSecret: hook.secret ?? '',
            rateLimitPerSecond: hook.rate,
            headers: {},
          },
          cb,
        ),
      ),
    );
  }

  async setUp(): Promise<void> {
    for (const account of this.#accounts) {
      await this.#upsert(account, this.#receiverFor(account));
      this.#live.add(account);
    }
  }

  #messages(count: number): InboxMessage[] {
    const now = Date.now();
    return Array.from({ length: count }, (_, i) => ({
      externalCustomerId: i % 97 === 0 ? '' : `c-${Math.floor(Math.random() * CONTACTS)}`,
      id: randomUUID(),
      createdDate: now - Math.floor(Math.random() * 60_000),
      title: `soak ${i}`,
      content: 'x'.repeat(50 + Math.floor(Math.random() * 400)),
      category: pick(['news', 'promo', 'alert']),
      customData: Math.random() < 0.2 ? JSON.stringify({ n: i, at: now }) : undefined,
      ttlSeconds: 30 + Math.floor(Math.random() * 150),
    }));
  }

  async #publish(account: string, count: number): Promise<void> {
    const messages = this.#messages(count);
    const sentAt = Date.now();
    const response = await this.#rpc(
      'PublishMessages',
      () =>
        call<{ accepted: number; deliveries: Array<{ deliveryId: string }> }>((cb) =>
          this.#clients.message.publishMessages({ accountId: account, messages }, cb),
        ),
      !this.#live.has(account),
    );
    if (response === null) return;
    const answeredAt = Date.now();
    for (const m of messages) {
      if (m.externalCustomerId === '') continue;
      published.set(m.id, { account, sentAt, expiresBy: answeredAt + m.ttlSeconds! * 1000 });
    }
    this.stats.published += response.accepted;
    for (const d of response.deliveries.slice(0, 3)) this.#recentIds.push(d.deliveryId);
    if (this.#recentIds.length > 500) this.#recentIds.splice(0, this.#recentIds.length - 500);
  }

  /** Runs `task` every `ms` (with ±25% jitter), never two at once, until {@link stop}. */
  #every(ms: number, task: () => Promise<void>): void {
    let running = false;
    const loop = { timer: null as NodeJS.Timeout | null };
    this.#loops.push(loop);
    const tick = () => {
      loop.timer = setTimeout(
        () => {
          if (this.#stopped) return;
          if (!running) {
            running = true;
            task()
              .catch((error: unknown) => this.#count(this.stats.errors, `driver: ${String(error)}`))
              .finally(() => {
                running = false;
              });
          }
          tick();
        },
        ms * (0.75 + Math.random() * 0.5),
      );
    };
    tick();
  }

  #count(counts: Record<string, number>, key: string): void {
    counts[key] = (counts[key] ?? 0) + 1;
  }

  start(): void {
    // Publishes: batches of 1-100 messages (mean 25), at RATE messages/s.
    const batchMean = 25;
    const inFlight = { n: 0 };
    this.#every((1000 * batchMean) / RATE, async () => {
      if (inFlight.n >= 8) return;
      inFlight.n++;
      try {
        const live = [...this.#live];
        // A few go to an account without a webhook (just deleted): FAILED_PRECONDITION.
        const account = Math.random() < 0.02 ? pick(this.#accounts) : pick(live);
        await this.#publish(account, 1 + Math.floor(Math.random() * (2 * batchMean - 1)));
      } finally {
        inFlight.n--;
      }
    });
    // Webhook changes: disable for a while, move to another receiver, back.
    this.#every(4_000, async () => {
      const account = pick([...this.#live]);
      const r = Math.random();
      if (r < 0.3) {
        await this.#upsert(account, this.#receiverFor(account), false);
        await sleep(5_000 + Math.random() * 10_000);
        if (this.#live.has(account)) await this.#upsert(account, this.#receiverFor(account), true);
      } else if (r < 0.6) {
        await this.#upsert(account, pick(this.#receivers));
        await sleep(10_000);
        if (this.#live.has(account)) await this.#upsert(account, this.#receiverFor(account));
      } else {
        await this.#rpc('GetWebhook', () => call((cb) => this.#clients.webhook.getWebhook({ accountId: account }, cb)));
      }
    });
    // Signing secrets rotated (now and then added or removed) and rate limits changed, added or removed, with
    // UpdateWebhook or a whole UpsertWebhook, as an operator would: about 15 changes a minute.
    this.#every(4_000, async () => {
      const account = pick([...this.#live]);
      const hook = this.#hook(account);
      const r = Math.random();
      if (r < 0.55) {
        const before = hook.secret;
        if (before === undefined) hook.secret = newSecret();
        else hook.secret = Math.random() < 0.1 ? undefined : newSecret();
        const kind = before === undefined ? 'added' : hook.secret === undefined ? 'removed' : 'rotated';
        this.#count(this.rotations, `secret ${kind}`);
      } else {
        const before = hook.rate;
        hook.rate = before === undefined || Math.random() < 0.7 ? newRate() : undefined;
        const kind = before === undefined ? 'added' : hook.rate === undefined ? 'removed' : 'changed';
        this.#count(this.rotations, `rate ${kind}`);
      }
      if (Math.random() < 0.7) await this.#update(account, r < 0.55 ? 'signing_secret' : 'rate_limit_per_second');
      else if (this.#live.has(account)) await this.#upsert(account, this.#receiverFor(account));
    });
    // DeleteWebhook and create again.
    this.#every(15_000, async () => {
      const account = pick([...this.#live]);
      this.#live.delete(account);
      await this.#delete(account);
      await sleep(3_000);
      await this.#upsert(account, this.#receiverFor(account));
      this.#live.add(account);
    });
    // Short-lived accounts (a new id each time): created, published to (failing endpoint), deleted.
    this.#every(20_000, async () => {
      const account = `soak-eph-${this.#ephemeral++}`;
      const name = Math.random() < 0.5 ? 'flaky' : 'reset';
      const flaky = this.#receivers.find((r) => r.name === name)!;
      await this.#upsert(account, flaky);
      for (let i = 0; i < 5; i++) {
        await this.#publish(account, 20);
        await sleep(2_000);
      }
      await this.#delete(account);
    });
    // ResyncContacts: some contacts, now and then all.
    this.#every(6_000, async () => {
      const account = pick([...this.#live]);
      const all = Math.random() < 0.15;
      await this.#rpc('ResyncContacts', () =>
        call((cb) =>
          this.#clients.message.resyncContacts(
            {
              accountId: account,
              all,
              externalCustomerIds: all
                ? []
                : Array.from({ length: 10 }, () => `c-${Math.floor(Math.random() * CONTACTS)}`),
            },
            cb,
          ),
        ),
      );
    });
    // RetryDelivery of failed deliveries.
    this.#every(3_000, async () => {
      const account = pick([...this.#live]);
      const page = await this.#rpc('ListDeliveries', () =>
        call<{ deliveries: Delivery[] }>((cb) =>
          this.#clients.delivery.listDeliveries(
            {
              accountId: account,
              states: [DeliveryState.DELIVERY_STATE_FAILED],
              pageSize: 5,
              externalCustomerId: '',
              pageToken: '',
            },
            cb,
          ),
        ),
      );
      for (const d of page?.deliveries.slice(0, 3) ?? []) {
        await this.#rpc('RetryDelivery', () =>
          call((cb) => this.#clients.delivery.retryDelivery({ deliveryId: d.id }, cb)),
        );
      }
    });
    // Reads.
    this.#every(500, async () => {
      if (this.#recentIds.length > 0) {
        // Some were deleted with their account, or swept: NOT_FOUND is expected then.
        await this.#rpc(
          'GetDelivery',
          () =>
            call((cb) =>
              this.#clients.delivery.getDelivery(
                { deliveryId: pick(this.#recentIds), includeBody: Math.random() < 0.3 },
                cb,
              ),
            ),
          true,
        );
      }
      let token = '';
      const account = pick(this.#accounts);
      for (let i = 0; i < 3; i++) {
        const page = await this.#rpc('ListDeliveries', () =>
          call<{ nextPageToken: string }>((cb) =>
            this.#clients.delivery.listDeliveries(
              { accountId: account, externalCustomerId: '', states: [], pageSize: 20, pageToken: token },
              cb,
            ),
          ),
        );
        token = page?.nextPageToken ?? '';
        if (token === '') break;
      }
    });
    // WatchDeliveries streams: about 6 open, one cancelled and another opened every few seconds.
    for (let i = 0; i < 6; i++) this.#openWatch();
    this.#every(3_000, async () => {
      const victim = pick([...this.#watches]);
      if (victim !== undefined) {
        this.#watches.delete(victim);
        victim.cancel();
        this.stats.watchCancelled++;
      }
      this.#openWatch();
    });
    // Invalid requests.
    this.#every(5_000, async () => {
      const account = pick(this.#accounts);
      await this.#rpc(
        'invalid PublishMessages',
        () =>
          call((cb) =>
            this.#clients.message.publishMessages(
              { accountId: account, messages: [{ ...this.#messages(1)[0]!, id: 'not-a-uuid' }] },
              cb,
            ),
          ),
        true,
      );
      await this.#rpc(
        'invalid UpsertWebhook',
        () =>
          call((cb) =>
            this.#clients.webhook.upsertWebhook(
              { accountId: account, url: 'ftp://nowhere', basicAuth: undefined, signingSecret: '', headers: {} },
              cb,
            ),
          ),
        true,
      );
      await this.#rpc(
        'invalid GetDelivery',
        () => call((cb) => this.#clients.delivery.getDelivery({ deliveryId: randomUUID(), includeBody: false }, cb)),
        true,
      );
      await this.#rpc(
        'invalid ListDeliveries',
        () =>
          call((cb) =>
            this.#clients.delivery.listDeliveries(
              { accountId: account, externalCustomerId: '', states: [], pageSize: 10, pageToken: 'garbage' },
              cb,
            ),
          ),
        true,
      );
      await this.#rpc(
        'invalid RetryDelivery',
        () => call((cb) => this.#clients.delivery.retryDelivery({ deliveryId: randomUUID() }, cb)),
        true,
      );
    });
  }

  #openWatch(): void {
    if (this.#stopped) return;
    const accountId = Math.random() < 0.5 ? '' : pick(this.#accounts);
    const stream = this.#clients.delivery.watchDeliveries({ accountId });
    this.stats.watchOpened++;
    this.#watches.add(stream);
    stream.on('data', () => this.stats.watchEvents++);
    stream.on('error', (error: ServiceError) => {
      this.#watches.delete(stream);
      // 1 = CANCELLED: ours.
      if (error.code !== 1) this.#count(this.stats.errors, `WatchDeliveries:${error.code}`);
    });
    stream.on('end', () => this.#watches.delete(stream));
  }

  /**
   * After {@link stop}: every account that has a webhook now is saved enabled, without a rate limit, its secret kept,
   * pointing at `receiver` (the end-of-run check's `ok`), so that whatever it still has due is sent there. A webhook
   * deleted by the workload and not created again has no messages left. The accounts moved.
   */
  async moveAllTo(receiver: Receiver): Promise<string[]> {
    const moved: string[] = [];
    for (const account of [...this.#live].sort()) {
      this.#hook(account).rate = undefined;
      if (await this.#upsert(account, receiver, true, true)) moved.push(account);
      else throw new Error(`the end-of-run check could not save the webhook of ${account}`);
    }
    return moved;
  }

  /** ResyncContacts of every contact of each of `accounts` (after {@link stop}). */
  async resyncAll(accounts: readonly string[]): Promise<void> {
    for (const account of accounts) {
      const done = await this.#rpc(
        'ResyncContacts',
        () =>
          call((cb) =>
            this.#clients.message.resyncContacts({ accountId: account, all: true, externalCustomerIds: [] }, cb),
          ),
        false,
        true,
      );
      if (done === null) throw new Error(`the end-of-run check could not resync ${account}`);
    }
  }

  /** Stops every loop, cancels the streams, and waits (at most 10 s) for the calls under way. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const loop of this.#loops) if (loop.timer !== null) clearTimeout(loop.timer);
    for (const stream of this.#watches) stream.cancel();
    this.#watches.clear();
    await Promise.race([Promise.allSettled([...this.#inFlight]), sleep(10_000)]);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Sampling

interface Sample {
  t: number;
  rssMiB: number;
  heapUsedMiB: number;
  heapAfterGcMiB: number | null;
  externalMiB: number | null;
  cpuPct: number;
  fds: number;
  sockets: number;
  handles: Record<string, number> | null;
  lagP99Ms: number;
  storeMiB: number;
  walMiB: number;
  byState: Record<string, number>;
  messages: number | null;
  series: number;
  accountSeries: number;
  accountLabels: number;
  deleteCalls: number;
  received: Record<string, number>;
  published: number;
  watchEvents: number;
  /** Signature violations so far (wrong, stale, missing, malformed) and requests over a rate limit. */
  sigBad: number;
  rateBad: number;
}

function procStatusKiB(pid: number, field: string): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  } catch {
    return Number.NaN;
  }
}

function fdCounts(pid: number): { fds: number; sockets: number } {
  let fds = 0;
  let sockets = 0;
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      fds++;
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) sockets++;
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    return { fds: Number.NaN, sockets: Number.NaN };
  }
  return { fds, sockets };
}

function fileMiB(path: string): number {
  try {
    return statSync(path).size / 2 ** 20;
  } catch {
    return 0;
  }
}

function metricValue(text: string, name: string, labels = ''): number {
  const escaped = `${name}${labels}`.replace(/[{}"=.]/g, (c) => `\\${c}`);
  const match = new RegExp(`^${escaped} (\\S+)$`, 'm').exec(text);
  return match ? Number(match[1]) : Number.NaN;
}

// ---------------------------------------------------------------------------------------------------------------
// Main

// ---------------------------------------------------------------------------------------------------------------
// The end-of-run check of lost messages

/** What the check reads from the store: the server's own tables, read-only. */
interface StoreView {
  /** Deliveries of `accounts` not finished yet (pending, in flight or retrying). */
  unfinished(accounts: readonly string[]): Promise<number>;
  /** Message ids of `accounts` not expired at `now`, by contact key. */
  liveMessages(accounts: readonly string[], now: number): Promise<Map<string, string[]>>;
  /** The state of each contact's newest delivery of `accounts`, by contact key. */
  newestStates(accounts: readonly string[]): Promise<Map<string, string>>;
}

/** The rows of one query of the server's SQLite file, opened read-only beside the server for that query alone. */
function readSqlite<T>(path: string, sql: string, params: unknown[] = []): T[] {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all(...params) as T[];
  } finally {
    db.close();
  }
}

function sqliteView(path: string): StoreView {
  /** The accounts as one JSON array parameter, for `json_each`. */
  const inAccounts = (accounts: readonly string[]) => JSON.stringify(accounts);
  return {
    async unfinished(accounts) {
      const [row] = readSqlite<{ n: number }>(
        path,
        `SELECT count(*) AS n FROM deliveries d JOIN accounts a USING (account_key)
         WHERE d.state IN ('pending', 'in_flight', 'retrying') AND a.account_id IN (SELECT value FROM json_each(?))`,
        [inAccounts(accounts)],
      );
      return row!.n;
    },
    async liveMessages(accounts, now) {
      const rows = readSqlite<{ account_id: string; external_customer_id: string; id: string }>(
        path,
        `SELECT a.account_id, m.external_customer_id, m.id FROM messages m JOIN accounts a USING (account_key)
         WHERE m.expires_at > ? AND a.account_id IN (SELECT value FROM json_each(?))`,
        [now, inAccounts(accounts)],
      );
      return byContact(rows);
    },
    async newestStates(accounts) {
      const rows = readSqlite<{ account_id: string; external_customer_id: string; state: string }>(
        path,
        `SELECT a.account_id, d.external_customer_id, d.state FROM deliveries d JOIN accounts a USING (account_key)
         WHERE d.seq IN (SELECT max(seq) FROM deliveries GROUP BY account_key, external_customer_id)
           AND a.account_id IN (SELECT value FROM json_each(?))`,
        [inAccounts(accounts)],
      );
      return new Map(rows.map((r) => [contactKey(r.account_id, r.external_customer_id), r.state]));
    },
  };
}

function postgresView(client: pg.Client): StoreView {
  return {
    async unfinished(accounts) {
      const { rows } = await client.query<{ n: string }>(
        `SELECT count(*) AS n FROM deliveries WHERE state IN ('pending', 'in_flight', 'retrying')
           AND account_id = ANY($1::text[])`,
        [accounts],
      );
      return Number(rows[0]!.n);
    },
    async liveMessages(accounts, now) {
      const { rows } = await client.query<{ account_id: string; external_customer_id: string; id: string }>(
        'SELECT account_id, external_customer_id, id FROM messages WHERE expires_at > $1 AND account_id = ANY($2::text[])',
        [now, accounts],
      );
      return byContact(rows);
    },
    async newestStates(accounts) {
      const { rows } = await client.query<{ account_id: string; external_customer_id: string; state: string }>(
        `SELECT DISTINCT ON (account_id, external_customer_id) account_id, external_customer_id, state
         FROM deliveries WHERE account_id = ANY($1::text[]) ORDER BY account_id, external_customer_id, seq DESC`,
        [accounts],
      );
      return new Map(rows.map((r) => [contactKey(r.account_id, r.external_customer_id), r.state]));
    },
  };
}

function byContact(rows: Array<{ account_id: string; external_customer_id: string; id: string }>) {
  const out = new Map<string, string[]>();
  for (const r of rows) {
    const key = contactKey(r.account_id, r.external_customer_id);
    const ids = out.get(key) ?? [];
    ids.push(r.id);
    out.set(key, ids);
  }
  return out;
}

/**
 * Each contact of the checked accounts that has live messages: `complete` when the last list its endpoint answered
 * 200 to holds every one of them; otherwise by the state of its newest delivery: `failed` (given up, kept for
 * replay: not lost), `unfinished` (still due), `noDelivery` (none left: swept after the terminal retention, or never
 * made) and `lost` (its newest delivery was sent and answered, yet the receivers never got these messages).
 */
interface LossReport {
  contacts: number;
  complete: number;
  overCap: number;
  failed: number;
  unfinished: number;
  noDelivery: number;
  lost: number;
  drainMs: number;
  examples: string[];
}

async function waitForDrain(view: StoreView, accounts: readonly string[]): Promise<number> {
  const started = Date.now();
  while (Date.now() - started < DRAIN_TIMEOUT_MS) {
    if ((await view.unfinished(accounts)) === 0) break;
    await sleep(1_000);
  }
  return Date.now() - started;
}

async function lossCheck(view: StoreView, accounts: readonly string[], drainMs: number): Promise<LossReport> {
  const live = await view.liveMessages(accounts, Date.now());
  const states = await view.newestStates(accounts);
  const report: LossReport = {
    contacts: live.size,
    complete: 0,
    overCap: 0,
    failed: 0,
    unfinished: 0,
    noDelivery: 0,
    lost: 0,
    drainMs,
    examples: [],
  };
  for (const [key, ids] of live) {
    if (ids.length > MAX_MESSAGES_PER_CONTACT) {
      report.overCap++;
      continue;
    }
    const got = lastReceived.get(key);
    const missing = ids.filter((id) => got?.has(id) !== true);
    if (missing.length === 0) {
      report.complete++;
      continue;
    }
    const state = states.get(key);
    if (state === 'failed') report.failed++;
    else if (state === 'pending' || state === 'in_flight' || state === 'retrying') report.unfinished++;
    else if (state === undefined) report.noDelivery++;
    else {
      report.lost++;
      if (report.examples.length < 5) {
        report.examples.push(
          `${key.replace('\u0000', ' / ')}: newest delivery ${state}, ${missing.length} of ${ids.length} live ` +
            `messages never received (last list received: ${got === undefined ? 'none' : `${got.size} messages`})`,
        );
      }
    }
  }
  return report;
}

/**
 * The end-of-run check that expiry reaches the receivers (`--refresh-on-expiry`): among the last lists the endpoints
 * of `accounts` answered 200 to, those holding a message that had expired by `cutoff` (and that no DeleteWebhook
 * removed since its publish). A sweep interval after `cutoff`, with the queues drained, each such contact's newest
 * delivery must have failed (a 400, or out of retries: kept for replay) or be gone (`noDelivery`: swept after the
 * terminal retention, which cannot tell), as the loss check counts them; `stale` counts the others.
 */
function staleCheck(
  accounts: readonly string[],
  cutoff: number,
  states: ReadonlyMap<string, string>,
): { lists: number; failed: number; noDelivery: number; stale: number; examples: string[] } {
  const checked = new Set(accounts);
  const report = { lists: 0, failed: 0, noDelivery: 0, stale: 0, examples: [] as string[] };
  for (const [key, ids] of lastReceived) {
    const account = key.slice(0, key.indexOf('\u0000'));
    if (!checked.has(account)) continue;
    report.lists++;
    const expired = [...ids].filter((id) => {
      const m = published.get(id);
      return m !== undefined && m.expiresBy < cutoff && m.sentAt > (deletedAt.get(account) ?? 0);
    });
    if (expired.length === 0) continue;
    const state = states.get(key);
    if (state === 'failed' || state === undefined) {
      if (state === 'failed') report.failed++;
      else report.noDelivery++;
      continue;
    }
    report.stale++;
    if (report.examples.length < 5) {
      report.examples.push(
        `${key.replace('\u0000', ' / ')}: ${expired.length} of ${ids.size} messages expired, newest delivery ${state}`,
      );
    }
  }
  return report;
}

const describeLoss = (r: LossReport) =>
  `${r.contacts} contacts with live messages: ${r.complete} complete, ${r.failed} failed (kept for replay), ` +
  `${r.unfinished} unfinished, ${r.noDelivery} without a delivery, ${r.lost} LOST, ${r.overCap} over the cap ` +
  `(not checked); drained in ${(r.drainMs / 1000).toFixed(1)} s`;

async function main(): Promise<void> {
  if (!opts['skip-build']) {
    process.stdout.write('Building (nx run @app-inbox/grpc-server:build)...\n');
    execFileSync('npx', ['nx', 'run', '@app-inbox/grpc-server:build'], { cwd: PACKAGE_DIR, stdio: 'ignore' });
  }
  const dir = mkdtempSync(join(tmpdir(), 'app-inbox-soak-'));
  let store: string;
  let dbPath: string | null = null;
  let pgAdmin: { url: string; database: string } | null = null;
  let pgClient: pg.Client | null = null;
  const env: Record<string, string> = {};
  if (opts.pg !== undefined) {
    const database = `app_inbox_soak_${Date.now()}`;
    const admin = new pg.Client({ connectionString: opts.pg });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${database}`);
    await admin.end();
    const url = new URL(opts.pg);
    url.pathname = `/${database}`;
    store = url.toString();
    pgAdmin = { url: opts.pg, database };
    env.APP_INBOX_SECRET_KEYS = `k1:${randomBytes(32).toString('base64')}`;
  } else {
    dbPath = join(dir, 'soak.db');
    store = dbPath;
  }

  const receivers: Receiver[] = [];
  for (const name of RECEIVER_NAMES) receivers.push(await startReceiver(name));
  const server = await startServerChild(store, env, dir);
  const inspector = server.inspectorUrl ? await Inspector.connect(server.inspectorUrl) : null;
  if (pgAdmin !== null) {
    pgClient = new pg.Client({ connectionString: store });
    await pgClient.connect();
  }
  const clients = new Clients(server.address);
  const workload = new Workload(clients, receivers);
  const flappy = receivers.find((r) => r.name === 'flappy')!;

  process.stdout.write(
    `Soak: ${MINUTES} min on ${pgAdmin ? `PostgreSQL (database ${pgAdmin.database})` : `SQLite (${dbPath})`}, ` +
      `server pid ${server.pid}, gRPC ${server.address}, metrics ${server.metricsUrl}, ` +
      `${ACCOUNTS} accounts x ${CONTACTS} contacts, ${RATE} messages/s, sample every ${SAMPLE_MS / 1000} s` +
      `${inspector ? '' : ' (no global WebSocket: heap after GC not measured; run with --experimental-websocket)'}\n`,
  );

  const samples: Sample[] = [];
  const startedAt = Date.now();
  // This process's own delays bunch the requests it reads (and so the rate check): reported at the end.
  const driverLag = monitorEventLoopDelay({ resolution: 10 });
  driverLag.enable();
  let lastCpu = { at: Date.now(), ms: processCpuMs(server.pid) };
  const deleteCalls = () => workload.stats.calls.DeleteWebhook ?? 0;

  const sample = async (): Promise<Sample> => {
    const text = await (await fetch(server.metricsUrl)).text();
    const byState: Record<string, number> = {};
    for (const m of text.matchAll(/^delivery_queue_depth\{state="(\w+)"\} (\S+)$/gm)) byState[m[1]!] = Number(m[2]);
    const seriesLines = text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
    const accountLines = seriesLines.filter((l) => l.includes('account="'));
    const accountLabels = new Set(accountLines.map((l) => /account="([^"]*)"/.exec(l)![1]));
    let heapAfterGcMiB: number | null = null;
    let externalMiB: number | null = null;
    let handles: Record<string, number> | null = null;
    if (inspector) {
      await inspector.call('HeapProfiler.enable');
      await inspector.call('HeapProfiler.collectGarbage');
      const mem = await inspector.evaluate<{ heapUsed: number; external: number; handles: Record<string, number> }>(
        `(() => { const m = process.memoryUsage(); const h = {}; for (const r of process.getActiveResourcesInfo()) h[r] = (h[r] ?? 0) + 1; return { heapUsed: m.heapUsed, external: m.external, handles: h }; })()`,
      );
      heapAfterGcMiB = mem.heapUsed / 2 ** 20;
      externalMiB = mem.external / 2 ** 20;
      handles = mem.handles;
    }
    let messages: number | null = null;
    let storeMiB = 0;
    let walMiB = 0;
    if (dbPath !== null) {
      storeMiB = fileMiB(dbPath);
      walMiB = fileMiB(`${dbPath}-wal`);
      messages = readSqlite<{ n: number }>(dbPath, 'SELECT count(*) AS n FROM messages')[0]!.n;
    } else if (pgClient !== null) {
      const r = await pgClient.query<{ size: string; n: string }>(
        'SELECT pg_database_size(current_database()) AS size, (SELECT count(*) FROM messages) AS n',
      );
      storeMiB = Number(r.rows[0]!.size) / 2 ** 20;
      messages = Number(r.rows[0]!.n);
    }
    const cpu = { at: Date.now(), ms: processCpuMs(server.pid) };
    const cpuPct = ((cpu.ms - lastCpu.ms) / (cpu.at - lastCpu.at)) * 100;
    lastCpu = cpu;
    const received: Record<string, number> = {};
    for (const r of receivers) received[r.name] = r.counts.requests ?? 0;
    return {
      t: Math.round((Date.now() - startedAt) / 1000),
      rssMiB: procStatusKiB(server.pid, 'VmRSS') / 1024,
      heapUsedMiB: metricValue(text, 'nodejs_heap_size_used_bytes') / 2 ** 20,
      heapAfterGcMiB,
      externalMiB,
      cpuPct,
      ...fdCounts(server.pid),
      handles,
      lagP99Ms: metricValue(text, 'nodejs_eventloop_lag_p99_seconds') * 1000,
      storeMiB,
      walMiB,
      byState,
      messages,
      series: seriesLines.length,
      accountSeries: accountLines.length,
      accountLabels: accountLabels.size,
      deleteCalls: deleteCalls(),
      received,
      published: workload.stats.published,
      watchEvents: workload.stats.watchEvents,
      sigBad: checks.sigWrong + checks.sigStale + checks.sigMissing + checks.sigMalformed,
      rateBad: checks.rateExceeded,
    };
  };

  const header =
    '    t   rss  heap  gc-heap  cpu%  fds sock  lag99   db   wal  msgs   pend infl retr  deliv fail  supd series acct  recv sig! rate!';
  const row = (s: Sample) =>
    [
      String(s.t).padStart(5),
      s.rssMiB.toFixed(0).padStart(5),
      s.heapUsedMiB.toFixed(0).padStart(5),
      (s.heapAfterGcMiB?.toFixed(1) ?? '-').padStart(8),
      s.cpuPct.toFixed(0).padStart(5),
      String(s.fds).padStart(4),
      String(s.sockets).padStart(4),
      s.lagP99Ms.toFixed(1).padStart(6),
      s.storeMiB.toFixed(1).padStart(5),
      s.walMiB.toFixed(1).padStart(5),
      String(s.messages ?? '-').padStart(5),
      ...['pending', 'in_flight', 'retrying'].map((k, i) => String(s.byState[k] ?? 0).padStart(i === 0 ? 6 : 4)),
      ...['delivered', 'failed', 'superseded'].map((k, i) => String(s.byState[k] ?? 0).padStart(i === 0 ? 6 : 5)),
      String(s.series).padStart(6),
      String(s.accountLabels).padStart(4),
      String(Object.values(s.received).reduce((a, b) => a + b, 0)).padStart(6),
      String(s.sigBad).padStart(4),
      String(s.rateBad).padStart(5),
    ].join(' ');

  let failed = false;
  try {
    await workload.setUp();
    samples.push(await sample());
    process.stdout.write(`${header}\n${row(samples[0]!)}\n`);
    workload.start();
    const flap = async () => {
      // flappy: up 40 s, down 20 s.
      await sleep(40_000);
      while (Date.now() - startedAt < MINUTES * 60_000) {
        await takeDown(flappy);
        await sleep(20_000);
        await bringUp(flappy);
        await sleep(40_000);
      }
    };
    const flapping = flap();
    void flapping.catch(() => undefined);
    const endAt = startedAt + MINUTES * 60_000;
    while (Date.now() < endAt) {
      await sleep(Math.min(SAMPLE_MS, Math.max(0, endAt - Date.now())));
      const s = await sample();
      samples.push(s);
      process.stdout.write(`${row(s)}\n`);
      if (server.child.exitCode !== null) throw new Error(`the server exited (code ${server.child.exitCode})`);
    }
  } catch (error) {
    failed = true;
    process.stderr.write(`soak: ${String(error)}\n`);
  } finally {
    await workload.stop();
    if (!flappy.up) await bringUp(flappy).catch(() => undefined);
  }

  // The end-of-run check of lost messages (see LossReport): every live endpoint moved to `ok`, its queue drained;
  // then every contact resynced and drained again, after which each contact with live messages must have them all.
  let loss: { afterRun: LossReport; afterResync: LossReport } | null = null;
  if (!failed) {
    try {
      const view = dbPath !== null ? sqliteView(dbPath) : postgresView(pgClient!);
      const ok = receivers.find((r) => r.name === 'ok')!;
      const accounts = await workload.moveAllTo(ok);
      const afterRun = await lossCheck(view, accounts, await waitForDrain(view, accounts));
      process.stdout.write(`\nLoss check, the run's own deliveries: ${describeLoss(afterRun)}\n`);
      // Expiry: a sweep interval on, whatever had expired before it must have left the lists (its contacts sent
      // their lists again, drained to `ok`).
      const cutoff = Date.now();
      await sleep(SWEEP_INTERVAL_MS + 2_000);
      await waitForDrain(view, accounts);
      const expiry = staleCheck(accounts, cutoff, await view.newestStates(accounts));
      process.stdout.write(
        `Expiry check: ${expiry.lists} contacts' last lists; holding a message expired over a sweep interval ago: ` +
          `${expiry.failed} whose newest delivery failed (kept for replay), ${expiry.noDelivery} without a delivery, ` +
          `${expiry.stale} STALE\n`,
      );
      for (const example of expiry.examples) process.stdout.write(`  ${example}\n`);
      if (expiry.stale > 0) failed = true;
      await workload.resyncAll(accounts);
      const afterResync = await lossCheck(view, accounts, await waitForDrain(view, accounts));
      process.stdout.write(`Loss check, after ResyncContacts of every contact: ${describeLoss(afterResync)}\n`);
      for (const example of [...afterRun.examples, ...afterResync.examples]) process.stdout.write(`  ${example}\n`);
      loss = { afterRun, afterResync };
      const incomplete = afterResync.contacts - afterResync.complete - afterResync.overCap;
      if (afterRun.lost > 0 || incomplete > 0) failed = true;
    } catch (error) {
      failed = true;
      process.stderr.write(`soak: the loss check broke: ${String(error)}\n`);
    }
  }

  // Stop: SIGTERM, and the time to exit.
  const signalAt = Date.now();
  inspector?.close();
  server.child.kill('SIGTERM');
  const killTimer = setTimeout(() => server.child.kill('SIGKILL'), SHUTDOWN_DEADLINE_MS + 10_000);
  const exit = await server.exited;
  clearTimeout(killTimer);
  const exitMs = Date.now() - signalAt;
  const cleanExit = exit.code === 0 && exitMs <= SHUTDOWN_DEADLINE_MS + 3_500;
  clients.close();
  for (const r of receivers) {
    r.server.closeAllConnections();
    r.server.close();
  }
  await pgClient?.end();
  if (pgAdmin !== null) {
    const admin = new pg.Client({ connectionString: pgAdmin.url });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${pgAdmin.database} WITH (FORCE)`);
    await admin.end();
  }
  rmSync(dir, { recursive: true, force: true });

  // Report.
  const first = samples[1] ?? samples[0]!;
  const last = samples[samples.length - 1]!;
  process.stdout.write('\nCalls: ' + JSON.stringify(workload.stats.calls) + '\n');
  process.stdout.write('Errors: ' + JSON.stringify(workload.stats.errors) + '\n');
  process.stdout.write(
    `Published ${workload.stats.published} messages; watch streams opened ${workload.stats.watchOpened}, ` +
      `cancelled ${workload.stats.watchCancelled}, events ${workload.stats.watchEvents}\n`,
  );
  process.stdout.write('Receivers: ' + receivers.map((r) => `${r.name} ${JSON.stringify(r.counts)}`).join('; ') + '\n');
  process.stdout.write(
    `Server log: ${server.log.lines} lines, ${server.log.warn} warn, ${server.log.error} error, ` +
      `${server.log.sweptRows} rows swept\n`,
  );
  if (server.log.lastProblems.length > 0)
    process.stdout.write(`Last problems:\n  ${server.log.lastProblems.slice(-5).join('\n  ')}\n`);
  const bad = checks.sigWrong + checks.sigStale + checks.sigMissing + checks.sigMalformed;
  process.stdout.write(
    `Webhook changes: ${JSON.stringify(workload.rotations)}\n` +
      `Signatures (overlap ${OVERLAP_MS / 1000} s): ${checks.signedValid} valid (${checks.signedTwice} with both ` +
      `secrets of a rotation), ${checks.unsignedAllowed} unsigned while the webhook had no secret; violations ${bad}: ` +
      `wrong ${checks.sigWrong}, stale secret ${checks.sigStale}, missing ${checks.sigMissing}, malformed ` +
      `${checks.sigMalformed}\n` +
      `Rate limits: ${checks.rateChecked} requests to limited endpoints checked, ${checks.rateExceeded} over the ` +
      `bucket (capacity rate + max(2, 20%)), most over ${checks.rateMaxOver.toFixed(2)}; requests to unknown ` +
      `accounts ${checks.unknownAccount}; driver event-loop delay p99 ${(driverLag.percentile(99) / 1e6).toFixed(0)} ms, ` +
      `max ${(driverLag.max / 1e6).toFixed(0)} ms\n`,
  );
  if (checks.examples.length > 0) process.stdout.write(`Violations:\n  ${checks.examples.join('\n  ')}\n`);
  if (first.handles && last.handles) {
    process.stdout.write(
      `Active resources first ${JSON.stringify(first.handles)}\n               last  ${JSON.stringify(last.handles)}\n`,
    );
  }
  const half = samples.slice(Math.floor(samples.length / 2));
  const slope = (key: (s: Sample) => number | null) => {
    const points = half
      .map((s) => [s.t, key(s)] as const)
      .filter((p): p is [number, number] => p[1] !== null && Number.isFinite(p[1]));
    if (points.length < 3) return Number.NaN;
    const mx = points.reduce((a, p) => a + p[0], 0) / points.length;
    const my = points.reduce((a, p) => a + p[1], 0) / points.length;
    const num = points.reduce((a, p) => a + (p[0] - mx) * (p[1] - my), 0);
    const den = points.reduce((a, p) => a + (p[0] - mx) ** 2, 0);
    return (num / den) * 60;
  };
  const trend: Array<[string, (s: Sample) => number | null]> = [
    ['RSS MiB', (s) => s.rssMiB],
    ['heap after GC MiB', (s) => s.heapAfterGcMiB],
    ['fds', (s) => s.fds],
    ['sockets', (s) => s.sockets],
    ['metric series', (s) => s.series],
    ['account labels', (s) => s.accountLabels],
    ['store MiB', (s) => s.storeMiB],
    ['WAL MiB', (s) => s.walMiB],
    ['messages', (s) => s.messages],
    ['delivered rows', (s) => s.byState.delivered ?? 0],
    ['failed rows', (s) => s.byState.failed ?? 0],
  ];
  process.stdout.write('\nseries (first sample under load -> last; slope per minute over the second half)\n');
  for (const [name, key] of trend) {
    process.stdout.write(
      `  ${name.padEnd(18)} ${String(key(first)?.toFixed(1) ?? '-').padStart(8)} -> ${String(key(last)?.toFixed(1) ?? '-').padStart(8)}   ${slope(key).toFixed(2).padStart(8)}/min\n`,
    );
  }
  process.stdout.write(
    `\nSIGTERM -> exit in ${exitMs} ms, code ${exit.code}${exit.signal ? ` signal ${exit.signal}` : ''} ` +
      `(${cleanExit ? 'clean' : `NOT clean: expected code 0 within ${SHUTDOWN_DEADLINE_MS + 3_500} ms`})\n`,
  );
  mkdirSync(opts.out, { recursive: true });
  const file = join(opts.out, `soak-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    file,
    JSON.stringify(
      {
        store: pgAdmin ? 'postgres' : 'sqlite',
        minutes: MINUTES,
        rate: RATE,
        accounts: ACCOUNTS,
        contacts: CONTACTS,
        samples,
        stats: workload.stats,
        webhookChanges: workload.rotations,
        checks,
        driverLagMs: { p99: driverLag.percentile(99) / 1e6, max: driverLag.max / 1e6 },
        receivers: receivers.map((r) => ({ name: r.name, counts: r.counts })),
        serverLog: server.log,
        loss,
        exit: { ...exit, ms: exitMs, clean: cleanExit },
      },
      null,
      2,
    ),
  );
  process.stdout.write(`Written to ${file}\n`);
  process.exitCode = failed || !cleanExit ? 1 : 0;
}

await main();
// The flapping receiver's loop may still sleep: the run is over.
process.exit(process.exitCode ?? 0);
