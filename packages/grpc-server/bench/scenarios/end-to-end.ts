/**
 * Scenario 2, end to end: publish → claim → build → POST → 200 at the bench receiver, one contact per
 * delivery and 3 messages per list.
 * - Full speed: a burst of contacts published as fast as the server takes them; deliveries/s from the
 *   first publish to the last 200.
 * - Latency: publishes paced at a fixed 1,000 deliveries/s (small batches every few milliseconds);
 *   p50/p99 from the start of the PublishMessages call to the receiver's 200.
 * - Raw ceiling, in the same run: undici POSTs of bodies of the same shape (built by the core's
 *   `buildPayload`), to the same receiver, with the same number of connections, from the bench process
 *   while the server idles.
 * Targets (issue 6): delivered/raw at least 50%; p99 at most 50 ms at 1,000/s.
 */
import { randomUUID } from 'node:crypto';
import { Pool } from 'undici';
import { buildPayload, DELIVERY_ID_HEADER, TIMESTAMP_HEADER, USER_AGENT, type StoredMessage } from '@app-inbox/core';
import type { InboxMessage } from '../../src/gen/app_inbox/v1/message.js';
import { newResult, type BenchContext, type ScenarioResult } from '../lib/context.js';
import { benchAccount, configureWebhook, encodePublish, inboxMessage, type BenchClient } from '../lib/grpc.js';
import { contactId, messageBatches, publishAll } from '../lib/publish.js';
import type { ServerProcess } from '../lib/server-process.js';
import { serverCpuMs } from './ingest.js';
import { fmt, percentile, rate, sleep, waitFor, wallMs } from '../lib/stats.js';

const PER_CONTACT = 3;
export const LATENCY_RATE = 1_000;
export const P99_TARGET_MS = 50;
export const RATIO_TARGET_PCT = 50;

export interface EndToEndSizes {
  /** Contacts (= deliveries) of the full-speed burst. */
  burst: number;
  /** Length of the fixed-rate phase (seconds). */
  latencySeconds: number;
  /** Length of the raw-ceiling phase (seconds). */
  rawSeconds: number;
}

export interface EndToEndFigures {
  deliveriesPerSecond: number;
  rawPerSecond: number;
}

/** Waits until the receiver has answered 200 to `count` distinct deliveries; false after `timeoutMs`. */
async function waitDelivered(ctx: BenchContext, count: number, timeoutMs: number): Promise<boolean> {
  return waitFor(async () => (await ctx.receiver.stats()).deliveredIds >= count, timeoutMs, 20);
}

/** Full-speed burst: returns deliveries/s. */
async function burst(
  ctx: BenchContext,
  servers: readonly ServerProcess[],
  clients: readonly BenchClient[],
  account: string,
  contacts: number,
  result: ScenarioResult,
  prefix: string,
): Promise<{ perSecond: number; cpuPerDeliveryUs: number }> {
  await ctx.receiver.configure({ mode: 'ok', record: true, parse: false });
  const batches = [
    ...messageBatches(
      account,
      contacts * PER_CONTACT,
      999,
      (i) => contactId('burst', Math.floor(i / PER_CONTACT)),
      Date.now() - 60_000,
    ),
  ];
  const cpuBefore = serverCpuMs(servers);
  const started = wallMs();
  const run = await publishAll(clients, batches, 4);
  const done = await waitDelivered(ctx, contacts, 180_000);
  const stats = await ctx.receiver.stats();
  const cpuMs = serverCpuMs(servers) - cpuBefore;
  if (!done) result.notes.push(`${prefix}burst: only ${stats.deliveredIds} of ${contacts} deliveries arrived in time`);
  const perSecond = rate(stats.deliveredIds, (stats.lastOkAt ?? started) - started);
  result.notes.push(
    `${prefix}burst of ${fmt(contacts)} deliveries (${fmt(contacts * PER_CONTACT)} messages, published in ${fmt(run.ms)} ms); duplicate 200s: ${stats.duplicateOks}`,
  );
  return { perSecond, cpuPerDeliveryUs: (cpuMs * 1000) / Math.max(1, stats.deliveredIds) };
}

