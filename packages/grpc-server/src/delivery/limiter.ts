/**
 * Per-endpoint concurrency: at most `limit` attempts in flight per key (the engine keys it by account,
 * since an account has one webhook). Claims that arrive for a key already at its limit wait here, in FIFO
 * order, for a slot of that key only, so a slow endpoint never holds a slot another endpoint could use.
 * @see ARCHITECTURE "Decisions" §4 (isolation)
 */

interface Waiter {
  grant: (granted: boolean) => void;
  cleanup: () => void;
}

interface KeyState {
  inFlight: number;
  waiters: Waiter[];
}

export class EndpointLimiter {
  readonly #limit: number;
  readonly #keys = new Map<string, KeyState>();
  #waiting = 0;

  /** @param limit at most this many concurrent slots per key (a positive integer). */
  constructor(limit: number) {
    if (!Number.isSafeInteger(limit) || limit <= 0) {
      throw new RangeError(`limiter limit must be a positive integer, got ${String(limit)}`);
    }
    this.#limit = limit;
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

  /** Takes a slot of `key` now if one is free. */
  tryAcquire(key: string): boolean {
    const state = this.#state(key);
    if (state.inFlight >= this.#limit || state.waiters.length > 0) return false;
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
    });
  }

  /** Gives back a slot of `key`; the first waiter of that key, if any, gets it at once. */
  release(key: string): void {
    const state = this.#keys.get(key);
    if (!state || state.inFlight <= 0) throw new Error(`limiter release without acquire for key ${key}`);
    const next = state.waiters.shift();
    if (next) {
      // The slot passes straight to the waiter: inFlight does not change.
      this.#waiting -= 1;
      next.cleanup();
      next.grant(true);
      return;
    }
    state.inFlight -= 1;
    this.#gc(key, state);
  }

  /**
   * Keys that must not be claimed for now: at their limit, or with callers already waiting. This is the
   * `excludeAccounts` list given to `Store.claimDue`.
   */
  saturated(): string[] {
    const keys: string[] = [];
    for (const [key, state] of this.#keys) {
      if (state.inFlight >= this.#limit || state.waiters.length > 0) keys.push(key);
    }
    return keys;
  }

  #state(key: string): KeyState {
    let state = this.#keys.get(key);
    if (!state) {
      state = { inFlight: 0, waiters: [] };
      this.#keys.set(key, state);
    }
    return state;
  }

  #gc(key: string, state: KeyState): void {
    // Idle keys are dropped so the map does not grow with every account ever seen.
    if (state.inFlight === 0 && state.waiters.length === 0) this.#keys.delete(key);
  }
}
