/**
 * The store is the queue (ARCHITECTURE §3): one interface, two engines (SQLite embedded,
 * PostgreSQL shared), one conformance suite (`store/conformance.ts`) that both must pass.
 *
 * Every method that changes state is one transaction, committed before its promise resolves.
 * Times are milliseconds since the epoch and are always passed in by the caller (`now`), so the
 * engines never read a clock of their own and tests can drive time.
 */
import type { StoredMessage, WebhookConfig } from '@app-inbox/core';

/**
 * pending     – not built yet; collects every new message of its contact (at most one per contact)
 * in_flight   – claimed by a worker under a lease; at most one per contact
 * retrying    – built (body frozen), waiting for `nextAttemptAt`
 * delivered   – a 2xx was received
 * failed      – 400 (or another non-retryable answer), or out of attempts/age; kept for replay
 * superseded  – a newer state of the contact exists; never sent again
 */
export type DeliveryState = 'pending' | 'in_flight' | 'retrying' | 'delivered' | 'failed' | 'superseded';

/** First attempts and retries are claimed separately so a retry backlog never delays new work. */
export type Lane = 'first' | 'retry';

/** Circuit state of an endpoint (issue 7). */
export type CircuitState = 'closed' | 'open' | 'half_open';

/**
 * A signing secret replaced by a save, kept to sign beside the new one until `previousSigningSecretExpiresAt`
 * (ms since the epoch): the overlap of a rotation (`--signing-secret-overlap-seconds`), so a receiver that still
 * verifies with the old secret keeps accepting requests while it moves to the new one. A secret like the others:
 * sealed at rest, never returned by a read RPC.
 */
export interface SigningRotation {
  previousSigningSecret?: string;
  previousSigningSecretExpiresAt?: number;
}

/** What {@link Store.upsertWebhook} stores: the configuration, the messages' default TTL, a rotation's overlap. */
export type WebhookSettings = WebhookConfig & SigningRotation & { messageTtlMs?: number };

export interface WebhookRecord extends WebhookConfig, SigningRotation {
  accountId: string;
  /** Default time-to-live of a message published without its own expiry (ms). Default 1 day. */
  messageTtlMs: number;
  createdAt: number;
  updatedAt: number;
  /**
   * Set by the sealed-secrets wrapper (security/sealed-store.ts) on a read whose secrets could not be opened (their
   * key is gone): the secrets in this record are still sealed, never usable as they are. Engines never set it.
   */
  secretsSealed?: true;
}

export interface PublishInput {
  accountId: string;
  /** Already validated; `expiresAt` already resolved from the message's TTL or the account default. */
  messages: StoredMessage[];
  now: number;
  /**
   * W3C `traceparent` of the RPC publishing, stored on each delivery this call creates (a coalesced, already
   * pending delivery keeps its own). Default null (tracing off). @see {@link Delivery.traceparent}
   */
  traceparent?: string | null;
  /**
   * Store nothing, and throw StoreError `webhook_missing`, unless the account has a webhook when the publish commits:
   * the check and the writes are one transaction, so a DeleteWebhook that committed after the caller looked the
   * webhook up cannot leave this publish's messages and pending deliveries behind (an account without a webhook whose
   * work is due for ever), and one that comes during the publish waits for it and deletes what it stored. Default
   * false (the store takes messages for any account).
   */
  requireWebhook?: boolean;
}

/** Options of {@link Store.resync} and {@link Store.retryDelivery}. */
export interface TraceOptions {
  /** W3C `traceparent` of the calling RPC; see {@link Delivery.traceparent}. Default null (tracing off). */
  traceparent?: string | null;
}

export interface PublishResult {
  /** Messages newly stored. */
  inserted: number;
  /** Messages whose id was already stored for the account (idempotent publish: ignored). */
  duplicates: number;
  /**
   * One entry per contact that got at least one new message: the contact's pending delivery (new or
   * existing, coalesced). A contact whose messages were all duplicates is not rescheduled (the first
   * publish of those ids already was) and is not listed.
   */
  deliveries: Array<{ externalCustomerId: string; deliveryId: string }>;
}

