import { describe, expect, it } from 'vitest';
import { EndpointLimiter } from './limiter.js';

describe('EndpointLimiter', () => {
  it('grants at most `limit` slots per key, independently per key', () => {
    const l = new EndpointLimiter(2);
    expect(l.tryAcquire('a')).toBe(true);
    expect(l.tryAcquire('a')).toBe(true);
    expect(l.tryAcquire('a')).toBe(false);
    expect(l.tryAcquire('b')).toBe(true);
    expect(l.inFlight('a')).toBe(2);
    expect(l.inFlight('b')).toBe(1);
    expect(l.saturated()).toEqual(['a']);
    l.release('a');
    expect(l.saturated()).toEqual([]);
    expect(l.tryAcquire('a')).toBe(true);
  });

  it('hands a released slot to the first waiter of that key, in FIFO order', async () => {
    const l = new EndpointLimiter(1);
    expect(await l.acquire('a')).toBe(true);
    const order: string[] = [];
    const w1 = l.acquire('a').then((g) => order.push(`w1:${g}`));
    const w2 = l.acquire('a').then((g) => order.push(`w2:${g}`));
    expect(l.waiting('a')).toBe(2);
    expect(l.totalWaiting).toBe(2);
    // A key with waiters is saturated even if a slot were free, so claims skip it.
    expect(l.saturated()).toEqual(['a']);
    // Another key is not affected.
    expect(await l.acquire('b')).toBe(true);
    l.release('a');
    await w1;
    expect(order).toEqual(['w1:true']);
    expect(l.inFlight('a')).toBe(1);
    l.release('a');
    await w2;
    expect(order).toEqual(['w1:true', 'w2:true']);
    l.release('a');
    expect(l.inFlight('a')).toBe(0);
    expect(l.totalWaiting).toBe(0);
  });

  it('resolves false and holds nothing when the signal aborts a wait', async () => {
    const l = new EndpointLimiter(1);
    l.tryAcquire('a');
    const controller = new AbortController();
    const waiting = l.acquire('a', controller.signal);
    expect(l.totalWaiting).toBe(1);
    controller.abort();
    expect(await waiting).toBe(false);
    expect(l.totalWaiting).toBe(0);
    expect(l.inFlight('a')).toBe(1);
    l.release('a');
    expect(l.inFlight('a')).toBe(0);
    expect(await l.acquire('a', controller.signal)).toBe(true);
  });

  it('never exceeds the limit under interleaved acquire/release', async () => {
    const l = new EndpointLimiter(3);
    let active = 0;
    let maxActive = 0;
    await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        await l.acquire('k');
        active += 1;
        maxActive = Math.max(maxActive, active);
        await new Promise((r) => setTimeout(r, i % 3));
        active -= 1;
        l.release('k');
      }),
    );
    expect(maxActive).toBe(3);
    expect(l.inFlight('k')).toBe(0);
  });

  it('rejects a bad limit and a release without acquire', () => {
    expect(() => new EndpointLimiter(0)).toThrow(/limit/);
    expect(() => new EndpointLimiter(2).release('x')).toThrow(/without acquire/);
  });
});