/** Paced phase: publishes `LATENCY_RATE` contacts per second for `seconds`; returns latencies (ms). */
async function paced(
  ctx: BenchContext,
  clients: readonly BenchClient[],
  account: string,
  seconds: number,
  result: ScenarioResult,
  prefix: string,
) {
  await ctx.receiver.configure({ mode: 'ok', record: true, parse: false });
  const startedAt = new Map<string, number>();
  const calls: Promise<void>[] = [];
  const begin = wallMs();
  let sent = 0;
  let turn = 0;
  let failures = 0;
  while (wallMs() - begin < seconds * 1000) {
    const due = Math.floor(((wallMs() - begin) * LATENCY_RATE) / 1000) - sent;
    if (due > 0) {
      const messages: InboxMessage[] = [];
      for (let c = sent; c < sent + due; c++) {
        for (let k = 0; k < PER_CONTACT; k++) messages.push(inboxMessage(contactId('paced', c), Date.now() - 60_000));
      }
      sent += due;
      const bytes = encodePublish(account, messages);
      const client = clients[turn++ % clients.length]!;
      const at = wallMs();
      calls.push(
        client.publishEncoded(bytes).then(
          (response) => {
            for (const d of response.deliveries) startedAt.set(d.deliveryId, at);
          },
          () => {
            failures += 1;
          },
        ),
      );
    }
    await sleep(2);
  }
  const pacedMs = wallMs() - begin;
  await Promise.all(calls);
  await waitDelivered(ctx, startedAt.size, 60_000);
  const arrivals = await ctx.receiver.arrivals();
  const latencies: number[] = [];
  let missing = 0;
  for (const [id, at] of startedAt) {
    const arrived = arrivals.get(id);
    if (arrived === undefined) missing += 1;
    else latencies.push(arrived - at);
  }
  if (missing > 0 || failures > 0)
    result.notes.push(`${prefix}paced: ${missing} deliveries missing, ${failures} publish calls failed`);
  result.notes.push(
    `${prefix}paced: ${fmt(sent)} deliveries at ${fmt(LATENCY_RATE)}/s for ${seconds} s (${fmt(rate(sent, pacedMs))}/s sent)`,
  );
  return latencies;
}

/** Raw undici POSTs of same-shaped bodies with `connections` connections for `seconds`: requests/s. */
export async function rawCeiling(url: string, connections: number, seconds: number): Promise<number> {
  const now = Date.now();
  const bodies: Buffer[] = [];
  for (let c = 0; c < 1_000; c++) {
    const messages: StoredMessage[] = [];
    for (let k = 0; k < PER_CONTACT; k++) {
      const m = inboxMessage(contactId('raw', c), now - 60_000);
      messages.push({ ...m, expiresAt: now + 86_400_000 } as StoredMessage);
    }
    const payload = buildPayload({
      contacts: [{ externalCustomerId: contactId('raw', c), messages }],
      now,
      maxMessagesPerContact: 1000,
    });
    bodies.push(Buffer.from(payload.body, 'utf8'));
  }
  const { origin, pathname } = new URL(url);
  const pool = new Pool(origin, { connections, pipelining: 1, keepAliveTimeout: 30_000 });
  let count = 0;
  let errors = 0;
  const runFor = async (ms: number) => {
    const until = wallMs() + ms;
    const worker = async () => {
      while (wallMs() < until) {
        const body = bodies[count % bodies.length]!;
        try {
          const response = await pool.request({
            path: pathname,
            method: 'POST',
            headers: {
              'content-type': 'application/json',
              'user-agent': USER_AGENT,
              [DELIVERY_ID_HEADER]: randomUUID(),
              [TIMESTAMP_HEADER]: String(Math.floor(Date.now() / 1000)),
            },
            body,
          });
          await response.body.dump();
          if (response.statusCode === 200) count += 1;
          else errors += 1;
        } catch {
          errors += 1;
        }
      }
    };
    await Promise.all(Array.from({ length: connections }, worker));
  };
  try {
    await runFor(500); // warm-up: connections and JIT
    count = 0;
    const begin = wallMs();
    await runFor(seconds * 1000);
    if (errors > 0) throw new Error(`${errors} raw requests failed`);
    return rate(count, wallMs() - begin);
  } finally {
    await pool.close();
  }
}

