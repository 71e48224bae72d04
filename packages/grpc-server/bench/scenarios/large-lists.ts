/**
 * Scenario 5, large lists: contacts with 1,000 messages each (the SPEC cap, maxMessagesPerContact), queued
 * with the webhook disabled, then sent: payload building (read 1,000 rows, filter, order, serialise) and
 * sending, in MB/s of request bodies at the receiver. Beside it, the core's `buildPayload` alone in the
 * bench process, for how much of that is the serialisation.
 */
import { buildPayload, type StoredMessage } from '@app-inbox/core';
import { newResult, type BenchContext, type ScenarioResult } from '../lib/context.js';
import { benchAccount, configureWebhook, inboxMessage } from '../lib/grpc.js';
import { contactId, messageBatches, publishAll } from '../lib/publish.js';
import { fmt, mib, rate, waitFor, wallMs } from '../lib/stats.js';

const PER_CONTACT = 1_000;

/** MB/s of `buildPayload` on one contact's 1,000 messages, repeated for about a second. */
function buildPayloadRate(): { mbPerSecond: number; bodyBytes: number } {
  const now = Date.now();
  const messages: StoredMessage[] = [];
  for (let i = 0; i < PER_CONTACT; i++) {
    messages.push({ ...inboxMessage('large-micro', now - 3_600_000), expiresAt: now + 86_400_000 } as StoredMessage);
  }
  const build = () =>
    buildPayload({
      contacts: [{ externalCustomerId: 'large-micro', messages }],
      now,
      maxMessagesPerContact: PER_CONTACT,
    });
  for (let i = 0; i < 20; i++) build(); // JIT warm-up
  let bytes = 0;
  let bodyBytes = 0;
  const begin = wallMs();
  while (wallMs() - begin < 1_000) {
    bodyBytes = Buffer.byteLength(build().body);
    bytes += bodyBytes;
  }
  return { mbPerSecond: mib(bytes) / ((wallMs() - begin) / 1000), bodyBytes };
}

export async function runLargeLists(ctx: BenchContext): Promise<ScenarioResult> {
  const result = newResult('5', 'Large lists: 1,000 messages per contact (SQLite)');
  const contacts = ctx.options.quick ? 50 : 200;
  await ctx.withServers('s5-large', ctx.sqliteStore('large'), 1, [], result, async (_servers, clients) => {
    const account = benchAccount('large');
    await configureWebhook(clients[0]!, account, ctx.receiver.url, false);
    await ctx.receiver.configure({ mode: 'ok', record: true, parse: false });
    const ingest = await publishAll(
      clients,
      messageBatches(
        account,
        contacts * PER_CONTACT,
        PER_CONTACT,
        (i) => contactId('L', Math.floor(i / PER_CONTACT)),
        Date.now() - 3_600_000,
      ),
      2,
    );
    const enabledAt = wallMs();
    await configureWebhook(clients[0]!, account, ctx.receiver.url, true);
    const done = await waitFor(async () => (await ctx.receiver.stats()).deliveredIds >= contacts, 300_000, 50);
    const stats = await ctx.receiver.stats();
    if (!done) result.notes.push(`only ${stats.deliveredIds} of ${contacts} deliveries arrived in time`);
    const ms = (stats.lastOkAt ?? enabledAt) - enabledAt;
    const micro = buildPayloadRate();
    result.figures.push(
      { name: 'payload build + send', value: mib(stats.okBytes) / (ms / 1000), unit: 'MiB/s', digits: 1 },
      { name: 'deliveries/s (1,000 messages each)', value: rate(stats.deliveredIds, ms), unit: 'del/s' },
      { name: 'core buildPayload alone', value: micro.mbPerSecond, unit: 'MiB/s', digits: 1 },
    );
    result.notes.push(
      `${fmt(contacts)} contacts × ${fmt(PER_CONTACT)} messages (queued at ${fmt(rate(ingest.accepted, ingest.ms))} msg/s); body ${fmt(stats.okBytes / Math.max(1, stats.deliveredIds) / 1024)} KiB each; ${fmt(mib(stats.okBytes), 1)} MiB in ${fmt(ms / 1000, 2)} s`,
    );
  });
  return result;
}
