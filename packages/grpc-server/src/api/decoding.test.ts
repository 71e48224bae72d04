import { status, type ServerUnaryCall, type ServiceError } from '@grpc/grpc-js';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { describe, expect, it } from 'vitest';
import { decodeFailuresAsInvalidArgument, decodeStrictly, describeUndecodable } from './decoding.js';
import { decodeStatusDetails } from './errors.js';
import { DeliveryServiceService } from '../gen/app_inbox/v1/delivery.js';
import {
  MessageServiceService,
  PublishMessagesRequest,
  ResyncContactsRequest,
  type InboxMessage,
} from '../gen/app_inbox/v1/message.js';
import { UpsertWebhookRequest, WebhookServiceService } from '../gen/app_inbox/v1/webhook.js';

const PUBLISH = '/app_inbox.v1.MessageService/PublishMessages';
const RESYNC = '/app_inbox.v1.MessageService/ResyncContacts';
const UPSERT = '/app_inbox.v1.WebhookService/UpsertWebhook';

/** A 64-bit value the generated encoder writes as given (it takes bigints too). */
const big = (value: bigint): number => value as unknown as number;

function message(overrides: Partial<InboxMessage> = {}): InboxMessage {
  return {
    externalCustomerId: 'c',
    id: '0b9bd7a4-6d0e-4d8b-9b7e-2f1d0c5a9e11',
    createdDate: 1_700_000_000_000,
    title: 't',
    content: 'c',
    category: 'news',
    ...overrides,
  };
}

function publishBytes(messages: InboxMessage[]): Uint8Array {
  return PublishMessagesRequest.encode({ accountId: 'acct', messages }).finish();
}

/**
 * `bytes` with the first string of one ASCII character `from` replaced by `to` (not UTF-8 when 0x80-0xFF).
 * A string of one byte is `<tag> 01 <byte>`; `tag` is the field's (field 1: 0x0a).
 */
function withByte(bytes: Uint8Array, tag: number, from: string, to: number): Uint8Array {
  const copy = Uint8Array.from(bytes);
  const at = Buffer.from(copy).indexOf(Buffer.from([tag, 0x01, from.charCodeAt(0)]));
  if (at < 0) throw new Error(`no one-byte string ${from} in the bytes`);
  copy[at + 2] = to;
  return copy;
}

describe('describeUndecodable', () => {
  it('names the 64-bit field a JavaScript number cannot hold, with its index', () => {
    const bytes = publishBytes([message(), message(), message({ expiresAtMs: big(2n ** 60n) })]);
    expect(() => PublishMessagesRequest.decode(bytes)).toThrow();
    expect(describeUndecodable(PUBLISH, bytes)).toEqual([
      { field: 'messages[2].expires_at_ms', description: expect.stringContaining('9007199254740991') },
    ]);
    const negative = publishBytes([message({ createdDate: big(-(2n ** 63n)) })]);
    expect(describeUndecodable(PUBLISH, negative)[0]?.field).toBe('messages[0].created_date');
    const upsert = UpsertWebhookRequest.encode({
      accountId: 'a',
      url: 'https://x.example',
      basicAuth: undefined,
      signingSecret: '',
      defaultMessageTtlSeconds: big(2n ** 53n),
      headers: {},
    }).finish();
    expect(describeUndecodable(UPSERT, upsert)[0]?.field).toBe('default_message_ttl_seconds');
  });

  it('names the string field that is not UTF-8, nested and repeated ones with their index', () => {
    const publish = withByte(
      publishBytes([message(), message({ externalCustomerId: '\u0001' })]),
      0x0a,
      '\u0001',
      0xff,
    );
    expect(describeUndecodable(PUBLISH, publish)).toEqual([
      { field: 'messages[1].external_customer_id', description: expect.stringContaining('not valid UTF-8') },
    ]);
    // A lone continuation byte, an overlong encoding and a UTF-16 surrogate are not UTF-8 either.
    const resync = ResyncContactsRequest.encode({
      accountId: 'a',
      externalCustomerIds: ['x', 'y', 'z'],
      all: false,
    }).finish();
    for (const bad of [0x80, 0xc0, 0xed]) {
      expect(describeUndecodable(RESYNC, withByte(resync, 0x12, 'z', bad))[0]?.field).toBe('external_customer_ids[2]');
    }
    const title = withByte(publishBytes([message({ title: '\u0002' })]), 0x22, '\u0002', 0xfe);
    expect(describeUndecodable(PUBLISH, title)[0]?.field).toBe('messages[0].title');
  });

  it('skips unknown fields and says "not protobuf" for bytes that do not parse', () => {
    // An unknown field 15 carrying a huge varint is not the caller's problem with a known field.
    const unknown = new BinaryWriter().uint32((15 << 3) | 0).int64(2n ** 62n);
    const withUnknown = new Uint8Array([...publishBytes([message()]), ...unknown.finish()]);
    expect(() => PublishMessagesRequest.decode(withUnknown)).not.toThrow();
    expect(describeUndecodable(PUBLISH, withUnknown)[0]?.field).toBe('');
    const garbage = Uint8Array.of(0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f);
    expect(describeUndecodable(PUBLISH, garbage)).toEqual([
      {
        field: '',
        description:
          'is not a valid app_inbox.v1.PublishMessagesRequest message: the bytes are not well-formed protobuf',
      },
    ]);
    expect(describeUndecodable('/no.Such/Method', garbage)[0]?.field).toBe('');
  });
});

