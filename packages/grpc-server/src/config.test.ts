import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { format, resolveConfig } from 'prettier';
import { describe, expect, it } from 'vitest';
import { configMarkdown } from './config-docs.js';
import { ConfigError, DEFAULT_CONFIG, HelpShown, OPTION_SPECS, loadConfig } from './config.js';
import { redactCredentials, redactedCommandLine } from './security/redact.js';

function problems(argv: string[], env: NodeJS.ProcessEnv = {}): string[] {
  try {
    loadConfig(argv, env);
  } catch (error) {
    if (error instanceof ConfigError) return [...error.problems];
    throw error;
  }
  return [];
}

describe('loadConfig', () => {
  it('gives the defaults with no flag and no variable', () => {
    expect(loadConfig([], {})).toEqual(DEFAULT_CONFIG);
  });

  it('every option has a flag, a variable, a default and a valid default', () => {
    const keys = OPTION_SPECS.map((s) => s.key).sort();
    expect(keys).toEqual(Object.keys(DEFAULT_CONFIG).sort());
    for (const spec of OPTION_SPECS) {
      expect(spec.flag).toMatch(/^--[a-z0-9-]+$/);
      expect(spec.env.length).toBeGreaterThan(0);
      expect(spec.schema.safeParse(DEFAULT_CONFIG[spec.key]).success).toBe(true);
    }
  });

  it('takes a flag over a variable over the default', () => {
    const env = {
      APP_INBOX_REQUEST_TIMEOUT_MS: '5000',
      APP_INBOX_LOG_LEVEL: 'debug',
      DATABASE_URL: 'postgres://u@h/db',
    };
    const config = loadConfig(['--request-timeout-ms', '2000', '--grpc-address=0.0.0.0:0'], env);
    expect(config.requestTimeoutMs).toBe(2000);
    expect(config.logLevel).toBe('debug');
    expect(config.grpcAddress).toBe('0.0.0.0:0');
    expect(config.store).toBe('postgres://u@h/db');
    // APP_INBOX_STORE wins over DATABASE_URL; an empty variable counts as unset.
    expect(loadConfig([], { ...env, APP_INBOX_STORE: '/tmp/x.db' }).store).toBe('/tmp/x.db');
    expect(loadConfig([], { APP_INBOX_STORE: '', APP_INBOX_MAX_ATTEMPTS: ' ' }).store).toBe(DEFAULT_CONFIG.store);
  });

  it('names the option, its source and its bound for every bad value', () => {
    const found = problems(['--request-timeout-ms', 'soon', '--log-level', 'loud'], {
      APP_INBOX_MAX_ATTEMPTS: '0',
      APP_INBOX_GRPC_ADDRESS: 'localhost:70000',
    });
    expect(found).toEqual([
      '--grpc-address (from env APP_INBOX_GRPC_ADDRESS) must be host:port with a port from 0 to 65,535; got "localhost:70000"',
      '--request-timeout-ms (flag) must be an integer from 100 to 600,000 (ms); got "soon"',
      '--max-attempts (from env APP_INBOX_MAX_ATTEMPTS) must be an integer from 1 to 1,000; got "0"',
      '--log-level (flag) must be one of fatal, error, warn, info, debug, trace, silent; got "loud"',
    ]);
  });

  it('refuses an empty, hexadecimal or exponent value of an integer option instead of reading it as a number', () => {
    // z.coerce.number() took '' as 0: `--terminal-retention-ms "$UNSET"` deleted every finished delivery.
    for (const [flag, value] of [
      ['--terminal-retention-ms', ''],
      ['--shutdown-deadline-ms', ''],
      ['--max-response-bytes', ' '],
      ['--circuit-open-after-ms', ''],
      ['--request-timeout-ms', '0x1388'],
      ['--max-attempts', '1e1'],
      ['--max-attempts', '0b11'],
      ['--max-attempts', '5.0'],
      ['--max-attempts', '1_000'],
      ['--lease-ms', '60,000'],
    ] as const) {
      expect(problems([flag, value]), `${flag} ${JSON.stringify(value)}`).toEqual([
        expect.stringMatching(
          new RegExp(`^${flag} \\(flag\\) must be an integer from .*; got ${JSON.stringify(value)}$`),
        ),
      ]);
    }
    expect(problems(['--store', ' '])[0]).toMatch(/^--store \(flag\) must be a file path/);
    // Plain decimals, blanks around them ignored; an empty variable still counts as unset.
    expect(loadConfig(['--max-attempts', ' 7 ', '--terminal-retention-ms', '0'], {})).toMatchObject({
      maxAttempts: 7,
      terminalRetentionMs: 0,
    });
    expect(loadConfig([], { APP_INBOX_TERMINAL_RETENTION_MS: '' }).terminalRetentionMs).toBe(
      DEFAULT_CONFIG.terminalRetentionMs,
    );
    // An empty --metrics-address is documented as off.
    expect(loadConfig(['--metrics-address', ''], {}).metricsAddress).toBe('');
  });

  it('refuses an empty flag value of a file option instead of reading it as none', () => {
    // `--grpc-token-file "$UNSET"` turned token checks off, `--tls-cert-file "$UNSET"` served plaintext.
    for (const flag of [
      '--grpc-token-file',
      '--tls-cert-file',
      '--tls-key-file',
      '--tls-client-ca-file',
      '--secret-key-file',
    ]) {
      for (const value of ['', '  ']) {
        expect(problems([flag, value]), `${flag} ${JSON.stringify(value)}`).toEqual([
          `${flag} (flag) must be a file path (leave the option out for none); got an empty value`,
        ]);
      }
    }
    // Left out, or an empty variable (unset): none, as documented.
    expect(loadConfig([], { APP_INBOX_GRPC_TOKEN_FILE: '' }).grpcTokenFile).toBe('');
    expect(loadConfig([], {}).tlsCertFile).toBe('');
  });

  it('checks rules between options', () => {
    expect(problems(['--lease-ms', '5000', '--request-timeout-ms', '5000'])).toEqual([
      '--lease-ms (5000) must be greater than --request-timeout-ms (5000), or another worker could take over a live attempt',
    ]);
    expect(problems(['--backoff-base-ms', '10', '--backoff-max-ms', '5'])).toEqual([
      '--backoff-max-ms (5) must be at least --backoff-base-ms (10)',
    ]);
    // The first retry waits about --backoff-base-ms: a shorter --max-age-ms would fail every 401, 5xx and timeout (and
    // 429 or 503 without a short Retry-After) at its first attempt, though SPEC §5 retries them.
    expect(problems(['--backoff-base-ms', '120000', '--max-age-ms', '60000'])).toEqual([
      '--max-age-ms (60000) must be at least --backoff-base-ms (120000): the first retry waits up to that long, so a retryable answer without a short Retry-After would fail at its first attempt',
    ]);
    expect(problems(['--backoff-base-ms', '60000', '--backoff-max-ms', '60000', '--max-age-ms', '60000'])).toEqual([]);
  });

  it('refuses unknown flags and stray arguments', () => {
    expect(problems(['--no-such-flag'])[0]).toMatch(/unknown option '--no-such-flag'/);
    expect(problems(['extra'])[0]).toMatch(/too many arguments/);
  });

  it('signals --help without parsing further', () => {
    const write = process.stdout.write;
    process.stdout.write = (() => true) as typeof process.stdout.write;
    try {
      expect(() => loadConfig(['--help'], {})).toThrow(HelpShown);
    } finally {
      process.stdout.write = write;
    }
  });
});

