/**
 * The generated grpc-js clients of the three services on one channel, each unary call a promise with a
 * deadline, and errors turned into {@link RpcError}s naming the status and the bad fields.
 */
import { Metadata, type CallOptions, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import {
  DeliveryServiceClient,
  GetDeliveryRequest,
  ListDeliveriesRequest,
  RetryDeliveryRequest,
  WatchDeliveriesRequest,
  type DeepPartial,
  type GetDeliveryResponse,
  type ListDeliveriesResponse,
  type RetryDeliveryResponse,
  type WatchDeliveriesResponse,
} from '../gen/app_inbox/v1/delivery.js';
import {
  MessageServiceClient,
  PublishMessagesRequest,
  ResyncContactsRequest,
  type PublishMessagesResponse,
  type ResyncContactsResponse,
} from '../gen/app_inbox/v1/message.js';
import {
  DeleteWebhookRequest,
  GetWebhookRequest,
  UpdateWebhookRequest,
  UpsertWebhookRequest,
  WebhookServiceClient,
  type DeleteWebhookResponse,
  type GetWebhookResponse,
  type UpdateWebhookResponse,
  type UpsertWebhookResponse,
} from '../gen/app_inbox/v1/webhook.js';
import { clientCredentials, type ClientAccessOptions } from '../security/grpc-auth.js';
import { rpcError } from './errors.js';

export interface ApiClientOptions extends ClientAccessOptions {
  /** `host:port` of the server. */
  address: string;
  /** Deadline of each unary call (milliseconds). Watch streams have none. */
  timeoutMs: number;
}

type Callback<Res> = (error: ServiceError | null, response: Res) => void;

export class ApiClient {
  readonly address: string;
  readonly #timeoutMs: number;
  readonly #webhook: WebhookServiceClient;
  readonly #message: MessageServiceClient;
  readonly #delivery: DeliveryServiceClient;

  /** @throws GrpcAuthConfigError when a TLS file cannot be read (the message names the option). */
  constructor(options: ApiClientOptions) {
    this.address = options.address;
    this.#timeoutMs = options.timeoutMs;
    const access = clientCredentials(options);
    const clientOptions = {
      interceptors: access.interceptors,
      // No receive limit (grpc-js's default is 4 MiB): a delivery's body (`deliveries show --body`) is a contact's whole
      // list, and 1,000 messages of 5 KB are already more. The server is the operator's own.
      'grpc.max_receive_message_length': -1,
    };
    this.#webhook = new WebhookServiceClient(options.address, access.credentials, clientOptions);
    // One channel for the three services.
    const shared = { ...clientOptions, channelOverride: this.#webhook.getChannel() };
    this.#message = new MessageServiceClient(options.address, access.credentials, shared);
    this.#delivery = new DeliveryServiceClient(options.address, access.credentials, shared);
  }

  #unary<Res>(invoke: (metadata: Metadata, options: Partial<CallOptions>, callback: Callback<Res>) => unknown) {
    return new Promise<Res>((resolve, reject) => {
      invoke(new Metadata(), { deadline: Date.now() + this.#timeoutMs }, (error, response) =>
        error ? reject(rpcError(error, this.address)) : resolve(response),
      );
    });
  }

  upsertWebhook(r: DeepPartial<UpsertWebhookRequest>): Promise<UpsertWebhookResponse> {
    return this.#unary((m, o, cb) => this.#webhook.upsertWebhook(UpsertWebhookRequest.fromPartial(r), m, o, cb));
  }
  updateWebhook(r: DeepPartial<UpdateWebhookRequest>): Promise<UpdateWebhookResponse> {
    return this.#unary((m, o, cb) => this.#webhook.updateWebhook(UpdateWebhookRequest.fromPartial(r), m, o, cb));
  }
  getWebhook(r: DeepPartial<GetWebhookRequest>): Promise<GetWebhookResponse> {
    return this.#unary((m, o, cb) => this.#webhook.getWebhook(GetWebhookRequest.fromPartial(r), m, o, cb));
  }
  deleteWebhook(r: DeepPartial<DeleteWebhookRequest>): Promise<DeleteWebhookResponse> {
    return this.#unary((m, o, cb) => this.#webhook.deleteWebhook(DeleteWebhookRequest.fromPartial(r), m, o, cb));
  }
  publishMessages(r: DeepPartial<PublishMessagesRequest>): Promise<PublishMessagesResponse> {
    return this.#unary((m, o, cb) => this.#message.publishMessages(PublishMessagesRequest.fromPartial(r), m, o, cb));
  }
  resyncContacts(r: DeepPartial<ResyncContactsRequest>): Promise<ResyncContactsResponse> {
    return this.#unary((m, o, cb) => this.#message.resyncContacts(ResyncContactsRequest.fromPartial(r), m, o, cb));
  }
  getDelivery(r: DeepPartial<GetDeliveryRequest>): Promise<GetDeliveryResponse> {
    return this.#unary((m, o, cb) => this.#delivery.getDelivery(GetDeliveryRequest.fromPartial(r), m, o, cb));
  }
  listDeliveries(r: DeepPartial<ListDeliveriesRequest>): Promise<ListDeliveriesResponse> {
    return this.#unary((m, o, cb) => this.#delivery.listDeliveries(ListDeliveriesRequest.fromPartial(r), m, o, cb));
  }
  retryDelivery(r: DeepPartial<RetryDeliveryRequest>): Promise<RetryDeliveryResponse> {
    return this.#unary((m, o, cb) => this.#delivery.retryDelivery(RetryDeliveryRequest.fromPartial(r), m, o, cb));
  }
  /** A WatchDeliveries stream (no deadline: it runs until cancelled or ended by the server). */
  watchDeliveries(r: DeepPartial<WatchDeliveriesRequest>): ClientReadableStream<WatchDeliveriesResponse> {
    return this.#delivery.watchDeliveries(WatchDeliveriesRequest.fromPartial(r));
  }

  close(): void {
    this.#message.close();
    this.#delivery.close();
    this.#webhook.close();
  }
}
