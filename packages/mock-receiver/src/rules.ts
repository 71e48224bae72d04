/**
 * Scripted answers: rules that override the contract's own answers, and the named presets (scenarios)
 * for every row of the seed's status table.
 *
 * A rule is plain JSON so that it can come from an option, a `--rule` flag or `POST /__control`:
 *
 * ```json
 * { "id": "flaky-orders", "match": { "path": "/hooks/orders", "externalCustomerId": "c-1" },
 *   "answers": [{ "status": 503, "times": 2 }, { "status": 200 }], "repeat": false, "per": "rule" }
 * ```
 *
 * - `answers` are used in order, each `times` times (default 1). When they are used up the rule is spent
 *   and the contract answers again, unless `repeat` is true (then they start over: "always", "in turn").
 * - An answer without `status` gives the contract's own answer (after `delayMs`, dripped if `drip`).
 * - `per` says who shares the counter: the whole rule (default), each contact, or each delivery id,
 *   so "503 twice then 200" can apply to every delivery the sender makes.
 * - When several rules match, the most specific wins (path and contact > contact > path > global), then the
 *   oldest.
 *
 * @see SPEC §5 (the receiver's answers)
 */
import * as z from 'zod';
import { validate, type FieldViolation } from '@app-inbox/core';
import { MockReceiverError, describeViolations } from './errors.js';

/** What an answer does: send a response, destroy the socket, or never answer. */
export const ANSWER_ACTIONS = ['respond', 'drop', 'hang'] as const;
export type AnswerAction = (typeof ANSWER_ACTIONS)[number];

/** Who shares a rule's counter. */
export const RULE_COUNTERS = ['rule', 'contact', 'delivery'] as const;
export type RuleCounter = (typeof RULE_COUNTERS)[number];

/** Preset names, one per row of the seed's status table, plus `ok` (no rules) and `slow`. @see SPEC §5 */
export const SCENARIO_NAMES = [
  'ok',
  'unauthorized',
  'rate-limited',
  'bad-request',
  'server-error',
  'bad-gateway',
  'unavailable',
  'flaky',
  'timeout',
  'reset',
  'slow',
] as const;
export type ScenarioName = (typeof SCENARIO_NAMES)[number];

/** What each preset does, for `--help`, the README and `GET /__control`. */
export const SCENARIO_DESCRIPTIONS: Readonly<Record<ScenarioName, string>> = {
  ok: 'no rules: the contract answers (200 for a valid list)',
  unauthorized: '401 with WWW-Authenticate, always',
  'rate-limited': '429 with Retry-After, always',
  'bad-request': '400 with a list of problems, always',
  'server-error': '500, always',
  'bad-gateway': '502, always',
  unavailable: '503, always',
  flaky: '503 twice for each delivery id, then the contract answer (200)',
  timeout: 'never answers: hangs until the client gives up',
  reset: 'drops the connection (socket destroyed) without answering',
  slow: 'waits slowDelayMs, then the contract answer',
};

/** Redirect statuses that need a Location. */
const REDIRECT_STATUSES: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);
/** RFC 9110 §5.6.2 token. */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Visible characters, space and tab: no CR/LF, so a rule cannot split a response. */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** Why a header value or a Location is refused: Node sends a field value as Latin-1 bytes, and CR/LF would split it. */
const HEADER_VALUE_MESSAGE =
  'must be Latin-1 text (tabs, U+0020-U+007E, U+0080-U+00FF): no CR, LF or other ASCII control';

/** Whether `value` is a plain object (a JSON object), whose own keys are all kept. */
function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  const prototype: unknown = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/** Headers that frame the message; a rule setting them would break the connection rather than test the sender. */
const FRAMING_HEADERS: ReadonlySet<string> = new Set([
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'upgrade',
  'trailer',
]);
/** Upper bound of delayMs and of a whole drip (milliseconds): ten minutes. */
export const MAX_RULE_DELAY_MS = 600_000;
/**
 * Most rules active at once (a scenario's included). Every webhook request walks them, so the bound keeps a script that
 * appends a rule per test from slowing the receiver down without end.
 */
export const MAX_RULES = 1000;
/** How many distinct contacts / delivery ids a `per` counter remembers before forgetting the oldest. */
export const MAX_COUNTER_KEYS = 10_000;

