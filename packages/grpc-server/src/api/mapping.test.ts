import { describe, expect, it } from 'vitest';
import { AttemptVerdict, DeliveryState } from '../gen/app_inbox/v1/delivery.js';
import type { Delivery, WebhookRecord } from '../store/types.js';
import { deliveryToProto, outcomeToProto, stateFromProto, stateToProto, webhookToProto } from './mapping.js';

describe('mapping', () => {
  it('never maps a secret into a Webhook', () => {
    const record: WebhookRecord = {
      accountId: 'a',
      url: 'https://hooks.test/in',
      auth: { type: 'basic', username: 'user', password: 'p4ssw0rd-secret' },
      signingSecret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
      maxMessagesPerContact: 10,
      enabled: false,
      messageTtlMs: 60_000,
      createdAt: 1,
      updatedAt: 2,
    };
    const view = webhookToProto(record);
    expect(view).toEqual({
      accountId: 'a',
      url: 'https://hooks.test/in',
      basicAuth: { username: 'user', hasPassword: true },
      maxMessagesPerContact: 10,
      enabled: false,
      hasSigningSecret: true,
      defaultMessageTtlSeconds: 60,
      createTimeMs: 1,
      updateTimeMs: 2,
      rateLimitPerSecond: 0,
      headerNames: [],
    });
    expect(JSON.stringify(view)).not.toMatch(/p4ssw0rd|whsec_/);
    // Of the webhook's own headers only the names, sorted: the values are API keys and tokens.
    const withHeaders = webhookToProto({
      ...record,
      headers: { 'x-route': 'eu-k_route', authorization: 'Bearer k_tok' },
    });
    expect(withHeaders.headerNames).toEqual(['authorization', 'x-route']);
    expect(JSON.stringify(withHeaders)).not.toMatch(/k_route|k_tok|Bearer/);
    // No rate limit reads as 0, a limit as itself.
    expect(webhookToProto({ ...record, rateLimitPerSecond: 7 }).rateLimitPerSecond).toBe(7);
  });

  it('round-trips every state and refuses UNSPECIFIED / unknown numbers', () => {
    for (const s of ['pending', 'in_flight', 'retrying', 'delivered', 'failed', 'superseded'] as const) {
      expect(stateFromProto(stateToProto(s))).toBe(s);
    }
    expect(stateFromProto(DeliveryState.DELIVERY_STATE_UNSPECIFIED)).toBeNull();
    expect(stateFromProto(99)).toBeNull();
  });

  it('maps a delivery with its attempts, oldest first, and the body only on request', () => {
    const d: Delivery = {
      id: 'd1',
      accountId: 'a',
      externalCustomerId: 'c',
      state: 'retrying',
      createdAt: 10,
      updatedAt: 20,
      nextAttemptAt: 30,
      attemptCount: 2,
      firstAttemptAt: 11,
      body: new TextEncoder().encode('[]'),
      messageIds: ['m1'],
      supersededBy: null,
      lastError: 'http_503',
      traceparent: null,
    };
    const attempts = [
      {
        deliveryId: 'd1',
        attemptNo: 2,
        startedAt: 15,
        durationMs: 3,
        statusCode: 503,
        errorKind: null,
        verdict: 'retry' as const,
        nextAttemptAt: 30,
      },
      {
        deliveryId: 'd1',
        attemptNo: 1,
        startedAt: 11,
        durationMs: 4,
        statusCode: null,
        errorKind: 'timeout',
        verdict: 'retry' as const,
        nextAttemptAt: 14,
      },
    ];
    const withBody = deliveryToProto(d, attempts, true);
    expect(withBody.attempts.map((a) => a.attemptNo)).toEqual([1, 2]);
    expect(withBody.attempts[0]).toEqual({
      attemptNo: 1,
      startTimeMs: 11,
      durationMs: 4,
      statusCode: undefined,
      errorKind: 'timeout',
      verdict: AttemptVerdict.ATTEMPT_VERDICT_RETRY,
      nextAttemptTimeMs: 14,
    });
    expect(withBody.attempts[1]?.statusCode).toBe(503);
    expect(Buffer.from(withBody.body).toString()).toBe('[]');
    expect(withBody.supersededBy).toBeUndefined();
    expect(withBody.lastError).toBe('http_503');
    expect(deliveryToProto(d, attempts, false).body).toHaveLength(0);
    expect(deliveryToProto({ ...d, state: 'pending', body: null, messageIds: null }, [], true).messageIds).toEqual([]);
  });

  it('maps an outcome', () => {
    expect(
      outcomeToProto({
        deliveryId: 'd',
        accountId: 'a',
        externalCustomerId: 'c',
        state: 'delivered',
        messageIds: ['m1', 'm2'],
        attemptNo: 1,
        statusCode: 200,
        errorKind: null,
        nextAttemptAt: null,
        at: 5,
      }),
    ).toEqual({
      deliveryId: 'd',
      accountId: 'a',
      externalCustomerId: 'c',
      state: DeliveryState.DELIVERY_STATE_DELIVERED,
      messageIds: ['m1', 'm2'],
      attemptNo: 1,
      statusCode: 200,
      errorKind: undefined,
      nextAttemptTimeMs: undefined,
      timeMs: 5,
    });
  });
});
