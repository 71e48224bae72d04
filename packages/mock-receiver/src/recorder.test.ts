import { describe, expect, it } from 'vitest';
import { MAX_TRACKED_DELIVERIES, Recorder, summarize, type RecordInput } from './recorder.js';

function input(overrides: Partial<RecordInput> = {}): RecordInput {
  return {
    receivedAt: '2026-01-01T00:00:00.000Z',
    method: 'POST',
    path: '/hook',
    url: '/hook',
    headers: {},
    deliveryId: null,
    bodyBytes: 2,
    body: [],
    externalCustomerIds: [],
    messageCount: 0,
    answer: { status: 200, outcome: 'answered', branch: 'accepted', ruleId: null },
    signature: 'not_required',
    signatureSecretIndex: null,
    durationMs: 1,
    bodyDigest: 'x',
    ...overrides,
  };
}

describe('Recorder', () => {
  it('keeps the newest recordLimit records in order and counts the rest', () => {
    const recorder = new Recorder({ recordLimit: 3, contactLimit: 10 });
    for (let i = 1; i <= 7; i++) recorder.add(input({ deliveryId: `d-${i}` }));
    expect(recorder.list().map((r) => r.seq)).toEqual([5, 6, 7]);
    expect(recorder.stats()).toMatchObject({ received: 7, kept: 3, dropped: 4 });
    expect(recorder.get(4)).toBeUndefined();
    expect(recorder.get(6)?.deliveryId).toBe('d-6');
  });

  it('bounds the kept body bytes too, counting a text body by what is kept of it, over many records', () => {
    const recorder = new Recorder({ recordLimit: 3, recordBytesLimit: 250, contactLimit: 10 });
    for (let i = 1; i <= 5000; i++) recorder.add(input({ bodyBytes: 100 }));
    expect(recorder.list().map((r) => r.seq)).toEqual([4999, 5000]);
    expect(recorder.stats()).toMatchObject({ received: 5000, kept: 2, keptBytes: 200, dropped: 4998 });
    recorder.add(input({ body: null, bodyBytes: 10_000, bodyText: 'abc' }));
    expect(recorder.list().map((r) => r.seq)).toEqual([4999, 5000, 5001]);
    expect(recorder.stats()).toMatchObject({ kept: 3, keptBytes: 203 });
    expect([4998, 4999, 5000, 5001, 5002].map((seq) => recorder.get(seq)?.seq)).toEqual([
      undefined,
      4999,
      5000,
      5001,
      undefined,
    ]);
  });

  it('filters by contact, delivery id, path, status and seq', () => {
    const recorder = new Recorder({ recordLimit: 10, contactLimit: 10 });
    recorder.add(input({ externalCustomerIds: ['a', 'b'], deliveryId: 'x' }));
    recorder.add(
      input({
        externalCustomerIds: ['b'],
        path: '/p',
        answer: { status: 503, outcome: 'answered', branch: 'accepted', ruleId: 'r' },
      }),
    );
    recorder.add(input({ answer: { status: null, outcome: 'dropped', branch: 'accepted', ruleId: 'r' } }));
    expect(recorder.list({ externalCustomerId: 'b' }).map((r) => r.seq)).toEqual([1, 2]);
    expect(recorder.list({ deliveryId: 'x' }).map((r) => r.seq)).toEqual([1]);
    expect(recorder.list({ path: '/p' }).map((r) => r.seq)).toEqual([2]);
    expect(recorder.list({ status: 503 }).map((r) => r.seq)).toEqual([2]);
    expect(recorder.list({ since: 1 }).map((r) => r.seq)).toEqual([2, 3]);
    expect(recorder.stats().byStatus).toEqual({ '200': 1, '503': 1, none: 1 });
    expect(recorder.stats().byOutcome).toEqual({ answered: 2, dropped: 1, hung: 0, aborted: 0 });
  });

  it('marks duplicates and compares their bodies', () => {
    const recorder = new Recorder({ recordLimit: 10, contactLimit: 10 });
    const failed = { status: 503, outcome: 'answered' as const, branch: 'accepted' as const, ruleId: null };
    expect(recorder.add(input({ deliveryId: 'a', bodyDigest: 'one', answer: failed })).duplicate).toBe(false);
    expect(recorder.add(input({ deliveryId: 'a', bodyDigest: 'one' })).duplicate).toBe(true);
    expect(recorder.add(input({ deliveryId: 'a', bodyDigest: 'two' })).duplicate).toBe(true);
    expect(recorder.add(input({ deliveryId: null })).duplicate).toBe(false);
    expect(recorder.add(input({ deliveryId: null })).duplicate).toBe(false);
    expect(recorder.duplicates()).toEqual({
      requests: 2,
      acceptedAgain: 1,
      differentBodies: 1,
      deliveries: [{ deliveryId: 'a', count: 3, accepted: 2, bodiesEqual: false, firstSeq: 1, lastSeq: 3 }],
    });
  });

  it('bounds the delivery ids it remembers', () => {
    const recorder = new Recorder({ recordLimit: 0, contactLimit: 10 });
    for (let i = 0; i <= MAX_TRACKED_DELIVERIES; i++) recorder.add(input({ deliveryId: `d-${i}` }));
    // d-0 has been forgotten: seeing it again is not a duplicate; d-5 is.
    expect(recorder.add(input({ deliveryId: 'd-0' })).duplicate).toBe(false);
    expect(recorder.add(input({ deliveryId: 'd-5' })).duplicate).toBe(true);
  });

  it('keeps each contact’s last accepted list, the least recently accepted forgotten first', () => {
    const recorder = new Recorder({ recordLimit: 10, contactLimit: 2 });
    const list = (id: string) => [
      { externalCustomerId: id, id: 'x', createdDate: 1, title: '', content: '', category: '' },
    ];
    recorder.add(input({ accepted: new Map([['a', list('a')]]) }));
    recorder.add(input({ accepted: new Map([['b', list('b')]]), deliveryId: 'db' }));
    recorder.add(input({ accepted: new Map([['a', list('a')]]) }));
    recorder.add(input({ accepted: new Map([['c', list('c')]]) }));
    expect(recorder.contacts().map((c) => c.externalCustomerId)).toEqual(['a', 'c']);
    expect(recorder.lastAccepted('a')?.seq).toBe(3);
    expect(recorder.lastAccepted('b')).toBeUndefined();
    expect(recorder.stats()).toMatchObject({ contacts: 2, contactsForgotten: 1 });
  });

  it('clear forgets everything but keeps numbering, and tells subscribers', () => {
    const recorder = new Recorder({ recordLimit: 10, contactLimit: 10 });
    const events: string[] = [];
    const unsubscribe = recorder.subscribe((e) => events.push(e.type));
    recorder.add(input({ deliveryId: 'a' }));
    recorder.add(input({ deliveryId: 'a' }));
    recorder.clear();
    expect(recorder.stats()).toMatchObject({ received: 0, duplicateRequests: 0 });
    expect(recorder.duplicates().deliveries).toEqual([]);
    expect(recorder.add(input()).seq).toBe(3);
    unsubscribe();
    recorder.add(input());
    expect(events).toEqual(['record', 'record', 'clear', 'record']);
  });

  it('a throwing subscriber does not stop recording', () => {
    const recorder = new Recorder({ recordLimit: 10, contactLimit: 10 });
    recorder.subscribe(() => {
      throw new Error('boom');
    });
    expect(() => recorder.add(input())).not.toThrow();
    expect(recorder.list()).toHaveLength(1);
  });

  it('summarize leaves out headers and body', () => {
    const recorder = new Recorder({ recordLimit: 10, contactLimit: 10 });
    const record = recorder.add(input({ headers: { a: 'b' }, body: [1], bodyText: 'x' }));
    const summary = summarize(record);
    expect(summary).not.toHaveProperty('headers');
    expect(summary).not.toHaveProperty('body');
    expect(summary).not.toHaveProperty('bodyText');
    expect(summary.seq).toBe(1);
  });
});
