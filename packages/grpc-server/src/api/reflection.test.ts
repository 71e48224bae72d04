import { fileURLToPath } from 'node:url';
import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import { loadSync } from '@grpc/proto-loader';
import { describe, expect, it } from 'vitest';
import { mapEntryName, reflectionDefinition } from './reflection.js';

const PROTO_DIR = fileURLToPath(new URL('../../proto/', import.meta.url));
const API_PROTO_FILES = ['app_inbox/v1/webhook.proto', 'app_inbox/v1/message.proto', 'app_inbox/v1/delivery.proto'];

describe('reflection descriptors', () => {
  it('name a map entry as protoc does', () => {
    expect(mapEntryName('headers')).toBe('HeadersEntry');
    expect(mapEntryName('extra_http_headers')).toBe('ExtraHttpHeadersEntry');
    expect(mapEntryName('_x__y2z')).toBe('XY2zEntry');
    expect(mapEntryName('aB')).toBe('ABEntry');
  });

  it("give the map fields protoc's entry names, leaving every other type as it was", () => {
    const definition = loadSync(API_PROTO_FILES, { includeDirs: [PROTO_DIR], keepCase: true });
    const before = definition['app_inbox.v1.UpsertWebhookRequest'] as { fileDescriptorProtos: Buffer[] };
    const webhookFile = (protos: Buffer[]) =>
      protos
        .map((b) => fromBinary(FileDescriptorProtoSchema, b))
        .find((f) => f.messageType.some((m) => m.name === 'UpsertWebhookRequest'))!;
    const original = webhookFile(before.fileDescriptorProtos);

    const fixed = webhookFile(
      (reflectionDefinition(definition)['app_inbox.v1.UpsertWebhookRequest'] as { fileDescriptorProtos: Buffer[] })
        .fileDescriptorProtos,
    );
    for (const request of ['UpsertWebhookRequest', 'UpdateWebhookRequest']) {
      const message = fixed.messageType.find((m) => m.name === request)!;
      const field = message.field.find((f) => f.name === 'headers')!;
      const entry = message.nestedType.find((n) => n.options?.mapEntry === true)!;
      expect(entry.name).toBe('HeadersEntry');
      expect(field.typeName.endsWith('HeadersEntry')).toBe(true);
    }
    // Nothing else changed: the other messages are the same, field by field.
    const names = (f: typeof original) => f.messageType.map((m) => [m.name, m.field.map((x) => x.typeName)]);
    expect(names(fixed).filter(([n]) => !String(n).endsWith('WebhookRequest'))).toEqual(
      names(original).filter(([n]) => !String(n).endsWith('WebhookRequest')),
    );
  });
});
