/**
 * Encryption at rest of webhook secrets (Basic auth passwords, signing secrets): issue 7 "Secrets at rest".
 *
 * Format of a sealed value: `enc:v1:<keyId>:<base64(iv | ciphertext | tag)>`, AES-256-GCM with a random
 * 12-byte IV and a 16-byte tag. The header `enc:v1:<keyId>` is the additional authenticated data, so a value
 * cannot be relabelled with another key id. Several keys can be loaded at once: values are sealed with the
 * primary key and opened with whichever key their id names, which is what makes rotation possible:
 *
 * 1. generate a new key and put it FIRST in `APP_INBOX_SECRET_KEYS` (or the key file), keeping the old one;
 * 2. restart: new and updated webhooks are sealed with the new key, old values still open with the old one;
 * 3. re-save every webhook whose secret `needsRotation()` (the store wrapper's `resealWebhook`);
 * 4. remove the old key.
 *
 * Errors never contain a plaintext, a sealed value or key material.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { dirname } from 'node:path';

const PREFIX = 'enc:v1:';
const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;
const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/;

/** Stable codes of {@link SecretBoxError}. */
export const SECRET_ERROR_CODES = [
  /** The key configuration is missing or invalid (names the entry, never shows the key). */
  'secret_key_invalid',
  /** A value does not have the `enc:v1:<keyId>:<base64>` shape. */
  'secret_malformed',
  /** The value was sealed with a key id that is not loaded. */
  'secret_key_unknown',
  /** Authentication failed: the value was altered, or the key with that id is not the one that sealed it. */
  'secret_decrypt_failed',
] as const;
export type SecretErrorCode = (typeof SECRET_ERROR_CODES)[number];

export class SecretBoxError extends Error {
  override readonly name = 'SecretBoxError';
  constructor(
    readonly code: SecretErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** One encryption key. */
export interface SecretKey {
  /** 1-32 characters of `A-Z a-z 0-9 _ -`; written into every value it seals. */
  id: string;
  /** 32 random bytes. */
  key: Buffer;
}

export interface SecretBoxOptions {
  /** Every key that may open a stored value; at least one. */
  keys: readonly SecretKey[];
  /** The id of the key new values are sealed with; must be in `keys`. */
  primaryKeyId: string;
}

export interface SecretBox {
  /** Encrypts with the primary key; a fresh IV every call, so sealing the same text twice differs. */
  seal(plain: string): string;
  /**
   * Decrypts a sealed value.
   * @throws SecretBoxError `secret_malformed`, `secret_key_unknown` or `secret_decrypt_failed`
   */
  open(sealed: string): string;
  /** True when `value` has the sealed shape (`enc:v1:`...); plaintext written before encryption was on is not. */
  isSealed(value: string): boolean;
  /** True when `value` is not sealed with the primary key (another key, or not sealed at all). */
  needsRotation(value: string): boolean;
  /** The id of the primary key. */
  readonly primaryKeyId: string;
}

/**
 * Creates a box from explicit keys.
 * @throws SecretBoxError `secret_key_invalid` naming the bad key (by position and id)
 */
export function createSecretBox(options: SecretBoxOptions): SecretBox {
  const keys = new Map<string, Buffer>();
  options.keys.forEach((k, i) => {
    if (typeof k?.id !== 'string' || !KEY_ID.test(k.id)) {
      throw new SecretBoxError('secret_key_invalid', `keys[${i}].id: must be 1-32 characters of A-Z a-z 0-9 _ -`);
    }
    if (!Buffer.isBuffer(k.key) || k.key.length !== KEY_BYTES) {
      const got = Buffer.isBuffer(k.key) ? `${k.key.length} bytes` : 'not a Buffer';
      throw new SecretBoxError('secret_key_invalid', `keys[${i}] (id ${k.id}): must be ${KEY_BYTES} bytes, got ${got}`);
    }
    if (keys.has(k.id)) throw new SecretBoxError('secret_key_invalid', `keys[${i}]: duplicate key id ${k.id}`);
    keys.set(k.id, Buffer.from(k.key));
  });
  if (keys.size === 0) throw new SecretBoxError('secret_key_invalid', 'keys: at least one key is required');
  const primaryKeyId = options.primaryKeyId;
  const primary = keys.get(primaryKeyId);
  if (primary === undefined) {
    throw new SecretBoxError('secret_key_invalid', `primaryKeyId: ${String(primaryKeyId)} is not one of the keys`);
  }

  function keyIdOf(value: string): string | null {
    if (!value.startsWith(PREFIX)) return null;
    const end = value.indexOf(':', PREFIX.length);
    if (end === -1) return null;
    const id = value.slice(PREFIX.length, end);
    return KEY_ID.test(id) ? id : null;
  }

  return {
    primaryKeyId,
    seal(plain) {
      if (typeof plain !== 'string') throw new SecretBoxError('secret_malformed', 'seal: the value must be a string');
      const header = `${PREFIX}${primaryKeyId}`;
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', primary, iv);
      cipher.setAAD(Buffer.from(header, 'utf8'));
      const body = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
      return `${header}:${Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64')}`;
    },
    open(sealed) {
      if (typeof sealed !== 'string') throw new SecretBoxError('secret_malformed', 'open: the value must be a string');
      const id = keyIdOf(sealed);
      if (id === null) throw new SecretBoxError('secret_malformed', 'open: the value is not an enc:v1 sealed secret');
      const key = keys.get(id);
      if (key === undefined) {
        throw new SecretBoxError(
          'secret_key_unknown',
          `open: the value was sealed with key ${id}, which is not loaded`,
        );
      }
      const header = `${PREFIX}${id}`;
      const b64 = sealed.slice(header.length + 1);
      if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) {
        throw new SecretBoxError('secret_malformed', 'open: the sealed payload is not base64');
      }
      const raw = Buffer.from(b64, 'base64');
      if (raw.length < IV_BYTES + TAG_BYTES)
        throw new SecretBoxError('secret_malformed', 'open: the sealed payload is too short');
      const iv = raw.subarray(0, IV_BYTES);
      const tag = raw.subarray(raw.length - TAG_BYTES);
      const body = raw.subarray(IV_BYTES, raw.length - TAG_BYTES);
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, iv);
        decipher.setAAD(Buffer.from(header, 'utf8'));
        decipher.setAuthTag(tag);
        return Buffer.concat([decipher.update(body), decipher.final()]).toString('utf8');
      } catch (error) {
        throw new SecretBoxError(
          'secret_decrypt_failed',
          `open: authentication failed for a value sealed with key ${id} (altered, or a different key under that id)`,
          { cause: error },
        );
      }
    },
    isSealed(value) {
      return typeof value === 'string' && keyIdOf(value) !== null;
    },
    needsRotation(value) {
      return keyIdOf(value) !== primaryKeyId;
    },
  };
}

