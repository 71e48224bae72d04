/**
 * The server's lifetime: where it listens, and that close() ends everything at once.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import { createMockReceiver } from '../src/index.js';
import { message, post, startReceiver } from './helpers.js';

describe('/__events', () => {
  it('drops a stream whose reader stopped reading, instead of buffering every record for it', async () => {
    const receiver = await startReceiver({ recordLimit: 0 });
    const socket = connect(receiver.port, '127.0.0.1');
    await once(socket, 'connect');
    socket.write('GET /__events HTTP/1.1\r\nHost: receiver\r\n\r\n');
    await once(socket, 'data'); // the head and `retry:`
    socket.pause(); // a page whose tab is frozen, a `curl` suspended with Ctrl-Z
    const closed = once(socket, 'close');
    // Many long contact ids: each record's event is ~280 KB, so 60 of them (17 MB) overflow the kernel's socket
    // buffers and the rest waited in the receiver's memory, for ever and without bound, before.
    const body = JSON.stringify(
      Array.from({ length: 1000 }, (_, i) => ({ externalCustomerId: `${i}-`.padEnd(256, 'x') })),
    );
    for (let i = 0; i < 60; i++) expect((await post(receiver, { body })).status).toBe(400);
    socket.resume();
    socket.on('data', () => {});
    const gaveUp = new Promise((_resolve, reject) => {
      setTimeout(() => reject(new Error('the stalled stream is still open')), 5_000).unref();
    });
    await Promise.race([closed, gaveUp]);
    socket.destroy();
  });
});

describe('createMockReceiver', () => {
  it('listens on 127.0.0.1 and a free port by default', async () => {
    const receiver = await startReceiver();
    expect(receiver.host).toBe('127.0.0.1');
    expect(receiver.port).toBeGreaterThan(0);
    expect(receiver.url).toBe(`http://127.0.0.1:${receiver.port}`);
    expect((await post(receiver, { body: [message('c-1')] })).status).toBe(200);
  });

  it('close() destroys hanging, delayed and event-stream connections at once', async () => {
    const receiver = await createMockReceiver({
      rules: [
        { match: { path: '/hang' }, answers: [{ action: 'hang' }], repeat: true },
        { match: { path: '/delay' }, answers: [{ delayMs: 600_000 }], repeat: true },
      ],
    });
    let arrived = 0;
    const allArrived = new Promise<void>((resolve) =>
      receiver.server.on('request', () => {
        if (++arrived === 3) resolve();
      }),
    );
    const agent = new Agent();
    const send = (path: string) =>
      request(`${receiver.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify([message('c-1')]),
        dispatcher: agent,
      });
    // Settle each promise into a value now, so that no rejection is ever unhandled.
    const outcome = (p: Promise<unknown>) =>
      p.then(
        () => 'answered',
        (e: unknown) => e,
      );
    const hanging = outcome(send('/hang'));
    const delayed = outcome(send('/delay'));
    const events = await request(`${receiver.url}/__events`, { dispatcher: agent });
    const eventsDone = outcome(events.body.text());
    await allArrived;

    const started = performance.now();
    await receiver.close();
    // Without the destroy, close() would wait for the 10-minute delay and for ever for the hang: a bound of seconds
    // tells the two apart. 5 s, not 1 s: room for a loaded CI machine, where this is no measure of speed.
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(await hanging).toBeInstanceOf(Error);
    expect(await delayed).toBeInstanceOf(Error);
    await eventsDone;
    await receiver.close(); // idempotent
    await expect(post(receiver, { body: [] })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await agent.close();
  });

  it('supports await using', async () => {
    let url = '';
    {
      await using receiver = await createMockReceiver();
      url = receiver.url;
      expect((await post(receiver, { body: [], headers: { 'app-inbox-contact': 'c-1' } })).status).toBe(200);
    }
    await expect(post({ url }, { body: [] })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('rejects bad options, listing each one and never the password', async () => {
    const error = await createMockReceiver({
      port: 70_000,
      username: 'a:b',
      password: 'super-secret-value',
      maxMessagesPerContact: 0,
      recordLimit: 1.5,
      retryAfterSeconds: -1,
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ name: 'MockReceiverError', code: 'invalid_options' });
    const { violations, message: text } = error as { violations: { field: string }[]; message: string };
    expect(violations.map((v) => v.field).sort()).toEqual(
      ['maxMessagesPerContact', 'port', 'recordLimit', 'retryAfterSeconds', 'username'].sort(),
    );
    expect(text).toContain('port must be an integer from 0 to 65535');
    expect(text).not.toContain('super-secret-value');
  });

  it('requires username and password together', async () => {
    await expect(createMockReceiver({ username: 'u' })).rejects.toMatchObject({
      violations: [{ field: 'password', description: 'is required when username is set' }],
    });
  });

  it('rejects a port that is taken with the listen error', async () => {
    const first = await startReceiver();
    await expect(createMockReceiver({ port: first.port })).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });
});
