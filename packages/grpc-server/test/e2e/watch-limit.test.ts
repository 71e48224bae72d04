/**
 * `--max-watch-streams`: WatchDeliveries streams open at once. Every stream is told every outcome, so their number is
 * bounded; one more is refused with RESOURCE_EXHAUSTED, and a closed stream makes room again.
 */
import { connect as connectHttp2, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Metadata, status } from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeStatusDetails } from '../../src/api/errors.js';
import { loadConfig } from '../../src/config.js';
import { WatchDeliveriesRequest } from '../../src/gen/app_inbox/v1/delivery.js';
import { deliveredOutcome } from '../../src/store/conformance.js';
import { accountId, startTestServer, storeUrls, watch, type TestServer } from './harness.js';

describe('the number of WatchDeliveries streams', () => {
  const [sqlite] = storeUrls();
  let t: TestServer | undefined;
  afterAll(async () => {
    await t?.stop();
    await sqlite!.release();
  });

  it('is read from --max-watch-streams, 1,000 by default, 1 to 100,000', () => {
    expect(loadConfig([], {}).maxWatchStreams).toBe(1_000);
    expect(loadConfig(['--max-watch-streams', '2'], {}).maxWatchStreams).toBe(2);
    expect(() => loadConfig(['--max-watch-streams', '0'], {})).toThrow(/--max-watch-streams/);
  });

  it('refuses one stream more than the limit with RESOURCE_EXHAUSTED, and takes one again once one closed', async () => {
    t = await startTestServer(await sqlite!.newUrl(), { maxWatchStreams: 2 });
    const first = watch(t.clients, accountId());
    const second = watch(t.clients, '');
    await Promise.all([first.ready, second.ready]);
    const third = watch(t.clients, accountId());
    expect(await third.ended).toBe(status.RESOURCE_EXHAUSTED);
    first.cancel();
    expect(await first.ended).toBe(status.CANCELLED);
    // The server learns of the cancel a moment later: a new watch is taken within a second.
    let taken = false;
    for (const deadline = Date.now() + 2_000; !taken && Date.now() < deadline;) {
      const next = watch(t.clients, accountId());
      taken = await Promise.race([next.ready.then(() => true), next.ended.then(() => false)]);
      if (!taken) await new Promise((resolve) => setTimeout(resolve, 50));
      else next.cancel();
    }
    expect(taken).toBe(true);
    second.cancel();
  });

  it('ends a stream whose reader fell 10,000 outcomes behind with RESOURCE_EXHAUSTED, and keeps serving others', async () => {
    const own = await startTestServer(await sqlite!.newUrl(), { maxWatchStreams: 1 });
    try {
      await slowReaderIsCut(own);
    } finally {
      await own.stop();
    }
  });

  it('keeps nothing of a cut stream whose client never reads: stream after stream, its memory stays bounded', async () => {
    // Before, a cut stream kept its 10,000 outcomes queued until its client read them, and its slot was free again at
    // once: a client that opened streams and never read made the server keep 10,000 more outcomes with each one.
    const own = await startTestServer(await sqlite!.newUrl(), { maxWatchStreams: 1 });
    const session = connectHttp2(`http://${own.server.address}`);
    session.on('error', () => undefined);
    try {
      const queued: Array<WeakRef<string[]>> = [];
      for (let round = 0; round < 3; round++) {
        const account = accountId('never-reads');
        const stream = rawWatch(session, account);
        const headers = await new Promise<Record<string, unknown>>((resolve) => stream.once('response', resolve));
        // Taken (a refused stream's headers carry its status): the stream before it was cut, and its slot freed.
        expect(headers['grpc-status']).toBeUndefined();
        // Never read: HTTP/2 flow control soon stops the server's writes.
        stream.pause();
        for (let i = 0; i <= 10_000; i++) {
          const messageIds = [`m-${round}-${i}`];
          queued.push(new WeakRef(messageIds));
          await own.server.store.emitOutcome(deliveredOutcome({ accountId: account, messageIds, at: Date.now() }));
        }
        // The 10,001st outcome cut the stream: the slot is free for the next round.
      }
      collectGarbage();
      await new Promise((resolve) => setTimeout(resolve, 50));
      collectGarbage();
      // What the unread streams still hold: a few outcomes each (the stream's own small buffer), not 10,000.
      expect(queued.filter((ref) => ref.deref() !== undefined).length).toBeLessThan(200);
      const next = watch(own.clients, accountId());
      await next.ready;
      next.cancel();
    } finally {
      session.destroy();
      await own.stop();
    }
  });

  it('ends a stream whose reader fell 1,000,000 message ids behind, before 10,000 outcomes', async () => {
    // An outcome carries its delivery's message ids (up to 10,000): 10,000 such outcomes queued for one stream that
    // never read were 100,000,000 ids, gigabytes, before the count of outcomes cut it.
    const own = await startTestServer(await sqlite!.newUrl(), { maxWatchStreams: 1 });
    const session = connectHttp2(`http://${own.server.address}`);
    session.on('error', () => undefined);
    try {
      const account = accountId('large-lists');
      const stream = rawWatch(session, account);
      await new Promise((resolve) => stream.once('response', resolve));
      stream.pause();
      const trailers = new Promise<Record<string, unknown>>((resolve) => stream.once('trailers', resolve));
      const ids = Array.from({ length: 1_000 }, (_, i) => `m-${i}`);
      // 1,100 outcomes: the first few go to the stream's own buffer, the rest queue (1,000 ids each).
      for (let i = 0; i < 1_100; i++) {
        await own.server.store.emitOutcome(deliveredOutcome({ accountId: account, messageIds: ids, at: Date.now() }));
      }
      // Read what was written before the cut, then the status.
      stream.on('data', () => undefined);
      stream.resume();
      const ended = await Promise.race([trailers, new Promise((resolve) => setTimeout(() => resolve(null), 5_000))]);
      expect(ended).toMatchObject({ 'grpc-status': String(status.RESOURCE_EXHAUSTED) });
      expect(decodeURIComponent(String((ended as Record<string, unknown>)['grpc-message']))).toMatch(
        /more than 10,000 outcomes \(or 1,000,000 message ids\) were waiting/,
      );
      // With the rich status every other failure has (its reason in ErrorInfo).
      const details = new Metadata();
      details.set(
        'grpc-status-details-bin',
        Buffer.from(String((ended as Record<string, unknown>)['grpc-status-details-bin']), 'base64'),
      );
      expect(decodeStatusDetails(details)?.errorInfo?.reason).toBe('WATCHER_TOO_SLOW');
    } finally {
      session.destroy();
      await own.stop();
    }
  });
});