function intIn(min: number, max: number) {
  return z
    .number()
    .int({ error: `must be an integer from ${min} to ${max}` })
    .min(min, { error: `must be an integer from ${min} to ${max}` })
    .max(max, { error: `must be an integer from ${min} to ${max}` });
}

const answerSchema = z
  .strictObject({
    status: intIn(200, 599).optional(),
    action: z.enum(ANSWER_ACTIONS, { error: `must be one of ${ANSWER_ACTIONS.join(', ')}` }).optional(),
    times: intIn(1, 1_000_000).optional(),
    delayMs: intIn(0, MAX_RULE_DELAY_MS).optional(),
    // Not z.record: it copies the map into a plain object, where a `__proto__` key (an own key of any parsed JSON) was
    // dropped without a word. Taken as it is; every name and value is checked below.
    headers: z
      .custom<Record<string, string>>(isPlainObject, { error: 'must be an object of header names to values' })
      .optional(),
    body: z.json().optional(),
    retryAfterSeconds: intIn(0, 86_400).optional(),
    location: z.string().min(1, { error: 'must not be empty' }).max(2048).optional(),
    drip: z
      .strictObject({ chunks: intIn(1, 10_000), intervalMs: intIn(1, 60_000) })
      .refine((d) => d.chunks * d.intervalMs <= MAX_RULE_DELAY_MS, {
        error: `chunks × intervalMs must be at most ${MAX_RULE_DELAY_MS} ms`,
      })
      .optional(),
  })
  .superRefine((a, ctx) => {
    if (a.action === 'drop' || a.action === 'hang') {
      for (const key of ['status', 'headers', 'body', 'retryAfterSeconds', 'location', 'drip'] as const) {
        if (a[key] !== undefined) {
          ctx.addIssue({ code: 'custom', path: [key], message: `must not be set when action is "${a.action}"` });
        }
      }
    }
    if (a.status !== undefined && REDIRECT_STATUSES.has(a.status) && a.location === undefined) {
      ctx.addIssue({ code: 'custom', path: ['location'], message: `is required with status ${a.status} (a redirect)` });
    }
    if (a.location !== undefined && a.action !== 'drop' && a.action !== 'hang') {
      if (a.status === undefined || a.status < 300 || a.status > 399) {
        ctx.addIssue({ code: 'custom', path: ['location'], message: 'is only allowed with a 3xx status' });
      } else if (!HEADER_VALUE.test(a.location)) {
        ctx.addIssue({ code: 'custom', path: ['location'], message: HEADER_VALUE_MESSAGE });
      }
    }
    for (const [name, value] of Object.entries(a.headers ?? {}) as [string, unknown][]) {
      if (!HEADER_NAME.test(name)) {
        ctx.addIssue({ code: 'custom', path: ['headers', name], message: 'is not a valid header name' });
      } else if (name === '__proto__') {
        ctx.addIssue({
          code: 'custom',
          path: ['headers', name],
          message: 'cannot be used as a header name (a JavaScript object cannot hold it)',
        });
      } else if (FRAMING_HEADERS.has(name.toLowerCase())) {
        ctx.addIssue({
          code: 'custom',
          path: ['headers', name],
          message: 'cannot be set by a rule (it frames the message)',
        });
      } else if (typeof value !== 'string') {
        ctx.addIssue({ code: 'custom', path: ['headers', name], message: 'must be a string' });
      } else if (!HEADER_VALUE.test(value)) {
        ctx.addIssue({ code: 'custom', path: ['headers', name], message: HEADER_VALUE_MESSAGE });
      }
    }
  });

const ruleSchema = z.strictObject({
  id: z
    .string()
    .regex(/^[\w.:-]{1,100}$/, { error: 'must be 1-100 letters, digits, "_", ".", ":" or "-"' })
    .optional(),
  match: z
    .strictObject({
      path: z
        .string()
        .max(2048, { error: 'must be at most 2048 characters' })
        .startsWith('/', { error: 'must start with "/"' })
        .optional(),
      externalCustomerId: z
        .string()
        .min(1, { error: 'must not be empty' })
        .max(256, { error: 'must be at most 256 characters' })
        .optional(),
    })
    .optional(),
  answers: z
    .array(answerSchema)
    .min(1, { error: 'must list at least one answer' })
    .max(1000, { error: 'must list at most 1000 answers' }),
  repeat: z.boolean().optional(),
  per: z.enum(RULE_COUNTERS, { error: `must be one of ${RULE_COUNTERS.join(', ')}` }).optional(),
});

