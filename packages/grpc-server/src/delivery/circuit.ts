/**
 * Circuit breaking per endpoint (issue 7 "Circuit breaking"): an endpoint that keeps failing is paused,
 * so it stops costing requests, lane slots and log lines, and is probed until it recovers.
 *
 *   closed ──(no 2xx for openAfterMs AND minFailures attempts in a row)──▶ open
 *   any state ──(410 Gone)──▶ open without probes, until the webhook is saved again: reset by the process that
 *     saves it, and by every process whose {@link resumeSavedEndpoints} finds the stored webhook other than the
 *     one the 410 answered
 *   open ──(probe interval passed: ONE claimed delivery is let through)──▶ half_open
 *   half_open ──2xx──▶ closed          half_open ──failure──▶ open (probe interval ×2, up to the maximum)
 *   any state ──2xx──▶ closed (an attempt started before the circuit opened may still succeed), except a 2xx
 *     for a save of the webhook that a 410 answered: the 410 pause stands
 *
 * A `Retry-After` on a 429 or a 503 (SPEC §5: "honours Retry-After") holds the whole endpoint, not only the delivery
 * that got it: the receiver said it takes no more requests until then (its message number limit, an outage), so every
 * delivery of the account waits until that time (at most `holdMaxMs`, the cap a delivery's own retry uses), the
 * state aside: a 2xx of an attempt sent before it does not end the hold, a later answer may only lengthen it, and a
 * save of the webhook that changes the endpoint ends it (reset), and a `Retry-After` answering an attempt sent with
 * an older save than that one (to the old endpoint, answered after the save) holds nothing. Before, the other
 * contacts' deliveries kept going to a receiver that had asked for a pause, each collecting its own 429.
 *
 * Pausing drops nothing: a paused account's deliveries are simply not claimed (the engine passes
 * {@link CircuitBreaker.pausedAccounts} as `excludeAccounts`), and a claim that slips through (taken just
 * before the circuit opened, or a second delivery in the probe's batch) is given back to the store without
 * an attempt ({@link CircuitBreaker.admit}), so it burns no attempt. The max-age clock of a delivery
 * (`--max-age-ms`, counted from its first attempt) keeps running while it is paused; a paused delivery is
 * still attempted once after the pause before it can fail for age.
 *
 * The state lives in the memory of each process: with SQLite there is one process; with PostgreSQL every
 * process keeps its own view (each opens and probes on the failures it sees itself), and GetWebhook shows
 * the view of the process that answers. A restart starts closed. Accounts whose endpoint never failed have
 * no entry, so memory grows only with failing endpoints.
 * @see SECURITY.md "Circuit breaker", Standard Webhooks (410 Gone disables an endpoint)
 */
import { DEFAULT_BACKOFF } from '@app-inbox/core';
import type { CircuitState } from '../store/types.js';
import type { EndpointAttemptEvent, EndpointHealth } from './engine.js';

/** Options of the {@link CircuitBreaker}. */
export interface CircuitOptions {
  /**
   * An endpoint is opened once its failures in a row (no 2xx) span at least this long (milliseconds),
   * counted from the first failure of the run to the latest. Default 300,000 (5 minutes).
   */
  openAfterMs: number;
  /** ...and number at least this many attempts (count). Default 5. */
  minFailures: number;
  /** Wait before the first probe of an open endpoint (milliseconds); doubles after each failed probe. Default 30,000. */
  probeIntervalMs: number;
  /** Longest wait between two probes (milliseconds). Default 300,000 (5 minutes). */
  maxProbeIntervalMs: number;
  /**
   * How long a probe may be out without a recorded result before another one is let through
   * (milliseconds): a probe whose claim was given back (shutdown, lease too short) never reports.
   * Default 60,000; the server passes its lease (`--lease-ms`).
   */
  probeTimeoutMs: number;
  /**
   * Longest hold of an endpoint that answered a `Retry-After` (milliseconds); 0 holds none. Default the cap of a
   * delivery's own wait for it (`DEFAULT_BACKOFF.retryAfterMaxMs`, 1 hour).
   */
  holdMaxMs: number;
}

export const DEFAULT_CIRCUIT_OPTIONS: Readonly<CircuitOptions> = Object.freeze({
  openAfterMs: 300_000,
  minFailures: 5,
  probeIntervalMs: 30_000,
  maxProbeIntervalMs: 300_000,
  probeTimeoutMs: 60_000,
  holdMaxMs: DEFAULT_BACKOFF.retryAfterMaxMs,
});

