/**
 * The RPC handlers: validate the request, call the store (each write is one committed transaction before
 * the answer), wake the delivery engine when new work exists, map the result back. Errors leave through
 * {@link toServiceError} only, so every failure carries a status code, a readable message and the rich
 * details; secrets never appear in an answer, an error or a log line.
 */
import { Metadata } from '@grpc/grpc-js';
import type {
  handleServerStreamingCall,
  handleUnaryCall,
  sendUnaryData,
  ServerUnaryCall,
  ServerWritableStream,
} from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { CircuitBreaker } from '../delivery/circuit.js';
import type { Metrics } from '../observability/metrics.js';
import { currentTraceparent } from '../observability/tracing.js';
import { DEFAULT_ADDRESS_POLICY, checkUrlAtConfigTime, type AddressPolicy, type Resolver } from '../security/ssrf.js';
import { isStoreError } from '../store/errors.js';
import type { Lane, Store, WebhookRecord } from '../store/types.js';
import {
  Delivery as DeliveryMessage,
  type DeliveryServiceServer,
  type WatchDeliveriesRequest,
  type WatchDeliveriesResponse,
} from '../gen/app_inbox/v1/delivery.js';
import { ContactDelivery, type MessageServiceServer } from '../gen/app_inbox/v1/message.js';
import type { WebhookServiceServer } from '../gen/app_inbox/v1/webhook.js';
import { ApiError, invalidArgument, toApiError, toServiceError, type FieldViolation } from './errors.js';
import { deliveryToProto, outcomeToProto, webhookToProto } from './mapping.js';
import {
  checkAccountId,
  checkDeliveryId,
  parseListDeliveries,
  parsePublishMessages,
  parseResyncContacts,
  parseUpdateMask,
  parseUpdateWebhook,
  parseUpsertWebhook,
  signingRotation,
  type Result,
  type UpsertInput,
} from './requests.js';

/**
 * Encoded bytes of one ListDeliveries page at most (one delivery may be more), and of the deliveries listed by
 * ResyncContacts: under grpc-js's default 4 MiB limit on what a client receives, with room for the rest of the response.
 */
export const MAX_PAGE_BYTES = 3 * 1024 * 1024;

/**
 * The contacts' deliveries an answer lists (PublishMessages, ResyncContacts): as many as fit in MAX_PAGE_BYTES encoded.
 * All of them could exceed what a client with gRPC's default 4 MiB receive limit takes, and it would get
 * RESOURCE_EXHAUSTED for a call that was committed; the answer's count says how many there are.
 */
function listedWithin(
  deliveries: ReadonlyArray<{ externalCustomerId: string; deliveryId: string }>,
): ContactDelivery[] {
  const listed: ContactDelivery[] = [];
  let bytes = 0;
  for (const d of deliveries) {
    const entry = { externalCustomerId: d.externalCustomerId, deliveryId: d.deliveryId };
    // The entry, its field tag and its length prefix.
    bytes += ContactDelivery.encode(entry).finish().length + 4;
    if (bytes > MAX_PAGE_BYTES) break;
    listed.push(entry);
  }
  return listed;
}

