/**
 * `app-inbox`, the command-line client of the service (issue 8): every RPC as a command, human tables by
 * default and the API's JSON with `--json`, clear errors (gRPC status name, the message, each bad field)
 * and a non-zero exit code on failure. Built on the generated grpc-js clients.
 * @see OPERATIONS.md "Command-line client"
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import type { ServiceError, StatusObject } from '@grpc/grpc-js';
import {
  GetDeliveryResponse,
  ListDeliveriesResponse,
  RetryDeliveryResponse,
  WatchDeliveriesResponse,
  type Delivery,
  type DeliveryState,
} from '../gen/app_inbox/v1/delivery.js';
import { PublishMessagesResponse, ResyncContactsResponse, type ContactDelivery } from '../gen/app_inbox/v1/message.js';
import {
  GetWebhookResponse,
  UpdateWebhookResponse,
  UpsertWebhookResponse,
  type Webhook,
} from '../gen/app_inbox/v1/webhook.js';
import { GrpcAuthConfigError, bearerTokenProblem } from '../security/grpc-auth.js';
import { ApiClient } from './client.js';
import { CliError, RpcError, isServiceError, rpcError } from './errors.js';
import {
  STATE_NAMES,
  circuitName,
  count,
  json,
  keyValues,
  stateFromName,
  stateName,
  table,
  time,
  verdictName,
} from './format.js';
import { PUBLISH_BATCH_SIZE, fileFieldPath, parseMessageFile } from './messages.js';

/** Where the client reads and writes; `process` in the real program, fakes in tests. */
export interface CliIo {
  stdout: { write(text: string): unknown; isTTY?: boolean };
  stderr: { write(text: string): unknown; isTTY?: boolean };
  /** All of standard input (`publish <account> -`, `--password-stdin`). */
  readStdin(): Promise<string>;
  readFile(path: string): Promise<string>;
  env: Readonly<Record<string, string | undefined>>;
  /** Calls `listener` on Ctrl-C (SIGINT) or SIGTERM; returns the unsubscribe function. */
  onInterrupt(listener: () => void): () => void;
}

/** Defaults of the global options. */
export const CLI_DEFAULTS = Object.freeze({
  address: '127.0.0.1:50051',
  /** Deadline of each call (seconds). */
  timeoutSeconds: 30,
});

/** Rows of a table printed at most before the rest is summed up (the whole list is in `--json`). */
const MAX_TABLE_ROWS = 50;

interface GlobalOptions {
  address?: string;
  token?: string;
  tls?: boolean;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  json?: boolean;
  timeout?: number;
}

/** Largest value of a proto `uint32` field (a larger one fails to serialize: INTERNAL, before any call). */
const MAX_UINT32 = 4_294_967_295;
/** Longest `--timeout` (seconds): one day; grpc-js throws on a deadline years ahead. */
const MAX_TIMEOUT_SECONDS = 86_400;

function positiveInt(what: string, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) {
      throw new InvalidArgumentError(`${what} must be a positive integer.`);
    }
    if (n > max) throw new InvalidArgumentError(`${what} must be at most ${max.toLocaleString('en-US')}.`);
    return n;
  };
}

/** A target with a gRPC name-resolver scheme (`dns:///host:port`, `unix:/path`, ...), passed on as is. */
const GRPC_TARGET = /^(?:dns|unix|unix-abstract|ipv4|ipv6|vsock):\S+$/i;
/** `host` or `host:port`: a name, an IPv4 address or a bracketed IPv6 address; gRPC's default port is 443. */
const HOST_PORT = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$/;

/**
 * The server address from `--address`, else `APP_INBOX_ADDRESS`, else the default. An empty or unparsable one
 * is a usage error (exit 2, nothing sent): grpc-js threw "Could not parse target name" on an empty one (an
 * unexpected error with a stack trace, exit 1) and took the others as names that never resolve (UNAVAILABLE).
 * An empty variable is refused rather than taken as unset: `APP_INBOX_ADDRESS="$UNSET"` must not quietly
 * send to whatever server listens on the default address.
 */