/** An endpoint's circuit as GetWebhook and metrics show it. */
export interface CircuitView {
  state: CircuitState;
  /**
   * When the current state began (ms since the epoch); for a closed circuit, when its current run of
   * failures began; null when closed without failures.
   */
  since: number | null;
  /** Attempts in a row without a 2xx answer. */
  consecutiveFailures: number;
  /** Time of the first failure of the current run (ms since the epoch), null when the last attempt succeeded. */
  failingSince: number | null;
  /** When the next probe may be sent (ms since the epoch), while open; null otherwise, and while open after a 410. */
  nextProbeAt: number | null;
  /** Until when a `Retry-After` holds every delivery to the endpoint (ms since the epoch); null when none does. */
  heldUntil: number | null;
}

/** Told on every change of state; the metrics gauge hooks here. `view` is the state after the change. */
export type CircuitStateListener = (accountId: string, state: CircuitState, view: CircuitView) => void;

export interface CircuitBreakerDeps {
  options?: Partial<CircuitOptions>;
  /** Called on each state change (after it happened); a throwing listener does not stop the breaker. */
  onStateChange?: CircuitStateListener;
}

/** Error thrown for an invalid circuit option; names the option. */
export class CircuitOptionError extends Error {
  readonly code = 'INVALID_CIRCUIT_OPTION';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`circuit option ${option}: ${message}`);
    this.name = 'CircuitOptionError';
  }
}

/** Fills in the defaults and validates; throws {@link CircuitOptionError} naming the first bad option. */
export function resolveCircuitOptions(partial: Partial<CircuitOptions> = {}): CircuitOptions {
  const options: CircuitOptions = { ...DEFAULT_CIRCUIT_OPTIONS, ...partial };
  const bounds: Record<keyof CircuitOptions, number> = {
    openAfterMs: 0,
    minFailures: 1,
    probeIntervalMs: 1,
    maxProbeIntervalMs: 1,
    probeTimeoutMs: 1,
    holdMaxMs: 0,
  };
  for (const [name, min] of Object.entries(bounds) as Array<[keyof CircuitOptions, number]>) {
    const v = options[name];
    if (!Number.isSafeInteger(v) || v < min) {
      throw new CircuitOptionError(name, `must be an integer of at least ${min}, got ${String(v)}`);
    }
  }
  if (options.maxProbeIntervalMs < options.probeIntervalMs) {
    throw new CircuitOptionError(
      'maxProbeIntervalMs',
      `must be at least probeIntervalMs (${options.probeIntervalMs}), got ${options.maxProbeIntervalMs}`,
    );
  }
  return options;
}

interface Entry {
  state: CircuitState;
  since: number;
  failures: number;
  failingSince: number | null;
  /** The wait used for the current (or next) probe. */
  probeIntervalMs: number;
  /** When the next probe may go out; null while open after a 410 Gone (no probe until reset). */
  nextProbeAt: number | null;
  /**
   * After a 410 Gone (the circuit waits for the webhook to be saved again): the `updatedAt` of each save of the
   * webhook a 410 answered while paused (a late 410 may answer an older save than the one that paused it); null
   * otherwise.
   */
  goneWith: Set<number> | null;
  /** When the probe now out was let through (half_open), null when none is out. */
  probeAt: number | null;
}

/**
 * The circuit breaker: the engine's {@link EndpointHealth}. Pure state plus the times it is given; it
 * reads no clock of its own, so tests drive it with plain numbers.
 */
export class CircuitBreaker implements EndpointHealth {
  readonly options: CircuitOptions;
  readonly #entries = new Map<string, Entry>();
  /** Accounts held by a `Retry-After`, and until when (ms since the epoch); dropped once passed. */
  readonly #holds = new Map<string, number>();
  /**
   * The `updatedAt` of the last save of each account's webhook that changed its endpoint (see {@link reset}): an
   * attempt sent with an older save went to the old endpoint, and its `Retry-After` holds nothing. Kept for
   * `probeTimeoutMs` (the lease: no attempt of a claim read before the save records later than that after it).
   */
  readonly #endpointSaves = new Map<string, number>();
  readonly #onStateChange: CircuitStateListener | undefined;

  constructor(deps: CircuitBreakerDeps = {}) {
    this.options = resolveCircuitOptions(deps.options);
    this.#onStateChange = deps.onStateChange;
  }

