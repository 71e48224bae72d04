import { classify, type Classification } from '@app-inbox/core';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createTestStore, FAST_BACKOFF, message, sleep, waitFor } from '../../test/delivery/engine-fixtures.js';
import { startReceiver } from '../../test/delivery/http-receiver.js';
import {
  CircuitBreaker,
  CircuitOptionError,
  resolveCircuitOptions,
  resumeSavedEndpoints,
  type CircuitOptions,
} from './circuit.js';
import { DeliveryEngine } from './engine.js';
import type { CircuitState } from '../store/types.js';

const OPTIONS: CircuitOptions = {
  openAfterMs: 1_000,
  minFailures: 3,
  probeIntervalMs: 100,
  maxProbeIntervalMs: 350,
  probeTimeoutMs: 5_000,
  holdMaxMs: 10_000,
};

const T0 = 1_700_000_000_000;
const status = (code: number): Classification => classify({ kind: 'response', status: code }, T0);
const refused: Classification = classify({ kind: 'error', code: 'ECONNREFUSED' }, T0);

function breaker(options: Partial<CircuitOptions> = {}) {
  const changes: Array<[string, CircuitState]> = [];
  const circuit = new CircuitBreaker({
    options: { ...OPTIONS, ...options },
    onStateChange: (account, state) => changes.push([account, state]),
  });
  const attempt = (accountId: string, at: number, classification: Classification) =>
    circuit.onAttempt({
      accountId,
      deliveryId: 'd',
      classification,
      statusCode: null,
      errorKind: null,
      durationMs: 1,
      at,
    });
  return { circuit, changes, attempt };
}

