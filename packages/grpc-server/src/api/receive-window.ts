/**
 * The HTTP/2 receive window of the gRPC server.
 *
 * HTTP/2 lets a client send only as many bytes as the server's window allows before a WINDOW_UPDATE, and Node
 * starts every connection and stream at the protocol's 65,535 bytes. grpc-js (1.14) gives a server no option to
 * raise it: `grpc-node.flow_control_window` is read by its client transport only (grpc/grpc-node#3058 would add
 * it to the server). A PublishMessages of 1,000 messages is about half a megabyte, so the client sent it in
 * eight window's worth, each waiting for the server's event loop to come round and acknowledge the last one;
 * while the loop was busy committing the previous call, the next one stalled. With a larger window the next
 * requests are already in the socket when the loop is free (issue 6, scenario 1: 41,333 / 41,973 ->
 * 50,231 / 48,299 messages/s, bench/README "Eighth round").
 *
 * Until grpc-js has the option, the window is raised on each HTTP/2 server grpc-js creates (TCP and TLS alike,
 * and connections handed to a connection injector): every new session advertises `initialWindowSize` for its
 * streams and grants the connection window. What a client may send ahead is bounded per stream by this window
 * (Node gives the connection's credit back as data arrives, so per connection only by its streams, each up to
 * `grpc.max_receive_message_length`: as before, only reached sooner). The window is
 * `--grpc-receive-window-bytes` (default 4 MiB; 1 to 16 MiB measured alike).
 */
import type { Http2Server, Http2SecureServer, ServerHttp2Session } from 'node:http2';
import type { Server, ServerCredentials } from '@grpc/grpc-js';

/** The largest window HTTP/2 allows (RFC 9113 §6.9.1). */
export const MAX_RECEIVE_WINDOW_BYTES = 2 ** 31 - 1;

/** The grpc-js method that makes the HTTP/2 server of each bound port (not in its public types). */
type CreateHttp2Server = (credentials: ServerCredentials) => Http2Server | Http2SecureServer;

/**
 * Makes every HTTP/2 connection that `server` accepts from now on start with a receive window of `bytes`, for
 * the connection and for each of its streams. Call before `bindAsync`. Throws when this grpc-js has no
 * `createHttp2Server` to hook (a grpc-js upgrade changed its inside: the tests of this module fail first).
 */
export function raiseReceiveWindow(server: Server, bytes: number): void {
  if (!Number.isSafeInteger(bytes) || bytes < 65_535 || bytes > MAX_RECEIVE_WINDOW_BYTES) {
    throw new RangeError(`receive window: must be from 65535 to ${MAX_RECEIVE_WINDOW_BYTES} bytes, got ${bytes}`);
  }
  const hooked = server as unknown as { createHttp2Server?: CreateHttp2Server };
  const create = hooked.createHttp2Server;
  if (typeof create !== 'function') {
    throw new Error('receive window: this @grpc/grpc-js has no Server.createHttp2Server to extend');
  }
  hooked.createHttp2Server = function (this: Server, ...args: Parameters<CreateHttp2Server>) {
    const http2Server = create.apply(this, args);
    http2Server.on('session', (session: ServerHttp2Session) => widen(session, bytes));
    return http2Server;
  };
}

function widen(session: ServerHttp2Session, bytes: number): void {
  try {
    // Streams opened from now on get `bytes` (a SETTINGS frame); the connection gets it by a WINDOW_UPDATE.
    session.settings({ initialWindowSize: bytes });
    session.setLocalWindowSize(bytes);
  } catch (error) {
    // A session already closing (the client went at once) throws: its window no longer matters.
    if (!session.destroyed && !session.closed) throw error;
  }
}
