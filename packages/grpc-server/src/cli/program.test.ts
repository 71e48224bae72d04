/**
 * The client's command tree in process (no server needed): help on every command, usage errors with exit
 * code 2 before any call. The commands against a real server: test/cli/cli.e2e.test.ts.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli, serverAddress, type CliIo } from './program.js';

function fakeIo(env: Record<string, string> = {}, stdin = '') {
  let stdout = '';
  let stderr = '';
  const io: CliIo = {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    readStdin: () => Promise.resolve(stdin),
    readFile: () => Promise.reject(Object.assign(new Error('nope'), { code: 'ENOENT' })),
    env,
    onInterrupt: () => () => undefined,
  };
  return { io, out: () => stdout, err: () => stderr };
}

const COMMANDS = [
  ['webhook', 'set'],
  ['webhook', 'get'],
  ['webhook', 'delete'],
  ['publish'],
  ['resync'],
  ['deliveries', 'list'],
  ['deliveries', 'show'],
  ['deliveries', 'retry'],
  ['watch'],
];

describe('app-inbox commands', () => {
  it.each(COMMANDS)('prints help for %s %s', async (...path) => {
    const f = fakeIo();
    expect(await runCli([...path.filter(Boolean), '--help'], f.io)).toBe(0);
    expect(f.out()).toContain(`Usage: app-inbox ${path.filter(Boolean).join(' ')}`);
    expect(f.err()).toBe('');
  });

  it('refuses usage mistakes with exit code 2, naming the option, before calling anything', async () => {
    const cases: Array<[string[], RegExp, Record<string, string>?]> = [
      [['webhook', 'set', 'a'], /required option '--url <url>' not specified/],
      [['webhook', 'set', 'a', '--url', 'http://x', '--username', 'u'], /--username needs a password/],
      [['webhook', 'set', 'a', '--url', 'http://x', '--password-env', 'P'], /need --username/],
      [['webhook', 'set', 'a', '--url', 'http://x', '--username', 'u', '--password-env', 'P'], /variable P is not set/],
      [
        ['webhook', 'set', 'a', '--url', 'http://x', '--username', 'u', '--password-stdin', '--password-env', 'P'],
        /give only one/,
      ],
      [['webhook', 'set', 'a', '--url', 'http://x', '--username', 'u', '--password-stdin'], /standard input is empty/],
      [['webhook', 'set', 'a', '--url', 'http://x', '--ttl-seconds', '0'], /--ttl-seconds must be a positive integer/],
      [['webhook', 'set', 'a', '--url', 'http://x', '--header-env', 'X-Api-Key'], /--header-env: give NAME=VARIABLE/],
      [['webhook', 'set', 'a', '--url', 'http://x', '--header-env', '=K'], /--header-env: give NAME=VARIABLE/],
      [
        ['webhook', 'set', 'a', '--url', 'http://x', '--header-env', 'X-Api-Key=K'],
        /--header-env X-Api-Key: the environment variable K is not set/,
      ],
      // A secret typed where its variable's name goes is refused (and not repeated: the test after this one).
      [
        ['webhook', 'set', 'a', '--url', 'http://x', '--username', 'u', '--password-env', 'hunter2!'],
        /--password-env: give the name of the environment variable that holds the secret/,
      ],
      [
        ['webhook', 'set', 'a', '--url', 'http://x', '--header-env', 'X-Api-Key=k_live_abc-123'],
        /--header-env X-Api-Key: give the name of the environment variable that holds the secret/,
      ],
      [
        ['webhook', 'set', 'a', '--url', 'http://x', '--header-env', 'x-a=K', '--header-env', 'x-a=K'],
        /--header-env: x-a is given twice/,
        { K: 'v' },
      ],
      [['publish', 'a'], /missing required argument 'file'/],
      [['publish', 'a', 'missing.json'], /missing\.json: cannot be read \(ENOENT\)/],
      [['resync', 'a', 'c', '--all'], /name the contacts or give --all \(not both\)/],
      [['deliveries', 'list', '--state', 'sent'], /"sent" is not one of/],
      [['--timeout', '-1', 'watch'], /--timeout must be a positive integer/],
      // An empty filter (`--account "$UNSET"`) meant no filter: every account's deliveries were listed or watched.
      [
        ['deliveries', 'list', '--account', ''],
        /^app-inbox: --account: empty: give an account id, or leave the option out/,
      ],
      [['deliveries', 'list', '--account', 'a', '--contact', ' '], /^app-inbox: --contact: empty: give/],
      [['deliveries', 'list', '--state', ' , '], /^app-inbox: --state: empty: give/],
      [['watch', '--account', ''], /^app-inbox: --account: empty: give an account id/],
      // Beyond a uint32 (the proto field): "INTERNAL: Request message serialization failure", exit 1.
      [
        ['webhook', 'set', 'a', '--url', 'http://x', '--max-messages', '4294967296'],
        /--max-messages must be at most 4,294,967,295/,
      ],
      [['deliveries', 'list', '--limit', '99999999999'], /--limit must be at most 4,294,967,295/],
      // grpc-js threw "Deadline is too far in the future" out of the call: a crash with a stack trace, exit 1.
      [['--timeout', '9007199254740991', 'webhook', 'get', 'a'], /--timeout must be at most 86,400/],
      [['frobnicate'], /unknown command 'frobnicate'/],
      // grpc-js threw "Could not parse target name" on an empty address: an unexpected error, exit 1.
      [
        ['--address', '', 'webhook', 'get', 'a'],
        /^app-inbox: --address: empty is not a server address: give host:port/,
      ],
      [
        ['webhook', 'get', 'a'],
        /^app-inbox: APP_INBOX_ADDRESS: empty is not a server address/,
        { APP_INBOX_ADDRESS: '' },
      ],
      [['--address', ' ', 'publish', 'a', '-'], /--address: empty is not a server address/],
      [
        ['--address', 'http://127.0.0.1:50051', 'webhook', 'get', 'a'],
        /--address: "http:\/\/127\.0\.0\.1:50051" is not/,
      ],
      [['--address', '127.0.0.1:99999', 'webhook', 'get', 'a'], /a port from 1 to 65,535/],
      [['--address', 'a b:1', 'webhook', 'get', 'a'], /--address: "a b:1" is not a server address/],
      // An empty TLS file (`--ca-file "$UNSET"`) meant plaintext: the token went out unencrypted.
      [['--ca-file', '', 'webhook', 'get', 'a'], /^app-inbox: --ca-file: empty: give a file path/],
      [['--cert-file', ' ', '--key-file', 'k.pem', 'webhook', 'get', 'a'], /--cert-file: empty: give a file path/],
    ];
    for (const [args, message, env] of cases) {
      const f = fakeIo(env);
      expect(await runCli(args, f.io), args.join(' ')).toBe(2);
      expect(f.err(), args.join(' ')).toMatch(message);
      expect(f.out()).toBe('');
    }
  });

  it('never prints a secret typed where the name of its environment variable goes', async () => {
    // "the environment variable hunter2! is not set" printed the password to the terminal and its logs.
    for (const args of [
      ['--username', 'u', '--password-env', 'SEKRET-hunter2!'],
      ['--header-env', 'X-Api-Key=SEKRET-k_live_abc-123'],
      ['--header-env', 'X-Api-Key=Bearer SEKRET'],
    ]) {
      const f = fakeIo();
      expect(await runCli(['webhook', 'set', 'a', '--url', 'http://x', ...args], f.io), args.join(' ')).toBe(2);
      expect(f.err()).toMatch(/give the name of the environment variable that holds the secret/);
      expect(f.err()).not.toContain('SEKRET');
    }
  });

  it('refuses a token that cannot be sent in a header (exit 2, naming the option), without printing it', async () => {
    // grpc-js threw "Metadata string value \"Bearer <token>\" contains illegal characters" at the first call: an
    // unexpected error (exit 1) whose message and stack printed the whole token, e.g. one read with a trailing CR.
    const tokens = ['SEKRET-token-0123456789\r', 'SEKRET-tokén-0123456789', 'SEKRET-token-01234\u000156789'];
    for (const token of tokens) {
      for (const [args, env] of [
        [['--address', '127.0.0.1:1', '--timeout', '1', 'webhook', 'get', 'a'], { APP_INBOX_TOKEN: token }],
        [['--address', '127.0.0.1:1', '--timeout', '1', '--token', token, 'webhook', 'get', 'a'], {}],
      ] as Array<[string[], Record<string, string>]>) {
        const f = fakeIo(env);
        expect(await runCli(args, f.io), JSON.stringify(token)).toBe(2);
        expect(f.err()).toMatch(/^app-inbox: (--token|APP_INBOX_TOKEN): must be printable ASCII/);
        expect(f.err()).not.toContain('SEKRET');
        expect(f.out()).toBe('');
      }
    }
  });

  it('refuses TLS files that are not PEM with exit 2, naming the flags (not a stack trace)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'app-inbox-cli-tls-'));
    try {
      const notPem = join(dir, 'not.pem');
      writeFileSync(notPem, 'not a certificate\n');
      for (const [args, message] of [
        [['--cert-file', notPem, '--key-file', notPem], /^app-inbox: --cert-file\/--key-file: not a matching PEM/],
        [['--ca-file', notPem], /^app-inbox: --ca-file: not a PEM CA certificate bundle/],
      ] as Array<[string[], RegExp]>) {
        const f = fakeIo();
        expect(await runCli(['--address', '127.0.0.1:1', ...args, 'webhook', 'get', 'a'], f.io)).toBe(2);
        expect(f.err()).toMatch(message);
        expect(f.err()).not.toContain('    at ');
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('takes host:port, a bare host or a gRPC target as the address, from --address, APP_INBOX_ADDRESS or the default', () => {
    expect(serverAddress(undefined, undefined)).toBe('127.0.0.1:50051');
    expect(serverAddress(undefined, 'inbox.internal:443')).toBe('inbox.internal:443');
    expect(serverAddress('[::1]:50051', 'ignored:1')).toBe('[::1]:50051');
    for (const address of [
      'localhost',
      'dns:///inbox.internal:50051',
      'unix:/run/app-inbox.sock',
      'ipv4:10.0.0.1:50051',
    ]) {
      expect(serverAddress(address, undefined)).toBe(address);
    }
  });

  it('writes a usage error as JSON with --json', async () => {
    const f = fakeIo();
    expect(await runCli(['--json', 'resync', 'a'], f.io)).toBe(2);
    expect(JSON.parse(f.err())).toEqual({
      error: { code: 'USAGE', message: 'resync: name the contacts or give --all (not both)', fieldViolations: [] },
    });
  });
});
