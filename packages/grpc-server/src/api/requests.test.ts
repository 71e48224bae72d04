import { describe, expect, it } from 'vitest';
import type { InboxMessage } from '../gen/app_inbox/v1/message.js';
import { DeliveryState } from '../gen/app_inbox/v1/delivery.js';
import { UpdateWebhookRequest, UpsertWebhookRequest } from '../gen/app_inbox/v1/webhook.js';
import {
  MAX_MESSAGES_PER_PUBLISH,
  MAX_PAGE_SIZE,
  parseListDeliveries,
  parsePublishMessages,
  parseResyncContacts,
  parseUpdateMask,
  parseUpdateWebhook,
  parseUpsertWebhook,
  protoPath,
  signingRotation,
} from './requests.js';
import type { WebhookRecord } from '../store/types.js';

const NOW = Date.UTC(2025, 0, 1);

function message(overrides: Partial<InboxMessage> = {}): InboxMessage {
  return {
    externalCustomerId: 'c-1',
    id: '0b6a4f6e-5c1f-4f4e-9a53-6a0f2f6b9d11',
    createdDate: NOW - 1000,
    title: 'Hello',
    content: 'World',
    category: 'promo',
    ...overrides,
  };
}

function fields(result: { ok: boolean; violations?: { field: string }[] }): string[] {
  return result.ok ? [] : (result.violations ?? []).map((v) => v.field);
}

describe('protoPath', () => {
  it('turns core paths into proto field paths', () => {
    expect(protoPath('messages[3].createdDate')).toBe('messages[3].created_date');
    expect(protoPath('auth.password')).toBe('basic_auth.password');
    expect(protoPath('maxMessagesPerContact')).toBe('max_messages_per_contact');
    expect(protoPath('messages[0].id')).toBe('messages[0].id');
  });
});

describe('protoPath of a header', () => {
  it('leaves a quoted map key as it is, even one that looks like a field', () => {
    expect(protoPath('headers["auth"]')).toBe('headers["auth"]');
    expect(protoPath('headers["X-Api-Key"]')).toBe('headers["X-Api-Key"]');
    expect(protoPath('headers["a\\"b"].maxMessagesPerContact')).toBe('headers["a\\"b"].max_messages_per_contact');
  });
});

describe("a webhook's own headers", () => {
  const upsert = (headers: Record<string, string>, basicAuth?: { username: string; password: string }) =>
    parseUpsertWebhook(
      UpsertWebhookRequest.fromPartial({ accountId: 'a', url: 'https://x.test', headers, basicAuth }),
      60,
    );

  it('are stored with lower-case names; none sent is none stored', () => {
    const parsed = upsert({ 'X-Api-Key': 'k_1' });
    expect(parsed.ok && parsed.value.config.headers).toEqual({ 'x-api-key': 'k_1' });
    const none = upsert({});
    expect(none.ok && 'headers' in none.value.config).toBe(false);
  });

  it('are refused by their proto path, the value never shown', () => {
    const refused = upsert(
      { Host: 'h', auth: 'k_secret\n', Authorization: 'Bearer k_secret' },
      { username: 'u', password: 'p' },
    );
    expect(fields(refused)).toEqual(['headers["host"]', 'headers["auth"]', 'headers["authorization"]']);
    expect(JSON.stringify(refused)).not.toContain('k_secret');
  });

  it('are an update_mask path that replaces the whole set; not named, the stored ones are kept', () => {
    const stored: WebhookRecord = {
      accountId: 'a',
      url: 'https://x.test',
      maxMessagesPerContact: 10,
      enabled: true,
      headers: { 'x-api-key': 'k_1', 'x-route': 'eu' },
      messageTtlMs: 60_000,
      createdAt: NOW,
      updatedAt: NOW,
    };
    const update = (request: Partial<UpdateWebhookRequest>) => {
      const full = UpdateWebhookRequest.fromPartial({ accountId: 'a', ...request });
      const mask = parseUpdateMask(full);
      if (!mask.ok) throw new Error(JSON.stringify(mask.violations));
      const parsed = parseUpdateWebhook(full, mask.value.fields, stored, 60);
      if (!parsed.ok) throw new Error(JSON.stringify(parsed.violations));
      return parsed.value.config.headers;
    };
    expect(update({ updateMask: ['enabled'], enabled: false, headers: { 'x-other': 'v' } })).toEqual(stored.headers);
    expect(update({ updateMask: ['headers'], headers: { 'X-Other': 'v' } })).toEqual({ 'x-other': 'v' });
    expect(update({ updateMask: ['headers'] })).toBeUndefined();
  });
});

