/**
 * What the receiver remembers: every request (the last `recordLimit`, the rest counted), duplicates by
 * delivery id, and per contact the last list it accepted. All memory is bounded.
 *
 * @see SPEC §4 ("a stable delivery identifier header so that a receiver can discard a retried duplicate")
 */
import type { AppInboxMessage } from '@app-inbox/core';
import type { ContractBranch } from './contract.js';
import { MockReceiverError } from './errors.js';
import type { SignatureResult } from './signature.js';

/** How a request ended. */
export const OUTCOMES = ['answered', 'dropped', 'hung', 'aborted'] as const;
/**
 * `answered`: a complete response was sent; `dropped`: the socket was destroyed on purpose (a rule);
 * `hung`: no answer on purpose until the client went away; `aborted`: the client went away first.
 */
export type Outcome = (typeof OUTCOMES)[number];

/** The answer given to one request. */
export interface RecordedAnswer {
  /** The HTTP status sent, or null when no response head was sent. */
  status: number | null;
  outcome: Outcome;
  /** What the contract's own checks said (even when a rule answered instead). */
  branch: ContractBranch;
  /** The rule that shaped the answer, or null when the contract answered alone. */
  ruleId: string | null;
}

/** One received request. */
export interface ReceivedRequest {
  /** 1, 2, 3... in order of completion; never reused, also after a clear. */
  seq: number;
  /** When the request arrived (ISO 8601). */
  receivedAt: string;
  method: string;
  /** The path without the query. */
  path: string;
  /** Path and query as sent. */
  url: string;
  /** Request headers, lower-case names; Authorization, Proxy-Authorization and Cookie are redacted. */
  headers: Record<string, string | string[]>;
  /** The `webhook-id` header (the stable delivery id), or null. */
  deliveryId: string | null;
  /** Size of the body (bytes, as far as it was read). */
  bodyBytes: number;
  /** The parsed JSON body, or null when it was empty, not JSON or too large. */
  body: unknown;
  /** The body as text (at most 64 KiB) when it was not JSON; absent otherwise. */
  bodyText?: string;
  /** Distinct externalCustomerIds found in the body. */
  externalCustomerIds: string[];
  /** Number of elements when the body was a JSON array, else null. */
  messageCount: number | null;
  answer: RecordedAnswer;
  /**
   * What the Standard Webhooks signature check said (`not_required` when no signing secret is configured), even when
   * a rule answered instead.
   */
  signature: SignatureResult;
  /** Index (in `signingSecrets`) of the secret that verified the signature when `valid`; else null. Never a secret. */
  signatureSecretIndex: number | null;
  /** From arrival to the end of the exchange (milliseconds). */
  durationMs: number;
  /** True when an earlier request carried the same delivery id. */
  duplicate: boolean;
}

/** A short form of a request for lists and the page: everything but headers and body. */
export type ReceivedSummary = Omit<ReceivedRequest, 'headers' | 'body' | 'bodyText'>;

/** The last list accepted (2xx) for one contact. */
export interface AcceptedList {
  externalCustomerId: string;
  /** The contact's messages in that request, in the order sent. */
  messages: AppInboxMessage[];
  deliveryId: string | null;
  seq: number;
  acceptedAt: string;
}

/** One delivery id that arrived more than once. */
export interface DuplicateDelivery {
  deliveryId: string;
  /** Requests with this id. */
  count: number;
  /** Of which answered 2xx. */
  accepted: number;
  /** True when every request with this id had the same body bytes (as a retry must). */
  bodiesEqual: boolean;
  firstSeq: number;
  lastSeq: number;
}

/** Duplicates by delivery id. */
export interface DuplicateReport {
  /** Requests whose delivery id had been received before. */
  requests: number;
  /** 2xx answers to a delivery id that had already been answered 2xx (the sender re-sent an accepted delivery). */
  acceptedAgain: number;
  /** Requests that repeated a delivery id with a different body. */
  differentBodies: number;
  deliveries: DuplicateDelivery[];
}

