import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_MESSAGES_PER_CONTACT,
  LIMITS,
  NUL_CHARACTER_MESSAGE,
  MAX_MESSAGES_PER_CONTACT_LIMIT,
  formatPath,
  utf8ByteLength,
  validateMessage,
  validateMessageList,
  validateWebhookConfig,
  type FieldViolation,
  type ValidationResult,
} from './schema.js';

/** A message in the seed's format (SPEC §4). */
function seedMessage(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    externalCustomerId: 'customer-42',
    id: '6f1c1f0e-8a2b-4c3d-9e4f-5a6b7c8d9e0f',
    createdDate: 1_700_000_000_000,
    title: 'Your order shipped',
    content: 'It arrives on Tuesday.',
    image: 'https://cdn.example.com/box.png',
    link: 'https://shop.example.com/orders/1',
    category: 'orders',
    customData: '{"orderId":1}',
    ...overrides,
  };
}

function violations<T>(result: ValidationResult<T>): FieldViolation[] {
  if (result.ok) throw new Error('expected the input to be rejected');
  return result.violations;
}

function fields<T>(result: ValidationResult<T>): string[] {
  return violations(result).map((v) => v.field);
}

describe('LIMITS', () => {
  it('are the bounds the package README documents', () => {
    // The boundary tests below read LIMITS, so they follow a changed constant: this pins the documented numbers.
    expect(LIMITS).toEqual({
      externalCustomerIdLength: 256,
      titleLength: 1_000,
      contentLength: 10_000,
      categoryLength: 256,
      urlLength: 2_048,
      customDataBytes: 65_536,
      minCreatedDate: Date.parse('2000-01-01T00:00:00Z'),
      maxCreatedDate: Date.parse('2100-01-01T00:00:00Z'),
      usernameLength: 256,
      passwordLength: 1_024,
      signingSecretMinBytes: 24,
      signingSecretMaxBytes: 64,
      minMessagesPerContact: 1,
      maxMessagesPerContact: 10_000,
      minRateLimitPerSecond: 1,
      maxRateLimitPerSecond: 10_000,
      maxHeaders: 20,
      headerNameLength: 256,
      headerValueBytes: 4_096,
      headersTotalBytes: 8_192,
    });
  });
});

