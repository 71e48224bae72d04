/**
 * Scenario 1, ingest: PublishMessages in batches of 1,000 into the store, the account's webhook disabled so
 * that no delivery competes (a disabled webhook keeps accepting messages, SPEC §2). Messages go round-robin
 * over `messages / 10` contacts, so every batch touches 1,000 distinct contacts and each contact's pending
 * delivery is created once and then coalesced: the publish path at its most expensive per message.
 * Target (issue 6): at least 50,000 messages/s committed.
 */
import { newResult, type BenchContext, type ScenarioResult } from '../lib/context.js';
import { benchAccount, configureWebhook, type BenchClient } from '../lib/grpc.js';
import { contactId, messageBatches, publishAll } from '../lib/publish.js';
import type { ServerProcess } from '../lib/server-process.js';
import { percentile, rate } from '../lib/stats.js';

export const INGEST_TARGET = 50_000;
const BATCH = 1_000;
const IN_FLIGHT = 4;

/** Publishes `total` messages (encoded beforehand) through `clients` and adds the figures to `result`. */
export async function measureIngest(
  ctx: BenchContext,
  servers: readonly ServerProcess[],
  clients: readonly BenchClient[],
  total: number,
  result: ScenarioResult,
  prefix = '',
): Promise<number> {
  const account = benchAccount('ingest');
  await configureWebhook(clients[0]!, account, ctx.receiver.url, false);
  // Warm-up (JIT, page cache) on another account, not measured.
  const warm = benchAccount('warmup');
  await configureWebhook(clients[0]!, warm, ctx.receiver.url, false);
  await publishAll(
    clients,
    messageBatches(warm, 5 * BATCH, BATCH, (i) => contactId('w', i % 500), Date.now()),
    2,
  );

  const contacts = Math.max(1, Math.floor(total / 10));
  const batches = [
    ...messageBatches(account, total, BATCH, (i) => contactId('c', i % contacts), Date.now() - 3_600_000),
  ];
  const cpuBefore = serverCpuMs(servers);
  const run = await publishAll(clients, batches, IN_FLIGHT);
  const cpuMs = serverCpuMs(servers) - cpuBefore;
  if (run.accepted !== total) result.notes.push(`${prefix}accepted ${run.accepted} of ${total} messages`);
  const perSecond = rate(run.accepted, run.ms);
  result.figures.push(
    {
      name: `${prefix}messages/s committed`,
      value: perSecond,
      unit: 'msg/s',
      target: { op: '>=', value: INGEST_TARGET },
    },
    { name: `${prefix}PublishMessages(1,000) p50`, value: percentile(run.callMs, 50), unit: 'ms', digits: 1 },
    { name: `${prefix}PublishMessages(1,000) p99`, value: percentile(run.callMs, 99), unit: 'ms', digits: 1 },
    { name: `${prefix}server CPU per 1,000 messages`, value: (cpuMs * 1000) / run.accepted, unit: 'ms', digits: 1 },
  );
  result.notes.push(
    `${prefix}${total.toLocaleString('en-US')} messages over ${contacts.toLocaleString('en-US')} contacts, ${IN_FLIGHT} calls in flight`,
  );
  return perSecond;
}

/** CPU time of all `servers` so far (milliseconds). */
export function serverCpuMs(servers: readonly ServerProcess[]): number {
  return servers.reduce((sum, server) => sum + server.cpuMs(), 0);
}

export async function runIngest(ctx: BenchContext): Promise<ScenarioResult> {
  const result = newResult('1', 'Ingest (SQLite)');
  const total = ctx.options.quick ? 100_000 : 500_000;
  await ctx.withServers('s1-ingest', ctx.sqliteStore('ingest'), 1, [], result, async (servers, clients) => {
    await measureIngest(ctx, servers, clients, total, result);
  });
  return result;
}
