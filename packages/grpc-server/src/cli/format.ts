/**
 * Human output of the command-line client: aligned tables, key/value blocks, readable times and states.
 * (With `--json` the API's own JSON form is printed instead, as `buf curl` shows it.)
 */
import {
  DeliveryState,
  attemptVerdictToJSON,
  deliveryStateFromJSON,
  deliveryStateToJSON,
  type AttemptVerdict,
} from '../gen/app_inbox/v1/delivery.js';
import { circuitStateToJSON, type CircuitState } from '../gen/app_inbox/v1/webhook.js';

/** Delivery states by their short name, as `--state` takes them and tables show them. */
export const STATE_NAMES = ['pending', 'in_flight', 'retrying', 'delivered', 'failed', 'superseded'] as const;
export type StateName = (typeof STATE_NAMES)[number];

/** `delivered` for DELIVERY_STATE_DELIVERED. */
export function stateName(state: DeliveryState): string {
  return deliveryStateToJSON(state)
    .replace(/^DELIVERY_STATE_/, '')
    .toLowerCase();
}

/** DELIVERY_STATE_DELIVERED for `delivered`; null for a name that is not a state. */
export function stateFromName(name: string): DeliveryState | null {
  const state = deliveryStateFromJSON(`DELIVERY_STATE_${name.trim().toUpperCase()}`);
  return state === DeliveryState.UNRECOGNIZED || state === DeliveryState.DELIVERY_STATE_UNSPECIFIED ? null : state;
}

export function verdictName(verdict: AttemptVerdict): string {
  return attemptVerdictToJSON(verdict)
    .replace(/^ATTEMPT_VERDICT_/, '')
    .toLowerCase();
}

export function circuitName(state: CircuitState): string {
  return circuitStateToJSON(state)
    .replace(/^CIRCUIT_STATE_/, '')
    .toLowerCase();
}

/** An ISO time (UTC) of milliseconds since the epoch; `-` for none. */
export function time(ms: number | undefined | null): string {
  return ms === undefined || ms === null || ms === 0 ? '-' : new Date(ms).toISOString();
}

/** `1,234` */
export function count(n: number): string {
  return n.toLocaleString('en-US');
}

/** Rows aligned in columns under a header; every line ends with a newline. */
export function table(headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].map((l) => `${l}\n`).join('');
}

/** `key   value` lines, keys aligned. */
export function keyValues(pairs: ReadonlyArray<readonly [string, string]>): string {
  const width = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${k.padEnd(width)}  ${v}\n`).join('');
}

/** JSON for `--json`: two-space indented, newline-terminated. */
export function json(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}