describe('messageSchema', () => {
  it('accepts a message in the seed format and returns it unchanged', () => {
    const input = seedMessage();
    const result = validateMessage(input);
    expect(result).toEqual({ ok: true, value: input });
  });

  it('accepts a message without the optional image, link and customData', () => {
    const { image: _i, link: _l, customData: _c, ...rest } = seedMessage();
    expect(validateMessage(rest).ok).toBe(true);
  });

  it('accepts empty title, content, category, image and link', () => {
    expect(validateMessage(seedMessage({ title: '', content: '', category: '', image: '', link: '' })).ok).toBe(true);
  });

  it('lists every bad field, not only the first', () => {
    const result = validateMessage({
      externalCustomerId: '',
      id: 'not-a-uuid',
      createdDate: 1.5,
      title: 3,
      content: 'x'.repeat(LIMITS.contentLength + 1),
      image: 'ftp://example.com/a.png',
      link: 'not a url',
      category: 'c'.repeat(LIMITS.categoryLength + 1),
      customData: '{oops',
      extra: true,
    });
    expect(fields(result).sort()).toEqual(
      [
        'category',
        'content',
        'createdDate',
        'customData',
        'externalCustomerId',
        'extra',
        'id',
        'image',
        'link',
        'title',
      ].sort(),
    );
  });

  it('says "is required" for a missing required field', () => {
    const { id: _id, createdDate: _d, ...rest } = seedMessage();
    expect(violations(validateMessage(rest))).toEqual([
      { field: 'id', description: 'is required' },
      { field: 'createdDate', description: 'is required' },
    ]);
  });

  it('rejects unknown fields by name (strict), including expiresAt', () => {
    expect(violations(validateMessage(seedMessage({ expiresAt: 1, Title: 'x' })))).toEqual([
      { field: 'expiresAt', description: 'is not a known field' },
      { field: 'Title', description: 'is not a known field' },
    ]);
  });

  it('refuses the NUL character (U+0000) in every text field, naming the field', () => {
    for (const field of ['externalCustomerId', 'title', 'content', 'category', 'image', 'link'] as const) {
      const value = field === 'image' || field === 'link' ? 'https://example.com/a\u0000b' : 'a\u0000b';
      expect(violations(validateMessage(seedMessage({ [field]: value })))).toEqual([
        { field, description: NUL_CHARACTER_MESSAGE },
      ]);
    }
    // Escaped in customData's JSON text it is only text: accepted.
    expect(validateMessage(seedMessage({ customData: '{"a":"\\u0000"}' })).ok).toBe(true);
  });

  describe('externalCustomerId', () => {
    it.each([
      ['empty', ''],
      ['whitespace only', '   '],
      ['too long', 'x'.repeat(LIMITS.externalCustomerIdLength + 1)],
      ['not a string', 42],
    ])('rejects %s', (_name, value) => {
      expect(fields(validateMessage(seedMessage({ externalCustomerId: value })))).toEqual(['externalCustomerId']);
    });
    it('accepts the maximum length', () => {
      const value = 'x'.repeat(LIMITS.externalCustomerIdLength);
      expect(validateMessage(seedMessage({ externalCustomerId: value })).ok).toBe(true);
    });
  });

  describe('id', () => {
    it.each([
      ['v4 lowercase', '6f1c1f0e-8a2b-4c3d-9e4f-5a6b7c8d9e0f'],
      ['v4 uppercase', '6F1C1F0E-8A2B-4C3D-9E4F-5A6B7C8D9E0F'],
      ['v7', '01890a5d-ac96-774b-bcce-b302099a8057'],
      ['v1', 'c232ab00-9414-11ec-b3c8-9f6bdeced846'],
      ['nil', '00000000-0000-0000-0000-000000000000'],
    ])('accepts a UUID (%s)', (_name, id) => {
      expect(validateMessage(seedMessage({ id })).ok).toBe(true);
    });
    it.each([
      ['no dashes', '6f1c1f0e8a2b4c3d9e4f5a6b7c8d9e0f'],
      ['a non-hex digit', '6f1c1f0e-8a2b-4c3d-9e4f-5a6b7c8d9e0g'],
      ['braces', '{6f1c1f0e-8a2b-4c3d-9e4f-5a6b7c8d9e0f}'],
      ['empty', ''],
      ['a number', 123],
    ])('rejects %s', (_name, id) => {
      expect(violations(validateMessage(seedMessage({ id })))).toEqual([
        { field: 'id', description: 'must be a UUID (8-4-4-4-12 hexadecimal digits)' },
      ]);
    });
  });

  describe('createdDate', () => {
    it('accepts both ends of the range', () => {
      expect(validateMessage(seedMessage({ createdDate: LIMITS.minCreatedDate })).ok).toBe(true);
      expect(validateMessage(seedMessage({ createdDate: LIMITS.maxCreatedDate })).ok).toBe(true);
    });
    it.each([
      ['before 2000', LIMITS.minCreatedDate - 1],
      ['after 2100', LIMITS.maxCreatedDate + 1],
      ['seconds instead of ms', 1_700_000_000],
      ['a fraction', 1_700_000_000_000.5],
      ['a string', '1700000000000'],
      ['NaN', Number.NaN],
    ])('rejects %s', (_name, createdDate) => {
      expect(fields(validateMessage(seedMessage({ createdDate })))).toEqual(['createdDate']);
    });
  });

  describe('title, content, category bounds', () => {
    it.each([
      ['title', LIMITS.titleLength],
      ['content', LIMITS.contentLength],
      ['category', LIMITS.categoryLength],
    ] as const)('%s accepts %i characters and rejects one more', (field, max) => {
      expect(validateMessage(seedMessage({ [field]: 'a'.repeat(max) })).ok).toBe(true);
      expect(violations(validateMessage(seedMessage({ [field]: 'a'.repeat(max + 1) })))).toEqual([
        { field, description: `must be at most ${max} characters` },
      ]);
    });
  });

  describe.each(['image', 'link'] as const)('%s', (field) => {
    it.each(['', 'http://example.com/x', 'https://example.com/a?b=c#d', 'https://user@cdn.example.com/x'])(
      'accepts %j',
      (value) => {
        expect(validateMessage(seedMessage({ [field]: value })).ok).toBe(true);
      },
    );
    it.each([
      ['ftp://example.com/x', 'must use the http or https scheme'],
      ['javascript:alert(1)', 'must use the http or https scheme'],
      ['/relative/path', 'must be an http(s) URL or empty'],
      ['example.com', 'must be an http(s) URL or empty'],
      [`https://example.com/${'a'.repeat(LIMITS.urlLength)}`, `must be at most ${LIMITS.urlLength} characters`],
    ])('rejects %j', (value, description) => {
      expect(violations(validateMessage(seedMessage({ [field]: value })))).toEqual([{ field, description }]);
    });
    it('rejects null', () => {
      expect(fields(validateMessage(seedMessage({ [field]: null })))).toEqual([field]);
    });
  });

  describe('customData', () => {
    it.each(['{}', '[]', '"text"', '42', 'null', '{"a":{"b":[1,2]}}'])('accepts JSON text %j', (customData) => {
      expect(validateMessage(seedMessage({ customData })).ok).toBe(true);
    });
    it.each(['', '{', "{'a':1}", 'undefined', '{"a":1}x'])('rejects non-JSON %j', (customData) => {
      expect(violations(validateMessage(seedMessage({ customData })))).toEqual([
        { field: 'customData', description: 'must be valid JSON text' },
      ]);
    });
    it('rejects a JSON object instead of JSON text', () => {
      expect(fields(validateMessage(seedMessage({ customData: { a: 1 } })))).toEqual(['customData']);
    });
    it('bounds the UTF-8 size at 64 KiB, counting multi-byte characters', () => {
      const fits = JSON.stringify('a'.repeat(LIMITS.customDataBytes - 2));
      expect(utf8ByteLength(fits)).toBe(LIMITS.customDataBytes);
      expect(validateMessage(seedMessage({ customData: fits })).ok).toBe(true);
      // 'é' is one UTF-16 unit but two UTF-8 bytes: under the limit in characters, over it in bytes.
      const multiByte = JSON.stringify('é'.repeat(LIMITS.customDataBytes / 2));
      expect(multiByte.length).toBeLessThan(LIMITS.customDataBytes);
      expect(violations(validateMessage(seedMessage({ customData: multiByte })))).toEqual([
        { field: 'customData', description: `must be at most ${LIMITS.customDataBytes} bytes of UTF-8` },
      ]);
    });
  });

  it('rejects a non-object with one violation at the root', () => {
    expect(violations(validateMessage('hello'))).toEqual([{ field: '', description: 'must be an object' }]);
    expect(violations(validateMessage(null, 'message'))).toEqual([
      { field: 'message', description: 'must be an object' },
    ]);
  });
});

