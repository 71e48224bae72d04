/**
 * The receiver's options: one typed defaults object, validated once at start with messages that name the
 * option and its bound. @see CONVENTIONS §7
 */
import * as z from 'zod';
import { DEFAULT_MAX_MESSAGES_PER_CONTACT, validate } from '@app-inbox/core';
import { MockReceiverError, describeViolations } from './errors.js';
import { SCENARIO_NAMES, parseRules, ruleListSchema, type RuleInput, type ScenarioName } from './rules.js';
import { signingSecretKey } from './signature.js';

/** Options of {@link createMockReceiverApp}. Every field is optional. */
export interface MockReceiverAppOptions {
  /** Basic auth user name; with `password`, requests without these credentials get a 401. Default: no auth. */
  username?: string;
  /** Basic auth password (a secret: never logged, never shown by a read endpoint). Default: no auth. */
  password?: string;
  /**
   * Standard Webhooks signing secrets (`whsec_` + base64), 1 to 10. With them a request needs `webhook-id`,
   * `webhook-timestamp` within `signatureToleranceSeconds` of the receiver's clock and a `v1` signature in
   * `webhook-signature` that verifies with at least one of them; otherwise a 401. Several model a receiver in the
   * middle of a rotation that accepts either. Secrets: never logged, never shown by a read endpoint or an error.
   * Default: signatures are not checked. @see https://www.standardwebhooks.com/
   */
  signingSecrets?: string[];
  /**
   * Largest distance between `webhook-timestamp` and the receiver's clock, either way (seconds); only with
   * `signingSecrets`. Default 300 (Standard Webhooks' recommendation).
   */
  signatureToleranceSeconds?: number;
  /** At most this many messages of one contact in one request; more gets a 429. Default 1000. @see SPEC §2 */
  maxMessagesPerContact?: number;
  /** Reject (400) unknown message fields, and a contact's list not newest first or with an id twice. Default true. */
  strict?: boolean;
  /** Requests kept in memory (the newest); older ones are only counted. 0 keeps none. Default 1000. */
  recordLimit?: number;
  /**
   * Body bytes kept in memory over all kept requests (bytes); the oldest requests are forgotten (only counted) beyond
   * it, the newest one is always kept. Bounds the memory of `recordLimit` requests of large bodies. Default 256 MiB.
   */
  recordBytesLimit?: number;
  /** Contacts whose last accepted list is kept (the most recent). Default 10000. */
  contactLimit?: number;
  /** A preset applied at start. Default `ok` (no rules). */
  scenario?: ScenarioName;
  /** Scripted answers applied at start, after the scenario's. Default none. */
  rules?: RuleInput[];
  /** `Retry-After` of a 429 (seconds), from the contract and the `rate-limited` preset. Default 1. */
  retryAfterSeconds?: number;
  /** Delay of the `slow` preset (milliseconds). Default 2000. */
  slowDelayMs?: number;
  /** Largest request body read (bytes); a larger one gets a 413. Default 64 MiB. */
  maxBodyBytes?: number;
  /** The realm of `WWW-Authenticate`. Default `mock-receiver`. */
  realm?: string;
  /** Called with an unexpected error of a request (answered 500). Default: printed to stderr. */
  onError?: (error: unknown) => void;
}

/** Options of {@link createMockReceiver}: the app's plus where to listen. */
export interface MockReceiverOptions extends MockReceiverAppOptions {
  /** Interface to listen on. Default `127.0.0.1`. */
  host?: string;
  /** TCP port; 0 picks a free one. Default 0. */
  port?: number;
}

/** The app's options with every default applied. */
export interface ResolvedAppOptions {
  auth: { username: string; password: string } | null;
  /** The keys of `signingSecrets` (decoded, in order) and the tolerance; null when signatures are not checked. */
  signing: { keys: Buffer[]; toleranceSeconds: number } | null;
  maxMessagesPerContact: number;
  strict: boolean;
  recordLimit: number;
  recordBytesLimit: number;
  contactLimit: number;
  scenario: ScenarioName;
  rules: RuleInput[];
  retryAfterSeconds: number;
  slowDelayMs: number;
  maxBodyBytes: number;
  realm: string;
  onError: (error: unknown) => void;
}

/** Every default, in one place. */
export const DEFAULTS = {
  host: '127.0.0.1',
  port: 0,
  maxMessagesPerContact: DEFAULT_MAX_MESSAGES_PER_CONTACT,
  strict: true,
  recordLimit: 1000,
  recordBytesLimit: 256 * 1024 * 1024,
  contactLimit: 10_000,
  scenario: 'ok',
  retryAfterSeconds: 1,
  slowDelayMs: 2000,
  maxBodyBytes: 64 * 1024 * 1024,
  realm: 'mock-receiver',
  signatureToleranceSeconds: 300,
} as const;

/** Most signing secrets a receiver takes (a rotation needs two). */
export const MAX_SIGNING_SECRETS = 10;

function intIn(min: number, max: number) {
  const message = `must be an integer from ${min} to ${max}`;
  return z.number({ error: message }).int({ error: message }).min(min, { error: message }).max(max, { error: message });
}

// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;

