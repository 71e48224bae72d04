/**
 * Domain (store) values to proto responses. Secrets stop here: a webhook is mapped to a view that says
 * whether a password or signing secret is set, and which headers it sends, never what any of them is.
 */
import type {
  Attempt as StoreAttempt,
  Delivery as StoreDelivery,
  DeliveryOutcome,
  DeliveryState as StoreDeliveryState,
  WebhookRecord,
} from '../store/types.js';
import { replacedSigningSecretAt } from '../store/shared.js';
import {
  AttemptVerdict,
  DeliveryState,
  type Attempt,
  type Delivery,
  type WatchDeliveriesResponse,
} from '../gen/app_inbox/v1/delivery.js';
import { CircuitState, type Circuit, type Webhook } from '../gen/app_inbox/v1/webhook.js';
import type { CircuitView } from '../delivery/circuit.js';

const STATE_TO_PROTO: Readonly<Record<StoreDeliveryState, DeliveryState>> = {
  pending: DeliveryState.DELIVERY_STATE_PENDING,
  in_flight: DeliveryState.DELIVERY_STATE_IN_FLIGHT,
  retrying: DeliveryState.DELIVERY_STATE_RETRYING,
  delivered: DeliveryState.DELIVERY_STATE_DELIVERED,
  failed: DeliveryState.DELIVERY_STATE_FAILED,
  superseded: DeliveryState.DELIVERY_STATE_SUPERSEDED,
};

const STATE_FROM_PROTO: ReadonlyMap<number, StoreDeliveryState> = new Map(
  Object.entries(STATE_TO_PROTO).map(([k, v]) => [v, k as StoreDeliveryState]),
);

const VERDICT_TO_PROTO: Readonly<Record<StoreAttempt['verdict'], AttemptVerdict>> = {
  delivered: AttemptVerdict.ATTEMPT_VERDICT_DELIVERED,
  retry: AttemptVerdict.ATTEMPT_VERDICT_RETRY,
  failed: AttemptVerdict.ATTEMPT_VERDICT_FAILED,
};

export function stateToProto(state: StoreDeliveryState): DeliveryState {
  return STATE_TO_PROTO[state];
}

/** The store state of a proto enum value; null for UNSPECIFIED and unknown numbers. */
export function stateFromProto(state: number): StoreDeliveryState | null {
  return STATE_FROM_PROTO.get(state) ?? null;
}

const CIRCUIT_TO_PROTO: Readonly<Record<CircuitView['state'], CircuitState>> = {
  closed: CircuitState.CIRCUIT_STATE_CLOSED,
  open: CircuitState.CIRCUIT_STATE_OPEN,
  half_open: CircuitState.CIRCUIT_STATE_HALF_OPEN,
};

/** The circuit breaker's view of an endpoint (issue 7). */
export function circuitToProto(view: CircuitView): Circuit {
  return {
    state: CIRCUIT_TO_PROTO[view.state],
    sinceMs: view.since ?? undefined,
    consecutiveFailures: view.consecutiveFailures,
    nextProbeAtMs: view.nextProbeAt ?? undefined,
    heldUntilMs: view.heldUntil ?? undefined,
  };
}

/**
 * The webhook as read back at `now`; `circuit` is the circuit breaker's view of its endpoint, when known. Of a
 * signing-secret rotation only its end shows, while it lasts.
 */
export function webhookToProto(record: WebhookRecord, circuit?: CircuitView, now = Date.now()): Webhook {
  return {
    accountId: record.accountId,
    url: record.url,
    // Only the user name and the fact that a password exists leave the server. @see SPEC §2
    basicAuth:
      record.auth === undefined
        ? undefined
        : { username: record.auth.username, hasPassword: record.auth.password !== '' },
    maxMessagesPerContact: record.maxMessagesPerContact,
    enabled: record.enabled,
    hasSigningSecret: record.signingSecret !== undefined && record.signingSecret !== '',
    defaultMessageTtlSeconds: Math.round(record.messageTtlMs / 1000),
    createTimeMs: record.createdAt,
    updateTimeMs: record.updatedAt,
    circuit: circuit === undefined ? undefined : circuitToProto(circuit),
    rateLimitPerSecond: record.rateLimitPerSecond ?? 0,
    previousSigningSecretExpireTimeMs:
      replacedSigningSecretAt(record, now) === undefined ? undefined : record.previousSigningSecretExpiresAt,
    // The names only: a header's value is a secret (an API key, a token), like the password.
    headerNames: Object.keys(record.headers ?? {}).sort(),
  };
}

export function attemptToProto(a: StoreAttempt): Attempt {
  return {
    attemptNo: a.attemptNo,
    startTimeMs: a.startedAt,
    durationMs: a.durationMs,
    statusCode: a.statusCode ?? undefined,
    errorKind: a.errorKind ?? undefined,
    verdict: VERDICT_TO_PROTO[a.verdict],
    nextAttemptTimeMs: a.nextAttemptAt ?? undefined,
  };
}

export function deliveryToProto(d: StoreDelivery, attempts: readonly StoreAttempt[], includeBody: boolean): Delivery {
  return {
    id: d.id,
    accountId: d.accountId,
    externalCustomerId: d.externalCustomerId,
    state: stateToProto(d.state),
    createTimeMs: d.createdAt,
    updateTimeMs: d.updatedAt,
    nextAttemptTimeMs: d.nextAttemptAt ?? undefined,
    attemptCount: d.attemptCount,
    firstAttemptTimeMs: d.firstAttemptAt ?? undefined,
    messageIds: d.messageIds ?? [],
    supersededBy: d.supersededBy ?? undefined,
    lastError: d.lastError ?? undefined,
    attempts: [...attempts].sort((a, b) => a.attemptNo - b.attemptNo).map(attemptToProto),
    body:
      includeBody && d.body !== null
        ? Buffer.from(d.body.buffer, d.body.byteOffset, d.body.byteLength)
        : Buffer.alloc(0),
  };
}

export function outcomeToProto(o: DeliveryOutcome): WatchDeliveriesResponse {
  return {
    deliveryId: o.deliveryId,
    accountId: o.accountId,
    externalCustomerId: o.externalCustomerId,
    state: stateToProto(o.state),
    messageIds: o.messageIds,
    attemptNo: o.attemptNo,
    statusCode: o.statusCode ?? undefined,
    errorKind: o.errorKind ?? undefined,
    nextAttemptTimeMs: o.nextAttemptAt ?? undefined,
    timeMs: o.at,
    supersededBy: o.supersededBy,
  };
}