/**
 * A WatchDeliveries call on a plain HTTP/2 session, as a client that may never read (grpc-js's own client reads on
 * while paused): the request is sent whole, the response is left to the caller.
 */
function rawWatch(session: ClientHttp2Session, account: string): ClientHttp2Stream {
  const request = Buffer.from(WatchDeliveriesRequest.encode({ accountId: account }).finish());
  const stream = session.request({
    ':method': 'POST',
    ':path': '/app_inbox.v1.DeliveryService/WatchDeliveries',
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  stream.on('error', () => undefined);
  stream.end(Buffer.concat([Buffer.from([0, 0, 0, 0, request.length]), request]));
  return stream;
}

setFlagsFromString('--expose_gc');
/** A full garbage collection (V8's `gc`, exposed at run time). */
const collectGarbage = runInNewContext('gc') as () => void;

/** Opens a watch that stops reading while 20,000 outcomes of its account are emitted; checks how it ends. */
async function slowReaderIsCut(t: TestServer): Promise<void> {
  const account = accountId('slow-reader');
  const stream = t.clients.delivery.watchDeliveries({ accountId: account });
  const ended = new Promise<{ code: status; details: string }>((resolve) =>
    stream.on('status', (s: { code: status; details: string }) => resolve(s)),
  );
  stream.on('error', () => undefined);
  await new Promise<void>((resolve) => stream.once('metadata', () => resolve()));
  // The reader stops reading: HTTP/2 flow control soon stops the server's writes, which then queue.
  stream.pause();
  for (let i = 0; i < 20_000; i++) {
    await t.server.store.emitOutcome(deliveredOutcome({ deliveryId: `d-${i}`, accountId: account, at: Date.now() }));
  }
  // Read again: the queued outcomes, then the status.
  stream.on('data', () => undefined);
  stream.resume();
  const final = await ended;
  expect(final.code).toBe(status.RESOURCE_EXHAUSTED);
  expect(final.details).toMatch(/read too slowly/);
  // The slot (the only one) is free again.
  const next = watch(t.clients, accountId());
  await next.ready;
  next.cancel();
}
