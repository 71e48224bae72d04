/**
 * A webhook's `rate_limit_per_second` across server processes: two real server processes on one PostgreSQL database
 * share the deliveries of one rate-limited webhook and send to one real receiver, which records when each request
 * arrived. The limit holds for the service, not for each process: they lease their tokens from one bucket in the
 * database (Store.leaseRateTokens), where each once kept its own and together sent twice the limit.
 * @see POSTGRES.md "A webhook's rate limit is global", EndpointLimiter (the bound checked here)
 */
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, describe, expect, it } from 'vitest';
import { LEASED_TOKEN_TTL_MS } from '../../src/delivery/limiter.js';
import { createTestDatabase } from '../../src/store/postgres/test-db.js';
import { accountId, eventually, inboxMessage, spawnServer, type ChildServer } from '../e2e/harness.js';

const RATE = 5;
/** At RATE a second, about 3 s of sending after the first second's worth: both processes stay busy for all of it. */
const CONTACTS = 20;
const WINDOW_MS = 1_000;
/**
 * Requests whose arrival may be late by this much (ms) and bunch up with later ones in a window: the receiver sees
 * arrivals, the bound is on the attempts begun, and a loaded machine delays a request's arrival after its token.
 */
const ARRIVAL_SLACK_MS = 200;
/**
 * The most arrivals any one-second window may see: the bound the limiter documents, rate × (1 + W + T) attempts begun
 * in a window of W seconds (T: the expiry of leased tokens), over a window widened by the arrival slack. 12 for 5 a
 * second; with a bucket per process, the two processes sent about 20 in the first second.
 */
const MAX_IN_WINDOW = Math.floor(RATE * (1 + (WINDOW_MS + ARRIVAL_SLACK_MS + LEASED_TOKEN_TTL_MS) / 1000));

const WORKER_ARGS = [
  '--log-level',
  'debug', // "attempt recorded" lines: which process sent what
  '--request-timeout-ms',
  '1000',
  '--lease-ms',
  '4000',
  '--poll-interval-ms',
  '20',
  '--pg-pool-size',
  '4',
  '--shutdown-deadline-ms',
  '1000',
];

/** The most of `times` (ms, sorted) within any window of `windowMs` (each window starting at an arrival). */
function busiestWindow(times: readonly number[], windowMs: number): number {
  let most = 0;
  for (let i = 0, j = 0; i < times.length; i++) {
    while (j < times.length && times[j]! < times[i]! + windowMs) j++;
    most = Math.max(most, j - i);
  }
  return most;
}

describe('a webhook rate limit with two server processes on one PostgreSQL database', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterAll(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn().catch(() => undefined);
  });

  it('holds for the two together: no one-second window sees more than the documented bound', async () => {
    const database = await createTestDatabase();
    cleanups.push(() => database.drop());
    const receiver: MockReceiver = await createMockReceiver();
    cleanups.push(() => receiver.close());
    const account = accountId('shared-rate');
    const recorded = [0, 0];
    const workers: ChildServer[] = await Promise.all(
      [0, 1].map((i) =>
        spawnServer(database.url, WORKER_ARGS, {
          onLog: (entry) => {
            if (entry.msg === 'attempt recorded' && entry.accountId === account) recorded[i]! += 1;
          },
        }),
      ),
    );
    for (const w of workers) cleanups.push(() => w.kill('SIGKILL'));
    const [p1, p2] = workers as [ChildServer, ChildServer];

    await p1.clients.upsertWebhook({ accountId: account, url: `${receiver.url}/hook`, rateLimitPerSecond: RATE });
    // Through both processes: each wakes its own first lane at once, so both claim from the start.
    const contacts = Array.from({ length: CONTACTS }, (_, i) => `c-${i}`);
    const published = await Promise.all([
      p1.clients.publishMessages({ accountId: account, messages: contacts.slice(0, 10).map((c) => inboxMessage(c)) }),
      p2.clients.publishMessages({ accountId: account, messages: contacts.slice(10).map((c) => inboxMessage(c)) }),
    ]);
    const ids = published.flatMap((p) => p.deliveries.map((d) => d.deliveryId));
    expect(ids).toHaveLength(CONTACTS);

    await eventually(
      () => (receiver.records.list().length >= CONTACTS ? true : undefined),
      15_000,
      'every delivery received',
    );
    const records = receiver.records.list();
    const times = records.map((r) => Date.parse(r.receivedAt)).sort((a, b) => a - b);
    const busiest = busiestWindow(times, WINDOW_MS);
    console.log(
      `rate-limit across processes: busiest 1 s window ${busiest} (bound ${MAX_IN_WINDOW}), ` +
        `${CONTACTS} requests over ${times.at(-1)! - times[0]!} ms, recorded per process ${recorded.join('/')}`,
    );
    expect(busiest).toBeLessThanOrEqual(MAX_IN_WINDOW);
    // Each delivery once, answered 200: waiting for a token is not an attempt.
    expect(records.every((r) => r.answer.status === 200)).toBe(true);
    expect(new Set(records.map((r) => r.deliveryId))).toEqual(new Set(ids));
    expect(records).toHaveLength(CONTACTS);
    // Both processes sent (each had its own share of the bucket to lease from).
    await eventually(() => (recorded[0]! + recorded[1]! >= CONTACTS ? true : undefined), 5_000, 'every attempt logged');
    expect(recorded.every((n) => n > 0)).toBe(true);

    expect(await Promise.all([p1.kill('SIGTERM'), p2.kill('SIGTERM')])).toEqual([0, 0]);
  }, 60_000);
});