export interface Delivery {
  id: string;
  accountId: string;
  externalCustomerId: string;
  state: DeliveryState;
  createdAt: number;
  updatedAt: number;
  /**
   * When the delivery may next be attempted; null when terminal. While `in_flight` this is the end of
   * the lease: the time another worker may take the delivery if the claim is not settled.
   */
  nextAttemptAt: number | null;
  /** Attempts made so far. */
  attemptCount: number;
  /** Time of the first attempt (the age for the max-age rule counts from it), null before. */
  firstAttemptAt: number | null;
  /** The exact request body, frozen at the first attempt; null while pending. */
  body: Uint8Array | null;
  /** Ids of the messages the frozen body carries (for WatchDeliveries), null while pending. */
  messageIds: string[] | null;
  /** The delivery that superseded this one, when state is superseded. */
  supersededBy: string | null;
  /**
   * Short reason of the last failure: the attempt's {@link AttemptResult.reason} (e.g. `http_400`, `timeout`,
   * `max_attempts:http_503` when retries ran out), or `http_<status>` / the error kind when none was given.
   */
  lastError: string | null;
  /**
   * W3C trace context (`00-<trace id>-<span id>-<flags>`) of the RPC that created the delivery (publish,
   * resync, or the retry that created it), or that last replayed it (RetryDelivery); each attempt's span is
   * its child, so the trace of the RPC shows the attempts made later, by any process. Null when tracing was
   * off. @see issue 8
   */
  traceparent: string | null;
}

export interface Attempt {
  deliveryId: string;
  /** 1-based. */
  attemptNo: number;
  startedAt: number;
  durationMs: number;
  /** HTTP status when an answer came. */
  statusCode: number | null;
  /** Stable error kind when no answer came (`timeout`, `refused`, `reset`, `dns`, `tls`, ...). */
  errorKind: string | null;
  verdict: 'delivered' | 'retry' | 'failed';
  /** Next attempt time decided after this attempt, when retrying. */
  nextAttemptAt: number | null;
}

export interface ClaimOptions {
  lane: Lane;
  limit: number;
  now: number;
  /** The lease: the claim is lost at `now + leaseMs`. Always longer than the request timeout. */
  leaseMs: number;
  /** Identifies the worker process holding the claim. */
  owner: string;
  /** Accounts whose endpoint is at its concurrency limit or paused: skip their deliveries. */
  excludeAccounts?: readonly string[];
  /**
   * At most this many deliveries of one account in this claim (deliveries), so that one account's
   * backlog cannot fill a whole batch. Default: `limit`. Accounts are served oldest due first.
   */
  maxPerAccount?: number;
  /**
   * At most this many bytes of frozen bodies in this claim (a retry carries its body): the claim stops before the
   * delivery that would pass it, but always takes its first one, whatever its size. Default: no limit.
   */
  maxBodyBytes?: number;
}

/** A claimed delivery, now `in_flight` under the caller's lease, with its webhook. */
export interface ClaimedDelivery {
  delivery: Delivery;
  webhook: WebhookRecord;
  leaseUntil: number;
  /**
   * For a delivery without a frozen body, the contact's messages as {@link Store.contactMessages} gives them
   * at the claim's `now` with the webhook's `maxMessagesPerContact`, read once the claim has taken effect (so
   * every message committed with the delivery is in it) by the store for the whole claim at once: a store whose
   * every read is a round trip saves one per delivery. Absent: the caller reads them with `contactMessages`.
   */
  messages?: StoredMessage[];
}

/** What {@link Store.checkClaim} says of a claim still held. */
export interface ClaimCheck {
  /** The `updatedAt` of the account's webhook now, or null when it has none. */
  webhookUpdatedAt: number | null;
  /** Whether that webhook is enabled (false when there is none). */
  webhookEnabled: boolean;
}

export interface AttemptResult {
  owner: string;
  /** `attempt.attemptNo` must be the delivery's `attemptCount + 1`, so an attempt is never recorded twice. */
  attempt: Attempt;
  /** `delivered`, `failed`, or `retrying` (with `attempt.nextAttemptAt`). */
  nextState: 'delivered' | 'failed' | 'retrying';
  /**
   * Why the attempt did not deliver, stored as the delivery's `lastError` so that GetDelivery says why it
   * failed: the classification's reason (`http_503`, `timeout`, `tls`), prefixed by the give-up reason when
   * retries ran out (`max_attempts:http_503`, `max_age:timeout`). Ignored when `nextState` is `delivered`.
   * Default: `http_<status>`, else the attempt's error kind.
   */
  reason?: string;
}

export interface DeliveryFilter {
  accountId?: string;
  externalCustomerId?: string;
  states?: DeliveryState[];
}

export interface DeliveryPage {
  deliveries: Delivery[];
  /** Opaque cursor of the next page, null at the end; `listDeliveries` takes it only with the same filter. */
  nextCursor: string | null;
}

export interface RetryResult {
  /** The delivery that will be sent: the same one (same id, same bytes) or the contact's newer one. */
  delivery: Delivery;
  /** True when a newer state of the contact exists and it is what gets sent instead. */
  replacedByNewer: boolean;
}

