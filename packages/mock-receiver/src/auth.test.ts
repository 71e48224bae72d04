import { describe, expect, it } from 'vitest';
import { basicAuthorization } from '@app-inbox/core';
import { checkCredentials, redactHeaders } from './auth.js';

const expected = { username: 'shop', password: 'pä:ss wörd' };

describe('checkCredentials', () => {
  it('accepts exactly the configured user and password (UTF-8, ":" allowed in the password)', () => {
    expect(checkCredentials(basicAuthorization('shop', 'pä:ss wörd'), expected)).toBe('valid');
    expect(checkCredentials(`basic ${basicAuthorization('shop', 'pä:ss wörd').slice(6)}`, expected)).toBe('valid');
  });

  it('tells missing from wrong', () => {
    expect(checkCredentials(undefined, expected)).toBe('missing');
    expect(checkCredentials('  ', expected)).toBe('missing');
    expect(checkCredentials(basicAuthorization('shop', 'pä:ss wört'), expected)).toBe('wrong');
    expect(checkCredentials(basicAuthorization('shoP', 'pä:ss wörd'), expected)).toBe('wrong');
    expect(checkCredentials('Bearer abc', expected)).toBe('wrong');
    expect(checkCredentials('Basic !!!', expected)).toBe('wrong');
    expect(checkCredentials('Basic', expected)).toBe('wrong');
  });

  it('needs nothing when no credentials are configured', () => {
    expect(checkCredentials(undefined, null)).toBe('not_required');
    expect(checkCredentials('Basic Zm9vOmJhcg==', null)).toBe('not_required');
  });
});

describe('redactHeaders', () => {
  it('keeps the scheme and hides the credentials, cookies and proxy credentials', () => {
    const headers = redactHeaders({
      authorization: basicAuthorization('shop', 'secret'),
      'proxy-authorization': 'Bearer token-value',
      cookie: 'session=abc',
      'webhook-id': 'd-1',
    });
    expect(headers).toEqual({
      authorization: 'Basic [redacted]',
      'proxy-authorization': 'Bearer [redacted]',
      cookie: '[redacted]',
      'webhook-id': 'd-1',
    });
    expect(redactHeaders({ authorization: 'justatoken' })).toEqual({ authorization: '[redacted]' });
  });
});