/** Burst, paced and raw phases against running servers; the figures go into `result`. */
export async function measureEndToEnd(
  ctx: BenchContext,
  servers: readonly ServerProcess[],
  clients: readonly BenchClient[],
  sizes: EndToEndSizes,
  connections: number,
  result: ScenarioResult,
  prefix = '',
): Promise<EndToEndFigures> {
  const account = benchAccount('e2e');
  await configureWebhook(clients[0]!, account, ctx.receiver.url, true);
  // Warm-up (JIT, connections, page cache), not measured.
  const warm = benchAccount('warmup');
  await configureWebhook(clients[0]!, warm, ctx.receiver.url, true);
  await ctx.receiver.configure({ mode: 'ok', record: true, parse: false });
  await publishAll(
    clients,
    messageBatches(warm, 600 * PER_CONTACT, 999, (i) => contactId('w', Math.floor(i / PER_CONTACT)), Date.now()),
    2,
  );
  await waitDelivered(ctx, 600, 60_000);

  const { perSecond: deliveriesPerSecond, cpuPerDeliveryUs } = await burst(
    ctx,
    servers,
    clients,
    account,
    sizes.burst,
    result,
    prefix,
  );
  const latencies = await paced(ctx, clients, account, sizes.latencySeconds, result, prefix);
  await ctx.receiver.configure({ mode: 'ok', record: false, parse: false });
  const rawPerSecond = await rawCeiling(ctx.receiver.url, connections, sizes.rawSeconds);
  result.figures.push(
    { name: `${prefix}deliveries/s (full speed)`, value: deliveriesPerSecond, unit: 'del/s' },
    { name: `${prefix}server CPU per delivery (publish included)`, value: cpuPerDeliveryUs, unit: 'µs' },
    { name: `${prefix}raw undici ceiling (${connections} conn.)`, value: rawPerSecond, unit: 'req/s' },
    {
      name: `${prefix}delivered / raw`,
      value: (deliveriesPerSecond * 100) / rawPerSecond,
      unit: '%',
      digits: 1,
      target: { op: '>=', value: RATIO_TARGET_PCT },
    },
    { name: `${prefix}latency p50 @ ${fmt(LATENCY_RATE)}/s`, value: percentile(latencies, 50), unit: 'ms', digits: 1 },
    {
      name: `${prefix}latency p99 @ ${fmt(LATENCY_RATE)}/s`,
      value: percentile(latencies, 99),
      unit: 'ms',
      digits: 1,
      target: { op: '<=', value: P99_TARGET_MS },
    },
    { name: `${prefix}latency max @ ${fmt(LATENCY_RATE)}/s`, value: Math.max(...latencies), unit: 'ms', digits: 1 },
  );
  return { deliveriesPerSecond, rawPerSecond };
}

export async function runEndToEnd(ctx: BenchContext): Promise<ScenarioResult> {
  const result = newResult('2', 'End to end (SQLite)');
  const sizes: EndToEndSizes = ctx.options.quick
    ? { burst: 10_000, latencySeconds: 5, rawSeconds: 3 }
    : { burst: 40_000, latencySeconds: 10, rawSeconds: 5 };
  await ctx.withServers('s2-e2e', ctx.sqliteStore('e2e'), 1, [], result, async (servers, clients) => {
    await measureEndToEnd(ctx, servers, clients, sizes, ctx.options.connections, result);
  });
  return result;
}
