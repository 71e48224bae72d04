import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoreError } from './errors.js';
import {
  availableMessages,
  buildPayload,
  compareNewestFirst,
  partitionByCustomerId,
  serializeMessages,
  toWireMessage,
} from './payload.js';
import { validateMessageList } from './schema.js';
import type { StoredMessage } from './types.js';

const NOW = 1_700_000_000_000;
const SEED_KEYS = ['externalCustomerId', 'id', 'createdDate', 'title', 'content', 'image', 'link', 'category'];

let counter = 0;
function uuid(n: number): string {
  return `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`;
}
function stored(overrides: Partial<StoredMessage> = {}): StoredMessage {
  counter += 1;
  return {
    externalCustomerId: 'c-1',
    id: uuid(counter),
    createdDate: NOW - 1000,
    title: 't',
    content: 'c',
    category: 'cat',
    expiresAt: NOW + 86_400_000,
    ...overrides,
  };
}

/** Messages with few distinct dates and ids so that ties and duplicates of dates happen often. */
const messageArb: fc.Arbitrary<StoredMessage> = fc.record({
  externalCustomerId: fc.constant('c-1'),
  id: fc.nat(50).map(uuid),
  createdDate: fc.integer({ min: NOW - 10, max: NOW + 10 }),
  title: fc.string({ maxLength: 3 }),
  content: fc.string({ maxLength: 3 }),
  category: fc.constantFrom('a', 'b'),
  expiresAt: fc.integer({ min: NOW - 5, max: NOW + 5 }),
});

describe('availableMessages', () => {
  it('drops expired messages: expiresAt <= now is expired', () => {
    const past = stored({ expiresAt: NOW - 1 });
    const atNow = stored({ expiresAt: NOW });
    const future = stored({ expiresAt: NOW + 1 });
    expect(availableMessages([past, atNow, future], NOW, 10)).toEqual([future]);
  });

  it('orders newest first, ties by id ascending', () => {
    const a = stored({ id: uuid(2), createdDate: 5_000 });
    const b = stored({ id: uuid(1), createdDate: 5_000 });
    const c = stored({ id: uuid(3), createdDate: 9_000 });
    const d = stored({ id: uuid(0), createdDate: 1_000 });
    expect(availableMessages([a, b, c, d], NOW, 10).map((m) => m.id)).toEqual([uuid(3), uuid(1), uuid(2), uuid(0)]);
  });

  it('compares equal only for the same date and id', () => {
    const a = stored({ id: uuid(9), createdDate: 1 });
    expect(compareNewestFirst(a, { ...a })).toBe(0);
    expect(compareNewestFirst(a, { ...a, id: uuid(10) })).toBeLessThan(0);
    expect(compareNewestFirst(a, { ...a, createdDate: 2 })).toBeGreaterThan(0);
  });

  it('keeps the newest `max` messages', () => {
    const messages = [1, 2, 3, 4, 5].map((n) => stored({ createdDate: n }));
    expect(availableMessages(messages, NOW, 2).map((m) => m.createdDate)).toEqual([5, 4]);
  });

  it('does not modify its input', () => {
    const messages = [stored({ createdDate: 1 }), stored({ createdDate: 2 })];
    const copy = structuredClone(messages);
    availableMessages(messages, NOW, 1);
    expect(messages).toEqual(copy);
  });

  it.each([0, -1, 1.5, Number.NaN])('rejects max %p with invalid_argument', (max) => {
    expect(() => availableMessages([], NOW, max)).toThrowError(
      expect.objectContaining({ code: 'invalid_argument', name: 'CoreError' }),
    );
  });

  it('property: the result is exactly the newest `max` unexpired messages, in order', () => {
    fc.assert(
      fc.property(fc.array(messageArb, { maxLength: 40 }), fc.integer({ min: 1, max: 50 }), (messages, max) => {
        const result = availableMessages(messages, NOW, max);
        const unexpired = messages.filter((m) => m.expiresAt > NOW);
        // Capping.
        expect(result.length).toBe(Math.min(max, unexpired.length));
        // Expiry: nothing expired, and every element comes from the input.
        for (const m of result) {
          expect(m.expiresAt).toBeGreaterThan(NOW);
          expect(messages).toContain(m);
        }
        // Ordering: createdDate descending, ties by id ascending.
        for (let i = 1; i < result.length; i++) {
          const prev = result[i - 1]!;
          const cur = result[i]!;
          expect(
            prev.createdDate > cur.createdDate || (prev.createdDate === cur.createdDate && prev.id <= cur.id),
          ).toBe(true);
        }
        // Newest kept: every unexpired message left out is not newer than the last one kept.
        const last = result.at(-1);
        const leftOut = unexpired.filter((m) => !result.includes(m));
        for (const m of leftOut) expect(last !== undefined && compareNewestFirst(last, m) <= 0).toBe(true);
      }),
    );
  });

  it('property: the input order does not matter', () => {
    const withPermutation = fc
      .uniqueArray(messageArb, { selector: (m) => m.id, maxLength: 30 })
      .chain((messages) =>
        fc.tuple(
          fc.constant(messages),
          fc.shuffledSubarray(messages, { minLength: messages.length, maxLength: messages.length }),
        ),
      );
    fc.assert(
      fc.property(withPermutation, fc.integer({ min: 1, max: 40 }), ([messages, shuffled], max) => {
        expect(availableMessages(shuffled, NOW, max)).toEqual(availableMessages(messages, NOW, max));
      }),
    );
  });
});