/**
 * An outcome event for WatchDeliveries; `onOutcome` sees those of every process on the store.
 *
 * Who emits what: the caller of `recordAttempt` (the delivery engine) emits `delivered`, `retrying` and
 * `failed`. The store itself emits `superseded`, once per delivery, for every delivery that any of its methods
 * supersedes (publish, resync, claimDue, recordAttempt, release, retryDelivery), and only after the
 * transaction that superseded it committed. A superseded outcome carries the attempt count so far as
 * `attemptNo` (0 when it was never sent), the frozen message ids (empty when never built) and `supersededBy`;
 * when `recordAttempt` superseded it, also that attempt's status code or error kind.
 */
export interface DeliveryOutcome {
  deliveryId: string;
  accountId: string;
  externalCustomerId: string;
  state: 'delivered' | 'retrying' | 'failed' | 'superseded';
  messageIds: string[];
  attemptNo: number;
  statusCode: number | null;
  errorKind: string | null;
  nextAttemptAt: number | null;
  at: number;
  /** The contact's newer delivery that replaced this one; only on `superseded` outcomes. */
  supersededBy?: string;
}

/** What {@link Store.leaseRateTokens} took from an account's shared rate-limit bucket. */
export interface RateTokenLease {
  /** Tokens taken (0 to `want`): each lets one attempt begin, now. */
  granted: number;
  /** How long (ms) until the bucket holds a whole token again; 0 when it still holds one. */
  nextTokenInMs: number;
  /**
   * How long (ms) the lease waited, from the call, before its statement went to the store (for a connection of the
   * pool): the tokens were taken after that, so their expiry counts from then (see EndpointLimiter). Default 0.
   */
  queuedMs?: number;
}

/** What {@link Store.sweep} does besides deleting. */
export interface SweepOptions {
  /** Terminal deliveries last changed this long ago or more are deleted (milliseconds). */
  terminalRetentionMs: number;
  /** Most messages and deliveries deleted by one call. */
  limit: number;
  /** Sends the contacts that lost a message to expiry their list again (see {@link Store.sweep}). Default false. */
  refreshExpired?: boolean;
}

/** What one {@link Store.sweep} call did. */
export interface SweepResult {
  /** Messages and deliveries deleted (at most the call's `limit`). */
  deleted: number;
  /** Contacts given a pending delivery by `refreshExpired` (0 without it). */
  refreshed: number;
}

export interface Store {
  /** Applies the versioned migrations (safe under concurrent starts). */
  migrate(): Promise<void>;
  close(): Promise<void>;
  /**
   * Resolves once the store has answered a trivial statement (`SELECT 1`): the readiness probe's check that calls can
   * be served (PostgreSQL: a pooled connection and a round trip, so it fails or waits while the database cannot be
   * reached). Changes nothing. With `timeoutMs`, one not answered within it fails, and (PostgreSQL) the connection it
   * waited on is closed, not given back to the pool: a connection that went dead without a reset (a partition that
   * dropped its packets, a NAT or firewall that forgot it) would otherwise hold the ping, and so the readiness, for
   * as long as TCP retransmits (up to about 15 minutes), after the database answers new connections again.
   */
  ping(timeoutMs?: number): Promise<void>;

  /**
   * Creates or replaces the account's whole configuration (an omitted `messageTtlMs` is the default,
   * 1 day; `createdAt` is kept). Secrets are stored as given and returned by reads: redacting them is
   * the API's job. `updatedAt` is `now`, or 1 ms after the previous save's when that is not earlier (two saves
   * in one millisecond, a clock stepped back): it names the save, for {@link Store.checkClaim}, the circuit's
   * 410 pause and {@link Store.replaceWebhookIfUnchanged}.
   */
  upsertWebhook(accountId: string, config: WebhookSettings, now: number): Promise<WebhookRecord>;
  /**
   * Creates the account's webhook as {@link Store.upsertWebhook} does, but only while the account has none: null,
   * changing nothing, when it has one (created by another call since the caller found none). With
   * {@link Store.replaceWebhookIfUnchanged}, the compare-and-set of a save read as "no webhook".
   */
  createWebhookIfAbsent(accountId: string, config: WebhookSettings, now: number): Promise<WebhookRecord | null>;
  /**
   * Replaces the configuration of the account's webhook as {@link Store.upsertWebhook} does, but only while it is
   * still the save read with `updatedAt` = `ifUpdatedAt`; never creates one. Null, changing nothing, when the webhook
   * was saved again or deleted since: a save or a delete answered OK between the caller's read and its write stands.
   * `now` becomes `updatedAt` as given (upsertWebhook's "later than the save before" is not applied): a caller that
   * makes a save (UpdateWebhook) passes a time later than `ifUpdatedAt`; re-sealing secrets after a key rotation
   * (SECURITY.md), which is not a save, passes `ifUpdatedAt` itself.
   */
  replaceWebhookIfUnchanged(
    accountId: string,
    config: WebhookSettings,
    now: number,
    ifUpdatedAt: number,
  ): Promise<WebhookRecord | null>;
  getWebhook(accountId: string): Promise<WebhookRecord | null>;
  /**
   * Account ids that have a webhook, ascending, after `afterAccountId` (exclusive; null from the start), at
   * most `limit` (keyset paging: pass the last id of a page to get the next). Used to re-seal every
   * webhook's secrets after a key rotation (SECURITY.md).
   */
  listWebhookAccounts(afterAccountId: string | null, limit: number): Promise<string[]>;
  /**
   * Deletes the webhook, the account's messages and all its deliveries with their attempts (finished ones too:
   * their frozen bodies hold the messages).
   */
  deleteWebhook(accountId: string): Promise<boolean>;

