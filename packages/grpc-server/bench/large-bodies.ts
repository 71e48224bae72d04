/**
 * `npm run bench:large-bodies -w @app-inbox/grpc-server -- [--contacts 20] [--heap-mib 400] [--pg URL] [-- flags]`:
 * the server's memory with lists of the largest size. Each contact gets 1,000 messages (the cap) with a 64 KiB
 * customData, a 10,000-character content and a 1,000-character title: a body of about 85 MB. They are queued with
 * the webhook disabled, then the webhook is enabled and a node:http receiver reads each body and answers 200 after
 * 200 ms. Prints the time to deliver them all and the server's peak RSS (VmHWM); `--heap-mib` runs the server with
 * `--max-old-space-size` (a container's memory limit), where a server that holds too much dies of it; `--pg` runs it
 * on a fresh database of that PostgreSQL server instead of SQLite. Build first
 * (`npx nx run @app-inbox/grpc-server:build`): the server runs from dist/.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import type { InboxMessage } from '../src/gen/app_inbox/v1/message.js';
import { positiveInt } from './lib/cli.js';
import { BenchClient, configureWebhook, encodePublish } from './lib/grpc.js';
import { ServerProcess } from './lib/server-process.js';
import { withDatabase } from './scenarios/postgres.js';

const program = new Command('large-bodies')
  .option('--contacts <n>', 'contacts of 1,000 large messages each', positiveInt, 20)
  .option('--heap-mib <n>', "the server's V8 heap limit (--max-old-space-size); default Node's own", positiveInt)
  .option('--pg <url>', 'a PostgreSQL server (a database is created on it and dropped); default SQLite')
  .argument('[server-flags...]', 'more flags of the server (after --), e.g. --max-body-memory-mib 64')
  .parse();
const options = program.opts<{ contacts: number; heapMib?: number; pg?: string }>();
const serverFlags = program.args;

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;

let received = 0;
let receivedBytes = 0;
const receiver = createServer((req, res) => {
  req.on('data', (chunk: Buffer) => {
    receivedBytes += chunk.length;
  });
  req.on('end', () => {
    received += 1;
    setTimeout(() => res.end(), 200);
  });
});
await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;

const dir = mkdtempSync(join(tmpdir(), 'bench-large-bodies-'));
if (options.pg === undefined) await run(join(dir, 'store.db'));
else await withDatabase(options.pg, run);
receiver.close();
rmSync(dir, { recursive: true, force: true });

async function run(store: string): Promise<void> {
  const server = await ServerProcess.start({
    store,
    args: ['--webhook-allow-list', '127.0.0.1', ...serverFlags],
    nodeFlags: options.heapMib === undefined ? [] : [`--max-old-space-size=${options.heapMib}`],
    env: { APP_INBOX_SECRET_KEYS: `bench:${randomBytes(32).toString('base64')}` },
  });
  const client = new BenchClient(server.address);
  try {
    const account = `bench-large-${randomUUID().slice(0, 8)}`;
    await configureWebhook(client, account, url, false);
    const customData = JSON.stringify({ blob: 'x'.repeat(64 * 1024 - 20) });
    const content = 'é'.repeat(10_000);
    let createdDate = Date.now() - 60_000;
    for (let c = 0; c < options.contacts; c++) {
      // 200 messages per call: about 17 MB, under the server's 64 MiB request limit.
      for (let sent = 0; sent < 1_000; sent += 200) {
        const messages: InboxMessage[] = Array.from({ length: 200 }, () => ({
          externalCustomerId: `contact-${c}`,
          id: randomUUID(),
          createdDate: (createdDate += 1),
          title: 'T'.repeat(1_000),
          content,
          image: '',
          link: '',
          category: 'bulk',
          customData,
        }));
        await client.publishEncoded(encodePublish(account, messages));
      }
    }
    console.log(
      `queued ${options.contacts} contacts x 1,000 messages; server peak RSS so far ${mib(server.peakRssBytes())}`,
    );
    // A server that dies of the first claims may do so before it answers.
    await configureWebhook(client, account, url, true).catch((error: Error) => console.log(`enable: ${error.message}`));
    const started = Date.now();
    while (received < options.contacts && Date.now() - started < 600_000) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      if (Number.isNaN(server.rssBytes())) break;
    }
    const seconds = (Date.now() - started) / 1000;
    const alive = !Number.isNaN(server.rssBytes());
    console.log(
      `delivered ${received} of ${options.contacts} bodies (${mib(receivedBytes)}) in ${seconds.toFixed(1)} s; ` +
        `server peak RSS ${mib(server.peakRssBytes())}; ${alive ? 'server alive' : 'SERVER DIED'}`,
    );
    if (!alive) console.log(server.logTail.slice(-12).join('\n'));
  } finally {
    client.close();
    await server.stop();
  }
}