describe('security and circuit options (issue 7)', () => {
  it('are secure by default: public destinations only, no key, no token, plaintext', () => {
    const config = loadConfig([], {});
    expect(config).toMatchObject({
      webhookAllowPrivate: false,
      webhookAllowList: [],
      secretKeys: '',
      grpcTokens: [],
      tlsCertFile: '',
      circuitOpenAfterMs: 300_000,
      circuitMinFailures: 5,
      circuitProbeIntervalMs: 30_000,
      circuitProbeMaxIntervalMs: 300_000,
    });
  });

  it('reads the switch, comma lists and env-only secrets', () => {
    const config = loadConfig(['--webhook-allow-private', '--webhook-allow-list', ' 127.0.0.1, 10.0.0.0/8 ,,'], {
      APP_INBOX_GRPC_TOKENS: 'token-aaaaaaaaaaaaaaaa,token-bbbbbbbbbbbbbbbb',
      APP_INBOX_SECRET_KEYS: 'k1:AAAA',
    });
    expect(config.webhookAllowPrivate).toBe(true);
    expect(config.webhookAllowList).toEqual(['127.0.0.1', '10.0.0.0/8']);
    expect(config.grpcTokens).toEqual(['token-aaaaaaaaaaaaaaaa', 'token-bbbbbbbbbbbbbbbb']);
    expect(config.secretKeys).toBe('k1:AAAA');
    expect(loadConfig(['--webhook-allow-private', 'false'], {}).webhookAllowPrivate).toBe(false);
    expect(loadConfig([], { APP_INBOX_WEBHOOK_ALLOW_PRIVATE: 'yes' }).webhookAllowPrivate).toBe(true);
  });

  it('keeps secrets off the command line and out of error messages', () => {
    expect(problems(['--grpc-tokens', 'x'])[0]).toMatch(/unknown option '--grpc-tokens'/);
    expect(problems(['--secret-keys', 'x'])[0]).toMatch(/unknown option '--secret-keys'/);
    const found = problems([], { APP_INBOX_GRPC_TOKENS: 'good-token-0123456789,short-secret' });
    expect(found).toEqual(['APP_INBOX_GRPC_TOKENS entry 2 must be at least 16 characters without spaces']);
    expect(found.join()).not.toContain('short-secret');
  });

  it('refuses a token no client can send (not printable ASCII), without echoing it', () => {
    // Accepted before: the server started asking for a token that grpc-js clients cannot put in a header.
    for (const bad of ['secret-token-0123456789\u0001', 'secret-tokén-0123456789']) {
      const found = problems([], { APP_INBOX_GRPC_TOKENS: `good-token-0123456789,${bad}` });
      expect(found).toEqual([
        'APP_INBOX_GRPC_TOKENS entry 2 must be printable ASCII (a client cannot send other characters in a header)',
      ]);
      expect(found.join()).not.toContain('secret-tok');
    }
  });

  it('refuses a libpq key=value connection string (DATABASE_URL of other tools) without showing its password', () => {
    // Taken as a SQLite file path before: the server ran on a new SQLite file named by the string, the password in
    // its name and in the 'gRPC server listening' log line.
    const dsn = "host=db port=5432 user=app password='hunter2 x' dbname=inbox sslpassword=hunter3";
    expect(problems([], { DATABASE_URL: dsn })).toEqual([
      `--store (from env DATABASE_URL) must be a file path, sqlite:PATH (not :memory:), or a postgres:// URL; got "host=db port=5432 user=app password=*** dbname=inbox sslpassword=***"`,
    ]);
    expect(problems(['--store', 'dbname=inbox password=hunter2'])[0]).not.toContain('hunter2');
    expect(problems(['--store', 'host=db dbname=inbox'])).toHaveLength(1);
    // A path that merely has an '=' in it is still a path.
    expect(problems(['--store', './data/a=b.db'])).toEqual([]);
    expect(redactCredentials('user=app password=hunter2')).toBe('user=app password=***');
  });

  it('shows a refused store URL without its password (DATABASE_URL is often shared with other tools)', () => {
    expect(problems([], { DATABASE_URL: 'postgresql+psycopg2://app:hunter2@db/inbox' })).toEqual([
      '--store (from env DATABASE_URL) must be a file path, sqlite:PATH (not :memory:), or a postgres:// URL; got "postgresql+psycopg2://app:***@db/inbox"',
    ]);
    expect(problems(['--store', 'mysql://root:hunter2@db:3306/x'])[0]).toMatch(
      /got "mysql:\/\/root:\*\*\*@db:3306\/x"$/,
    );
    // Not URL-shaped, no password: shown as given.
    expect(problems(['--store', 'a:b:c'])[0]).toMatch(/got "a:b:c"$/);
    // An in-memory database would lose everything the server answered OK for at the next restart.
    expect(problems(['--store', 'sqlite::memory:'])).toEqual([
      '--store (flag) must be a file path, sqlite:PATH (not :memory:), or a postgres:// URL; got "sqlite::memory:"',
    ]);
    expect(problems([], { APP_INBOX_STORE: 'SQLite::memory:' })).toHaveLength(1);
    // The collector URL too.
    expect(problems(['--otlp-endpoint', 'ftp://user:s3cret@collector:4318'])).toEqual([
      '--otlp-endpoint (flag) must be an http(s) URL, or empty; got "ftp://user:***@collector:4318/"',
    ]);
  });

  it('redacts the password of a URL of any scheme and case, and leaves paths alone', () => {
    expect(redactCredentials('postgres://app:hunter2@db:5432/inbox')).toBe('postgres://app:***@db:5432/inbox');
    // The store opens POSTGRES:// as well as postgres://.
    expect(redactCredentials('POSTGRES://app:hunter2@db/inbox')).not.toContain('hunter2');
    expect(redactCredentials('PostgreSQL://app:hunter2@db/inbox')).not.toContain('hunter2');
    // Not parsable as a URL (a bad port), still cut.
    expect(redactCredentials('postgres://app:hunter2@db:99999999/inbox')).toBe('postgres://app:***@db:99999999/inbox');
    expect(redactCredentials('postgres://app@db/inbox')).toBe('postgres://app@db/inbox');
    // A raw '/' in the password (refused by the URL parser) and blanks around the value.
    expect(redactCredentials('http://u:pa/ss@c:4318')).toBe('http://u:***@c:4318');
    expect(redactCredentials('  ftp://u:s3cret@c:4318 ')).not.toContain('s3cret');
    expect(redactCredentials('/var/lib/app-inbox/inbox.db')).toBe('/var/lib/app-inbox/inbox.db');
    expect(redactCredentials('sqlite:/tmp/x.db')).toBe('sqlite:/tmp/x.db');
  });

  it('shows a command line without the credentials of its URLs (the process title), --name=value too', () => {
    expect(
      redactedCommandLine(['node', 'main.js', '--store', 'postgres://app:hunter2@db/inbox', '--log-level', 'debug']),
    ).toBe('node main.js --store postgres://app:***@db/inbox --log-level debug');
    expect(redactedCommandLine(['node', 'main.js', '--store=postgres://db/inbox?password=hunter2'])).toBe(
      'node main.js --store=postgres://db/inbox?password=***',
    );
    // Nothing to hide: the title is left as it is.
    expect(redactedCommandLine(['node', 'main.js', '--store', 'postgres://app@db/inbox'])).toBeNull();
    expect(redactedCommandLine(['node', 'main.js', '--otlp-endpoint', 'http://c:4318'])).toBeNull();
    // Flags whose value is a secret whatever it looks like (the client's --token).
    expect(redactedCommandLine(['app-inbox', '--token', 'abc', 'watch'], ['--token'])).toBe(
      'app-inbox --token *** watch',
    );
    expect(redactedCommandLine(['app-inbox', '--token=abc', 'watch'], ['--token'])).toBe('app-inbox --token=*** watch');
    expect(redactedCommandLine(['app-inbox', 'watch'], ['--token'])).toBeNull();
  });

  it('redacts secrets given as query parameters: node-postgres passwords, collector tokens and keys', () => {
    expect(redactCredentials('postgres://app@db/inbox?password=hunter2&sslmode=require')).toBe(
      'postgres://app@db/inbox?password=***&sslmode=require',
    );
    expect(redactCredentials('postgres://app:pw@db/inbox?sslpassword=k3y&application_name=x')).toBe(
      'postgres://app:***@db/inbox?sslpassword=***&application_name=x',
    );
    expect(redactCredentials('http://c:4318/v1/traces?api_key=otlpPW3')).toBe('http://c:4318/v1/traces?api_key=***');
    expect(redactCredentials('https://c/v1/traces?x=1&Access_Token=abc#frag')).toBe(
      'https://c/v1/traces?x=1&Access_Token=***#frag',
    );
    // node-postgres decodes the names: pass%77ord is password.
    expect(redactCredentials('postgres://db:5432/inbox?user=app&pass%77ord=hunter2')).toBe(
      'postgres://db:5432/inbox?user=app&pass%77ord=***',
    );
    expect(redactCredentials('postgres://db/inbox?sslmode=require&connect_timeout=5')).toBe(
      'postgres://db/inbox?sslmode=require&connect_timeout=5',
    );
  });

  it('redacts a password that the URL parser reads as a port, a path or a fragment', () => {
    // A raw '#' or '/' in the password: the parser takes `u:12` as host and port and finds no password at all.
    expect(redactCredentials('http://u:12#ss@c:4318')).toBe('http://u:***@c:4318');
    expect(redactCredentials('postgres://app:123/abc@db/inbox')).toBe('postgres://app:***@db/inbox');
    expect(redactCredentials('postgres://app:123?x@db/inbox')).toBe('postgres://app:***@db/inbox');
    // Without a password nothing is cut: a user alone, a port, an '@' with no `user:` before it.
    expect(redactCredentials('postgres://app@db:5432/inbox')).toBe('postgres://app@db:5432/inbox');
    expect(redactCredentials('http://collector:4318/v1/traces')).toBe('http://collector:4318/v1/traces');
    expect(redactCredentials('http://collector/v1/a@b')).toBe('http://collector/v1/a@b');
  });

  it('names the bad allow-list entry and the incomplete TLS or circuit settings', () => {
    expect(problems(['--webhook-allow-list', '127.0.0.1,not a host'])).toEqual([
      '--webhook-allow-list: entry 2: "not a host" is not an IP address, CIDR block or host name',
    ]);
    expect(problems(['--webhook-allow-private', 'maybe'])).toEqual([
      '--webhook-allow-private (flag) must be true or false; got "maybe"',
    ]);
    expect(problems(['--tls-key-file', 'k.pem'])).toEqual(['--tls-cert-file and --tls-key-file must be set together']);
    expect(problems(['--tls-client-ca-file', 'ca.pem'])).toEqual([
      '--tls-client-ca-file (mutual TLS) needs --tls-cert-file and --tls-key-file',
    ]);
    expect(problems(['--secret-key-file', 'k'], { APP_INBOX_SECRET_KEYS: 'k1:AAAA' })).toEqual([
      'APP_INBOX_SECRET_KEYS and --secret-key-file are both set: set only one',
    ]);
    expect(problems(['--circuit-probe-interval-ms', '1000', '--circuit-probe-max-interval-ms', '500'])).toEqual([
      '--circuit-probe-max-interval-ms (500) must be at least --circuit-probe-interval-ms (1000)',
    ]);
  });
});

describe('CONFIG.md', () => {
  it('is generated from the options (run `npm run config:docs` after changing them)', async () => {
    const file = fileURLToPath(new URL('../CONFIG.md', import.meta.url));
    const onDisk = readFileSync(file, 'utf8');
    const options = { ...(await resolveConfig(file)), filepath: file };
    expect(onDisk).toBe(await format(configMarkdown(), options));
    for (const spec of OPTION_SPECS) expect(onDisk).toContain(`\`${spec.envOnly === true ? spec.env[0] : spec.flag}\``);
  });
});
