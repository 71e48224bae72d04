/**
 * The delivery scheduler: claims due deliveries from the store (the store is the queue), sends them with
 * the sender, classifies the answer with the core rules and records the attempt.
 *
 * - Two lanes, each its own loop and concurrency budget: `first` (pending deliveries, never sent) and
 *   `retry` (retrying ones, and claims whose lease expired). A retry backlog cannot delay first attempts.
 * - A per-endpoint limiter (keyed by account: an account has one webhook) bounds attempts in flight per
 *   endpoint; saturated accounts are excluded from claims, so one slow endpoint cannot take every slot.
 * - A delivery is immutable once sent: its body is built and frozen at the first attempt, and every retry
 *   resends the same bytes with the same id (ARCHITECTURE §1).
 * - A contact whose messages have all expired (or a resync of a contact without messages) is sent the empty
 *   list `[]`, not skipped: the receiver replaces what it stored for the contact (SPEC §4), so the expired
 *   messages disappear there too.
 * - The limiter counts attempts in flight per account, and so bounds each account's connections: the sender
 *   has no cap per origin, so accounts whose webhooks share a host do not share a connection budget (one that
 *   hangs cannot make the others wait for a connection and time out).
 * - Bodies in memory are bounded by bytes, not only by count (`maxBodyBytesInMemory`): a list of 1,000 messages of
 *   the largest size is a body near 100 MB, and the concurrency alone let a few such contacts take gigabytes.
 * @see SPEC §4, §5; ARCHITECTURE "Decisions" §1-§4
 */
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { hostname } from 'node:os';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { SpanKind, type Span, type Tracer } from '@opentelemetry/api';
import { pino, type Logger } from 'pino';
import {
  DEFAULT_BACKOFF,
  buildPayload,
  buildRequestHeaders,
  classify,
  decideRetry,
  validateBackoffOptions,
  type BackoffOptions,
  type Classification,
  type StoredMessage,
} from '@app-inbox/core';
import type { AttemptEvent, AttemptOutcomeLabel } from '../observability/attempt.js';
import { logAttempt } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { SPAN_ATTRIBUTES, annotateAttemptSpan, withLinkedSpan } from '../observability/tracing.js';
import type { AttemptResult, ClaimedDelivery, Delivery, Lane, Store, WebhookRecord } from '../store/types.js';
import { replacedSigningSecretAt } from '../store/shared.js';
import { EndpointLimiter } from './limiter.js';
import { createSender, type Sender } from './sender.js';
import { within } from '../within.js';

/** Options of the {@link DeliveryEngine}. */
export interface EngineOptions {
  /**
   * Whole-request timeout of one attempt (milliseconds). Default 15,000, or the injected sender's.
   * @see SPEC §5 (a timeout is retried)
   */
  requestTimeoutMs: number;
  /**
   * How long a claim is held before another worker may take it (milliseconds). Must be longer than
   * `requestTimeoutMs` so a live attempt never loses its claim. Default `requestTimeoutMs + 30,000`.
   */
  leaseMs: number;
  /** Idle wait between two claims when nothing was due and no `wake()` came (milliseconds). Default 200. */
  pollIntervalMs: number;
  /** First attempts (pending deliveries) in progress at once. Default 64. */
  firstLaneConcurrency: number;
  /** Retries in progress at once; separate from the first lane's budget. Default 32. */
  retryLaneConcurrency: number;
  /** Attempts in flight at once per endpoint (account), over both lanes. Default 16. */
  perEndpointConcurrency: number;
  /**
   * An attempt running longer than this stops counting against its lane's concurrency (it still counts against
   * its endpoint's), so that endpoints that hang cannot hold every slot of a lane until their requests time out:
   * with 64 slots and 16 per endpoint, four would. A lane has at most {@link SLOW_LANE_FACTOR} times its
   * concurrency attempts in flight, slow ones included (milliseconds). Default 2,000.
   */
  slowAttemptMs: number;
  /** At most this many deliveries claimed by one `claimDue` call. Default 64. */
  claimBatch: number;
  /** Response bytes read per attempt; the rest is discarded (bytes). Default 65,536. */
  maxResponseBytes: number;
  /** Retry spacing and limits (core). Default `DEFAULT_BACKOFF` (1 s doubling to 1 h, 20 attempts, 24 h). */
  backoff: BackoffOptions;
  /** Name of this worker on its claims. Default `hostname:pid:random`. */
  owner: string;
  /** Wait after a store error in the claim loop before claiming again (milliseconds). Default 1,000. */
  errorDelayMs: number;
  /**
   * Claimed deliveries allowed to wait for a slot of their endpoint (claims of one account can outnumber
   * its free slots); beyond it they are given back to the store at once. Default
   * `firstLaneConcurrency + retryLaneConcurrency`.
   */
  maxWaiting: number;
  /**
   * Bytes of request bodies the attempts under way, and the claims of retries waiting for a slot of their endpoint,
   * may hold (bytes). Past it, no first attempt starts to build its body and nothing is claimed until attempts end; a
   * claim of retries brings frozen bodies up to the room left (the store's `maxBodyBytes`). One attempt is always let
   * through, however large its body. At most {@link BUILDS_AT_ONCE} bodies are built at a time. Default 268,435,456
   * (256 MiB).
   */
  maxBodyBytesInMemory: number;
}

/** What the engine tells the endpoint-health hook after each recorded attempt. */
export interface EndpointAttemptEvent {
  accountId: string;
  deliveryId: string;
  classification: Classification;
  statusCode: number | null;
  errorKind: string | null;
  durationMs: number;
  at: number;
  /** `updatedAt` of the webhook the attempt was sent with (as claimed): which save of it the result judges. */
  webhookUpdatedAt?: number;
}

/**
 * The seam for circuit breaking (issue 7, `CircuitBreaker` in circuit.ts): it sees every attempt's result
 * and may pause endpoints, whose accounts are then excluded from claims until it lets them through again.
 */
export interface EndpointHealth {
  /** Accounts whose endpoint must not be attempted at `now` (e.g. an open circuit). */
  pausedAccounts(now: number): Iterable<string>;
  /** Called after every recorded attempt. */
  onAttempt(event: EndpointAttemptEvent): void;
  /**
   * Asked right before a claimed delivery is attempted (after it got its endpoint slot): false gives the
   * claim back to the store without an attempt (due again at once; its account is paused meanwhile). It lets
   * exactly one probe through a half-open circuit even when a claim returned several deliveries of the
   * account, and stops claims taken just before the circuit opened. Default: always true.
   */
  admit?(accountId: string, now: number): boolean;
  /**
   * Until when the endpoint is held at `now` (a `Retry-After` of another attempt), or null: asked again right before
   * the request of a claim `admit` let through, as that claim may have waited since (its build turn, the freeze, a
   * store check), and when `admit` refuses one. A held claim is given back without an attempt, due when the hold ends,
   * so that no other process (PostgreSQL; holds are per process) takes it in the meantime and collects a 429 of its
   * own. No side effect on the circuit. Default: never held.
   */
  heldUntil?(accountId: string, now: number): number | null;
}

/** No circuit breaking: nothing is ever paused. */
export const NO_ENDPOINT_HEALTH: EndpointHealth = Object.freeze({
  pausedAccounts: () => [],
  onAttempt: () => undefined,
});

