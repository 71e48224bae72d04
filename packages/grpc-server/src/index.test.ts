import { describe, expect, it } from 'vitest';
import * as pkg from './index.js';

describe('@app-inbox/grpc-server public API', () => {
  it('exposes the server, its configuration and the generated v1 clients', () => {
    expect(typeof pkg.startServer).toBe('function');
    expect(pkg.loadConfig([], {})).toEqual(pkg.DEFAULT_CONFIG);
    expect(pkg.SERVICE_NAMES).toEqual([
      'app_inbox.v1.WebhookService',
      'app_inbox.v1.MessageService',
      'app_inbox.v1.DeliveryService',
    ]);
    // The generated service definitions carry the fully qualified method paths clients call.
    expect(pkg.v1.WebhookServiceService.getWebhook.path).toBe('/app_inbox.v1.WebhookService/GetWebhook');
    expect(pkg.v1.MessageServiceService.publishMessages.path).toBe('/app_inbox.v1.MessageService/PublishMessages');
    expect(pkg.v1.DeliveryServiceService.watchDeliveries.responseStream).toBe(true);
    expect(typeof pkg.v1.DeliveryServiceClient).toBe('function');
  });
});