describe('CircuitBreaker', () => {
  it('opens only when failures span openAfterMs AND number minFailures', () => {
    const { circuit, changes, attempt } = breaker();
    // Many failures in a short time: not long enough.
    for (let i = 0; i < 10; i++) attempt('a', T0 + i * 10, status(503));
    expect(circuit.view('a')).toMatchObject({ state: 'closed', consecutiveFailures: 10, failingSince: T0 });
    // Long enough, but only two failures.
    attempt('b', T0, status(503));
    attempt('b', T0 + 5_000, refused);
    expect(circuit.view('b').state).toBe('closed');
    // The next failure of `a` past openAfterMs opens it.
    attempt('a', T0 + 1_000, status(500));
    expect(circuit.view('a')).toEqual({
      state: 'open',
      since: T0 + 1_000,
      consecutiveFailures: 11,
      failingSince: T0,
      nextProbeAt: T0 + 1_100,
      heldUntil: null,
    });
    expect(changes).toEqual([['a', 'open']]);
    expect(circuit.pausedAccounts(T0 + 1_000)).toEqual(['a']);
  });

  it('a 2xx resets the run of failures', () => {
    const { circuit, attempt } = breaker();
    attempt('a', T0, status(503));
    attempt('a', T0 + 600, status(503));
    attempt('a', T0 + 700, status(200));
    attempt('a', T0 + 800, status(503));
    attempt('a', T0 + 1_200, status(503));
    attempt('a', T0 + 1_500, status(503));
    // Three failures, but they began at +800: only 700 ms of failing.
    expect(circuit.view('a')).toMatchObject({ state: 'closed', consecutiveFailures: 3, failingSince: T0 + 800 });
    attempt('a', T0 + 1_800, status(503));
    expect(circuit.view('a').state).toBe('open');
  });

  it('410 Gone opens the circuit at once, without probes, until it is reset', () => {
    const { circuit, changes, attempt } = breaker();
    attempt('a', T0, status(410));
    expect(circuit.view('a')).toMatchObject({ state: 'open', consecutiveFailures: 1, nextProbeAt: null });
    expect(changes).toEqual([['a', 'open']]);
    // Long after any probe interval: still paused, nothing admitted (a probe answered 410 would fail for good).
    expect(circuit.pausedAccounts(T0 + 1e9)).toEqual(['a']);
    expect(circuit.admit('a', T0 + 1e9)).toBe(false);
    circuit.reset('a');
    expect(circuit.admit('a', T0 + 1e9)).toBe(true);
  });

  it('resumes a 410-paused endpoint once its stored webhook is another save than the one the 410 answered', async () => {
    const { circuit } = breaker();
    const gone = (accountId: string, at: number, webhookUpdatedAt: number) =>
      circuit.onAttempt({
        accountId,
        deliveryId: 'd',
        classification: status(410),
        statusCode: 410,
        errorKind: null,
        durationMs: 1,
        at,
        webhookUpdatedAt,
      });
    gone('same', T0, 500);
    gone('older-clock', T0, 500);
    gone('deleted', T0, 500);
    // A late 410 answering an older save than the one that paused it: the newer one is still answered.
    gone('late', T0, 500);
    gone('late', T0 + 1, 300);
    gone('unreadable', T0, 500);
    const stored: Record<string, number | null> = {
      same: 500,
      'older-clock': 400,
      deleted: null,
      late: 500,
      unreadable: 500,
    };
    const errors: string[] = [];
    // A save by a process whose clock is behind still counts: saves are told apart, not clocks compared. One
    // account's read failing does not stop the others.
    expect(
      await resumeSavedEndpoints(
        circuit,
        async (a) => {
          if (a === 'unreadable') throw new Error('secret cannot be opened');
          return stored[a] ?? null;
        },
        () => false,
        (a) => errors.push(a),
      ),
    ).toEqual(['older-clock', 'deleted']);
    expect(errors).toEqual(['unreadable']);
    expect(circuit.view('late').state).toBe('open');
    expect(circuit.view('same').state).toBe('open');
    expect(circuit.view('older-clock').state).toBe('closed');

    // Paused again meanwhile by a 410 answering the newer save: the check that read the older one leaves it paused.
    gone('again', T0, 500);
    const checking = resumeSavedEndpoints(circuit, async (a) => {
      if (a !== 'again') return stored[a] ?? null;
      circuit.reset('again');
      gone('again', T0 + 1, 600);
      return 600;
    });
    expect(await checking).toEqual([]);
    expect(circuit.view('again')).toMatchObject({ state: 'open', nextProbeAt: null });
  });

  it('keeps a 410 pause when a late 2xx for the same save of the webhook arrives, not for a newer save', () => {
    const { circuit } = breaker();
    const answered = (code: number, at: number, webhookUpdatedAt: number) =>
      circuit.onAttempt({
        accountId: 'a',
        deliveryId: 'd',
        classification: status(code),
        statusCode: code,
        errorKind: null,
        durationMs: 1,
        at,
        webhookUpdatedAt,
      });
    answered(410, T0, 500);
    // An attempt sent before the 410 (same save) comes back 200: the endpoint said it is gone since.
    answered(200, T0 + 1, 500);
    expect(circuit.view('a')).toMatchObject({ state: 'open', nextProbeAt: null });
    // One sent with a newer save (another process's) succeeds: that endpoint is back.
    answered(200, T0 + 2, 600);
    expect(circuit.view('a').state).toBe('closed');
  });

  it('a 410 on an endpoint already open for other failures stops its probes too', () => {
    const { circuit, changes, attempt } = breaker({ openAfterMs: 0, minFailures: 1 });
    attempt('a', T0, status(503));
    expect(circuit.view('a').nextProbeAt).toBe(T0 + 100);
    // An attempt that started before the circuit opened comes back 410.
    attempt('a', T0 + 10, status(410));
    expect(circuit.view('a')).toMatchObject({ state: 'open', nextProbeAt: null });
    expect(circuit.admit('a', T0 + 1e9)).toBe(false);
    // The probe that was out when the 410 came: its failure keeps the circuit open, still without probes.
    attempt('a', T0, status(503));
    attempt('b', T0, status(503));
    expect(circuit.admit('b', T0 + 100)).toBe(true);
    attempt('b', T0 + 101, status(410));
    expect(circuit.view('b')).toMatchObject({ state: 'open', nextProbeAt: null });
    expect(changes.filter(([account]) => account === 'a')).toEqual([
      ['a', 'open'],
      ['a', 'open'],
    ]);
  });

  it('lets exactly one probe through when the probe interval has passed, and a 2xx closes the circuit', () => {
    const { circuit, changes, attempt } = breaker({ openAfterMs: 0, minFailures: 1 });
    attempt('a', T0, status(503));
    expect(circuit.admit('a', T0 + 99)).toBe(false);
    expect(circuit.pausedAccounts(T0 + 99)).toEqual(['a']);
    // Due: no longer excluded from claims; the first claimed delivery is the probe, the others wait.
    expect(circuit.pausedAccounts(T0 + 100)).toEqual([]);
    expect(circuit.admit('a', T0 + 100)).toBe(true);
    expect(circuit.view('a').state).toBe('half_open');
    expect(circuit.admit('a', T0 + 100)).toBe(false);
    expect(circuit.pausedAccounts(T0 + 101)).toEqual(['a']);
    attempt('a', T0 + 150, status(204));
    expect(circuit.view('a')).toEqual({
      state: 'closed',
      since: null,
      consecutiveFailures: 0,
      failingSince: null,
      nextProbeAt: null,
      heldUntil: null,
    });
    expect(circuit.admit('a', T0 + 151)).toBe(true);
    expect(circuit.pausedAccounts(T0 + 151)).toEqual([]);
    expect(changes).toEqual([
      ['a', 'open'],
      ['a', 'half_open'],
      ['a', 'closed'],
    ]);
  });

  it('a failed probe reopens with twice the interval, capped at maxProbeIntervalMs', () => {
    const { circuit, attempt } = breaker({ openAfterMs: 0, minFailures: 1 });
    attempt('a', T0, status(503));
    const waits: number[] = [];
    let now = T0;
    for (let i = 0; i < 4; i++) {
      const next = circuit.view('a').nextProbeAt ?? 0;
      waits.push(next - now);
      now = next;
      expect(circuit.admit('a', now)).toBe(true);
      attempt('a', now, status(502));
    }
    expect(waits).toEqual([100, 200, 350, 350]);
    expect(circuit.view('a')).toMatchObject({ state: 'open', consecutiveFailures: 5, nextProbeAt: now + 350 });
  });

  it('lets another probe through when the one out never reports (its claim was given back)', () => {
    const { circuit, attempt } = breaker({ openAfterMs: 0, minFailures: 1, probeTimeoutMs: 1_000 });
    attempt('a', T0, status(503));
    expect(circuit.admit('a', T0 + 100)).toBe(true);
    expect(circuit.admit('a', T0 + 1_099)).toBe(false);
    expect(circuit.pausedAccounts(T0 + 1_099)).toEqual(['a']);
    expect(circuit.pausedAccounts(T0 + 1_100)).toEqual([]);
    expect(circuit.admit('a', T0 + 1_100)).toBe(true);
    expect(circuit.admit('a', T0 + 1_101)).toBe(false);
  });

  it('a failure recorded while open (an attempt started before) keeps the probe schedule; a late 2xx closes', () => {
    const { circuit, attempt } = breaker({ openAfterMs: 0, minFailures: 1 });
    attempt('a', T0, status(503));
    attempt('a', T0 + 50, status(503));
    expect(circuit.view('a')).toMatchObject({ state: 'open', consecutiveFailures: 2, nextProbeAt: T0 + 100 });
    attempt('a', T0 + 60, status(200));
    expect(circuit.view('a').state).toBe('closed');
  });

  it('keeps endpoints apart: one open circuit pauses only its account', () => {
    const { circuit, attempt } = breaker({ openAfterMs: 0, minFailures: 1 });
    attempt('bad', T0, refused);
    attempt('good', T0, status(200));
    expect(circuit.pausedAccounts(T0 + 1)).toEqual(['bad']);
    expect(circuit.admit('good', T0 + 1)).toBe(true);
    expect([...circuit.notClosed().keys()]).toEqual(['bad']);
  });

  it('reset forgets the circuit (webhook reconfigured or deleted) and reports it closed', () => {
    const { circuit, changes, attempt } = breaker();
    attempt('a', T0, status(410));
    circuit.reset('a');
    circuit.reset('never-failed');
    expect(circuit.view('a').state).toBe('closed');
    expect(circuit.pausedAccounts(T0 + 1)).toEqual([]);
    expect(changes).toEqual([
      ['a', 'open'],
      ['a', 'closed'],
    ]);
  });

  it('a throwing listener does not break the breaker', () => {
    const circuit = new CircuitBreaker({
      options: { openAfterMs: 0, minFailures: 1 },
      onStateChange: () => {
        throw new Error('metrics down');
      },
    });
    circuit.onAttempt({
      accountId: 'a',
      deliveryId: 'd',
      classification: status(503),
      statusCode: 503,
      errorKind: null,
      durationMs: 1,
      at: T0,
    });
    expect(circuit.view('a').state).toBe('open');
  });

  it('property: admitted exactly when not paused, and never more than one probe out', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            step: fc.integer({ min: 0, max: 300 }),
            action: fc.constantFrom('admit', 'admit', 'fail', 'ok', 'gone'),
          }),
          { maxLength: 80 },
        ),
        (events) => {
          const { circuit, attempt } = breaker({ openAfterMs: 200, minFailures: 2, probeTimeoutMs: 1e12 });
          let now = T0;
          let probesOut = 0;
          for (const { step, action } of events) {
            now += step;
            const before = circuit.view('a');
            const paused = circuit.pausedAccounts(now).includes('a');
            if (action === 'admit') {
              const admitted = circuit.admit('a', now);
              expect(admitted).toBe(!paused);
              if (admitted && before.state !== 'closed') probesOut += 1;
              expect(probesOut).toBeLessThanOrEqual(1);
            } else {
              attempt('a', now, action === 'ok' ? status(200) : action === 'gone' ? status(410) : status(503));
              probesOut = 0;
              const after = circuit.view('a').state;
              if (action === 'ok') expect(after).toBe('closed');
              else if (action === 'gone' || before.state === 'half_open') expect(after).toBe('open');
            }
          }
        },
      ),
    );
  });
});