export interface DeliveryEngineDeps {
  store: Store;
  /** Default: a sender built from the options; the engine then closes it on `stop()`. An injected one is not closed. */
  sender?: Sender;
  /** Default: a silent logger. */
  logger?: Logger;
  /** Milliseconds since the epoch. Default `Date.now`. */
  clock?: () => number;
  /** Numbers in [0, 1) for backoff jitter. Default `Math.random`. */
  random?: () => number;
  /** Default {@link NO_ENDPOINT_HEALTH}. */
  health?: EndpointHealth;
  /** Counts every recorded attempt (`deliveries_total`, the latency histogram, endpoint failures). Default none. */
  metrics?: Pick<Metrics, 'recordAttempt'>;
  /**
   * Starts one CLIENT span per attempt, a child of the delivery's stored `traceparent` (the RPC that created
   * it), so a trace runs from the accepting RPC to every attempt. Default none (no spans). @see issue 8
   */
  tracer?: Tracer;
  options?: Partial<EngineOptions>;
}

/** Error thrown for an invalid engine option. */
export class EngineOptionError extends Error {
  readonly code = 'INVALID_ENGINE_OPTION';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`delivery option ${option}: ${message}`);
    this.name = 'EngineOptionError';
  }
}

function defaultOwner(): string {
  return `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
}

/** Fills in the defaults and validates; throws {@link EngineOptionError} naming the first bad option. */
export function resolveEngineOptions(partial: Partial<EngineOptions> = {}, senderTimeoutMs?: number): EngineOptions {
  const requestTimeoutMs = partial.requestTimeoutMs ?? senderTimeoutMs ?? 15_000;
  const firstLaneConcurrency = partial.firstLaneConcurrency ?? 64;
  const retryLaneConcurrency = partial.retryLaneConcurrency ?? 32;
  const options: EngineOptions = {
    requestTimeoutMs,
    leaseMs: partial.leaseMs ?? requestTimeoutMs + 30_000,
    pollIntervalMs: partial.pollIntervalMs ?? 200,
    firstLaneConcurrency,
    retryLaneConcurrency,
    perEndpointConcurrency: partial.perEndpointConcurrency ?? 16,
    slowAttemptMs: partial.slowAttemptMs ?? 2_000,
    claimBatch: partial.claimBatch ?? 64,
    maxResponseBytes: partial.maxResponseBytes ?? 65_536,
    backoff: partial.backoff ?? { ...DEFAULT_BACKOFF },
    owner: partial.owner ?? defaultOwner(),
    errorDelayMs: partial.errorDelayMs ?? 1_000,
    maxWaiting: partial.maxWaiting ?? firstLaneConcurrency + retryLaneConcurrency,
    maxBodyBytesInMemory: partial.maxBodyBytesInMemory ?? 256 * 1024 * 1024,
  };
  const positive = [
    'requestTimeoutMs',
    'leaseMs',
    'pollIntervalMs',
    'firstLaneConcurrency',
    'retryLaneConcurrency',
    'perEndpointConcurrency',
    'slowAttemptMs',
    'claimBatch',
    'maxResponseBytes',
    'errorDelayMs',
    'maxBodyBytesInMemory',
  ] as const;
  for (const name of positive) {
    const v = options[name];
    if (!Number.isSafeInteger(v) || v <= 0)
      throw new EngineOptionError(name, `must be a positive integer, got ${String(v)}`);
  }
  if (!Number.isSafeInteger(options.maxWaiting) || options.maxWaiting < 0) {
    throw new EngineOptionError('maxWaiting', `must be a non-negative integer, got ${String(options.maxWaiting)}`);
  }
  if (options.leaseMs <= options.requestTimeoutMs) {
    throw new EngineOptionError(
      'leaseMs',
      `must be greater than requestTimeoutMs (${options.requestTimeoutMs}), got ${options.leaseMs}: a claim must outlive its request`,
    );
  }
  if (senderTimeoutMs !== undefined && options.requestTimeoutMs !== senderTimeoutMs) {
    throw new EngineOptionError(
      'requestTimeoutMs',
      `is ${options.requestTimeoutMs} but the injected sender times out after ${senderTimeoutMs}`,
    );
  }
  if (typeof options.owner !== 'string' || options.owner.trim() === '') {
    throw new EngineOptionError('owner', 'must be a non-empty string');
  }
  const violation = validateBackoffOptions(options.backoff, 'backoff')[0];
  if (violation) throw new EngineOptionError(violation.field, violation.description);
  return options;
}

/**
 * A claim and the owner it is held under: the process's owner plus `seq`, the number of the claimDue call, so that
 * each claim of a delivery has its own. A process that claims a delivery again after its own lease on it ran out
 * (its event loop stalled, its wall clock stepped forward) holds a new claim, and an attempt of the old one cannot
 * record or release under it (the store compares owners), unless the new claim was handed to it: see
 * {@link DeliveryEngine.#handOver}. `owner` and `leaseUntil` are read at each use, never kept from before.
 */
type Held = ClaimedDelivery & { owner: string; seq: number; handedOver: boolean };

/**
 * A claim that waited this long for a slot of its endpoint is checked against the store before it is sent (see
 * {@link DeliveryEngine.#stillCurrent}). Shorter waits are the common case of a busy endpoint (a claim returns up
 * to `perEndpointConcurrency` deliveries of an account that has one slot free) and add no more to the race with a
 * DeleteWebhook or a disable than the claim itself: checking each cost a store read per delivery (issue 6).
 */
const CHECK_AFTER_WAIT_MS = 250;

/**
 * First attempts building their body at the same time. A build holds the contact's messages, the JSON text and
 * the bytes at once (four to six times the body when the text is not Latin-1): one at a time keeps that bounded when
 * lists are large, and costs nothing when they are small (a build is one store read and synchronous work, which the
 * one thread does one at a time anyway).
 */
export const BUILDS_AT_ONCE = 1;

/**
 * A first attempt's turn to build its body (see {@link BUILDS_AT_ONCE}): `take` waits for it ('late' when that took
 * {@link CHECK_AFTER_WAIT_MS} or longer, 'stopping' when stop() began first), `built` ends it (idempotent).
 */
interface BuildTurn {
  take(): 'now' | Promise<'now' | 'late' | 'stopping'>;
  built(): void;
}

/** A first attempt's body, built, and the ids of the messages in it. */
interface Built {
  body: Uint8Array;
  messageIds: string[];
}

/** A lane has at most this many times its concurrency attempts in flight, slow ones included (see `slowAttemptMs`). */
export const SLOW_LANE_FACTOR = 4;

/**
 * After the stop deadline, how long `stop()` waits at most for the attempts it aborted to give their claims back
 * and for the other store calls on their way (milliseconds): see {@link DeliveryEngine.stop}.
 */
export const STOP_GIVE_BACK_MS = 1_000;

/** Due times of recorded retries are grouped in buckets of this many milliseconds for the retry lane's timer. */
const RETRY_BUCKET_MS = 5;
/** Retries due further ahead than this (milliseconds) are left to the retry lane's poll. */
const RETRY_HORIZON_MS = 5_000;

/** A wake-up flag: `wait` ends at its timeout or at the next `notify`, and a notify while nobody waits is kept. */
class Wakeup {
  #pending = false;
  #resolve: (() => void) | null = null;
  #timer: NodeJS.Timeout | null = null;

  notify(): void {
    const resolve = this.#resolve;
    if (resolve) {
      this.#clear();
      resolve();
    } else {
      this.#pending = true;
    }
  }

  wait(ms: number): Promise<void> {
    if (this.#pending) {
      this.#pending = false;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      this.#resolve = resolve;
      this.#timer = setTimeout(() => {
        this.#clear();
        resolve();
      }, ms);
      // The engine alone should not keep a process alive (the gRPC server does).
      this.#timer.unref();
    });
  }

  #clear(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#resolve = null;
  }
}

interface LaneState {
  name: Lane;
  concurrency: number;
  /** Claims of this lane holding an endpoint slot (preparing, sending or recording) for less than `slowAttemptMs`. */
  busy: number;
  /** Attempts of this lane running for longer than `slowAttemptMs`: not counted in `busy`. */
  slow: number;
  wakeup: Wakeup;
  /**
   * Whether the lane's last claim may have left due work behind for want of a slot (the lane was full, it
   * claimed its whole limit, or accounts were excluded as saturated or paused): then a slot given back by either
   * lane wakes it. A lane whose last claim found all it could is woken by new work (`wake`) and its poll only.
   */
  constrained: boolean;
  /** A claim of this lane is on its way: a slot given back meanwhile may be one it excluded, so it is told. */
  claiming: boolean;
}

/** Activity counters, for metrics and tests. */
export interface EngineActivity {
  firstLaneBusy: number;
  retryLaneBusy: number;
  /** Claimed deliveries waiting for a slot of their endpoint. */
  waiting: number;
  /** Attempts whose request is being sent right now. */
  sending: number;
  /** Attempts of both lanes running for longer than `slowAttemptMs` (not counted as busy). */
  slow: number;
}

const utf8 = (s: string): Uint8Array => Buffer.from(s, 'utf8');

export class DeliveryEngine {
  readonly options: EngineOptions;
  readonly #store: Store;
  readonly #sender: Sender;
  readonly #ownsSender: boolean;
  readonly #log: Logger;
  readonly #clock: () => number;
  readonly #random: () => number;
  readonly #health: EndpointHealth;
  readonly #metrics: Pick<Metrics, 'recordAttempt'> | null;
  readonly #tracer: Tracer | null;
  readonly #limiter: EndpointLimiter;
  /**
   * Lease a claim must have left beside its request to start it (see {@link DeliveryEngine.#mayStart}): half of what
   * the lease leaves beside the request, at most 5 s.
   */
  readonly #startMarginMs: number;
  /**
   * Longest a claim waits for its turn under a webhook's rate limit: half of what its lease leaves beside the
   * request and the start margin, so that it still passes #mayStart (the other half is for the claim's own store
   * call and a late timer) and sends and records within the lease. A claim whose turn is further off is given back,
   * due at its turn.
   */
  readonly #maxTokenWaitMs: number;
  /**
   * Saves of webhooks that this process's API made (see {@link DeliveryEngine.webhookSaved}), by account: the save's
   * `updatedAt`, and when it was told (performance.now()). Kept for a lease (no claim read before a save outlives it),
   * oldest first.
   */
  readonly #saves = new Map<string, { updatedAt: number; at: number }>();
  /** Due times of retries this process recorded, in buckets (see {@link DeliveryEngine.#wakeRetryLaneAt}). */
  readonly #retryDue = new Set<number>();
  #retryTimer: NodeJS.Timeout | null = null;
  #retryTimerAt = Infinity;
  readonly #lanes: readonly [LaneState, LaneState];
  /** Aborted when stop() begins: ends waits for endpoint slots and the error back-off sleeps. */
  readonly #stopping = new AbortController();
  /** One controller per attempt that may send; aborted when the stop deadline passes. */
  readonly #attempts = new Set<AbortController>();
  readonly #tasks = new Set<Promise<void>>();
  /**
   * Each attempt under way in this process, by delivery id, in the order they began: its claim (see
   * {@link DeliveryEngine.#handOver}), its lane, when it began (performance.now()) and whether it counts as slow yet
   * (see {@link DeliveryEngine.#markSlowAttempts}).
   */
  readonly #underway = new Map<
    string,
    { claim: Held; lane: LaneState; startedAt: number; slow: boolean; bodyBytes: number }
  >();
  /** Bytes of the bodies of the attempts under way (frozen ones as claimed, new ones once built). */
  #bodyBytes = 0;
  /**
   * Bytes of the frozen bodies of claims waiting for a slot of their endpoint ({@link DeliveryEngine.#waitForSlot}):
   * held already, so counted against `maxBodyBytesInMemory` with those of the attempts under way.
   */
  #waitingBodyBytes = 0;
  /**
   * Bytes set aside for the bodies being built, not yet counted: the size of the last body built, for each build under
   * way. A claim of retries made during a build sees them, so it cannot take the room the build is about to fill.
   */
  #buildReserved = 0;
  /** Size of the last body built (bytes): what the next build sets aside. */
  #lastBuiltBytes = 0;
  /** First attempts building their body now (see {@link BUILDS_AT_ONCE}), and those waiting for their turn. */
  #building = 0;
  readonly #buildWaiters: Array<(granted: boolean) => void> = [];
  #slowSweep: NodeJS.Timeout | null = null;
  #claimSeq = 0;
  #loops: Promise<void>[] = [];
  #started = false;
  #stopPromise: Promise<void> | null = null;
  #sending = 0;

  constructor(deps: DeliveryEngineDeps) {
    this.options = resolveEngineOptions(deps.options, deps.sender?.requestTimeoutMs);
    this.#store = deps.store;
    this.#ownsSender = deps.sender === undefined;
    this.#sender =
      deps.sender ??
      createSender({
        requestTimeoutMs: this.options.requestTimeoutMs,
        maxResponseBytes: this.options.maxResponseBytes,
      });
    this.#log = deps.logger ?? pino({ enabled: false });
    this.#clock = deps.clock ?? Date.now;
    this.#random = deps.random ?? Math.random;
    this.#health = deps.health ?? NO_ENDPOINT_HEALTH;
    this.#metrics = deps.metrics ?? null;
    this.#tracer = deps.tracer ?? null;
    const besideRequest = this.options.leaseMs - this.options.requestTimeoutMs;
    this.#startMarginMs = Math.min(5_000, Math.floor(besideRequest / 2));
    this.#maxTokenWaitMs = Math.floor((besideRequest - this.#startMarginMs) / 2);
    // An endpoint left out of claims for want of a rate-limit token is claimable again with its next one. A store
    // shared by several processes (PostgreSQL) keeps the rate-limit buckets, so that a webhook's rate holds across
    // all of them: the limiter leases its tokens from there (see EndpointLimiter for the bound this gives).
    const store = deps.store;
    this.#limiter = new EndpointLimiter(this.options.perEndpointConcurrency, {
      onReady: () => this.wake(),
      ...(typeof store.leaseRateTokens === 'function'
        ? {
            tokenSource: { lease: (key, perSecond, want) => store.leaseRateTokens!(key, perSecond, want) },
            onLeaseError: (accountId, err) => {
              // Once per streak of failures (the limiter's rule); a store closed by stop() is no news.
              if (this.#stopping.signal.aborted) return;
              this.#log.warn(
                { err, accountId },
                'leasing rate-limit tokens from the store failed: rate-limited endpoints wait, and leases are tried again',
              );
            },
          }
        : {}),
    });
    // Every claim waiting for its endpoint's slot listens for stop() (removed once granted), up to
    // `maxWaiting` of them, and so does every attempt waiting for its turn to build (#startBuild), up to all those
    // of the lanes (SLOW_LANE_FACTOR times their concurrency), plus the two lanes' idle sleeps: a bounded number,
    // not a leak, so the limit is raised to that bound (with headroom) instead of Node's default of 10, which warned
    // MaxListenersExceededWarning under load; a real leak beyond it still warns.
    const lanes = this.options.firstLaneConcurrency + this.options.retryLaneConcurrency;
    setMaxListeners(this.options.maxWaiting + SLOW_LANE_FACTOR * lanes + 10, this.#stopping.signal);
    const lane = (name: Lane, concurrency: number): LaneState => ({
      name,
      concurrency,
      busy: 0,
      slow: 0,
      wakeup: new Wakeup(),
      constrained: false,
      claiming: false,
    });
    this.#lanes = [lane('first', this.options.firstLaneConcurrency), lane('retry', this.options.retryLaneConcurrency)];
  }

  /** Starts both lanes. Idempotent; throws after `stop()`. */
  start(): void {
    if (this.#stopPromise) throw new Error('the delivery engine was stopped; create a new one');
    if (this.#started) return;
    this.#started = true;
    this.#loops = this.#lanes.map((lane) => this.#runLane(lane));
    // One sweep for every attempt rather than a timer each: an attempt turns slow within a quarter of slowAttemptMs.
    this.#slowSweep = setInterval(
      () => this.#markSlowAttempts(),
      Math.max(5, Math.floor(this.options.slowAttemptMs / 4)),
    );
    this.#slowSweep.unref();
    this.#log.info({ owner: this.options.owner }, 'delivery engine started');
  }

  /**
   * Claims again at once instead of at the next poll: the API calls it after a publish, resync or retry so
   * that first attempts go out immediately. `lane`: only that lane has new work (a publish makes pending
   * deliveries only, so it wakes the first lane: waking the retry lane too cost an empty claim, a store
   * statement, per publish). Without it, both lanes.
   */
  wake(lane?: Lane): void {
    for (const l of this.#lanes) if (lane === undefined || l.name === lane) l.wakeup.notify();
  }

  /**
   * The API of this process saved the account's webhook (`before`: the save it replaced, null for a new one). A changed
   * rate limit applies at once, not from the account's next claim: the claims waiting here for their endpoint, and
   * those read before the save that come after it, are given back due now (not sent as read, nor holding a token of the
   * new rate), to be claimed again with the webhook as saved; when the rate was raised or removed, the deliveries that
   * claims of any process gave back to the store for their turn under the old rate are made due now too
   * (`Store.advanceGivenBack`). Other processes on the store (PostgreSQL) learn the rate at their next claim of the
   * account: the claims they hold waiting meanwhile (at most the longest a claim waits for its turn, 12.5 s by default)
   * keep the old pace, and are then given back, read before the save, rather than sent.
   */
  webhookSaved(
    before: Pick<WebhookRecord, 'rateLimitPerSecond'> | null,
    after: Pick<WebhookRecord, 'accountId' | 'enabled' | 'rateLimitPerSecond' | 'updatedAt'>,
  ): void {
    if (this.#stopping.signal.aborted) return;
    const account = after.accountId;
    const now = performance.now();
    this.#saves.delete(account);
    this.#saves.set(account, { updatedAt: after.updatedAt, at: now });
    for (const [key, save] of this.#saves) {
      if (save.at > now - this.options.leaseMs) break;
      this.#saves.delete(key);
    }
    // First: a rate set before would let them go at once, as read.
    this.#limiter.cancelWaiting(account);
    // A disabled webhook's claims are not taken: its rate is set by the claim after it is enabled again.
    if (after.enabled) this.#limiter.setRate(account, after.rateLimitPerSecond);
    const old = before?.rateLimitPerSecond;
    const rate = after.rateLimitPerSecond;
    if (old !== undefined && (rate === undefined || rate > old)) this.#track(this.#advanceGivenBack(account));
  }

  /** Makes the account's deliveries given back for their turn due now (see webhookSaved); never throws. */
  async #advanceGivenBack(accountId: string): Promise<void> {
    try {
      const advanced = await this.#store.advanceGivenBack(accountId, this.#clock());
      this.#log.debug(
        { accountId, advanced },
        'rate limit raised or removed: deliveries given back for their turn are due now',
      );
      if (advanced > 0) this.wake();
    } catch (err) {
      // They are sent at the turn they were given, as before the save.
      this.#log.error({ err, accountId }, 'making the deliveries given back for their turn due failed');
    }
  }

  /** Gives a claim back due now, and wakes its lane to claim it again (see webhookSaved). */
  async #giveBackNow(claim: Held, lane: LaneState, why: string): Promise<void> {
    await this.#release(claim, why);
    lane.wakeup.notify();
  }

  /** Whether the claim read its webhook before a save that this process's API made since (see webhookSaved). */
  #readBeforeSave(claim: Held): boolean {
    const save = this.#saves.get(claim.delivery.accountId);
    return save !== undefined && claim.webhook.updatedAt < save.updatedAt;
  }

  /**
   * Stops claiming, lets attempts in flight finish until `deadlineMs` (milliseconds) has passed, then aborts
   * the rest and gives their claims back to the store (due again at once, so the next worker sends them).
   * Resolves when nothing of the engine is running any more, or at the latest `giveBackMs` after the deadline
   * (default {@link STOP_GIVE_BACK_MS}): store calls still pending then (a store that stopped answering) are
   * abandoned, their claims come back when their leases expire. Idempotent (the first call's bounds hold).
   */
  stop(deadlineMs = 10_000, giveBackMs = STOP_GIVE_BACK_MS): Promise<void> {
    this.#stopPromise ??= this.#stop(deadlineMs, giveBackMs);
    return this.#stopPromise;
  }

  /** What is in progress right now. */
  get activity(): EngineActivity {
    return {
      firstLaneBusy: this.#lanes[0].busy,
      retryLaneBusy: this.#lanes[1].busy,
      waiting: this.#limiter.totalWaiting,
      sending: this.#sending,
      slow: this.#lanes[0].slow + this.#lanes[1].slow,
    };
  }

  async #stop(deadlineMs: number, giveBackMs: number): Promise<void> {
    this.#stopping.abort();
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    if (this.#slowSweep) clearInterval(this.#slowSweep);
    this.#retryDue.clear();
    this.wake();
    const drained = Promise.allSettled([...this.#loops, this.#drainTasks()]).then(() => 'drained' as const);
    const first = await within(drained, deadlineMs, 'deadline' as const);
    if (first === 'deadline') {
      this.#log.warn({ attempts: this.#attempts.size }, 'stop deadline passed: aborting attempts in flight');
      for (const controller of this.#attempts) controller.abort();
      // The aborted attempts give their claims back: a store call each, like the claims, freezes and records still
      // on their way. A store that stopped answering (a network partition) would keep them, and so stop(), waiting
      // for ever: past `giveBackMs` they are abandoned. Nothing is lost: what the store accepted stays in it (the
      // store is the queue), and the claims abandoned come back to the queue when their leases expire.
      if ((await within(drained, giveBackMs, 'abandoned' as const)) === 'abandoned') {
        this.#log.warn(
          {
            tasks: this.#tasks.size,
            claiming: this.#lanes.filter((lane) => lane.claiming).map((lane) => lane.name),
            giveBackMs,
          },
          'store calls still pending after the stop deadline: abandoned (their claims come back when their leases expire)',
        );
      }
    }
    if (this.#ownsSender) await this.#sender.close();
    this.#log.info({ owner: this.options.owner }, 'delivery engine stopped');
  }

  async #drainTasks(): Promise<void> {
    while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    void task
      .catch((err: unknown) => this.#log.error({ err }, 'delivery task failed'))
      .finally(() => this.#tasks.delete(task));
  }

  async #runLane(lane: LaneState): Promise<void> {
    while (!this.#stopping.signal.aborted) {
      let next: 'again' | 'idle';
      try {
        next = await this.#claimOnce(lane);
      } catch (err) {
        // The store is unreachable or locked (or a bug): log, wait, try again; never end the lane.
        this.#log.error({ err, lane: lane.name }, 'claiming deliveries failed; retrying after a delay');
        await this.#sleep(this.options.errorDelayMs);
        continue;
      }
      if (next === 'again') {
        // More may be due: claim again at once, but let I/O callbacks run first.
        await yieldToEventLoop();
      } else {
        // Nothing more due, or the lane is full: the next wake() or completion notifies; the poll interval
        // catches deliveries that become due by time (retries) and other processes' work.
        await lane.wakeup.wait(this.options.pollIntervalMs);
      }
    }
  }

  /**
   * Wakes the retry lane when a retry this process just recorded falls due: the lane is not woken by every publish
   * and every attempt any more (that cost a store statement each), and its poll alone would send a retry up to a
   * poll interval late. Due times are kept in buckets of {@link RETRY_BUCKET_MS}, up to {@link RETRY_HORIZON_MS}
   * ahead (later ones are found by the poll); one timer, for the earliest, re-armed for the next when it fires.
   */
  #wakeRetryLaneAt(at: number): void {
    if (this.#stopping.signal.aborted || at - this.#clock() > RETRY_HORIZON_MS) return;
    const bucket = Math.ceil(at / RETRY_BUCKET_MS) * RETRY_BUCKET_MS;
    this.#retryDue.add(bucket);
    if (bucket < this.#retryTimerAt) this.#armRetryTimer(bucket);
  }

  #armRetryTimer(at: number): void {
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimerAt = at;
    // +1: Node's timers may fire a little before the wall clock reaches `at`; #onRetryTimer re-arms if they do.
    this.#retryTimer = setTimeout(() => this.#onRetryTimer(), Math.max(0, at - this.#clock()) + 1);
    this.#retryTimer.unref();
  }

  #onRetryTimer(): void {
    this.#retryTimer = null;
    this.#retryTimerAt = Infinity;
    if (this.#stopping.signal.aborted) return;
    const now = this.#clock();
    let due = false;
    let next = Infinity;
    for (const at of this.#retryDue) {
      if (at <= now) {
        this.#retryDue.delete(at);
        due = true;
      } else if (at < next) next = at;
    }
    if (due) this.wake('retry');
    if (next !== Infinity) this.#armRetryTimer(next);
  }

  /** One claim for `lane`; says whether more work may be due right away. */
  async #claimOnce(lane: LaneState): Promise<'again' | 'idle'> {
    const free = Math.min(lane.concurrency - lane.busy, lane.concurrency * SLOW_LANE_FACTOR - lane.busy - lane.slow);
    if (free <= 0) {
      lane.constrained = true;
      return 'idle';
    }
    // Bodies in memory: no claim while the attempts under way and the claims waiting for a slot hold the budget; else
    // retries (their frozen bodies come with the claim) up to the room left. First attempts build theirs later, one
    // at a time (#attempt).
    const room = this.options.maxBodyBytesInMemory - this.#bodyBytes - this.#waitingBodyBytes - this.#buildReserved;
    if (room <= 0) {
      lane.constrained = true;
      return 'idle';
    }
    const limit = Math.min(free, this.options.claimBatch);
    const now = this.#clock();
    const exclude = new Set(this.#limiter.saturated());
    for (const account of this.#health.pausedAccounts(now)) exclude.add(account);
    const seq = (this.#claimSeq += 1);
    const owner = `${this.options.owner}#${seq}`;
    lane.claiming = true;
    let claims: Held[];
    try {
      claims = await this.#store
        .claimDue({
          lane: lane.name,
          limit,
          now,
          leaseMs: this.options.leaseMs,
          owner,
          excludeAccounts: [...exclude],
          // One account's backlog cannot fill a batch beyond what its endpoint may have in flight.
          maxPerAccount: Math.min(limit, this.options.perEndpointConcurrency),
          maxBodyBytes: room,
        })
        .then((taken) => taken.map((claim): Held => ({ ...claim, owner, seq, handedOver: false })));
    } finally {
      lane.claiming = false;
    }
    if (this.#stopping.signal.aborted) {
      // Claimed while stop() began: give them straight back, but for one of a delivery this process is still sending
      // (its lease ran out under it): that one goes to the attempt under way, which records under it or gives it back
      // when it ends. Given back now, the delivery would be due again with its request still out.
      for (const claim of claims) if (!this.#handOver(claim)) this.#track(this.#release(claim, 'stopping'));
      return 'idle';
    }
    for (const claim of claims) this.#dispatch(claim, lane);
    lane.constrained = claims.length >= limit || exclude.size > 0;
    return claims.length >= limit ? 'again' : 'idle';
  }

  #dispatch(claim: Held, lane: LaneState): void {
    if (this.#handOver(claim)) return;
    const account = claim.delivery.accountId;
    if (this.#readBeforeSave(claim)) {
      // Its rate (and the rest) may be what the save changed: not set, not sent; claimed again as saved.
      this.#track(this.#giveBackNow(claim, lane, 'webhook saved since the claim read it'));
      return;
    }
    // The webhook's rate limit as this claim read it: a change applies from the next claim of the account, or at once
    // when this process's API saved it (webhookSaved).
    this.#limiter.setRate(account, claim.webhook.rateLimitPerSecond);
    if (this.#limiter.tryAcquire(account)) {
      lane.busy += 1;
      this.#track(this.#attemptWithSlot(claim, lane, false));
      return;
    }
    const tokenWait = this.#limiter.tokenWaitMs(account);
    if (tokenWait > this.#maxTokenWaitMs) {
      // Its turn under the webhook's rate limit is further off than a claim may wait and still send within its
      // lease: given back, due when its turn comes (not an attempt, so nothing is counted against it).
      this.#track(this.#release(claim, 'rate limited', this.#clock() + tokenWait));
    } else if (this.#limiter.totalWaiting >= this.options.maxWaiting) {
      this.#track(this.#release(claim, 'endpoint busy'));
    } else {
      // One claim can return more deliveries of an account than it has free slots (or rate-limit tokens): they
      // wait for that account's slots only (the account is excluded from further claims meanwhile).
      this.#track(this.#waitForSlot(claim, lane));
    }
  }

  async #waitForSlot(claim: Held, lane: LaneState): Promise<void> {
    const waitStarted = performance.now();
    // A retry's body came with the claim: it counts while it waits, then as its attempt's (#attemptWithSlot).
    const bodyBytes = claim.delivery.body?.byteLength ?? 0;
    this.#waitingBodyBytes += bodyBytes;
    const granted = await this.#limiter.acquire(claim.delivery.accountId, this.#stopping.signal);
    this.#waitingBodyBytes -= bodyBytes;
    if (!granted) {
      if (this.#stopping.signal.aborted) await this.#release(claim, 'stopping');
      // A save of its webhook ended the wait (webhookSaved).
      else await this.#giveBackNow(claim, lane, 'webhook saved while the claim waited');
      return;
    }
    // An attempt of the delivery may have begun while this claim waited (this one is then older or newer).
    if (this.#handOver(claim)) {
      this.#limiter.release(claim.delivery.accountId);
      this.#grantBuilds();
      this.#slotFreed(lane);
      return;
    }
    lane.busy += 1;
    await this.#attemptWithSlot(claim, lane, performance.now() - waitStarted >= CHECK_AFTER_WAIT_MS);
  }

  /**
   * Whether this process has an attempt of the claim's delivery under way; if so the claim is not attempted beside
   * it (one request of a delivery at a time from a process). That happens when the process took its own claim back
   * after the lease ran out under it (see {@link Held}). A newer claim is handed to the attempt under way, which then
   * records its outcome under it (the attempt number is still the next one: a claim taken back recorded nothing):
   * one request, recorded once. If that record had already gone out under the old claim and been refused, or the
   * claim came after the record (a retry due at once), the attempt gives the claim back when it ends, to be claimed
   * and sent again (see {@link DeliveryEngine.#attemptWithSlot}). An older claim than the one the attempt holds has
   * been taken over in the store already: dropped.
   */
  #handOver(claim: Held): boolean {
    const current = this.#underway.get(claim.delivery.id)?.claim;
    if (current === undefined) return false;
    if (claim.seq > current.seq) {
      this.#log.warn(
        { deliveryId: claim.delivery.id, accountId: claim.delivery.accountId },
        'claimed again while an attempt of it is under way (its lease ran out in this process): handed to that attempt',
      );
      current.owner = claim.owner;
      current.seq = claim.seq;
      current.leaseUntil = claim.leaseUntil;
      current.handedOver = true;
    }
    return true;
  }

  /**
   * One attempt with its endpoint slot held. `waited`: the claim waited long for the slot (see
   * {@link CHECK_AFTER_WAIT_MS}), so the store is asked whether it still holds the claim and what the webhook is now
   * before anything is sent. A claim handed to this attempt
   * meanwhile ({@link DeliveryEngine.#handOver}) is given back at the end: a no-op when the outcome was recorded
   * under it, else it makes the delivery due again at once.
   */
  async #attemptWithSlot(claim: Held, lane: LaneState, waited: boolean): Promise<void> {
    const controller = new AbortController();
    this.#attempts.add(controller);
    const id = claim.delivery.id;
    // Past slowAttemptMs the attempt gives its lane slot back (the endpoint's stays held): see `slowAttemptMs`.
    const bodyBytes = claim.delivery.body?.byteLength ?? 0;
    const running = { claim, lane, startedAt: performance.now(), slow: false, bodyBytes };
    this.#bodyBytes += bodyBytes;
    this.#underway.set(id, running);
    try {
      await this.#attempt(claim, controller.signal, waited);
    } catch (err) {
      // A store or build error for this delivery: give the claim back a little later instead of crashing.
      this.#log.error(
        { err, deliveryId: claim.delivery.id, accountId: claim.delivery.accountId },
        'delivery attempt failed',
      );
      await this.#release(claim, 'error', this.#clock() + this.options.errorDelayMs);
    } finally {
      this.#underway.delete(id);
      this.#bodyBytes -= running.bodyBytes;
      this.#grantBuilds();
      if (claim.handedOver) await this.#release(claim, 'handed to an attempt that did not record under it');
      this.#attempts.delete(controller);
      this.#limiter.release(claim.delivery.accountId);
      if (running.slow) lane.slow -= 1;
      else lane.busy -= 1;
      this.#slotFreed(lane);
    }
  }

  /** Attempts running for slowAttemptMs or longer give their lane slot back (see `slowAttemptMs`). */
  #markSlowAttempts(): void {
    const since = performance.now() - this.options.slowAttemptMs;
    // In the order they began: the first one too recent ends the sweep.
    for (const running of this.#underway.values()) {
      if (running.startedAt > since) break;
      if (running.slow) continue;
      running.slow = true;
      running.lane.busy -= 1;
      running.lane.slow += 1;
      running.lane.wakeup.notify();
    }
  }

  /**
   * A slot is free (in `lane` and for an endpoint): this lane may claim again; the other too if its last claim was
   * held back by a full lane or endpoint, or if a claim of it is on its way (it may have excluded this endpoint). A
   * finished retry also wakes the first lane: a pending delivery of its contact may have waited for it (a contact
   * has one delivery in flight at a time). A lane that found all it could need not ask again now.
   */
  #slotFreed(lane: LaneState): void {
    for (const l of this.#lanes) {
      if (l === lane || l.constrained || l.claiming || (lane.name === 'retry' && l.name === 'first')) {
        l.wakeup.notify();
      }
    }
  }

  /**
   * One attempt of a claim. A first attempt (no frozen body yet) waits for its turn to build the body (see
   * {@link BUILDS_AT_ONCE} and `maxBodyBytesInMemory`) once its claim is checked, so that the checks of claims that
   * waited (a store read each) go on side by side, not one at a time; the turn ends once the body is built, or when
   * the attempt ends without building it.
   */
  async #attempt(claim: Held, signal: AbortSignal, waited: boolean): Promise<void> {
    if (claim.delivery.body !== null) {
      await this.#attemptNow(claim, signal, waited, { take: () => 'now', built: () => undefined });
      return;
    }
    let building = false;
    let reserved = 0;
    const start = () => {
      building = true;
      reserved = this.#lastBuiltBytes;
      this.#buildReserved += reserved;
    };
    const turn: BuildTurn = {
      // The turn at once (the usual case) without a promise: two per attempt cost the drain (issue 6).
      take: () => {
        if (this.#tryStartBuild()) {
          start();
          return 'now';
        }
        const waitStarted = performance.now();
        return this.#startBuild().then((granted) => {
          if (!granted) return 'stopping';
          start();
          return performance.now() - waitStarted >= CHECK_AFTER_WAIT_MS ? 'late' : 'now';
        });
      },
      built: () => {
        if (!building) return;
        building = false;
        this.#buildReserved -= reserved;
        this.#building -= 1;
        this.#grantBuilds();
      },
    };
    try {
      await this.#attemptNow(claim, signal, waited, turn);
    } finally {
      turn.built();
    }
  }

  /**
   * The contact's list as the body of its first attempt. Its own function, so that the messages read and the JSON
   * text (several times the body: UTF-16) are garbage once it returns, not kept alive by the attempt's frame
   * through the request.
   */
  #build(claim: Held, now: number): Built | Promise<Built> {
    const { delivery, webhook } = claim;
    // Read with the claim when the store can (PostgreSQL: one statement per claim instead of one per delivery):
    // then built at once, without a promise, so the build turn is never waited for (issue 6); messages that expired
    // since are dropped by buildPayload, and newer ones go to the contact's next delivery.
    const read = claim.messages;
    claim.messages = undefined; // not kept alive through the attempt: a list can be large
    if (read !== undefined) return this.#encode(claim, read, now);
    return this.#store
      .contactMessages(delivery.accountId, delivery.externalCustomerId, now, webhook.maxMessagesPerContact)
      .then((messages) => this.#encode(claim, messages, now));
  }

  #encode(claim: Held, messages: StoredMessage[], now: number): Built {
    const payload = buildPayload({
      contacts: [{ externalCustomerId: claim.delivery.externalCustomerId, messages }],
      now,
      maxMessagesPerContact: claim.webhook.maxMessagesPerContact,
    });
    return { body: utf8(payload.body), messageIds: payload.messageIds };
  }

  /** Whether a build may start now; if so it has started (counted). */
  #tryStartBuild(): boolean {
    if (this.#buildWaiters.length > 0 || !this.#roomToBuild()) return false;
    this.#building += 1;
    return true;
  }

  #roomToBuild(): boolean {
    // One attempt always goes, however large: nothing would free the budget otherwise. Claims waiting for their
    // endpoint do not count then: the endpoint's slot they wait for may be held by a first attempt waiting here.
    const held = this.#bodyBytes + this.#waitingBodyBytes;
    return this.#building < BUILDS_AT_ONCE && (held < this.options.maxBodyBytesInMemory || this.#bodyBytes === 0);
  }

  /** Waits for the turn to build (FIFO); false when stop() began first (no build counted then). */
  #startBuild(): Promise<boolean> {
    const stopping = this.#stopping.signal;
    if (stopping.aborted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const onStop = () => {
        const i = this.#buildWaiters.indexOf(grant);
        if (i >= 0) this.#buildWaiters.splice(i, 1);
        resolve(false);
      };
      const grant = (granted: boolean) => {
        stopping.removeEventListener('abort', onStop);
        resolve(granted);
      };
      stopping.addEventListener('abort', onStop, { once: true });
      this.#buildWaiters.push(grant);
    });
  }

  /** Lets waiting builds start while there is room, in the order they came. */
  #grantBuilds(): void {
    while (this.#buildWaiters.length > 0 && this.#roomToBuild()) {
      this.#building += 1;
      this.#buildWaiters.shift()?.(true);
    }
  }

  /** Counts the body just built for the attempt under way of `id` (and sizes the next build's reserve by it). */
  #holdBuiltBody(id: string, bytes: number): void {
    const running = this.#underway.get(id);
    if (running === undefined) return;
    running.bodyBytes += bytes;
    this.#bodyBytes += bytes;
    this.#lastBuiltBytes = bytes;
  }

  /**
   * The attempt proper. A first attempt takes its `turn` to build once its claim is checked, and ends it once the
   * body is built (and counted), before it is frozen and sent.
   */
  async #attemptNow(claim: Held, signal: AbortSignal, waited: boolean, turn: BuildTurn): Promise<void> {
    const { delivery } = claim;
    const log = { deliveryId: delivery.id, accountId: delivery.accountId };

    if (this.#stopping.signal.aborted) {
      // Not started before stop(): the next worker sends it.
      await this.#release(claim, 'stopping');
      return;
    }
    if (this.#health.admit !== undefined && !this.#health.admit(delivery.accountId, this.#clock())) {
      // The endpoint's circuit is open (or its one probe is out), or a Retry-After holds it (then due at its end): not
      // an attempt, nothing is lost.
      const heldUntil = this.#health.heldUntil?.(delivery.accountId, this.#clock()) ?? undefined;
      await this.#release(claim, 'endpoint paused', heldUntil);
      return;
    }
    const mayStart = this.#mayStart(claim, waited);
    if (mayStart !== true && !(await mayStart)) return;

    let body: Uint8Array;
    let messageIds: string[];
    if (delivery.body === null) {
      // A long wait for the turn to build is a wait like one for the endpoint: the claim is checked again.
      const took = turn.take();
      const taken = took === 'now' ? took : await took;
      if (taken === 'stopping') {
        await this.#release(claim, 'stopping');
        return;
      }
      if (taken === 'late' && !(await this.#mayStart(claim, true))) return;
      // First attempt: build the contact's current list and freeze it; every retry resends these bytes.
      // A contact whose messages have all expired gets `[]`: the receiver replaces what it stored for the
      // contact, so the expired messages disappear there too (SPEC §4).
      const now = this.#clock();
      const building = this.#build(claim, now);
      ({ body, messageIds } = building instanceof Promise ? await building : building);
      this.#holdBuiltBody(delivery.id, body.byteLength);
      turn.built();
      if (!(await this.#store.freeze(delivery.id, claim.owner, body, messageIds, now))) {
        this.#log.warn(log, 'claim lost before the first attempt; dropped');
        return;
      }
    } else {
      body = delivery.body;
      messageIds = delivery.messageIds ?? [];
    }

    if (signal.aborted) {
      await this.#release(claim, 'stopping');
      return;
    }
    const heldUntil = this.#health.heldUntil?.(delivery.accountId, this.#clock()) ?? null;
    if (heldUntil !== null) {
      // A Retry-After of another attempt came while this one got ready: not sent into the hold, nothing counted.
      await this.#release(claim, 'endpoint held', heldUntil);
      return;
    }
    const tracer = this.#tracer;
    if (tracer === null) {
      await this.#sendAndRecord(claim, body, messageIds, signal, null);
      return;
    }
    // The span is the child of the RPC that created (or replayed) the delivery, however long ago and in
    // whichever process: the context travels in the delivery row, not in memory. @see observability/tracing.ts
    await withLinkedSpan(
      tracer,
      'delivery attempt',
      delivery.traceparent,
      {
        [SPAN_ATTRIBUTES.deliveryId]: delivery.id,
        [SPAN_ATTRIBUTES.accountId]: delivery.accountId,
        [SPAN_ATTRIBUTES.attemptNo]: delivery.attemptCount + 1,
      },
      (span) => this.#sendAndRecord(claim, body, messageIds, signal, span),
      { kind: SpanKind.CLIENT },
    );
  }

  /**
   * Whether the claim may start its request: it has lease enough left for a whole attempt, and, when it `waited`
   * (see {@link CHECK_AFTER_WAIT_MS}), the store still holds it as claimed. If not, it is given back or dropped.
   */
  #mayStart(claim: Held, waited: boolean): true | Promise<boolean> {
    // A claim that waited for its endpoint may not have enough lease left for a whole attempt.
    if (claim.leaseUntil - this.#clock() < this.options.requestTimeoutMs + this.#startMarginMs) {
      return this.#release(claim, 'lease too short').then(() => false);
    }
    // `true`, not a promise, in the usual case: see BuildTurn.take.
    return waited ? this.#stillCurrent(claim) : true;
  }

  /**
   * Whether a claim that waited may be sent as claimed. The wait may have been long (up to the lease minus the
   * request timeout): meanwhile DeleteWebhook may have deleted the delivery, the lease may have been taken back,
   * or the webhook saved again (disabled, another URL or password). Sending it then would reach an endpoint that
   * was told to get nothing, or put an older list after a newer one another process delivered. Gone: dropped.
   * Webhook saved since the claim: given back, to be claimed again with the webhook as it is (or not at all).
   */
  async #stillCurrent(claim: Held): Promise<boolean> {
    const log = { deliveryId: claim.delivery.id, accountId: claim.delivery.accountId };
    const check = await this.#store.checkClaim(claim.delivery.id, claim.owner);
    if (check === null) {
      this.#log.info(log, 'claim lost while it waited (lease taken back or delivery deleted); dropped');
      return false;
    }
    if (!check.webhookEnabled || check.webhookUpdatedAt !== claim.webhook.updatedAt) {
      await this.#release(claim, 'webhook saved, disabled or deleted while the claim waited');
      return false;
    }
    return true;
  }

  /** Sends the frozen body, classifies the answer, records the attempt, and reports it (log, metrics, span). */
  async #sendAndRecord(
    claim: Held,
    body: Uint8Array,
    messageIds: string[],
    signal: AbortSignal,
    span: Span | null,
  ): Promise<void> {
    const { delivery, webhook } = claim;
    const log = { deliveryId: delivery.id, accountId: delivery.accountId };
    const startedAt = this.#clock();
    const headers = await buildRequestHeaders({
      deliveryId: delivery.id,
      externalCustomerId: delivery.externalCustomerId,
      body,
      timestampSeconds: Math.floor(startedAt / 1000),
      ...(webhook.auth ? { auth: webhook.auth } : {}),
      ...(webhook.signingSecret ? { signingSecret: webhook.signingSecret } : {}),
      // A rotation's overlap: the replaced secret signs too, until its end.
      previousSigningSecret: replacedSigningSecretAt(webhook, startedAt),
      // The webhook's own headers, as it is at this claim: a save since the last attempt applies to this one.
      ...(webhook.headers ? { headers: webhook.headers } : {}),
    });
    this.#sending += 1;
    let result;
    try {
      result = await this.#sender.send(webhook.url, headers, body, signal);
    } finally {
      this.#sending -= 1;
    }
    if (signal.aborted && result.outcome.kind === 'error') {
      // Cut by the stop deadline, not answered by the receiver: not an attempt; due again at once.
      await this.#release(claim, 'aborted at stop deadline');
      return;
    }

    const now = this.#clock();
    const attemptNo = delivery.attemptCount + 1;
    const classification = classify(result.outcome, now);
    let nextState: AttemptResult['nextState'];
    let nextAttemptAt: number | null = null;
    // Why it did not deliver, kept as the delivery's lastError (GetDelivery): the classification's reason,
    // prefixed by the give-up reason when retries ran out (`max_attempts:http_503`).
    let reason: string | undefined;
    if (classification.verdict === 'delivered') {
      nextState = 'delivered';
    } else {
      const decision = decideRetry({
        classification,
        attemptNo,
        firstAttemptAt: delivery.firstAttemptAt ?? startedAt,
        now,
        options: this.options.backoff,
        random: this.#random,
      });
      if (decision.retry) {
        nextState = 'retrying';
        nextAttemptAt = decision.at;
      } else {
        nextState = 'failed';
      }
      reason =
        !decision.retry && decision.reason !== 'not_retryable'
          ? `${decision.reason}:${classification.reason}`
          : classification.reason;
    }

    const updated = await this.#store.recordAttempt(delivery.id, {
      // Read now: a claim of this delivery taken since may have been handed to this attempt.
      owner: claim.owner,
      nextState,
      ...(reason === undefined ? {} : { reason }),
      attempt: {
        deliveryId: delivery.id,
        attemptNo,
        startedAt,
        durationMs: result.durationMs,
        statusCode: result.statusCode,
        errorKind: result.errorKind,
        verdict: nextState === 'retrying' ? 'retry' : nextState,
        nextAttemptAt,
      },
    });
    const attemptLog = {
      ...log,
      attemptNo,
      statusCode: result.statusCode,
      errorKind: result.errorKind,
      reason: classification.reason,
      durationMs: result.durationMs,
    };
    if (updated === null) {
      // Our lease expired and another worker owns the delivery now; its record wins.
      this.#log.warn(attemptLog, 'claim lost during the attempt; result not recorded');
      return;
    }
    this.#log.debug({ ...attemptLog, state: updated.state, nextAttemptAt: updated.nextAttemptAt }, 'attempt recorded');
    if (updated.state === 'retrying' && updated.nextAttemptAt !== null) this.#wakeRetryLaneAt(updated.nextAttemptAt);
    this.#observe(
      {
        deliveryId: delivery.id,
        accountId: delivery.accountId,
        url: webhook.url,
        attemptNo,
        outcome: outcomeLabel(updated),
        statusCode: result.statusCode,
        errorKind: result.errorKind,
        durationMs: result.durationMs,
      },
      span,
    );

    try {
      this.#health.onAttempt({
        accountId: delivery.accountId,
        deliveryId: delivery.id,
        classification,
        statusCode: result.statusCode,
        errorKind: result.errorKind,
        durationMs: result.durationMs,
        at: now,
        webhookUpdatedAt: webhook.updatedAt,
      });
    } catch (err) {
      this.#log.error({ err, ...log }, 'endpoint health hook failed');
    }
    if (classification.pauseEndpoint === true) {
      // 410 Gone: the receiver asks us to stop. The circuit breaker (EndpointHealth) pauses the endpoint; this
      // delivery fails (kept for replay) and the others wait until a probe succeeds.
      this.#log.warn(attemptLog, 'endpoint answered 410 Gone: it asks to stop deliveries');
    }

    const state = updated.state;
    // A `superseded` outcome (a newer state of the contact arrived during the attempt) is emitted by the store
    // itself, like every supersede (DeliveryOutcome in store/types.ts).
    if (state === 'delivered' || state === 'retrying' || state === 'failed') {
      try {
        await this.#store.emitOutcome({
          deliveryId: delivery.id,
          accountId: delivery.accountId,
          externalCustomerId: delivery.externalCustomerId,
          state,
          messageIds,
          attemptNo,
          statusCode: result.statusCode,
          errorKind: result.errorKind,
          nextAttemptAt: updated.nextAttemptAt,
          at: now,
        });
      } catch (err) {
        // The attempt is recorded; only the notification is lost.
        this.#log.error({ err, ...log }, 'emitting a delivery outcome failed');
      }
    }
  }

  /**
   * The one log line per attempt, the attempt metrics and the span's attributes, from one event so the three
   * agree. Never throws: the attempt is recorded whatever happens to its reporting.
   */
  #observe(event: AttemptEvent, span: Span | null): void {
    try {
      logAttempt(this.#log, event);
      this.#metrics?.recordAttempt(event);
      if (span !== null) annotateAttemptSpan(span, event);
    } catch (err) {
      this.#log.error({ err, deliveryId: event.deliveryId }, 'reporting an attempt failed');
    }
  }

  /** Gives a claim back; never throws (the lease expires anyway if the store is unreachable). */
  async #release(claim: Held, why: string, dueAt = this.#clock()): Promise<void> {
    try {
      await this.#store.release(claim.delivery.id, claim.owner, dueAt);
      this.#log.debug({ deliveryId: claim.delivery.id, why }, 'claim released');
    } catch (err) {
      this.#log.error({ err, deliveryId: claim.delivery.id, why }, 'releasing a claim failed; its lease will expire');
    }
  }

  /** Sleeps `ms`, or less when stop() begins. */
  #sleep(ms: number): Promise<void> {
    const signal = this.#stopping.signal;
    if (signal.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done, { once: true });
    });
  }
}

/** What became of a delivery after an attempt, from the state `recordAttempt` left it in. */
function outcomeLabel(updated: Delivery): AttemptOutcomeLabel {
  switch (updated.state) {
    case 'delivered':
    case 'retrying':
    case 'failed':
    case 'superseded':
      return updated.state;
    default:
      // recordAttempt leaves no other state; a store that did would be reported as still retrying.
      return 'retrying';
  }
}
