import { describe, expect, it } from 'vitest';
import {
  MAX_COUNTER_KEYS,
  RuleBook,
  SCENARIO_NAMES,
  parseControlInput,
  parseRules,
  scenarioRules,
  type RequestFacts,
} from './rules.js';

const settings = { retryAfterSeconds: 2, slowDelayMs: 50 };
const facts = (overrides: Partial<RequestFacts> = {}): RequestFacts => ({
  path: '/hook',
  externalCustomerIds: ['c-1'],
  deliveryId: 'd-1',
  ...overrides,
});

function statuses(book: RuleBook, n: number, f: Partial<RequestFacts> = {}): (number | 'contract')[] {
  return Array.from({ length: n }, () => {
    const chosen = book.choose(facts(f));
    return chosen?.answer.status ?? 'contract';
  });
}

describe('parseRules', () => {
  it('accepts the documented format', () => {
    const rules = parseRules([
      {
        id: 'r1',
        match: { path: '/a', externalCustomerId: 'c' },
        answers: [
          { status: 503, times: 2, retryAfterSeconds: 5 },
          { status: 307, location: '/b' },
          { delayMs: 10, drip: { chunks: 3, intervalMs: 5 } },
          { action: 'drop' },
          { action: 'hang', delayMs: 1 },
          { status: 200, headers: { 'X-A': 'b' }, body: { any: ['json', 1, null] } },
        ],
        repeat: true,
        per: 'delivery',
      },
    ]);
    expect(rules).toHaveLength(1);
  });

  it('reports every problem with its path', () => {
    let error: unknown;
    try {
      parseRules([
        { answers: [{ status: 302 }, { action: 'drop', status: 500, body: 1 }, { status: 200, location: '/x' }] },
        {
          match: { path: 'no-slash' },
          answers: [{ headers: { 'Content-Length': '1', 'bad name': 'x', ok: 'a\r\nb' } }],
          per: 'x',
        },
        { id: 'dup', answers: [{}] },
        { id: 'dup', answers: [{ drip: { chunks: 10_000, intervalMs: 60_000 } }] },
      ]);
    } catch (e) {
      error = e;
    }
    expect(error).toMatchObject({ code: 'invalid_rule' });
    const violations = (error as { violations: { field: string; description: string }[] }).violations;
    expect(violations).toEqual(
      expect.arrayContaining([
        { field: 'rules[0].answers[0].location', description: 'is required with status 302 (a redirect)' },
        { field: 'rules[0].answers[1].status', description: 'must not be set when action is "drop"' },
        { field: 'rules[0].answers[1].body', description: 'must not be set when action is "drop"' },
        { field: 'rules[0].answers[2].location', description: 'is only allowed with a 3xx status' },
        { field: 'rules[1].match.path', description: 'must start with "/"' },
        {
          field: 'rules[1].answers[0].headers["Content-Length"]',
          description: 'cannot be set by a rule (it frames the message)',
        },
        { field: 'rules[1].answers[0].headers["bad name"]', description: 'is not a valid header name' },
        { field: 'rules[1].answers[0].headers["ok"]', description: expect.stringContaining('no CR, LF') },
        { field: 'rules[1].per', description: 'must be one of rule, contact, delivery' },
        { field: 'rules[3].answers[0].drip', description: 'chunks × intervalMs must be at most 600000 ms' },
      ]),
    );
  });

  it('rejects two rules with the same id', () => {
    expect(() =>
      parseRules([
        { id: 'a', answers: [{}] },
        { id: 'a', answers: [{}] },
      ]),
    ).toThrow(/rules\[1\]\.id is used by another rule/);
  });

  it('parseControlInput rejects unknown keys and bad scenarios', () => {
    expect(() => parseControlInput({ scenario: 'x', foo: 1 })).toThrow(
      /scenario must be one of .*foo is not a known field/,
    );
    expect(parseControlInput({ scenario: 'flaky', append: true })).toEqual({ scenario: 'flaky', append: true });
  });
});

