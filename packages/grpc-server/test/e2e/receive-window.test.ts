/**
 * `--grpc-receive-window-bytes`: the HTTP/2 window the gRPC server grants each connection and stream, seen
 * from a real HTTP/2 client connected to it. @see src/api/receive-window.ts
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createTcpServer } from 'node:net';
import http2 from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { raiseReceiveWindow } from '../../src/api/receive-window.js';
import { loadConfig } from '../../src/config.js';
import { startServer } from '../../src/server.js';
import { makeTestCerts } from '../security/certs.js';
import { testConfig } from './harness.js';

const NODE_DEFAULT_WINDOW = 65_535;

/** What the server at `port` lets this client send: per new stream, and on the connection. */
async function windowsGranted(port: number, tls?: { ca: Buffer }): Promise<{ stream: number; connection: number }> {
  // The test server certificate names `localhost`.
  const session = tls
    ? http2.connect(`https://localhost:${port}`, { ca: tls.ca })
    : http2.connect(`http://127.0.0.1:${port}`);
  try {
    await new Promise<void>((resolve, reject) => {
      session.once('remoteSettings', () => resolve());
      session.once('error', reject);
    });
    // Frames arrive in order: once the ping is answered, every SETTINGS and WINDOW_UPDATE the server sent on
    // accepting the connection has been applied.
    await new Promise<void>((resolve, reject) => {
      session.ping((error) => (error ? reject(error) : resolve()));
    });
    return { stream: session.remoteSettings.initialWindowSize!, connection: session.state.remoteWindowSize! };
  } finally {
    session.destroy();
  }
}

async function bound(server: Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    );
  });
}

describe('raiseReceiveWindow', () => {
  it("grants a new connection and each of its streams the window (Node's default is 65,535 bytes)", async () => {
    const plain = new Server();
    const raised = new Server();
    raiseReceiveWindow(raised, 3 * 1024 * 1024);
    try {
      expect(await windowsGranted(await bound(plain))).toEqual({
        stream: NODE_DEFAULT_WINDOW,
        connection: NODE_DEFAULT_WINDOW,
      });
      expect(await windowsGranted(await bound(raised))).toEqual({
        stream: 3 * 1024 * 1024,
        connection: 3 * 1024 * 1024,
      });
    } finally {
      plain.forceShutdown();
      raised.forceShutdown();
    }
  });

  it('grants it on a connection handed to a connection injector', async () => {
    const server = new Server();
    raiseReceiveWindow(server, 2 * 1024 * 1024);
    const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
    const tcp = createTcpServer((socket) => injector.injectConnection(socket));
    await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = tcp.address() as { port: number };
      expect(await windowsGranted(port)).toEqual({ stream: 2 * 1024 * 1024, connection: 2 * 1024 * 1024 });
    } finally {
      injector.destroy();
      tcp.close();
      server.forceShutdown();
    }
  });

  it('refuses a window HTTP/2 cannot grant, naming the value', () => {
    expect(() => raiseReceiveWindow(new Server(), 1000)).toThrow(/from 65535 to 2147483647 bytes, got 1000/);
    expect(() => raiseReceiveWindow(new Server(), 2 ** 31)).toThrow(/got 2147483648/);
  });
});

describe('the gRPC receive window option', () => {
  const dir = mkdtempSync(join(tmpdir(), 'app-inbox-window-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is read from --grpc-receive-window-bytes or APP_INBOX_GRPC_RECEIVE_WINDOW_BYTES, 4 MiB by default', () => {
    expect(loadConfig([], {}).grpcReceiveWindowBytes).toBe(4 * 1024 * 1024);
    expect(loadConfig(['--grpc-receive-window-bytes', '1048576'], {}).grpcReceiveWindowBytes).toBe(1_048_576);
    expect(loadConfig([], { APP_INBOX_GRPC_RECEIVE_WINDOW_BYTES: '65535' }).grpcReceiveWindowBytes).toBe(65_535);
    expect(() => loadConfig(['--grpc-receive-window-bytes', String(64 * 1024 * 1024 + 1)], {})).toThrow(
      /--grpc-receive-window-bytes \(flag\) must be an integer/,
    );
    expect(() => loadConfig(['--grpc-receive-window-bytes', '65534'], {})).toThrow(
      /--grpc-receive-window-bytes \(flag\) must be an integer/,
    );
  });

  it("reaches the server's connections", async () => {
    for (const [overrides, expected] of [
      [{}, 4 * 1024 * 1024],
      [{ grpcReceiveWindowBytes: 1_048_576 }, 1_048_576],
    ] as const) {
      const server = await startServer(testConfig(join(dir, `${randomUUID()}.db`), overrides));
      try {
        expect(await windowsGranted(server.port)).toEqual({ stream: expected, connection: expected });
      } finally {
        await server.close(500);
      }
    }
  });

  it("reaches the server's TLS connections", async () => {
    const certs = makeTestCerts('app-inbox-window-tls-');
    try {
      const server = await startServer(
        testConfig(join(dir, `${randomUUID()}.db`), {
          tlsCertFile: certs.file('server.crt'),
          tlsKeyFile: certs.file('server.key'),
          grpcReceiveWindowBytes: 2 * 1024 * 1024,
        }),
      );
      try {
        const ca = readFileSync(certs.file('ca.crt'));
        expect(await windowsGranted(server.port, { ca })).toEqual({
          stream: 2 * 1024 * 1024,
          connection: 2 * 1024 * 1024,
        });
      } finally {
        await server.close(500);
      }
    } finally {
      certs.remove();
    }
  });
});
