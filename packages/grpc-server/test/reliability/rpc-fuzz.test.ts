/**
 * Bad input, fuzzed (fast-check) over every RPC with a real grpc-js client against a real server: oversize
 * fields, invalid UUIDs, negative and huge dates (also int64 values beyond 2^53, which a JavaScript number
 * cannot hold), unknown enum values, empty and 10,000+ item lists, messages over the server's receive limit,
 * and random bytes. Every answer is OK or one of the caller's-fault codes, with the rich details where they
 * apply; never INTERNAL or UNKNOWN. The server keeps serving, logs no error, and a refused call stores nothing.
 * @see issue 7 "Bad input"
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import fc from 'fast-check';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DeliveryState,
  GetDeliveryRequest,
  ListDeliveriesRequest,
  ListDeliveriesResponse,
  RetryDeliveryRequest,
  WatchDeliveriesRequest,
} from '../../src/gen/app_inbox/v1/delivery.js';
import {
  PublishMessagesRequest,
  PublishMessagesResponse,
  ResyncContactsRequest,
  type InboxMessage,
} from '../../src/gen/app_inbox/v1/message.js';
import {
  DeleteWebhookRequest,
  GetWebhookRequest,
  UpsertWebhookRequest,
  type BasicAuth,
} from '../../src/gen/app_inbox/v1/webhook.js';
import { startTestServer, type TestServer } from '../e2e/harness.js';
import { RawClient, type RawAnswer } from './raw-grpc.js';

const PATH = {
  upsertWebhook: '/app_inbox.v1.WebhookService/UpsertWebhook',
  getWebhook: '/app_inbox.v1.WebhookService/GetWebhook',
  deleteWebhook: '/app_inbox.v1.WebhookService/DeleteWebhook',
  publishMessages: '/app_inbox.v1.MessageService/PublishMessages',
  resyncContacts: '/app_inbox.v1.MessageService/ResyncContacts',
  getDelivery: '/app_inbox.v1.DeliveryService/GetDelivery',
  listDeliveries: '/app_inbox.v1.DeliveryService/ListDeliveries',
  retryDelivery: '/app_inbox.v1.DeliveryService/RetryDelivery',
  watchDeliveries: '/app_inbox.v1.DeliveryService/WatchDeliveries',
} as const;
const UNARY_PATHS = Object.values(PATH).filter((p) => p !== PATH.watchDeliveries);

/** The server's receive limit in this file: the 4 MiB the issue names (the default is 64 MiB, CONFIG.md). */
const MAX_REQUEST_BYTES = 4 * 1024 * 1024;
/** Runs per property: enough to reach every branch, small enough for the file to stay well under 60 s. */
const RUNS = 60;

const TWO_63 = 2n ** 63n;

/** A 64-bit integer as the generated encoders write it: a number, or a bigint beyond 2^53 (cast). */
type Int64 = number;
const asInt64 = (value: bigint): Int64 => value as unknown as Int64;

// ------------------------------------------------------------------ arbitraries

const hugeString = fc.integer({ min: 1_000, max: 70_000 }).map((n) => 'x'.repeat(n));
const anyString = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 200 }) },
  { weight: 2, arbitrary: fc.uuid() },
  { weight: 1, arbitrary: fc.constantFrom('', ' ', '\t\n', '\u0000', 'a\u0007b', 'not-a-uuid', '😀'.repeat(300)) },
  { weight: 1, arbitrary: hugeString },
);
/** Any int64, safe or not: negative, zero, near 2^53, beyond it, the int64 extremes. */
const anyInt64: fc.Arbitrary<Int64> = fc.oneof(
  fc.integer({ min: -2_000_000_000, max: 2_000_000_000 }),
  fc.constantFrom(0, -1, 1, Date.now(), Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER),
  fc.bigInt({ min: -TWO_63, max: TWO_63 - 1n }).map(asInt64),
  fc.constantFrom(TWO_63 - 1n, -TWO_63, 2n ** 53n, -(2n ** 53n)).map(asInt64),
);
const anyUint32 = fc.oneof(fc.nat(), fc.constantFrom(0, 1, 10_000, 10_001, 2 ** 32 - 1));
/** Known and unknown enum numbers (proto3 enums are open: any int32 arrives). */
const anyEnum = fc.oneof(fc.integer({ min: -3, max: 9 }), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }));
/** Mostly `valid`, sometimes anything: so that whole requests are often valid and each field is fuzzed. */
const mostly = <T>(valid: fc.Arbitrary<T>, fuzz: fc.Arbitrary<T>): fc.Arbitrary<T> =>
  fc.oneof({ weight: 4, arbitrary: valid }, { weight: 1, arbitrary: fuzz });
