/**
 * A plain node:http receiver for delivery tests: listens on 127.0.0.1 port 0, records every request
 * (headers and exact body bytes), and answers through a per-test handler. `close()` destroys open sockets.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface ReceivedRequest {
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
  /** Remote port of the connection it came on (identifies the keep-alive socket). */
  remotePort: number;
  /** When the request body was fully received (Date.now()). */
  at: number;
}

export type Handler = (req: IncomingMessage, res: ServerResponse, received: ReceivedRequest) => unknown;

export interface TestReceiver {
  url: string;
  port: number;
  server: Server;
  requests: ReceivedRequest[];
  /** Connections accepted so far. */
  connections: number;
  /** Requests being handled right now, and the most seen at once. */
  active: number;
  maxActive: number;
  setHandler(handler: Handler): void;
  close(): Promise<void>;
}

export async function startReceiver(handler: Handler = (_req, res) => res.end('ok')): Promise<TestReceiver> {
  const sockets = new Set<Socket>();
  let current = handler;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const received: ReceivedRequest = {
        method: req.method ?? '',
        path: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks),
        remotePort: req.socket.remotePort ?? -1,
        at: Date.now(),
      };
      receiver.requests.push(received);
      receiver.active += 1;
      receiver.maxActive = Math.max(receiver.maxActive, receiver.active);
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        receiver.active -= 1;
      };
      res.on('close', finish);
      Promise.resolve(current(req, res, received)).catch(() => res.destroy());
    });
  });
  server.on('connection', (socket: Socket) => {
    receiver.connections += 1;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const receiver: TestReceiver = {
    url: `http://127.0.0.1:${port}/hook`,
    port,
    server,
    requests: [],
    connections: 0,
    active: 0,
    maxActive: 0,
    setHandler(h) {
      current = h;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return receiver;
}

/** A port on 127.0.0.1 that nothing listens on (bound, then closed). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
