import { describe, expect, it } from 'vitest';
import { redactedCommandLine } from './command-line.js';

describe('redactedCommandLine', () => {
  it('hides the values of the secret flags, both spellings, and says null when there is nothing to hide', () => {
    expect(redactedCommandLine(['node', 'cli.js', '--password', 'pw', '--port=1'], ['--password'])).toBe(
      'node cli.js --password *** --port=1',
    );
    expect(redactedCommandLine(['node', '--password=pw', '--token', 't'], ['--password', '--token'])).toBe(
      'node --password=*** --token ***',
    );
    expect(redactedCommandLine(['node', 'cli.js', '--port', '8080'], ['--password'])).toBeNull();
  });

  it('passes the other arguments through redactValue, counting only what it hid', () => {
    const hide = (value: string) => value.replace(/:[^:@/]+@/, ':***@').replace('HOST', 'host');
    expect(redactedCommandLine(['main', '--store=pg://u:pw@h/x'], [], hide)).toBe('main --store=pg://u:***@h/x');
    expect(redactedCommandLine(['main', 'pg://u:pw@h/x'], [], hide)).toBe('main pg://u:***@h/x');
    // Changed but nothing hidden (a normalised spelling): the title stays as it is.
    expect(redactedCommandLine(['main', 'pg://HOST/x'], [], hide)).toBeNull();
  });
});