const anyUrl = fc.oneof(
  anyString,
  fc.webUrl(),
  fc.constantFrom('http://127.0.0.1:9/hook', 'https://example.com/hook', 'ftp://x/y', 'http://[::1]/', 'http://'),
);

function validMessage(contact: string, overrides: Partial<InboxMessage> = {}): InboxMessage {
  return {
    externalCustomerId: contact,
    id: randomUUID(),
    createdDate: Date.now() - 1_000,
    title: 'Hello',
    content: 'A message',
    category: 'news',
    ...overrides,
  };
}

/** A message with any field possibly wrong (each one rarely); `contact` keeps it traceable to this run. */
const fuzzedMessage = (contact: string): fc.Arbitrary<InboxMessage> =>
  fc
    .record({
      externalCustomerId: mostly(fc.constant(contact), fc.oneof(anyString, fc.constantFrom('', '  '))),
      id: mostly(fc.uuid({ version: 4 }), anyString),
      createdDate: mostly(fc.constant(Date.now() - 5_000), anyInt64),
      title: mostly(fc.string({ maxLength: 30 }), anyString),
      content: mostly(fc.string({ maxLength: 30 }), anyString),
      category: mostly(fc.constant('news'), anyString),
      image: mostly(fc.constant(undefined), anyUrl),
      link: mostly(fc.constantFrom(undefined, '', 'https://example.com/x'), anyUrl),
      customData: mostly(fc.constant(undefined), fc.oneof(fc.json(), anyString)),
      ttlSeconds: mostly(fc.constantFrom(undefined, 60), anyInt64),
      expiresAtMs: mostly(fc.constant(undefined), anyInt64),
    })
    .map((fields) => ({ ...validMessage(contact), ...fields }) as InboxMessage);

// ------------------------------------------------------------------ checks

/** The codes a caller may get for bad input; everything else (INTERNAL, UNKNOWN...) is a server bug. */
const CALLER_FAULTS = new Set([
  status.INVALID_ARGUMENT,
  status.RESOURCE_EXHAUSTED,
  status.NOT_FOUND,
  status.FAILED_PRECONDITION,
]);

/** The answer is OK or a caller's-fault code from `allowed`, with the rich details each code carries. */
function expectCallerFault(answer: RawAnswer, allowed: readonly status[], what: string): void {
  const label = `${what}: ${status[answer.code]} ${answer.details}`;
  expect(answer.code === status.OK || CALLER_FAULTS.has(answer.code), label).toBe(true);
  expect([status.OK, ...allowed], label).toContain(answer.code);
  if (answer.code === status.INVALID_ARGUMENT) {
    expect(answer.rich?.errorInfo?.reason, label).toBe('INVALID_ARGUMENT');
    expect(answer.rich?.badRequest?.fieldViolations.length ?? 0, label).toBeGreaterThan(0);
    for (const v of answer.rich?.badRequest?.fieldViolations ?? []) expect(v.description, label).not.toBe('');
  }
  if (answer.code === status.NOT_FOUND || answer.code === status.FAILED_PRECONDITION) {
    expect(answer.rich?.errorInfo?.domain, label).toBe('app-inbox.webhooks');
  }
}