  /**
   * One transaction: insert the messages (ignore ids already known for the account), and make sure
   * each touched contact has a pending delivery due now; a contact's `retrying` delivery becomes
   * `superseded` by the new pending one (ARCHITECTURE §2).
   */
  publish(input: PublishInput): Promise<PublishResult>;

  /**
   * Make sure each named contact (even one without messages: its receiver then gets the empty list) or,
   * with 'all', every contact of the account with at least one message available at `now`, has a pending
   * delivery (coalesced like publish). One entry per distinct contact.
   */
  resync(
    accountId: string,
    externalCustomerIds: readonly string[] | 'all',
    now: number,
    options?: TraceOptions,
  ): Promise<PublishResult['deliveries']>;

  /**
   * Claims due deliveries of one lane (first: `pending`; retry: `retrying`) in due order, skipping
   * contacts that already have a delivery in flight and accounts whose webhook is missing, disabled or
   * excluded. Claimed rows become `in_flight` under `owner` until `now + leaseMs`.
   *
   * Before claiming, `in_flight` deliveries whose lease expired (at or before `now`) are taken back:
   * `superseded` when the contact has a newer delivery, otherwise `retrying` when their body is frozen
   * (retry lane, the same bytes again) or `pending` when it is not (first lane). A `retrying` delivery
   * whose contact has a newer delivery is superseded instead of claimed (ARCHITECTURE §2).
   */
  claimDue(options: ClaimOptions): Promise<ClaimedDelivery[]>;

  /**
   * Whether `owner` still holds its claim of the delivery, and the account's webhook as it is now: null when the
   * claim is gone (lease taken back, delivery deleted); else the webhook's `updatedAt` and `enabled`, or
   * `webhookUpdatedAt: null` when the account has no webhook any more. For a claim that waited before its attempt
   * (for a slot of its endpoint): the webhook it was claimed with may have been changed, disabled or deleted since.
   */
  checkClaim(deliveryId: string, owner: string): Promise<ClaimCheck | null>;

  /** The contact's available messages: not expired at `now`, newest first (createdDate desc, id), at most `limit`. */
  contactMessages(accountId: string, externalCustomerId: string, now: number, limit: number): Promise<StoredMessage[]>;

  /**
   * Freezes the body and message ids of a claimed delivery at its first attempt (ARCHITECTURE §1), and
   * sets `firstAttemptAt` to `now`. Returns false (and changes nothing) when `owner` no longer holds a live
   * claim at `now` (lease lost or expired), or when the body is already frozen (it never changes).
   */
  freeze(deliveryId: string, owner: string, body: Uint8Array, messageIds: string[], now: number): Promise<boolean>;

  /**
   * Records an attempt and the delivery's new state in one transaction. When `nextState` is `retrying`
   * but the contact has a newer pending delivery, the delivery becomes `superseded` instead.
   * Returns the updated delivery, or null when `owner` no longer holds the claim or the attempt number is
   * not the next one (nothing changes).
   */
  recordAttempt(deliveryId: string, result: AttemptResult): Promise<Delivery | null>;

  /**
   * Gives a claim back without an attempt (shutdown): the delivery is due again at `dueAt`, in the lane
   * it came from (`pending` when not frozen, `retrying` when frozen), or `superseded` when the contact has
   * a newer delivery. Does nothing when `owner` no longer holds the claim. Its `updatedAt` becomes `dueAt` too: that is
   * how {@link Store.advanceGivenBack} tells a delivery given back for later from a retry's backoff.
   */
  release(deliveryId: string, owner: string, dueAt: number): Promise<void>;

