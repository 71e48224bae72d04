import { describe, expect, it } from 'vitest';
import { CliError } from './errors.js';
import { fileFieldPath, parseMessageFile } from './messages.js';

const base = {
  externalCustomerId: 'c-1',
  id: '0d0c1a3e-6e0e-4c3f-9a7e-1a2b3c4d5e6f',
  createdDate: 1_700_000_000_000,
  title: 'Hello',
  content: 'World',
  category: 'news',
};

function problems(text: string): { message: string; fields: string[] } {
  try {
    parseMessageFile(text, 'f.json');
  } catch (error) {
    expect(error).toBeInstanceOf(CliError);
    const e = error as CliError;
    expect(e.code).toBe('input');
    expect(e.exitCode).toBe(2);
    return { message: e.message, fields: e.violations.map((v) => `${v.field}: ${v.description}`) };
  }
  throw new Error('expected the file to be refused');
}

describe('parseMessageFile', () => {
  it('reads messages in the seed format with their optional fields, ttlSeconds and expiresAtMs', () => {
    const text = JSON.stringify([
      { ...base, image: 'https://i', link: '', customData: '{"a":1}', ttlSeconds: 60 },
      { ...base, expiresAtMs: 1_800_000_000_000 },
    ]);
    expect(parseMessageFile(text, 'f.json')).toEqual([
      { ...base, image: 'https://i', link: '', customData: '{"a":1}', ttlSeconds: 60 },
      { ...base, expiresAtMs: 1_800_000_000_000 },
    ]);
  });

  it('keeps a message without externalCustomerId (absent or null): the server skips it and says so', () => {
    const { externalCustomerId: _c, ...noContact } = base;
    const parsed = parseMessageFile(JSON.stringify([noContact, { ...base, externalCustomerId: null }]), 'f.json');
    expect(parsed.map((m) => m.externalCustomerId)).toEqual(['', '']);
  });

  it('names every bad entry by its index and field', () => {
    const result = problems(
      JSON.stringify([{ ...base, createdDate: '2024-01-01', extra: 1 }, 'text', { ...base, ttlSeconds: 1.5 }]),
    );
    expect(result.message).toBe('f.json: 4 problems in the messages');
    expect(result.fields).toEqual([
      '[0].createdDate: must be an integer',
      '[0].extra: is not a known field',
      '[1]: must be an object, got a string',
      '[2].ttlSeconds: must be an integer',
    ]);
  });

  it('refuses what is not a JSON array, and lists at most 20 problems', () => {
    expect(problems('{').message).toMatch(/^f\.json: not valid JSON/);
    expect(problems('{"messages":[]}').message).toBe('f.json: must be a JSON array of messages, got an object');
    const many = problems(JSON.stringify(Array.from({ length: 25 }, () => 1)));
    expect(many.message).toBe('f.json: 25 problems in the messages (first 20 shown)');
    expect(many.fields).toHaveLength(20);
  });
});

describe('fileFieldPath', () => {
  it("turns a call's message index into the file's", () => {
    expect(fileFieldPath('messages[3].id', 20_000)).toBe('messages[20003].id');
    expect(fileFieldPath('messages', 10_000)).toBe('messages');
    expect(fileFieldPath('account_id', 10_000)).toBe('account_id');
  });
});