export interface ApiDependencies {
  store: Store;
  /**
   * Tells the delivery engine that new work was committed (publish, resync, retry, webhook change); `lane` when
   * only that lane has new work.
   */
  wake: (lane?: Lane) => void;
  /**
   * Tells the delivery engine that a webhook was saved (`before`: the save it replaced, null for a new one), so that a
   * changed rate limit applies at once (DeliveryEngine.webhookSaved). Default: nothing is told (the engine learns the
   * rate at the account's next claim).
   */
  webhookSaved?: (before: WebhookRecord | null, after: WebhookRecord) => void;
  /** The clock (milliseconds since the epoch). */
  now: () => number;
  logger: Logger;
  /** TTL given to a webhook upserted without `default_message_ttl_seconds` (seconds). */
  defaultMessageTtlSeconds: number;
  /** How long a replaced signing secret keeps signing beside the new one (ms); 0: not at all. */
  signingSecretOverlapMs: number;
  /**
   * Outcomes a watcher may have queued, unread, before its stream is ended with RESOURCE_EXHAUSTED: a
   * stalled client must not make the server buffer without bound. Default 10,000.
   */
  watchBufferLimit?: number;
  /**
   * Message ids a watcher may have queued, unread, over its outcomes, before its stream is ended the same way: an
   * outcome carries its delivery's message ids (up to 10,000), so a count of outcomes alone let one stalled stream
   * hold gigabytes. Default 1,000,000 (about 60 MB).
   */
  watchIdLimit?: number;
  /** WatchDeliveries streams open at once; one more is RESOURCE_EXHAUSTED. Default 1,000. */
  maxWatchStreams?: number;
  /**
   * Which destinations a webhook URL may resolve to, checked when the webhook is saved (the sender checks
   * again when connecting, so DNS rebinding fails). Default: public addresses only. @see SECURITY.md
   */
  addressPolicy?: AddressPolicy;
  /** Resolver of that check. Default: the system resolver (`dns.lookup`, every address). */
  resolve?: Resolver;
  /**
   * The circuit breaker: GetWebhook, UpsertWebhook and UpdateWebhook show its view of the endpoint; a changed endpoint
   * (URL, credentials, secret, own headers, re-enabled) or a deleted webhook starts closed again. Default: none (no
   * `circuit` in the answers).
   */
  circuit?: Pick<CircuitBreaker, 'view' | 'reset' | 'resumeIfSavedSince'>;
  /**
   * The metrics: a deleted webhook's per-account series (`endpoint_failures_total`, `endpoint_circuit_state`) are
   * dropped, so that the label set follows the accounts that exist. Default: none.
   */
  metrics?: Pick<Metrics, 'forgetAccount'>;
}

/** Reads of a webhook saved again by someone else between UpdateWebhook's read and write before it answers ABORTED. */
const UPDATE_TRIES = 5;

/**
 * True when an upsert changed what the circuit judged: where and how deliveries are sent, or re-enabled
 * the webhook (how an operator resumes an endpoint after fixing it or after its 410 Gone).
 */
function endpointChanged(before: WebhookRecord | null, after: WebhookRecord): boolean {
  if (before === null) return true;
  return (
    before.url !== after.url ||
    before.auth?.username !== after.auth?.username ||
    before.auth?.password !== after.auth?.password ||
    before.signingSecret !== after.signingSecret ||
    !sameHeaders(before.headers, after.headers) ||
    (!before.enabled && after.enabled)
  );
}

/** Whether two webhooks send the same own headers (names are stored in lower case; order does not matter). */
function sameHeaders(a: Readonly<Record<string, string>> = {}, b: Readonly<Record<string, string>> = {}): boolean {
  const names = Object.keys(a);
  return names.length === Object.keys(b).length && names.every((name) => Object.hasOwn(b, name) && a[name] === b[name]);
}

export interface Api {
  webhook: WebhookServiceServer;
  message: MessageServiceServer;
  delivery: DeliveryServiceServer;
  /** Ends every open WatchDeliveries stream with OK (shutdown), and refuses new ones. */
  endWatches(): void;
  /** Open WatchDeliveries streams. */
  watchCount(): number;
}

function valid<T>(result: Result<T>): T {
  if (!result.ok) throw invalidArgument(result.violations);
  return result.value;
}

function check(violations: FieldViolation[]): void {
  if (violations.length > 0) throw invalidArgument(violations);
}

