import { describe, expect, it } from 'vitest';
import { DEFAULT_BACKOFF } from '@app-inbox/core';
import { EngineOptionError, resolveEngineOptions } from './engine.js';

describe('resolveEngineOptions', () => {
  it('fills in the documented defaults', () => {
    const o = resolveEngineOptions({ owner: 'w1' });
    expect(o).toEqual({
      requestTimeoutMs: 15_000,
      leaseMs: 45_000,
      pollIntervalMs: 200,
      firstLaneConcurrency: 64,
      retryLaneConcurrency: 32,
      perEndpointConcurrency: 16,
      slowAttemptMs: 2_000,
      claimBatch: 64,
      maxResponseBytes: 65_536,
      backoff: { ...DEFAULT_BACKOFF },
      owner: 'w1',
      errorDelayMs: 1_000,
      maxWaiting: 96,
      maxBodyBytesInMemory: 256 * 1024 * 1024,
    });
  });

  it('derives the lease from the request timeout and a unique owner', () => {
    const a = resolveEngineOptions({ requestTimeoutMs: 2_000 });
    const b = resolveEngineOptions({});
    expect(a.leaseMs).toBe(32_000);
    expect(a.owner).toMatch(/^.+:\d+:[0-9a-f]{8}$/);
    expect(a.owner).not.toBe(b.owner);
  });

  it('takes the request timeout of an injected sender and refuses a different one', () => {
    expect(resolveEngineOptions({}, 5_000).requestTimeoutMs).toBe(5_000);
    expect(() => resolveEngineOptions({ requestTimeoutMs: 4_000 }, 5_000)).toThrow(/requestTimeoutMs/);
  });

  it('refuses a lease that is not longer than the request timeout', () => {
    const attempt = () => resolveEngineOptions({ requestTimeoutMs: 10_000, leaseMs: 10_000 });
    expect(attempt).toThrow(EngineOptionError);
    expect(attempt).toThrow(/leaseMs/);
    try {
      attempt();
    } catch (err) {
      expect((err as EngineOptionError).code).toBe('INVALID_ENGINE_OPTION');
      expect((err as EngineOptionError).option).toBe('leaseMs');
    }
  });

  it.each([
    ['pollIntervalMs', { pollIntervalMs: 0 }],
    ['firstLaneConcurrency', { firstLaneConcurrency: -1 }],
    ['retryLaneConcurrency', { retryLaneConcurrency: 1.5 }],
    ['perEndpointConcurrency', { perEndpointConcurrency: Number.NaN }],
    ['slowAttemptMs', { slowAttemptMs: 0 }],
    ['claimBatch', { claimBatch: 0 }],
    ['maxResponseBytes', { maxResponseBytes: 0 }],
    ['errorDelayMs', { errorDelayMs: 0 }],
    ['maxWaiting', { maxWaiting: -1 }],
    ['maxBodyBytesInMemory', { maxBodyBytesInMemory: 0 }],
    ['owner', { owner: ' ' }],
  ])('names the bad option %s', (name, partial) => {
    expect(() => resolveEngineOptions(partial)).toThrow(new RegExp(`option ${name}:`));
  });

  it('validates the backoff with the core rules, naming the field', () => {
    expect(() => resolveEngineOptions({ backoff: { ...DEFAULT_BACKOFF, maxDelayMs: 10, baseDelayMs: 100 } })).toThrow(
      /backoff\.maxDelayMs/,
    );
  });
});