describe('toWireMessage', () => {
  it('keeps exactly the seed fields in the seed order and drops expiresAt', () => {
    const wire = toWireMessage({
      ...stored({ image: 'https://i.example/x.png', link: 'https://l.example', customData: '{"a":1}' }),
      // A field the store might carry along must never reach the receiver.
      ...({ contactId: 7 } as object),
    });
    expect(Object.keys(wire)).toEqual([...SEED_KEYS, 'customData']);
    expect(wire).not.toHaveProperty('expiresAt');
    expect(wire.customData).toBe('{"a":1}');
  });

  it('writes image and link as "" when absent and leaves customData out', () => {
    const wire = toWireMessage(stored());
    expect(Object.keys(wire)).toEqual(SEED_KEYS);
    expect(wire.image).toBe('');
    expect(wire.link).toBe('');
  });

  it('treats a null customData (from a database row) as absent', () => {
    const wire = toWireMessage({ ...stored(), customData: null as unknown as string });
    expect(wire).not.toHaveProperty('customData');
  });
});

describe('serializeMessages', () => {
  it('produces the seed JSON exactly', () => {
    const body = serializeMessages([
      {
        externalCustomerId: 'c-1',
        id: '6f1c1f0e-8a2b-4c3d-9e4f-5a6b7c8d9e0f',
        createdDate: 1_700_000_000_123,
        title: 'Hi',
        content: 'Body',
        category: 'news',
        customData: '{"k":"v"}',
      },
    ]);
    expect(body).toBe(
      '[{"externalCustomerId":"c-1","id":"6f1c1f0e-8a2b-4c3d-9e4f-5a6b7c8d9e0f","createdDate":1700000000123,' +
        '"title":"Hi","content":"Body","image":"","link":"","category":"news","customData":"{\\"k\\":\\"v\\"}"}]',
    );
  });

  it('serialises an empty list as []', () => {
    expect(serializeMessages([])).toBe('[]');
  });
});