describe('bad input over every RPC (fuzzed)', () => {
  let dir: string;
  let t: TestServer;
  let raw: RawClient;
  let receiver: MockReceiver;
  const logLines: string[] = [];
  /** The account the publish, resync and delivery properties use (never changed by the webhook ones). */
  const publishAccount = `fuzz-publish-${randomUUID()}`;
  /** The account the webhook properties may change. */
  const webhookAccount = `fuzz-webhook-${randomUUID()}`;
  const knownDeliveries: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'app-inbox-fuzz-'));
    receiver = await createMockReceiver({ recordLimit: 0 });
    t = await startTestServer(
      join(dir, 'store.db'),
      { maxRequestBytes: MAX_REQUEST_BYTES },
      {
        // Warnings and errors are kept: a refused request must never be logged as a server failure.
        logger: pino({ level: 'warn' }, { write: (line: string) => logLines.push(line) }),
        // Every webhook host name resolves to the allow-listed loopback: no DNS, no network.
        resolve: async () => [{ address: '127.0.0.1', family: 4 }],
      },
    );
    raw = new RawClient(t.server.address);
    await t.clients.upsertWebhook({ accountId: publishAccount, url: `${receiver.url}/in` });
    await t.clients.upsertWebhook({ accountId: webhookAccount, url: `${receiver.url}/other` });
    const seeded = await t.clients.publishMessages({
      accountId: publishAccount,
      messages: [validMessage('seed-1'), validMessage('seed-2')],
    });
    knownDeliveries.push(...seeded.deliveries.map((d) => d.deliveryId));
  });

  afterAll(async () => {
    raw?.close();
    await t?.stop();
    await receiver?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The account's deliveries of `contacts` (none may appear after a refused publish). */
  async function deliveriesOf(contacts: readonly string[]): Promise<string[]> {
    const ids: string[] = [];
    for (const contact of contacts) {
      const page = await t.clients.listDeliveries({ accountId: publishAccount, externalCustomerId: contact });
      ids.push(...page.deliveries.map((d) => d.id));
    }
    return ids;
  }

  it('UpsertWebhook, GetWebhook and DeleteWebhook: OK or INVALID_ARGUMENT / NOT_FOUND; a refused upsert changes nothing', async () => {
    const upsertCodes = new Set<status>();
    const basicAuth: fc.Arbitrary<BasicAuth | undefined> = fc.oneof(
      fc.constant(undefined),
      fc.record({ username: anyString, password: anyString }),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          accountId: mostly(fc.constant(webhookAccount), anyString),
          url: mostly(
            fc.constantFrom('http://127.0.0.1:9/hook', 'https://receiver.example/hook'),
            fc.oneof(anyUrl, fc.constant(`${'http://127.0.0.1:9/'}${'p'.repeat(3000)}`)),
          ),
          basicAuth: mostly(fc.constant(undefined), basicAuth),
          maxMessagesPerContact: mostly(fc.constantFrom(undefined, 1, 500), anyUint32),
          enabled: fc.oneof(fc.boolean(), fc.constant(undefined)),
          signingSecret: mostly(
            fc.constantFrom('', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'),
            fc.oneof(anyString, fc.constant('whsec_!!')),
          ),
          defaultMessageTtlSeconds: mostly(fc.constantFrom(undefined, 3_600), anyInt64),
          headers: mostly(
            fc.constantFrom<Record<string, string>>({}, { 'x-api-key': 'k_1' }, { Authorization: 'Bearer t' }),
            fc.dictionary(fc.oneof(anyString, fc.constantFrom('Host', 'x-a', 'X-A')), anyString, { maxKeys: 25 }),
          ),
        }),
        async (request) => {
          const before = await raw.unary(
            PATH.getWebhook,
            GetWebhookRequest.encode({ accountId: request.accountId }).finish(),
          );
          const answer = await raw.unary(PATH.upsertWebhook, UpsertWebhookRequest.encode(request).finish());
          expectCallerFault(answer, [status.INVALID_ARGUMENT], 'UpsertWebhook');
          upsertCodes.add(answer.code);
          const after = await raw.unary(
            PATH.getWebhook,
            GetWebhookRequest.encode({ accountId: request.accountId }).finish(),
          );
          expectCallerFault(after, [status.NOT_FOUND, status.INVALID_ARGUMENT], 'GetWebhook');
          if (answer.code !== status.OK) {
            // Nothing partial: the webhook is exactly what it was (or still absent).
            expect(after.code).toBe(before.code);
            expect(after.response).toEqual(before.response);
          }
        },
      ),
      { numRuns: RUNS },
    );
    // The generators reach both sides: accepted upserts and refused ones.
    expect([...upsertCodes].sort()).toEqual([status.OK, status.INVALID_ARGUMENT].sort());
    await fc.assert(
      fc.asyncProperty(anyString, fc.boolean(), async (accountId, remove) => {
        fc.pre(accountId !== publishAccount);
        const path = remove ? PATH.deleteWebhook : PATH.getWebhook;
        const bytes = (remove ? DeleteWebhookRequest : GetWebhookRequest).encode({ accountId }).finish();
        expectCallerFault(await raw.unary(path, bytes), [status.NOT_FOUND, status.INVALID_ARGUMENT], path);
      }),
      { numRuns: RUNS },
    );
  });

  it('PublishMessages: OK or INVALID_ARGUMENT / FAILED_PRECONDITION, all or nothing', async () => {
    // The contact is made unique inside each run (a placeholder in the generated messages), so that "nothing
    // stored" can be checked by looking the contact up.
    const PLACEHOLDER = '\u0000contact';
    const codes = new Set<status>();
    await fc.assert(
      fc.asyncProperty(
        mostly(fc.constant(publishAccount), fc.oneof(anyString, fc.constant(`no-webhook-${randomUUID()}`))),
        fc.array(fuzzedMessage(PLACEHOLDER), { maxLength: 4 }),
        async (accountId, generated) => {
          const contact = `fuzz-${randomUUID()}`;
          const messages = generated.map((m) =>
            m.externalCustomerId === PLACEHOLDER ? { ...m, externalCustomerId: contact } : m,
          );
          const answer = await raw.unary(
            PATH.publishMessages,
            PublishMessagesRequest.encode({ accountId, messages }).finish(),
          );
          expectCallerFault(answer, [status.INVALID_ARGUMENT, status.FAILED_PRECONDITION], 'PublishMessages');
          codes.add(answer.code);
          if (answer.code === status.OK) {
            const result = PublishMessagesResponse.decode(answer.response!);
            expect(result.accepted + result.duplicates + result.skippedWithoutExternalCustomerId).toBe(messages.length);
          } else if (accountId === publishAccount) {
            expect(await deliveriesOf([contact])).toEqual([]);
          }
        },
      ),
      // About one generated request in thirteen is wholly valid, so 60 runs missed every one about once in 100
      // (a CI run failed so): two valid requests always run as well, ahead of the generated ones.
      {
        numRuns: RUNS,
        examples: [
          [publishAccount, [validMessage(PLACEHOLDER)]],
          [publishAccount, [validMessage(PLACEHOLDER), validMessage(PLACEHOLDER)]],
        ],
      },
    );
    // Both sides are reached (FAILED_PRECONDITION, for an account without a webhook, only sometimes).
    expect(codes).toContain(status.OK);
    expect(codes).toContain(status.INVALID_ARGUMENT);
  });

  it('PublishMessages: one bad message in a batch stores none of the others', async () => {
    const contact = `batch-${randomUUID()}`;
    const good = Array.from({ length: 50 }, () => validMessage(contact));
    await fc.assert(
      fc.asyncProperty(
        fc.nat({ max: good.length }),
        fc.constantFrom<Partial<InboxMessage>>(
          { id: 'not-a-uuid' },
          { createdDate: -1 },
          { createdDate: asInt64(TWO_63 - 1n) },
          { expiresAtMs: asInt64(-TWO_63) },
          { ttlSeconds: 0 },
          { title: 'x'.repeat(1_001) },
          { image: 'javascript:alert(1)' },
          { customData: '{not json' },
        ),
        async (at, flaw) => {
          const bad = validMessage(contact, flaw);
          const messages = [...good.slice(0, at), bad, ...good.slice(at)];
          const answer = await raw.unary(
            PATH.publishMessages,
            PublishMessagesRequest.encode({ accountId: publishAccount, messages }).finish(),
          );
          expect(answer.code).toBe(status.INVALID_ARGUMENT);
          const fields = answer.rich?.badRequest?.fieldViolations.map((v) => v.field) ?? [];
          expect(fields.length).toBeGreaterThan(0);
          expect(fields.every((f) => f.startsWith(`messages[${at}].`))).toBe(true);
          expect(await deliveriesOf([contact])).toEqual([]);
        },
      ),
      { numRuns: 16 },
    );
    // None of the good ones was stored: publishing them alone accepts every one as new.
    const alone = await t.clients.publishMessages({ accountId: publishAccount, messages: good });
    expect(alone).toMatchObject({ accepted: good.length, duplicates: 0 });
  });

  it('64-bit integers beyond 2^53 are INVALID_ARGUMENT naming the field, not INTERNAL', async () => {
    const unsafeInt64 = fc.oneof(
      fc.bigInt({ min: 2n ** 53n, max: TWO_63 - 1n }),
      fc.bigInt({ min: -TWO_63, max: -(2n ** 53n) }),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.nat({ max: 5 }),
        fc.constantFrom('createdDate', 'ttlSeconds', 'expiresAtMs'),
        unsafeInt64,
        async (index, field, value) => {
          const messages = Array.from({ length: index + 2 }, () => validMessage('big'));
          messages[index] = { ...messages[index]!, [field]: asInt64(value) };
          const answer = await raw.unary(
            PATH.publishMessages,
            PublishMessagesRequest.encode({ accountId: publishAccount, messages }).finish(),
          );
          expect(answer.code).toBe(status.INVALID_ARGUMENT);
          const snake = field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
          expect(answer.rich?.badRequest?.fieldViolations).toEqual([
            expect.objectContaining({ field: `messages[${index}].${snake}` }),
          ]);
          expect(answer.details).toContain(`messages[${index}].${snake}`);
        },
      ),
      { numRuns: 30 },
    );
    const upsert = await raw.unary(
      PATH.upsertWebhook,
      UpsertWebhookRequest.encode({
        accountId: webhookAccount,
        url: 'http://127.0.0.1:9/x',
        basicAuth: undefined,
        signingSecret: '',
        defaultMessageTtlSeconds: asInt64(TWO_63 - 1n),
        headers: {},
      }).finish(),
    );
    expect(upsert.code).toBe(status.INVALID_ARGUMENT);
    expect(upsert.rich?.badRequest?.fieldViolations.map((v) => v.field)).toEqual(['default_message_ttl_seconds']);
  });

  it('ResyncContacts, GetDelivery, RetryDelivery, ListDeliveries and WatchDeliveries: OK or a caller fault', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          accountId: fc.oneof(fc.constant(publishAccount), anyString),
          externalCustomerIds: fc.array(fc.oneof(fc.constantFrom('seed-1', 'seed-2'), anyString), { maxLength: 6 }),
          all: fc.boolean(),
        }),
        async (request) => {
          const answer = await raw.unary(PATH.resyncContacts, ResyncContactsRequest.encode(request).finish());
          expectCallerFault(answer, [status.INVALID_ARGUMENT, status.FAILED_PRECONDITION], 'ResyncContacts');
        },
      ),
      { numRuns: RUNS },
    );
    const deliveryId = fc.oneof(fc.constantFrom(...knownDeliveries), fc.uuid(), anyString);
    await fc.assert(
      fc.asyncProperty(deliveryId, fc.boolean(), fc.boolean(), async (id, includeBody, retry) => {
        const answer = retry
          ? await raw.unary(PATH.retryDelivery, RetryDeliveryRequest.encode({ deliveryId: id }).finish())
          : await raw.unary(PATH.getDelivery, GetDeliveryRequest.encode({ deliveryId: id, includeBody }).finish());
        expectCallerFault(answer, [status.NOT_FOUND, status.INVALID_ARGUMENT], retry ? 'RetryDelivery' : 'GetDelivery');
        if (knownDeliveries.includes(id)) expect(answer.code).toBe(status.OK);
      }),
      { numRuns: RUNS },
    );
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          accountId: fc.oneof(fc.constant(publishAccount), fc.constant(''), anyString),
          externalCustomerId: fc.oneof(fc.constant(''), anyString),
          states: fc.array(anyEnum, { maxLength: 8 }),
          pageSize: anyUint32,
          pageToken: fc.oneof(fc.constant(''), anyString, fc.base64String({ maxLength: 40 })),
        }),
        async (request) => {
          const answer = await raw.unary(PATH.listDeliveries, ListDeliveriesRequest.encode(request).finish());
          expectCallerFault(answer, [status.INVALID_ARGUMENT], 'ListDeliveries');
          const unknown = request.states.findIndex(
            (s) => s <= DeliveryState.DELIVERY_STATE_UNSPECIFIED || s > DeliveryState.DELIVERY_STATE_SUPERSEDED,
          );
          if (unknown >= 0) {
            expect(answer.code).toBe(status.INVALID_ARGUMENT);
            const fields = answer.rich?.badRequest?.fieldViolations.map((v) => v.field);
            expect(fields).toContain(`states[${unknown}]`);
          }
          if (answer.code === status.OK) {
            const page = ListDeliveriesResponse.decode(answer.response!);
            expect(page.deliveries.length).toBeLessThanOrEqual(100);
          }
        },
      ),
      { numRuns: RUNS },
    );
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.constant(publishAccount), fc.constant(''), anyString), async (accountId) => {
        const answer = await raw.serverStream(
          PATH.watchDeliveries,
          WatchDeliveriesRequest.encode({ accountId }).finish(),
        );
        expectCallerFault(answer, [status.INVALID_ARGUMENT], 'WatchDeliveries');
      }),
      { numRuns: 30 },
    );
  });

  it('random bytes as the request of every method: OK or a caller fault, never INTERNAL', async () => {
    const anyBytes = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      // Valid tags with truncated or oversized lengths are the interesting malformed cases.
      fc.constantFrom(
        Uint8Array.of(0x0a),
        Uint8Array.of(0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f),
        Uint8Array.of(0x12, 0x05, 0x18),
        Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
        Uint8Array.of(0x0f),
      ),
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...UNARY_PATHS, PATH.watchDeliveries), anyBytes, async (path, bytes) => {
        const answer =
          path === PATH.watchDeliveries ? await raw.serverStream(path, bytes) : await raw.unary(path, bytes);
        expectCallerFault(
          answer,
          [status.INVALID_ARGUMENT, status.NOT_FOUND, status.FAILED_PRECONDITION],
          `${path} with ${Buffer.from(bytes).toString('hex')}`,
        );
      }),
      { numRuns: 150 },
    );
  });

  it('empty lists and lists over 10,000 items are INVALID_ARGUMENT; 10,000 messages are accepted', async () => {
    const empty = await raw.unary(
      PATH.publishMessages,
      PublishMessagesRequest.encode({ accountId: publishAccount, messages: [] }).finish(),
    );
    expect(empty.code).toBe(status.INVALID_ARGUMENT);
    expect(empty.rich?.badRequest?.fieldViolations.map((v) => v.field)).toEqual(['messages']);

    const contact = `many-${randomUUID()}`;
    const tenThousand = Array.from({ length: 10_000 }, () => validMessage(contact, { title: '', content: '' }));
    const over = await raw.unary(
      PATH.publishMessages,
      PublishMessagesRequest.encode({
        accountId: publishAccount,
        messages: [...tenThousand, validMessage(contact)],
      }).finish(),
    );
    expect(over.code).toBe(status.INVALID_ARGUMENT);
    expect(over.rich?.badRequest?.fieldViolations[0]?.description).toContain('at most 10000');
    expect(await deliveriesOf([contact])).toEqual([]);
    const exactly = await t.clients.publishMessages({ accountId: publishAccount, messages: tenThousand });
    expect(exactly).toMatchObject({ accepted: 10_000, duplicates: 0 });

    const resync = await raw.unary(
      PATH.resyncContacts,
      ResyncContactsRequest.encode({
        accountId: publishAccount,
        externalCustomerIds: Array.from({ length: 10_001 }, (_, i) => `c-${i}`),
        all: false,
      }).finish(),
    );
    expect(resync.code).toBe(status.INVALID_ARGUMENT);
    const noneNamed = await raw.unary(
      PATH.resyncContacts,
      ResyncContactsRequest.encode({ accountId: publishAccount, externalCustomerIds: [], all: false }).finish(),
    );
    expect(noneNamed.code).toBe(status.INVALID_ARGUMENT);

    const manyStates = await raw.unary(
      PATH.listDeliveries,
      ListDeliveriesRequest.encode({
        accountId: publishAccount,
        externalCustomerId: '',
        states: Array.from({ length: 12_000 }, (_, i) => (i % 6) + 1),
        pageSize: 0,
        pageToken: '',
      }).finish(),
    );
    expect(manyStates.code).toBe(status.OK);
  });

  it('a message over the receive limit is RESOURCE_EXHAUSTED, and nothing of it is stored', async () => {
    const contact = `huge-${randomUUID()}`;
    const content = 'y'.repeat(MAX_REQUEST_BYTES + 256 * 1024);
    const answer = await raw.unary(
      PATH.publishMessages,
      PublishMessagesRequest.encode({
        accountId: publishAccount,
        messages: [validMessage(contact, { content })],
      }).finish(),
    );
    expect(answer.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(await deliveriesOf([contact])).toEqual([]);
    // Many small messages adding up to more than the limit: the same.
    const many = Array.from({ length: 500 }, () => validMessage(contact, { content: 'z'.repeat(9_000) }));
    const total = await raw.unary(
      PATH.publishMessages,
      PublishMessagesRequest.encode({ accountId: publishAccount, messages: many }).finish(),
    );
    expect(total.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(await deliveriesOf([contact])).toEqual([]);
  });

  it('keeps serving after all of it, and logged no server error', async () => {
    expect(await raw.serving()).toBe(true);
    const ok = await t.clients.publishMessages({ accountId: publishAccount, messages: [validMessage('after')] });
    expect(ok.accepted).toBe(1);
    const errors = logLines.filter((line) => (JSON.parse(line) as { level: number }).level >= 50);
    expect(errors).toEqual([]);
  });
});
