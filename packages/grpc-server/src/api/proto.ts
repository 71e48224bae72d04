/**
 * The generated API (package `app_inbox.v1`) in one module: message types with their codecs, enums,
 * service definitions, server interfaces and grpc-js client classes. Re-exported as `v1` by the package.
 */
export {
  AttemptVerdict,
  Attempt,
  Delivery,
  DeliveryServiceClient,
  DeliveryServiceService,
  DeliveryState,
  GetDeliveryRequest,
  GetDeliveryResponse,
  ListDeliveriesRequest,
  ListDeliveriesResponse,
  RetryDeliveryRequest,
  RetryDeliveryResponse,
  WatchDeliveriesRequest,
  WatchDeliveriesResponse,
  attemptVerdictFromJSON,
  attemptVerdictToJSON,
  deliveryStateFromJSON,
  deliveryStateToJSON,
} from '../gen/app_inbox/v1/delivery.js';
export type { DeliveryServiceServer } from '../gen/app_inbox/v1/delivery.js';
export {
  ContactDelivery,
  InboxMessage,
  MessageServiceClient,
  MessageServiceService,
  PublishMessagesRequest,
  PublishMessagesResponse,
  ResyncContactsRequest,
  ResyncContactsResponse,
} from '../gen/app_inbox/v1/message.js';
export type { MessageServiceServer } from '../gen/app_inbox/v1/message.js';
export {
  BasicAuth,
  BasicAuthView,
  Circuit,
  CircuitState,
  circuitStateFromJSON,
  circuitStateToJSON,
  DeleteWebhookRequest,
  DeleteWebhookResponse,
  GetWebhookRequest,
  GetWebhookResponse,
  UpdateWebhookRequest,
  UpdateWebhookResponse,
  UpsertWebhookRequest,
  UpsertWebhookResponse,
  Webhook,
  WebhookServiceClient,
  WebhookServiceService,
} from '../gen/app_inbox/v1/webhook.js';
export type { WebhookServiceServer } from '../gen/app_inbox/v1/webhook.js';
