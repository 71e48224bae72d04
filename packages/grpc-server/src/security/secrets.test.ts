import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { createSecretBox, generateKeyLine, loadSecretBoxFromEnv, parseKeyList, SecretBoxError } from './secrets.js';

const k1 = { id: 'k1', key: randomBytes(32) };
const k2 = { id: 'k2', key: randomBytes(32) };
const box = createSecretBox({ keys: [k1], primaryKeyId: 'k1' });

/** Runs `fn`, expecting a SecretBoxError; returns it. */
function thrown(fn: () => unknown): SecretBoxError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(SecretBoxError);
    return error as SecretBoxError;
  }
  throw new Error('expected a SecretBoxError');
}

describe('createSecretBox', () => {
  it('round-trips, in the enc:v1:<keyId>:<base64> format, with a fresh IV each time', () => {
    const sealed = box.seal('open sesame');
    expect(sealed).toMatch(/^enc:v1:k1:[A-Za-z0-9+/]+=*$/);
    expect(sealed).not.toContain('open sesame');
    expect(box.open(sealed)).toBe('open sesame');
    expect(box.seal('open sesame')).not.toBe(sealed);
    expect(box.isSealed(sealed)).toBe(true);
    expect(box.isSealed('open sesame')).toBe(false);
    // 12-byte IV + 11 bytes of text + 16-byte tag.
    expect(Buffer.from(sealed.slice('enc:v1:k1:'.length), 'base64')).toHaveLength(12 + 11 + 16);
  });

  it('property: any unicode string round-trips (passwords with emoji, ":", empty)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 200 }), (plain) => {
        expect(box.open(box.seal(plain))).toBe(plain);
      }),
      { numRuns: 300 },
    );
    for (const plain of ['', 'p@ss:wörd', '密码🔑', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw']) {
      expect(box.open(box.seal(plain))).toBe(plain);
    }
  });

  it('property: flipping any bit of the payload is detected (secret_decrypt_failed), never a wrong plaintext', () => {
    const sealed = box.seal('hunter2-is-the-password');
    const raw = Buffer.from(sealed.slice('enc:v1:k1:'.length), 'base64');
    fc.assert(
      fc.property(fc.nat(raw.length - 1), fc.nat(7), (index, bit) => {
        const tampered = Buffer.from(raw);
        tampered[index] = (tampered[index] ?? 0) ^ (1 << bit);
        const error = thrown(() => box.open(`enc:v1:k1:${tampered.toString('base64')}`));
        expect(error.code).toBe('secret_decrypt_failed');
        expect(error.message).not.toContain('hunter2');
      }),
    );
  });

  it('refuses a value relabelled with another key id (the header is authenticated)', () => {
    const both = createSecretBox({ keys: [k1, k2], primaryKeyId: 'k1' });
    const relabelled = both.seal('secret').replace('enc:v1:k1:', 'enc:v1:k2:');
    expect(thrown(() => both.open(relabelled)).code).toBe('secret_decrypt_failed');
  });

  it('refuses a different key under the same id, and an unknown key id', () => {
    const other = createSecretBox({ keys: [{ id: 'k1', key: randomBytes(32) }], primaryKeyId: 'k1' });
    expect(thrown(() => other.open(box.seal('secret'))).code).toBe('secret_decrypt_failed');
    const onlyK2 = createSecretBox({ keys: [k2], primaryKeyId: 'k2' });
    const error = thrown(() => onlyK2.open(box.seal('secret')));
    expect(error.code).toBe('secret_key_unknown');
    expect(error.message).toContain('k1');
  });

  it.each(['plain text', 'enc:v1:', 'enc:v1:k1', 'enc:v1:k1:!!!!', 'enc:v1:k1:AAAA', 'enc:v2:k1:AAAA'])(
    'refuses the malformed value %j',
    (value) => {
      expect(thrown(() => box.open(value)).code).toBe('secret_malformed');
    },
  );

  it('rotates: the old key still opens, needsRotation says so, seal uses the primary', () => {
    const oldBox = createSecretBox({ keys: [k1], primaryKeyId: 'k1' });
    const sealedOld = oldBox.seal('rotate me');
    const rotated = createSecretBox({ keys: [k2, k1], primaryKeyId: 'k2' });
    expect(rotated.open(sealedOld)).toBe('rotate me');
    expect(rotated.needsRotation(sealedOld)).toBe(true);
    const resealed = rotated.seal(rotated.open(sealedOld));
    expect(resealed.startsWith('enc:v1:k2:')).toBe(true);
    expect(rotated.needsRotation(resealed)).toBe(false);
    expect(rotated.needsRotation('never sealed')).toBe(true);
    expect(thrown(() => oldBox.open(resealed)).code).toBe('secret_key_unknown');
  });

  it.each([
    [{ keys: [], primaryKeyId: 'k1' }, 'keys: at least one'],
    [
      { keys: [{ id: 'k1', key: randomBytes(16) }], primaryKeyId: 'k1' },
      'keys[0] (id k1): must be 32 bytes, got 16 bytes',
    ],
    [{ keys: [{ id: 'bad id', key: randomBytes(32) }], primaryKeyId: 'bad id' }, 'keys[0].id'],
    [{ keys: [k1, { ...k1 }], primaryKeyId: 'k1' }, 'keys[1]: duplicate key id k1'],
    [{ keys: [k1], primaryKeyId: 'k9' }, 'primaryKeyId: k9'],
  ])('rejects an invalid key set naming the field (%#)', (options, message) => {
    const error = thrown(() => createSecretBox(options));
    expect(error.code).toBe('secret_key_invalid');
    expect(error.message).toContain(message);
  });
});