/** A fresh random key in the `id:base64` form the environment variable and key file use. */
export function generateKeyLine(id = `k${new Date().toISOString().slice(0, 10).replaceAll('-', '')}`): string {
  if (!KEY_ID.test(id))
    throw new SecretBoxError('secret_key_invalid', 'id: must be 1-32 characters of A-Z a-z 0-9 _ -');
  return `${id}:${randomBytes(KEY_BYTES).toString('base64')}`;
}

/**
 * Parses `id:base64key` entries separated by commas or new lines (blank lines and `#` comments ignored);
 * the first is the primary key. `source` names where they came from in error messages.
 * @throws SecretBoxError `secret_key_invalid` naming the entry (never its key)
 */
export function parseKeyList(text: string, source: string): SecretBoxOptions {
  // Comments go first (they may contain commas), then lines split into comma-separated entries.
  const entries = text
    .split('\n')
    .flatMap((line) => line.replace(/#.*$/, '').split(','))
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '');
  if (entries.length === 0)
    throw new SecretBoxError('secret_key_invalid', `${source}: no key found (expected id:base64key)`);
  const seen = new Set<string>();
  const keys = entries.map((entry, i): SecretKey => {
    const colon = entry.indexOf(':');
    const id = colon === -1 ? '' : entry.slice(0, colon).trim();
    const b64 = colon === -1 ? '' : entry.slice(colon + 1).trim();
    if (!KEY_ID.test(id)) {
      throw new SecretBoxError(
        'secret_key_invalid',
        `${source} entry ${i + 1}: expected id:base64key with an id of 1-32 characters of A-Z a-z 0-9 _ -`,
      );
    }
    const key = /^[A-Za-z0-9+/]+={0,2}$/.test(b64) ? Buffer.from(b64, 'base64') : Buffer.alloc(0);
    if (key.length !== KEY_BYTES) {
      throw new SecretBoxError(
        'secret_key_invalid',
        `${source} entry ${i + 1} (id ${id}): the key must be ${KEY_BYTES} bytes in base64 (openssl rand -base64 32)`,
      );
    }
    // Named here as the operator wrote it (createSecretBox would say `keys[1]`).
    if (seen.has(id))
      throw new SecretBoxError('secret_key_invalid', `${source} entry ${i + 1}: duplicate key id ${id}`);
    seen.add(id);
    return { id, key };
  });
  return { keys, primaryKeyId: keys[0]?.id ?? '' };
}

/** Where the keys of {@link loadSecretBoxFromEnv} came from. */
export type SecretKeySource = 'env' | 'file' | 'generated_file';

export interface LoadSecretBoxOptions {
  /**
   * Key file used when neither environment variable is set: read when it exists, otherwise created with a
   * fresh key (mode 0600). Pass `<data dir>/secret.key` for the embedded SQLite default so `npm start` works
   * on a fresh machine; leave it undefined for a shared database (PostgreSQL), where every process must use
   * the same keys and a missing key must stop the start. Default undefined (no fallback: refuse to start).
   */
  defaultKeyFile?: string;
  /** Told (once) when a key file was generated or has loose permissions; never given key material. */
  onWarning?: (message: string) => void;
}

/**
 * Loads the keys: `APP_INBOX_SECRET_KEYS` (`id:base64key` comma list, first is primary), or
 * `APP_INBOX_SECRET_KEY_FILE` (a file in the same format, one per line allowed), or `defaultKeyFile`.
 * Setting both variables is an error (which one wins would be a guess).
 * @throws SecretBoxError `secret_key_invalid` naming the variable or file
 */
export function loadSecretBoxFromEnv(
  env: Readonly<Record<string, string | undefined>>,
  options: LoadSecretBoxOptions = {},
): { box: SecretBox; source: SecretKeySource; file?: string } {
  const inline = env.APP_INBOX_SECRET_KEYS?.trim() ?? '';
  const file = env.APP_INBOX_SECRET_KEY_FILE?.trim() ?? '';
  if (inline !== '' && file !== '') {
    throw new SecretBoxError(
      'secret_key_invalid',
      'APP_INBOX_SECRET_KEYS and APP_INBOX_SECRET_KEY_FILE are both set: set only one',
    );
  }
  if (inline !== '') return { box: createSecretBox(parseKeyList(inline, 'APP_INBOX_SECRET_KEYS')), source: 'env' };
  if (file !== '') return { box: readKeyFile(file, 'APP_INBOX_SECRET_KEY_FILE', options), source: 'file', file };
  const fallback = options.defaultKeyFile;
  if (fallback === undefined) {
    throw new SecretBoxError(
      'secret_key_invalid',
      'no encryption key for secrets at rest: set APP_INBOX_SECRET_KEYS or APP_INBOX_SECRET_KEY_FILE',
    );
  }
  let created = false;
  // Created only when missing (on a read-only data directory the existing key is read, no temporary file made);
  // EEXIST: another process created it meanwhile.
  if (!existsSync(fallback)) {
    try {
      mkdirSync(dirname(fallback), { recursive: true });
      createFileDurably(
        fallback,
        `# App Inbox secrets-at-rest keys: id:base64key, first is primary. Keep it safe.\n${generateKeyLine('k1')}\n`,
        0o600,
      );
      created = true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new SecretBoxError('secret_key_invalid', `cannot create the key file ${fallback}`, { cause: error });
      }
    }
  }
  if (created) {
    options.onWarning?.(
      `no APP_INBOX_SECRET_KEYS or APP_INBOX_SECRET_KEY_FILE: generated ${fallback} (mode 0600). Back it up with the database: without it the stored webhook secrets cannot be read.`,
    );
  }
  return { box: readKeyFile(fallback, fallback, options), source: 'generated_file', file: fallback };
}

