/**
 * The real server process (main.ts) on PostgreSQL behind a TCP relay that stops forwarding (a network partition:
 * the sockets stay open, no byte passes, no RST), then SIGTERM. The engine's claim query never returns and the
 * pool's connections hang: before shutdown was bounded, the process waited for them for ever (it was still running
 * 30 s after SIGTERM with --shutdown-deadline-ms 1000, and exited only when the relay forwarded again).
 */
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { spawnServer, storeUrls, type ChildServer } from '../e2e/harness.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A TCP relay on 127.0.0.1 (port 0) to `target` that can stop forwarding, both ways, keeping every socket open. */
async function freezableRelay(target: URL) {
  let frozen = false;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(target.port || 5432), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    // Frozen, bytes are dropped and FINs are not passed on either: nothing crosses a partition.
    client.on('data', (d: Buffer) => void (frozen || upstream.write(d)));
    upstream.on('data', (d: Buffer) => void (frozen || client.write(d)));
    client.on('end', () => void (frozen || upstream.end()));
    upstream.on('end', () => void (frozen || client.end()));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    freeze: () => void (frozen = true),
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const pg = storeUrls().find((t) => t.engine === 'postgres')!;

describe('SIGTERM while PostgreSQL stops answering', () => {
  let server: ChildServer | undefined;
  let relay: Awaited<ReturnType<typeof freezableRelay>> | undefined;
  afterEach(async () => {
    if (server) {
      // kill() keeps the SIGTERM's promise: a process that hangs on it is killed by its pid.
      try {
        process.kill(server.pid, 'SIGKILL');
      } catch {
        // gone
      }
      await server.kill();
    }
    await relay?.close();
  });
  afterAll(() => pg.release());

  it('exits within a few seconds of --shutdown-deadline-ms instead of waiting for the database', async () => {
    const url = new URL(await pg.newUrl());
    relay = await freezableRelay(url);
    const viaRelay = new URL(url);
    viaRelay.port = String(relay.port);
    // Idle (nothing to deliver): the engine claims every 50 ms, so a claim is on its way when the relay freezes.
    server = await spawnServer(viaRelay.toString(), ['--shutdown-deadline-ms', '1000', '--poll-interval-ms', '50']);
    await sleep(300);
    relay.freeze();
    await sleep(500);
    const signalled = Date.now();
    const exited = server.kill('SIGTERM');
    const outcome = await Promise.race([
      exited.then((code) => ({ code })),
      sleep(10_000).then(() => 'still running' as const),
    ]);
    const took = Date.now() - signalled;
    expect(outcome, `${took} ms after SIGTERM (deadline 1,000 ms)`).not.toBe('still running');
    // The deadline, the engine's give-back time (1 s), the store's close timeout (1 s, then its connections are
    // cut), and the start-up of nothing: well under 5 s.
    expect(took).toBeLessThan(5_000);
  }, 30_000);
});