export function createApi(deps: ApiDependencies): Api {
  const { store, logger } = deps;
  const watchBufferLimit = deps.watchBufferLimit ?? 10_000;
  const watchIdLimit = deps.watchIdLimit ?? 1_000_000;
  const maxWatchStreams = deps.maxWatchStreams ?? 1_000;
  const addressPolicy = deps.addressPolicy ?? DEFAULT_ADDRESS_POLICY;
  /** Open watch streams and how to end each one with OK (send what is queued, unsubscribe, forget). */
  const watches = new Map<ServerWritableStream<WatchDeliveriesRequest, WatchDeliveriesResponse>, () => void>();
  let watchesEnded = false;

  /** Runs one unary handler: its promise's value is the answer, its rejection the (typed) error. */
  function unary<Req, Res>(method: string, fn: (request: Req) => Promise<Res>): handleUnaryCall<Req, Res> {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
      const started = performance.now();
      fn(call.request).then(
        (response) => {
          logger.debug({ method, durationMs: Math.round(performance.now() - started) }, 'rpc ok');
          callback(null, response);
        },
        (error: unknown) => {
          const apiError = toApiError(error);
          const fields = { method, code: apiError.code, durationMs: Math.round(performance.now() - started) };
          // Only the typed message is logged: it is built from field names and bounds, never from values.
          if (apiError.code === 'internal') logger.error({ ...fields, err: describeCause(error) }, 'rpc failed');
          else if (apiError.code === 'store_unavailable') {
            // The operator's problem, not the caller's: the driver's error (its host, never a password) is logged.
            logger.error({ ...fields, err: describeCause(error) }, 'rpc failed: the store cannot be reached');
          } else logger.info({ ...fields, message: apiError.message }, 'rpc refused');
          callback(toServiceError(apiError));
        },
      );
    };
  }

  /** SSRF: every address the URL's host resolves to must be allowed, before anything is stored. */
  async function checkUrl(url: string): Promise<void> {
    const verdict = await checkUrlAtConfigTime(url, addressPolicy, deps.resolve ? { resolve: deps.resolve } : {});
    if (!verdict.ok) throw invalidArgument([{ field: 'url', description: verdict.reason }]);
  }

  /** What a save of the webhook does besides the write: the circuit's view of the endpoint, and the lanes. */
  function saved(accountId: string, before: WebhookRecord | null, record: WebhookRecord): void {
    if (endpointChanged(before, record)) deps.circuit?.reset(accountId, record.updatedAt);
    // A save that changed nothing resumes an endpoint paused by its 410 Gone too: no 410 answered this save.
    else deps.circuit?.resumeIfSavedSince(accountId, record.updatedAt);
    deps.webhookSaved?.(before, record);
    // Enabling a webhook (or pointing it elsewhere) may make waiting deliveries due.
    deps.wake();
  }

  /**
   * Writes `input` over `before`, the webhook as just read (null: none yet), with the signing-secret rotation worked
   * out from it. It is written only while that read is still the webhook, or while there is still none (a save or a
   * create in between: null, read again), so a secret replaced meanwhile is never brought back, and one set meanwhile
   * keeps signing beside this save's (a write without that check would drop it at once). The webhook as written, and
   * the time of the write.
   */
  async function writeWebhook(
    accountId: string,
    before: WebhookRecord | null,
    input: UpsertInput,
  ): Promise<{ record: WebhookRecord; now: number } | null> {
    const now = deps.now();
    const rotation = signingRotation(before, input.config.signingSecret, now, deps.signingSecretOverlapMs);
    const settings = { ...input.config, messageTtlMs: input.messageTtlMs, ...rotation };
    const record =
      before === null
        ? await store.createWebhookIfAbsent(accountId, settings, now)
        : await store.replaceWebhookIfUnchanged(
            accountId,
            settings,
            Math.max(now, before.updatedAt + 1),
            before.updatedAt,
          );
    if (record === null) return null;
    saved(accountId, before, record);
    return { record, now };
  }

  /** ABORTED: the webhook was saved by others between each of {@link UPDATE_TRIES} reads and writes. */
  const keptBeingSaved = (accountId: string) =>
    new ApiError('conflict', `the webhook of account ${JSON.stringify(accountId)} kept being saved: try again`);

  const webhook: WebhookServiceServer = {
    upsertWebhook: unary('UpsertWebhook', async (request) => {
      const input = valid(parseUpsertWebhook(request, deps.defaultMessageTtlSeconds));
      const { accountId } = input;
      await checkUrl(input.config.url);
      for (let tries = 0; tries < UPDATE_TRIES; tries++) {
        const before = await store.getWebhook(accountId);
        const written = await writeWebhook(accountId, before, input);
        if (written !== null) {
          const { record, now } = written;
          return { webhook: webhookToProto(record, deps.circuit?.view(accountId, now), now), created: before === null };
        }
      }
      throw keptBeingSaved(accountId);
    }),
    updateWebhook: unary('UpdateWebhook', async (request) => {
      const { accountId, fields } = valid(parseUpdateMask(request));
      for (let tries = 0; tries < UPDATE_TRIES; tries++) {
        const before = await store.getWebhook(accountId);
        if (before === null)
          throw new ApiError('webhook_not_found', `account ${JSON.stringify(accountId)} has no webhook`);
        if (before.secretsSealed === true) {
          const resend = [
            ...(before.auth !== undefined && !fields.includes('basic_auth') ? ['basic_auth'] : []),
            ...(before.signingSecret !== undefined && !fields.includes('signing_secret') ? ['signing_secret'] : []),
            ...(Object.keys(before.headers ?? {}).length > 0 && !fields.includes('headers') ? ['headers'] : []),
          ];
          if (resend.length > 0) {
            throw new ApiError(
              'webhook_secret_unreadable',
              `the stored secrets of account ${JSON.stringify(accountId)} cannot be opened (their key is gone): ` +
                `name ${resend.join(' and ')} in update_mask and send ${resend.length === 1 ? 'it' : 'them'} again`,
            );
          }
        }
        const input = valid(parseUpdateWebhook(request, fields, before, deps.defaultMessageTtlSeconds));
        // Only a URL that changes is resolved: disabling a webhook must not depend on its host's DNS answering.
        if (fields.includes('url')) await checkUrl(input.config.url);
        // Written only while the webhook is still the save read above; a save or delete in between: read again.
        const written = await writeWebhook(accountId, before, input);
        if (written !== null) {
          const { record, now } = written;
          return { webhook: webhookToProto(record, deps.circuit?.view(accountId, now), now) };
        }
      }
      throw keptBeingSaved(accountId);
    }),
    getWebhook: unary('GetWebhook', async (request) => {
      check(checkAccountId(request.accountId));
      const record = await store.getWebhook(request.accountId);
      if (record === null)
        throw new ApiError('webhook_not_found', `account ${JSON.stringify(request.accountId)} has no webhook`);
      const now = deps.now();
      return { webhook: webhookToProto(record, deps.circuit?.view(request.accountId, now), now) };
    }),
    deleteWebhook: unary('DeleteWebhook', async (request) => {
      check(checkAccountId(request.accountId));
      if (!(await store.deleteWebhook(request.accountId))) {
        throw new ApiError('webhook_not_found', `account ${JSON.stringify(request.accountId)} has no webhook`);
      }
      deps.circuit?.reset(request.accountId);
      // After the reset, which sets an open circuit's series to closed: both series go.
      deps.metrics?.forgetAccount(request.accountId);
      return {};
    }),
  };

  const message: MessageServiceServer = {
    publishMessages: unary('PublishMessages', async (request) => {
      const now = deps.now();
      // The request is checked whole before the account is looked up: a bad request is INVALID_ARGUMENT
      // whatever the state of the account.
      const input = valid(parsePublishMessages(request, now));
      const hook = await store.getWebhook(input.accountId);
      if (hook === null) {
        throw new ApiError(
          'webhook_not_configured',
          `account ${JSON.stringify(input.accountId)} has no webhook: configure it with UpsertWebhook before publishing`,
        );
      }
      const messages = input.messages.map((m) => ({ ...m, expiresAt: m.expiresAt ?? now + hook.messageTtlMs }));
      const result =
        messages.length === 0
          ? { inserted: 0, duplicates: 0, deliveries: [] }
          : // The RPC's span (tracing on) is stored on the deliveries: their attempts' spans become its children.
            // requireWebhook: a DeleteWebhook committed since the lookup above leaves nothing of this call behind.
            await store.publish({
              accountId: input.accountId,
              messages,
              now,
              traceparent: currentTraceparent(),
              requireWebhook: true,
            });
      // New or coalesced pending deliveries: first-lane work only.
      if (result.deliveries.length > 0) deps.wake('first');
      return {
        accepted: result.inserted,
        duplicates: result.duplicates,
        skippedWithoutExternalCustomerId: input.skippedIndices.length,
        skippedIndices: input.skippedIndices,
        // 10,000 contacts with ids of 256 non-ASCII characters are about 8 MB of entries: see listedWithin.
        deliveries: listedWithin(result.deliveries),
        scheduledContacts: result.deliveries.length,
      };
    }),
    resyncContacts: unary('ResyncContacts', async (request) => {
      const input = valid(parseResyncContacts(request));
      if ((await store.getWebhook(input.accountId)) === null) {
        throw new ApiError('webhook_not_configured', `account ${JSON.stringify(input.accountId)} has no webhook`);
      }
      const deliveries = await store.resync(input.accountId, input.contacts, deps.now(), {
        traceparent: currentTraceparent(),
      });
      if (deliveries.length > 0) deps.wake('first');
      // `all` schedules every contact of the account: one entry each could exceed what a client with gRPC's default
      // 4 MiB receive limit takes (about 85,000 short contact ids); see listedWithin.
      return { deliveries: listedWithin(deliveries), scheduledContacts: deliveries.length };
    }),
  };

  const watchDeliveries: handleServerStreamingCall<WatchDeliveriesRequest, WatchDeliveriesResponse> = (call) => {
    const accountId = call.request.accountId;
    const violations = accountId === '' ? [] : checkAccountId(accountId);
    if (violations.length > 0 || watchesEnded) {
      const error =
        violations.length > 0
          ? invalidArgument(violations)
          : new ApiError('shutting_down', 'the server is shutting down');
      call.emit('error', toServiceError(error));
      return;
    }
    if (watches.size >= maxWatchStreams) {
      // Every stream is told every outcome: an unbounded number of them would cost every delivery without bound.
      logger.warn({ method: 'WatchDeliveries', open: watches.size }, 'watch refused: too many streams open');
      const refused = new ApiError(
        'too_many_watches',
        `${watches.size} WatchDeliveries streams are open, the most this server keeps (--max-watch-streams); close one, or filter one stream by account and share it`,
      );
      call.emit('error', toServiceError(refused));
      return;
    }
    let done = false;
    // Outcomes wait here, not in the stream's own buffer, which is only fed while it has room (its high-water mark,
    // a few outcomes): the stream buffer cannot be emptied, and a cut stream whose client never reads would have kept
    // every outcome queued in it while its slot went to the next stream.
    let queue: WatchDeliveriesResponse[] = [];
    /** Message ids of the outcomes in `queue`. */
    let queuedIds = 0;
    function pump(): void {
      while (!call.writableNeedDrain) {
        const next = queue.shift();
        if (next === undefined) return;
        queuedIds -= next.messageIds.length;
        call.write(next);
      }
    }
    const unsubscribe = store.onOutcome((outcome) => {
      if (done || (accountId !== '' && outcome.accountId !== accountId)) return;
      const buffered = queue.length + call.writableLength;
      if (buffered >= watchBufferLimit || queuedIds + outcome.messageIds.length > watchIdLimit) {
        finish();
        logger.warn({ method: 'WatchDeliveries', buffered, queuedIds }, 'watcher too slow; stream ended');
        const cut = new ApiError(
          'watcher_too_slow',
          `the watcher read too slowly: more than ${watchBufferLimit.toLocaleString('en-US')} outcomes (or ${watchIdLimit.toLocaleString('en-US')} message ids) were waiting; reconnect and use ListDeliveries to catch up`,
        );
        call.emit('error', toServiceError(cut));
        return;
      }
      queue.push(outcomeToProto(outcome));
      queuedIds += outcome.messageIds.length;
      pump();
    });
    function finish(): void {
      if (done) return;
      done = true;
      queue = [];
      queuedIds = 0;
      unsubscribe();
      watches.delete(call);
      call.off('drain', pump);
    }
    watches.set(call, () => {
      // Shutdown: what is queued goes out before the stream's OK.
      for (const response of queue) call.write(response);
      finish();
      call.end();
    });
    // Headers now, not with the first outcome: the caller learns that its watch is in place.
    call.sendMetadata(new Metadata());
    call.on('drain', pump);
    call.on('cancelled', finish);
    call.on('close', finish);
    call.on('error', finish);
    logger.debug({ method: 'WatchDeliveries', accountId }, 'watch started');
  };

  const delivery: DeliveryServiceServer = {
    getDelivery: unary('GetDelivery', async (request) => {
      check(checkDeliveryId(request.deliveryId));
      const found = await store.getDelivery(request.deliveryId);
      if (found === null) throw new ApiError('delivery_not_found', `no delivery ${JSON.stringify(request.deliveryId)}`);
      return { delivery: deliveryToProto(found.delivery, found.attempts, request.includeBody) };
    }),
    listDeliveries: unary('ListDeliveries', async (request) => {
      const input = valid(parseListDeliveries(request));
      // page_size counts deliveries, but a delivery carries its message ids (up to 10,000 of them, ~380 KB): a page
      // is cut to what fits in MAX_PAGE_BYTES, so that a client with gRPC's default 4 MiB receive limit can read
      // every page (twelve such deliveries were RESOURCE_EXHAUSTED, with no token to go on). The store is asked
      // again for the shorter page, which gives its token; each round is shorter, at least one delivery a page.
      for (let limit = input.pageSize; ;) {
        const page = await store.listDeliveries(input.filter, limit, input.cursor).catch((error: unknown) => {
          // The only argument the caller controls that the store can reject is the cursor.
          if (isStoreError(error, 'invalid_argument')) {
            throw invalidArgument([
              { field: 'page_token', description: 'is not a token from a previous page of this listing' },
            ]);
          }
          throw error;
        });
        const deliveries = [];
        let bytes = 0;
        for (const d of page.deliveries) {
          const full = await store.getDelivery(d.id);
          const proto = deliveryToProto(d, full?.attempts ?? [], false);
          bytes += DeliveryMessage.encode(proto).finish().length;
          if (deliveries.length > 0 && bytes > MAX_PAGE_BYTES) break;
          deliveries.push(proto);
        }
        if (deliveries.length === page.deliveries.length) return { deliveries, nextPageToken: page.nextCursor ?? '' };
        limit = deliveries.length;
      }
    }),
    retryDelivery: unary('RetryDelivery', async (request) => {
      check(checkDeliveryId(request.deliveryId));
      // The store decides what a replay means in each state (ARCHITECTURE "Delivery states"): the same id
      // and bytes while the delivery is the contact's newest, else the contact's newer state.
      const result = await store.retryDelivery(request.deliveryId, deps.now(), {
        traceparent: currentTraceparent(),
      });
      if (result === null)
        throw new ApiError('delivery_not_found', `no delivery ${JSON.stringify(request.deliveryId)}`);
      deps.wake();
      const attempts = (await store.getDelivery(result.delivery.id))?.attempts ?? [];
      return { delivery: deliveryToProto(result.delivery, attempts, false), replacedByNewer: result.replacedByNewer };
    }),
    watchDeliveries,
  };

  return {
    webhook,
    message,
    delivery,
    endWatches() {
      watchesEnded = true;
      for (const end of [...watches.values()]) end();
    },
    watchCount: () => watches.size,
  };
}

/** An unexpected error for the log: its class, code and message (store/driver messages name no secret). */
function describeCause(error: unknown): Record<string, unknown> {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return { type: error.name, message: error.message, ...(code === undefined ? {} : { code }), stack: error.stack };
  }
  return { type: typeof error };
}