/**
 * Creates `path` holding `content`, whole or not at all, and on disk before it returns: written and synced under
 * a temporary name in the same directory, then linked to `path`, which fails with EEXIST when `path` exists (two
 * processes starting at once never overwrite each other's key), then the directory synced. A crash leaves no
 * empty or half-written key file (written in place, one would stop every later start), and a power loss cannot
 * take the key while the database keeps the secrets sealed with it.
 */
function createFileDurably(path: string, content: string, mode: number): void {
  const temp = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const fd = openSync(temp, 'wx', mode);
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(temp, path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // A file system without hard links: created in place (`wx` still refuses to overwrite).
    if (code === 'EEXIST' || (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP')) throw error;
    writeFileSync(path, content, { flag: 'wx', mode });
  } finally {
    rmSync(temp, { force: true });
  }
  if (process.platform === 'win32') return; // no directory sync there
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

function readKeyFile(path: string, source: string, options: LoadSecretBoxOptions): SecretBox {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    throw new SecretBoxError('secret_key_invalid', `${source}: cannot read ${path} (${code})`, { cause: error });
  }
  try {
    const mode = statSync(path).mode & 0o077;
    if (mode !== 0 && process.platform !== 'win32') {
      options.onWarning?.(`key file ${path} is readable by group or others: restrict it (chmod 600)`);
    }
  } catch {
    // Permissions are advice only: a failed stat must not stop the start (the read above succeeded).
  }
  return createSecretBox(parseKeyList(text, path));
}
