/**
 * The benchmark's webhook receiver, run as a child process of the bench (`fork`): a bare `node:http` server
 * (not Express, so that the receiver is not what limits the figures) on 127.0.0.1, port 0. It answers 200,
 * or 503 to every other request (`alternate-503`), counts what it got, and records for each delivery id the
 * time its 200 left (`wallMs`, comparable with the bench's clock). The parent drives it over IPC; see
 * `lib/receiver.ts` for the commands.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { wallMs } from './lib/stats.js';

export type ReceiverMode = 'ok' | 'alternate-503';

export interface ReceiverConfig {
  mode: ReceiverMode;
  /** Record the time of each delivery id's first 200 (for latency and drain curves). */
  record: boolean;
  /** Parse each 200's JSON body: per contact, the ids of the last list received (for loss and order checks). */
  parse: boolean;
}

export interface ReceiverStats {
  requests: number;
  ok: number;
  rejected: number;
  /** Body bytes of the requests answered 200. */
  okBytes: number;
  /** Distinct delivery ids answered 200 (when recording). */
  deliveredIds: number;
  /** 200s for a delivery id already answered 200 (a retried duplicate), when recording. */
  duplicateOks: number;
  /** Lists that were a strict subset of the contact's previous list (an older list after a newer one). */
  orderViolations: number;
  /** Wall time of the first and last 200, or null. */
  firstOkAt: number | null;
  lastOkAt: number | null;
}

export type ReceiverCommand =
  | { id: number; cmd: 'configure'; config: ReceiverConfig }
  | { id: number; cmd: 'reset' }
  | { id: number; cmd: 'stats' }
  | { id: number; cmd: 'arrivals' }
  | { id: number; cmd: 'contacts' }
  | { id: number; cmd: 'close' };

const DELIVERY_ID_HEADER = 'webhook-id';

let config: ReceiverConfig = { mode: 'ok', record: false, parse: false };
let stats: ReceiverStats;
/** Delivery id -> wall time of its first 200. */
let arrivals: Map<string, number>;
/** Contact -> ids of the last list answered 200. */
let contacts: Map<string, string[]>;

function reset(): void {
  stats = {
    requests: 0,
    ok: 0,
    rejected: 0,
    okBytes: 0,
    deliveredIds: 0,
    duplicateOks: 0,
    orderViolations: 0,
    firstOkAt: null,
    lastOkAt: null,
  };
  arrivals = new Map();
  contacts = new Map();
}
reset();

function handle(req: IncomingMessage, res: ServerResponse): void {
  const chunks: Buffer[] = [];
  let bytes = 0;
  req.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
    if (config.parse) chunks.push(chunk);
  });
  req.on('end', () => {
    stats.requests += 1;
    // Deterministic alternation: every other request (by arrival) is refused, whatever its delivery.
    if (config.mode === 'alternate-503' && stats.requests % 2 === 1) {
      stats.rejected += 1;
      res.writeHead(503, { 'content-length': '0' });
      res.end();
      return;
    }
    const at = wallMs();
    stats.ok += 1;
    stats.okBytes += bytes;
    stats.firstOkAt ??= at;
    stats.lastOkAt = at;
    if (config.record) {
      const id = String(req.headers[DELIVERY_ID_HEADER] ?? '');
      if (arrivals.has(id)) stats.duplicateOks += 1;
      else {
        arrivals.set(id, at);
        stats.deliveredIds += 1;
      }
    }
    if (config.parse) recordList(Buffer.concat(chunks));
    res.writeHead(200, { 'content-length': '0' });
    res.end();
  });
}

function recordList(body: Buffer): void {
  const list = JSON.parse(body.toString('utf8')) as Array<{ externalCustomerId: string; id: string }>;
  const contact = list[0]?.externalCustomerId;
  if (contact === undefined) return;
  const ids = list.map((m) => m.id);
  const previous = contacts.get(contact);
  if (previous !== undefined && previous.length > ids.length) {
    // Messages are only ever added in the bench (none expires), so a shorter list than the last one is older.
    const before = new Set(previous);
    if (ids.every((id) => before.has(id))) stats.orderViolations += 1;
  }
  contacts.set(contact, ids);
}

const server = createServer(handle);
// Longer than the sender's keep-alive, so connections are reused rather than raced at the 5 s default.
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  process.send?.({ ready: true, port });
});

process.on('message', (message: ReceiverCommand) => {
  const reply = (result: unknown) => process.send?.({ id: message.id, result });
  switch (message.cmd) {
    case 'configure':
      config = message.config;
      reply(true);
      break;
    case 'reset':
      reset();
      reply(true);
      break;
    case 'stats':
      reply(stats);
      break;
    case 'arrivals':
      reply([...arrivals]);
      break;
    case 'contacts':
      reply([...contacts]);
      break;
    case 'close':
      server.closeAllConnections();
      server.close(() => {
        reply(true);
        process.disconnect();
      });
      break;
  }
});
// The parent went away: nothing left to serve.
process.on('disconnect', () => process.exit(0));