describe('parsePublishMessages', () => {
  it('accepts valid messages, resolves expiry from ttl_seconds / expires_at_ms / account default', () => {
    const result = parsePublishMessages(
      {
        accountId: 'acc',
        messages: [
          message(),
          message({ id: '1b6a4f6e-5c1f-4f4e-9a53-6a0f2f6b9d11', ttlSeconds: 60 }),
          message({
            id: '2b6a4f6e-5c1f-4f4e-9a53-6a0f2f6b9d11',
            expiresAtMs: NOW + 5000,
            image: '',
            link: 'https://x.test/a',
          }),
        ],
      },
      NOW,
    );
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.value.messages.map((m) => m.expiresAt)).toEqual([null, NOW + 60_000, NOW + 5000]);
    expect(result.value.messages[2]).toMatchObject({ image: '', link: 'https://x.test/a' });
    expect(result.value.messages[0]).not.toHaveProperty('image');
    expect(result.value.skippedIndices).toEqual([]);
  });

  it('bounds the expiry inclusively: ttl_seconds 1..1 year, expires_at_ms later than now and at most 1 year ahead', () => {
    const year = 365 * 86_400;
    const expiry = (m: Partial<InboxMessage>) => {
      const result = parsePublishMessages({ accountId: 'acc', messages: [message(m)] }, NOW);
      return result.ok ? result.value.messages[0]?.expiresAt : fields(result);
    };
    expect(expiry({ ttlSeconds: 1 })).toBe(NOW + 1000);
    expect(expiry({ ttlSeconds: year })).toBe(NOW + year * 1000);
    expect(expiry({ ttlSeconds: year + 1 })).toEqual(['messages[0].ttl_seconds']);
    expect(expiry({ expiresAtMs: NOW + 1 })).toBe(NOW + 1);
    // Expiring at the very moment of the publish is expired already (expiresAt <= now is expired: SPEC §4).
    expect(expiry({ expiresAtMs: NOW })).toEqual(['messages[0].expires_at_ms']);
    expect(expiry({ expiresAtMs: NOW + year * 1000 })).toBe(NOW + year * 1000);
    expect(expiry({ expiresAtMs: NOW + year * 1000 + 1 })).toEqual(['messages[0].expires_at_ms']);
  });

  it('skips and counts messages without an externalCustomerId (blank counts as none)', () => {
    const result = parsePublishMessages(
      {
        accountId: 'acc',
        messages: [
          message({ externalCustomerId: '' }),
          message({ id: '1b6a4f6e-5c1f-4f4e-9a53-6a0f2f6b9d11' }),
          message({ externalCustomerId: '  ', id: '2b6a4f6e-5c1f-4f4e-9a53-6a0f2f6b9d11' }),
        ],
      },
      NOW,
    );
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.value.skippedIndices).toEqual([0, 2]);
    expect(result.value.messages.map((m) => m.id)).toEqual(['1b6a4f6e-5c1f-4f4e-9a53-6a0f2f6b9d11']);
  });

  it('takes an empty custom_data as none, as an empty image or link; bad JSON text is still refused', () => {
    const result = parsePublishMessages(
      { accountId: 'a', messages: [message({ customData: '' }), message({ customData: '{"k":1}' })] },
      NOW,
    );
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.value.messages.map((m) => ('customData' in m ? m.customData : 'none'))).toEqual(['none', '{"k":1}']);
    expect(fields(parsePublishMessages({ accountId: 'a', messages: [message({ customData: ' ' })] }, NOW))).toEqual([
      'messages[0].custom_data',
    ]);
  });

  it('lists every bad field of every message, in proto names', () => {
    const result = parsePublishMessages(
      {
        accountId: '',
        messages: [
          message(),
          message({ id: 'not-a-uuid', createdDate: 1.5 }),
          message({ externalCustomerId: '', customData: '{oops', ttlSeconds: 10, expiresAtMs: NOW + 10 }),
          message({ link: 'ftp://x', expiresAtMs: NOW - 1 }),
        ],
      },
      NOW,
    );
    expect(fields(result).sort()).toEqual(
      [
        'account_id',
        'messages[1].id',
        'messages[1].created_date',
        'messages[2].custom_data',
        'messages[2].ttl_seconds',
        'messages[3].link',
        'messages[3].expires_at_ms',
      ].sort(),
    );
  });

  it('names a bad message by its index among valid ones, with or without a contact', () => {
    const valid = Array.from({ length: 5 }, () => message());
    const badContact = [...valid];
    badContact.splice(3, 0, message({ title: 'x'.repeat(1001) }));
    expect(fields(parsePublishMessages({ accountId: 'a', messages: badContact }, NOW))).toEqual(['messages[3].title']);
    const badSkipped = [...valid, message({ externalCustomerId: ' ', id: 'nope' })];
    expect(fields(parsePublishMessages({ accountId: 'a', messages: badSkipped }, NOW))).toEqual(['messages[5].id']);
    // Index 2 of the request is index 1 among the messages with a contact: named by the request's, in order.
    const mixed = [message({ externalCustomerId: '' }), message(), message({ title: 'x'.repeat(1001), ttlSeconds: 0 })];
    expect(fields(parsePublishMessages({ accountId: 'a', messages: mixed }, NOW))).toEqual([
      'messages[2].title',
      'messages[2].ttl_seconds',
    ]);
  });

  it('refuses an empty list and more than 10,000 messages', () => {
    expect(fields(parsePublishMessages({ accountId: 'a', messages: [] }, NOW))).toEqual(['messages']);
    const many = Array.from({ length: MAX_MESSAGES_PER_PUBLISH + 1 }, () => message());
    const result = parsePublishMessages({ accountId: 'a', messages: many }, NOW);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.violations).toEqual([
      { field: 'messages', description: 'must contain at most 10000 messages (got 10001)' },
    ]);
  });

  it('accepts exactly 10,000 messages', () => {
    const many = Array.from({ length: MAX_MESSAGES_PER_PUBLISH }, (_, i) =>
      message({ id: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}` }),
    );
    expect(parsePublishMessages({ accountId: 'a', messages: many }, NOW).ok).toBe(true);
  });
});

describe('parseUpsertWebhook', () => {
  it('applies defaults', () => {
    const result = parseUpsertWebhook(
      UpsertWebhookRequest.fromPartial({ accountId: 'a', url: 'https://hooks.test/in' }),
      3600,
    );
    expect(result).toEqual({
      ok: true,
      value: {
        accountId: 'a',
        config: { url: 'https://hooks.test/in', maxMessagesPerContact: 1000, enabled: true },
        messageTtlMs: 3_600_000,
      },
    });
  });

  it('takes rate_limit_per_second 1..10,000; 0 and unset are no limit', () => {
    const parse = (rateLimitPerSecond: number | undefined) =>
      parseUpsertWebhook(
        UpsertWebhookRequest.fromPartial({ accountId: 'a', url: 'https://hooks.test/in', rateLimitPerSecond }),
        3600,
      );
    expect(parse(25)).toMatchObject({ ok: true, value: { config: { rateLimitPerSecond: 25 } } });
    expect(parse(10_000)).toMatchObject({ ok: true, value: { config: { rateLimitPerSecond: 10_000 } } });
    for (const none of [0, undefined]) {
      const result = parse(none);
      expect(result.ok && 'rateLimitPerSecond' in result.value.config).toBe(false);
    }
    expect(parse(10_001)).toEqual({
      ok: false,
      violations: [{ field: 'rate_limit_per_second', description: 'must be at most 10000' }],
    });
  });

  it('names every bad field and never echoes the password', () => {
    const result = parseUpsertWebhook(
      {
        accountId: 'a',
        url: 'https://user:pw@hooks.test/in',
        basicAuth: { username: 'a:b', password: '' },
        maxMessagesPerContact: 0,
        signingSecret: 'nope',
        defaultMessageTtlSeconds: 0,
        rateLimitPerSecond: 10_001,
        headers: {},
      },
      3600,
    );
    expect(fields(result).sort()).toEqual(
      [
        'basic_auth.password',
        'basic_auth.username',
        'default_message_ttl_seconds',
        'max_messages_per_contact',
        'rate_limit_per_second',
        'signing_secret',
        'url',
      ].sort(),
    );
    const secret = parseUpsertWebhook(
      {
        accountId: 'a',
        url: 'https://hooks.test',
        basicAuth: { username: 'u', password: 'sup3r\u0001secret' },
        signingSecret: '',
        headers: {},
      },
      3600,
    );
    expect(secret.ok).toBe(false);
    expect(JSON.stringify(secret)).not.toContain('sup3r');
  });
});

describe('parseResyncContacts', () => {
  it('needs contacts or all, not both', () => {
    expect(fields(parseResyncContacts({ accountId: 'a', externalCustomerIds: [], all: false }))).toEqual([
      'external_customer_ids',
    ]);
    expect(fields(parseResyncContacts({ accountId: 'a', externalCustomerIds: ['x'], all: true }))).toEqual([
      'external_customer_ids',
    ]);
    expect(fields(parseResyncContacts({ accountId: 'a', externalCustomerIds: ['x', ''], all: false }))).toEqual([
      'external_customer_ids[1]',
    ]);
    expect(parseResyncContacts({ accountId: 'a', externalCustomerIds: ['x', 'x', 'y'], all: false })).toEqual({
      ok: true,
      value: { accountId: 'a', contacts: ['x', 'y'] },
    });
    expect(parseResyncContacts({ accountId: 'a', externalCustomerIds: [], all: true })).toEqual({
      ok: true,
      value: { accountId: 'a', contacts: 'all' },
    });
  });
});

describe('parseListDeliveries', () => {
  it('maps filters, defaults and caps the page size', () => {
    const result = parseListDeliveries({
      accountId: 'a',
      externalCustomerId: 'c',
      states: [DeliveryState.DELIVERY_STATE_FAILED, DeliveryState.DELIVERY_STATE_RETRYING],
      pageSize: 1000,
      pageToken: 'abc',
    });
    expect(result).toEqual({
      ok: true,
      value: {
        filter: { accountId: 'a', externalCustomerId: 'c', states: ['failed', 'retrying'] },
        pageSize: MAX_PAGE_SIZE,
        cursor: 'abc',
      },
    });
    const defaults = parseListDeliveries({
      accountId: '',
      externalCustomerId: '',
      states: [],
      pageSize: 0,
      pageToken: '',
    });
    expect(defaults).toEqual({ ok: true, value: { filter: {}, pageSize: 50, cursor: null } });
  });

  it('refuses UNSPECIFIED and unknown states by index', () => {
    const result = parseListDeliveries({
      accountId: '',
      externalCustomerId: '',
      states: [DeliveryState.DELIVERY_STATE_PENDING, DeliveryState.DELIVERY_STATE_UNSPECIFIED, 42 as DeliveryState],
      pageSize: 0,
      pageToken: '',
    });
    expect(fields(result)).toEqual(['states[1]', 'states[2]']);
  });
});

describe('signingRotation', () => {
  const stored = (over: Partial<WebhookRecord> = {}): WebhookRecord => ({
    accountId: 'a',
    url: 'https://hooks.test/in',
    maxMessagesPerContact: 1000,
    enabled: true,
    messageTtlMs: 1000,
    createdAt: 1,
    updatedAt: 2,
    signingSecret: 'whsec_old',
    ...over,
  });

  it('keeps a replaced secret signing until now + overlap, and only the last one replaced', () => {
    expect(signingRotation(stored(), 'whsec_new', 1_000, 60_000)).toEqual({
      previousSigningSecret: 'whsec_old',
      previousSigningSecretExpiresAt: 61_000,
    });
    const rotating = stored({ previousSigningSecret: 'whsec_older', previousSigningSecretExpiresAt: 50_000 });
    expect(signingRotation(rotating, 'whsec_new', 1_000, 60_000)).toEqual({
      previousSigningSecret: 'whsec_old',
      previousSigningSecretExpiresAt: 61_000,
    });
  });

  it('lets a rotation under way run to its end when the secret is unchanged, and drops an ended one', () => {
    const rotating = stored({ previousSigningSecret: 'whsec_older', previousSigningSecretExpiresAt: 50_000 });
    expect(signingRotation(rotating, 'whsec_old', 49_999, 60_000)).toEqual({
      previousSigningSecret: 'whsec_older',
      previousSigningSecretExpiresAt: 50_000,
    });
    expect(signingRotation(rotating, 'whsec_old', 50_000, 60_000)).toEqual({});
  });

  it('keeps nothing without a new secret, a stored one, an overlap, or with a stored one that cannot be opened', () => {
    expect(signingRotation(stored(), undefined, 1_000, 60_000)).toEqual({});
    expect(signingRotation(null, 'whsec_new', 1_000, 60_000)).toEqual({});
    expect(signingRotation(stored({ signingSecret: undefined }), 'whsec_new', 1_000, 60_000)).toEqual({});
    expect(signingRotation(stored(), 'whsec_new', 1_000, 0)).toEqual({});
    // Still sealed (its key is gone): never kept, it would be sealed again as if it were a secret.
    expect(signingRotation(stored({ signingSecret: 'enc:v1:x', secretsSealed: true }), 'whsec_new', 1, 60_000)).toEqual(
      {},
    );
  });
});