describe('resolveCircuitOptions', () => {
  it('holds the whole endpoint until the Retry-After of a 429 or 503 has passed, whatever else it answers meanwhile', () => {
    const { circuit, changes, attempt } = breaker();
    const after = (code: number, wait: string, at: number): Classification =>
      classify({ kind: 'response', status: code, retryAfter: wait }, at);
    attempt('a', T0, after(429, '2', T0));
    // Every delivery of the account waits: not claimed, and one claimed already is given back without an attempt.
    expect(circuit.pausedAccounts(T0 + 1_999)).toEqual(['a']);
    expect(circuit.admit('a', T0 + 1_999)).toBe(false);
    expect(circuit.view('a', T0 + 1_000)).toMatchObject({ state: 'closed', heldUntil: T0 + 2_000 });
    // Another account is not held.
    expect(circuit.admit('b', T0 + 1)).toBe(true);
    // A 2xx of an attempt sent before the 429 does not end the hold; a later, shorter Retry-After does not shorten it.
    attempt('a', T0 + 10, status(200));
    attempt('a', T0 + 20, after(503, '1', T0 + 20));
    expect(circuit.view('a', T0 + 1_500).heldUntil).toBe(T0 + 2_000);
    // A longer one lengthens it, up to holdMaxMs (10 s here).
    attempt('a', T0 + 30, after(429, '3600', T0 + 30));
    expect(circuit.view('a', T0 + 31).heldUntil).toBe(T0 + 10_030);
    expect(circuit.pausedAccounts(T0 + 10_029)).toEqual(['a']);
    // Then it is over, by itself.
    expect(circuit.pausedAccounts(T0 + 10_030)).toEqual([]);
    expect(circuit.admit('a', T0 + 10_030)).toBe(true);
    expect(circuit.view('a', T0 + 10_030).heldUntil).toBeNull();
    // A hold is not a circuit state: nothing changed there.
    expect(changes).toEqual([]);
  });

  it('holds no endpoint for a Retry-After on a final answer, nor with holdMaxMs 0; a reset (the webhook saved) ends one', () => {
    const { circuit, attempt } = breaker();
    // 429 and 503 carry it; on anything else the header is not read, and a past date is no wait.
    attempt('a', T0, classify({ kind: 'response', status: 400, retryAfter: '60' }, T0));
    attempt('a', T0, classify({ kind: 'response', status: 429, retryAfter: '0' }, T0));
    expect(circuit.pausedAccounts(T0 + 1)).toEqual([]);
    attempt('a', T0, classify({ kind: 'response', status: 429, retryAfter: '60' }, T0));
    expect(circuit.pausedAccounts(T0 + 1)).toEqual(['a']);
    circuit.reset('a');
    expect(circuit.admit('a', T0 + 1)).toBe(true);

    const off = breaker({ holdMaxMs: 0 });
    off.attempt('a', T0, classify({ kind: 'response', status: 429, retryAfter: '60' }, T0));
    expect(off.circuit.pausedAccounts(T0 + 1)).toEqual([]);
  });

  it('holds nothing for a Retry-After answering an attempt sent before a save that changed the endpoint', () => {
    const { circuit } = breaker();
    const throttled = (at: number, webhookUpdatedAt: number) =>
      circuit.onAttempt({
        accountId: 'a',
        deliveryId: 'd',
        classification: classify({ kind: 'response', status: 429, retryAfter: '60' }, at),
        statusCode: 429,
        errorKind: null,
        durationMs: 1,
        at,
        webhookUpdatedAt,
      });
    // The webhook saved at T0 + 100 points elsewhere; an attempt sent with the save of T0 to the old endpoint is
    // answered after it: that receiver's Retry-After is no word of the new one's.
    circuit.reset('a', T0 + 100);
    throttled(T0 + 200, T0);
    expect(circuit.pausedAccounts(T0 + 201)).toEqual([]);
    expect(circuit.view('a', T0 + 201).heldUntil).toBeNull();
    // One sent with the save (or a later one) holds the endpoint.
    throttled(T0 + 300, T0 + 100);
    expect(circuit.view('a', T0 + 301).heldUntil).toBe(T0 + 10_300);
    // The save is forgotten (no memory kept per save) once no attempt sent before it can be answered any more: a
    // lease (probeTimeoutMs) after it, no claim read before it records.
    circuit.reset('a', T0 + 100);
    const later = T0 + 100 + OPTIONS.probeTimeoutMs;
    expect(circuit.pausedAccounts(later)).toEqual([]);
    throttled(later, T0);
    expect(circuit.view('a', later).heldUntil).toBe(later + 10_000);
  });

  it('fills the documented defaults', () => {
    expect(resolveCircuitOptions()).toEqual({
      openAfterMs: 300_000,
      minFailures: 5,
      probeIntervalMs: 30_000,
      maxProbeIntervalMs: 300_000,
      probeTimeoutMs: 60_000,
      holdMaxMs: 3_600_000,
    });
  });

  it('names the bad option', () => {
    expect(() => resolveCircuitOptions({ minFailures: 0 })).toThrow(CircuitOptionError);
    expect(() => resolveCircuitOptions({ minFailures: 0 })).toThrow(/minFailures/);
    expect(() => resolveCircuitOptions({ probeIntervalMs: 1.5 })).toThrow(/probeIntervalMs/);
    expect(() => resolveCircuitOptions({ probeIntervalMs: 500, maxProbeIntervalMs: 100 })).toThrow(
      /maxProbeIntervalMs/,
    );
  });
});

