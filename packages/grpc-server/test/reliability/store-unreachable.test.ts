/**
 * A database that cannot be reached answers UNAVAILABLE (the caller may retry), not INTERNAL: a real server on
 * PostgreSQL behind a TCP relay that then goes away (its connections reset, new ones refused); once the database is
 * reachable again, the same call succeeds. Meanwhile the process says it is not ready (gRPC health NOT_SERVING,
 * `GET /readyz` 503, `store_reachable` 0) and stays alive (`GET /healthz` 200), and is ready again once it is back.
 */
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { status } from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import {
  accountId,
  checkHealth,
  eventually,
  failure,
  startTestServer,
  storeUrls,
  type TestServer,
} from '../e2e/harness.js';

/**
 * A TCP relay to `target` on a fixed local port: `stop()` resets every connection and refuses new ones; `blackhole()`
 * forwards nothing more on the connections open now, without closing them (a partition that drops packets, a NAT or
 * firewall that forgot them), while new connections go through.
 */
async function relay(target: URL, port = 0) {
  const sockets = new Set<Socket>();
  const pairs = new Set<[Socket, Socket]>();
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port || 5432), target.hostname);
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    for (const s of pair) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        pairs.delete(pair);
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    blackhole: () => {
      for (const [client, upstream] of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        // Read and dropped: nothing reaches the other side, nothing is closed.
        for (const s of [client, upstream]) s.on('data', () => undefined);
      }
    },
    stop: () => {
      for (const s of sockets) s.resetAndDestroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const pg = storeUrls().find((t) => t.engine === 'postgres')!;

describe('a PostgreSQL store that cannot be reached', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterAll(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn();
    await pg.release();
  });

  it('answers UNAVAILABLE while it is down, and serves again once it is back', async () => {
    const url = new URL(await pg.newUrl());
    const first = await relay(url);
    const viaRelay = new URL(url);
    viaRelay.port = String(first.port);
    const t: TestServer = await startTestServer(viaRelay.toString());
    cleanups.push(() => t.stop());
    const account = accountId();
    await t.clients.upsertWebhook({ accountId: account, url: 'http://127.0.0.1:9/in', signingSecret: '' });

    await first.stop();
    const down = await failure(t.clients.getWebhook({ accountId: account }));
    expect({ code: down.code, details: down.details }).toEqual({
      code: status.UNAVAILABLE,
      details: 'the store cannot be reached; try again',
    });
    expect(down.rich?.errorInfo?.reason).toBe('STORE_UNAVAILABLE');

    // Back on the same port: the pool opens new connections.
    const again = await relay(url, first.port);
    cleanups.push(() => again.stop());
    const back = await t.clients.getWebhook({ accountId: account });
    expect(back.webhook?.accountId).toBe(account);
  });

  it('reports not ready while it is down (health NOT_SERVING, /readyz 503), alive all along, ready once it is back', async () => {
    const url = new URL(await pg.newUrl());
    const first = await relay(url);
    const viaRelay = new URL(url);
    viaRelay.port = String(first.port);
    const t: TestServer = await startTestServer(viaRelay.toString(), {
      storeProbeIntervalMs: 100,
      metricsAddress: '127.0.0.1:0',
    });
    cleanups.push(() => t.stop());
    const http = `http://${t.server.metricsAddress!}`;
    const probes = async () => {
      const get = async (path: string) => {
        const res = await fetch(`${http}${path}`);
        return `${res.status} ${(await res.text()).trim()}`;
      };
      // Health first, the gauge last: the probe sets the gauge, then health, in one go, so a snapshot whose health
      // says the store went down has the gauge that says so too (read first, it could be the one from before).
      const health = await checkHealth(t.server.address, '');
      const service = await checkHealth(t.server.address, 'app_inbox.v1.MessageService');
      const readyz = await get('/readyz');
      const healthz = await get('/healthz');
      const metrics = await (await fetch(`${http}/metrics`)).text();
      return { health, service, readyz, healthz, gauge: /^store_reachable (\d)$/m.exec(metrics)?.[1] };
    };
    const ready = { health: 'SERVING', service: 'SERVING', readyz: '200 ready', healthz: '200 ok', gauge: '1' };
    expect(await probes()).toEqual(ready);

    await first.stop();
    const down = {
      health: 'NOT_SERVING',
      service: 'NOT_SERVING',
      readyz: '503 not ready: the store answered with an error',
      healthz: '200 ok',
      gauge: '0',
    };
    const seen = await eventually(async () => {
      const now = await probes();
      return now.health === 'NOT_SERVING' ? now : undefined;
    }, 5_000);
    expect(seen).toEqual(down);

    const again = await relay(url, first.port);
    cleanups.push(() => again.stop());
    await eventually(async () => ((await probes()).health === 'SERVING' ? true : undefined), 5_000);
    expect(await probes()).toEqual(ready);
  });

  it('is ready again while a pooled connection that went dead silently still holds a ping unanswered', async () => {
    const url = new URL(await pg.newUrl());
    const hub = await relay(url);
    cleanups.push(() => hub.stop());
    const viaRelay = new URL(url);
    viaRelay.port = String(hub.port);
    const t: TestServer = await startTestServer(viaRelay.toString(), { storeProbeIntervalMs: 100 });
    cleanups.push(() => t.stop());
    const health = () => checkHealth(t.server.address, '');
    expect(await health()).toBe('SERVING');
    // Calls side by side: the pool keeps several connections open and idle, and the next ping takes one of them.
    const account = accountId();
    await t.clients.upsertWebhook({ accountId: account, url: 'http://127.0.0.1:9/in', signingSecret: '' });
    await Promise.all(Array.from({ length: 8 }, () => t.clients.getWebhook({ accountId: account })));

    // The connections open now go silent (no reset: TCP would retransmit for many minutes); new ones go through.
    hub.blackhole();
    await eventually(async () => ((await health()) === 'NOT_SERVING' ? true : undefined), 5_000);
    // The database answers on a new connection: the process is ready again, not once TCP gives up on the dead one.
    await eventually(async () => ((await health()) === 'SERVING' ? true : undefined), 5_000);
  });
});
