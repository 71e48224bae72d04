/**
 * The bench's gRPC side: the generated grpc-js clients (src/gen) of the server under test. Publish
 * requests are encoded ahead of the measured window with the generated `PublishMessagesRequest.encode` and
 * sent as bytes on the generated service path, so the bench process's encoding (which shares the 2 cores
 * with the server) does not count against the server's figures.
 */
import { randomUUID } from 'node:crypto';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import {
  MessageServiceClient,
  MessageServiceService,
  PublishMessagesRequest,
  type InboxMessage,
  type PublishMessagesResponse,
} from '../../src/gen/app_inbox/v1/message.js';
import {
  UpsertWebhookRequest,
  WebhookServiceClient,
  type DeepPartial,
  type UpsertWebhookResponse,
} from '../../src/gen/app_inbox/v1/webhook.js';

export class BenchClient {
  readonly #webhook: WebhookServiceClient;
  readonly #message: MessageServiceClient;

  constructor(address: string) {
    const creds = credentials.createInsecure();
    this.#webhook = new WebhookServiceClient(address, creds);
    this.#message = new MessageServiceClient(address, creds, { channelOverride: this.#webhook.getChannel() });
  }

  upsertWebhook(request: DeepPartial<UpsertWebhookRequest>): Promise<UpsertWebhookResponse> {
    return new Promise((resolve, reject) => {
      this.#webhook.upsertWebhook(UpsertWebhookRequest.fromPartial(request), (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });
  }

  /** Sends a PublishMessagesRequest already encoded by {@link encodePublish}. */
  publishEncoded(request: Buffer): Promise<PublishMessagesResponse> {
    const method = MessageServiceService.publishMessages;
    return new Promise((resolve, reject) => {
      this.#message.makeUnaryRequest(
        method.path,
        (bytes: Buffer) => bytes,
        method.responseDeserialize,
        request,
        (error: ServiceError | null, response?: PublishMessagesResponse) =>
          error || response === undefined ? reject(error ?? new Error('no response')) : resolve(response),
      );
    });
  }

  close(): void {
    this.#message.close();
    this.#webhook.close();
  }
}

export function encodePublish(accountId: string, messages: InboxMessage[]): Buffer {
  return Buffer.from(PublishMessagesRequest.encode({ accountId, messages }).finish());
}

/** A webhook for `url`, disabled or not; 1,000 messages per contact (the SPEC default and cap). */
export async function configureWebhook(
  client: BenchClient,
  accountId: string,
  url: string,
  enabled: boolean,
): Promise<void> {
  await client.upsertWebhook({ accountId, url, enabled, maxMessagesPerContact: 1000 });
}

let counter = 0;
const IMAGE = 'https://cdn.example.com/inbox/images/promo-banner-2x.png';
const LINK = 'https://app.example.com/inbox/open?campaign=spring-sale&utm_source=inbox';
const CONTENT =
  'Your order has shipped and is on its way. Track the parcel from the app, or change the delivery slot ' +
  'up to one hour before the courier arrives.';

/**
 * One realistic message (about 400 bytes as JSON): a fresh UUID, createdDate increasing with every call,
 * image, link, category and a small customData.
 */
export function inboxMessage(externalCustomerId: string, baseTime: number): InboxMessage {
  counter += 1;
  return {
    externalCustomerId,
    id: randomUUID(),
    createdDate: baseTime + counter,
    title: `Order #${100_000 + (counter % 900_000)} shipped`,
    content: CONTENT,
    image: IMAGE,
    link: LINK,
    category: 'orders',
    customData: `{"orderId":${counter},"priority":"normal"}`,
  };
}

/** Unique account id of a bench run. */
export function benchAccount(label: string): string {
  return `bench-${label}-${randomUUID().slice(0, 8)}`;
}
