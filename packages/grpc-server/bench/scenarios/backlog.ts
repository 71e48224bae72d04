/**
 * Scenario 3, backlog: 1,000,000 messages over 100,000 contacts (10 per contact) are queued while the
 * receiver is "down", then it comes up and the backlog drains.
 *
 * "Down" is the account's webhook disabled (SPEC §2: it keeps accepting messages, sends nothing), and "up"
 * is UpsertWebhook with enabled=true. That queues exactly what an outage queues (one pending delivery per
 * contact, coalesced) without spending attempts on refused connections, whose retries would make the drain
 * depend on the backoff schedule rather than on the server's throughput.
 *
 * Figures: ingest rate of the backlog, drain time, deliveries/s compared with scenario 2, the rate of the
 * first and of the last tenth of the drain (work per delivery must not grow with the backlog), and the
 * server's peak RSS (VmHWM). Target (issue 6): peak RSS at most 300 MB.
 */
import { newResult, type BenchContext, type ScenarioResult } from '../lib/context.js';
import { benchAccount, configureWebhook } from '../lib/grpc.js';
import { contactId, messageBatches, publishAll } from '../lib/publish.js';
import { fmt, mib, rate, waitFor, wallMs } from '../lib/stats.js';

export const PEAK_RSS_TARGET_MIB = 300;

/** Deliveries/s of each tenth of the drain, from the sorted arrival times. */
export function decileRates(sortedArrivals: readonly number[], startedAt: number): number[] {
  const n = sortedArrivals.length;
  const rates: number[] = [];
  let from = startedAt;
  for (let d = 1; d <= 10; d++) {
    const lo = Math.floor(((d - 1) * n) / 10);
    const hi = Math.floor((d * n) / 10);
    const to = sortedArrivals[hi - 1] ?? from;
    rates.push(rate(hi - lo, to - from));
    from = to;
  }
  return rates;
}

export async function runBacklog(ctx: BenchContext): Promise<ScenarioResult> {
  const result = newResult('3', 'Backlog (SQLite)');
  const contacts = ctx.options.quick ? 10_000 : 100_000;
  const total = contacts * 10;
  await ctx.withServers('s3-backlog', ctx.sqliteStore('backlog'), 1, [], result, async ([server], [client]) => {
    const account = benchAccount('backlog');
    await configureWebhook(client!, account, ctx.receiver.url, false);
    await ctx.receiver.configure({ mode: 'ok', record: true, parse: false });
    // Round-robin: each batch of 1,000 touches 1,000 contacts; each contact gets 10 messages over the run.
    const ingest = await publishAll(
      [client!],
      messageBatches(account, total, 1_000, (i) => contactId('b', i % contacts), Date.now() - 3_600_000),
      4,
    );
    const rssQueued = server!.rssBytes();

    const enabledAt = wallMs();
    await configureWebhook(client!, account, ctx.receiver.url, true);
    const done = await waitFor(async () => (await ctx.receiver.stats()).deliveredIds >= contacts, 600_000, 100);
    const stats = await ctx.receiver.stats();
    const drainMs = (stats.lastOkAt ?? enabledAt) - enabledAt;
    if (!done) result.notes.push(`only ${stats.deliveredIds} of ${contacts} deliveries arrived within 10 minutes`);
    const arrivals = [...(await ctx.receiver.arrivals()).values()].sort((a, b) => a - b);
    const deciles = decileRates(arrivals, enabledAt);
    const perSecond = rate(stats.deliveredIds, drainMs);
    const e2e = ctx.results.find((r) => r.id === '2')?.figures.find((f) => f.name === 'deliveries/s (full speed)');
    const peak = mib(server!.peakRssBytes());

    result.figures.push(
      { name: 'backlog ingest', value: rate(ingest.accepted, ingest.ms), unit: 'msg/s' },
      { name: 'drain time', value: drainMs / 1000, unit: 's', digits: 1 },
      { name: 'deliveries/s (drain)', value: perSecond, unit: 'del/s' },
      ...(e2e
        ? [{ name: 'drain rate / scenario 2 rate', value: (perSecond * 100) / e2e.value, unit: '%', digits: 1 }]
        : []),
      { name: 'first tenth of drain', value: deciles[0] ?? Number.NaN, unit: 'del/s' },
      { name: 'last tenth of drain', value: deciles[9] ?? Number.NaN, unit: 'del/s' },
      { name: 'server peak RSS (VmHWM)', value: peak, unit: 'MiB', target: { op: '<=', value: PEAK_RSS_TARGET_MIB } },
    );
    result.notes.push(
      `${fmt(total)} messages over ${fmt(contacts)} contacts queued in ${fmt(ingest.ms / 1000, 1)} s (webhook disabled); RSS when queued ${fmt(mib(rssQueued))} MiB`,
      `drain deciles (del/s): ${deciles.map((d) => fmt(d)).join(', ')}`,
      `duplicate 200s: ${stats.duplicateOks}; body bytes received: ${fmt(mib(stats.okBytes), 1)} MiB`,
    );
  });
  return result;
}
