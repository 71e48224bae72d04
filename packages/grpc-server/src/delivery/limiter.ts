/**
 * Per-endpoint limits: at most `limit` attempts in flight per key (the engine keys it by account, since an
 * account has one webhook), and, for a key given a rate, at most that many attempts begun per second (the
 * webhook's `rateLimitPerSecond`). Claims that arrive for a key at either limit wait here, in FIFO order, for that
 * key only, so a slow or rate-limited endpoint never holds a slot another endpoint could use.
 *
 * The rate has two modes:
 * - Own bucket (no {@link EndpointLimiterOptions.tokenSource}; SQLite, one process): a token bucket per key, refilled
 *   by time. Over any window of W seconds at most `rate × (1 + W)` attempts begin.
 * - Shared bucket (a token source; PostgreSQL, where several processes send for one webhook): the key's tokens come
 *   only from the source, the bucket every process shares (`Store.leaseRateTokens`), leased a few at a time when the
 *   key runs short (about a tenth of a second's worth, at least what its waiters need, at most a second's worth) by
 *   one lease at a time per key. Leased tokens left unused expire `leasedTokenTtlMs` (T, 250 ms) after their lease's
 *   statement went to the database (the lease was asked for, plus the time the source says it waited for a connection
 *   before: the shared bucket cannot have handed them out earlier), so a process cannot save them up and burst later.
 *   A token used in a window was granted by the shared bucket at most T before it (by the database's clock and the
 *   process's running at the same speed), and the shared bucket hands out at most `rate × (1 + W + T)` tokens over
 *   W + T seconds: over any window of W seconds the endpoint sees at most `rate × (1 + W + T)` attempts begun from all
 *   the processes together (2.25 × rate in a second), where N processes with a bucket each began up to
 *   `N × rate × (1 + W)`. The `limit` on attempts in flight stays per process.
 * @see ARCHITECTURE "Decisions" §4 (isolation), POSTGRES.md "A webhook's rate limit is global"
 */

import type { RateTokenLease } from '../store/types.js';

interface Waiter {
  grant: (granted: boolean) => void;
  cleanup: () => void;
}

/**
 * A token bucket. Own bucket: `tokens` at time `at` (milliseconds of the limiter's clock), refilled at `perSecond`
 * tokens a second up to `perSecond` (one second's worth): after a quiet spell up to `perSecond` attempts may begin at
 * once, and never more than `perSecond` in any second after the first. Shared bucket: `tokens` are whole tokens leased
 * from the source, never refilled by time, which expire at `at`.
 */
interface Bucket {
  perSecond: number;
  tokens: number;
  at: number;
}

interface KeyState {
  inFlight: number;
  waiters: Waiter[];
  bucket: Bucket | null;
  /**
   * Set while waiting for the bucket's next token (for a waiter, or to say the key is claimable again); with a shared
   * bucket, for the shared bucket's next token or for the retry after a failed lease, until `readyAt`.
   */
  timer: NodeJS.Timeout | null;
  /** Shared bucket: when the timer ends (milliseconds of the limiter's clock). */
  readyAt: number;
  /** Shared bucket: the timer waits for the shared bucket's next token (false: to retry after a failed lease). */
  forToken: boolean;
  /** Shared bucket: a lease of this key is on its way (one at a time). */
  leasing: boolean;
}

/** Where the tokens of shared buckets come from: `Store.leaseRateTokens`, keyed like the limiter. */
export interface RateTokenSource {
  /** Takes up to `want` (1 to `perSecond`) tokens of the key's shared bucket, which holds at most `perSecond`. */
  lease(key: string, perSecond: number, want: number): Promise<RateTokenLease>;
}

/** Default of {@link EndpointLimiterOptions.leasedTokenTtlMs} (milliseconds). */
export const LEASED_TOKEN_TTL_MS = 250;
/** Default of {@link EndpointLimiterOptions.leaseRetryMs} (milliseconds). */
export const LEASE_RETRY_MS = 100;

