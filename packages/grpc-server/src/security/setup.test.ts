import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { GrpcAuthConfigError } from './grpc-auth.js';
import { openSqliteStore } from '../store/sqlite/sqlite-store.js';
import { withSealedSecrets } from './sealed-store.js';
import { DEFAULT_KEY_FILE_NAME, grpcTokens, secretBoxForStore } from './setup.js';

const TOKEN = 'file-token-0123456789abcdef';
const ENV_TOKEN = 'env-token-0123456789abcdef';

describe('grpcTokens (--grpc-token-file)', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  function tokenFile(text: string): string {
    const dir = mkdtempSync(join(tmpdir(), 'grpc-tokens-'));
    dirs.push(dir);
    const file = join(dir, 'tokens.txt');
    writeFileSync(file, text, { mode: 0o600 });
    return file;
  }

  /** The error grpcTokens throws for `text` as the token file. */
  function refusal(text: string, file = tokenFile(text)): { message: string; file: string } {
    try {
      grpcTokens([ENV_TOKEN], file);
    } catch (error) {
      expect(error).toBeInstanceOf(GrpcAuthConfigError);
      return { message: (error as Error).message, file };
    }
    throw new Error('expected a GrpcAuthConfigError');
  }

  it('adds the tokens of the file to the listed ones, skipping blank lines and comment lines', () => {
    const file = tokenFile(`# rotation: the old one goes once callers moved\n\n  ${TOKEN}  \n   # indented comment\n`);
    expect(grpcTokens([ENV_TOKEN], file)).toEqual([ENV_TOKEN, TOKEN]);
    expect(grpcTokens([ENV_TOKEN], '')).toEqual([ENV_TOKEN]);
  });

  it('keeps a # inside a line as part of the token instead of cutting the line there', () => {
    // Cut at the '#', the server accepted the 16-character prefix `abcdefghijklmnop` instead of the token.
    const file = tokenFile('abcdefghijklmnop#qrstuvwx0123\n');
    expect(grpcTokens([], file)).toEqual(['abcdefghijklmnop#qrstuvwx0123']);
    // A trailing comment is not a comment: the line has spaces, so it is refused rather than shortened.
    expect(refusal(`${TOKEN} # the new one\n`).message).toMatch(/line 1: a token must be at least 16 characters/);
  });

  it('names --grpc-token-file, the file and the line of a bad token, counting lines of the file only', () => {
    const { message, file } = refusal(`# tokens\n${TOKEN}\n\nshort-token\n`);
    expect(message).toBe(
      `--grpc-token-file: ${file} line 4: a token must be at least 16 characters without spaces (openssl rand -hex 32; a comment is a line of its own starting with #)`,
    );
    expect(message).not.toContain('short-token');
    expect(refusal('has a space in it 0123').message).not.toContain('has a space');
  });

  it('refuses a line that is not printable ASCII (no client could send that token), naming the line only', () => {
    // Accepted before: bytes that are not UTF-8 became U+FFFD, and the server asked for a token nobody can send.
    const { message, file } = refusal(
      Buffer.from([0xff, 0xfe, ...Buffer.from('secret-token-0123456789\n')]).toString('latin1'),
    );
    expect(message).toBe(
      `--grpc-token-file: ${file} line 1: a token must be printable ASCII (a client cannot send other characters in a header)`,
    );
    expect(message).not.toContain('secret-token');
    expect(refusal('secret-token-0123456789\u0001\n').message).toMatch(/line 1: a token must be printable ASCII/);
  });

  it('names --grpc-token-file when the file cannot be read or holds no token', () => {
    const missing = join(tmpdir(), 'no-such-dir-grpc-tokens', 'tokens.txt');
    expect(refusal('', missing).message).toBe(`--grpc-token-file: cannot read ${missing} (ENOENT)`);
    const { message, file } = refusal('# nothing yet\n\n');
    expect(message).toBe(`--grpc-token-file: ${file} holds no token`);
  });
});

describe('secretBoxForStore (SQLite, no key configured)', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  function freshDir(): string {
    const dir = mkdtempSync(join(tmpdir(), 'secret-box-'));
    dirs.push(dir);
    return dir;
  }

  /** A database at `path` with one webhook saved with a password, sealed with the key file beside it. */
  async function databaseWithSealedSecret(path: string): Promise<void> {
    const { box } = secretBoxForStore({ store: path, secretKeys: '', secretKeyFile: '' });
    const store = withSealedSecrets(await openSqliteStore({ path }), box);
    await store.upsertWebhook(
      'acct',
      {
        url: 'https://r.example/h',
        maxMessagesPerContact: 10,
        enabled: true,
        auth: { type: 'basic', username: 'u', password: 'p' },
      },
      1,
    );
    await store.close();
  }

  it('creates the key file beside a new database, and reuses it', async () => {
    const dir = freshDir();
    const path = join(dir, 'store.db');
    await databaseWithSealedSecret(path);
    const keyFile = join(dir, DEFAULT_KEY_FILE_NAME);
    const key = readFileSync(keyFile, 'utf8');
    expect(secretBoxForStore({ store: path, secretKeys: '', secretKeyFile: '' }).file).toBe(keyFile);
    expect(readFileSync(keyFile, 'utf8')).toBe(key);
  });

  it('refuses to make a new key for a database whose secrets were sealed with a key file that is missing', async () => {
    const dir = freshDir();
    const path = join(dir, 'store.db');
    await databaseWithSealedSecret(path);
    const keyFile = join(dir, DEFAULT_KEY_FILE_NAME);
    rmSync(keyFile);
    expect(() => secretBoxForStore({ store: `sqlite:${path}`, secretKeys: '', secretKeyFile: '' })).toThrow(
      expect.objectContaining({
        name: 'SecretBoxError',
        code: 'secret_key_invalid',
        message: expect.stringContaining(
          `holds the secrets of 1 webhook(s), sealed with the key of ${keyFile}, which is missing`,
        ),
      }),
    );
    // Nothing was generated in its place: the next start refuses the same way until the key is back.
    expect(existsSync(keyFile)).toBe(false);
  });

  it('makes a key for a database without sealed secrets, or for a file that is not a database', async () => {
    const dir = freshDir();
    const plain = join(dir, 'plain.db');
    const store = await openSqliteStore({ path: plain });
    await store.upsertWebhook('acct', { url: 'https://r.example/h', maxMessagesPerContact: 10, enabled: true }, 1);
    await store.close();
    expect(secretBoxForStore({ store: plain, secretKeys: '', secretKeyFile: '' }).file).toBe(
      join(dir, DEFAULT_KEY_FILE_NAME),
    );
    expect(existsSync(join(dir, DEFAULT_KEY_FILE_NAME))).toBe(true);
    const other = freshDir();
    const notADatabase = join(other, 'junk.db');
    writeFileSync(notADatabase, 'not a database at all, and longer than a header would be');
    expect(secretBoxForStore({ store: notADatabase, secretKeys: '', secretKeyFile: '' }).file).toBe(
      join(other, DEFAULT_KEY_FILE_NAME),
    );
  });
});
