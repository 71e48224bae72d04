/**
 * Prometheus metrics (prom-client) in a registry of their own, so that two servers in one process (tests)
 * or a library user's own metrics never collide with ours in prom-client's global registry.
 *
 * Queue gauges are read from the store at scrape time (the store is the queue: ARCHITECTURE §3), so they
 * are true across every process sharing the store, not only this one.
 * @see issue 8 (metrics list); README "Metrics"
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { statusClass, type AttemptEvent, type AttemptOutcomeLabel, type StatusClass } from './attempt.js';

/** Circuit state of an endpoint, as the `endpoint_circuit_state` gauge encodes it. */
export type CircuitStateLabel = 'closed' | 'half_open' | 'open';

/** Gauge value of each circuit state: 0 closed, 1 half open, 2 open (higher is worse, so `max()` works). */
export const CIRCUIT_STATE_VALUES: Readonly<Record<CircuitStateLabel, number>> = Object.freeze({
  closed: 0,
  half_open: 1,
  open: 2,
});

/**
 * Buckets of `delivery_attempt_duration_seconds` (seconds): 5 ms (a receiver on the same network) up to
 * 30 s (beyond the default 15 s request timeout, so timeouts land in a bucket of their own).
 */
export const ATTEMPT_DURATION_BUCKETS: readonly number[] = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30,
];

/** Buckets of `grpc_server_call_duration_seconds` (seconds): 1 ms to 10 s; store-bound unary calls. */
export const GRPC_DURATION_BUCKETS: readonly number[] = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** What the queue gauges read at each scrape; `Store.stats(now)` has this shape. */
export interface QueueStats {
  /** Deliveries held in the store, by state. */
  byState: Record<string, number>;
  /**
   * Due time of the oldest due `pending` or `retrying` delivery (ms since the epoch), null when none is due. Deliveries
   * of a disabled webhook are left out: they wait by design until it is enabled.
   */
  oldestDueAt: number | null;
}

export interface MetricsOptions {
  /**
   * Reads the queue counts at each scrape, e.g. `(now) => store.stats(now)`. Default none: the queue
   * gauges are then not exported.
   */
  statsProvider?: (now: number) => Promise<QueueStats>;
  /** Clock for the oldest-pending age (milliseconds since the epoch). Default `Date.now`. */
  clock?: () => number;
  /** Told when `statsProvider` fails during a scrape (the queue gauges are then left empty). Default: ignored. */
  onCollectError?: (error: unknown) => void;
  /** Export prom-client's default process metrics (CPU, memory, event loop lag, GC, handles). Default true. */
  processMetrics?: boolean;
}

/** Typed handles on every metric, and helpers that keep label values consistent. */
export interface Metrics {
  readonly registry: Registry;
  /** Attempts by what became of the delivery and the answer's status class. */
  readonly deliveriesTotal: Counter<'outcome' | 'status_class'>;
  readonly attemptDuration: Histogram;
  readonly queueDepth: Gauge<'state'>;
  readonly oldestPendingAge: Gauge;
  readonly endpointFailures: Counter<'account'>;
  readonly circuitState: Gauge<'account'>;
  readonly grpcCalls: Counter<'method' | 'code'>;
  readonly grpcCallDuration: Histogram<'method'>;
  /** Contacts the sweeper sent their list again because a message of it expired (`--refresh-on-expiry`). */
  readonly expiryRefreshes: Counter;
  /** 1 while the store answers the readiness probe (`--store-probe-interval-ms`), 0 while it does not. */
  readonly storeReachable: Gauge;

  /** Counts one recorded attempt: deliveries_total, the duration histogram and, unless 2xx, endpoint_failures_total. */
  recordAttempt(event: Pick<AttemptEvent, 'accountId' | 'outcome' | 'statusCode' | 'durationMs'>): void;
  /** Sets an endpoint's circuit state (issue 7). */
  setCircuitState(accountId: string, state: CircuitStateLabel): void;
  /** Drops an account's labelled series (its webhook was deleted), so label cardinality does not only grow. */
  forgetAccount(accountId: string): void;
  /** Counts one finished gRPC call; `code` is the status name (`OK`, `INVALID_ARGUMENT`, ...). */
  recordGrpcCall(method: string, code: string, durationSeconds: number): void;
  /** The exposition text of every metric and its content type (Prometheus text format 0.0.4). */
  scrape(): Promise<{ contentType: string; body: string }>;
}

