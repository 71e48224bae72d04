/**
 * The server's own life: health and reflection over gRPC, the sweeper, ordered idempotent shutdown (watch
 * streams end cleanly, the store closes last), and no secret in any log line.
 */
import { Writable } from 'node:stream';
import { status, type ServiceError } from '@grpc/grpc-js';
import { createMockReceiver } from '@app-inbox/mock-receiver';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { openStore } from '../../src/store/index.js';
import type { Store } from '../../src/store/types.js';
import { startServer } from '../../src/server.js';
import { accountId, checkHealth, connect, eventually, inboxMessage, storeUrls, testConfig, watch } from './harness.js';

/** A store that records which of its methods were called, in order. */
function recording(store: Store, calls: string[]): Store {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        calls.push(String(property));
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

describe.each(storeUrls())('server lifecycle ($engine)', ({ newUrl, release }) => {
  afterAll(() => release());

  it('reports health, sweeps on its interval, and shuts down in order, ending watch streams', async () => {
    const calls: string[] = [];
    const url = await newUrl();
    const store = recording(await openStore(url), calls);
    const server = await startServer(testConfig(url, { sweepIntervalMs: 100 }), {
      logger: pino({ level: 'silent' }),
      store,
    });
    const clients = connect(server.address);
    try {
      expect(await checkHealth(server.address, '')).toBe('SERVING');
      expect(await checkHealth(server.address, 'app_inbox.v1.MessageService')).toBe('SERVING');
      await eventually(() => (calls.filter((c) => c === 'sweep').length >= 2 ? true : undefined), 5_000, 'two sweeps');

      const watcher = watch(clients, accountId());
      await watcher.ready;
      const closing = server.close(1_000);
      expect(server.close(1_000)).toBe(closing); // idempotent
      await closing;
      // The store is closed last, once, after the engine and the sweeper stopped using it.
      expect(calls.filter((c) => c === 'close')).toEqual(['close']);
      expect(calls.at(-1)).toBe('close');
      // The watch stream was ended by the server with OK, not cut.
      expect(await watcher.ended).toBe(status.OK);
      expect(watcher.events).toEqual([]);
      const late = await clients.getWebhook({ accountId: 'x' }).then(
        () => 'answered',
        (error: ServiceError) => error.code,
      );
      expect(late).not.toBe('answered');
    } finally {
      clients.close();
      await server.close(500);
    }
  });

  it('logs no Basic auth password and no signing secret, even at trace level', async () => {
    let logged = '';
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logged += chunk.toString();
        done();
      },
    });
    const password = 'Tr0ub4dor-and-3-more-words';
    const signingSecret = `whsec_${Buffer.from('0123456789abcdef0123456789abcdef').toString('base64')}`;
    const receiver = await createMockReceiver({ username: 'svc', password: 'the-right-one' });
    const server = await startServer(testConfig(await newUrl(), { logLevel: 'trace' }), {
      logger: pino({ level: 'trace' }, sink),
    });
    const clients = connect(server.address);
    try {
      const acc = accountId();
      await clients.upsertWebhook({
        accountId: acc,
        url: `${receiver.url}/in`,
        basicAuth: { username: 'svc', password },
        signingSecret,
      });
      // Refused: a bad URL with the secret in a field next to it.
      await clients
        .upsertWebhook({
          accountId: acc,
          url: 'nope',
          basicAuth: { username: 'svc', password: `${password}\u0001` },
          signingSecret,
        })
        .catch(() => undefined);
      // The receiver rejects the password: attempts fail with 401 and are logged.
      await clients.publishMessages({ accountId: acc, messages: [inboxMessage('c')] });
      await receiver.records.waitFor((r) => r.answer.status === 401);
      await eventually(() => (logged.includes('rpc refused') ? true : undefined), 5_000, 'the refused call in the log');
    } finally {
      clients.close();
      await server.close(500);
      await receiver.close();
    }
    expect(logged).toContain('gRPC server listening');
    expect(logged).not.toContain(password);
    expect(logged).not.toContain(signingSecret);
    expect(logged).not.toContain(Buffer.from(`svc:${password}`).toString('base64'));
  });
});
