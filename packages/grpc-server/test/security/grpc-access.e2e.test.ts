/**
 * Access to the gRPC API end to end (issue 7): the real server started with bearer tokens, TLS and mutual
 * TLS options, called over real sockets by the generated clients. A call without a valid token ends
 * UNAUTHENTICATED before any handler runs (nothing is stored); health stays open for probes.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { UpsertWebhookRequest, WebhookServiceClient } from '../../src/gen/app_inbox/v1/webhook.js';
import { GetWebhookRequest, type GetWebhookResponse } from '../../src/gen/app_inbox/v1/webhook.js';
import { clientCredentials, type ClientAccessOptions } from '../../src/security/grpc-auth.js';
import { accountId, startTestServer, storeUrls, type TestServer } from '../e2e/harness.js';
import { startChildServer } from '../reliability/child-server.js';
import { makeTestCerts, type TestCerts } from './certs.js';

const TOKEN = 'e2e-token-0123456789abcdef';
const ROTATED_TOKEN = 'e2e-token-rotated-9876543210';
/** SQLite only: the access and address checks do not depend on the store engine. */
const sqlite = storeUrls().find((target) => target.engine === 'sqlite')!;

const HealthClient = grpc.makeGenericClientConstructor(healthService, 'Health');
type Outcome<T> = { ok: true; value: T } | { ok: false; code: grpc.status; details: string };

const opened: grpc.Client[] = [];
const servers: TestServer[] = [];
afterEach(async () => {
  for (const c of opened.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});
afterAll(() => sqlite.release());

async function server(overrides: Parameters<typeof startTestServer>[1]): Promise<TestServer> {
  const t = await startTestServer(await sqlite.newUrl(), overrides);
  servers.push(t);
  return t;
}

/** The generated WebhookService client with the given access (TLS, client certificate, token). */
function webhookClient(address: string, access: ClientAccessOptions): WebhookServiceClient {
  const { credentials, interceptors } = clientCredentials(access);
  // The server certificate names `localhost`; TLS does not verify an IP address as a server name.
  const client = new WebhookServiceClient(address, credentials, {
    interceptors,
    'grpc.ssl_target_name_override': 'localhost',
  });
  opened.push(client);
  return client;
}

function call<T>(invoke: (cb: (err: grpc.ServiceError | null, value: T) => void) => void): Promise<Outcome<T>> {
  return new Promise((resolve) =>
    invoke((err, value) => resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true, value })),
  );
}

const upsert = (client: WebhookServiceClient, account: string) =>
  call((cb) =>
    client.upsertWebhook(
      UpsertWebhookRequest.fromPartial({ accountId: account, url: 'http://127.0.0.1:9/hook' }),
      new grpc.Metadata(),
      { deadline: Date.now() + 5_000 },
      cb,
    ),
  );
const get = (client: WebhookServiceClient, account: string) =>
  call<GetWebhookResponse>((cb) =>
    client.getWebhook(GetWebhookRequest.fromPartial({ accountId: account }), new grpc.Metadata(), cb),
  );

function health(address: string, access: ClientAccessOptions): Promise<Outcome<{ status: string }>> {
  const { credentials } = clientCredentials(access);
  const client = new HealthClient(address, credentials, { 'grpc.ssl_target_name_override': 'localhost' });
  opened.push(client);
  return call((cb) =>
    (
      client as unknown as { check(r: object, cb: (e: grpc.ServiceError | null, v: { status: string }) => void): void }
    ).check({ service: '' }, cb),
  );
}