describe('messageListSchema', () => {
  it('accepts an empty array and a list of seed messages', () => {
    expect(validateMessageList([]).ok).toBe(true);
    expect(validateMessageList([seedMessage(), seedMessage({ id: '00000000-0000-0000-0000-000000000001' })]).ok).toBe(
      true,
    );
  });

  it('names each bad field by index under the prefix', () => {
    const result = validateMessageList(
      [seedMessage(), seedMessage({ id: 'x' }), seedMessage(), seedMessage({ title: 1, unknown: 2 })],
      'messages',
    );
    expect(fields(result)).toEqual(['messages[1].id', 'messages[3].title', 'messages[3].unknown']);
  });

  it('rejects a body that is not an array', () => {
    expect(violations(validateMessageList({ messages: [] }))).toEqual([{ field: '', description: 'must be an array' }]);
  });
});

describe('webhookConfigSchema', () => {
  const secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

  it('applies the defaults: maxMessagesPerContact 1000, enabled true', () => {
    expect(validateWebhookConfig({ url: 'https://hooks.example.com/inbox' })).toEqual({
      ok: true,
      value: { url: 'https://hooks.example.com/inbox', maxMessagesPerContact: 1000, enabled: true },
    });
    expect(DEFAULT_MAX_MESSAGES_PER_CONTACT).toBe(1000);
  });

  it('accepts a full configuration', () => {
    const input = {
      url: 'http://127.0.0.1:8080/hook?x=1',
      auth: { type: 'basic', username: 'üser', password: 'p:a ss' },
      maxMessagesPerContact: MAX_MESSAGES_PER_CONTACT_LIMIT,
      enabled: false,
      signingSecret: secret,
    };
    expect(validateWebhookConfig(input)).toEqual({ ok: true, value: input });
  });

  it.each([
    ['', 'must be an absolute http(s) URL'],
    ['hooks.example.com', 'must be an absolute http(s) URL'],
    ['ftp://example.com', 'must use the http or https scheme'],
    ['https://user:pass@example.com/hook', 'must not contain a username or password; use auth instead'],
    ['https://user@example.com/hook', 'must not contain a username or password; use auth instead'],
    [`https://example.com/${'a'.repeat(LIMITS.urlLength)}`, `must be at most ${LIMITS.urlLength} characters`],
    // The URL parser dropped these unseen: stored and read back as typed, sent elsewhere.
    [' https://example.com/hook', 'must not contain spaces or control characters (percent-encode them)'],
    ['https://example.com/hook\n', 'must not contain spaces or control characters (percent-encode them)'],
    ['https://example.com/ho\tok', 'must not contain spaces or control characters (percent-encode them)'],
    ['https://example.com/a b', 'must not contain spaces or control characters (percent-encode them)'],
  ])('rejects the url %j', (url, description) => {
    expect(violations(validateWebhookConfig({ url }))).toEqual([{ field: 'url', description }]);
  });

  it('accepts a url of exactly the maximum length and rejects one character more', () => {
    const prefix = 'https://example.com/';
    const url = `${prefix}${'a'.repeat(LIMITS.urlLength - prefix.length)}`;
    expect(url).toHaveLength(2_048);
    expect(validateWebhookConfig({ url }).ok).toBe(true);
    expect(violations(validateWebhookConfig({ url: `${url}a` }))).toEqual([
      { field: 'url', description: 'must be at most 2048 characters' },
    ]);
  });

  it('requires the url', () => {
    expect(violations(validateWebhookConfig({}))).toEqual([{ field: 'url', description: 'is required' }]);
  });

  it.each([0, -1, 10_001, 1.5, '10'])('rejects maxMessagesPerContact %j', (maxMessagesPerContact) => {
    expect(fields(validateWebhookConfig({ url: 'https://x.example', maxMessagesPerContact }))).toEqual([
      'maxMessagesPerContact',
    ]);
  });

  it.each([1, 10_000])('accepts maxMessagesPerContact %i', (maxMessagesPerContact) => {
    expect(validateWebhookConfig({ url: 'https://x.example', maxMessagesPerContact }).ok).toBe(true);
  });

  it.each([
    [0, 'must be at least 1'],
    [-5, 'must be at least 1'],
    [10_001, 'must be at most 10000'],
    [2.5, 'must be an integer'],
    ['10', 'must be an integer'],
  ])('rejects rateLimitPerSecond %j, naming the field', (rateLimitPerSecond, description) => {
    expect(violations(validateWebhookConfig({ url: 'https://x.example', rateLimitPerSecond }))).toEqual([
      { field: 'rateLimitPerSecond', description },
    ]);
  });

  it.each([1, 10_000])('accepts rateLimitPerSecond %i, and no limit when absent', (rateLimitPerSecond) => {
    expect(validateWebhookConfig({ url: 'https://x.example', rateLimitPerSecond })).toMatchObject({
      ok: true,
      value: { rateLimitPerSecond },
    });
    const checked = validateWebhookConfig({ url: 'https://x.example' });
    expect(checked.ok && 'rateLimitPerSecond' in checked.value).toBe(false);
  });

  it('rejects enabled that is not a boolean', () => {
    expect(fields(validateWebhookConfig({ url: 'https://x.example', enabled: 'yes' }))).toEqual(['enabled']);
  });

  describe('auth', () => {
    const url = 'https://x.example';
    it.each([
      [{ type: 'bearer', username: 'u', password: 'p' }, 'auth.type', 'must be "basic", the only supported type'],
      [{ username: 'u', password: 'p' }, 'auth.type', 'is required'],
      [{ type: 'basic', username: '', password: 'p' }, 'auth.username', 'must not be empty'],
      [{ type: 'basic', username: 'a:b', password: 'p' }, 'auth.username', 'must not contain ":" (RFC 7617 §2)'],
      [
        { type: 'basic', username: 'a\nb', password: 'p' },
        'auth.username',
        'must not contain control characters (RFC 7617 §2)',
      ],
      [{ type: 'basic', username: 'u', password: '' }, 'auth.password', 'must not be empty'],
      [{ type: 'basic', username: 'u' }, 'auth.password', 'is required'],
      [
        { type: 'basic', username: 'u', password: 'x\u0000' },
        'auth.password',
        'must not contain control characters (RFC 7617 §2)',
      ],
      [
        { type: 'basic', username: 'u', password: 'p'.repeat(LIMITS.passwordLength + 1) },
        'auth.password',
        `must be at most ${LIMITS.passwordLength} characters`,
      ],
      [
        { type: 'basic', username: 'u'.repeat(LIMITS.usernameLength + 1), password: 'p' },
        'auth.username',
        `must be at most ${LIMITS.usernameLength} characters`,
      ],
      [
        { type: 'basic', username: 'a\u007fb', password: 'p' },
        'auth.username',
        'must not contain control characters (RFC 7617 §2)',
      ],
      [
        { type: 'basic', username: 'u', password: 'p\u007f' },
        'auth.password',
        'must not contain control characters (RFC 7617 §2)',
      ],
      [{ type: 'basic', username: 'u', password: 'p', token: 't' }, 'auth.token', 'is not a known field'],
    ])('rejects %j', (auth, field, description) => {
      expect(violations(validateWebhookConfig({ url, auth }))).toEqual([{ field, description }]);
    });

    it('accepts a username and a password of exactly the maximum length', () => {
      const auth = {
        type: 'basic',
        username: 'u'.repeat(LIMITS.usernameLength),
        password: 'p'.repeat(LIMITS.passwordLength),
      };
      expect(validateWebhookConfig({ url, auth }).ok).toBe(true);
    });
  });

  describe('signingSecret', () => {
    const url = 'https://x.example';
    const b64 = (n: number) => btoa(String.fromCharCode(...new Array<number>(n).fill(7)));
    it.each([24, 32, 64])('accepts a secret of %i bytes', (n) => {
      expect(validateWebhookConfig({ url, signingSecret: `whsec_${b64(n)}` }).ok).toBe(true);
    });
    it.each([
      [`whsec_${b64(23)}`, 'must decode to 24..64 bytes'],
      [`whsec_${b64(65)}`, 'must decode to 24..64 bytes'],
      [b64(32), 'must be "whsec_" followed by base64'],
      ['whsec_', 'must be "whsec_" followed by base64'],
      ['whsec_not base64!', 'must be "whsec_" followed by base64'],
      ['whsec_abcde', 'must be "whsec_" followed by base64'],
    ])('rejects %j', (signingSecret, description) => {
      expect(violations(validateWebhookConfig({ url, signingSecret }))).toEqual([
        { field: 'signingSecret', description },
      ]);
    });
  });

  describe('headers', () => {
    const url = 'https://x.example';
    const check = (headers: unknown, extra: Record<string, unknown> = {}) =>
      validateWebhookConfig({ url, headers, ...extra });

    it('accepts tokens as names and visible ASCII as values, stored with lower-case names', () => {
      const headers = {
        'X-Api-Key': 'k_123 456\tend',
        "!#$%&'*+-.^_`|~09azAZ": '~',
        Authorization: 'Bearer abc',
      };
      const result = check(headers);
      expect(result).toEqual({
        ok: true,
        value: {
          url,
          maxMessagesPerContact: 1000,
          enabled: true,
          headers: { 'x-api-key': 'k_123 456\tend', "!#$%&'*+-.^_`|~09azaz": '~', authorization: 'Bearer abc' },
        },
      });
    });

    it('accepts exactly the limits: 20 headers, a 256-character name, a 4,096-byte value, 8 KiB in all', () => {
      const twenty = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`x-h${i}`, 'v']));
      expect(check(twenty).ok).toBe(true);
      expect(check({ ['n'.repeat(256)]: 'v' }).ok).toBe(true);
      expect(check({ 'x-a': 'v'.repeat(4_096) }).ok).toBe(true);
      // Two names of 4 characters and values of 4,092 bytes: 8,192 bytes.
      const full = Object.fromEntries(['x-a1', 'x-a2'].map((n) => [n, 'v'.repeat(4_092)]));
      expect(check(full).ok).toBe(true);
    });

    it('refuses more than 20 headers, and then names only the count', () => {
      const many = Object.fromEntries(Array.from({ length: 21 }, (_, i) => [`x-h${i}`, i === 0 ? '' : 'v']));
      expect(violations(check(many))).toEqual([{ field: 'headers', description: 'must have at most 20 headers' }]);
    });

    it('refuses more than 8 KiB of names and values together', () => {
      const over = Object.fromEntries(['x-a1', 'x-a2'].map((n) => [n, 'v'.repeat(4_092)]));
      over['x-a2'] += 'v';
      expect(violations(check(over))).toEqual([
        { field: 'headers', description: 'names and values together must be at most 8192 bytes' },
      ]);
    });

    it('refuses a name that is not an HTTP token or is too long, counting it and never repeating it', () => {
      const names = ['X-Api-Key: k_secret_1', 'x api', '', 'ünï', 'x(y)', 'a"b'];
      const bad = Object.fromEntries(names.map((n) => [n, 'v']));
      const found = violations(check({ ...bad, ['n'.repeat(257)]: 'v', 'x-ok': 'v' }));
      expect(found).toEqual([
        { field: 'headers', description: 'has 1 header name longer than 256 characters' },
        {
          field: 'headers',
          description:
            'has 6 header names that are not an HTTP token (RFC 9110 §5.6.2: one or more letters, digits or ' +
            "!#$%&'*+-.^_`|~; not repeated here: it may hold a value)",
        },
      ]);
      expect(JSON.stringify(found)).not.toContain('k_secret_1');
      expect(JSON.stringify(found)).not.toContain('x api');
    });

    it('refuses two names that differ only in case, naming the header in lower case', () => {
      expect(violations(check({ 'X-Api-Key': 'a', 'x-api-key': 'b', 'X-API-KEY': 'c' }))).toEqual([
        { field: 'headers["x-api-key"]', description: 'is given more than once (header names are case-insensitive)' },
      ]);
    });

    it.each([
      'Host',
      'content-type',
      'Content-Length',
      'content-encoding',
      'transfer-encoding',
      'connection',
      'keep-alive',
      'upgrade',
      'http2-settings',
      'te',
      'trailer',
      'expect',
      'User-Agent',
      'webhook-id',
      'Webhook-Timestamp',
      'webhook-signature',
      'app-inbox-contact',
      'App-Inbox-Anything',
      'proxy-authorization',
      'Proxy-Connection',
    ])('refuses the reserved name %j, naming it', (name) => {
      expect(violations(check({ [name]: 'v' }))).toEqual([
        {
          field: `headers["${name.toLowerCase()}"]`,
          description: 'is a header the service sets itself or that would break the request: use another name',
        },
      ]);
    });

    it('names a header whose name looks like a field in brackets: never taken for one', () => {
      expect(fields(check({ auth: '' }))).toEqual(['headers["auth"]']);
    });

    it.each([
      ['', 'must not be empty'],
      ['v'.repeat(4_097), 'must be at most 4096 bytes'],
      [
        'k_secret\r\nx-evil: 1',
        'must be visible ASCII characters, spaces and tabs (no CR, LF, NUL, other control or non-ASCII characters)',
      ],
      [
        'k_secret\n',
        'must be visible ASCII characters, spaces and tabs (no CR, LF, NUL, other control or non-ASCII characters)',
      ],
      [
        'k_secret\u0000',
        'must be visible ASCII characters, spaces and tabs (no CR, LF, NUL, other control or non-ASCII characters)',
      ],
      [
        'k_secret\u007f',
        'must be visible ASCII characters, spaces and tabs (no CR, LF, NUL, other control or non-ASCII characters)',
      ],
      [
        'k_secrét',
        'must be visible ASCII characters, spaces and tabs (no CR, LF, NUL, other control or non-ASCII characters)',
      ],
      [' k_secret', 'must not start or end with a space or tab'],
      ['k_secret\t', 'must not start or end with a space or tab'],
    ])('refuses a bad value (case %#), naming the header and not the value', (value, description) => {
      const found = violations(check({ 'X-Api-Key': value }));
      expect(found).toEqual([{ field: 'headers["x-api-key"]', description }]);
      if (value !== '') expect(JSON.stringify(found)).not.toContain('k_secr');
    });

    it('refuses a value that is not a string, naming the header', () => {
      expect(violations(check({ 'x-api-key': 42 }))).toEqual([
        { field: 'headers["x-api-key"]', description: 'must be a string' },
      ]);
      expect(violations(check(['x']))).toEqual([{ field: 'headers', description: 'must be a record' }]);
    });

    it('never repeats a name that is not a token, even when its value is not a string either', () => {
      // `X-Api-Key: k_live_1` typed as a name carries its value: counted, as with a string value, never named.
      const found = violations(check({ 'X-Api-Key: k_live_1': 42, 'x-b': 7 }));
      expect(JSON.stringify(found)).not.toContain('k_live_1');
      expect(found).toEqual([
        { field: 'headers["x-b"]', description: 'must be a string' },
        expect.objectContaining({
          field: 'headers',
          description: expect.stringContaining('1 header name that is not'),
        }),
      ]);
    });

    it('refuses __proto__ as a name rather than drop it unseen (a plain object cannot hold it as a key)', () => {
      // JSON.parse makes `__proto__` an own key, as a caller's decoded JSON would; assigned to a plain object it is
      // lost, so the configuration was accepted without the header it asked for.
      const headers = JSON.parse('{"__proto__": "v", "x-ok": "1"}') as unknown;
      expect(violations(check(headers))).toEqual([
        { field: 'headers["__proto__"]', description: expect.stringContaining('cannot be used as a header name') },
      ]);
    });

    it('allows authorization without Basic auth, and refuses it with Basic auth (any case), naming the header', () => {
      const auth = { type: 'basic', username: 'u', password: 'p' };
      expect(check({ authorization: 'Bearer t' }).ok).toBe(true);
      expect(check({ 'x-api-key': 'k' }, { auth }).ok).toBe(true);
      const refused = {
        field: 'headers["authorization"]',
        description: 'must not be set together with Basic auth, which is sent as the Authorization header',
      };
      expect(violations(check({ Authorization: 'Bearer t' }, { auth }))).toEqual([refused]);
      // Listed beside the other bad fields, not only once they are fixed.
      expect(violations(check({ authorization: 'Bearer t' }, { auth, maxMessagesPerContact: 0 }))).toEqual([
        { field: 'maxMessagesPerContact', description: 'must be at least 1' },
        refused,
      ]);
    });

    it('reports a configuration that is not an object once, without a header check in the way', () => {
      for (const input of [null, undefined, 'x', []]) {
        expect(violations(validateWebhookConfig(input))).toEqual([
          { field: '', description: input === undefined ? 'is required' : 'must be an object' },
        ]);
      }
    });

    it('never echoes a rejected header value in a description (property)', () => {
      fc.assert(
        fc.property(fc.string({ maxLength: 40 }), (text) => {
          // Invalid whatever the random text (a line break; a leading space; beside Basic auth), and marked with a
          // prefix no description contains.
          const secret = `zq${text}`;
          const found = violations(
            check(
              { 'x-api-key': `${secret}\r\n`, 'x-other': ` ${secret}`, Authorization: 'Bearer t' },
              { auth: { type: 'basic', username: 'u', password: 'p' } },
            ),
          );
          expect(found.map((v) => v.field)).toEqual([
            'headers["x-api-key"]',
            'headers["x-other"]',
            'headers["authorization"]',
          ]);
          expect(JSON.stringify(found)).not.toContain('zq');
        }),
      );
    });
  });

  it('lists every bad field of a config at once, with a prefix', () => {
    const result = validateWebhookConfig(
      {
        url: 'https://u:p@x.example',
        auth: { type: 'basic', username: '', password: '' },
        maxMessagesPerContact: 0,
        enabled: 1,
        signingSecret: 'nope',
        timeoutMs: 5,
      },
      'config',
    );
    expect(fields(result)).toEqual([
      'config.url',
      'config.auth.username',
      'config.auth.password',
      'config.maxMessagesPerContact',
      'config.enabled',
      'config.signingSecret',
      'config.timeoutMs',
    ]);
  });

  it('never echoes a rejected password or secret in a description (property)', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 40 }), (value) => {
        // Make both values invalid while keeping the random text inside them.
        const password = `${value}\u0001`;
        const signingSecret = `whsec_${value}!`;
        const result = validateWebhookConfig({
          url: 'https://x.example',
          auth: { type: 'basic', username: 'u', password },
          signingSecret,
        });
        const text = JSON.stringify(violations(result));
        expect(text).not.toContain(JSON.stringify(password).slice(1, -1));
        expect(text).not.toContain(JSON.stringify(signingSecret).slice(1, -1));
      }),
    );
  });
});