/** Counters and histograms of the delivery path, the gRPC API, and queue gauges read from the store. */
export function createMetrics(options: MetricsOptions = {}): Metrics {
  const registry = new Registry();
  const clock = options.clock ?? Date.now;

  const deliveriesTotal = new Counter({
    name: 'deliveries_total',
    help: 'Delivery attempts, by what became of the delivery (delivered, retrying, failed, superseded) and status class (2xx..5xx, error when no answer came).',
    labelNames: ['outcome', 'status_class'] as const,
    registers: [registry],
  });
  const attemptDuration = new Histogram({
    name: 'delivery_attempt_duration_seconds',
    help: 'Wall time of one webhook POST, from sending to the capped body read, in seconds.',
    buckets: [...ATTEMPT_DURATION_BUCKETS],
    registers: [registry],
  });
  const endpointFailures = new Counter({
    name: 'endpoint_failures_total',
    help: 'Attempts that did not get a 2xx answer, by account (one webhook endpoint per account).',
    labelNames: ['account'] as const,
    registers: [registry],
  });
  const circuitState = new Gauge({
    name: 'endpoint_circuit_state',
    help: 'Circuit state of an account endpoint: 0 closed, 1 half open, 2 open.',
    labelNames: ['account'] as const,
    registers: [registry],
  });
  const grpcCalls = new Counter({
    name: 'grpc_server_calls_total',
    help: 'Finished gRPC calls, by full method name and status code name.',
    labelNames: ['method', 'code'] as const,
    registers: [registry],
  });
  const grpcCallDuration = new Histogram({
    name: 'grpc_server_call_duration_seconds',
    help: 'Time from a gRPC call arriving to its status being sent, in seconds (streams: their whole life).',
    labelNames: ['method'] as const,
    buckets: [...GRPC_DURATION_BUCKETS],
    registers: [registry],
  });

  const expiryRefreshes = new Counter({
    name: 'expiry_refreshes_total',
    help: 'Contacts the sweeper gave a pending delivery because a message of a list their receiver may hold expired (--refresh-on-expiry): one more request each.',
    registers: [registry],
  });

  const storeReachable = new Gauge({
    name: 'store_reachable',
    help: 'Whether the store answered its last readiness probe (1) or not (0); while 0, gRPC health is NOT_SERVING and /readyz answers 503.',
    registers: [registry],
  });
  storeReachable.set(1);

  // One store read per scrape feeds both queue gauges: prom-client collects metrics concurrently, so the
  // second gauge joins the read the first one started.
  let inflight: Promise<QueueStats | null> | null = null;
  const readStats = (): Promise<QueueStats | null> => {
    const provider = options.statsProvider;
    if (!provider) return Promise.resolve(null);
    inflight ??= provider(clock())
      .catch((error: unknown) => {
        options.onCollectError?.(error);
        return null;
      })
      .finally(() => {
        inflight = null;
      });
    return inflight;
  };

  // Without a provider the queue gauges could only ever say nothing: they are then left out of the registry.
  const queueRegisters = options.statsProvider ? [registry] : [];
  const queueDepth = new Gauge({
    name: 'delivery_queue_depth',
    help: 'Deliveries held in the store, by state (terminal states are counted until swept).',
    labelNames: ['state'] as const,
    registers: queueRegisters,
    async collect() {
      const stats = await readStats();
      // A failed read leaves the gauge empty rather than showing stale counts as current.
      this.reset();
      if (stats === null) return;
      for (const [state, count] of Object.entries(stats.byState)) this.set({ state }, count);
    },
  });
  const oldestPendingAge = new Gauge({
    name: 'oldest_pending_delivery_age_seconds',
    help: 'How long the oldest due pending or retrying delivery has been waiting past its due time, in seconds; 0 when none is due. Deliveries of a disabled webhook are left out (they wait by design until it is enabled).',
    registers: queueRegisters,
    async collect() {
      const stats = await readStats();
      if (stats === null) {
        // NaN, not 0: an alert on the age must not read "nothing waiting" when the store could not be read.
        this.set(Number.NaN);
        return;
      }
      this.set(stats.oldestDueAt === null ? 0 : Math.max(0, clock() - stats.oldestDueAt) / 1000);
    },
  });

  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry });

  return {
    registry,
    deliveriesTotal,
    attemptDuration,
    queueDepth,
    oldestPendingAge,
    endpointFailures,
    circuitState,
    grpcCalls,
    grpcCallDuration,
    expiryRefreshes,
    storeReachable,
    recordAttempt(event) {
      const cls: StatusClass = statusClass(event.statusCode);
      const outcome: AttemptOutcomeLabel = event.outcome;
      deliveriesTotal.inc({ outcome, status_class: cls });
      attemptDuration.observe(Math.max(0, event.durationMs) / 1000);
      if (cls !== '2xx') endpointFailures.inc({ account: event.accountId });
    },
    setCircuitState(accountId, state) {
      circuitState.set({ account: accountId }, CIRCUIT_STATE_VALUES[state]);
    },
    forgetAccount(accountId) {
      endpointFailures.remove({ account: accountId });
      circuitState.remove({ account: accountId });
    },
    recordGrpcCall(method, code, durationSeconds) {
      grpcCalls.inc({ method, code });
      grpcCallDuration.observe({ method }, Math.max(0, durationSeconds));
    },
    async scrape() {
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
}
