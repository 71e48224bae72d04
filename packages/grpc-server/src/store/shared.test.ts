import { describe, expect, it } from 'vitest';
import { decodeCursor, encodeCursor } from './shared.js';

const b64 = (text: string) => Buffer.from(text, 'utf8').toString('base64url');

describe('encodeCursor and decodeCursor', () => {
  const filter = { accountId: 'acct-1', externalCustomerId: 'c1', states: ['pending' as const, 'failed' as const] };

  it('reads back the position with the filter the cursor was made for', () => {
    const cursor = encodeCursor(42, filter);
    expect(Buffer.from(cursor, 'base64url').toString('utf8')).toMatch(/^d2:42:[\w-]{11}$/);
    expect(decodeCursor(cursor, filter)).toBe(42);
    expect(decodeCursor(encodeCursor(0, {}), {})).toBe(0);
    expect(decodeCursor(encodeCursor(Number.MAX_SAFE_INTEGER, {}), {})).toBe(Number.MAX_SAFE_INTEGER);
    // The states are a set: order and repeats do not make another listing.
    expect(decodeCursor(cursor, { ...filter, states: ['failed', 'pending', 'failed'] })).toBe(42);
    expect(decodeCursor(encodeCursor(7, { states: [] }), {})).toBe(7);
  });

  it('refuses a cursor made for another filter (AIP-158), whichever field differs', () => {
    const cursor = encodeCursor(42, filter);
    for (const other of [
      { ...filter, accountId: 'acct-2' },
      { ...filter, externalCustomerId: 'c2' },
      { ...filter, externalCustomerId: undefined },
      { ...filter, states: ['pending' as const] },
      { ...filter, states: undefined },
      {},
    ]) {
      expect(() => decodeCursor(cursor, other), JSON.stringify(other)).toThrow(
        expect.objectContaining({ code: 'invalid_argument', message: expect.stringContaining('another filter') }),
      );
    }
    // Fields are not confused with one another: an account id and a contact id of the same text differ.
    expect(() => decodeCursor(encodeCursor(1, { accountId: 'x' }), { externalCustomerId: 'x' })).toThrow();
  });

  it('still reads a version 1 cursor (d1:<seq>) of the previous release, with any filter', () => {
    expect(decodeCursor(b64('d1:42'), filter)).toBe(42);
    expect(decodeCursor(b64('d1:42'), {})).toBe(42);
  });

  it('refuses what is not a cursor', () => {
    const digest = Buffer.from(encodeCursor(1, {}), 'base64url').toString('utf8').slice('d2:1:'.length);
    for (const text of [
      'garbage',
      'd1:-1',
      'd1:x',
      'd1:9007199254740992',
      `d2:-1:${digest}`,
      `d2:1.5:${digest}`,
      `d2:99999999999999999:${digest}`,
      `d2:1:${digest}x`,
      `d2:1:`,
      'd2:1',
      'd3:1',
    ]) {
      expect(() => decodeCursor(b64(text), {}), text).toThrow(
        expect.objectContaining({ code: 'invalid_argument', message: expect.stringContaining('cursor') }),
      );
    }
    expect(() => decodeCursor('', {})).toThrow();
  });
});