  /** Accounts not to claim at `now`: open and not yet due for a probe, or half open with a probe out. */
  pausedAccounts(now: number): string[] {
    const paused: string[] = [];
    for (const [account, savedAt] of this.#endpointSaves) {
      if (now - savedAt >= this.options.probeTimeoutMs) this.#endpointSaves.delete(account);
    }
    for (const account of this.#holds.keys()) if (this.#held(account, now)) paused.push(account);
    for (const [account, entry] of this.#entries) {
      if (entry.state === 'open' && (entry.nextProbeAt === null || now < entry.nextProbeAt)) paused.push(account);
      else if (entry.state === 'half_open' && this.#probeOut(entry, now)) paused.push(account);
    }
    return paused;
  }

  /**
   * Whether a claimed delivery of `accountId` may be attempted now. On an open circuit whose probe time has
   * come, the first caller gets the probe (the circuit becomes half open) and later callers get false until
   * its result is recorded; a caller told false gives its claim back without an attempt.
   */
  admit(accountId: string, now: number): boolean {
    if (this.#held(accountId, now)) return false;
    const entry = this.#entries.get(accountId);
    if (entry === undefined || entry.state === 'closed') return true;
    if (entry.state === 'open') {
      if (entry.nextProbeAt === null || now < entry.nextProbeAt) return false;
      entry.probeAt = now;
      this.#transition(accountId, entry, 'half_open', now);
      return true;
    }
    // half_open: one probe at a time; another only when the one out is presumed lost.
    if (this.#probeOut(entry, now)) return false;
    entry.probeAt = now;
    return true;
  }

  /**
   * Until when a `Retry-After` holds the account's endpoint at `now`, or null (see `EndpointHealth.heldUntil`: asked
   * right before a request that `admit` let through earlier, and for the due time of a claim given back); the
   * circuit's state is not touched.
   */
  heldUntil(accountId: string, now: number): number | null {
    return this.#held(accountId, now) ? (this.#holds.get(accountId) ?? null) : null;
  }

  /** Records an attempt's result (called by the engine after every recorded attempt). */
  onAttempt(event: EndpointAttemptEvent): void {
    const { accountId, at } = event;
    const wait = event.classification.retryAfterMs;
    const savedAt = this.#endpointSaves.get(accountId);
    // Sent to the endpoint before a save changed it: that receiver's word is not the new one's.
    const oldEndpoint =
      savedAt !== undefined && event.webhookUpdatedAt !== undefined && event.webhookUpdatedAt < savedAt;
    if (
      event.classification.verdict === 'retry' &&
      wait !== undefined &&
      wait > 0 &&
      this.options.holdMaxMs > 0 &&
      !oldEndpoint
    ) {
      const until = at + Math.min(wait, this.options.holdMaxMs);
      if (until > (this.#holds.get(accountId) ?? 0)) this.#holds.set(accountId, until);
    }
    const entry = this.#entries.get(accountId);
    if (event.classification.verdict === 'delivered') {
      if (entry === undefined) return;
      // A 2xx that answered a save of the webhook a 410 answered too was sent before it (a late answer): the
      // endpoint has said it is gone since, so the pause stands.
      if (event.webhookUpdatedAt !== undefined && entry.goneWith?.has(event.webhookUpdatedAt) === true) return;
      this.#entries.delete(accountId);
      if (entry.state !== 'closed') this.#notify(accountId, 'closed', closedView());
      return;
    }
    const current = entry ?? {
      state: 'closed' as CircuitState,
      since: at,
      failures: 0,
      failingSince: at,
      probeIntervalMs: this.options.probeIntervalMs,
      nextProbeAt: null,
      goneWith: null,
      probeAt: null,
    };
    if (entry === undefined) this.#entries.set(accountId, current);
    current.failures += 1;
    current.failingSince ??= at;
    if (event.classification.pauseEndpoint === true) {
      // 410 Gone: the receiver asks us to stop (Standard Webhooks: the endpoint is disabled), so the circuit opens
      // at once, and without probes: a probe answered 410 would fail one more delivery for good (a 410 is final)
      // at every interval. It stays open until the webhook is saved again (reset).
      const pausedBefore = current.goneWith !== null;
      current.goneWith ??= new Set();
      if (event.webhookUpdatedAt !== undefined) current.goneWith.add(event.webhookUpdatedAt);
      if (!pausedBefore) this.#open(accountId, current, at, null);
    } else if (current.state === 'half_open') {
      // The probe failed (or another attempt did while it was out): wait twice as long for the next one.
      const interval = Math.min(current.probeIntervalMs * 2, this.options.maxProbeIntervalMs);
      this.#open(accountId, current, at, interval);
    } else if (current.state === 'closed') {
      const longEnough = at - (current.failingSince ?? at) >= this.options.openAfterMs;
      if (longEnough && current.failures >= this.options.minFailures) {
        this.#open(accountId, current, at, this.options.probeIntervalMs);
      }
    }
    // Already open: an attempt that started before the circuit opened; the probe schedule stands.
  }

  /** The circuit of `accountId` (closed with no failures when it never failed). */
  view(accountId: string, now?: number): CircuitView {
    const heldUntil = now === undefined ? (this.#holds.get(accountId) ?? null) : this.heldUntil(accountId, now);
    const entry = this.#entries.get(accountId);
    if (entry === undefined) return { ...closedView(), heldUntil };
    return {
      state: entry.state,
      since: entry.since,
      consecutiveFailures: entry.failures,
      failingSince: entry.failingSince,
      nextProbeAt: entry.state === 'open' ? entry.nextProbeAt : null,
      heldUntil,
    };
  }

  /** The accounts whose circuit a 410 Gone opened: they wait for their webhook to be saved again. */
  goneAccounts(): string[] {
    const gone: string[] = [];
    for (const [account, entry] of this.#entries) if (entry.goneWith !== null) gone.push(account);
    return gone;
  }

  /**
   * Closes the account's circuit if a 410 paused it and `storedUpdatedAt` (the webhook as stored now; null when
   * deleted) is a save no 410 answered; false when it stays as it is.
   */
  resumeIfSavedSince(accountId: string, storedUpdatedAt: number | null): boolean {
    const answered = this.#entries.get(accountId)?.goneWith;
    if (answered === undefined || answered === null) return false;
    if (storedUpdatedAt !== null && answered.has(storedUpdatedAt)) return false;
    this.reset(accountId);
    return true;
  }

  /** Every account whose circuit is not closed, with its view (for metrics and logs). */
  notClosed(): Map<string, CircuitView> {
    const out = new Map<string, CircuitView>();
    for (const [account, entry] of this.#entries) if (entry.state !== 'closed') out.set(account, this.view(account));
    return out;
  }

  /**
   * Forgets an account's circuit: its webhook was reconfigured (a new URL or credentials deserve a fresh
   * start, and re-saving is how an operator resumes an endpoint that answered 410) or deleted. `savedUpdatedAt`: the
   * `updatedAt` of the save that changed the endpoint; a `Retry-After` of an attempt sent with an older save (to the
   * old endpoint, still in flight) then holds nothing.
   */
  reset(accountId: string, savedUpdatedAt?: number): void {
    this.#holds.delete(accountId);
    if (savedUpdatedAt !== undefined) this.#endpointSaves.set(accountId, savedUpdatedAt);
    const entry = this.#entries.get(accountId);
    if (entry === undefined) return;
    this.#entries.delete(accountId);
    if (entry.state !== 'closed') this.#notify(accountId, 'closed', closedView());
  }

  /** Whether a `Retry-After` holds the account at `now`; a hold that has passed is dropped. */
  #held(accountId: string, now: number): boolean {
    const until = this.#holds.get(accountId);
    if (until === undefined) return false;
    if (now < until) return true;
    this.#holds.delete(accountId);
    return false;
  }

  #probeOut(entry: Entry, now: number): boolean {
    return entry.probeAt !== null && now - entry.probeAt < this.options.probeTimeoutMs;
  }

  /** Opens the circuit with its next probe `intervalMs` after `at`; with null, no probe (410 Gone). */
  #open(accountId: string, entry: Entry, at: number, intervalMs: number | null): void {
    if (intervalMs !== null) entry.probeIntervalMs = intervalMs;
    entry.nextProbeAt = intervalMs === null ? null : at + intervalMs;
    entry.probeAt = null;
    this.#transition(accountId, entry, 'open', at);
  }

  #transition(accountId: string, entry: Entry, state: CircuitState, at: number): void {
    entry.state = state;
    entry.since = at;
    this.#notify(accountId, state, this.view(accountId, at));
  }

  #notify(accountId: string, state: CircuitState, view: CircuitView): void {
    try {
      this.#onStateChange?.(accountId, state, view);
    } catch {
      // A metrics or log hook must never break delivery.
    }
  }
}

function closedView(): CircuitView {
  return {
    state: 'closed',
    since: null,
    consecutiveFailures: 0,
    failingSince: null,
    nextProbeAt: null,
    heldUntil: null,
  };
}

/**
 * Closes the circuits a 410 Gone opened whose webhook was saved since (its stored `updatedAt` is none that a 410
 * answered: no clock of another process is compared) or deleted. The process that answers UpsertWebhook resets its
 * own circuit at once; with PostgreSQL the other processes learn it here (the server runs this every probe
 * interval), and a save that changed nothing counts too: saving the webhook is how an operator resumes an endpoint
 * that answered 410. A circuit paused again meanwhile by a 410 answering the stored save is left as it is.
 * @returns the accounts whose circuit was closed
 */
export async function resumeSavedEndpoints(
  circuit: Pick<CircuitBreaker, 'goneAccounts' | 'resumeIfSavedSince'>,
  webhookUpdatedAt: (accountId: string) => Promise<number | null>,
  stopped: () => boolean = () => false,
  onError: (accountId: string, error: unknown) => void = () => undefined,
): Promise<string[]> {
  const resumed: string[] = [];
  for (const account of circuit.goneAccounts()) {
    if (stopped()) break;
    let updatedAt: number | null;
    try {
      updatedAt = await webhookUpdatedAt(account);
    } catch (error) {
      // One account's read failing does not keep the others paused.
      onError(account, error);
      continue;
    }
    if (circuit.resumeIfSavedSince(account, updatedAt)) resumed.push(account);
  }
  return resumed;
}
