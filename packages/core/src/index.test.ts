import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as core from './index.js';

describe('@app-inbox/core public API', () => {
  it('has the version of its package.json (sent in the User-Agent)', () => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(core.VERSION).toBe(pkg.version);
    expect(core.USER_AGENT).toBe(`app-inbox-webhooks/${pkg.version}`);
  });

  it('exports the agreed names', () => {
    const names = [
      'messageSchema',
      'messageListSchema',
      'webhookConfigSchema',
      'validate',
      'validateMessage',
      'validateMessageList',
      'validateWebhookConfig',
      'DEFAULT_MAX_MESSAGES_PER_CONTACT',
      'MAX_MESSAGES_PER_CONTACT_LIMIT',
      'LIMITS',
      'NUL_CHARACTER_MESSAGE',
      'availableMessages',
      'toWireMessage',
      'serializeMessages',
      'buildPayload',
      'partitionByCustomerId',
      'CLASSIFICATION_TABLE',
      'classify',
      'errorKind',
      'DEFAULT_BACKOFF',
      'backoffDelay',
      'parseRetryAfter',
      'decideRetry',
      'backoffSchedule',
      'validateBackoffOptions',
      'DELIVERY_ID_HEADER',
      'TIMESTAMP_HEADER',
      'SIGNATURE_HEADER',
      'basicAuthorization',
      'signStandardWebhook',
      'buildRequestHeaders',
      'webhookHeadersSchema',
      'RESERVED_HEADER_NAMES',
      'RESERVED_HEADER_PREFIXES',
      'isReservedHeaderName',
      'CoreError',
    ];
    for (const name of names) expect(core, name).toHaveProperty(name);
  });
});
