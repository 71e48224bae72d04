import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
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

  describe('with a rate (rateLimitPerSecond)', () => {
    let now: number;
    const clock = () => now;
    /** Moves the limiter's clock and Node's timers on together. */
    const advance = (ms: number) => {
      now += ms;
      vi.advanceTimersByTime(ms);
    };
    beforeEach(() => {
      now = 1_000;
      vi.useFakeTimers();
    });
    afterEach(() => {
      vi.useRealTimers();
    });

    it('begins at most `rate` attempts at once, then one per 1/rate s, with slots free', () => {
      const l = new EndpointLimiter(10, { clock });
      l.setRate('a', 2);
      expect(l.tryAcquire('a')).toBe(true);
      expect(l.tryAcquire('a')).toBe(true);
      expect(l.tryAcquire('a')).toBe(false);
      // Out of tokens with 8 slots free: left out of claims; another key is not.
      expect(l.saturated()).toEqual(['a']);
      expect(l.tryAcquire('b')).toBe(true);
      advance(499);
      expect(l.tryAcquire('a')).toBe(false);
      advance(1);
      expect(l.tryAcquire('a')).toBe(true);
      expect(l.tryAcquire('a')).toBe(false);
      expect(l.inFlight('a')).toBe(3);
    });

    it('grants waiters one per token, in FIFO order, while slots are free', async () => {
      const l = new EndpointLimiter(10, { clock });
      l.setRate('a', 4);
      const granted: number[] = [];
      const waits = Array.from({ length: 7 }, (_, i) =>
        l.acquire('a').then((g) => {
          expect(g).toBe(true);
          granted.push(i);
        }),
      );
      await Promise.resolve();
      expect(granted).toEqual([0, 1, 2, 3]);
      expect(l.waiting('a')).toBe(3);
      advance(249);
      await Promise.resolve();
      expect(granted).toHaveLength(4);
      advance(1);
      await Promise.resolve();
      expect(granted).toEqual([0, 1, 2, 3, 4]);
      advance(500);
      await Promise.all(waits);
      expect(granted).toEqual([0, 1, 2, 3, 4, 5, 6]);
      expect(l.inFlight('a')).toBe(7);
      expect(l.totalWaiting).toBe(0);
    });

    it('needs both a slot and a token: a released slot waits for the next token', async () => {
      const l = new EndpointLimiter(1, { clock });
      l.setRate('a', 1);
      expect(l.tryAcquire('a')).toBe(true);
      let granted = false;
      const waiting = l.acquire('a').then((g) => (granted = g));
      advance(2_000);
      await Promise.resolve();
      // The token came, the slot did not.
      expect(granted).toBe(false);
      l.release('a');
      await waiting;
      expect(granted).toBe(true);
      expect(l.inFlight('a')).toBe(1);
    });

    it('calls onReady when a key left out for want of a token has one again', () => {
      const onReady = vi.fn();
      const l = new EndpointLimiter(4, { clock, onReady });
      l.setRate('a', 2);
      l.tryAcquire('a');
      l.tryAcquire('a');
      l.release('a');
      l.release('a');
      expect(l.saturated()).toEqual(['a']);
      advance(499);
      expect(onReady).not.toHaveBeenCalled();
      advance(1);
      expect(onReady).toHaveBeenCalledTimes(1);
      expect(l.saturated()).toEqual([]);
    });

    it('calls onReady even when the token timer fired a little before the token (Node timers vs performance.now)', () => {
      const onReady = vi.fn();
      const l = new EndpointLimiter(4, { clock, onReady });
      l.setRate('a', 2);
      l.tryAcquire('a');
      l.tryAcquire('a');
      l.release('a');
      l.release('a');
      expect(l.saturated()).toEqual(['a']);
      // Node's timers count whole milliseconds of a loop time taken earlier: one may fire up to a millisecond before
      // performance.now() says its delay has passed.
      now += 499.5;
      vi.advanceTimersByTime(500);
      expect(onReady).not.toHaveBeenCalled();
      // The token comes half a millisecond later: the lanes are woken then, not at their next poll.
      now += 0.5;
      vi.advanceTimersByTime(1);
      expect(onReady).toHaveBeenCalledTimes(1);
    });

    it('keeps an idle key until its bucket is full again: no fresh burst after a release', () => {
      const l = new EndpointLimiter(4, { clock });
      l.setRate('a', 3);
      for (let i = 0; i < 3; i++) expect(l.tryAcquire('a')).toBe(true);
      for (let i = 0; i < 3; i++) l.release('a');
      l.setRate('a', 3);
      expect(l.tryAcquire('a')).toBe(false);
      advance(1_000);
      expect(l.saturated()).toEqual([]);
      // Full again: dropped, and a later rate starts with a full bucket.
      l.setRate('a', 3);
      for (let i = 0; i < 3; i++) expect(l.tryAcquire('a')).toBe(true);
      expect(l.tryAcquire('a')).toBe(false);
    });

    it('a rate removed or raised applies at once to the waiters; lowered, it keeps at most the new size', async () => {
      const l = new EndpointLimiter(10, { clock });
      l.setRate('a', 1);
      expect(l.tryAcquire('a')).toBe(true);
      const waits = [l.acquire('a'), l.acquire('a')];
      expect(l.waiting('a')).toBe(2);
      l.setRate('a', undefined);
      expect(await Promise.all(waits)).toEqual([true, true]);
      expect(l.inFlight('a')).toBe(3);

      l.setRate('b', 10);
      expect(l.tryAcquire('b')).toBe(true);
      // 9 tokens left, 2 kept.
      l.setRate('b', 2);
      expect(l.tryAcquire('b')).toBe(true);
      expect(l.tryAcquire('b')).toBe(true);
      expect(l.tryAcquire('b')).toBe(false);
    });

    it('a rate changed while a key waits for its next token (nobody queued) still calls onReady at that token', () => {
      const onReady = vi.fn();
      const l = new EndpointLimiter(4, { clock, onReady });
      l.setRate('a', 2);
      l.tryAcquire('a');
      l.tryAcquire('a');
      expect(l.saturated()).toEqual(['a']);
      // The timer armed for the next token at rate 2 (500 ms) is replaced by one at rate 4 (250 ms).
      l.setRate('a', 4);
      advance(250);
      expect(onReady).toHaveBeenCalledTimes(1);
    });

    it('tells how long a caller queued now would wait for its token, behind the waiters', () => {
      const l = new EndpointLimiter(10, { clock });
      expect(l.tokenWaitMs('a')).toBe(0);
      l.setRate('a', 4);
      expect(l.tokenWaitMs('a')).toBe(0);
      for (let i = 0; i < 4; i++) l.tryAcquire('a');
      expect(l.tokenWaitMs('a')).toBe(250);
      void l.acquire('a');
      void l.acquire('a');
      expect(l.tokenWaitMs('a')).toBe(750);
      advance(100);
      expect(l.tokenWaitMs('a')).toBe(650);
    });

    it('rejects a rate that is not a positive integer', () => {
      const l = new EndpointLimiter(2, { clock });
      expect(() => l.setRate('a', 0)).toThrow(/rate/);
      expect(() => l.setRate('a', 1.5)).toThrow(/rate/);
    });
  });
});