describe('RuleBook', () => {
  it('uses answers in order, each `times` times, then lets the contract answer', () => {
    const book = new RuleBook(settings);
    book.set({ rules: [{ answers: [{ status: 503, times: 2 }, { status: 500 }] }] });
    expect(statuses(book, 5)).toEqual([503, 503, 500, 'contract', 'contract']);
    expect(book.state().rules[0]).toMatchObject({ id: 'rule-1', used: 3, remaining: 0, spent: true });
  });

  it('starts over with repeat', () => {
    const book = new RuleBook(settings);
    book.set({ rules: [{ answers: [{ status: 500 }, { status: 502, times: 2 }], repeat: true }] });
    expect(statuses(book, 7)).toEqual([500, 502, 502, 500, 502, 502, 500]);
    expect(book.state().rules[0]).toMatchObject({ remaining: null, spent: false, used: 7 });
  });

  it('tries the most specific rule first, then the oldest', () => {
    const book = new RuleBook(settings);
    book.set({
      rules: [
        { id: 'global', answers: [{ status: 500 }], repeat: true },
        { id: 'path', match: { path: '/hook' }, answers: [{ status: 501 }], repeat: true },
        { id: 'contact', match: { externalCustomerId: 'c-1' }, answers: [{ status: 502 }], repeat: true },
        { id: 'both', match: { path: '/hook', externalCustomerId: 'c-1' }, answers: [{ status: 503 }] },
        { id: 'global-2', answers: [{ status: 504 }], repeat: true },
      ],
    });
    expect(book.state().rules.map((r) => r.id)).toEqual(['both', 'contact', 'path', 'global', 'global-2']);
    expect(statuses(book, 2)).toEqual([503, 502]);
    expect(statuses(book, 1, { externalCustomerIds: ['c-2'] })).toEqual([501]);
    expect(statuses(book, 1, { externalCustomerIds: ['c-2'], path: '/other' })).toEqual([500]);
  });

  it('counts per contact and per delivery id when asked', () => {
    const book = new RuleBook(settings);
    book.set({
      rules: [
        { match: { path: '/c' }, answers: [{ status: 500 }], per: 'contact' },
        { match: { path: '/d' }, answers: [{ status: 503 }], per: 'delivery' },
      ],
    });
    expect(statuses(book, 2, { path: '/c', externalCustomerIds: ['a'] })).toEqual([500, 'contract']);
    expect(statuses(book, 2, { path: '/c', externalCustomerIds: ['b'] })).toEqual([500, 'contract']);
    expect(statuses(book, 2, { path: '/d', deliveryId: 'x' })).toEqual([503, 'contract']);
    expect(statuses(book, 1, { path: '/d', deliveryId: 'y' })).toEqual([503]);
  });

  it('forgets the oldest counter keys beyond MAX_COUNTER_KEYS', () => {
    const book = new RuleBook(settings);
    book.set({ rules: [{ answers: [{ status: 503 }], per: 'delivery' }] });
    for (let i = 0; i <= MAX_COUNTER_KEYS; i++) book.choose(facts({ deliveryId: `d-${i}` }));
    // d-0 was forgotten, so it sees the sequence again; d-1 was not.
    expect(statuses(book, 1, { deliveryId: 'd-0' })).toEqual([503]);
    expect(statuses(book, 1, { deliveryId: 'd-2' })).toEqual(['contract']);
  });

  it('set replaces, append adds, clear empties; a bad input changes nothing', () => {
    const book = new RuleBook(settings);
    book.set({ scenario: 'unavailable', rules: [{ id: 'mine', answers: [{ status: 418 }] }] });
    expect(book.state().rules.map((r) => r.id)).toEqual(['scenario:unavailable', 'mine']);
    book.append([{ answers: [{ status: 202 }] }]);
    expect(book.state().rules.map((r) => r.id)).toEqual(['scenario:unavailable', 'mine', 'rule-1']);
    expect(() => book.append([{ id: 'mine', answers: [{}] }])).toThrow(/is used by another rule/);
    // A clash is named where the request has it: its own rules counted without the scenario's.
    const violations = (input: Parameters<RuleBook['set']>[0]) => {
      try {
        book.set(input);
      } catch (error) {
        return (error as { violations: Array<{ field: string }> }).violations.map((v) => v.field);
      }
      return [];
    };
    expect(violations({ append: true, scenario: 'server-error', rules: [{ id: 'mine', answers: [{}] }] })).toEqual([
      'rules[0].id',
    ]);
    expect(violations({ append: true, scenario: 'unavailable' })).toEqual(['scenario']);
    expect(() => book.set({ rules: [{ answers: [] }] })).toThrow(/must list at least one answer/);
    expect(book.state().rules).toHaveLength(3);
    book.set({ rules: [] });
    expect(book.state()).toEqual({ scenario: null, rules: [] });
    book.set({ scenario: 'flaky' });
    expect(book.clear()).toEqual({ scenario: null, rules: [] });
  });
});

describe('scenarioRules', () => {
  it('has rules for every scenario but ok', () => {
    for (const name of SCENARIO_NAMES) {
      expect(scenarioRules(name, settings).length, name).toBe(name === 'ok' ? 0 : 1);
    }
  });

  it('uses the settings it is given', () => {
    expect(scenarioRules('rate-limited', settings)[0]?.answers[0]).toEqual({ status: 429, retryAfterSeconds: 2 });
    expect(scenarioRules('slow', settings)[0]?.answers[0]).toEqual({ delayMs: 50 });
  });

  it('produces rules that pass the rule schema', () => {
    for (const name of SCENARIO_NAMES) expect(() => parseRules(scenarioRules(name, settings))).not.toThrow();
  });
});
