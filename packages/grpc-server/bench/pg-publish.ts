/**
 * `npm run bench:pg-publish -w @app-inbox/grpc-server -- [--pg URL] [--rounds 3] [--calls 1000]`:
 * what a small publish (2 contacts × 3 messages, 4 calls in flight, the shape of scenario 2's paced phase) costs
 * PostgreSQL, with the publish statement named (parsed once per connection: the default for calls of at most
 * 64 messages) and unnamed (`namedPublishMaxMessages: 0`: parsed and planned at every call). The two run in
 * turn (A B A B ...), each on a fresh database of its own, so that both see the same machine. It prints calls/s
 * and PostgreSQL's CPU per call: the user + system time of every `postgres` process in /proc, so only for a
 * server on this machine (the bench's test cluster), with nothing else using it.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { Command } from 'commander';
import { openPostgresStore, type PostgresStore } from '../src/store/postgres/postgres-store.js';
import { storedMessage } from './lib/publish.js';
import { processCpuMs } from './lib/server-process.js';
import { positiveInt } from './lib/cli.js';
import { fmt, percentile, wallMs } from './lib/stats.js';
import { withDatabase } from './scenarios/postgres.js';

/** CPU time (ms) of every process named `postgres` so far (those that end meanwhile count 0). */
function postgresCpuMs(): number {
  let ms = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let comm: string;
    try {
      comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      continue; // gone meanwhile
    }
    if (comm !== 'postgres') continue;
    const cpu = processCpuMs(Number(pid));
    if (!Number.isNaN(cpu)) ms += cpu;
  }
  return ms;
}

async function round(store: PostgresStore, calls: number, tag: string): Promise<{ perS: number; cpuUs: number }> {
  const publish = (i: number) => {
    const now = Date.now();
    const [a, b] = [`${tag}-${2 * i}`, `${tag}-${2 * i + 1}`];
    const messages = [a, a, a, b, b, b].map((c) => storedMessage(c, now));
    return store.publish({ accountId: 'bench', now, messages });
  };
  for (let i = 0; i < 50; i++) await publish(calls + i); // warm the connections (and their named statement)
  const cpu0 = postgresCpuMs();
  const t0 = wallMs();
  const inFlight: Array<Promise<unknown>> = [];
  for (let i = 0; i < calls; i++) {
    inFlight.push(publish(i));
    if (inFlight.length >= 4) await inFlight.shift();
  }
  await Promise.all(inFlight);
  const ms = wallMs() - t0;
  return { perS: (calls * 1000) / ms, cpuUs: ((postgresCpuMs() - cpu0) * 1000) / calls };
}

async function main(): Promise<void> {
  const opts = new Command()
    .option(
      '--pg <url>',
      'PostgreSQL server (a database is created and dropped per variant)',
      process.env.APP_INBOX_TEST_PG_URL,
    )
    .option('--rounds <n>', 'rounds of each variant', positiveInt, 3)
    .option('--calls <n>', 'publish calls per round', positiveInt, 1000)
    .parse()
    .opts<{ pg?: string; rounds: number; calls: number }>();
  if (!opts.pg) throw new Error('--pg URL or APP_INBOX_TEST_PG_URL is required');

  const variants = [
    { name: 'named (default)', namedPublishMaxMessages: 64 },
    { name: 'unnamed', namedPublishMaxMessages: 0 },
  ];
  const results = new Map<string, Array<{ perS: number; cpuUs: number }>>(variants.map((v) => [v.name, []]));
  for (let r = 0; r < opts.rounds; r++) {
    for (const variant of variants) {
      await withDatabase(opts.pg, async (url) => {
        const store = await openPostgresStore({
          connectionString: url,
          namedPublishMaxMessages: variant.namedPublishMaxMessages,
        });
        try {
          const result = await round(store, opts.calls, `r${r}`);
          results.get(variant.name)!.push(result);
          console.log(
            `round ${r + 1} ${variant.name}: ${fmt(result.perS)} calls/s, ${fmt(result.cpuUs)} µs PostgreSQL CPU per call`,
          );
        } finally {
          await store.close();
        }
      });
    }
  }
  const median = (name: string, key: 'perS' | 'cpuUs') =>
    percentile(
      results.get(name)!.map((x) => x[key]),
      50,
    );
  const [named, unnamed] = variants.map((v) => v.name) as [string, string];
  console.log(
    `medians: named ${fmt(median(named, 'perS'))} calls/s, ${fmt(median(named, 'cpuUs'))} µs/call; ` +
      `unnamed ${fmt(median(unnamed, 'perS'))} calls/s, ${fmt(median(unnamed, 'cpuUs'))} µs/call; ` +
      `named/unnamed calls/s ${fmt((100 * median(named, 'perS')) / median(unnamed, 'perS'))}%, ` +
      `CPU per call ${fmt((100 * median(named, 'cpuUs')) / median(unnamed, 'cpuUs'))}%`,
  );
}

await main();
