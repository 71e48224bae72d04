import { describe, expect, it } from 'vitest';
import { bareHostname, guardedLookup, isNonPublicAddress } from './address-guard.js';

describe('isNonPublicAddress', () => {
  it.each([
    '127.0.0.1',
    '10.1.2.3',
    '172.16.0.1',
    '172.31.255.255',
    '192.168.1.1',
    '169.254.169.254',
    '100.64.0.1',
    '0.0.0.0',
    '224.0.0.1',
    '::1',
    '::',
    'fd00:ec2::254',
    'fe80::1',
    '::ffff:127.0.0.1',
    '::ffff:10.0.0.1',
  ])('%s is not public', (address) => {
    expect(isNonPublicAddress(address)).toBe(true);
  });

  it.each(['8.8.8.8', '1.1.1.1', '172.32.0.1', '100.128.0.1', '2606:4700:4700::1111', '::ffff:8.8.8.8'])(
    '%s is public',
    (address) => {
      expect(isNonPublicAddress(address)).toBe(false);
    },
  );

  it('is false for names', () => {
    expect(isNonPublicAddress('example.com')).toBe(false);
  });
});

describe('guardedLookup', () => {
  it('refuses a name resolving to loopback unless allowed', async () => {
    const lookup = (allowed: string[]) =>
      new Promise<{ err: NodeJS.ErrnoException | null; address: unknown }>((resolve) =>
        guardedLookup(new Set(allowed))('localhost', { all: false }, (err, address) => resolve({ err, address })),
      );
    const refused = await lookup([]);
    expect(refused.err?.code).toBe('blocked_address');
    const allowed = await lookup(['localhost']);
    expect(allowed.err).toBeNull();
    expect(typeof allowed.address).toBe('string');
  });
});

it('bareHostname strips IPv6 brackets and lower-cases', () => {
  expect(bareHostname('[::1]')).toBe('::1');
  expect(bareHostname('Example.COM')).toBe('example.com');
});
