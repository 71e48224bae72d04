/**
 * The HTTP side of a delivery: one undici Agent (a keep-alive Pool per origin, without a cap on its connections
 * unless asked: the engine bounds each account's attempts in flight), a request timeout, a capped response-body
 * read, no redirects followed, and thrown errors mapped to stable codes that the core classifier understands.
 * @see SPEC §5
 */
import { performance } from 'node:perf_hooks';
import { Agent } from 'undici';
import { errorKind, type AttemptOutcome } from '@app-inbox/core';
import {
  AddressPolicyError,
  assertUrlAllowed,
  createGuardedConnector,
  type AddressPolicy,
  type Resolver,
} from '../security/ssrf.js';

/** Code of an attempt cut by the sender's own request timeout (the errno name of a timed-out connection). */
export const TIMEOUT_CODE = 'ETIMEDOUT';
/** Code of an attempt aborted by the caller's signal (shutdown); such an attempt is not a receiver answer. */
export const ABORTED_CODE = 'UND_ERR_ABORTED';
/** Code of an attempt whose URL cannot be parsed or is not http(s). */
export const INVALID_URL_CODE = 'ERR_INVALID_URL';
/** Code used when a thrown error carries no code at all. */
export const UNKNOWN_ERROR_CODE = 'UND_ERR';

export interface SenderOptions {
  /**
   * Whole-request timeout (milliseconds): connect, send, headers and the capped body read together.
   * Default 15,000. @see SPEC §5 (timeout is retried)
   */
  requestTimeoutMs?: number;
  /** At most this many bytes of a response body are read; the rest is discarded (bytes). Default 65,536. */
  maxResponseBytes?: number;
  /**
   * Connections per origin (scheme://host:port); further requests queue in the pool, their timeout running.
   * Default: no cap. The delivery engine bounds each account's attempts in flight itself (its endpoint limiter);
   * a cap here would be shared by every account whose webhook is on the same host, so that one hanging
   * endpoint would hold the connections and time out the attempts of the others (issue 7, isolation).
   */
  connectionsPerOrigin?: number;
  /** How long an idle keep-alive connection is kept (milliseconds). Default 4,000 (below Node's 5 s server default). */
  keepAliveTimeoutMs?: number;
  /**
   * SSRF guard: which destinations may be connected to, checked on the addresses actually connected to
   * (so DNS rebinding fails); a refused one is the error code `blocked_address` (core: failed, not retried).
   * Default: none, every address is allowed — the server always passes its configured policy
   * (`--webhook-allow-private`, `--webhook-allow-list`). @see SECURITY.md, issue 7 "SSRF protection"
   */
  addressPolicy?: AddressPolicy;
  /** Resolver of host names for the guarded connect (tests inject one). Default: the system resolver. */
  resolve?: Resolver;
}

/** The result of one POST: the outcome the core classifier takes, and what the attempt row records. */
export interface AttemptOutcomeWithTiming {
  outcome: AttemptOutcome;
  /** Wall time of the attempt (milliseconds). */
  durationMs: number;
  /** HTTP status when an answer came, else null. */
  statusCode: number | null;
  /** Stable error kind (core `errorKind`) when no answer came, else null. */
  errorKind: string | null;
}

export interface Sender {
  /** The whole-request timeout this sender applies (milliseconds); the engine's lease must be longer. */
  readonly requestTimeoutMs: number;
  /**
   * POSTs `body` to `url`. Never throws for a network or HTTP failure: every failure is an outcome.
   * An abort through `signal` yields the error code {@link ABORTED_CODE}.
   */
  send(
    url: string,
    headers: Record<string, string>,
    body: Uint8Array,
    signal?: AbortSignal,
  ): Promise<AttemptOutcomeWithTiming>;
  /** Closes every pooled connection (waits for requests in flight). */
  close(): Promise<void>;
}

/** Error thrown for an invalid sender option. */
export class SenderOptionError extends Error {
  readonly code = 'INVALID_SENDER_OPTION';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`sender option ${option}: ${message}`);
    this.name = 'SenderOptionError';
  }
}

function positiveInt(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v <= 0)
    throw new SenderOptionError(name, `must be a positive integer, got ${String(v)}`);
  return v;
}

/**
 * The stable code of a thrown error: its own `code`, else its `cause`'s, else that of the first inner error
 * of an AggregateError (happy-eyeballs connects). Messages are never looked at.
 */
export function errorCodeOf(err: unknown): string {
  const queue: unknown[] = [err];
  const seen = new Set<unknown>();
  while (queue.length > 0) {
    const e = queue.shift();
    if (e === null || typeof e !== 'object' || seen.has(e)) continue;
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && code.length > 0) return code;
    queue.push((e as { cause?: unknown }).cause);
    const inner = (e as { errors?: unknown }).errors;
    if (Array.isArray(inner)) queue.push(...inner);
  }
  return UNKNOWN_ERROR_CODE;
}