/** Counters since the start or the last clear. */
export interface ReceiverStats {
  /** Requests recorded (kept + dropped). */
  received: number;
  /** Requests kept in memory. */
  kept: number;
  /** Body bytes of the kept requests (what `recordBytesLimit` bounds). */
  keptBytes: number;
  /** Requests forgotten because of `recordLimit` or `recordBytesLimit`. */
  dropped: number;
  /** Requests per status ("none" when no status was sent). */
  byStatus: Record<string, number>;
  byOutcome: Record<Outcome, number>;
  duplicateRequests: number;
  acceptedAgain: number;
  /** Contacts with a last accepted list. */
  contacts: number;
  /** Contacts forgotten because of `contactLimit`. */
  contactsForgotten: number;
}

/** Filters of {@link Recorder.list}; all must hold. */
export interface RecordFilter {
  /** A message of the body has this externalCustomerId. */
  externalCustomerId?: string;
  deliveryId?: string;
  path?: string;
  status?: number;
  /** The result of the signature check. */
  signature?: SignatureResult;
  /** Only records with a larger seq. */
  since?: number;
}

/** What the recorder tells subscribers. */
export type RecorderEvent = { type: 'record'; record: ReceivedRequest } | { type: 'clear' };

/** A request to record, with what only the recorder needs. */
export interface RecordInput extends Omit<ReceivedRequest, 'seq' | 'duplicate'> {
  /** A digest of the body bytes, to tell whether a duplicate carried the same body. */
  bodyDigest: string;
  /** Per contact the messages accepted, when the answer was 2xx and the body a valid list. */
  accepted?: ReadonlyMap<string, AppInboxMessage[]>;
}

/** Limits of a {@link Recorder}. */
export interface RecorderLimits {
  /** Requests kept (the newest). */
  recordLimit: number;
  /**
   * Body bytes kept, over all kept requests (bytes); the oldest requests are forgotten beyond it, but the newest one is
   * always kept. Default: no bound but `recordLimit`.
   */
  recordBytesLimit?: number;
  /** Contacts whose last accepted list is kept (the most recently accepted). */
  contactLimit: number;
}

/** Delivery ids remembered for duplicate counting; the oldest are forgotten beyond this. */
export const MAX_TRACKED_DELIVERIES = 100_000;

interface Tracked {
  count: number;
  accepted: number;
  digest: string;
  bodiesEqual: boolean;
  firstSeq: number;
  lastSeq: number;
}

/** A record without its headers and body: what lists and the page show. */
export function summarize(record: ReceivedRequest): ReceivedSummary {
  const { headers: _h, body: _b, bodyText: _t, ...summary } = record;
  return summary;
}

