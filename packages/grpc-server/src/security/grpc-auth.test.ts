import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  GrpcAuthConfigError,
  clientCredentials,
  createAuthInterceptor,
  createTokenAuthenticator,
  serverCredentials,
  withAuth,
  type ClientAccess,
  type ServerTlsOptions,
} from './grpc-auth.js';
import { makeTestCerts, type TestCerts } from '../../test/security/certs.js';
import { redactHeaderValues } from './redact.js';

// A tiny service defined by hand (string messages as UTF-8 bytes), independent of the project's proto.
const toBytes = (value: string) => Buffer.from(value, 'utf8');
const fromBytes = (bytes: Buffer) => bytes.toString('utf8');
const method = (path: string, responseStream: boolean) => ({
  path,
  requestStream: false,
  responseStream,
  requestSerialize: toBytes,
  requestDeserialize: fromBytes,
  responseSerialize: toBytes,
  responseDeserialize: fromBytes,
});
const ECHO = '/test.v1.Echo/Echo';
const COUNT = '/test.v1.Echo/Count';
const HEALTH = '/grpc.health.v1.Health/Check';
const echoService: grpc.ServiceDefinition = { Echo: method(ECHO, false), Count: method(COUNT, true) };
const healthService: grpc.ServiceDefinition = { Check: method(HEALTH, false) };

const TOKEN = 'test-token-0123456789abcdef';
const OTHER_TOKEN = 'other-token-0123456789abcdef';

interface Running {
  address: string;
  handlerCalls: number;
  server: grpc.Server;
}

const servers: grpc.Server[] = [];
const clients: grpc.Client[] = [];

async function startServer(
  options: { credentials?: grpc.ServerCredentials; interceptors?: grpc.ServerInterceptor[]; wrap?: boolean } = {},
): Promise<Running> {
  const server = new grpc.Server({ interceptors: options.interceptors ?? [] });
  servers.push(server);
  const running: Running = { address: '', handlerCalls: 0, server };
  let echo: grpc.UntypedServiceImplementation = {
    Echo: (call: grpc.ServerUnaryCall<string, string>, callback: grpc.sendUnaryData<string>) => {
      running.handlerCalls += 1;
      callback(null, `echo:${call.request}`);
    },
    Count: (call: grpc.ServerWritableStream<string, string>) => {
      running.handlerCalls += 1;
      for (let i = 1; i <= Number(call.request); i += 1) call.write(String(i));
      call.end();
    },
  };
  if (options.wrap) echo = withAuth(echo, createTokenAuthenticator([TOKEN]));
  server.addService(echoService, echo);
  server.addService(healthService, {
    Check: (_call: grpc.ServerUnaryCall<string, string>, callback: grpc.sendUnaryData<string>) =>
      callback(null, 'SERVING'),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', options.credentials ?? grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  running.address = `127.0.0.1:${port}`;
  return running;
}

function connect(address: string, access: ClientAccess): grpc.Client {
  // Verify the certificate against its DNS name: TLS forbids an IP address as the SNI server name.
  const client = new grpc.Client(address, access.credentials, {
    interceptors: access.interceptors,
    'grpc.ssl_target_name_override': 'localhost',
  });
  clients.push(client);
  return client;
}

type Outcome = { ok: true; value: string[] } | { ok: false; code: grpc.status; details: string };

function unary(client: grpc.Client, path: string, request: string, metadata = new grpc.Metadata()): Promise<Outcome> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      toBytes,
      fromBytes,
      request,
      metadata,
      { deadline: Date.now() + 5_000 },
      (err, value) =>
        resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true, value: [value ?? ''] }),
    );
  });
}

function stream(client: grpc.Client, request: string, metadata = new grpc.Metadata()): Promise<Outcome> {
  return new Promise((resolve) => {
    const call = client.makeServerStreamRequest(COUNT, toBytes, fromBytes, request, metadata, {
      deadline: Date.now() + 5_000,
    });
    const values: string[] = [];
    call.on('data', (v: string) => values.push(v));
    call.on('error', (err: grpc.ServiceError) => resolve({ ok: false, code: err.code, details: err.details }));
    call.on('end', () => resolve({ ok: true, value: values }));
  });
}

