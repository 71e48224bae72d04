/**
 * Small numeric helpers of the benchmark: wall clock with sub-millisecond resolution that two processes of
 * the same machine agree on, percentiles, rates and the formatting of figures.
 */
import { performance } from 'node:perf_hooks';

/**
 * Milliseconds since the epoch with microsecond resolution. `performance.timeOrigin` is the epoch time of
 * this process's start, so the value is comparable between the bench, the receiver and the server (same
 * system clock), unlike `performance.now()` alone.
 */
export function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

/** The `p`-th percentile (0-100) of `values` by nearest rank; NaN for no values. Sorts a copy. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = Float64Array.from(values).sort();
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

/** Events per second; 0 when no time passed. */
export function rate(count: number, ms: number): number {
  return ms > 0 ? (count * 1000) / ms : 0;
}

/** `12,345` style integer, or a number with `digits` decimals. */
export function fmt(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return 'n/a';
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Milliseconds as `850 ms` or `12.3 s`. */
export function fmtDuration(ms: number): string {
  return ms < 10_000 ? `${fmt(ms, ms < 100 ? 1 : 0)} ms` : `${fmt(ms / 1000, 1)} s`;
}

/** Bytes as MiB with one decimal. */
export function mib(bytes: number): number {
  return bytes / (1024 * 1024);
}

/** Waits `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `probe` every `everyMs` until it returns true; false when `timeoutMs` passed first. */
export async function waitFor(
  probe: () => Promise<boolean> | boolean,
  timeoutMs: number,
  everyMs = 50,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(everyMs);
  }
}