describe('CircuitBreaker in the DeliveryEngine (real SQLite store, real HTTP receiver)', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()?.();
  });

  it('a Retry-After hold that begins while an admitted first attempt gets ready (its freeze) stops it before its request', async () => {
    const t = await createTestStore();
    cleanups.push(() => t.dispose());
    const receiver = await startReceiver((_req, res) => {
      res.statusCode = 200;
      res.end();
    });
    cleanups.push(() => receiver.close());
    const circuit = new CircuitBreaker({ options: { holdMaxMs: 10_000 } });
    // Another attempt to the endpoint is answered 429 'Retry-After: 5' (and recorded) while this one, admitted
    // already, freezes its body: an await between the circuit's admit and the request.
    const freeze = t.store.freeze.bind(t.store);
    let throttled = false;
    vi.spyOn(t.store, 'freeze').mockImplementation(async (...args) => {
      if (!throttled) {
        throttled = true;
        const at = Date.now();
        circuit.onAttempt({
          accountId: 'acct',
          deliveryId: 'another',
          classification: classify({ kind: 'response', status: 429, retryAfter: '5' }, at),
          statusCode: 429,
          errorKind: null,
          durationMs: 1,
          at,
        });
      }
      return freeze(...args);
    });
    const engine = new DeliveryEngine({
      store: t.store,
      health: circuit,
      options: { pollIntervalMs: 20, requestTimeoutMs: 3_000, backoff: FAST_BACKOFF },
    });
    cleanups.push(() => engine.stop(200));
    await t.store.upsertWebhook('acct', { url: receiver.url, enabled: true, maxMessagesPerContact: 10 }, Date.now());
    const published = await t.store.publish({ accountId: 'acct', messages: [message('c1')], now: Date.now() });
    engine.start();

    await waitFor(() => throttled, 'the freeze', 5_000);
    await sleep(300);
    // Not sent into the hold: no request, no attempt; given back due when the hold ends (so that no other process
    // takes it meanwhile).
    expect(receiver.requests).toHaveLength(0);
    const found = await t.store.getDelivery(published.deliveries[0]!.deliveryId);
    const heldUntil = circuit.view('acct', Date.now()).heldUntil;
    expect(heldUntil).not.toBeNull();
    expect({
      attempts: found?.attempts.length,
      state: found?.delivery.state,
      due: found?.delivery.nextAttemptAt,
    }).toEqual({
      attempts: 0,
      state: 'retrying',
      due: heldUntil,
    });
  });

  it('a half-open probe is ONE request even when a claim returns several deliveries; the rest burn no attempt', async () => {
    const t = await createTestStore();
    cleanups.push(() => t.dispose());
    const receiver = await startReceiver((_req, res) => {
      res.statusCode = 503;
      res.end();
    });
    cleanups.push(() => receiver.close());
    const changes: CircuitState[] = [];
    const circuit = new CircuitBreaker({
      options: { openAfterMs: 0, minFailures: 1, probeIntervalMs: 300, maxProbeIntervalMs: 10_000 },
      onStateChange: (_account, state) => changes.push(state),
    });
    const engine = new DeliveryEngine({
      store: t.store,
      health: circuit,
      // Two per endpoint: both lanes claim up to two deliveries each when the probe time comes.
      options: { pollIntervalMs: 20, requestTimeoutMs: 3_000, perEndpointConcurrency: 2, backoff: FAST_BACKOFF },
    });
    cleanups.push(() => engine.stop(200));
    await t.store.upsertWebhook('acct', { url: receiver.url, enabled: true, maxMessagesPerContact: 10 }, Date.now());
    const published = await t.store.publish({
      accountId: 'acct',
      messages: ['c1', 'c2', 'c3', 'c4', 'c5'].map((c) => message(c)),
      now: Date.now(),
    });
    engine.start();

    // The first two attempts fail and open the circuit; the probe 300 ms later is the third request; the
    // next probe is 600 ms after that.
    await waitFor(() => receiver.requests.length >= 3, 'the first probe', 5_000);
    await sleep(300);
    expect(receiver.requests).toHaveLength(3);
    expect(changes.slice(0, 3)).toEqual(['open', 'half_open', 'open']);
    let attempts = 0;
    for (const { deliveryId } of published.deliveries) {
      const found = await t.store.getDelivery(deliveryId);
      attempts += found?.attempts.length ?? 0;
      // Nothing dropped: every delivery still waits (none failed, none given up).
      expect(['pending', 'retrying', 'in_flight']).toContain(found?.delivery.state);
    }
    expect(attempts).toBe(3);
  });
});