/** One scripted answer. All fields optional: `{}` is "the contract's answer". */
export interface RuleAnswer {
  /** Forced HTTP status (200-599). Absent: the contract's own answer (405/415/401/400/429/200). */
  status?: number;
  /** `respond` (default), `drop` (destroy the socket) or `hang` (never answer; the client gives up). */
  action?: AnswerAction;
  /** How many requests this answer is used for before the next one. Default 1. */
  times?: number;
  /** Wait this long before acting (milliseconds, 0-600000). Default 0. */
  delayMs?: number;
  /** Extra response headers (not the framing ones such as content-length). */
  headers?: Record<string, string>;
  /** Response body (any JSON), sent as `application/json`. Default: `{ error, message }` for the status. */
  body?: unknown;
  /** `Retry-After` in seconds. Default: the receiver's `retryAfterSeconds` on a 429, none otherwise. */
  retryAfterSeconds?: number;
  /** `Location` of a 3xx answer; required for 301, 302, 303, 307 and 308. */
  location?: string;
  /** Send the body in `chunks` pieces, `intervalMs` apart (a slow body). */
  drip?: { chunks: number; intervalMs: number };
}

/** A rule as written by its author (JSON). See the module comment for the format. */
export interface RuleInput {
  /** Unique name; default `rule-<n>`. Shown in records (`answer.ruleId`) and in `GET /__control`. */
  id?: string;
  /** Restricts the rule to one request path and/or one contact (any message of the body). Absent: every request. */
  match?: { path?: string; externalCustomerId?: string };
  /** The answers, used in order. */
  answers: RuleAnswer[];
  /** Start over after the last answer instead of becoming spent. Default false. */
  repeat?: boolean;
  /** Who shares the counter: the whole rule (default), each contact, each delivery id. */
  per?: RuleCounter;
}

/** A rule with its id assigned. */
export interface Rule extends RuleInput {
  id: string;
}

/** A rule and how far it has got, as `GET /__control` shows it. */
export interface RuleState extends Rule {
  /** Requests this rule has answered. */
  used: number;
  /** Answers left before it is spent (per `rule` counters only); null when it repeats or counts per key. */
  remaining: number | null;
  /** True when a non-repeating rule with a shared counter has used all its answers. */
  spent: boolean;
}

/** The whole scripted state. */
export interface ControlState {
  /** The preset applied by the last `set`/`append` that named one; null when none. */
  scenario: ScenarioName | null;
  rules: RuleState[];
}

/** What `set` (replace) and `POST /__control` take. */
export interface ControlInput {
  /** A preset whose rules come first. */
  scenario?: ScenarioName;
  /** Rules after the preset's. */
  rules?: RuleInput[];
  /** Add to the current rules instead of replacing them. Default false. */
  append?: boolean;
}

/** What a request looks like to the rules. */
export interface RequestFacts {
  path: string;
  /** Distinct externalCustomerIds found in the body (in order of appearance). */
  externalCustomerIds: readonly string[];
  /** The delivery id header, when sent. */
  deliveryId: string | null;
}

/** The answer a rule chose for one request. */
export interface ChosenAnswer {
  ruleId: string;
  answer: RuleAnswer;
}

/** Settings the presets depend on. */
export interface PresetSettings {
  /** Retry-After of the `rate-limited` preset (seconds). */
  retryAfterSeconds: number;
  /** Delay of the `slow` preset (milliseconds). */
  slowDelayMs: number;
}

/**
 * A list of rules, by their own schema: embedded in the schema of what carries them (`POST /__control`, the options),
 * so that one answer names the rules' bad fields with the others'.
 */
export const ruleListSchema = z
  .array(ruleSchema, { error: 'must be an array of rules' })
  .max(MAX_RULES, { error: `must list at most ${MAX_RULES} rules` });

const controlInputSchema = z.strictObject({
  scenario: z.enum(SCENARIO_NAMES, { error: `must be one of ${SCENARIO_NAMES.join(', ')}` }).optional(),
  // The rules' own schema, not checked afterwards: a bad scenario or an unknown field then names the rules' bad
  // fields too, in one answer.
  rules: ruleListSchema.optional(),
  append: z.boolean().optional(),
});

function invalid(violations: FieldViolation[]): MockReceiverError {
  return new MockReceiverError('invalid_rule', `invalid rule: ${describeViolations(violations)}`, { violations });
}

