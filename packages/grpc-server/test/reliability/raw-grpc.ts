/**
 * A gRPC client that sends and receives raw bytes, so tests can put anything on the wire: requests the
 * generated encoders would refuse to build (64-bit integers beyond 2^53), random bytes, oversized messages.
 * It is still a real grpc-js client over a real HTTP/2 socket.
 */
import { Client, Metadata, credentials, status } from '@grpc/grpc-js';
import { decodeStatusDetails, type DecodedStatusDetails } from '../../src/api/errors.js';

/** What the server answered to one call. */
export interface RawAnswer {
  code: status;
  details: string;
  /** The decoded `grpc-status-details-bin` of a failed call (null when absent or on OK). */
  rich: DecodedStatusDetails | null;
  /** The response bytes of an OK unary call; for a stream, null. */
  response: Buffer | null;
}

const identity = (b: Buffer): Buffer => b;

export class RawClient {
  readonly #client: Client;

  constructor(address: string) {
    // No receive limit on our side: only the server's limits are under test.
    this.#client = new Client(address, credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 });
  }

  /** One unary call of `path` (`/package.Service/Method`) with `bytes` as the request message. */
  unary(path: string, bytes: Uint8Array, deadlineMs = 15_000): Promise<RawAnswer> {
    return new Promise((resolve) => {
      this.#client.makeUnaryRequest<Buffer, Buffer>(
        path,
        identity,
        identity,
        Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
        new Metadata(),
        { deadline: Date.now() + deadlineMs },
        (error, response) => {
          if (error) {
            resolve({
              code: error.code,
              details: error.details,
              rich: decodeStatusDetails(error.metadata),
              response: null,
            });
          } else resolve({ code: status.OK, details: '', rich: null, response: response ?? Buffer.alloc(0) });
        },
      );
    });
  }

  /**
   * Opens a server stream with `bytes` as the request: OK as soon as the server sent its headers (it accepted
   * the request; the stream is then cancelled), or the status the server ended it with.
   */
  serverStream(path: string, bytes: Uint8Array, deadlineMs = 15_000): Promise<RawAnswer> {
    return new Promise((resolve) => {
      const stream = this.#client.makeServerStreamRequest<Buffer, Buffer>(
        path,
        identity,
        identity,
        Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
        new Metadata(),
        { deadline: Date.now() + deadlineMs },
      );
      let settled = false;
      stream.on('data', () => undefined);
      stream.on('error', () => undefined);
      stream.once('metadata', () => {
        // The server subscribed the watcher and sent its headers; an error status would have come instead.
        setImmediate(() => {
          if (settled) return;
          settled = true;
          resolve({ code: status.OK, details: '', rich: null, response: null });
          stream.cancel();
        });
      });
      stream.on('status', (s: { code: status; details: string; metadata: Metadata }) => {
        if (settled) return;
        settled = true;
        resolve({ code: s.code, details: s.details, rich: decodeStatusDetails(s.metadata), response: null });
      });
    });
  }

  /** The standard health check of the whole server: true when it answers SERVING. */
  async serving(): Promise<boolean> {
    // HealthCheckRequest{service: ''} is the empty message; HealthCheckResponse{status: SERVING(1)} is 08 01.
    const answer = await this.unary('/grpc.health.v1.Health/Check', new Uint8Array(0), 5_000);
    return answer.code === status.OK && answer.response?.equals(Buffer.from([0x08, 0x01])) === true;
  }

  close(): void {
    this.#client.close();
  }
}
