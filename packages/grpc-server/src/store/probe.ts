/** The store's readiness probe (gRPC health, `GET /readyz`, `store_reachable`; see OPERATIONS.md). */
import { every, type Periodic } from '../periodic.js';
import { within } from '../within.js';
import type { Store } from './types.js';

/**
 * The store's readiness probe: a {@link Store.ping} every `intervalMs`. One that fails, or is not answered within the
 * interval (a database that stopped answering: the ping waits on its socket), makes the process not ready
 * (`onChange` with the problem, and the error when there is one) until one answers (`onChange(null)`); only changes are
 * told. At most one ping is outstanding: a database that stopped answering holds one pooled connection for it, not one
 * per tick, and only for the interval: the ping is then cut and its connection closed (Store.ping's `timeoutMs`), so
 * that a connection that went dead without a reset cannot keep the process not ready once the database answers new
 * ones. The first ping is an interval after the start (the start itself has just used the store).
 */
export function startStoreProbe(
  store: Pick<Store, 'ping'>,
  intervalMs: number,
  onChange: (problem: string | null, error?: unknown) => void,
): Periodic {
  let problem: string | null = null;
  let outstanding: Promise<{ error: unknown } | null> | null = null;
  const set = (next: string | null, error?: unknown) => {
    if (next === problem) return;
    problem = next;
    onChange(next, error);
  };
  return every(
    intervalMs,
    async (stopped) => {
      // Bounded by the interval: a ping stuck on a connection that went dead silently is cut (its connection closed),
      // so the next one can find the store answering on a new connection.
      outstanding ??= store
        .ping(intervalMs)
        .then(
          () => null,
          (error: unknown) => ({ error }),
        )
        .finally(() => {
          outstanding = null;
        });
      const answer = await within(outstanding, intervalMs, 'timeout' as const);
      if (stopped()) return;
      if (answer === null) set(null);
      else if (answer === 'timeout') set(`the store did not answer within ${intervalMs} ms`);
      else set('the store answered with an error', answer.error);
    },
    (error) => set('the store probe failed', error),
  );
}
