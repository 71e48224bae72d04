import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { RateTokenLease } from '../store/types.js';
import { EndpointLimiter, type RateTokenSource } from './limiter.js';

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

  it('cancelWaiting ends the waits of one key: they resolve false holding nothing, the others wait on', async () => {
    const l = new EndpointLimiter(1);
    expect(l.tryAcquire('a')).toBe(true);
    expect(l.tryAcquire('b')).toBe(true);
    const a = [l.acquire('a'), l.acquire('a')];
    const b = l.acquire('b');
    l.cancelWaiting('a');
    expect(await Promise.all(a)).toEqual([false, false]);
    expect(l.waiting('a')).toBe(0);
    expect(l.totalWaiting).toBe(1);
    expect(l.inFlight('a')).toBe(1);
    l.cancelWaiting('unknown');
    l.release('b');
    expect(await b).toBe(true);
    // The slot a cancelled waiter would have had goes to the next one that asks.
    l.release('a');
    expect(l.tryAcquire('a')).toBe(true);
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

  describe('with a shared bucket (a token source: PostgreSQL)', () => {
    let now: number;
    const clock = () => now;
    const advance = (ms: number) => {
      now += ms;
      vi.advanceTimersByTime(ms);
    };
    /** Lets the promise callbacks of a settled lease run. */
    const settle = async () => {
      for (let i = 0; i < 5; i++) await Promise.resolve();
    };
    interface Call {
      key: string;
      perSecond: number;
      want: number;
      resolve: (lease: RateTokenLease) => void;
      reject: (error: unknown) => void;
    }
    /** A source whose leases the test answers, one by one. */
    const fakeSource = () => {
      const calls: Call[] = [];
      const source: RateTokenSource = {
        lease: (key, perSecond, want) =>
          new Promise<RateTokenLease>((resolve, reject) => calls.push({ key, perSecond, want, resolve, reject })),
      };
      return { calls, source };
    };
    beforeEach(() => {
      now = 1_000;
      vi.useFakeTimers();
    });
    afterEach(() => {
      vi.useRealTimers();
    });

    it('takes tokens only from leases, never by time, one lease at a time per key, sized for its waiters', async () => {
      const { calls, source } = fakeSource();
      const l = new EndpointLimiter(10, { clock, tokenSource: source });
      l.setRate('a', 20);
      // No token until a lease brings some, however long it waits; a miss alone asks for none (its claim is what
      // waits or is given back).
      expect(l.tryAcquire('a')).toBe(false);
      advance(5_000);
      expect(l.tryAcquire('a')).toBe(false);
      expect(calls).toHaveLength(0);

      const granted: number[] = [];
      const waits = [0, 1, 2].map((i) => l.acquire('a').then((g) => g && granted.push(i)));
      // The first waiter asked for a tenth of a second's worth (2); the others wait for that lease.
      expect(calls.map((c) => [c.key, c.perSecond, c.want])).toEqual([['a', 20, 2]]);
      expect(l.saturated()).toEqual(['a']);
      calls[0]!.resolve({ granted: 2, nextTokenInMs: 0 });
      await settle();
      expect(granted).toEqual([0, 1]);
      // Still one waiter: the next lease, once the first came back.
      expect(calls).toHaveLength(2);
      // The shared bucket is empty (other processes took it): the key waits for its next token, then asks again.
      calls[1]!.resolve({ granted: 0, nextTokenInMs: 40 });
      await settle();
      expect(l.tokenWaitMs('a')).toBe(40 + 50); // its next token, then one more at 20 a second for the one queued now
      advance(39);
      expect(calls).toHaveLength(2);
      advance(1);
      expect(calls).toHaveLength(3);
      calls[2]!.resolve({ granted: 2, nextTokenInMs: 0 });
      await Promise.all(waits);
      expect(granted).toEqual([0, 1, 2]);
      // The token left over is there for the next caller, with no lease.
      expect(l.tryAcquire('a')).toBe(true);
      expect(l.inFlight('a')).toBe(4);
      expect(calls).toHaveLength(3);
      // Many waiters: a lease asks for all of them, never more than a second's worth.
      l.setRate('b', 20);
      void l.acquire('b');
      expect(calls.at(-1)).toMatchObject({ key: 'b', want: 2 });
      calls.at(-1)!.resolve({ granted: 0, nextTokenInMs: 10 });
      await settle();
      for (let i = 0; i < 29; i++) void l.acquire('b');
      advance(10);
      expect(calls.at(-1)).toMatchObject({ key: 'b', want: 20 });
      expect(calls).toHaveLength(5);
    });

    it('lets leased tokens left unused expire after leasedTokenTtlMs: no saving up for a later burst', async () => {
      const { calls, source } = fakeSource();
      const l = new EndpointLimiter(100, { clock, tokenSource: source, leasedTokenTtlMs: 250 });
      l.setRate('a', 100);
      const first = l.acquire('a');
      expect(calls[0]!.want).toBe(10);
      // A slow answer: the tokens' 250 ms count from the ask, when the shared bucket may have handed them out already.
      advance(100);
      calls[0]!.resolve({ granted: 10, nextTokenInMs: 0 });
      expect(await first).toBe(true);
      // 9 tokens left, for 150 ms more.
      advance(149);
      expect(l.tryAcquire('a')).toBe(true);
      advance(1);
      expect(l.tryAcquire('a')).toBe(false);
      // Without a token but no lease on its way: claimable, so that its next claim asks for tokens.
      expect(l.saturated()).toEqual([]);
      expect(calls).toHaveLength(1);
    });

    it("calls onReady when a lease brings tokens with nobody left waiting, or when the shared bucket's next token is due", async () => {
      const { calls, source } = fakeSource();
      const onReady = vi.fn();
      const l = new EndpointLimiter(4, { clock, tokenSource: source, onReady });
      l.setRate('a', 5);
      const controller = new AbortController();
      const waiting = l.acquire('a', controller.signal);
      controller.abort();
      expect(await waiting).toBe(false);
      // Left out of claims while its lease is on its way.
      expect(l.saturated()).toEqual(['a']);
      calls[0]!.resolve({ granted: 1, nextTokenInMs: 0 });
      await settle();
      expect(onReady).toHaveBeenCalledTimes(1);
      expect(l.saturated()).toEqual([]);
      expect(l.tryAcquire('a')).toBe(true);

      const next = l.acquire('a', controller.signal);
      expect(await next).toBe(false); // the signal was aborted already: it did not queue
      const queued = new AbortController();
      const again = l.acquire('a', queued.signal);
      queued.abort();
      await again;
      calls[1]!.resolve({ granted: 0, nextTokenInMs: 200 });
      await settle();
      expect(onReady).toHaveBeenCalledTimes(1);
      expect(l.saturated()).toEqual(['a']);
      advance(200);
      expect(onReady).toHaveBeenCalledTimes(2);
      expect(l.saturated()).toEqual([]);
      expect(calls).toHaveLength(2);
    });

    it('grants the waiters of a lease that waited for a connection: T counts from when it went to the database', async () => {
      // Before: T counted from the ask, so a lease that waited longer than T for a connection of a busy pool brought
      // tokens already expired; the key asked again at once, each lease taking tokens of the shared bucket that nobody
      // used, and its waiters were never granted for as long as the pool stayed that busy.
      const { calls, source } = fakeSource();
      const l = new EndpointLimiter(10, { clock, tokenSource: source, leasedTokenTtlMs: 250 });
      l.setRate('a', 20);
      const granted: number[] = [];
      const waits = [0, 1].map((i) => l.acquire('a').then((g) => g && granted.push(i)));
      // 300 ms for a connection, then 20 ms to the answer.
      advance(320);
      calls[0]!.resolve({ granted: 2, nextTokenInMs: 0, queuedMs: 300 });
      await settle();
      expect(granted).toEqual([0, 1]);
      expect(calls).toHaveLength(1);
      await Promise.all(waits);
      // The tokens still expire T after the statement went out, not T after they came.
      const third = l.acquire('a');
      advance(1);
      calls[1]!.resolve({ granted: 2, nextTokenInMs: 0, queuedMs: 0 });
      expect(await third).toBe(true);
      advance(248);
      expect(l.tryAcquire('a')).toBe(true);
      const fourth = l.acquire('a');
      advance(1);
      expect(l.tryAcquire('a')).toBe(false);
      // A queue time longer than the whole lease took is not believed past the answer.
      advance(9);
      calls[2]!.resolve({ granted: 2, nextTokenInMs: 0, queuedMs: 10_000 });
      expect(await fourth).toBe(true);
      advance(249);
      expect(l.tryAcquire('a')).toBe(true);
      advance(1);
      expect(l.tryAcquire('a')).toBe(false);
      expect(calls).toHaveLength(3);
    });

    it('holds the tokens of a lease asked for under a higher rate to the rate set meanwhile', async () => {
      // Before: setRate held the tokens to the new size, but a lease on its way brought a tenth of a second of the old
      // rate after that: lowered from 1,000 to 1 a second, 99 more attempts began at once.
      const { calls, source } = fakeSource();
      const l = new EndpointLimiter(1_000, { clock, tokenSource: source });
      l.setRate('a', 1_000);
      const first = l.acquire('a');
      expect(calls[0]!.want).toBe(100);
      l.setRate('a', 1);
      calls[0]!.resolve({ granted: 100, nextTokenInMs: 0 });
      expect(await first).toBe(true);
      let more = 0;
      while (l.tryAcquire('a')) more += 1;
      expect(more).toBe(0);
    });

    it("a raised or removed rate ends the wait for the shared bucket's next token: the next lease asks at once", async () => {
      // Before: the wait the store had worked out at the old rate stayed, up to a second at 1 a second.
      const { calls, source } = fakeSource();
      const onReady = vi.fn();
      const l = new EndpointLimiter(10, { clock, tokenSource: source, onReady });
      l.setRate('a', 1);
      const waiting = l.acquire('a');
      // The shared bucket is empty until its next token, a second away: no lease meanwhile.
      calls[0]!.resolve({ granted: 0, nextTokenInMs: 1_000 });
      await settle();
      expect(l.tokenWaitMs('a')).toBe(1_000 + 1_000);
      l.setRate('a', 1_000);
      expect(calls).toHaveLength(2);
      expect(calls[1]).toMatchObject({ perSecond: 1_000, want: 100 });
      calls[1]!.resolve({ granted: 100, nextTokenInMs: 0 });
      expect(await waiting).toBe(true);

      // Nobody waiting, left out of claims until the shared bucket's next token: claimable again at once.
      l.setRate('b', 1);
      const gaveUp = new AbortController();
      const abandoned = l.acquire('b', gaveUp.signal);
      calls[2]!.resolve({ granted: 0, nextTokenInMs: 1_000 });
      await settle();
      gaveUp.abort();
      expect(await abandoned).toBe(false);
      expect(l.waiting('b')).toBe(0);
      expect(l.saturated()).toContain('b');
      onReady.mockClear();
      l.setRate('b', undefined);
      expect(onReady).toHaveBeenCalledTimes(1);
      expect(l.saturated()).not.toContain('b');
      expect(l.tryAcquire('b')).toBe(true);
    });

    it("a lowered rate keeps the wait for the shared bucket's next token, and a raised one the pause after a failed lease", async () => {
      const { calls, source } = fakeSource();
      const l = new EndpointLimiter(10, { clock, tokenSource: source, leaseRetryMs: 100 });
      l.setRate('a', 10);
      const first = l.acquire('a');
      calls[0]!.resolve({ granted: 0, nextTokenInMs: 80 });
      await settle();
      l.setRate('a', 5);
      expect(calls).toHaveLength(1);
      advance(80);
      expect(calls).toHaveLength(2);
      calls[1]!.reject(new Error('connection refused'));
      await settle();
      l.setRate('a', 1_000);
      expect(calls).toHaveLength(2);
      advance(100);
      expect(calls).toHaveLength(3);
      expect(calls[2]!.perSecond).toBe(1_000);
      calls[2]!.resolve({ granted: 1, nextTokenInMs: 0 });
      expect(await first).toBe(true);
    });

    it('does not wedge a key whose lease fails: asks again after leaseRetryMs, reporting once per streak', async () => {
      const { calls, source } = fakeSource();
      const errors: unknown[] = [];
      let throwNext = false;
      const throwing: RateTokenSource = {
        lease: (key, perSecond, want) => {
          if (throwNext) throw new Error('thrown');
          return source.lease(key, perSecond, want);
        },
      };
      const l = new EndpointLimiter(4, {
        clock,
        tokenSource: throwing,
        leaseRetryMs: 100,
        onLeaseError: (key, error) => errors.push([key, (error as Error).message]),
      });
      l.setRate('a', 5);
      const waiting = l.acquire('a');
      calls[0]!.reject(new Error('connection refused'));
      await settle();
      expect(errors).toEqual([['a', 'connection refused']]);
      // It waits, claims leave it out meanwhile, then it asks again.
      expect(l.saturated()).toEqual(['a']);
      expect(l.tokenWaitMs('a')).toBe(100 + 200);
      advance(99);
      expect(calls).toHaveLength(1);
      throwNext = true;
      advance(1);
      await settle();
      // A source that throws is a failed lease as well; same streak, not reported again.
      expect(errors).toHaveLength(1);
      throwNext = false;
      advance(100);
      expect(calls).toHaveLength(2);
      calls[1]!.resolve({ granted: 1, nextTokenInMs: 200 });
      expect(await waiting).toBe(true);
      // A success ended the streak: the next failure is reported again.
      const next = l.acquire('a');
      advance(200);
      calls[2]!.reject(new Error('timeout'));
      await settle();
      expect(errors).toEqual([
        ['a', 'connection refused'],
        ['a', 'timeout'],
      ]);
      advance(100);
      calls[3]!.resolve({ granted: 1, nextTokenInMs: 200 });
      expect(await next).toBe(true);
    });
  });
});
