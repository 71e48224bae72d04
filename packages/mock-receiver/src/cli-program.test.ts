import { describe, expect, it } from 'vitest';
import { buildProgram, commandLineWithoutPassword, formatLogLine, startCli, toOptions } from './cli-program.js';
import type { ReceivedRequest } from './recorder.js';

function parse(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): { options?: ReturnType<typeof toOptions>; error?: string } {
  let error = '';
  const program = buildProgram()
    .exitOverride()
    .configureOutput({ writeErr: (s) => (error += s), writeOut: () => undefined });
  try {
    program.parse(['node', 'mock-receiver', ...args]);
  } catch {
    return { error };
  }
  return { options: toOptions(program.opts(), env) };
}

describe('the command line', () => {
  it('has the documented defaults', () => {
    expect(parse([]).options).toEqual({
      port: 8080,
      host: '127.0.0.1',
      maxMessagesPerContact: 1000,
      scenario: 'ok',
      rules: [],
      recordLimit: 1000,
      recordBytesLimit: 256 * 1024 * 1024,
      contactLimit: 10_000,
      retryAfterSeconds: 1,
      slowDelayMs: 2000,
      maxBodyBytes: 64 * 1024 * 1024,
      strict: true,
      quiet: false,
    });
  });

  it('maps every flag', () => {
    const { options } = parse([
      '--port',
      '0',
      '--host',
      '0.0.0.0',
      '--username',
      'u',
      '--password',
      'p',
      '--max-messages',
      '5',
      '--scenario',
      'flaky',
      '--rule',
      '{"answers":[{"status":500}]}',
      '--rule',
      '{"answers":[{"action":"drop"}]}',
      '--record-limit',
      '0',
      '--record-bytes',
      '1048576',
      '--no-strict',
      '--retry-after',
      '9',
      '--slow-delay',
      '10',
      '-q',
    ]);
    expect(options).toMatchObject({
      port: 0,
      host: '0.0.0.0',
      username: 'u',
      password: 'p',
      maxMessagesPerContact: 5,
      scenario: 'flaky',
      rules: [{ answers: [{ status: 500 }] }, { answers: [{ action: 'drop' }] }],
      recordLimit: 0,
      recordBytesLimit: 1_048_576,
      strict: false,
      retryAfterSeconds: 9,
      slowDelayMs: 10,
      quiet: true,
    });
  });

  it.each([
    [['--port', '65536'], '--port must be an integer from 0 to 65535.'],
    [['--max-messages', '0'], '--max-messages must be an integer from 1 to 1000000.'],
    [['--record-limit', 'lots'], '--record-limit must be an integer from 0 to 1000000.'],
    [['--record-bytes', '0'], '--record-bytes must be an integer from 1 to 68719476736.'],
    [['--scenario', 'chaos'], 'Allowed choices are ok, unauthorized, rate-limited'],
    [['--rule', '{nope'], '--rule must be JSON'],
    [['--rule', '{"answers":[{"status":600}]}'], 'rule.answers[0].status must be an integer from 200 to 599'],
    [['--bogus'], "unknown option '--bogus'"],
  ])('%j is refused: %s', (args, message) => {
    expect(parse(args).error).toContain(message);
  });

  it('takes the password from MOCK_RECEIVER_PASSWORD so that it is not visible in ps', () => {
    process.env.MOCK_RECEIVER_PASSWORD = 'from-env';
    try {
      expect(parse(['--username', 'u']).options).toMatchObject({ username: 'u', password: 'from-env' });
    } finally {
      delete process.env.MOCK_RECEIVER_PASSWORD;
    }
  });
});