export function serverAddress(flag: string | undefined, variable: string | undefined): string {
  const [source, address] =
    flag !== undefined
      ? ['--address', flag]
      : variable !== undefined
        ? ['APP_INBOX_ADDRESS', variable]
        : ['default', CLI_DEFAULTS.address];
  const port = HOST_PORT.exec(address)?.[1];
  const valid =
    GRPC_TARGET.test(address) ||
    (HOST_PORT.test(address) && (port === undefined || (Number(port) >= 1 && Number(port) <= 65_535)));
  if (!valid) {
    throw new CliError(
      'usage',
      `${source}: ${address.trim() === '' ? 'empty' : JSON.stringify(address)} is not a server address: give host:port, e.g. ${CLI_DEFAULTS.address} (a port from 1 to 65,535)`,
    );
  }
  return address;
}

/** What one command needs: output, the JSON switch, and the client (created on first use, closed at the end). */
class Context {
  readonly json: boolean;
  #client: ApiClient | null = null;

  constructor(
    readonly io: CliIo,
    readonly globals: GlobalOptions,
  ) {
    this.json = globals.json === true;
  }

  get client(): ApiClient {
    if (this.#client === null) {
      const g = this.globals;
      const env = this.io.env;
      const address = serverAddress(g.address, env.APP_INBOX_ADDRESS);
      const token = g.token ?? env.APP_INBOX_TOKEN;
      const problem = token ? bearerTokenProblem(token) : null;
      if (problem !== null) {
        throw new CliError('usage', `${g.token !== undefined ? '--token' : 'APP_INBOX_TOKEN'}: ${problem}`);
      }
      try {
        this.#client = new ApiClient({
          address,
          timeoutMs: (g.timeout ?? CLI_DEFAULTS.timeoutSeconds) * 1000,
          token,
          tls: g.tls,
          caFile: g.caFile,
          certFile: g.certFile,
          keyFile: g.keyFile,
        });
      } catch (error) {
        if (error instanceof GrpcAuthConfigError) throw new CliError('usage', error.message, [], { cause: error });
        // grpc-js's own parse of the target, for what serverAddress let through.
        if (error instanceof Error && /could not parse target/i.test(error.message)) {
          throw new CliError(
            'usage',
            `${g.address !== undefined ? '--address' : 'APP_INBOX_ADDRESS'}: ${error.message}`,
            [],
            {
              cause: error,
            },
          );
        }
        throw error;
      }
    }
    return this.#client;
  }

  out(text: string): void {
    this.io.stdout.write(text);
  }

  /** A progress or status line on stderr (never on stdout, which may be piped into a file or jq). */
  note(text: string): void {
    this.io.stderr.write(`${text}\n`);
  }

  close(): void {
    this.#client?.close();
  }
}

function webhookView(w: Webhook | undefined): string {
  if (w === undefined) return '';
  const auth = w.basicAuth;
  return keyValues([
    ['account', w.accountId],
    ['url', w.url],
    ['enabled', w.enabled ? 'yes' : 'no (messages are kept, nothing is sent)'],
    ['basic auth', auth ? `${auth.username} (password ${auth.hasPassword ? 'set' : 'not set'})` : 'none'],
    [
      'signing secret',
      !w.hasSigningSecret
        ? 'none'
        : w.previousSigningSecretExpireTimeMs !== undefined
          ? `set (the one it replaced signs too until ${time(w.previousSigningSecretExpireTimeMs)})`
          : 'set',
    ],
    ['max messages', `${count(w.maxMessagesPerContact)} per contact`],
    ['message TTL', `${count(w.defaultMessageTtlSeconds)} s`],
    ['rate limit', w.rateLimitPerSecond > 0 ? `${count(w.rateLimitPerSecond)} requests/s` : 'none'],
    // Names only: the server never returns a header's value (an API key, a token).
    ['headers', w.headerNames.length > 0 ? `${w.headerNames.join(', ')} (values not shown)` : 'none'],
    [
      'circuit',
      w.circuit
        ? `${circuitName(w.circuit.state)}${w.circuit.consecutiveFailures > 0 ? ` (${w.circuit.consecutiveFailures} failures in a row)` : ''}`
        : '-',
    ],
    ['created', time(w.createTimeMs)],
    ['updated', time(w.updateTimeMs)],
  ]);
}