describe('buildPayload', () => {
  it('filters, orders and caps each contact on its own and concatenates in contact order', () => {
    const b1 = stored({ externalCustomerId: 'b', createdDate: 1 });
    const b2 = stored({ externalCustomerId: 'b', createdDate: 2 });
    const b3 = stored({ externalCustomerId: 'b', createdDate: 3 });
    const a1 = stored({ externalCustomerId: 'a', createdDate: 10 });
    const aExpired = stored({ externalCustomerId: 'a', createdDate: 20, expiresAt: NOW });
    const result = buildPayload({
      contacts: [
        { externalCustomerId: 'b', messages: [b1, b3, b2] },
        { externalCustomerId: 'a', messages: [aExpired, a1] },
      ],
      now: NOW,
      maxMessagesPerContact: 2,
    });
    expect(result.messageIds).toEqual([b3.id, b2.id, a1.id]);
    expect(result.count).toBe(3);
    const parsed = JSON.parse(result.body) as Array<Record<string, unknown>>;
    expect(parsed.map((m) => m.id)).toEqual(result.messageIds);
    expect(parsed.map((m) => m.externalCustomerId)).toEqual(['b', 'b', 'a']);
  });

  it('gives [] when every message expired', () => {
    const result = buildPayload({
      contacts: [{ externalCustomerId: 'c-1', messages: [stored({ expiresAt: NOW - 1 })] }],
      now: NOW,
      maxMessagesPerContact: 10,
    });
    expect(result).toEqual({ body: '[]', messageIds: [], count: 0 });
  });

  it('rejects a blank externalCustomerId and a message of another contact', () => {
    expect(() =>
      buildPayload({ contacts: [{ externalCustomerId: ' ', messages: [] }], now: NOW, maxMessagesPerContact: 1 }),
    ).toThrowError(/contacts\[0\]\.externalCustomerId must not be empty/);
    expect(() =>
      buildPayload({
        contacts: [{ externalCustomerId: 'c-2', messages: [stored({ externalCustomerId: 'c-1' })] }],
        now: NOW,
        maxMessagesPerContact: 1,
      }),
    ).toThrowError(CoreError);
    expect(() => buildPayload({ contacts: [], now: NOW, maxMessagesPerContact: 0 })).toThrowError(CoreError);
  });

  it('property: the body is a valid seed message list whose ids are messageIds', () => {
    fc.assert(
      fc.property(fc.array(messageArb, { maxLength: 30 }), fc.integer({ min: 1, max: 40 }), (messages, max) => {
        const result = buildPayload({
          contacts: [{ externalCustomerId: 'c-1', messages }],
          now: NOW,
          maxMessagesPerContact: max,
        });
        const parsed: unknown = JSON.parse(result.body);
        const validated = validateMessageList(parsed);
        expect(validated.ok).toBe(true);
        const list = parsed as Array<Record<string, unknown>>;
        expect(list.map((m) => m.id)).toEqual(result.messageIds);
        expect(result.count).toBe(list.length);
        for (const m of list) {
          expect(Object.keys(m)).toEqual(SEED_KEYS);
          expect(Number.isInteger(m.createdDate)).toBe(true);
        }
      }),
    );
  });
});

describe('partitionByCustomerId', () => {
  it('sets aside absent, null, empty and whitespace ids with a reason, keeping indices', () => {
    const input = [
      { externalCustomerId: 'a' },
      {},
      { externalCustomerId: null },
      { externalCustomerId: '' },
      { externalCustomerId: ' \t' },
      { externalCustomerId: ' b ' },
    ];
    const result = partitionByCustomerId(input);
    expect(result.deliverable).toEqual([
      { index: 0, message: input[0] },
      { index: 5, message: input[5] },
    ]);
    expect(result.skipped).toEqual([1, 2, 3, 4].map((index) => ({ index, reason: 'missing_external_customer_id' })));
  });

  it('property: every input lands in exactly one side', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ externalCustomerId: fc.option(fc.constantFrom('', ' ', 'x', ' y')) })),
        (input) => {
          const { deliverable, skipped } = partitionByCustomerId(input);
          const indices = [...deliverable.map((d) => d.index), ...skipped.map((s) => s.index)].sort((a, b) => a - b);
          expect(indices).toEqual(input.map((_, i) => i));
        },
      ),
    );
  });
});