const bearer = (token: string, scheme = 'Bearer') => {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `${scheme} ${token}`);
  return metadata;
};

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
  for (const server of servers.splice(0)) server.forceShutdown();
});

describe('createTokenAuthenticator', () => {
  const auth = createTokenAuthenticator([TOKEN, OTHER_TOKEN]);

  it('accepts any configured token, with the Bearer scheme in any case', () => {
    expect(auth(bearer(TOKEN))).toBe(true);
    expect(auth(bearer(OTHER_TOKEN))).toBe(true);
    expect(auth(bearer(TOKEN, 'bearer'))).toBe(true);
  });

  it('refuses a missing, wrong, truncated, differently-schemed or repeated header', () => {
    expect(auth(new grpc.Metadata())).toBe(false);
    expect(auth(bearer('wrong-token-0123456789abcdef'))).toBe(false);
    expect(auth(bearer(TOKEN.slice(0, -1)))).toBe(false);
    expect(auth(bearer(`${TOKEN}x`))).toBe(false);
    expect(auth(bearer(TOKEN, 'Basic'))).toBe(false);
    expect(auth(bearer(''))).toBe(false);
    const twice = bearer(TOKEN);
    twice.add('authorization', `Bearer ${TOKEN}`);
    expect(auth(twice)).toBe(false);
  });

  it('rejects weak configuration without echoing the token', () => {
    expect(() => createTokenAuthenticator([])).toThrow(/tokens: at least one/);
    expect(() => createTokenAuthenticator([TOKEN, 'short'])).toThrow(/tokens\[1\]: must be at least 16/);
    let message = '';
    try {
      createTokenAuthenticator(['has a space in it 0123']);
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain('tokens[0]: must be at least 16 characters without spaces');
    expect(message).not.toContain('has a space');
    expect(() => createTokenAuthenticator(['secret-tokén-0123456789'])).toThrow(
      /^tokens\[0\]: must be printable ASCII/,
    );
  });

  it("hides credentials in grpc-js's header dumps (GRPC_TRACE), keeping the scheme", () => {
    const dump = JSON.stringify({
      authorization: [`Bearer ${TOKEN}`, OTHER_TOKEN],
      cookie: ['a="b"; c=d'],
      'user-agent': ['grpc-node-js/1.14.7'],
    });
    const shown = redactHeaderValues(`Request to /x received headers ${dump}`);
    expect(shown).toBe(
      'Request to /x received headers {"authorization":["Bearer [redacted]","[redacted]"],"cookie":["[redacted]"],"user-agent":["grpc-node-js/1.14.7"]}',
    );
  });

  it('refuses a client token grpc-js cannot send, by name and without echoing it', () => {
    // grpc-js threw at the first call, its message holding the whole `Bearer <token>` header value.
    for (const token of [`${TOKEN}\r`, `${TOKEN}é`, `${TOKEN}\u0001`]) {
      expect(() => clientCredentials({ token })).toThrow(GrpcAuthConfigError);
      expect(() => clientCredentials({ token })).toThrow(/^--token: must be printable ASCII/);
      expect(() => clientCredentials({ token })).not.toThrow(TOKEN);
    }
    expect(clientCredentials({ token: TOKEN }).interceptors).toHaveLength(1);
  });
});

describe.each([
  ['server interceptor', { interceptors: [createAuthInterceptor(createTokenAuthenticator([TOKEN]))] }],
  ['withAuth wrapper', { wrap: true }],
])('bearer tokens over a plaintext socket (%s)', (_name, serverOptions) => {
  it('answers UNAUTHENTICATED without or with a wrong token, before the handler runs', async () => {
    const running = await startServer(serverOptions);
    const anonymous = connect(running.address, clientCredentials());
    const wrong = connect(running.address, clientCredentials({ token: OTHER_TOKEN }));
    for (const outcome of [
      await unary(anonymous, ECHO, 'hi'),
      await unary(wrong, ECHO, 'hi'),
      await stream(anonymous, '3'),
      await stream(wrong, '3'),
    ]) {
      expect(outcome).toMatchObject({ ok: false, code: grpc.status.UNAUTHENTICATED });
    }
    expect(running.handlerCalls).toBe(0);
  });

  it('serves unary and server-streaming calls with the right token', async () => {
    const running = await startServer(serverOptions);
    const client = connect(running.address, clientCredentials({ token: TOKEN }));
    await expect(unary(client, ECHO, 'hi')).resolves.toEqual({ ok: true, value: ['echo:hi'] });
    await expect(stream(client, '3')).resolves.toEqual({ ok: true, value: ['1', '2', '3'] });
    // Explicit per-call metadata works the same way as the client helper.
    const bare = connect(running.address, clientCredentials());
    await expect(unary(bare, ECHO, 'yo', bearer(TOKEN))).resolves.toEqual({ ok: true, value: ['echo:yo'] });
  });

  it('leaves the health check open', async () => {
    const running = await startServer(serverOptions);
    const anonymous = connect(running.address, clientCredentials());
    await expect(unary(anonymous, HEALTH, 'ping')).resolves.toEqual({ ok: true, value: ['SERVING'] });
  });
});

it('the interceptor can close the health check too', async () => {
  const interceptor = createAuthInterceptor(createTokenAuthenticator([TOKEN]), { openMethods: [] });
  const running = await startServer({ interceptors: [interceptor] });
  const anonymous = connect(running.address, clientCredentials());
  await expect(unary(anonymous, HEALTH, 'ping')).resolves.toMatchObject({
    ok: false,
    code: grpc.status.UNAUTHENTICATED,
  });
});

describe('TLS and mutual TLS (certificates made by openssl in a temp dir)', () => {
  let certs: TestCerts;
  const file = (name: string) => certs.file(name);

  beforeAll(() => {
    certs = makeTestCerts();
  });
  afterAll(() => certs.remove());

  const tls = (): ServerTlsOptions => ({ tlsCertFile: file('server.crt'), tlsKeyFile: file('server.key') });
  const mtls = (): ServerTlsOptions => ({ ...tls(), tlsClientCaFile: file('ca.crt') });
  const auth = () => [createAuthInterceptor(createTokenAuthenticator([TOKEN]))];

  it('TLS + token: the right CA and token get through, a wrong token is UNAUTHENTICATED', async () => {
    const running = await startServer({ credentials: serverCredentials(tls()), interceptors: auth() });
    const good = connect(running.address, clientCredentials({ caFile: file('ca.crt'), token: TOKEN }));
    await expect(unary(good, ECHO, 'secure')).resolves.toEqual({ ok: true, value: ['echo:secure'] });
    await expect(stream(good, '2')).resolves.toEqual({ ok: true, value: ['1', '2'] });
    const wrong = connect(running.address, clientCredentials({ caFile: file('ca.crt'), token: OTHER_TOKEN }));
    await expect(unary(wrong, ECHO, 'x')).resolves.toMatchObject({ ok: false, code: grpc.status.UNAUTHENTICATED });
  });

  it('TLS: a client that does not trust the server CA, or speaks plaintext, cannot call', async () => {
    const running = await startServer({ credentials: serverCredentials(tls()) });
    const untrusting = connect(running.address, clientCredentials({ tls: true }));
    await expect(unary(untrusting, ECHO, 'x')).resolves.toMatchObject({ ok: false, code: grpc.status.UNAVAILABLE });
    const plaintext = connect(running.address, clientCredentials());
    await expect(unary(plaintext, ECHO, 'x')).resolves.toMatchObject({ ok: false, code: grpc.status.UNAVAILABLE });
    expect(running.handlerCalls).toBe(0);
  });

  it('mutual TLS: a client certificate from the CA is accepted', async () => {
    const running = await startServer({ credentials: serverCredentials(mtls()) });
    const client = connect(
      running.address,
      clientCredentials({ caFile: file('ca.crt'), certFile: file('client.crt'), keyFile: file('client.key') }),
    );
    await expect(unary(client, ECHO, 'mutual')).resolves.toEqual({ ok: true, value: ['echo:mutual'] });
  });

  it('mutual TLS: no client certificate, or one from another CA, is refused in the handshake', async () => {
    const running = await startServer({ credentials: serverCredentials(mtls()) });
    const noCert = connect(running.address, clientCredentials({ caFile: file('ca.crt'), token: TOKEN }));
    const rogue = connect(
      running.address,
      clientCredentials({
        caFile: file('ca.crt'),
        certFile: file('rogue-client.crt'),
        keyFile: file('rogue-client.key'),
      }),
    );
    await expect(unary(noCert, ECHO, 'x')).resolves.toMatchObject({ ok: false, code: grpc.status.UNAVAILABLE });
    await expect(unary(rogue, ECHO, 'x')).resolves.toMatchObject({ ok: false, code: grpc.status.UNAVAILABLE });
    expect(running.handlerCalls).toBe(0);
  });

  it('rejects incomplete or unreadable TLS options, naming the option by its flag', () => {
    expect(() => serverCredentials({ tlsCertFile: file('server.crt') })).toThrow(
      /^--tls-key-file: required when --tls-cert-file is set$/,
    );
    expect(() => serverCredentials({ tlsKeyFile: file('server.key') })).toThrow(/^--tls-cert-file: required/);
    expect(() => serverCredentials({ tlsClientCaFile: file('ca.crt') })).toThrow(
      /^--tls-client-ca-file: mutual TLS needs --tls-cert-file and --tls-key-file$/,
    );
    expect(() => serverCredentials({ ...tls(), tlsClientCaFile: file('nope.crt') })).toThrow(
      /^--tls-client-ca-file: cannot read .*ENOENT/,
    );
    expect(() => serverCredentials({ tlsCertFile: file('nope.crt'), tlsKeyFile: file('server.key') })).toThrow(
      /^--tls-cert-file: cannot read .*nope\.crt \(ENOENT\)$/,
    );
    expect(() => serverCredentials({ tlsCertFile: file('server.key'), tlsKeyFile: file('server.crt') })).toThrow(
      /^--tls-cert-file\/--tls-key-file: not a matching PEM/,
    );
    expect(() => serverCredentials({ ...tls(), tlsClientCaFile: file('client.ext') })).toThrow(
      /^--tls-client-ca-file: not a PEM/,
    );
    // The client's options are named by the app-inbox flags.
    expect(() => clientCredentials({ certFile: file('client.crt') })).toThrow(/^--key-file: required/);
    expect(() => clientCredentials({ caFile: file('missing.crt') })).toThrow(/^--ca-file: cannot read/);
    // Files that are there but not what they should be: grpc-js's own TLS error ("DECODER routines::unsupported",
    // "PEM routines::no start line"), an unexpected error with a stack trace in the app-inbox client; or, for the
    // CA bundle, nothing at all until every connection failed.
    expect(() => clientCredentials({ certFile: file('client.crt'), keyFile: file('client.crt') })).toThrow(
      /^--cert-file\/--key-file: not a matching PEM certificate and private key$/,
    );
    expect(() => clientCredentials({ certFile: file('client.ext'), keyFile: file('client.key') })).toThrow(
      /^--cert-file\/--key-file: not a matching PEM/,
    );
    expect(() => clientCredentials({ caFile: file('client.ext') })).toThrow(/^--ca-file: not a PEM/);
    expect(() => clientCredentials({ caFile: file('client.ext') })).toThrow(GrpcAuthConfigError);
  });
});