describe('signature flags', () => {
  const a = `whsec_${Buffer.alloc(32, 1).toString('base64')}`;
  const b = `whsec_${Buffer.alloc(32, 2).toString('base64')}`;

  it('reads the secrets from the variable --signing-secret-env names, space- or comma-separated', () => {
    expect(parse(['--signing-secret-env', 'HOOK_SECRETS'], { HOOK_SECRETS: a }).options?.signingSecrets).toEqual([a]);
    const both = parse(['--signing-secret-env', 'S', '--signature-tolerance-seconds', '60'], { S: ` ${a},\n${b} , ` });
    expect(both.options).toMatchObject({ signingSecrets: [a, b], signatureToleranceSeconds: 60 });
    expect(parse([]).options).not.toHaveProperty('signingSecrets');
    expect(parse([]).options).not.toHaveProperty('signatureToleranceSeconds');
  });

  it('refuses a variable that is unset or blank, naming neither it nor a value', () => {
    for (const env of [{}, { S: ' , ' }]) {
      expect(() => parse(['--signing-secret-env', 'S'], env)).toThrow(
        'signingSecrets names an environment variable that is not set or holds no secret',
      );
    }
    // A secret given to the flag itself by mistake is not printed back.
    expect(() => parse(['--signing-secret-env', a])).toThrow(
      expect.objectContaining({ message: expect.not.stringContaining(a) }),
    );
  });

  it.each([
    [['--signature-tolerance-seconds', '-5'], '--signature-tolerance-seconds must be an integer from 0 to 31536000.'],
    [['--signature-tolerance-seconds', 'soon'], '--signature-tolerance-seconds must be an integer from 0 to 31536000.'],
    [['--signing-secret-env'], "option '--signing-secret-env <VAR>' argument missing"],
  ])('%j is refused: %s', (args, message) => {
    expect(parse(args).error).toContain(message);
  });

  it('names the flag of a bad secret by position, never by value, and refuses to start', async () => {
    const lines: string[] = [];
    const io = { out: (line: string) => lines.push(line), err: (line: string) => lines.push(line) };
    process.env.MOCK_RECEIVER_TEST_SECRETS = `${a} whsec_hunter2!`;
    try {
      const code = await startCli(
        ['node', 'mock-receiver', '--port', '0', '--signing-secret-env', 'MOCK_RECEIVER_TEST_SECRETS'],
        io,
      );
      expect(code).toBe(2);
      const unset = await startCli(['node', 'mock-receiver', '--signature-tolerance-seconds', '5'], io);
      expect(unset).toBe(2);
    } finally {
      delete process.env.MOCK_RECEIVER_TEST_SECRETS;
    }
    expect(lines.join('\n')).toBe(
      [
        'mock-receiver: invalid options:',
        '  --signing-secret-env (secret #2) must be "whsec_" followed by standard base64 (Standard Webhooks)',
        'mock-receiver: invalid options:',
        '  --signature-tolerance-seconds is only used with signingSecrets',
      ].join('\n'),
    );
    expect(lines.join('\n')).not.toContain('hunter2');
  });
});

describe('commandLineWithoutPassword (the process title)', () => {
  it('hides the value of --password and --password=, and leaves a command line without one alone', () => {
    expect(commandLineWithoutPassword(['node', 'cli.js', '--username', 'u', '--password', 'pw', '-q'])).toBe(
      'node cli.js --username u --password *** -q',
    );
    expect(commandLineWithoutPassword(['node', 'cli.js', '--password=pw'])).toBe('node cli.js --password=***');
    expect(commandLineWithoutPassword(['node', 'cli.js', '--port', '0'])).toBeNull();
  });
});

describe('formatLogLine', () => {
  it('prints the signature check when secrets are configured', () => {
    const record: ReceivedRequest = {
      seq: 2,
      receivedAt: '2026-01-01T00:00:00.000Z',
      method: 'POST',
      path: '/hook',
      url: '/hook',
      headers: {},
      deliveryId: 'd-2',
      bodyBytes: 2,
      body: [],
      externalCustomerIds: [],
      messageCount: 0,
      answer: { status: 401, outcome: 'answered', branch: 'invalid_signature', ruleId: null },
      signature: 'stale',
      signatureSecretIndex: null,
      durationMs: 1,
      duplicate: false,
    };
    expect(formatLogLine(record)).toBe('2026-01-01T00:00:00.000Z POST /hook 401 messages=0 id=d-2 signature=stale 1ms');
  });

  it('prints what QA needs and no headers or body', () => {
    const record: ReceivedRequest = {
      seq: 1,
      receivedAt: '2026-01-01T00:00:00.000Z',
      method: 'POST',
      path: '/hook',
      url: '/hook',
      headers: { authorization: 'Basic [redacted]' },
      deliveryId: 'd-1',
      bodyBytes: 10,
      body: [{ title: 'private' }],
      externalCustomerIds: ['a', 'b'],
      messageCount: 2,
      answer: { status: null, outcome: 'dropped', branch: 'accepted', ruleId: 'scenario:reset' },
      signature: 'not_required',
      signatureSecretIndex: null,
      durationMs: 3.5,
      duplicate: true,
    };
    expect(formatLogLine(record)).toBe(
      '2026-01-01T00:00:00.000Z POST /hook dropped contacts=a,b messages=2 id=d-1 duplicate rule=scenario:reset 3.5ms',
    );
  });
});