/**
 * Validates rules written as JSON. Every bad field is reported, named by its path (`rules[1].answers[0].status`).
 * @throws MockReceiverError `invalid_rule`
 */
export function parseRules(input: unknown, field = 'rules'): RuleInput[] {
  const result = validate(ruleListSchema, input, field);
  if (!result.ok) throw invalid(result.violations);
  const seen = new Set<string>();
  const duplicates: FieldViolation[] = [];
  result.value.forEach((rule, i) => {
    if (rule.id === undefined) return;
    if (seen.has(rule.id)) duplicates.push({ field: `${field}[${i}].id`, description: 'is used by another rule' });
    seen.add(rule.id);
  });
  if (duplicates.length > 0) throw invalid(duplicates);
  return result.value as RuleInput[];
}

/** Validates one rule (e.g. one `--rule` flag). @throws MockReceiverError `invalid_rule` */
export function parseRule(input: unknown, field = 'rule'): RuleInput {
  const result = validate(ruleSchema, input, field);
  if (!result.ok) throw invalid(result.violations);
  return result.value as RuleInput;
}

/** Validates the body of `POST /__control`. @throws MockReceiverError `invalid_rule` */
export function parseControlInput(input: unknown): ControlInput {
  const result = validate(controlInputSchema, input, '');
  if (!result.ok) throw invalid(result.violations);
  const { rules, ...rest } = result.value;
  return rules === undefined ? rest : { ...rest, rules: parseRules(rules, 'rules') };
}

/** True when `name` is a preset name. */
export function isScenarioName(name: string): name is ScenarioName {
  return (SCENARIO_NAMES as readonly string[]).includes(name);
}

/** The rules of a preset; ids are `scenario:<name>`. @see SPEC §5 */
export function scenarioRules(name: ScenarioName, settings: PresetSettings): Rule[] {
  const always = (answer: RuleAnswer): Rule[] => [{ id: `scenario:${name}`, answers: [answer], repeat: true }];
  switch (name) {
    case 'ok':
      return [];
    case 'unauthorized':
      return always({ status: 401 });
    case 'rate-limited':
      return always({ status: 429, retryAfterSeconds: settings.retryAfterSeconds });
    case 'bad-request':
      return always({
        status: 400,
        body: {
          error: 'invalid_payload',
          message: 'rejected by the bad-request scenario',
          violations: [{ field: 'body', description: 'is rejected by the bad-request scenario' }],
        },
      });
    case 'server-error':
      return always({ status: 500 });
    case 'bad-gateway':
      return always({ status: 502 });
    case 'unavailable':
      return always({ status: 503 });
    case 'flaky':
      // Per delivery id, so that every delivery the sender makes sees "503, 503, then 200".
      return [{ id: 'scenario:flaky', answers: [{ status: 503, times: 2 }], per: 'delivery' }];
    case 'timeout':
      return always({ action: 'hang' });
    case 'reset':
      return always({ action: 'drop' });
    case 'slow':
      return always({ delayMs: settings.slowDelayMs });
  }
}

interface ActiveRule {
  rule: Rule;
  /** Sum of the answers' `times`. */
  total: number;
  /** Higher first: 2 for a contact, 1 for a path. */
  specificity: number;
  /** Insertion order, the tie-breaker. */
  order: number;
  uses: Map<string, number>;
  used: number;
}

function answerAt(rule: Rule, position: number): RuleAnswer {
  let left = position;
  for (const answer of rule.answers) {
    const times = answer.times ?? 1;
    if (left < times) return answer;
    left -= times;
  }
  // Unreachable: position < total. Kept total so a mistake shows as the last answer, not a crash.
  return rule.answers[rule.answers.length - 1] as RuleAnswer;
}

/**
 * The scripted state of one receiver: which rules are active and how far each has got.
 * Not thread-shared: one per receiver; every method is synchronous.
 */
export class RuleBook {
  private active: ActiveRule[] = [];
  private scenario: ScenarioName | null = null;
  private nextOrder = 0;
  private nextId = 1;

  constructor(private readonly settings: PresetSettings) {}

