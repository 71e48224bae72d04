/**
 * A tiny HTTP server for Prometheus and probes, on its own port so that it never shares a listener with
 * the gRPC API: `GET /metrics` (text exposition format), `GET /healthz` (liveness) and `GET /readyz` (readiness).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Metrics } from './metrics.js';

/** Default listen address of the metrics server (9464 is the port commonly used by Prometheus exporters of OpenTelemetry). */
export const DEFAULT_METRICS_ADDRESS = '127.0.0.1:9464';

export interface MetricsServerOptions {
  /** Interface to listen on. Default `127.0.0.1` (loopback only: expose it on purpose, e.g. `0.0.0.0`). */
  host?: string;
  /** TCP port; 0 picks a free one (tests). Default 9464. */
  port?: number;
  metrics: Pick<Metrics, 'scrape'>;
  /**
   * Readiness for `/healthz`: true answers 200, false 503 (e.g. while shutting down, so a load balancer
   * drains). Default: always healthy while the process serves HTTP.
   */
  healthy?: () => boolean | Promise<boolean>;
  /**
   * Readiness for `/readyz`: null answers 200 `ready`, a reason 503 `not ready: <reason>` (shutting down, the store
   * not answering). A load balancer or Kubernetes readiness probe takes the process out of service meanwhile;
   * `/healthz` stays the liveness probe (a process whose database is down is not restarted for it). Default: ready
   * whenever `healthy` is true.
   */
  notReady?: () => string | null | Promise<string | null>;
  /** Told when a scrape fails (the answer is then a 500). Default: ignored. */
  onError?: (error: unknown) => void;
}

export interface RunningMetricsServer {
  /** Base URL, e.g. `http://127.0.0.1:9464` (the bound port when 0 was asked). */
  readonly url: string;
  readonly port: number;
  /** Stops listening and cuts idle keep-alive connections (a scraper's). Idempotent. */
  close(): Promise<void>;
}

/** Error thrown for an invalid metrics server option. */
export class MetricsServerOptionError extends Error {
  readonly code = 'INVALID_METRICS_SERVER_OPTION';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`metrics server option ${option}: ${message}`);
    this.name = 'MetricsServerOptionError';
  }
}

/**
 * Parses a `host:port` listen address (`[::1]:9464` for IPv6), naming `option` in the error.
 * @throws MetricsServerOptionError
 */
export function parseListenAddress(address: string, option = 'metricsAddress'): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(address.trim());
  const host = match?.[1] ?? match?.[2];
  const port = Number(match?.[3]);
  if (!match || host === undefined || !Number.isInteger(port) || port > 65_535) {
    throw new MetricsServerOptionError(
      option,
      `must be host:port with a port in 0..65535, got ${JSON.stringify(address)}`,
    );
  }
  return { host, port };
}

function send(res: ServerResponse, status: number, contentType: string, body: string, head: boolean): void {
  res.writeHead(status, {
    'content-type': contentType,
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(head ? undefined : body);
}

/** Starts the metrics HTTP server; resolves once it listens. */
export async function startMetricsServer(options: MetricsServerOptions): Promise<RunningMetricsServer> {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 9464;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new MetricsServerOptionError('port', `must be an integer in 0..65535, got ${String(port)}`);
  }
  const { metrics } = options;
  const healthy = options.healthy ?? (() => true);
  const notReady = options.notReady ?? (async () => ((await healthy()) ? null : 'shutting down'));
  const paths = new Set(['/metrics', '/healthz', '/readyz']);

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?')[0];
    const head = req.method === 'HEAD';
    if (path === undefined || !paths.has(path)) {
      send(res, 404, 'text/plain; charset=utf-8', 'not found: try /metrics, /healthz or /readyz\n', head);
      return;
    }
    if (req.method !== 'GET' && !head) {
      res.setHeader('allow', 'GET, HEAD');
      send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', false);
      return;
    }
    if (path === '/healthz') {
      const ok = await healthy();
      send(res, ok ? 200 : 503, 'text/plain; charset=utf-8', ok ? 'ok\n' : 'unavailable\n', head);
      return;
    }
    if (path === '/readyz') {
      const reason = await notReady();
      send(
        res,
        reason === null ? 200 : 503,
        'text/plain; charset=utf-8',
        reason === null ? 'ready\n' : `not ready: ${reason}\n`,
        head,
      );
      return;
    }
    const { contentType, body } = await metrics.scrape();
    send(res, 200, contentType, body, head);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      options.onError?.(error);
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'scrape failed\n', false);
      else res.destroy();
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  const urlHost = host.includes(':') ? `[${host}]` : host;

  let closing: Promise<void> | null = null;
  return {
    url: `http://${urlHost}:${bound}`,
    port: bound,
    close() {
      closing ??= new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        // Scrapers keep connections alive; without this `close` would wait for them to time out.
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
