/**
 * Per-endpoint limits: at most `limit` attempts in flight per key (the engine keys it by account, since an
 * account has one webhook), and, for a key given a rate, at most that many attempts begun per second (the
 * webhook's `rateLimitPerSecond`). Claims that arrive for a key at either limit wait here, in FIFO order, for that
 * key only, so a slow or rate-limited endpoint never holds a slot another endpoint could use.
 * @see ARCHITECTURE "Decisions" §4 (isolation)
 */

interface Waiter {
  grant: (granted: boolean) => void;
  cleanup: () => void;
}

/**
 * A token bucket: `tokens` at time `at` (milliseconds of the limiter's clock), refilled at `perSecond` tokens a
 * second up to `perSecond` (one second's worth): after a quiet spell up to `perSecond` attempts may begin at once,
 * and never more than `perSecond` in any second after the first.
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
  /** Set while waiting for the bucket's next token (for a waiter, or to say the key is claimable again). */
  timer: NodeJS.Timeout | null;
}

export interface EndpointLimiterOptions {
  /** Milliseconds of a monotonic clock. Default `performance.now`. */
  clock?: () => number;
  /**
   * Called when a key that {@link EndpointLimiter.saturated} listed for its empty bucket has a token again and
   * nobody waiting for it: its deliveries can be claimed again (the engine wakes its lanes).
   */
  onReady?: () => void;
}

export class EndpointLimiter {
  readonly #limit: number;
  readonly #keys = new Map<string, KeyState>();
  readonly #clock: () => number;
  readonly #onReady: () => void;
  #waiting = 0;

  /** @param limit at most this many concurrent slots per key (a positive integer). */
  constructor(limit: number, options: EndpointLimiterOptions = {}) {
    if (!Number.isSafeInteger(limit) || limit <= 0) {
      throw new RangeError(`limiter limit must be a positive integer, got ${String(limit)}`);
    }
    this.#limit = limit;
    this.#clock = options.clock ?? (() => performance.now());
    this.#onReady = options.onReady ?? (() => {});
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
   * (`undefined`). A new limit starts with a full bucket; a changed one keeps the tokens it had, up to the new size.
   * Waiters the change allows are granted at once.
   */
  setRate(key: string, perSecond: number | undefined): void {
    if (perSecond !== undefined && (!Number.isSafeInteger(perSecond) || perSecond <= 0)) {
      throw new RangeError(`limiter rate must be a positive integer, got ${String(perSecond)}`);
    }
    const state = perSecond === undefined ? this.#keys.get(key) : this.#state(key);
    if (state === undefined || state.bucket?.perSecond === perSecond) return;
    if (perSecond === undefined) {
      state.bucket = null;
    } else if (state.bucket === null) {
      state.bucket = { perSecond, tokens: perSecond, at: this.#clock() };
    } else {
      this.#refill(state.bucket);
      state.bucket.perSecond = perSecond;
      state.bucket.tokens = Math.min(state.bucket.tokens, perSecond);
    }
    if (state.timer !== null) {
      clearTimeout(state.timer);
      state.timer = null;
    }
    this.#pump(key, state);
    // Left out of claims for want of a token (its timer cleared above): the next token under the new rate says so.
    this.#outOfTokens(key, state);
    // A key given a rate is kept for the tryAcquire that follows (saturated() drops it if none comes).
    if (perSecond === undefined) this.#gc(key, state);
  }

  /** Takes a slot of `key` now if one is free (and, for a key with a rate, a token is there). */
  tryAcquire(key: string): boolean {
    const state = this.#state(key);
    if (state.inFlight >= this.#limit || state.waiters.length > 0 || !this.#take(state)) {
      this.#gc(key, state);
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
   */
  tokenWaitMs(key: string): number {
    const state = this.#keys.get(key);
    if (state?.bucket == null) return 0;
    const short = state.waiters.length + 1 - this.#refill(state.bucket);
    return short <= 0 ? 0 : Math.ceil((short * 1000) / state.bucket.perSecond);
  }

  /**
   * Keys that must not be claimed for now: at their limit, with callers already waiting, or out of tokens
   * (such a key's next token calls `onReady`). This is the `excludeAccounts` list given to `Store.claimDue`.
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
    if (state.bucket === null || this.#refill(state.bucket) >= 1) return false;
    this.#armTimer(key, state);
    return true;
  }

  /** Grants waiters while a slot and a token are there; else waits for the next token when only that is missing. */
  #pump(key: string, state: KeyState): void {
    while (state.waiters.length > 0 && state.inFlight < this.#limit) {
      if (!this.#take(state)) {
        this.#armTimer(key, state);
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
    if (this.#refill(state.bucket) < 1) return false;
    state.bucket.tokens -= 1;
    return true;
  }

  #state(key: string): KeyState {
    let state = this.#keys.get(key);
    if (!state) {
      state = { inFlight: 0, waiters: [], bucket: null, timer: null };
      this.#keys.set(key, state);
    }
    return state;
  }

  #gc(key: string, state: KeyState): void {
    // Idle keys are dropped so the map does not grow with every account ever seen; a key with a rate only once its
    // bucket is full again (dropping it earlier would hand out a fresh bucket's burst too soon).
    if (state.inFlight !== 0 || state.waiters.length !== 0 || state.timer !== null) return;
    if (state.bucket !== null && this.#refill(state.bucket) < state.bucket.perSecond) return;
    this.#keys.delete(key);
  }
}