/** `path` with its percent-escapes decoded, or as it is when one is malformed. */
function decodedPath(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

/** True when `record` passes every filter. */
export function matchesFilter(record: ReceivedRequest, filter: RecordFilter): boolean {
  if (filter.externalCustomerId !== undefined && !record.externalCustomerIds.includes(filter.externalCustomerId)) {
    return false;
  }
  if (filter.deliveryId !== undefined && record.deliveryId !== filter.deliveryId) return false;
  // The path as recorded is as sent (percent-encoded); a filter from a query string arrives decoded: either matches.
  if (filter.path !== undefined && record.path !== filter.path && decodedPath(record.path) !== filter.path)
    return false;
  if (filter.status !== undefined && record.answer.status !== filter.status) return false;
  if (filter.signature !== undefined && record.signature !== filter.signature) return false;
  if (filter.since !== undefined && record.seq <= filter.since) return false;
  return true;
}

/** What a kept record costs against `recordBytesLimit`: the body it holds (parsed JSON, or up to 64 KiB of text). */
function keptBodyBytes(record: ReceivedRequest): number {
  if (record.body !== null) return record.bodyBytes;
  return record.bodyText === undefined ? 0 : Buffer.byteLength(record.bodyText, 'utf8');
}

function emptyOutcomes(): Record<Outcome, number> {
  return { answered: 0, dropped: 0, hung: 0, aborted: 0 };
}

/** The records of one receiver. */
export class Recorder {
  /** Kept records, oldest first, from index `head` on (the ones before it are forgotten, compacted now and then). */
  private records: (ReceivedRequest | undefined)[] = [];
  /** Index of the oldest kept record in `records`. */
  private head = 0;
  /** Sum of {@link keptBodyBytes} of the kept records. */
  private keptBytes = 0;
  private seq = 0;
  private dropped = 0;
  private byStatus: Record<string, number> = {};
  private byOutcome = emptyOutcomes();
  private tracked = new Map<string, Tracked>();
  private duplicateRequests = 0;
  private acceptedAgain = 0;
  private differentBodies = 0;
  private accepted = new Map<string, AcceptedList>();
  private contactsForgotten = 0;
  private listeners = new Set<(event: RecorderEvent) => void>();

  constructor(private readonly limits: RecorderLimits) {}

  /** Records one finished exchange and tells the subscribers. */
  add(input: RecordInput): ReceivedRequest {
    const { bodyDigest, accepted, ...fields } = input;
    const seq = ++this.seq;
    const duplicate = this.track(fields.deliveryId, bodyDigest, seq, fields.answer.status);
    const record: ReceivedRequest = { seq, ...fields, duplicate };
    this.keep(record);
    const status = record.answer.status === null ? 'none' : String(record.answer.status);
    this.byStatus[status] = (this.byStatus[status] ?? 0) + 1;
    this.byOutcome[record.answer.outcome] += 1;
    for (const [externalCustomerId, messages] of accepted ?? []) {
      // Delete first so that the Map's order is "least recently accepted first", the eviction order.
      this.accepted.delete(externalCustomerId);
      this.accepted.set(externalCustomerId, {
        externalCustomerId,
        messages,
        deliveryId: record.deliveryId,
        seq,
        acceptedAt: new Date().toISOString(),
      });
      if (this.accepted.size > this.limits.contactLimit) {
        const oldest = this.accepted.keys().next();
        if (oldest.done !== true) this.accepted.delete(oldest.value);
        this.contactsForgotten += 1;
      }
    }
    this.emit({ type: 'record', record });
    return record;
  }

  /** Kept records, oldest first, that pass `filter`. */
  list(filter: RecordFilter = {}): ReceivedRequest[] {
    return this.kept().filter((r) => matchesFilter(r, filter));
  }

  /** The kept record with this seq. */
  get(seq: number): ReceivedRequest | undefined {
    // Kept in seq order: a binary search, without copying the list.
    let low = this.head;
    let high = this.records.length - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      const record = this.records[middle]!;
      if (record.seq === seq) return record;
      if (record.seq < seq) low = middle + 1;
      else high = middle - 1;
    }
    return undefined;
  }

  /** Forgets every record, counter, duplicate and accepted list (seq numbers keep growing). */
  clear(): void {
    this.records = [];
    this.head = 0;
    this.keptBytes = 0;
    this.dropped = 0;
    this.byStatus = {};
    this.byOutcome = emptyOutcomes();
    this.tracked.clear();
    this.duplicateRequests = 0;
    this.acceptedAgain = 0;
    this.differentBodies = 0;
    this.accepted.clear();
    this.contactsForgotten = 0;
    this.emit({ type: 'clear' });
  }

  duplicates(): DuplicateReport {
    const deliveries: DuplicateDelivery[] = [];
    for (const [deliveryId, t] of this.tracked) {
      if (t.count > 1) {
        deliveries.push({
          deliveryId,
          count: t.count,
          accepted: t.accepted,
          bodiesEqual: t.bodiesEqual,
          firstSeq: t.firstSeq,
          lastSeq: t.lastSeq,
        });
      }
    }
    return {
      requests: this.duplicateRequests,
      acceptedAgain: this.acceptedAgain,
      differentBodies: this.differentBodies,
      deliveries,
    };
  }

  /** The last list accepted for a contact. */
  lastAccepted(externalCustomerId: string): AcceptedList | undefined {
    return this.accepted.get(externalCustomerId);
  }

  /** Every contact's last accepted list, least recently accepted first. */
  contacts(): AcceptedList[] {
    return [...this.accepted.values()];
  }

  stats(): ReceiverStats {
    const kept = this.records.length - this.head;
    return {
      received: kept + this.dropped,
      kept,
      keptBytes: this.keptBytes,
      dropped: this.dropped,
      byStatus: { ...this.byStatus },
      byOutcome: { ...this.byOutcome },
      duplicateRequests: this.duplicateRequests,
      acceptedAgain: this.acceptedAgain,
      contacts: this.accepted.size,
      contactsForgotten: this.contactsForgotten,
    };
  }

  /** Calls `listener` for every new record and every clear; returns the unsubscribe function. */
  subscribe(listener: (event: RecorderEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves with the first kept record that satisfies `predicate`, already there or still to come.
   * @param timeoutMs how long to wait (milliseconds). Default 5000.
   * @throws MockReceiverError `timeout`
   */
  waitFor(predicate: (record: ReceivedRequest) => boolean, timeoutMs = 5000): Promise<ReceivedRequest> {
    const found = this.list().find(predicate);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        unsubscribe();
        reject(new MockReceiverError('timeout', `no matching request arrived within ${timeoutMs} ms`));
      }, timeoutMs);
      const unsubscribe = this.subscribe((event) => {
        if (event.type === 'record' && predicate(event.record)) {
          clearTimeout(timer);
          unsubscribe();
          resolve(event.record);
        }
      });
    });
  }

  /** The kept records, oldest first. */
  private kept(): ReceivedRequest[] {
    return this.records.slice(this.head) as ReceivedRequest[];
  }

  private keep(record: ReceivedRequest): void {
    if (this.limits.recordLimit === 0) {
      this.dropped += 1;
      return;
    }
    this.records.push(record);
    this.keptBytes += keptBodyBytes(record);
    const maxBytes = this.limits.recordBytesLimit ?? Number.POSITIVE_INFINITY;
    // Forget the oldest while over either bound; the newest stays, so that waitFor() can always see it.
    while (
      this.records.length - this.head > 1 &&
      (this.records.length - this.head > this.limits.recordLimit || this.keptBytes > maxBytes)
    ) {
      const oldest = this.records[this.head]!;
      this.records[this.head] = undefined;
      this.head += 1;
      this.keptBytes -= keptBodyBytes(oldest);
      this.dropped += 1;
    }
    // A queue: O(1) per request however large the limit, the forgotten slots compacted once they are half.
    if (this.head > 1024 && this.head * 2 > this.records.length) {
      this.records = this.records.slice(this.head);
      this.head = 0;
    }
  }

  private track(deliveryId: string | null, digest: string, seq: number, status: number | null): boolean {
    if (deliveryId === null) return false;
    const ok = status !== null && status >= 200 && status < 300;
    const t = this.tracked.get(deliveryId);
    if (t === undefined) {
      if (this.tracked.size >= MAX_TRACKED_DELIVERIES) {
        const oldest = this.tracked.keys().next();
        if (oldest.done !== true) this.tracked.delete(oldest.value);
      }
      this.tracked.set(deliveryId, {
        count: 1,
        accepted: ok ? 1 : 0,
        digest,
        bodiesEqual: true,
        firstSeq: seq,
        lastSeq: seq,
      });
      return false;
    }
    t.count += 1;
    t.lastSeq = seq;
    this.duplicateRequests += 1;
    if (t.digest !== digest) {
      t.bodiesEqual = false;
      this.differentBodies += 1;
    }
    if (ok) {
      if (t.accepted > 0) this.acceptedAgain += 1;
      t.accepted += 1;
    }
    return true;
  }

  private emit(event: RecorderEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch {
        // A failing subscriber (e.g. a closed page stream) must not break recording.
      }
    }
  }
}
