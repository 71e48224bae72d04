/**
 * Publishing for the scenarios: a stream of encoded PublishMessages requests sent with a few calls in
 * flight (round-robin over the servers' clients), timed per call.
 */
import type { StoredMessage } from '@app-inbox/core';
import type { InboxMessage, PublishMessagesResponse } from '../../src/gen/app_inbox/v1/message.js';
import { encodePublish, inboxMessage, type BenchClient } from './grpc.js';
import { wallMs } from './stats.js';

export interface PublishRun {
  /** Wall time from the first call to the last answer (milliseconds). */
  ms: number;
  startedAt: number;
  messages: number;
  accepted: number;
  /** Duration of each call (milliseconds). */
  callMs: number[];
  responses: PublishMessagesResponse[];
}

/** One encoded request and how many messages it carries. */
export interface Batch {
  bytes: Buffer;
  messages: number;
}

/**
 * Sends every batch of `batches` (consumed lazily, so a million messages need not sit in memory) with
 * `inFlight` calls at once. Rejects at the first failed call.
 */
export async function publishAll(
  clients: readonly BenchClient[],
  batches: Iterable<Batch>,
  inFlight: number,
  keepResponses = false,
): Promise<PublishRun> {
  const iterator = batches[Symbol.iterator]();
  const run: PublishRun = { ms: 0, startedAt: wallMs(), messages: 0, accepted: 0, callMs: [], responses: [] };
  let turn = 0;
  const worker = async () => {
    for (;;) {
      const next = iterator.next();
      if (next.done === true) return;
      const client = clients[turn++ % clients.length]!;
      const started = wallMs();
      const response = await client.publishEncoded(next.value.bytes);
      run.callMs.push(wallMs() - started);
      run.messages += next.value.messages;
      run.accepted += response.accepted;
      if (keepResponses) run.responses.push(response);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  run.ms = wallMs() - run.startedAt;
  return run;
}

/**
 * `total` messages in requests of `perBatch`, message `i` going to contact `contactOf(i)`; generated and
 * encoded lazily, one batch at a time.
 */
export function* messageBatches(
  accountId: string,
  total: number,
  perBatch: number,
  contactOf: (i: number) => string,
  baseTime: number,
): Generator<Batch> {
  for (let start = 0; start < total; start += perBatch) {
    const messages: InboxMessage[] = [];
    for (let i = start; i < Math.min(total, start + perBatch); i++) messages.push(inboxMessage(contactOf(i), baseTime));
    yield { bytes: encodePublish(accountId, messages), messages: messages.length };
  }
}

/** Contact `c` of a run, zero-padded so ids sort like numbers. */
export function contactId(prefix: string, c: number): string {
  return `${prefix}-${String(c).padStart(7, '0')}`;
}

/** The bench's usual message (about 400 bytes as JSON) for `contact`, as a store takes it: a day to live. */
export function storedMessage(contact: string, now: number): StoredMessage {
  return { ...inboxMessage(contact, now - 60_000), expiresAt: now + 86_400_000 } as StoredMessage;
}
