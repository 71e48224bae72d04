/**
 * Fixtures for engine tests: a real SQLite store in a temp directory, message builders, and a poller.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StoredMessage } from '@app-inbox/core';
import { openSqliteStore, type SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import type { BackoffOptions } from '@app-inbox/core';

export interface TestStore {
  store: SqliteStore;
  path: string;
  dispose(): Promise<void>;
}

/** A migrated SQLite store in a fresh temp directory; `dispose` closes it and removes the directory. */
export async function createTestStore(): Promise<TestStore> {
  const dir = await mkdtemp(join(tmpdir(), 'delivery-engine-'));
  const path = join(dir, 'store.db');
  const store = await openSqliteStore({ path, synchronous: 'normal' });
  return {
    store,
    path,
    async dispose() {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Fast retries for tests: 20 ms doubling, no jitter, Retry-After not raised. */
export const FAST_BACKOFF: BackoffOptions = {
  baseDelayMs: 20,
  maxDelayMs: 200,
  maxAttempts: 50,
  maxAgeMs: 60_000,
  retryAfterMinMs: 0,
  retryAfterMaxMs: 1_000,
  jitter: 0,
};

let clockSeq = 0;

/** A message of `contact`, created `createdDate` (default: increasing, so later calls are newer), valid for 1 h. */
export function message(contact: string, overrides: Partial<StoredMessage> = {}): StoredMessage {
  clockSeq += 1;
  return {
    externalCustomerId: contact,
    id: randomUUID(),
    createdDate: Date.now() + clockSeq,
    title: `title ${clockSeq}`,
    content: `content ${clockSeq}`,
    category: 'news',
    expiresAt: Date.now() + 3_600_000,
    ...overrides,
  };
}

/** Polls `check` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function waitFor<T>(
  check: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  timeoutMs = 5_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