  /** Replaces (or with `append`, extends) the rules. Validates first; on error nothing changes. */
  set(input: ControlInput): ControlState {
    const parsed = parseControlInput(input);
    const fromScenario = parsed.scenario === undefined ? [] : scenarioRules(parsed.scenario, this.settings);
    const incoming = [...fromScenario, ...(parsed.rules ?? [])];
    const kept = parsed.append === true ? this.active : [];
    const taken = new Set(kept.map((a) => a.rule.id));
    const clashes: FieldViolation[] = [];
    incoming.forEach((rule, i) => {
      if (rule.id === undefined) return;
      if (taken.has(rule.id)) {
        // Named where the request has it: the scenario's own rules, or `rules[j]` of the request.
        clashes.push(
          i < fromScenario.length
            ? { field: 'scenario', description: `is active already (its rule ${JSON.stringify(rule.id)})` }
            : { field: `rules[${i - fromScenario.length}].id`, description: 'is used by another rule' },
        );
      }
      taken.add(rule.id);
    });
    if (clashes.length > 0) throw invalid(clashes);
    const total = kept.length + incoming.length;
    if (total > MAX_RULES) {
      const already = kept.length === 0 ? '' : `: ${kept.length} are active already`;
      throw invalid([
        {
          field: 'rules',
          description: `would make ${total} rules active, at most ${MAX_RULES} rules can be${already}`,
        },
      ]);
    }
    if (parsed.append !== true) {
      this.active = [];
      this.scenario = null;
    }
    if (parsed.scenario !== undefined) this.scenario = parsed.scenario;
    for (const input of incoming) this.add(input, taken);
    // Once, not per rule: a sort per insertion made a long list quadratic.
    this.active.sort((x, y) => y.specificity - x.specificity || x.order - y.order);
    return this.state();
  }

  /** Adds rules after the current ones. */
  append(rules: readonly RuleInput[]): ControlState {
    return this.set({ rules: [...rules], append: true });
  }

  /** Removes every rule: the contract answers again. */
  clear(): ControlState {
    this.active = [];
    this.scenario = null;
    return this.state();
  }

  state(): ControlState {
    return {
      scenario: this.scenario,
      rules: this.active.map((a) => {
        const counted = (a.rule.per ?? 'rule') === 'rule' && a.rule.repeat !== true;
        const usedShared = a.uses.get('') ?? 0;
        return {
          ...a.rule,
          used: a.used,
          remaining: counted ? Math.max(0, a.total - usedShared) : null,
          spent: counted && usedShared >= a.total,
        };
      }),
    };
  }

  /** Picks the answer for a request and advances that rule's counter; undefined when no rule applies. */
  choose(facts: RequestFacts): ChosenAnswer | undefined {
    for (const a of this.active) {
      const match = a.rule.match;
      if (match?.path !== undefined && match.path !== facts.path) continue;
      if (match?.externalCustomerId !== undefined && !facts.externalCustomerIds.includes(match.externalCustomerId)) {
        continue;
      }
      const key = this.counterKey(a.rule, facts);
      const used = a.uses.get(key) ?? 0;
      if (a.rule.repeat !== true && used >= a.total) continue;
      if (!a.uses.has(key) && a.uses.size >= MAX_COUNTER_KEYS) {
        // Forget the oldest key: memory stays bounded under a load test with many deliveries.
        const oldest = a.uses.keys().next();
        if (oldest.done !== true) a.uses.delete(oldest.value);
      }
      a.uses.set(key, used + 1);
      a.used += 1;
      const position = a.rule.repeat === true ? used % a.total : used;
      return { ruleId: a.rule.id, answer: answerAt(a.rule, position) };
    }
    return undefined;
  }

  private counterKey(rule: Rule, facts: RequestFacts): string {
    switch (rule.per ?? 'rule') {
      case 'rule':
        return '';
      case 'contact':
        return rule.match?.externalCustomerId ?? facts.externalCustomerIds.join('\n');
      case 'delivery':
        return facts.deliveryId ?? '';
    }
  }

  private add(input: RuleInput, taken: Set<string>): void {
    let id = input.id;
    while (id === undefined || (input.id === undefined && taken.has(id))) {
      id = `rule-${this.nextId++}`;
    }
    taken.add(id);
    const rule: Rule = { ...input, id };
    const total = rule.answers.reduce((sum, a) => sum + (a.times ?? 1), 0);
    const specificity =
      (rule.match?.externalCustomerId !== undefined ? 2 : 0) + (rule.match?.path !== undefined ? 1 : 0);
    this.active.push({ rule, total, specificity, order: this.nextOrder++, uses: new Map(), used: 0 });
  }
}