const appOptionsSchema = z
  .strictObject({
    username: z
      .string()
      .min(1, { error: 'must not be empty' })
      .refine((s) => !s.includes(':'), { error: 'must not contain ":" (RFC 7617 §2)' })
      .refine((s) => !CONTROL_CHARACTERS.test(s), { error: 'must not contain control characters' })
      .optional(),
    password: z
      .string()
      .min(1, { error: 'must not be empty' })
      .refine((s) => !CONTROL_CHARACTERS.test(s), { error: 'must not contain control characters' })
      .optional(),
    // Each secret is named by its index (`signingSecrets[1]`), never by its value.
    signingSecrets: z
      .array(
        z
          .string()
          .max(1024, { error: 'must be at most 1024 characters' })
          .refine((s) => signingSecretKey(s) !== null, {
            error: 'must be "whsec_" followed by standard base64 (Standard Webhooks)',
          }),
      )
      .min(1, { error: `must list 1 to ${MAX_SIGNING_SECRETS} secrets (leave it out to not check signatures)` })
      .max(MAX_SIGNING_SECRETS, { error: `must list 1 to ${MAX_SIGNING_SECRETS} secrets` })
      .optional(),
    signatureToleranceSeconds: intIn(0, 31_536_000).optional(),
    maxMessagesPerContact: intIn(1, 1_000_000).optional(),
    strict: z.boolean().optional(),
    recordLimit: intIn(0, 1_000_000).optional(),
    recordBytesLimit: intIn(1, 64 * 1024 * 1024 * 1024).optional(),
    contactLimit: intIn(1, 10_000_000).optional(),
    scenario: z.enum(SCENARIO_NAMES, { error: `must be one of ${SCENARIO_NAMES.join(', ')}` }).optional(),
    // The rules' own schema: bad rules are named with the other bad options, in one error.
    rules: ruleListSchema.optional(),
    retryAfterSeconds: intIn(0, 86_400).optional(),
    slowDelayMs: intIn(0, 600_000).optional(),
    maxBodyBytes: intIn(1, 1024 * 1024 * 1024).optional(),
    realm: z
      .string()
      .regex(/^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,100}$/, {
        error: 'must be 1-100 printable ASCII characters without " or \\',
      })
      .optional(),
    onError: z
      .custom<(error: unknown) => void>((v) => typeof v === 'function', { error: 'must be a function' })
      .optional(),
  })
  .superRefine((o, ctx) => {
    if ((o.username === undefined) !== (o.password === undefined)) {
      const missing = o.username === undefined ? 'username' : 'password';
      const other = missing === 'username' ? 'password' : 'username';
      ctx.addIssue({ code: 'custom', path: [missing], message: `is required when ${other} is set` });
    }
    if (o.signatureToleranceSeconds !== undefined && o.signingSecrets === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['signatureToleranceSeconds'],
        message: 'is only used with signingSecrets',
      });
    }
  });

const serverOptionsSchema = z.strictObject({
  host: z.string().min(1, { error: 'must not be empty' }).optional(),
  port: intIn(0, 65_535).optional(),
});

function defaultOnError(error: unknown): void {
  console.error('mock-receiver: internal error while answering a request:', error);
}

function fail(violations: { field: string; description: string }[]): never {
  throw new MockReceiverError('invalid_options', `invalid mock receiver options: ${describeViolations(violations)}`, {
    violations,
  });
}

/**
 * Validates the app's options and applies the defaults.
 * @throws MockReceiverError `invalid_options` listing every bad option (never a password's or a secret's value)
 */
export function resolveAppOptions(options: MockReceiverAppOptions = {}): ResolvedAppOptions {
  const result = validate(appOptionsSchema, options, '');
  if (!result.ok) fail(result.violations);
  const o = result.value;
  // What the schema cannot say: two rules with one id.
  let rules: RuleInput[] = [];
  if (o.rules !== undefined) {
    try {
      rules = parseRules(o.rules, 'rules');
    } catch (error) {
      if (error instanceof MockReceiverError) fail([...error.violations]);
      throw error;
    }
  }
  return {
    auth: o.username !== undefined && o.password !== undefined ? { username: o.username, password: o.password } : null,
    // Only the keys are kept: the secrets' text goes nowhere from here.
    signing:
      o.signingSecrets === undefined
        ? null
        : {
            keys: o.signingSecrets.map((secret) => signingSecretKey(secret)!),
            toleranceSeconds: o.signatureToleranceSeconds ?? DEFAULTS.signatureToleranceSeconds,
          },
    maxMessagesPerContact: o.maxMessagesPerContact ?? DEFAULTS.maxMessagesPerContact,
    strict: o.strict ?? DEFAULTS.strict,
    recordLimit: o.recordLimit ?? DEFAULTS.recordLimit,
    recordBytesLimit: o.recordBytesLimit ?? DEFAULTS.recordBytesLimit,
    contactLimit: o.contactLimit ?? DEFAULTS.contactLimit,
    scenario: o.scenario ?? DEFAULTS.scenario,
    rules,
    retryAfterSeconds: o.retryAfterSeconds ?? DEFAULTS.retryAfterSeconds,
    slowDelayMs: o.slowDelayMs ?? DEFAULTS.slowDelayMs,
    maxBodyBytes: o.maxBodyBytes ?? DEFAULTS.maxBodyBytes,
    realm: o.realm ?? DEFAULTS.realm,
    onError: o.onError ?? defaultOnError,
  };
}

/** Splits server options into the listening address and the app's options, validating both. */
export function resolveServerOptions(options: MockReceiverOptions = {}): {
  host: string;
  port: number;
  app: ResolvedAppOptions;
} {
  const { host, port, ...appOptions } = options;
  const listen = validate(serverOptionsSchema, { host, port }, '');
  const violations = listen.ok ? [] : listen.violations;
  let app: ResolvedAppOptions | undefined;
  try {
    app = resolveAppOptions(appOptions);
  } catch (error) {
    if (!(error instanceof MockReceiverError)) throw error;
    violations.push(...error.violations);
  }
  if (violations.length > 0 || app === undefined) fail(violations);
  return { host: host ?? DEFAULTS.host, port: port ?? DEFAULTS.port, app };
}
