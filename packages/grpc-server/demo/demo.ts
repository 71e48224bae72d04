/**
 * `npm run demo`: the whole service on this machine in one command (issue 8 "A demo"). Starts the server
 * (SQLite in a temporary directory) and the mock receiver, configures a webhook with Basic auth, publishes
 * sample messages (a contact without an externalCustomerId, one contact answered 503 once), follows the
 * outcomes over WatchDeliveries, prints a summary and the receiver page's URL, then keeps running until
 * Ctrl-C. `--exit` stops after the summary (tests, CI). Server logs go to a file in the temporary directory.
 * @see OPERATIONS.md "Demo"
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { pino } from 'pino';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { ApiClient } from '../src/cli/client.js';
import { count, stateName, table, time } from '../src/cli/format.js';
import { loadConfig } from '../src/config.js';
import { DeliveryState, type WatchDeliveriesResponse } from '../src/gen/app_inbox/v1/delivery.js';
import { createLogger } from '../src/observability/logger.js';
import { startServer, type RunningServer } from '../src/server.js';
import { DEMO_ACCOUNT, FLAKY_CONTACT, sampleMessages, summaryRow, totals, type SummaryRow } from './scenario.js';

interface DemoOptions {
  exit: boolean;
  receiverPort: number;
  timeoutSeconds: number;
}

function parseOptions(argv: string[]): DemoOptions {
  const port = (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n > 65_535) throw new InvalidArgumentError('must be a port from 0 to 65535.');
    return n;
  };
  const seconds = (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < 1) throw new InvalidArgumentError('must be a positive integer.');
    return n;
  };
  const program = new Command('demo')
    .description('Runs the server and the mock receiver, delivers sample messages and shows what happened.')
    .option('--exit', 'stop after the summary instead of running until Ctrl-C', false)
    .option(
      '--receiver-port <port>',
      'port of the mock receiver (0: any free port; 8080 falls back to one)',
      port,
      8080,
    )
    .option('--timeout-seconds <n>', 'longest wait for the outcomes', seconds, 60)
    .parse(argv, { from: 'user' });
  return program.opts<DemoOptions>();
}

const say = (line = ''): void => {
  process.stdout.write(`${line}\n`);
};

/** The mock receiver on `port`, or on a free port when that one is taken (8080 often is). */
async function startReceiver(port: number, password: string): Promise<MockReceiver> {
  const options = {
    username: 'demo',
    password,
    // The flaky contact's first request gets a 503 (a rule used once): its delivery is retried, same id.
    rules: [{ id: 'demo-503-once', match: { externalCustomerId: FLAKY_CONTACT }, answers: [{ status: 503 }] }],
  };
  try {
    return await createMockReceiver({ ...options, port });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || port === 0) throw error;
    return createMockReceiver({ ...options, port: 0 });
  }
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const dir = mkdtempSync(join(tmpdir(), 'app-inbox-demo-'));
  const logFile = join(dir, 'server.log');
  const resources: Array<() => Promise<void> | void> = [() => rmSync(dir, { recursive: true, force: true })];
  const stop = async (): Promise<void> => {
    for (const fn of resources.splice(0).reverse()) await fn();
  };

  try {
    // The configuration goes through the same validation as the server's flags; the machine's APP_INBOX_*
    // variables are not read, so the demo runs the same everywhere.
    const config = loadConfig(
      [
        '--grpc-address',
        '127.0.0.1:0',
        '--store',
        join(dir, 'store.db'),
        '--metrics-address',
        '127.0.0.1:0',
        // The receiver runs on this machine: loopback must be allowed (SECURITY.md).
        '--webhook-allow-list',
        '127.0.0.1',
        // Retries within a second, so the retried delivery is seen without waiting.
        '--backoff-base-ms',
        '500',
        '--shutdown-deadline-ms',
        '2000',
      ],
      {},
    );
    const password = randomBytes(12).toString('base64url');
    const receiver = await startReceiver(options.receiverPort, password);
    resources.push(() => receiver.close());
    const logger = createLogger({ level: 'info', destination: pino.destination({ dest: logFile, sync: true }) });
    const server: RunningServer = await startServer(config, { logger });
    resources.push(() => server.close());
    const client = new ApiClient({ address: server.address, timeoutMs: 10_000 });
    resources.push(() => client.close());

    say('App Inbox webhooks: demo');
    say(`  gRPC server    ${server.address}   (SQLite store and logs in ${dir}, removed on exit)`);
    say(`  metrics        http://${server.metricsAddress}/metrics`);
    say(`  mock receiver  ${receiver.url}/   (Basic auth user "demo", a random password)`);
    say();

    const hookUrl = `${receiver.url}/webhooks/app-inbox`;
    await client.upsertWebhook({
      accountId: DEMO_ACCOUNT,
      url: hookUrl,
      basicAuth: { username: 'demo', password },
    });
    say(`1. Webhook of account ${DEMO_ACCOUNT}: ${hookUrl} with Basic auth.`);
    say(`   The receiver will answer 503 once to contact "${FLAKY_CONTACT}": watch it being retried.`);

    // Watch first: once the server has subscribed (response headers), no outcome can be missed.
    const watch = client.watchDeliveries({ accountId: DEMO_ACCOUNT });
    watch.on('error', () => undefined); // cancelled at the end
    await once(watch, 'metadata');
    resources.push(() => watch.cancel());

    const outcomes = new Map<string, WatchDeliveriesResponse>();
    const finished = new Set<string>();
    let expected = new Set<string>();
    let allDone: () => void = () => undefined;
    const done = new Promise<void>((resolve) => (allDone = resolve));
    watch.on('data', (o: WatchDeliveriesResponse) => {
      outcomes.set(o.deliveryId, o);
      const state = stateName(o.state);
      const answer = o.statusCode !== undefined ? `HTTP ${o.statusCode}` : (o.errorKind ?? '');
      if (o.state !== DeliveryState.DELIVERY_STATE_RETRYING) finished.add(o.deliveryId);
      // An outcome may come before the publish answer (then the total is not known yet).
      const progress = expected.size > 0 ? `[${finished.size}/${expected.size}]` : `[${finished.size}]`;
      const next =
        o.nextAttemptTimeMs !== undefined
          ? `, next attempt in ${((o.nextAttemptTimeMs - Date.now()) / 1000).toFixed(1)} s`
          : '';
      say(
        `   ${progress.padEnd(7)} ${o.externalCustomerId.padEnd(6)} ${state.padEnd(10)} attempt ${o.attemptNo}, ${answer}, ${o.messageIds.length} message${o.messageIds.length === 1 ? '' : 's'}${next}`,
      );
      if (expected.size > 0 && [...expected].every((id) => finished.has(id))) allDone();
    });

    const messages = sampleMessages(Date.now());
    const published = await client.publishMessages({ accountId: DEMO_ACCOUNT, messages });
    expected = new Set(published.deliveries.map((d) => d.deliveryId));
    say(
      `2. Published ${messages.length} messages: ${published.accepted} accepted, ${published.skippedWithoutExternalCustomerId} skipped without externalCustomerId (index ${published.skippedIndices.join(', ')}); ${published.deliveries.length} contacts scheduled, one delivery each.`,
    );
    say('3. Outcomes, as WatchDeliveries reports them:');
    if ([...expected].every((id) => finished.has(id))) allDone();

    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      done.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), options.timeoutSeconds * 1000))),
    ]);
    clearTimeout(timer);

    const rows: SummaryRow[] = [];
    for (const d of published.deliveries) {
      const { delivery } = await client.getDelivery({ deliveryId: d.deliveryId });
      if (delivery) rows.push(summaryRow(delivery, stateName(delivery.state)));
    }
    const sum = totals(rows, published.skippedWithoutExternalCustomerId);
    say();
    say('Summary');
    process.stdout.write(
      table(
        ['CONTACT', 'DELIVERY', 'ATTEMPTS', 'ANSWERS', 'RESULT'],
        [
          ...rows.map((r) => [r.contact, r.deliveryId, String(r.attempts), r.answers, r.result]),
          ...published.skippedIndices.map((i) => [
            '(none)',
            '-',
            '0',
            '-',
            `skipped: message ${i} has no externalCustomerId`,
          ]),
        ],
      ),
    );
    say();
    say(
      `delivered ${count(sum.delivered)}, retried ${count(sum.retried)}, failed ${count(sum.failed)}, skipped ${count(sum.skipped)}`,
    );
    if (timedOut) say(`Some deliveries did not finish within ${options.timeoutSeconds} s.`);
    say();
    say(`Receiver page (every request, its headers and body): ${receiver.url}/`);
    say(`Metrics: http://${server.metricsAddress}/metrics`);
    say(
      `Try the CLI: npm run cli -w @app-inbox/grpc-server -- --address ${server.address} deliveries list --account ${DEMO_ACCOUNT}`,
    );
    say(`Finished at ${time(Date.now())}.`);

    if (!options.exit) {
      say('Running until Ctrl-C (or run with --exit to stop after the summary).');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      say('Stopping...');
    }
    await stop();
    return timedOut ? 1 : 0;
  } catch (error) {
    process.stderr.write(`demo: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.stderr.write(`server log: ${logFile}\n`);
    await stop().catch(() => undefined);
    return 1;
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`demo: ${String(error)}\n`);
    process.exitCode = 1;
  },
);