  /**
   * Makes the account's deliveries that claims gave back for later (`release` with a `dueAt` after `now`: its turn
   * under the webhook's rate limit, a pause after an error) due at `now`, and returns how many. A retry's backoff is
   * left as it is. Told apart by what the writes leave: a `pending` delivery due after `now` was never attempted, so a
   * release put it there; a `retrying` one was given back when its `updatedAt` is its `nextAttemptAt` (release writes
   * both), where an attempt recorded for a retry left `updatedAt` at the attempt's end, before its next one is due.
   * For a webhook whose rate limit was raised or removed: the turns worked out under the old rate are void.
   */
  advanceGivenBack(accountId: string, now: number): Promise<number>;

  getDelivery(id: string): Promise<{ delivery: Delivery; attempts: Attempt[] } | null>;
  listDeliveries(filter: DeliveryFilter, limit: number, cursor: string | null): Promise<DeliveryPage>;

  /**
   * Replays a delivery now; see ARCHITECTURE "Delivery states". Null when unknown.
   * - `failed`, `delivered` or `superseded` and still the contact's newest delivery: `retrying` due at
   *   `now` with the same id and bytes (attempt history and count kept).
   * - a newer delivery of the contact exists: the contact's pending delivery (existing or new) is what
   *   gets sent, `replacedByNewer: true`.
   * - `retrying` or `pending`: made due at `now` when it was due later (a backoff, a claim given back for later);
   *   `in_flight`: returned unchanged (already on its way).
   * A replayed delivery takes `options.traceparent` (when given) so its next attempts join the replay's trace;
   * a delivery created for the replay gets it too.
   */
  retryDelivery(id: string, now: number, options?: TraceOptions): Promise<RetryResult | null>;

  /**
   * Deletes expired messages and terminal deliveries (delivered, failed, superseded) last changed at or
   * before `now - terminalRetentionMs`, with their attempts; `deleted` says how many messages and deliveries went
   * (at most `limit`; call again while it is `limit`).
   *
   * With `refreshExpired`, in the same transaction, each contact that lost a message to expiry gets a pending
   * delivery (the existing one, or a new one due at `now` that supersedes a waiting retry, as a publish does) when
   * its account has a webhook and a list the receiver may hold held one of those messages: the newest list it answered
   * 2xx to, or one built after it (in flight, retrying, failed or superseded; all of them when none was delivered; a
   * delivery in flight whose list is not frozen yet counts as holding them), or when no list of it is left to tell.
   * The receiver, which replaces its copy with each list, then drops the expired message within a sweep interval
   * (SPEC §4: a list holds the available messages). A contact whose lists already left them out gets nothing.
   * Those contacts are `refreshed`; their deliveries count in neither `deleted` nor the limit.
   */
  sweep(now: number, options: SweepOptions): Promise<SweepResult>;

  /**
   * Publishes an outcome to every process watching this store (in process for SQLite, NOTIFY for PostgreSQL).
   * `superseded` outcomes are the store's own (see {@link DeliveryOutcome}); callers emit the others.
   */
  emitOutcome(outcome: DeliveryOutcome): Promise<void>;
  /** Subscribes to outcomes of every process; returns the unsubscribe function. */
  onOutcome(listener: (outcome: DeliveryOutcome) => void): () => void;

  /**
   * Counts for metrics and the backlog: deliveries by state, and the due time of the oldest `pending` or
   * `retrying` delivery that is due at `now` (null when none is due), leaving out the deliveries of a disabled
   * webhook (they wait by design until it is enabled: no operator can act on them); those of an account without a
   * webhook stay in (due, and no claim takes them).
   */
  stats(now: number): Promise<{ byState: Record<DeliveryState, number>; oldestDueAt: number | null }>;

  /**
   * Takes up to `want` tokens (1 to `perSecond`) from the account's rate-limit bucket shared by every process on the
   * store: a token bucket refilled at `perSecond` tokens a second up to `perSecond`, by the store's own clock (full
   * when first used). One atomic step, so processes leasing at once never take more than the bucket holds together.
   * Only engines shared by several processes have it (PostgreSQL); without it, each process's limiter keeps its own
   * bucket, which is the whole service's when there is one process (SQLite). @see EndpointLimiter
   */
  leaseRateTokens?(accountId: string, perSecond: number, want: number): Promise<RateTokenLease>;
}