function contactTable(deliveries: readonly ContactDelivery[]): string {
  const rows = deliveries.slice(0, MAX_TABLE_ROWS).map((d) => [d.externalCustomerId, d.deliveryId]);
  const more = deliveries.length - rows.length;
  return table(['CONTACT', 'DELIVERY'], rows) + (more > 0 ? `... and ${count(more)} more (--json lists all)\n` : '');
}

function deliveryRow(d: Delivery): string[] {
  return [
    d.id,
    d.accountId,
    d.externalCustomerId,
    stateName(d.state),
    String(d.attemptCount),
    d.lastError ?? '-',
    time(d.updateTimeMs),
  ];
}

function deliveryView(d: Delivery, showBody: boolean): string {
  let out = keyValues([
    ['delivery', d.id],
    ['account', d.accountId],
    ['contact', d.externalCustomerId],
    ['state', stateName(d.state)],
    ['attempts', String(d.attemptCount)],
    ['next attempt', time(d.nextAttemptTimeMs)],
    ['last error', d.lastError ?? '-'],
    ['messages', d.messageIds.length === 0 ? '- (built at the first attempt)' : count(d.messageIds.length)],
    ['superseded by', d.supersededBy ?? '-'],
    ['created', time(d.createTimeMs)],
    ['updated', time(d.updateTimeMs)],
  ]);
  if (d.attempts.length > 0) {
    out += `\n${table(
      ['#', 'STARTED', 'DURATION', 'ANSWER', 'VERDICT', 'NEXT ATTEMPT'],
      d.attempts.map((a) => [
        String(a.attemptNo),
        time(a.startTimeMs),
        `${count(a.durationMs)} ms`,
        a.statusCode !== undefined ? `HTTP ${a.statusCode}` : (a.errorKind ?? '-'),
        verdictName(a.verdict),
        time(a.nextAttemptTimeMs),
      ]),
    )}`;
  }
  if (showBody) out += `\nbody:\n${d.body.length > 0 ? Buffer.from(d.body).toString('utf8') : '(not built yet)'}\n`;
  return out;
}

function outcomeLine(o: WatchDeliveriesResponse): string {
  const answer = o.statusCode !== undefined ? `HTTP ${o.statusCode}` : (o.errorKind ?? '-');
  const extra =
    o.supersededBy !== undefined
      ? ` superseded by ${o.supersededBy}`
      : o.nextAttemptTimeMs !== undefined
        ? ` next attempt ${time(o.nextAttemptTimeMs)}`
        : '';
  return `${time(o.timeMs)}  ${stateName(o.state).padEnd(10)}  ${o.accountId}  ${o.externalCustomerId}  ${o.deliveryId}  attempt ${o.attemptNo}  ${answer}  ${o.messageIds.length} messages${extra}\n`;
}

/**
 * A filter option as given: an empty one (`--account "$UNSET"`) is refused rather than taken as no filter, which
 * would list or watch every account's deliveries.
 */
function filterOption(flag: string, value: string | undefined, what: string): string {
  if (value !== undefined && value.trim() === '') {
    throw new CliError('usage', `${flag}: empty: give ${what}, or leave the option out`);
  }
  return value ?? '';
}

/**
 * The webhook's own headers of `--header-env NAME=VARIABLE` options: each value read from its environment variable,
 * never from the command line (`ps` and the shell history keep it, and a header is most often an API key). The
 * server checks the names and values (and says which header is wrong); only the form of an option is checked here.
 */
function headersFrom(ctx: Context, options: readonly string[]): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const option of options) {
    const at = option.indexOf('=');
    const name = at < 0 ? '' : option.slice(0, at);
    const variable = at < 0 ? '' : option.slice(at + 1);
    if (name === '' || variable === '') {
      // What was given is not repeated: `--header-env "X-Api-Key: k_live_..."` is a value typed where a name goes.
      throw new CliError(
        'usage',
        '--header-env: give NAME=VARIABLE, the header name and the variable holding its value',
      );
    }
    // The same name twice would keep only the last value, unseen (the server compares names in any case).
    if (Object.hasOwn(headers, name)) throw new CliError('usage', `--header-env: ${name} is given twice`);
    headers[name] = secretFrom(ctx, variable, `--header-env ${name}`);
  }
  return headers;
}

