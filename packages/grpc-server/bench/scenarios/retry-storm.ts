/**
 * Scenario 4, retry storm: the receiver answers 503 to every other request (a deterministic alternation by
 * arrival, whatever the delivery), with a small backoff (10 ms base, 200 ms cap) so the storm is dense.
 * Each contact gets 2 messages, then 1 more while the first deliveries are in flight or waiting for their
 * retry, so supersession runs under load too. Zero loss: at the end the receiver's last list of every
 * contact is exactly its 3 messages, and no contact ever got an older list after a newer one.
 */
import { newResult, type BenchContext, type ScenarioResult } from '../lib/context.js';
import { benchAccount, configureWebhook, encodePublish, inboxMessage } from '../lib/grpc.js';
import type { InboxMessage } from '../../src/gen/app_inbox/v1/message.js';
import { contactId, publishAll, type Batch } from '../lib/publish.js';
import { fmt, rate, sleep, wallMs } from '../lib/stats.js';

const BACKOFF_ARGS = ['--backoff-base-ms', '10', '--backoff-max-ms', '200', '--max-attempts', '50'];

export async function runRetryStorm(ctx: BenchContext): Promise<ScenarioResult> {
  const result = newResult('4', 'Retry storm: 503 to every other request (SQLite)');
  const contacts = ctx.options.quick ? 3_000 : 10_000;
  await ctx.withServers('s4-retry', ctx.sqliteStore('retry'), 1, BACKOFF_ARGS, result, async (_servers, clients) => {
    const account = benchAccount('retry');
    await configureWebhook(clients[0]!, account, ctx.receiver.url, true);
    await ctx.receiver.configure({ mode: 'alternate-503', record: true, parse: true });

    const expected = new Map<string, Set<string>>();
    const wave = (perContact: number): Batch[] => {
      const batches: Batch[] = [];
      let messages: InboxMessage[] = [];
      for (let c = 0; c < contacts; c++) {
        const contact = contactId('r', c);
        for (let k = 0; k < perContact; k++) {
          const m = inboxMessage(contact, Date.now() - 60_000);
          messages.push(m);
          let ids = expected.get(contact);
          if (ids === undefined) expected.set(contact, (ids = new Set()));
          ids.add(m.id);
        }
        if (messages.length >= 1_000) {
          batches.push({ bytes: encodePublish(account, messages), messages: messages.length });
          messages = [];
        }
      }
      if (messages.length > 0) batches.push({ bytes: encodePublish(account, messages), messages: messages.length });
      return batches;
    };
    const first = wave(2);
    const second = wave(1);

    const startedAt = wallMs();
    await publishAll(clients, first, 4);
    await sleep(50);
    await publishAll(clients, second, 4);

    // Done when every contact's last list is its 3 messages; bounded at 5 minutes.
    let lost = contacts;
    const deadline = Date.now() + 300_000;
    while (Date.now() < deadline) {
      const received = await ctx.receiver.contacts();
      lost = 0;
      for (const [contact, ids] of expected) {
        const last = received.get(contact);
        if (last === undefined || last.length !== ids.size || !last.every((id) => ids.has(id))) lost += 1;
      }
      if (lost === 0) break;
      await sleep(250);
    }
    const stats = await ctx.receiver.stats();
    const ms = (stats.lastOkAt ?? startedAt) - startedAt;
    result.figures.push(
      { name: 'successful deliveries/s', value: rate(stats.ok, ms), unit: 'del/s' },
      { name: 'requests/s (200 + 503)', value: rate(stats.requests, ms), unit: 'req/s' },
      { name: 'contacts without their final list', value: lost, unit: 'contacts', target: { op: '==', value: 0 } },
      {
        name: 'older list after a newer one',
        value: stats.orderViolations,
        unit: 'lists',
        target: { op: '==', value: 0 },
      },
    );
    result.notes.push(
      `${fmt(contacts)} contacts, 2 + 1 messages each; ${fmt(stats.requests)} requests: ${fmt(stats.ok)} answered 200, ${fmt(stats.rejected)} answered 503, in ${fmt(ms / 1000, 1)} s`,
      `duplicate 200s (same delivery id twice): ${stats.duplicateOks}`,
    );
  });
  return result;
}