export interface EndpointLimiterOptions {
  /** Milliseconds of a monotonic clock. Default `performance.now`. */
  clock?: () => number;
  /**
   * Called when a key that {@link EndpointLimiter.saturated} listed for its empty bucket has a token again and
   * nobody waiting for it: its deliveries can be claimed again (the engine wakes its lanes).
   */
  onReady?: () => void;
  /**
   * The bucket every process shares, for keys with a rate (PostgreSQL). Default none: each limiter refills a bucket of
   * its own by time, which is the whole service's only when it runs in one process.
   */
  tokenSource?: RateTokenSource;
  /**
   * How long leased tokens may wait unused (milliseconds) before they expire: the T of the bound in the class comment.
   * Default {@link LEASED_TOKEN_TTL_MS}.
   */
  leasedTokenTtlMs?: number;
  /** How long after a failed lease (milliseconds) its key asks again. Default {@link LEASE_RETRY_MS}. */
  leaseRetryMs?: number;
  /**
   * Called when a lease fails (the database is unreachable), once per streak of failures over every key: a lease that
   * succeeds ends the streak. The key's claims wait meanwhile, and leases are tried again every `leaseRetryMs`.
   */
  onLeaseError?: (key: string, error: unknown) => void;
}

export class EndpointLimiter {
  readonly #limit: number;
  readonly #keys = new Map<string, KeyState>();
  readonly #clock: () => number;
  readonly #onReady: () => void;
  readonly #source: RateTokenSource | null;
  readonly #leasedTokenTtlMs: number;
  readonly #leaseRetryMs: number;
  readonly #onLeaseError: (key: string, error: unknown) => void;
  /** The last lease failed: the next failure is not reported again (see `onLeaseError`). */
  #leaseFailing = false;
  #waiting = 0;