/** An environment variable's name as shells accept one (POSIX): what a secret option names, never the secret. */
const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Reads a secret (a password, a header's value) from the environment variable `variable`; never from a flag (`ps`
 * shows flags). A `variable` that cannot be a variable's name is most likely the secret itself, typed in its place:
 * it is refused without being repeated.
 */
function secretFrom(ctx: Context, variable: string, what: string): string {
  if (!VARIABLE_NAME.test(variable)) {
    throw new CliError(
      'usage',
      `${what}: give the name of the environment variable that holds the secret (letters, digits and _), not the secret`,
    );
  }
  const value = ctx.io.env[variable];
  if (value === undefined || value === '') {
    throw new CliError('usage', `${what}: the environment variable ${variable} is not set or empty`);
  }
  return value;
}

/** Builds the program; `ran` receives each command's Context so that the caller closes its client. */
function buildProgram(io: CliIo, contexts: Context[]): Command {
  const program = new Command('app-inbox')
    .description(
      'Command-line client of the App Inbox webhook service (gRPC). Human output by default, the API JSON with --json.',
    )
    .addOption(
      new Option('--address <host:port>', `server address (env APP_INBOX_ADDRESS; default ${CLI_DEFAULTS.address})`),
    )
    .addOption(
      new Option(
        '--token <token>',
        'bearer token sent with every call (prefer env APP_INBOX_TOKEN: a command line is visible to other users)',
      ),
    )
    .option('--tls', 'use TLS (implied by --ca-file / --cert-file); the system CAs verify the server by default')
    .option('--ca-file <file>', 'PEM CA bundle the server certificate must chain to')
    .option('--cert-file <file>', 'PEM client certificate (mutual TLS; with --key-file)')
    .option('--key-file <file>', 'PEM private key of --cert-file')
    .option('--json', 'print the API JSON (as buf curl does) instead of tables')
    .addOption(
      new Option(
        '--timeout <seconds>',
        `deadline of each call (default ${CLI_DEFAULTS.timeoutSeconds}, at most 86,400)`,
      ).argParser(positiveInt('--timeout', MAX_TIMEOUT_SECONDS)),
    )
    .showHelpAfterError('(add --help for usage)')
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    })
    .exitOverride();
  program.addHelpText(
    'after',
    `
Exit codes: 0 done; 1 the server refused the call or could not be reached; 2 bad usage or input.
Examples:
  app-inbox webhook set acct-1 --url https://example.com/hook --username u --password-env HOOK_PASSWORD
  app-inbox webhook set acct-1 --url https://example.com/hook --header-env X-Api-Key=HOOK_API_KEY
  app-inbox publish acct-1 messages.json
  app-inbox deliveries list --account acct-1 --state failed
  app-inbox watch --account acct-1`,
  );

  /** Runs an action with its Context; errors propagate to runCli. */
  const act =
    <A extends unknown[]>(fn: (ctx: Context, ...args: A) => Promise<void>) =>
    async (...args: unknown[]): Promise<void> => {
      const command = args[args.length - 1] as Command;
      const ctx = new Context(io, command.optsWithGlobals<GlobalOptions>());
      // A bad address is refused before a file or standard input is read, like any other usage mistake.
      serverAddress(ctx.globals.address, io.env.APP_INBOX_ADDRESS);
      contexts.push(ctx);
      await fn(ctx, ...(args.slice(0, -1) as A));
    };

  // ------------------------------------------------------------------ webhook
  const webhook = program.command('webhook').description('configure the webhook of an account');
  webhook
    .command('set <account>')
    .description(
      'create or replace the webhook of an account (the whole configuration: options left out take their defaults)',
    )
    .requiredOption('--url <url>', 'http(s) URL the messages are POSTed to')
    .option('--username <name>', 'Basic auth user name (with --password-stdin or --password-env)')
    .option('--password-stdin', 'read the Basic auth password from standard input')
    .option('--password-env <variable>', 'read the Basic auth password from this environment variable')
    .addOption(
      new Option('--max-messages <n>', 'most messages of one contact in a delivery (default 1000)').argParser(
        positiveInt('--max-messages', MAX_UINT32),
      ),
    )
    .option('--disabled', 'keep accepting messages but send nothing until enabled again')
    .option('--signing-secret-env <variable>', 'read a Standard Webhooks signing secret (whsec_...) from this variable')
    .option(
      '--header-env <name=variable>',
      'send the header NAME on every request, its value (e.g. an API key) read from VARIABLE; repeatable',
      (value: string, previous: string[]) => [...previous, value],
      [] as string[],
    )
    .addOption(
      new Option(
        '--ttl-seconds <n>',
        'time-to-live of messages published without their own (default: the server option)',
      ).argParser(positiveInt('--ttl-seconds', Number.MAX_SAFE_INTEGER)),
    )
    .addOption(
      new Option('--rate-limit <n>', 'most requests per second to the URL (default: no limit)').argParser(
        positiveInt('--rate-limit', MAX_UINT32),
      ),
    )
    .action(
      act(
        async (
          ctx,
          account: string,
          o: {
            url: string;
            username?: string;
            passwordStdin?: boolean;
            passwordEnv?: string;
            maxMessages?: number;
            disabled?: boolean;
            signingSecretEnv?: string;
            ttlSeconds?: number;
            rateLimit?: number;
            headerEnv: string[];
          },
        ) => {
          if (o.passwordStdin === true && o.passwordEnv !== undefined) {
            throw new CliError('usage', '--password-stdin and --password-env: give only one');
          }
          const hasPassword = o.passwordStdin === true || o.passwordEnv !== undefined;
          if (o.username !== undefined && !hasPassword) {
            throw new CliError('usage', '--username needs a password: --password-stdin or --password-env <variable>');
          }
          if (o.username === undefined && hasPassword) {
            throw new CliError('usage', '--password-stdin / --password-env need --username');
          }
          let password = '';
          if (o.passwordStdin === true) {
            // One line; the newline `echo` or a here-string adds is not part of the password.
            password = (await ctx.io.readStdin()).replace(/\r?\n$/, '');
            if (password === '') throw new CliError('usage', '--password-stdin: standard input is empty');
          } else if (o.passwordEnv !== undefined) {
            password = secretFrom(ctx, o.passwordEnv, '--password-env');
          }
          const signingSecret =
            o.signingSecretEnv === undefined ? '' : secretFrom(ctx, o.signingSecretEnv, '--signing-secret-env');
          const headers = headersFrom(ctx, o.headerEnv);
          const response = await ctx.client.upsertWebhook({
            accountId: account,
            url: o.url,
            ...(o.username !== undefined ? { basicAuth: { username: o.username, password } } : {}),
            ...(o.maxMessages !== undefined ? { maxMessagesPerContact: o.maxMessages } : {}),
            enabled: o.disabled !== true,
            signingSecret,
            ...(o.ttlSeconds !== undefined ? { defaultMessageTtlSeconds: o.ttlSeconds } : {}),
            ...(o.rateLimit !== undefined ? { rateLimitPerSecond: o.rateLimit } : {}),
            headers,
          });
          if (ctx.json) return ctx.out(json(UpsertWebhookResponse.toJSON(response)));
          ctx.out(`Webhook of account ${account} ${response.created ? 'created' : 'replaced'}.\n`);
          ctx.out(webhookView(response.webhook));
        },
      ),
    );
  for (const enabled of [true, false]) {
    webhook
      .command(`${enabled ? 'enable' : 'disable'} <account>`)
      .description(
        enabled
          ? 'send the account’s messages again (UpdateWebhook: the rest of the configuration, secrets included, is kept)'
          : 'keep accepting the account’s messages but send nothing until enabled again (the rest is kept)',
      )
      .action(
        act(async (ctx, account: string) => {
          const response = await ctx.client
            .updateWebhook({ accountId: account, updateMask: ['enabled'], enabled })
            .catch((error: unknown) => {
              // The server's message names update_mask, which this command does not take: say what to run instead.
              if (!(error instanceof RpcError) || error.reason !== 'WEBHOOK_SECRET_UNREADABLE') throw error;
              throw new RpcError(error.status, error.message, error.violations, error.reason, {
                cause: error,
                hint:
                  `save the whole webhook again with its secrets: app-inbox webhook set ${account} --url <url> ` +
                  '--username <name> --password-env <variable> [--signing-secret-env <variable>] ' +
                  '[--header-env <name=variable> ...]' +
                  `${enabled ? '' : ' --disabled'} (SECURITY.md, lost key)`,
              });
            });
          if (ctx.json) return ctx.out(json(UpdateWebhookResponse.toJSON(response)));
          ctx.out(`Webhook of account ${account} ${enabled ? 'enabled' : 'disabled'}.\n`);
          ctx.out(webhookView(response.webhook));
        }),
      );
  }
  webhook
    .command('get <account>')
    .description(
      'show the webhook of an account (secrets are never shown, only whether they are set; of its headers, the names)',
    )
    .action(
      act(async (ctx, account: string) => {
        const response = await ctx.client.getWebhook({ accountId: account });
        if (ctx.json) return ctx.out(json(GetWebhookResponse.toJSON(response)));
        ctx.out(webhookView(response.webhook));
      }),
    );
  webhook
    .command('delete <account>')
    .description('delete the webhook of an account, its stored messages and all its deliveries')
    .action(
      act(async (ctx, account: string) => {
        await ctx.client.deleteWebhook({ accountId: account });
        if (ctx.json) return ctx.out(json({}));
        ctx.out(`Webhook of account ${account} deleted.\n`);
      }),
    );

  // ------------------------------------------------------------------ publish, resync
  program
    .command('publish <account> <file>')
    .description(
      `publish the messages of a JSON file (an array of messages in the seed format, each with an optional ttlSeconds or expiresAtMs; "-" reads standard input), in calls of ${count(PUBLISH_BATCH_SIZE)}`,
    )
    .action(
      act(async (ctx, account: string, file: string) => {
        const source = file === '-' ? 'standard input' : file;
        let text: string;
        try {
          text = file === '-' ? await ctx.io.readStdin() : await ctx.io.readFile(file);
        } catch (error) {
          throw new CliError(
            'input',
            `${source}: cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`,
            [],
            {
              cause: error,
            },
          );
        }
        const messages = parseMessageFile(text, source);
        const total = PublishMessagesResponse.fromPartial({});
        // A contact in several calls may get a delivery per call (the first may be sent already): the last
        // one carries the contact's newest state, and is the one listed.
        const byContact = new Map<string, ContactDelivery>();
        const batches = Math.max(1, Math.ceil(messages.length / PUBLISH_BATCH_SIZE));
        for (let b = 0; b < batches; b++) {
          const start = b * PUBLISH_BATCH_SIZE;
          const batch = messages.slice(start, start + PUBLISH_BATCH_SIZE);
          let response: PublishMessagesResponse;
          try {
            response = await ctx.client.publishMessages({ accountId: account, messages: batch });
          } catch (error) {
            if (!(error instanceof RpcError) || b === 0) throw error;
            // Earlier calls are committed; ids make a publish idempotent, so running the file again is safe.
            const violations = error.violations.map((v) => ({ ...v, field: fileFieldPath(v.field, start) }));
            throw new RpcError(
              error.status,
              violations.length > 0
                ? `${violations.length} invalid field${violations.length === 1 ? '' : 's'} in call ${b + 1} of ${batches}`
                : `${error.message} (call ${b + 1} of ${batches})`,
              violations,
              error.reason,
              {
                cause: error,
                hint: `the ${count(start)} messages before that call were published; running the file again is safe: known ids are ignored`,
              },
            );
          }
          total.accepted += response.accepted;
          total.duplicates += response.duplicates;
          total.skippedWithoutExternalCustomerId += response.skippedWithoutExternalCustomerId;
          total.skippedIndices.push(...response.skippedIndices.map((i) => i + start));
          for (const d of response.deliveries) byContact.set(d.externalCustomerId, d);
          if (batches > 1) {
            const done = start + batch.length;
            ctx.note(
              `published ${count(done)} / ${count(messages.length)} messages (${Math.floor((done * 100) / messages.length)}%)`,
            );
          }
        }
        total.deliveries = [...byContact.values()];
        if (ctx.json) return ctx.out(json(PublishMessagesResponse.toJSON(total)));
        ctx.out(
          `Published ${count(messages.length)} messages to account ${account}: ${count(total.accepted)} accepted, ${count(total.duplicates)} duplicates, ${count(total.skippedWithoutExternalCustomerId)} skipped without externalCustomerId.\n`,
        );
        if (total.skippedIndices.length > 0) {
          const shown = total.skippedIndices.slice(0, 20).join(', ');
          ctx.out(
            `Skipped (no externalCustomerId): index ${shown}${total.skippedIndices.length > 20 ? ', ...' : ''}\n`,
          );
        }
        if (total.deliveries.length > 0) {
          ctx.out(`${count(total.deliveries.length)} contacts scheduled:\n${contactTable(total.deliveries)}`);
        }
      }),
    );
  program
    .command('resync <account> [contacts...]')
    .description(
      'send the named contacts (externalCustomerIds) their current list again, or every contact with messages (--all)',
    )
    .option('--all', 'every contact of the account with at least one message not expired')
    .action(
      act(async (ctx, account: string, contacts: string[], o: { all?: boolean }) => {
        if ((o.all === true) === contacts.length > 0) {
          throw new CliError('usage', 'resync: name the contacts or give --all (not both)');
        }
        const response = await ctx.client.resyncContacts({
          accountId: account,
          externalCustomerIds: contacts,
          all: o.all === true,
        });
        if (ctx.json) return ctx.out(json(ResyncContactsResponse.toJSON(response)));
        ctx.out(`${count(response.scheduledContacts)} contacts scheduled:\n${contactTable(response.deliveries)}`);
        // The server lists as many as fit in its answer; a resync of all the contacts of a large account can be more.
        const unlisted = response.scheduledContacts - response.deliveries.length;
        if (unlisted > 0) {
          ctx.out(
            `${count(unlisted)} of them not in the answer (too many to list): deliveries list --account ${account} --state pending\n`,
          );
        }
      }),
    );

  // ------------------------------------------------------------------ deliveries
  const deliveries = program.command('deliveries').description('inspect and replay deliveries');
  deliveries
    .command('list')
    .description('list deliveries, newest first, one page at a time')
    .option('--account <account>', 'only this account')
    .option('--contact <externalCustomerId>', 'only this contact (with --account)')
    .option('--state <states>', `only these states, a comma list of ${STATE_NAMES.join(', ')}`)
    .addOption(
      new Option('--limit <n>', 'deliveries per page (the server caps it)').argParser(
        positiveInt('--limit', MAX_UINT32),
      ),
    )
    .option('--page-token <token>', 'the next page, as printed by the previous one')
    .action(
      act(
        async (ctx, o: { account?: string; contact?: string; state?: string; limit?: number; pageToken?: string }) => {
          const accountId = filterOption('--account', o.account, 'an account id');
          const externalCustomerId = filterOption('--contact', o.contact, 'an externalCustomerId');
          const states: DeliveryState[] = [];
          const stateNames = (o.state ?? '').split(',').filter((s) => s.trim() !== '');
          if (o.state !== undefined && stateNames.length === 0) filterOption('--state', '', 'states');
          for (const name of stateNames) {
            const state = stateFromName(name);
            if (state === null) {
              throw new CliError('usage', `--state: "${name.trim()}" is not one of ${STATE_NAMES.join(', ')}`);
            }
            states.push(state);
          }
          const response = await ctx.client.listDeliveries({
            accountId,
            externalCustomerId,
            states,
            pageSize: o.limit ?? 0,
            pageToken: o.pageToken ?? '',
          });
          if (ctx.json) return ctx.out(json(ListDeliveriesResponse.toJSON(response)));
          if (response.deliveries.length === 0) {
            ctx.out('No deliveries.\n');
          } else {
            ctx.out(
              table(
                ['DELIVERY', 'ACCOUNT', 'CONTACT', 'STATE', 'ATTEMPTS', 'LAST ERROR', 'UPDATED'],
                response.deliveries.map(deliveryRow),
              ),
            );
          }
          if (response.nextPageToken !== '') ctx.out(`More: --page-token ${response.nextPageToken}\n`);
        },
      ),
    );
  deliveries
    .command('show <delivery>')
    .description('show a delivery with its attempts')
    .option('--body', 'also print the exact request body (frozen at the first attempt)')
    .action(
      act(async (ctx, id: string, o: { body?: boolean }) => {
        const response = await ctx.client.getDelivery({ deliveryId: id, includeBody: o.body === true });
        if (ctx.json) return ctx.out(json(GetDeliveryResponse.toJSON(response)));
        if (response.delivery) ctx.out(deliveryView(response.delivery, o.body === true));
      }),
    );
  deliveries
    .command('retry <delivery>')
    .description(
      "send a delivery again now: the same id and bytes while it is its contact's newest, else the contact's newer state",
    )
    .action(
      act(async (ctx, id: string) => {
        const response = await ctx.client.retryDelivery({ deliveryId: id });
        if (ctx.json) return ctx.out(json(RetryDeliveryResponse.toJSON(response)));
        const d = response.delivery;
        if (d === undefined) return;
        ctx.out(
          response.replacedByNewer
            ? `A newer state of contact ${d.externalCustomerId} exists: delivery ${d.id} (${stateName(d.state)}) is sent instead.\n`
            : `Delivery ${d.id} will be sent again (${stateName(d.state)}, due ${time(d.nextAttemptTimeMs)}).\n`,
        );
      }),
    );

  // ------------------------------------------------------------------ watch
  program
    .command('watch')
    .description('print delivery outcomes as they happen (delivered, retrying, failed, superseded) until Ctrl-C')
    .option('--account <account>', 'only this account')
    .action(
      act(async (ctx, o: { account?: string }) => {
        const stream = ctx.client.watchDeliveries({ accountId: filterOption('--account', o.account, 'an account id') });
        await new Promise<void>((resolve, reject) => {
          let stopped = false;
          const unsubscribe = ctx.io.onInterrupt(() => {
            stopped = true;
            stream.cancel();
          });
          // The server answers with headers once it has subscribed: from then on nothing is missed.
          stream.once('metadata', () =>
            ctx.note(`watching outcomes${o.account ? ` of account ${o.account}` : ''} (Ctrl-C to stop)`),
          );
          stream.on('data', (outcome: WatchDeliveriesResponse) =>
            ctx.out(ctx.json ? `${JSON.stringify(WatchDeliveriesResponse.toJSON(outcome))}\n` : outcomeLine(outcome)),
          );
          stream.on('error', (error: ServiceError) => {
            unsubscribe();
            // Our own cancel ends the stream with CANCELLED: that is the normal end of a watch.
            if (stopped) resolve();
            else reject(isServiceError(error) ? rpcError(error, ctx.client.address) : error);
          });
          stream.on('status', (s: StatusObject) => {
            if (s.code === 0) {
              unsubscribe();
              ctx.note('the server ended the watch (shutting down)');
              resolve();
            }
          });
        });
      }),
    );

  return program;
}

