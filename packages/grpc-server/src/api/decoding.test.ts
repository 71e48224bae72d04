import { status, type ServerUnaryCall, type ServiceError } from '@grpc/grpc-js';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { describe, expect, it } from 'vitest';
import { decodeFailuresAsInvalidArgument, describeUndecodable } from './decoding.js';
import { decodeStatusDetails } from './errors.js';
import { MessageServiceService, PublishMessagesRequest, type InboxMessage } from '../gen/app_inbox/v1/message.js';
import { UpsertWebhookRequest } from '../gen/app_inbox/v1/webhook.js';

const PUBLISH = '/app_inbox.v1.MessageService/PublishMessages';
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
    }).finish();
    expect(describeUndecodable(UPSERT, upsert)[0]?.field).toBe('default_message_ttl_seconds');
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
