/**
 * Access to the gRPC API (issue 7 "Access to the gRPC API"): TLS or mutual TLS on the listening socket,
 * and bearer tokens for internal callers. A call without a valid token ends with `UNAUTHENTICATED`
 * before any handler runs; health checks stay open so load balancers and probes need no token.
 */
import { X509Certificate, createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { format } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { redactHeaderValues } from './redact.js';

/**
 * Raised for invalid access options; names the option by its flag (`--tls-cert-file` on the server, `--ca-file`
 * in the `app-inbox` client), never prints a token or key.
 */
export class GrpcAuthConfigError extends Error {
  override readonly name = 'GrpcAuthConfigError';
  readonly code = 'invalid_argument';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

function readPem(option: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    throw new GrpcAuthConfigError(`${option}: cannot read ${path} (${code})`, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Server side

/** TLS of the gRPC listener. With none of the files set the server listens in plaintext (h2c). */
export interface ServerTlsOptions {
  /** PEM certificate chain of the server. Requires `tlsKeyFile`. Default: none (plaintext). */
  tlsCertFile?: string | undefined;
  /** PEM private key of the server. Requires `tlsCertFile`. Default: none. */
  tlsKeyFile?: string | undefined;
  /**
   * PEM CA bundle that client certificates must chain to; when set, clients without a valid certificate are
   * refused during the TLS handshake (mutual TLS). Requires the server certificate. Default: none (no mTLS).
   */
  tlsClientCaFile?: string | undefined;
}

/**
 * The credentials to bind the server with: insecure when no file is set, TLS with a certificate, mutual TLS
 * with a client CA as well.
 * @throws GrpcAuthConfigError naming the option when a file is missing, unreadable, or set without its pair
 */
export function serverCredentials(options: ServerTlsOptions = {}): grpc.ServerCredentials {
  const { tlsCertFile, tlsKeyFile, tlsClientCaFile } = options;
  if (!tlsCertFile && !tlsKeyFile) {
    if (tlsClientCaFile)
      throw new GrpcAuthConfigError('--tls-client-ca-file: mutual TLS needs --tls-cert-file and --tls-key-file');
    return grpc.ServerCredentials.createInsecure();
  }
  if (!tlsCertFile) throw new GrpcAuthConfigError('--tls-cert-file: required when --tls-key-file is set');
  if (!tlsKeyFile) throw new GrpcAuthConfigError('--tls-key-file: required when --tls-cert-file is set');
  const pair = {
    cert_chain: readPem('--tls-cert-file', tlsCertFile),
    private_key: readPem('--tls-key-file', tlsKeyFile),
  };
  const clientCa = tlsClientCaFile ? readPem('--tls-client-ca-file', tlsClientCaFile) : null;
  // grpc-js only parses the PEM when binding; building a context now makes a bad file fail at start, by name.
  try {
    createSecureContext({ cert: pair.cert_chain, key: pair.private_key });
  } catch (error) {
    throw new GrpcAuthConfigError('--tls-cert-file/--tls-key-file: not a matching PEM certificate and private key', {
      cause: error,
    });
  }
  if (clientCa !== null) {
    try {
      // A CA bundle that is not PEM would be ignored silently (and then no client could connect).
      new X509Certificate(clientCa);
    } catch (error) {
      throw new GrpcAuthConfigError('--tls-client-ca-file: not a PEM CA certificate bundle', { cause: error });
    }
  }
  // checkClientCertificate: with a client CA, a client must present a certificate that chains to it.
  return grpc.ServerCredentials.createSsl(clientCa, [pair], clientCa !== null);
}

/** Decides whether a call's metadata carries valid credentials. */
export type Authenticator = (metadata: grpc.Metadata) => boolean;

/** Shortest accepted token (characters): a shorter one could be guessed. */
export const MIN_TOKEN_LENGTH = 16;

/**
 * Why a token that has its length and no spaces is still refused: grpc-js clients send only printable ASCII in a
 * header, so a server token with a control or non-ASCII character could never be presented.
 */
export const TOKEN_NOT_ASCII = 'must be printable ASCII (a client cannot send other characters in a header)';

/** Whether `token` has only printable ASCII characters (spaces are refused on their own). */
export const isAsciiToken = (token: string): boolean => /^[\x20-\x7e]*$/.test(token);

const sha256 = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest();

/**
 * Accepts `authorization: Bearer <token>` when the token is one of `tokens` (several, so a token can be
 * rotated without downtime: add the new one, move callers, remove the old one). The comparison hashes both
 * sides and uses `timingSafeEqual` against every configured token, so neither the content nor the length of a
 * token leaks through timing.
 * @throws GrpcAuthConfigError when `tokens` is empty or a token is shorter than 16 characters or has spaces
 */
export function createTokenAuthenticator(tokens: readonly string[]): Authenticator {
  if (tokens.length === 0) throw new GrpcAuthConfigError('tokens: at least one token is required');
  const digests = tokens.map((token, i) => {
    if (typeof token !== 'string' || token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
      throw new GrpcAuthConfigError(
        `tokens[${i}]: must be at least ${MIN_TOKEN_LENGTH} characters without spaces (openssl rand -hex 32)`,
      );
    }
    if (!isAsciiToken(token)) throw new GrpcAuthConfigError(`tokens[${i}]: ${TOKEN_NOT_ASCII}`);
    return sha256(token);
  });
  return (metadata) => {
    const values = metadata.get('authorization');
    if (values.length !== 1) return false;
    const match = /^Bearer +(\S+) *$/i.exec(String(values[0]));
    if (match?.[1] === undefined) return false;
    const presented = sha256(match[1]);
    let ok = false;
    for (const digest of digests) ok = timingSafeEqual(presented, digest) || ok;
    return ok;
  };
}

/**
 * Makes grpc-js's own log lines (standard error, as by default: `D <message>`) go out without credentials: with
 * `GRPC_TRACE=server_call` (or `all`) and `GRPC_VERBOSITY=DEBUG` it prints every call's headers, the bearer token
 * among them. Process-wide (grpc-js has one logger, so this is its one setter): for the server's process entry.
 * `onError`: where its error lines go instead (the server's JSON log), censored the same way.
 */
export function censorGrpcLogs(onError?: (text: string) => void): void {
  const write =
    (prefix: string) =>
    (...args: unknown[]): void =>
      console.error(`${prefix}${redactHeaderValues(format(...args))}`);
  grpc.setLogger({
    error: onError === undefined ? write('E ') : (...args: unknown[]) => onError(redactHeaderValues(format(...args))),
    info: write('I '),
    debug: write('D '),
  });
}

/** Methods left open by default: the standard health service, for load balancers and probes. */
export const DEFAULT_OPEN_METHOD_PREFIXES: readonly string[] = ['/grpc.health.v1.Health/'];

export interface AuthInterceptorOptions {
  /**
   * Method paths (`/package.Service/Method`) or prefixes (`/package.Service/`) callable without a token.
   * Default {@link DEFAULT_OPEN_METHOD_PREFIXES} (health only; reflection is NOT open: it describes the API).
   */
  openMethods?: readonly string[];
}

const unauthenticated = (): grpc.StatusObject => ({
  code: grpc.status.UNAUTHENTICATED,
  details: 'missing or invalid credentials: send authorization: Bearer <token>',
  metadata: new grpc.Metadata(),
});

/**
 * A server interceptor that ends every call without valid credentials with `UNAUTHENTICATED` before the
 * handler sees it. Install once for the whole server: `new grpc.Server({ interceptors: [interceptor] })`.
 */
export function createAuthInterceptor(
  authenticator: Authenticator,
  options: AuthInterceptorOptions = {},
): grpc.ServerInterceptor {
  const open = options.openMethods ?? DEFAULT_OPEN_METHOD_PREFIXES;
  const isOpen = (path: string) => open.some((p) => (p.endsWith('/') ? path.startsWith(p) : path === p));
  return (methodDescriptor, call) => {
    if (isOpen(methodDescriptor.path)) return new grpc.ServerInterceptingCall(call);
    const listener = new grpc.ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        // Not calling next(): the handler never starts; the status below ends the call.
        if (authenticator(metadata)) next(metadata);
        else call.sendStatus(unauthenticated());
      })
      .build();
    const responder = new grpc.ResponderBuilder().withStart((next) => next(listener)).build();
    return new grpc.ServerInterceptingCall(call, responder);
  };
}

type AnyHandler = (
  call: { metadata: grpc.Metadata; emit(event: 'error', error: unknown): boolean },
  callback?: unknown,
) => unknown;

/**
 * The same check per service instead of per server: wraps every handler of an implementation so that a
 * call without valid credentials gets `UNAUTHENTICATED` (unary and client-streaming through the callback,
 * server-streaming and bidi by emitting the error). Prefer {@link createAuthInterceptor}; use this when one
 * service on the server must stay open (e.g. add health unwrapped).
 */
export function withAuth<T extends grpc.UntypedServiceImplementation>(
  implementation: T,
  authenticator: Authenticator,
): T {
  const wrapped: Record<string, AnyHandler> = {};
  for (const [name, handler] of Object.entries(implementation)) {
    const inner = handler as unknown as AnyHandler;
    wrapped[name] = (call, callback) => {
      if (authenticator(call.metadata)) return inner(call, callback);
      // grpc-js passes a callback exactly to the handlers that answer once (unary, client-streaming).
      if (typeof callback === 'function')
        (callback as (error: grpc.ServiceError | grpc.StatusObject) => void)(unauthenticated());
      else call.emit('error', unauthenticated());
      return undefined;
    };
  }
  return wrapped as unknown as T;
}

// ---------------------------------------------------------------------------------------------------------
// Client side

export interface ClientAccessOptions {
  /** Use TLS. Implied by any of the files; without `caFile` the system's root CAs verify the server. Default false. */
  tls?: boolean | undefined;
  /** PEM CA bundle the server certificate must chain to. Default: the system roots (when TLS). */
  caFile?: string | undefined;
  /** PEM client certificate for mutual TLS. Requires `keyFile`. */
  certFile?: string | undefined;
  /** PEM private key of the client certificate. Requires `certFile`. */
  keyFile?: string | undefined;
  /** Bearer token sent as `authorization: Bearer <token>` on every call. Default: none. */
  token?: string | undefined;
}

/**
 * Why `token` cannot be sent as `authorization: Bearer <token>`, or null when it can. grpc-js takes only printable
 * ASCII in a header value and throws at the first call otherwise, with the whole value (the token) in its message.
 * The token itself is never part of the answer.
 */
export function bearerTokenProblem(token: string): string | null {
  if (/^[\x21-\x7e]+$/.test(token)) return null;
  return 'must be printable ASCII without spaces or control characters (a trailing newline or CR from a file?); the token is not shown';
}

/** What a generated client constructor takes: `new Client(address, credentials, { interceptors })`. */
export interface ClientAccess {
  credentials: grpc.ChannelCredentials;
  /** Empty with TLS (the token rides in call credentials); holds the token interceptor on a plaintext channel. */
  interceptors: grpc.Interceptor[];
}

/**
 * Channel credentials (TLS / mTLS) combined with call credentials (the bearer token). grpc-js refuses call
 * credentials on a plaintext channel, so a token over plaintext (local development only: it travels in
 * the clear) is added by an interceptor instead.
 * @throws GrpcAuthConfigError naming the option
 */
export function clientCredentials(options: ClientAccessOptions = {}): ClientAccess {
  const { caFile, certFile, keyFile, token } = options;
  // An empty path given (`--ca-file "$UNSET"`) would otherwise mean no TLS: the token sent in plaintext.
  for (const [flag, file] of [
    ['--ca-file', caFile],
    ['--cert-file', certFile],
    ['--key-file', keyFile],
  ] as const) {
    if (file?.trim() === '') throw new GrpcAuthConfigError(`${flag}: empty: give a file path, or leave the option out`);
  }
  if (certFile && !keyFile) throw new GrpcAuthConfigError('--key-file: required when --cert-file is set');
  if (keyFile && !certFile) throw new GrpcAuthConfigError('--cert-file: required when --key-file is set');
  if (token) {
    const problem = bearerTokenProblem(token);
    if (problem !== null) throw new GrpcAuthConfigError(`--token: ${problem}`);
  }
  const useTls = options.tls === true || Boolean(caFile || certFile);
  const metadataFor = (t: string) => {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${t}`);
    return metadata;
  };
  if (!useTls) {
    const interceptors: grpc.Interceptor[] = [];
    if (token) {
      interceptors.push(
        (callOptions, nextCall) =>
          new grpc.InterceptingCall(nextCall(callOptions), {
            start(metadata, listener, next) {
              metadata.merge(metadataFor(token));
              next(metadata, listener);
            },
          }),
      );
    }
    return { credentials: grpc.credentials.createInsecure(), interceptors };
  }
  const ca = caFile ? readPem('--ca-file', caFile) : null;
  const key = keyFile ? readPem('--key-file', keyFile) : null;
  const cert = certFile ? readPem('--cert-file', certFile) : null;
  // grpc-js throws its TLS library's error as it is ("DECODER routines::unsupported"), or for a CA bundle that is not
  // PEM nothing at all until every connection fails: checked here, as the server checks its own files.
  if (ca !== null) {
    try {
      new X509Certificate(ca);
    } catch (error) {
      throw new GrpcAuthConfigError('--ca-file: not a PEM CA certificate bundle', { cause: error });
    }
  }
  if (key !== null && cert !== null) {
    try {
      createSecureContext({ cert, key });
    } catch (error) {
      throw new GrpcAuthConfigError('--cert-file/--key-file: not a matching PEM certificate and private key', {
        cause: error,
      });
    }
  }
  const channel = grpc.credentials.createSsl(ca, key, cert);
  if (!token) return { credentials: channel, interceptors: [] };
  const call = grpc.credentials.createFromMetadataGenerator((_params, callback) => callback(null, metadataFor(token)));
  return { credentials: grpc.credentials.combineChannelCredentials(channel, call), interceptors: [] };
}