function writeError(io: CliIo, error: CliError, asJson: boolean): void {
  if (asJson) {
    io.stderr.write(
      json({
        error: {
          code: error instanceof RpcError ? error.status : error.code.toUpperCase(),
          message: error.message,
          ...(error instanceof RpcError && error.reason !== null ? { reason: error.reason } : {}),
          fieldViolations: error.violations,
          ...(error.hint !== null ? { hint: error.hint } : {}),
        },
      }),
    );
    return;
  }
  const prefix = error instanceof RpcError ? `${error.status}: ` : '';
  const n = error.violations.length;
  // The server's message already lists the fields; with violations a count heads the list instead.
  const summary =
    error instanceof RpcError && n > 0 && /^\d+ invalid fields?: /.test(error.message)
      ? `${n} invalid field${n === 1 ? '' : 's'}`
      : error.message;
  let text = `app-inbox: ${prefix}${summary}\n`;
  for (const v of error.violations) text += `  ${v.field || '(request)'}: ${v.description}\n`;
  if (error.hint !== null) text += `(${error.hint})\n`;
  io.stderr.write(text);
}

/**
 * Runs the client with `argv` (without node and the script) and returns the exit code: 0 done, 1 the server
 * refused or could not be reached, 2 bad usage or input (see {@link EXIT_CODE_BY_ERROR}).
 */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  const contexts: Context[] = [];
  const program = buildProgram(io, contexts);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version end with exit code 0; commander already printed its message otherwise.
      return error.code === 'commander.helpDisplayed' || error.code === 'commander.version' ? 0 : 2;
    }
    if (error instanceof CliError) {
      writeError(io, error, argv.includes('--json'));
      return error.exitCode;
    }
    io.stderr.write(
      `app-inbox: unexpected error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    return 1;
  } finally {
    for (const ctx of contexts) ctx.close();
  }
}
