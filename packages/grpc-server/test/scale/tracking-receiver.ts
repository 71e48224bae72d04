/**
 * A minimal webhook receiver (node:http, no framework: the multi-process test sends it tens of thousands of
 * requests) that answers every third request with 503 and watches what the issue forbids: the same delivery
 * (`webhook-id`) in flight twice at once, two requests of one contact overlapping, an older list after a newer
 * one. It sees a request from its first header to the moment it writes the answer, or to the connection's
 * close when the sender went away mid-request (a killed process).
 * @see SPEC §4, §5; issue 5
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DELIVERY_ID_HEADER } from '@app-inbox/core';

/** One request as the receiver saw it. */
export interface ReceivedRequest {
  /** Arrival number, from 1. */
  n: number;
  deliveryId: string;
  /** The contact of the list (every list of the test has at least one message). */
  contact: string;
  /** Message ids of the list, in the order sent. */
  ids: string[];
  /** SHA-256 of the body, to check that a delivery's retries resend the same bytes. */
  bodyHash: string;
  /** Date.now() when the headers arrived, and when the answer was written or the connection closed. */
  start: number;
  end: number | null;
  /** 200 or 503; null when the sender went away before the answer. */
  status: number | null;
}

export interface TrackingReceiver {
  /** Base URL; a webhook may add any path (e.g. the account). */
  url: string;
  readonly requests: readonly ReceivedRequest[];
  /** Broken rules, in words; must stay empty. */
  readonly violations: readonly string[];
  /** The last list (message ids) answered 200, per contact. */
  readonly lastAccepted: ReadonlyMap<string, readonly string[]>;
  /** Requests being answered right now. */
  inFlight(): number;
  close(): Promise<void>;
}

export interface TrackingReceiverOptions {
  /** Answer request number n with 503 when `n % failEvery === 0`. Default 3 (a third of the requests). */
  failEvery?: number;
  /** Time taken before each answer (milliseconds), so that requests have a duration to overlap in. Default 3. */
  answerDelayMs?: number;
  /**
   * The `authorization` header every request must carry (a webhook's Basic auth, which each server process
   * can only send if it opens the secret another process sealed). A request without it is a violation.
   * Default: not checked.
   */
  authorization?: string;
}

export async function startTrackingReceiver(options: TrackingReceiverOptions = {}): Promise<TrackingReceiver> {
  const failEvery = options.failEvery ?? 3;
  const answerDelayMs = options.answerDelayMs ?? 3;
  const requests: ReceivedRequest[] = [];
  const violations: string[] = [];
  const lastAccepted = new Map<string, readonly string[]>();
  /** The last list received (any answer) per contact, to check that lists only grow. */
  const lastReceived = new Map<string, { n: number; ids: ReadonlySet<string> }>();
  const byDelivery = new Map<string, number>();
  const byContact = new Map<string, number>();
  let count = 0;

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    count += 1;
    const n = count;
    const deliveryId = String(req.headers[DELIVERY_ID_HEADER] ?? '');
    const record: ReceivedRequest = {
      n,
      deliveryId,
      contact: '',
      ids: [],
      bodyHash: '',
      start: Date.now(),
      end: null,
      status: null,
    };
    requests.push(record);
    if (options.authorization !== undefined && req.headers.authorization !== options.authorization) {
      violations.push(`request #${n} (delivery ${deliveryId}): missing or wrong authorization header`);
    }
    const holder = byDelivery.get(deliveryId);
    if (holder !== undefined) {
      violations.push(`delivery ${deliveryId}: request #${n} arrived while #${holder} was still in flight`);
    } else byDelivery.set(deliveryId, n);

    let finished = false;
    const finish = (status: number | null): void => {
      if (finished) return;
      finished = true;
      record.end = Date.now();
      record.status = status;
      if (byDelivery.get(deliveryId) === n) byDelivery.delete(deliveryId);
      if (record.contact !== '' && byContact.get(record.contact) === n) byContact.delete(record.contact);
    };
    // The sender went away (timeout, or its process was killed): the request is over for the receiver too.
    res.on('close', () => finish(null));

    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      record.bodyHash = createHash('sha256').update(body).digest('hex');
      let list: Array<{ id: string; externalCustomerId: string }>;
      try {
        list = JSON.parse(body.toString('utf8')) as typeof list;
      } catch {
        violations.push(`request #${n}: the body is not JSON`);
        finish(400);
        res.writeHead(400).end();
        return;
      }
      record.contact = list[0]?.externalCustomerId ?? '';
      record.ids = list.map((m) => m.id);
      if (record.contact !== '' && !finished) {
        const other = byContact.get(record.contact);
        if (other !== undefined) {
          violations.push(`contact ${record.contact}: request #${n} arrived while #${other} was still in flight`);
        } else byContact.set(record.contact, n);
      }
      // Never an older list after a newer one: nothing expires in the test, so each list of a contact must
      // contain the one before it.
      const previous = lastReceived.get(record.contact);
      if (previous !== undefined) {
        const missing = [...previous.ids].filter((id) => !record.ids.includes(id));
        if (missing.length > 0) {
          violations.push(`contact ${record.contact}: request #${n} lacks ${missing.join(',')} sent in #${previous.n}`);
        }
      }
      lastReceived.set(record.contact, { n, ids: new Set(record.ids) });

      const status = n % failEvery === 0 ? 503 : 200;
      setTimeout(() => {
        if (finished) return;
        finish(status);
        if (status === 200) lastAccepted.set(record.contact, record.ids);
        res.writeHead(status, { 'content-type': 'text/plain' }).end(status === 200 ? 'ok' : 'busy');
      }, answerDelayMs);
    });
  };

  const server = createServer({ keepAliveTimeout: 30_000 }, handle);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    violations,
    lastAccepted,
    inFlight: () => byDelivery.size,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
  };
}
