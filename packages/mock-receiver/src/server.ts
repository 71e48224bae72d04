/**
 * The mock receiver as a listening server: `createMockReceiver()` in a test, the CLI for QA.
 * `close()` destroys every open socket (keep-alive, hanging, dripping, event streams), so a test that
 * closes its receiver leaks nothing. @see CONVENTIONS §9
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createMockReceiverApp, type ReceiverControl, type ReceiverRecords } from './app.js';
import { resolveServerOptions, type MockReceiverOptions } from './options.js';

/** A running mock receiver. */
export interface MockReceiver {
  /** `http://host:port` (no trailing slash); POST to any path under it. */
  url: string;
  host: string;
  port: number;
  records: ReceiverRecords;
  control: ReceiverControl;
  /** The Node HTTP server (for tuning timeouts in a test). */
  server: Server;
  /** Stops listening and destroys every open connection, hanging ones included. Idempotent. */
  close(): Promise<void>;
  /** `await using receiver = await createMockReceiver()` closes it at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts a mock receiver, by default on 127.0.0.1 and a free port.
 * @throws MockReceiverError `invalid_options` listing every bad option
 */
export async function createMockReceiver(options: MockReceiverOptions = {}): Promise<MockReceiver> {
  // Validates everything (listening address and app options) first, so one error lists every bad option.
  const { host, port } = resolveServerOptions(options);
  const { host: _host, port: _port, ...appOptions } = options;
  const receiver = createMockReceiverApp(appOptions);
  const server = createServer(receiver.app);
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const urlHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= new Promise<void>((resolve, reject) => {
      receiver.shutdown();
      server.close((error) => (error === undefined ? resolve() : reject(error)));
      for (const socket of sockets) socket.destroy();
      sockets.clear();
    });
    return closing;
  };

  return {
    url: `http://${urlHost}:${address.port}`,
    host: address.address,
    port: address.port,
    records: receiver.records,
    control: receiver.control,
    server,
    close,
    [Symbol.asyncDispose]: close,
  };
}