function errorOutcome(code: string, durationMs: number): AttemptOutcomeWithTiming {
  return { outcome: { kind: 'error', code }, durationMs, statusCode: null, errorKind: errorKind(code) };
}

/** Creates a sender; close it when done. */
export function createSender(options: SenderOptions = {}): Sender {
  const requestTimeoutMs = positiveInt('requestTimeoutMs', options.requestTimeoutMs, 15_000);
  const maxResponseBytes = positiveInt('maxResponseBytes', options.maxResponseBytes, 64 * 1024);
  const connections =
    options.connectionsPerOrigin === undefined
      ? null
      : positiveInt('connectionsPerOrigin', options.connectionsPerOrigin, 1);
  const keepAliveTimeout = positiveInt('keepAliveTimeoutMs', options.keepAliveTimeoutMs, 4_000);
  const policy = options.addressPolicy;

  // An Agent keeps one Pool per origin, each with keep-alive sockets (at most `connections` when given) and one
  // request per socket (no pipelining). undici 7 follows no redirect unless a redirect interceptor is composed in, and
  // none is: a 3xx is just a status for the classifier.
  // The attempt's own timer (below) is the authority on the whole-request timeout, so its code is stable;
  // undici's connect/headers/body timeouts are a backstop set just beyond it.
  const backstopMs = requestTimeoutMs + 1_000;
  const agent = new Agent({
    connections,
    pipelining: 1,
    keepAliveTimeout,
    headersTimeout: backstopMs,
    bodyTimeout: backstopMs,
    connect:
      policy === undefined
        ? { timeout: backstopMs }
        : createGuardedConnector(policy, {
            timeout: backstopMs,
            ...(options.resolve ? { resolve: options.resolve } : {}),
          }),
  });

  async function send(
    url: string,
    headers: Record<string, string>,
    body: Uint8Array,
    signal?: AbortSignal,
  ): Promise<AttemptOutcomeWithTiming> {
    const started = performance.now();
    const elapsed = () => Math.round(performance.now() - started);

    let target: URL;
    try {
      target = new URL(url);
    } catch {
      return errorOutcome(INVALID_URL_CODE, elapsed());
    }
    if (target.protocol !== 'http:' && target.protocol !== 'https:') return errorOutcome(INVALID_URL_CODE, elapsed());
    if (policy !== undefined) {
      // A refused IP literal fails before any socket; host names are checked by the guarded connector on
      // the addresses it resolves right before connecting.
      try {
        assertUrlAllowed(url, policy);
      } catch (err) {
        if (err instanceof AddressPolicyError) {
          return errorOutcome(err.code === 'blocked_address' ? err.code : INVALID_URL_CODE, elapsed());
        }
        throw err;
      }
    }
    if (signal?.aborted) return errorOutcome(ABORTED_CODE, elapsed());

    // One controller for the whole attempt: our timeout or the caller's abort, whichever comes first.
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, requestTimeoutMs);
    const onAbort = () => controller.abort();
    signal?.addEventListener('abort', onAbort, { once: true });

    try {
      const res = await agent.request({
        origin: target.origin,
        path: `${target.pathname}${target.search}`,
        method: 'POST',
        headers,
        body,
        signal: controller.signal,
      });
      // The status has arrived, so the attempt is classified by it whatever happens to the body: read at most
      // `maxResponseBytes` (keeping the connection reusable for small bodies) and destroy the rest.
      let received = 0;
      try {
        for await (const chunk of res.body) {
          received += (chunk as Buffer).length;
          if (received > maxResponseBytes) {
            res.body.destroy();
            break;
          }
        }
      } catch {
        // A body cut by the timeout, the cap or the peer does not change the answer already given.
      }
      const retryAfterHeader = res.headers['retry-after'];
      const retryAfter = Array.isArray(retryAfterHeader) ? retryAfterHeader[0] : retryAfterHeader;
      return {
        outcome:
          retryAfter === undefined
            ? { kind: 'response', status: res.statusCode }
            : { kind: 'response', status: res.statusCode, retryAfter },
        durationMs: elapsed(),
        statusCode: res.statusCode,
        errorKind: null,
      };
    } catch (err) {
      // Which signal fired decides, not the error text: our timer is a timeout, the caller's is an abort.
      if (timedOut) return errorOutcome(TIMEOUT_CODE, elapsed());
      if (signal?.aborted) return errorOutcome(ABORTED_CODE, elapsed());
      return errorOutcome(errorCodeOf(err), elapsed());
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  return {
    requestTimeoutMs,
    send,
    close: () => agent.close(),
  };
}