describe('decodeFailuresAsInvalidArgument', () => {
  const [definition, implementation] = decodeFailuresAsInvalidArgument(MessageServiceService, {
    publishMessages: (
      call: ServerUnaryCall<PublishMessagesRequest, unknown>,
      callback: (e: null, r: unknown) => void,
    ) => callback(null, { handled: call.request.messages.length }),
    resyncContacts: () => undefined,
  });

  function call(bytes: Uint8Array): Promise<{ error: ServiceError | null; response: unknown }> {
    const method = definition.publishMessages!;
    const request = method.requestDeserialize(Buffer.from(bytes));
    const handler = implementation.publishMessages as (
      c: { request: unknown },
      cb: (e: ServiceError | null, r?: unknown) => void,
    ) => void;
    return new Promise((resolve) => handler({ request }, (error, response) => resolve({ error, response })));
  }

  it('hands a decodable request to the handler unchanged', async () => {
    expect(await call(publishBytes([message(), message()]))).toEqual({ error: null, response: { handled: 2 } });
  });

  it('decodes UTF-8 text as it is, a leading U+FEFF included, in one pass', async () => {
    const text = ['\uFEFFc', 'Zoë 😀', 'x'.repeat(100_000) + 'é'];
    const bytes = publishBytes(text.map((externalCustomerId) => message({ externalCustomerId })));
    const decoded = definition.publishMessages!.requestDeserialize(Buffer.from(bytes)) as PublishMessagesRequest;
    expect(decoded.messages.map((m) => m.externalCustomerId)).toEqual(text);
  });

  it('refuses a string that is not UTF-8 (the generated decoder put U+FFFD in its place), naming it', async () => {
    // Two contacts, bytes FF and FE: both were read as "\uFFFD", one contact.
    const bytes = withByte(
      withByte(
        publishBytes([message({ externalCustomerId: '\u0001' }), message({ externalCustomerId: '\u0002' })]),
        0x0a,
        '\u0001',
        0xff,
      ),
      0x0a,
      '\u0002',
      0xfe,
    );
    expect(PublishMessagesRequest.decode(bytes).messages.map((m) => m.externalCustomerId)).toEqual([
      '\uFFFD',
      '\uFFFD',
    ]);
    const { error } = await call(bytes);
    expect(error?.code).toBe(status.INVALID_ARGUMENT);
    const rich = decodeStatusDetails(error?.metadata);
    expect(rich?.badRequest?.fieldViolations.map((v) => v.field)).toEqual(['messages[0].external_customer_id']);
  });

  it('decodes the request of every method of every service strictly', () => {
    // Field 1 of every request is a string (an account or delivery id).
    const notUtf8 = Buffer.from([0x0a, 0x01, 0xff]);
    const methods = [WebhookServiceService, MessageServiceService, DeliveryServiceService].flatMap((service) =>
      Object.values(service),
    );
    expect(methods).toHaveLength(10);
    for (const method of methods) {
      expect(() => method.requestDeserialize(notUtf8), method.path).not.toThrow(); // lenient: U+FFFD
      expect(() => decodeStrictly(method, notUtf8), method.path).toThrow(TypeError);
      expect(describeUndecodable(method.path, notUtf8)[0]?.description, method.path).toContain('UTF-8');
      expect(decodeStrictly(method, Buffer.from([0x0a, 0x02, 0xc3, 0xa9])), method.path).toEqual(
        method.requestDeserialize(Buffer.from([0x0a, 0x02, 0xc3, 0xa9])),
      );
    }
  });

  it('answers INVALID_ARGUMENT with a BadRequest instead of throwing in the deserializer', async () => {
    const bytes = publishBytes([message({ ttlSeconds: big(2n ** 63n - 1n) })]);
    expect(() => definition.publishMessages!.requestDeserialize(Buffer.from(bytes))).not.toThrow();
    const { error } = await call(bytes);
    expect(error?.code).toBe(status.INVALID_ARGUMENT);
    expect(error?.details).toContain('messages[0].ttl_seconds');
    const rich = decodeStatusDetails(error?.metadata);
    expect(rich?.badRequest?.fieldViolations.map((v) => v.field)).toEqual(['messages[0].ttl_seconds']);
    expect(rich?.errorInfo?.reason).toBe('INVALID_ARGUMENT');
  });
});
