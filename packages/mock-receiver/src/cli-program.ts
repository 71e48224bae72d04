/**
 * The command line of the mock receiver: flags -> validated options -> a running receiver that logs one
 * line per request. Kept apart from `cli.ts` (the executable) so it can be tested in-process.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { redactedCommandLine } from '@app-inbox/core';
import { MockReceiverError } from './errors.js';
import { DEFAULTS, resolveServerOptions, type MockReceiverOptions } from './options.js';
import type { ReceivedRequest } from './recorder.js';
import { SCENARIO_DESCRIPTIONS, SCENARIO_NAMES, parseRule, type RuleInput, type ScenarioName } from './rules.js';
import { createMockReceiver, type MockReceiver } from './server.js';

/** Where the CLI writes. */
export interface CliIo {
  out(line: string): void;
  err(line: string): void;
}

/** The parsed command line. */
export interface CliOptions extends MockReceiverOptions {
  /** Do not print a line per request. */
  quiet: boolean;
}

function integer(name: string, min: number, max: number) {
  return (value: string): number => {
    if (!/^\d+$/.test(value.trim()) || Number(value) < min || Number(value) > max) {
      throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}.`);
    }
    return Number(value);
  };
}

function collectRule(value: string, previous: RuleInput[] = []): RuleInput[] {
  let json: unknown;
  try {
    json = JSON.parse(value);
  } catch {
    throw new InvalidArgumentError('--rule must be JSON, e.g. \'{"answers":[{"status":503,"times":2}]}\'.');
  }
  try {
    return [...previous, parseRule(json, 'rule')];
  } catch (error) {
    if (error instanceof MockReceiverError) throw new InvalidArgumentError(`${error.message}.`);
    throw error;
  }
}

const HELP_AFTER = `
Scenarios (--scenario):
${SCENARIO_NAMES.map((name) => `  ${name.padEnd(14)} ${SCENARIO_DESCRIPTIONS[name]}`).join('\n')}

A rule (--rule, repeatable) is JSON:
  {"match":{"path":"/hook","externalCustomerId":"c-1"},   optional: which requests
   "answers":[{"status":503,"times":2},{"status":200}],    used in order; {} = the normal answer
   "repeat":false, "per":"rule"}                            per: rule | contact | delivery
  answer fields: status, times, delayMs, action (respond|drop|hang), headers, body,
                 retryAfterSeconds, location (3xx), drip {"chunks":10,"intervalMs":200}

Endpoints: POST any path = the webhook; GET / = live page; /__received, /__control,
           /__contacts/:externalCustomerId, /__duplicates, /__stats, /__events, /__health.

Signatures (Standard Webhooks): --signing-secret-env MY_VAR reads one or more whsec_ secrets, separated by
  spaces or commas, from the environment variable MY_VAR (never give a secret on the command line: ps shows it).
  A request then needs webhook-id, webhook-timestamp (within --signature-tolerance-seconds of this clock) and a
  v1 signature in webhook-signature that verifies with one of them, or it gets a 401. Two secrets model a
  receiver in the middle of a rotation, accepting either.

Examples:
  mock-receiver --port 8080 --username u --password p
  MY_SECRETS='whsec_new… whsec_old…' mock-receiver --signing-secret-env MY_SECRETS
  mock-receiver --scenario flaky
  mock-receiver --rule '{"answers":[{"status":500},{"status":502},{"status":503}],"repeat":true}'
`;

/** The commander program (no side effects until parsed). */
export function buildProgram(): Command {
  return new Command('mock-receiver')
    .description("Plays a customer's App Inbox webhook: checks, answers, records (SPEC §4-§5).")
    .addOption(
      new Option('-p, --port <port>', 'TCP port (0 picks a free one)')
        .default(8080)
        .argParser(integer('--port', 0, 65_535)),
    )
    .addOption(new Option('-H, --host <host>', 'interface to listen on').default(DEFAULTS.host))
    .addOption(new Option('--username <name>', 'Basic auth user name (with --password)').env('MOCK_RECEIVER_USERNAME'))
    .addOption(
      new Option('--password <password>', 'Basic auth password (or env MOCK_RECEIVER_PASSWORD, not shown in ps)').env(
        'MOCK_RECEIVER_PASSWORD',
      ),
    )
    .addOption(
      new Option(
        '--signing-secret-env <VAR>',
        'check Standard Webhooks signatures with the whsec_ secrets in env VAR (space- or comma-separated)',
      ),
    )
    .addOption(
      new Option(
        '--signature-tolerance-seconds <n>',
        `largest distance of webhook-timestamp from this clock, either way (default ${DEFAULTS.signatureToleranceSeconds})`,
      ).argParser(integer('--signature-tolerance-seconds', 0, 31_536_000)),
    )
    .addOption(
      new Option('--max-messages <n>', 'most messages of one contact in a request; more gets a 429')
        .default(DEFAULTS.maxMessagesPerContact)
        .argParser(integer('--max-messages', 1, 1_000_000)),
    )
    .addOption(new Option('--scenario <name>', 'a preset (see below)').choices(SCENARIO_NAMES).default('ok'))
    .addOption(new Option('--rule <json>', 'a scripted answer rule (repeatable, see below)').argParser(collectRule))
    .addOption(
      new Option('--record-limit <n>', 'requests kept in memory; older ones are only counted')
        .default(DEFAULTS.recordLimit)
        .argParser(integer('--record-limit', 0, 1_000_000)),
    )
    .addOption(
      new Option('--record-bytes <n>', 'body bytes of the kept requests; the oldest are forgotten beyond it')
        .default(DEFAULTS.recordBytesLimit)
        .argParser(integer('--record-bytes', 1, 64 * 1024 * 1024 * 1024)),
    )
    .addOption(
      new Option('--contact-limit <n>', 'contacts whose last accepted list is kept')
        .default(DEFAULTS.contactLimit)
        .argParser(integer('--contact-limit', 1, 10_000_000)),
    )
    .addOption(
      new Option('--retry-after <seconds>', 'Retry-After of a 429')
        .default(DEFAULTS.retryAfterSeconds)
        .argParser(integer('--retry-after', 0, 86_400)),
    )
    .addOption(
      new Option('--slow-delay <ms>', 'delay of the "slow" scenario (milliseconds)')
        .default(DEFAULTS.slowDelayMs)
        .argParser(integer('--slow-delay', 0, 600_000)),
    )
    .addOption(
      new Option('--max-body-bytes <bytes>', 'largest request body; a larger one gets a 413')
        .default(DEFAULTS.maxBodyBytes)
        .argParser(integer('--max-body-bytes', 1, 1024 * 1024 * 1024)),
    )
    .option(
      '--no-strict',
      'accept unknown message fields, and lists out of order or with an id twice (default: rejected with a 400)',
    )
    .option('-q, --quiet', 'do not print a line per request', false)
    .addHelpText('after', HELP_AFTER)
    .showHelpAfterError('(run mock-receiver --help for the flags)');
}

/**
 * The command line `argv` with the value of `--password` (or `--password=...`) replaced by `***`, or null when it
 * has none. For the process title: a command line is readable by every user of the host (`ps`).
 */
export function commandLineWithoutPassword(argv: readonly string[]): string | null {
  return redactedCommandLine(argv, ['--password']);
}

/**
 * The secrets of `--signing-secret-env`: the variable's value split at spaces and commas (a base64 secret has
 * neither).
 * @throws MockReceiverError `invalid_options` on `signingSecrets` when the variable is unset or blank. The message
 *   names neither the variable nor its value: a secret given to the flag by mistake must not be printed back.
 */
export function secretsFromEnv(variable: string, env: NodeJS.ProcessEnv): string[] {
  const secrets = (env[variable] ?? '').split(/[\s,]+/).filter((s) => s !== '');
  if (secrets.length === 0) {
    const description = 'names an environment variable that is not set or holds no secret';
    throw new MockReceiverError('invalid_options', `invalid mock receiver options: signingSecrets ${description}`, {
      violations: [{ field: 'signingSecrets', description }],
    });
  }
  return secrets;
}

/**
 * Turns the parsed flags into receiver options; `--signing-secret-env` is read from `env`.
 * @throws MockReceiverError `invalid_options` when `--signing-secret-env` names no secret
 */
export function toOptions(flags: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): CliOptions {
  const options: CliOptions = {
    port: flags.port as number,
    host: flags.host as string,
    maxMessagesPerContact: flags.maxMessages as number,
    scenario: flags.scenario as ScenarioName,
    rules: (flags.rule as RuleInput[] | undefined) ?? [],
    recordLimit: flags.recordLimit as number,
    recordBytesLimit: flags.recordBytes as number,
    contactLimit: flags.contactLimit as number,
    retryAfterSeconds: flags.retryAfter as number,
    slowDelayMs: flags.slowDelay as number,
    maxBodyBytes: flags.maxBodyBytes as number,
    strict: flags.strict as boolean,
    quiet: flags.quiet === true,
  };
  if (typeof flags.username === 'string') options.username = flags.username;
  if (typeof flags.password === 'string') options.password = flags.password;
  if (typeof flags.signingSecretEnv === 'string') options.signingSecrets = secretsFromEnv(flags.signingSecretEnv, env);
  if (typeof flags.signatureToleranceSeconds === 'number') {
    options.signatureToleranceSeconds = flags.signatureToleranceSeconds;
  }
  return options;
}

// eslint-disable-next-line no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;
const ESCAPES: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * `value` with its control characters escaped (`\n`, `\u001b`): what a request sends (an externalCustomerId in the
 * body, a header) must not start a log line of its own that looks like another request, nor reach the terminal as an
 * escape sequence.
 */
function printable(value: string): string {
  return value.replace(UNPRINTABLE, (c) => ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** One log line per request; never headers or bodies (they may carry secrets or personal data). */
export function formatLogLine(r: ReceivedRequest): string {
  const answer = r.answer.status === null ? r.answer.outcome : String(r.answer.status);
  const parts = [r.receivedAt, r.method, printable(r.path), answer];
  if (r.externalCustomerIds.length > 0) parts.push(`contacts=${printable(r.externalCustomerIds.join(','))}`);
  if (r.messageCount !== null) parts.push(`messages=${r.messageCount}`);
  if (r.deliveryId !== null) parts.push(`id=${printable(r.deliveryId)}`);
  if (r.signature !== 'not_required') parts.push(`signature=${r.signature}`);
  if (r.duplicate) parts.push('duplicate');
  if (r.answer.ruleId !== null) parts.push(`rule=${r.answer.ruleId}`);
  parts.push(`${r.durationMs}ms`);
  return parts.join(' ');
}

/**
 * Parses `argv` (as `process.argv`), starts the receiver and prints where it listens.
 * Resolves with the receiver, or with an exit code when it could not start.
 */
export async function startCli(argv: readonly string[], io: CliIo): Promise<MockReceiver | number> {
  const program = buildProgram();
  program.parse([...argv]);
  let options: CliOptions;
  try {
    options = toOptions(program.opts());
    const { quiet: _quiet, ...checked } = options;
    resolveServerOptions(checked);
  } catch (error) {
    if (error instanceof MockReceiverError) {
      const lines = error.violations.map((v) => `  ${flagOf(v.field)} ${v.description}`);
      io.err(['mock-receiver: invalid options:', ...lines].join('\n'));
      return 2;
    }
    throw error;
  }
  const { quiet, ...receiverOptions } = options;
  let receiver: MockReceiver;
  try {
    receiver = await createMockReceiver(receiverOptions);
  } catch (error) {
    if (error instanceof MockReceiverError) {
      io.err(`mock-receiver: ${error.message}`);
      return 2;
    }
    const code = (error as { code?: unknown }).code;
    io.err(
      `mock-receiver: cannot listen on ${options.host}:${options.port}${typeof code === 'string' ? ` (${code})` : ''}`,
    );
    return 1;
  }
  const auth = options.username === undefined ? 'none' : `basic (user "${options.username}")`;
  // How many secrets, never which.
  const secrets = options.signingSecrets?.length ?? 0;
  const signature =
    secrets === 0
      ? 'not checked'
      : `${secrets} secret${secrets === 1 ? '' : 's'}, tolerance ` +
        `${options.signatureToleranceSeconds ?? DEFAULTS.signatureToleranceSeconds} s`;
  io.out(`mock-receiver listening on ${receiver.url}`);
  io.out(
    `  auth: ${auth}; signature: ${signature}; scenario: ${options.scenario ?? 'ok'}; rules: ${options.rules?.length ?? 0}; ` +
      `max messages per contact: ${options.maxMessagesPerContact}; strict: ${options.strict}`,
  );
  io.out(`  page: ${receiver.url}/   records: ${receiver.url}/__received   control: ${receiver.url}/__control`);
  if (!quiet) receiver.records.subscribe((event) => event.type === 'record' && io.out(formatLogLine(event.record)));
  return receiver;
}

/** The flag that sets an option, for error messages. */
function flagOf(field: string): string {
  const flags: Record<string, string> = {
    maxMessagesPerContact: '--max-messages',
    recordLimit: '--record-limit',
    recordBytesLimit: '--record-bytes',
    contactLimit: '--contact-limit',
    retryAfterSeconds: '--retry-after',
    slowDelayMs: '--slow-delay',
    maxBodyBytes: '--max-body-bytes',
    signingSecrets: '--signing-secret-env',
    signatureToleranceSeconds: '--signature-tolerance-seconds',
  };
  // The secrets come from one variable: signingSecrets[1] is its second secret (named by position, never by value).
  const secret = /^signingSecrets\[(\d+)\]/.exec(field);
  if (secret !== null) return `--signing-secret-env (secret #${Number(secret[1]) + 1})`;
  // The rules come from repeated --rule flags: rules[1] is the second one.
  const rule = /^rules\[(\d+)\]/.exec(field);
  if (rule !== null) return `--rule #${Number(rule[1]) + 1}${field.slice(rule[0].length)}`;
  const top = field.split(/[.[]/)[0] ?? field;
  return flags[top] ?? (top === '' ? '' : `--${top}`);
}