describe('parseKeyList', () => {
  it('reads id:base64 entries, comma or line separated, first is primary, comments ignored', () => {
    const a = generateKeyLine('new');
    const b = generateKeyLine('old');
    const parsed = parseKeyList(`# keys\n${a}\n\n${b} # retired soon\n`, 'file');
    expect(parsed.primaryKeyId).toBe('new');
    expect(parsed.keys.map((k) => k.id)).toEqual(['new', 'old']);
    expect(parseKeyList(`${a},${b}`, 'env').keys).toHaveLength(2);
  });

  it('names the entry but never echoes the key', () => {
    const shortKey = randomBytes(16).toString('base64');
    const error = thrown(() => parseKeyList(`${generateKeyLine('a')},b:${shortKey}`, 'APP_INBOX_SECRET_KEYS'));
    expect(error.message).toContain('APP_INBOX_SECRET_KEYS entry 2 (id b)');
    expect(error.message).not.toContain(shortKey);
    expect(thrown(() => parseKeyList('   ', 'X')).message).toContain('X: no key found');
    expect(thrown(() => parseKeyList('nocolon', 'X')).message).toContain('X entry 1');
    const twice = `${generateKeyLine('k1')}\n${generateKeyLine('k2')}\n${generateKeyLine('k1')}`;
    expect(thrown(() => parseKeyList(twice, '--secret-key-file keys.txt')).message).toBe(
      '--secret-key-file keys.txt entry 3: duplicate key id k1',
    );
  });
});

