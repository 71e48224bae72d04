import { describe, expect, it } from 'vitest';
import { TurnBatch } from './turn-batch.js';

interface Call {
  key: string;
  n: number;
}

/** A batch whose statements are recorded, answering each item `key:n` (or failing when `fail` says so). */
function recording(fail: (items: Call[]) => boolean = () => false) {
  const sent: string[][] = [];
  const batch = new TurnBatch<Call, string>({
    key: (c) => c.key,
    send: async (items) => {
      sent.push(items.map((c) => `${c.key}:${c.n}`));
      await new Promise((resolve) => setTimeout(resolve, 1));
      if (fail(items)) throw new Error(`refused ${items.length}`);
      return items.map((c) => `${c.key}:${c.n}`);
    },
  });
  return { batch, sent };
}

describe('TurnBatch', () => {
  it('sends the calls of one turn together and answers each with its own item', async () => {
    const { batch, sent } = recording();
    const answers = await Promise.all([batch.add({ key: 'a', n: 1 }), batch.add({ key: 'b', n: 2 })]);
    expect(answers).toEqual(['a:1', 'b:2']);
    // A call made in a later turn goes in a statement of its own.
    expect(await batch.add({ key: 'c', n: 3 })).toBe('c:3');
    expect(sent).toEqual([['a:1', 'b:2'], ['c:3']]);
  });

  it('never puts two calls for the same key in one statement: the later one goes in the next, in call order', async () => {
    const { batch, sent } = recording();
    const answers = await Promise.all([
      batch.add({ key: 'a', n: 1 }),
      batch.add({ key: 'a', n: 2 }),
      batch.add({ key: 'b', n: 3 }),
      batch.add({ key: 'a', n: 4 }),
    ]);
    expect(answers).toEqual(['a:1', 'a:2', 'b:3', 'a:4']);
    expect(sent).toEqual([['a:1', 'b:3'], ['a:2'], ['a:4']]);
  });

  it('fails a call whose own statement failed, and only that call', async () => {
    const { batch } = recording((items) => items.some((c) => c.n === 2));
    const answers = await Promise.allSettled([
      batch.add({ key: 'a', n: 1 }),
      batch.add({ key: 'a', n: 2 }), // second statement, which fails
      batch.add({ key: 'b', n: 3 }),
    ]);
    expect(answers.map((a) => (a.status === 'fulfilled' ? a.value : (a.reason as Error).message))).toEqual([
      'a:1',
      'refused 1',
      'b:3',
    ]);
  });

  it('adopts an answer that is a promise (an item that needed a way of its own)', async () => {
    const batch = new TurnBatch<Call, string>({
      key: (c) => c.key,
      send: async (items) => items.map((c) => (c.n === 1 ? Promise.resolve('alone') : 'together')),
    });
    expect(await Promise.all([batch.add({ key: 'a', n: 1 }), batch.add({ key: 'b', n: 2 })])).toEqual([
      'alone',
      'together',
    ]);
  });

  it('sends each call of a failed statement again alone, so that only the call that fails is failed', async () => {
    const { batch, sent } = recording((items) => items.some((c) => c.key === 'b'));
    const answers = await Promise.allSettled([batch.add({ key: 'a', n: 1 }), batch.add({ key: 'b', n: 2 })]);
    expect(answers.map((a) => (a.status === 'fulfilled' ? a.value : (a.reason as Error).message))).toEqual([
      'a:1',
      'refused 1',
    ]);
    expect(sent).toEqual([['a:1', 'b:2'], ['a:1'], ['b:2']]);
  });

  it('fails the calls rather than answering them wrongly when the statement answers another count', async () => {
    const batch = new TurnBatch<Call, string>({ key: (c) => c.key, send: async () => [] });
    const answers = await Promise.allSettled([batch.add({ key: 'a', n: 1 }), batch.add({ key: 'b', n: 2 })]);
    expect(answers.map((a) => a.status)).toEqual(['rejected', 'rejected']);
  });

  it('waits for an answer that is a promise before the batch is done: drain() and the next statement wait too', async () => {
    const events: string[] = [];
    let release: () => void = () => undefined;
    const slow = new Promise<string>((resolve) => {
      release = () => {
        events.push('released');
        resolve('slow');
      };
    });
    const batch = new TurnBatch<Call, string>({
      key: (c) => c.key,
      send: async (items) => {
        events.push(`sent ${items.map((c) => c.n).join(',')}`);
        return items.map((c) => (c.n === 1 ? slow : `n${c.n}`));
      },
    });
    const first = batch.add({ key: 'a', n: 1 });
    const second = batch.add({ key: 'a', n: 2 }); // same key: must not overtake the first
    let drained = false;
    const draining = batch.drain().then(() => {
      drained = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect({ drained, idle: batch.idle, events }).toEqual({ drained: false, idle: false, events: ['sent 1'] });
    release();
    await draining;
    expect([await first, await second]).toEqual(['slow', 'n2']);
    expect(events).toEqual(['sent 1', 'released', 'sent 2']);
    expect(batch.idle).toBe(true);
  });

  it('drain() sends what is queued at once and settles every call, those already on their way included', async () => {
    const { batch, sent } = recording();
    const first = batch.add({ key: 'a', n: 1 });
    await new Promise((resolve) => setImmediate(resolve)); // its statement is on its way
    const queued = batch.add({ key: 'b', n: 2 }); // not sent yet
    let settled = 0;
    void first.then(() => settled++);
    void queued.then(() => settled++);
    await batch.drain();
    expect(settled).toBe(2);
    expect(sent).toEqual([['a:1'], ['b:2']]);
    await batch.drain(); // nothing left: returns
  });
});
