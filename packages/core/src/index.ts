export const VERSION = '0.1.0';
export type { AppInboxMessage, StoredMessage, BasicAuth, WebhookConfig, Verdict } from './types.js';