describe('bearer tokens (APP_INBOX_GRPC_TOKENS / --grpc-token-file)', () => {
  it('without a token or with a wrong one: UNAUTHENTICATED and nothing stored; with the token: OK', async () => {
    const t = await server({ grpcTokens: [TOKEN] });
    const account = accountId('auth');
    for (const access of [{}, { token: 'wrong-token-0123456789abcdef' }, { token: TOKEN.slice(0, -1) }]) {
      const refused = await upsert(webhookClient(t.server.address, access), account);
      expect(refused).toMatchObject({ ok: false, code: grpc.status.UNAUTHENTICATED });
    }
    // The harness clients send no token either.
    await expect(t.clients.getWebhook({ accountId: account })).rejects.toMatchObject({
      code: grpc.status.UNAUTHENTICATED,
    });
    const client = webhookClient(t.server.address, { token: TOKEN });
    // Nothing was stored by the refused calls.
    expect(await get(client, account)).toMatchObject({ ok: false, code: grpc.status.NOT_FOUND });
    expect(await upsert(client, account)).toMatchObject({ ok: true, value: { created: true } });
    expect(await get(client, account)).toMatchObject({ ok: true, value: { webhook: { accountId: account } } });
    // Health answers without a token (load balancers, probes).
    expect(await health(t.server.address, {})).toEqual({ ok: true, value: { status: 'SERVING' } });
  });

  it("keeps the token out of grpc-js's debug output (GRPC_TRACE), which prints every call's headers", async () => {
    // grpc-js's server_call tracer wrote `received headers {"authorization":["Bearer <token>"],...}` to stderr.
    const child = await startChildServer(await sqlite.newUrl(), [], 30_000, {
      APP_INBOX_GRPC_TOKENS: TOKEN,
      GRPC_TRACE: 'server_call',
      GRPC_VERBOSITY: 'DEBUG',
    });
    try {
      const client = webhookClient(child.address, { token: TOKEN });
      expect(await get(client, accountId('trace'))).toMatchObject({ ok: false, code: grpc.status.NOT_FOUND });
      expect(await get(webhookClient(child.address, { token: ROTATED_TOKEN }), 'a')).toMatchObject({
        ok: false,
        code: grpc.status.UNAUTHENTICATED,
      });
    } finally {
      await child.kill('SIGTERM');
    }
    // The tracer did run, and shows that a token came, not which.
    expect(child.output()).toContain('GetWebhook received headers {"authorization":["Bearer [redacted]"]');
    expect(child.output()).not.toContain(TOKEN);
    expect(child.output()).not.toContain(ROTATED_TOKEN);
  });

  it('reads tokens from the token file as well (rotation: old and new accepted together)', async () => {
    const certs = makeTestCerts('grpc-tokens-');
    try {
      const file = join(certs.dir, 'tokens');
      writeFileSync(file, `# callers move to the new token, then the old line is removed\n${ROTATED_TOKEN}\n\n`);
      const t = await server({ grpcTokens: [TOKEN], grpcTokenFile: file });
      for (const token of [TOKEN, ROTATED_TOKEN]) {
        const ok = await get(webhookClient(t.server.address, { token }), accountId('auth'));
        expect(ok).toMatchObject({ ok: false, code: grpc.status.NOT_FOUND });
      }
      expect(await get(webhookClient(t.server.address, {}), accountId('auth'))).toMatchObject({
        code: grpc.status.UNAUTHENTICATED,
      });
    } finally {
      certs.remove();
    }
  });

  it('without any token configured, calls need none (the default, documented as for trusted networks)', async () => {
    const t = await server({});
    expect(await get(webhookClient(t.server.address, {}), accountId('open'))).toMatchObject({
      code: grpc.status.NOT_FOUND,
    });
  });
});

describe('TLS and mutual TLS (--tls-cert-file, --tls-key-file, --tls-client-ca-file)', () => {
  let certs: TestCerts;
  beforeAll(() => {
    certs = makeTestCerts('grpc-e2e-tls-');
  });
  afterAll(() => certs.remove());
  const f = (name: string) => certs.file(name);

  it('TLS + token: a client trusting the CA with the token is served; plaintext or an untrusted CA cannot connect', async () => {
    const t = await server({ tlsCertFile: f('server.crt'), tlsKeyFile: f('server.key'), grpcTokens: [TOKEN] });
    const account = accountId('tls');
    const good = webhookClient(t.server.address, { caFile: f('ca.crt'), token: TOKEN });
    expect(await upsert(good, account)).toMatchObject({ ok: true, value: { created: true } });
    expect(await upsert(webhookClient(t.server.address, { caFile: f('ca.crt') }), account)).toMatchObject({
      code: grpc.status.UNAUTHENTICATED,
    });
    for (const access of [{ token: TOKEN }, { caFile: f('rogue-ca.crt'), token: TOKEN }]) {
      expect(await upsert(webhookClient(t.server.address, access), account)).toMatchObject({
        ok: false,
        code: grpc.status.UNAVAILABLE,
      });
    }
    expect(await health(t.server.address, { caFile: f('ca.crt') })).toEqual({ ok: true, value: { status: 'SERVING' } });
  });

  it('mutual TLS: a certificate from the client CA is served; none, or one from another CA, is refused', async () => {
    const t = await server({
      tlsCertFile: f('server.crt'),
      tlsKeyFile: f('server.key'),
      tlsClientCaFile: f('ca.crt'),
    });
    const account = accountId('mtls');
    const withCert = { caFile: f('ca.crt'), certFile: f('client.crt'), keyFile: f('client.key') };
    expect(await upsert(webhookClient(t.server.address, withCert), account)).toMatchObject({ ok: true });
    const rogue = { caFile: f('ca.crt'), certFile: f('rogue-client.crt'), keyFile: f('rogue-client.key') };
    for (const access of [{ caFile: f('ca.crt') }, rogue]) {
      expect(await get(webhookClient(t.server.address, access), account)).toMatchObject({
        ok: false,
        code: grpc.status.UNAVAILABLE,
      });
    }
  });

  it('refuses to start on a missing certificate file, naming the option', async () => {
    await expect(
      startTestServer(await sqlite.newUrl(), { tlsCertFile: f('nope.crt'), tlsKeyFile: f('server.key') }),
    ).rejects.toThrow(/--tls-cert-file: cannot read .*nope\.crt/);
  });
});