describe('formatPath', () => {
  it('joins names with dots and indices with brackets', () => {
    expect(formatPath('', ['a', 0, 'b'])).toBe('a[0].b');
    expect(formatPath('messages', [3, 'id'])).toBe('messages[3].id');
    expect(formatPath('', [])).toBe('');
    expect(formatPath('cfg', [])).toBe('cfg');
  });
  it('quotes keys that are not identifiers', () => {
    expect(formatPath('', ['a b', 'c'])).toBe('["a b"].c');
    expect(formatPath('x', [Symbol('s')])).toBe('x["Symbol(s)"]');
  });
  it('quotes every key of the headers map, identifier or not', () => {
    expect(formatPath('', ['headers', 'auth'])).toBe('headers["auth"]');
    expect(formatPath('config', ['headers', 'x-api-key'])).toBe('config.headers["x-api-key"]');
    expect(formatPath('headers', ['te'])).toBe('headers["te"]');
    expect(formatPath('', ['myheaders', 'auth'])).toBe('myheaders.auth');
  });
});

describe('utf8ByteLength', () => {
  it('matches TextEncoder on any string (property)', () => {
    const encoder = new TextEncoder();
    // Code points (surrogate pairs) and raw UTF-16 units (lone surrogates).
    const units = fc.string({ unit: fc.nat(0xffff).map((c) => String.fromCharCode(c)) });
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary' }), units), (s) => {
        expect(utf8ByteLength(s)).toBe(encoder.encode(s).length);
      }),
    );
  });
  it('counts a lone surrogate as the 3-byte replacement character', () => {
    expect(utf8ByteLength('\ud800')).toBe(3);
    expect(utf8ByteLength('\ud800a')).toBe(4);
    expect(utf8ByteLength('\udc00')).toBe(3);
  });
});