describe('loadSecretBoxFromEnv', () => {
  const dirs: string[] = [];
  const tempDir = () => {
    const dir = mkdtempSync(join(tmpdir(), 'secrets-test-'));
    dirs.push(dir);
    return dir;
  };
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('takes APP_INBOX_SECRET_KEYS, first key primary', () => {
    const line = `${generateKeyLine('k2')},${generateKeyLine('k1')}`;
    const { box: loaded, source } = loadSecretBoxFromEnv({ APP_INBOX_SECRET_KEYS: line });
    expect(source).toBe('env');
    expect(loaded.primaryKeyId).toBe('k2');
  });

  it('takes APP_INBOX_SECRET_KEY_FILE and opens what a box from the same key sealed', () => {
    const file = join(tempDir(), 'keys');
    writeFileSync(file, `${generateKeyLine('f1')}\n`, { mode: 0o600 });
    const first = loadSecretBoxFromEnv({ APP_INBOX_SECRET_KEY_FILE: file });
    const second = loadSecretBoxFromEnv({ APP_INBOX_SECRET_KEY_FILE: file });
    expect(first.source).toBe('file');
    expect(second.box.open(first.box.seal('shared'))).toBe('shared');
  });

  it('warns about a key file readable by others', () => {
    const file = join(tempDir(), 'keys');
    writeFileSync(file, `${generateKeyLine('f1')}\n`, { mode: 0o644 });
    const warnings: string[] = [];
    loadSecretBoxFromEnv({ APP_INBOX_SECRET_KEY_FILE: file }, { onWarning: (m) => warnings.push(m) });
    expect(warnings.join('\n')).toContain('chmod 600');
  });

  it('refuses both variables at once, a missing file, and no key at all without a default file', () => {
    expect(() =>
      loadSecretBoxFromEnv({ APP_INBOX_SECRET_KEYS: generateKeyLine('a'), APP_INBOX_SECRET_KEY_FILE: '/x' }),
    ).toThrow(/both set/);
    expect(() => loadSecretBoxFromEnv({ APP_INBOX_SECRET_KEY_FILE: join(tempDir(), 'missing') })).toThrow(
      /APP_INBOX_SECRET_KEY_FILE: cannot read .*ENOENT/,
    );
    expect(() => loadSecretBoxFromEnv({})).toThrow(expect.objectContaining({ code: 'secret_key_invalid' }));
  });

  it('generates <data dir>/secret.key (mode 0600) once and reuses it on the next start', () => {
    const file = join(tempDir(), 'data', 'secret.key');
    const warnings: string[] = [];
    const first = loadSecretBoxFromEnv({}, { defaultKeyFile: file, onWarning: (m) => warnings.push(m) });
    expect(first.source).toBe('generated_file');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    // Written under a temporary name and linked whole: nothing else is left in the directory.
    expect(readdirSync(dirname(file))).toEqual(['secret.key']);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(file);
    const content = readFileSync(file, 'utf8');
    // The key itself never reaches the warning.
    const keyB64 =
      content
        .split('\n')
        .find((l) => l.startsWith('k1:'))
        ?.slice(3) ?? 'missing';
    expect(warnings[0]).not.toContain(keyB64);

    const sealed = first.box.seal('survives a restart');
    const second = loadSecretBoxFromEnv({}, { defaultKeyFile: file, onWarning: (m) => warnings.push(m) });
    expect(second.box.open(sealed)).toBe('survives a restart');
    expect(warnings).toHaveLength(1);
    expect(readFileSync(file, 'utf8')).toBe(content);
  });

  it('reads the generated key from a directory it cannot write (no temporary file made when the key exists)', () => {
    const dir = tempDir();
    const file = join(dir, 'data', 'secret.key');
    const sealed = loadSecretBoxFromEnv({}, { defaultKeyFile: file }).box.seal('kept');
    // The data directory read-only to the reader: run as nobody when the tests run as root (who may write anywhere).
    const asRoot = process.getuid?.() === 0;
    if (asRoot) chownSync(file, 65534, 65534);
    chmodSync(dir, 0o755);
    chmodSync(dirname(file), 0o555);
    const script = [
      `import { loadSecretBoxFromEnv } from ${JSON.stringify(fileURLToPath(new URL('./secrets.ts', import.meta.url)))};`,
      `const { box } = loadSecretBoxFromEnv({}, { defaultKeyFile: ${JSON.stringify(file)} });`,
      `process.stdout.write(box.open(${JSON.stringify(sealed)}));`,
    ].join('\n');
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: '' },
      ...(asRoot ? { uid: 65534, gid: 65534 } : {}),
    });
    chmodSync(dirname(file), 0o755); // so that the clean-up may remove it
    expect({ status: child.status, stdout: child.stdout, stderr: child.stderr }).toEqual({
      status: 0,
      stdout: 'kept',
      stderr: '',
    });
  });

  it('prefers the environment over the default file', () => {
    const file = join(tempDir(), 'secret.key');
    const { source } = loadSecretBoxFromEnv({ APP_INBOX_SECRET_KEYS: generateKeyLine('e') }, { defaultKeyFile: file });
    expect(source).toBe('env');
    expect(() => statSync(file)).toThrow();
  });
});