  /** @param limit at most this many concurrent slots per key (a positive integer). */
  constructor(limit: number, options: EndpointLimiterOptions = {}) {
    if (!Number.isSafeInteger(limit) || limit <= 0) {
      throw new RangeError(`limiter limit must be a positive integer, got ${String(limit)}`);
    }
    this.#limit = limit;
    this.#clock = options.clock ?? (() => performance.now());
    this.#onReady = options.onReady ?? (() => {});
    this.#source = options.tokenSource ?? null;
    this.#leasedTokenTtlMs = options.leasedTokenTtlMs ?? LEASED_TOKEN_TTL_MS;
    this.#leaseRetryMs = options.leaseRetryMs ?? LEASE_RETRY_MS;
    this.#onLeaseError = options.onLeaseError ?? (() => {});
    for (const [name, value] of [
      ['leasedTokenTtlMs', this.#leasedTokenTtlMs],
      ['leaseRetryMs', this.#leaseRetryMs],
    ] as const) {
      if (!Number.isSafeInteger(value) || value <= 0) {
        throw new RangeError(`limiter ${name} must be a positive integer, got ${String(value)}`);
      }
    }
  }

  get limit(): number {
    return this.#limit;
  }

  /** Slots taken for `key`. */
  inFlight(key: string): number {
    return this.#keys.get(key)?.inFlight ?? 0;
  }

  /** Callers waiting for a slot of `key`. */
  waiting(key: string): number {
    return this.#keys.get(key)?.waiters.length ?? 0;
  }

  /** Callers waiting for a slot, over every key. */
  get totalWaiting(): number {
    return this.#waiting;
  }

  /**
   * Sets the most attempts per second that may begin for `key` (a positive integer), or removes its limit
   * (`undefined`). A new limit starts with a full bucket (a shared one: with no token, the first lease brings them); a
   * changed one keeps the tokens it had, up to the new size. Waiters the change allows are granted at once, and the
   * wait for the next token is counted again under the new rate (a shared bucket's, when the rate is raised or removed:
   * its next lease asks at once under the new rate).
   */
  setRate(key: string, perSecond: number | undefined): void {
    if (perSecond !== undefined && (!Number.isSafeInteger(perSecond) || perSecond <= 0)) {
      throw new RangeError(`limiter rate must be a positive integer, got ${String(perSecond)}`);
    }
    const state = perSecond === undefined ? this.#keys.get(key) : this.#state(key);
    if (state === undefined || state.bucket?.perSecond === perSecond) return;
    const raised = state.bucket !== null && (perSecond === undefined || perSecond > state.bucket.perSecond);
    if (perSecond === undefined) {
      state.bucket = null;
    } else if (state.bucket === null) {
      state.bucket =
        this.#source === null ? { perSecond, tokens: perSecond, at: this.#clock() } : { perSecond, tokens: 0, at: 0 };
    } else {
      state.bucket.tokens = Math.min(this.#tokens(state.bucket), perSecond);
      state.bucket.perSecond = perSecond;
    }
    // An own bucket's timer counts at the old rate. So does a shared bucket's wait for the shared bucket's next token
    // (the store said when, at the old rate): raised or removed, it ends now, and the next lease asks under the new
    // rate, at which the shared bucket refills (it was 1 s at 1 a second). Lowered, it stays: the next lease tells about
    // the new rate. A wait to retry a failed lease stays.
    let sharedWaitEnded = false;
    if (state.timer !== null && (this.#source === null || (raised && state.forToken))) {
      clearTimeout(state.timer);
      state.timer = null;
      sharedWaitEnded = this.#source !== null;
    }
    this.#pump(key, state);
    // Left out of claims while it waited for the shared bucket, nobody waiting: claimable again, its next claim leases.
    if (sharedWaitEnded && state.waiters.length === 0 && !state.leasing) this.#onReady();
    // Left out of claims for want of a token (its timer cleared above): the next token under the new rate says so.
    this.#outOfTokens(key, state);
    // A key given a rate is kept for the tryAcquire that follows (saturated() drops it if none comes).
    if (perSecond === undefined) this.#gc(key, state);
  }

  /** Takes a slot of `key` now if one is free (and, for a key with a rate, a token is there). */
  tryAcquire(key: string): boolean {
    const state = this.#state(key);
    if (state.inFlight >= this.#limit || state.waiters.length > 0 || !this.#take(state)) {
      // A key with a rate is kept, with its rate, for the acquire that may follow (saturated() drops it if none comes):
      // dropped here, a shared bucket (idle, no token) would come back from acquire without a rate.
      if (state.bucket === null) this.#gc(key, state);
      return false;
    }
    state.inFlight += 1;
    return true;
  }

  /**
   * Takes a slot of `key`, waiting in FIFO order when the key is at its limit. Resolves true once the slot
   * is held, or false when `signal` aborts first (nothing is held then).
   */
  acquire(key: string, signal?: AbortSignal): Promise<boolean> {
    if (this.tryAcquire(key)) return Promise.resolve(true);
    if (signal?.aborted) return Promise.resolve(false);
    const state = this.#state(key);
    return new Promise<boolean>((resolve) => {
      const onAbort = () => {
        const i = state.waiters.indexOf(waiter);
        if (i >= 0) {
          state.waiters.splice(i, 1);
          this.#waiting -= 1;
          this.#gc(key, state);
        }
        resolve(false);
      };
      const waiter: Waiter = {
        grant: resolve,
        cleanup: () => signal?.removeEventListener('abort', onAbort),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      state.waiters.push(waiter);
      this.#waiting += 1;
      // A slot is free but no token: the first waiter is granted when the next token comes.
      this.#pump(key, state);
    });
  }

  /**
   * Ends the wait of every caller waiting for a slot of `key`: their `acquire` resolves false, holding nothing (as when
   * their signal aborts). For claims that must not go as they are, e.g. read before their webhook was saved again.
   */
  cancelWaiting(key: string): void {
    const state = this.#keys.get(key);
    if (state === undefined || state.waiters.length === 0) return;
    const waiters = state.waiters.splice(0);
    this.#waiting -= waiters.length;
    for (const waiter of waiters) {
      waiter.cleanup();
      waiter.grant(false);
    }
    this.#gc(key, state);
  }

  /** Gives back a slot of `key`; the first waiter of that key, if any, gets it (once its token is there). */
  release(key: string): void {
    const state = this.#keys.get(key);
    if (!state || state.inFlight <= 0) throw new Error(`limiter release without acquire for key ${key}`);
    state.inFlight -= 1;
    this.#pump(key, state);
    this.#gc(key, state);
  }

  /**
   * For a key with a rate: how long (ms) a caller that queued now would wait for its token, behind the waiters
   * already there (0 when a token is there for it). 0 for a key without a rate. Waits for a slot are not counted.
   * A shared bucket's is an estimate: the shared bucket's next token when a lease said when (else at once), then one
   * token every 1/rate s, as if this process had the shared bucket to itself (others leasing make the wait longer).
   */
  tokenWaitMs(key: string): number {
    const state = this.#keys.get(key);
    if (state?.bucket == null) return 0;
    const short = state.waiters.length + 1 - this.#tokens(state.bucket);
    if (short <= 0) return 0;
    if (this.#source === null) return Math.ceil((short * 1000) / state.bucket.perSecond);
    const next = state.timer === null ? 0 : Math.max(0, state.readyAt - this.#clock());
    return Math.ceil(next + ((short - 1) * 1000) / state.bucket.perSecond);
  }

  /**
   * Keys that must not be claimed for now: at their limit, with callers already waiting, or out of tokens
   * (such a key's next token calls `onReady`). This is the `excludeAccounts` list given to `Store.claimDue`. A key
   * with a shared bucket is out of tokens only while a lease is on its way or the shared bucket is known to be empty:
   * else its next claim is what asks for tokens (a lease for each idle key at every claim would drain the shared
   * bucket for nothing).
   */
  saturated(): string[] {
    const keys: string[] = [];
    for (const [key, state] of this.#keys) {
      if (state.inFlight >= this.#limit || state.waiters.length > 0) {
        keys.push(key);
      } else if (this.#outOfTokens(key, state)) {
        keys.push(key);
      } else {
        this.#gc(key, state);
      }
    }
    return keys;
  }

  /**
   * Whether the key has a rate and no token now; if so, its timer is armed for the next one (which calls `onReady`
   * when nobody waits), unless it already is.
   */
  #outOfTokens(key: string, state: KeyState): boolean {
    if (state.bucket === null || this.#tokens(state.bucket) >= 1) return false;
    // A shared bucket's lease or wait ends by calling onReady when nobody waits (see #leased and #waitShared).
    if (this.#source !== null) return state.leasing || state.timer !== null;
    this.#armTimer(key, state);
    return true;
  }

  /** Grants waiters while a slot and a token are there; else waits for the next token when only that is missing. */
  #pump(key: string, state: KeyState): void {
    while (state.waiters.length > 0 && state.inFlight < this.#limit) {
      if (!this.#take(state)) {
        if (this.#source === null) this.#armTimer(key, state);
        else this.#lease(key, state);
        return;
      }
      const next = state.waiters.shift()!;
      this.#waiting -= 1;
      next.cleanup();
      state.inFlight += 1;
      next.grant(true);
    }
  }

  #armTimer(key: string, state: KeyState): void {
    if (state.timer !== null || state.bucket === null) return;
    const bucket = state.bucket;
    const wait = Math.ceil(((1 - this.#refill(bucket)) * 1000) / bucket.perSecond);
    state.timer = setTimeout(
      () => {
        state.timer = null;
        if (this.#keys.get(key) !== state) return;
        const hadWaiters = state.waiters.length > 0;
        this.#pump(key, state);
        // A key left out of claims for want of a token is claimable again: say so (the waiters, if any, were
        // granted above, and the key stays saturated while they hold its slots or wait). Node's timers count whole
        // milliseconds from a loop time taken earlier, so this one may fire a little before the token: then it
        // waits again (the waiters' pump above does the same), else the key would be left out until the next poll.
        if (!hadWaiters && state.bucket !== null && !this.#outOfTokens(key, state)) this.#onReady();
        this.#gc(key, state);
      },
      Math.max(1, wait),
    );
    state.timer.unref();
  }

  /**
   * Asks the shared bucket for tokens for `key`, unless a lease is on its way or the key waits (for the shared bucket's
   * next token, or to retry). Enough for its waiters, at least a tenth of a second's worth (fewer statements at high
   * rates), at most a second's worth (what the shared bucket holds).
   */
  #lease(key: string, state: KeyState): void {
    const source = this.#source;
    const bucket = state.bucket;
    if (source === null || bucket === null || state.leasing || state.timer !== null) return;
    state.leasing = true;
    const perSecond = bucket.perSecond;
    const want = Math.min(perSecond, Math.max(Math.ceil(perSecond / 10), state.waiters.length));
    // The tokens' expiry counts from before the source took them (the ask, plus its wait for a connection), not from
    // its answer: a slow answer cannot stretch T.
    const askedAt = this.#clock();
    // A source that throws instead of rejecting is a failed lease too, not an exception in the caller's pump.
    new Promise<RateTokenLease>((resolve) => resolve(source.lease(key, perSecond, want))).then(
      (lease) => this.#leased(key, state, want, askedAt, lease),
      (error: unknown) => this.#leaseFailed(key, state, error),
    );
  }

  #leased(key: string, state: KeyState, want: number, askedAt: number, lease: RateTokenLease): void {
    state.leasing = false;
    this.#leaseFailing = false;
    const bucket = state.bucket;
    // The rate was removed meanwhile: its waiters were granted then; the tokens are not needed.
    if (this.#keys.get(key) !== state || bucket === null) {
      this.#gc(key, state);
      return;
    }
    const granted = Math.max(0, Math.min(want, Math.floor(lease.granted)));
    if (granted > 0) {
      // Tokens left from before have expired (leases are asked for only when none is left), or are few: all of them
      // expire together, T after this lease's statement went out. Counted from the ask, a lease that waited longer than
      // T for a connection of a busy pool brought tokens already expired: the key asked again at once, each lease
      // taking tokens of the shared bucket that nobody used, and its waiters waited for as long as the pool stayed that
      // busy. The source's word for that wait is believed up to the answer (never a later expiry than T after it).
      const queuedMs = Number.isFinite(lease.queuedMs) ? Math.max(0, lease.queuedMs!) : 0;
      const sentAt = askedAt + Math.min(queuedMs, Math.max(0, this.#clock() - askedAt));
      // A rate lowered while the lease was on its way holds them to its size, as setRate held those the key had then:
      // else a tenth of a second of the old rate began at once.
      bucket.tokens = Math.min(bucket.perSecond, this.#tokens(bucket) + granted);
      bucket.at = sentAt + this.#leasedTokenTtlMs;
    }
    // Less than asked: the shared bucket is empty until its next token, so the key waits for it instead of asking
    // again at once (a lease that brought nothing always waits, at least a millisecond).
    if (granted === 0) this.#waitShared(key, state, Math.max(1, lease.nextTokenInMs), true);
    else if (granted < want && lease.nextTokenInMs > 0) this.#waitShared(key, state, lease.nextTokenInMs, true);
    const hadWaiters = state.waiters.length > 0;
    this.#pump(key, state);
    // Left out of claims while the lease was on its way, nobody waiting: claimable again with the tokens it brought.
    if (!hadWaiters && this.#tokens(bucket) >= 1) this.#onReady();
    this.#gc(key, state);
  }

  #leaseFailed(key: string, state: KeyState, error: unknown): void {
    state.leasing = false;
    if (!this.#leaseFailing) {
      this.#leaseFailing = true;
      this.#onLeaseError(key, error);
    }
    if (this.#keys.get(key) !== state) return;
    // The key is not wedged: it asks again after a short while (its waiters stay queued, claims leave it out).
    this.#waitShared(key, state, this.#leaseRetryMs, false);
  }

  /**
   * Shared bucket: waits `ms` before the key may lease again; then its waiters ask for tokens, or, with nobody waiting,
   * the key is claimable again (`onReady`), and its next claim asks. `forToken`: the wait is for the shared bucket's next
   * token, which a raised rate ends (see setRate); else it is the pause before a failed lease is tried again.
   */
  #waitShared(key: string, state: KeyState, ms: number, forToken: boolean): void {
    if (state.timer !== null) return;
    state.readyAt = this.#clock() + ms;
    state.forToken = forToken;
    state.timer = setTimeout(() => {
      state.timer = null;
      if (this.#keys.get(key) !== state) return;
      if (state.waiters.length > 0) this.#pump(key, state);
      else this.#onReady();
      this.#gc(key, state);
    }, ms);
    state.timer.unref();
  }

  /** The bucket's tokens now: an own bucket's after its refill since it was last looked at, a shared one's unexpired. */
  #tokens(bucket: Bucket): number {
    if (this.#source === null) return this.#refill(bucket);
    if (bucket.tokens > 0 && this.#clock() >= bucket.at) bucket.tokens = 0;
    return bucket.tokens;
  }

  /** The bucket's tokens now, after its refill since it was last looked at. */
  #refill(bucket: Bucket): number {
    const now = this.#clock();
    if (now > bucket.at) {
      bucket.tokens = Math.min(bucket.perSecond, bucket.tokens + ((now - bucket.at) * bucket.perSecond) / 1000);
      bucket.at = now;
    }
    return bucket.tokens;
  }

  /** Takes a token of the key's bucket, if it has one (always true for a key without a rate). */
  #take(state: KeyState): boolean {
    if (state.bucket === null) return true;
    if (this.#tokens(state.bucket) < 1) return false;
    state.bucket.tokens -= 1;
    return true;
  }

  #state(key: string): KeyState {
    let state = this.#keys.get(key);
    if (!state) {
      state = { inFlight: 0, waiters: [], bucket: null, timer: null, readyAt: 0, forToken: false, leasing: false };
      this.#keys.set(key, state);
    }
    return state;
  }

  #gc(key: string, state: KeyState): void {
    // Idle keys are dropped so the map does not grow with every account ever seen; a key with an own bucket only once
    // it is full again (dropping it earlier would hand out a fresh bucket's burst too soon). A shared bucket starts
    // empty: one is dropped once no lease is on its way and its leased tokens are used or expired (not earlier, or the
    // claim that a lease's onReady brings would find none and lease again).
    if (state.inFlight !== 0 || state.waiters.length !== 0 || state.timer !== null || state.leasing) return;
    if (state.bucket !== null) {
      const tokens = this.#tokens(state.bucket);
      if (this.#source === null ? tokens < state.bucket.perSecond : tokens >= 1) return;
    }
    this.#keys.delete(key);
  }
}
