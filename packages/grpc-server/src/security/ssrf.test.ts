import { createServer, type Server } from 'node:http';
import { BlockList, type AddressInfo } from 'node:net';
import { classify } from '@app-inbox/core';
import fc from 'fast-check';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ADDRESS_RANGES,
  AddressPolicyError,
  assertUrlAllowed,
  checkUrlAtConfigTime,
  classifyAddress,
  createGuardedConnector,
  createGuardedLookup,
  judgeAddress,
  validateAddressPolicy,
  type AddressCategory,
  type AddressPolicy,
  type Resolver,
} from './ssrf.js';

const strict: AddressPolicy = { allowPrivate: false, allowList: [] };
const loopbackAllowed: AddressPolicy = { allowPrivate: false, allowList: ['127.0.0.1'] };

/** A resolver from a fixed table, so tests never depend on DNS or /etc/hosts. */
function tableResolver(table: Record<string, string[]>): Resolver {
  return async (hostname) => {
    const found = table[hostname];
    if (found === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
    return found.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
}

describe('classifyAddress', () => {
  it.each<[string, AddressCategory]>([
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['::1', 'loopback'],
    ['[::1]', 'loopback'],
    ['0:0:0:0:0:0:0:1', 'loopback'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::FFFF:127.0.0.1', 'loopback'],
    ['64:ff9b::7f00:1', 'loopback'],
    ['2002:7f00:1::', 'loopback'],
    ['10.0.0.1', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['::ffff:10.1.2.3', 'private'],
    ['fc00::1', 'private'],
    ['fd12:3456::1', 'private'],
    ['64:ff9b:1::1', 'private'],
    ['169.254.1.1', 'link_local'],
    ['fe80::1', 'link_local'],
    ['fe80::1%eth0', 'link_local'],
    ['febf::1', 'link_local'],
    ['100.64.0.1', 'cgnat'],
    ['100.127.255.255', 'cgnat'],
    ['169.254.169.254', 'metadata'],
    ['::ffff:169.254.169.254', 'metadata'],
    ['::ffff:a9fe:a9fe', 'metadata'],
    ['169.254.170.2', 'metadata'],
    ['fd00:ec2::254', 'metadata'],
    ['100.100.100.200', 'metadata'],
    ['192.0.0.192', 'metadata'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['::', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['ff02::1', 'multicast'],
    ['240.0.0.1', 'reserved'],
    ['255.255.255.255', 'reserved'],
    ['198.18.0.1', 'reserved'],
    ['198.19.255.255', 'reserved'],
    ['192.0.2.10', 'reserved'],
    ['198.51.100.1', 'reserved'],
    ['203.0.113.9', 'reserved'],
    ['2001:db8::1', 'reserved'],
    ['2001::1', 'reserved'],
    ['::1.2.3.4', 'reserved'],
    ['100::1', 'reserved'],
    ['4000::1', 'reserved'],
    ['8.8.8.8', 'public'],
    ['1.1.1.1', 'public'],
    ['172.15.255.255', 'public'],
    ['172.32.0.0', 'public'],
    ['100.63.255.255', 'public'],
    ['100.128.0.0', 'public'],
    ['198.17.255.255', 'public'],
    ['198.20.0.0', 'public'],
    ['::ffff:8.8.8.8', 'public'],
    ['64:ff9b::808:808', 'public'],
    ['2606:4700:4700::1111', 'public'],
    ['2a00:1450:4001:81c::200e', 'public'],
  ])('%s is %s', (ip, category) => {
    expect(classifyAddress(ip)).toBe(category);
  });

  it.each(['example.com', '', '1.2.3', '256.1.1.1', '::g', '1:2:3:4:5:6:7:8:9', '127.0.0.1/8'])(
    'refuses %j, which is not an IP address',
    (text) => {
      expect(() => classifyAddress(text)).toThrow(expect.objectContaining({ code: 'invalid_argument' }));
    },
  );

  // Cross-check the hand-written parser and prefix matcher against Node's own BlockList built from the same table.
  const v4Table = new BlockList();
  const v6Table = new BlockList();
  for (const { cidr } of ADDRESS_RANGES) {
    const [net = '', prefix = ''] = cidr.split('/');
    if (net.includes(':')) v6Table.addSubnet(net, Number(prefix), 'ipv6');
    else v4Table.addSubnet(net, Number(prefix), 'ipv4');
  }
  const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((p) => p.join('.'));

  it('property: an IPv4 address is non-public exactly when the table lists it (checked by node:net BlockList)', () => {
    fc.assert(
      fc.property(ipv4, (ip) => {
        expect(classifyAddress(ip) !== 'public').toBe(v4Table.check(ip, 'ipv4'));
      }),
      { numRuns: 2000 },
    );
  });

  it('property: an IPv4-mapped IPv6 address is classified as its IPv4 address, in dotted and hex form', () => {
    fc.assert(
      fc.property(fc.nat(0xffffffff), (n) => {
        const dotted = [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
        const hex = `::ffff:${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
        expect(classifyAddress(`::ffff:${dotted}`)).toBe(classifyAddress(dotted));
        expect(classifyAddress(hex)).toBe(classifyAddress(dotted));
      }),
      { numRuns: 1000 },
    );
  });

  it('property: a global-unicast IPv6 address (2000::/3, no embedded IPv4) is non-public exactly when the table lists it', () => {
    const group = fc.nat(0xffff).map((n) => n.toString(16));
    const global = fc
      .tuple(fc.integer({ min: 0x2000, max: 0x3fff }), fc.array(group, { minLength: 7, maxLength: 7 }))
      .filter(([first]) => first !== 0x2002)
      .map(([first, rest]) => [first.toString(16), ...rest].join(':'));
    fc.assert(
      fc.property(global, (ip) => {
        expect(classifyAddress(ip) !== 'public').toBe(v6Table.check(ip, 'ipv6'));
      }),
      { numRuns: 2000 },
    );
  });
});

describe('judgeAddress and the policy', () => {
  it('allows public addresses under the strictest policy and refuses the rest', () => {
    expect(judgeAddress('93.184.215.14', strict)).toEqual({ allowed: true, category: 'public' });
    expect(judgeAddress('127.0.0.1', strict)).toEqual({ allowed: false, category: 'loopback' });
  });

  it('allow-lists IPs and CIDRs; an IPv4 entry covers its IPv4-mapped IPv6 form', () => {
    const policy: AddressPolicy = { allowPrivate: false, allowList: ['127.0.0.1', '10.1.0.0/16', 'fd00::/8'] };
    expect(judgeAddress('127.0.0.1', policy).allowed).toBe(true);
    expect(judgeAddress('::ffff:127.0.0.1', policy).allowed).toBe(true);
    expect(judgeAddress('127.0.0.2', policy).allowed).toBe(false);
    expect(judgeAddress('10.1.200.3', policy).allowed).toBe(true);
    expect(judgeAddress('10.2.0.1', policy).allowed).toBe(false);
    expect(judgeAddress('fd12::1', policy).allowed).toBe(true);
    expect(judgeAddress('fc00::1', policy).allowed).toBe(false);
  });

  it('allowPrivate opens private and CGNAT ranges but never loopback, link-local or metadata', () => {
    const policy: AddressPolicy = { allowPrivate: true, allowList: [] };
    for (const ip of ['10.0.0.1', '192.168.0.1', 'fd00::1', '100.64.0.1'])
      expect(judgeAddress(ip, policy).allowed).toBe(true);
    for (const ip of ['127.0.0.1', '::1', '169.254.1.1', '169.254.169.254', 'fd00:ec2::254', '0.0.0.0', '224.0.0.1']) {
      expect(judgeAddress(ip, policy).allowed).toBe(false);
    }
  });

  it.each([
    [{ allowPrivate: false, allowList: ['127.0.0.1', '10.0.0.0/33'] }, 'allowList[1]'],
    [{ allowPrivate: false, allowList: ['not a host!'] }, 'allowList[0]'],
    [{ allowPrivate: false, allowList: [''] }, 'allowList[0]'],
    [{ allowPrivate: 'yes', allowList: [] }, 'allowPrivate'],
    [{ allowPrivate: false, allowList: 'localhost' }, 'allowList'],
  ])('rejects an invalid policy naming the field (%j)', (policy, field) => {
    expect(() => validateAddressPolicy(policy as unknown as AddressPolicy)).toThrow(
      expect.objectContaining({ code: 'invalid_argument', message: expect.stringContaining(field) }),
    );
  });
});

describe('checkUrlAtConfigTime', () => {
  const resolve = tableResolver({
    'hooks.example.com': ['93.184.215.14', '2606:2800:21f:cb07:6820:80da:af6b:8b2c'],
    'internal.example.com': ['10.0.0.7'],
    'mixed.example.com': ['93.184.215.14', '127.0.0.1'],
    'metadata.example.com': ['169.254.169.254'],
    'localhost.example.com': ['::1'],
  });

  it('accepts a URL whose host resolves only to public addresses', async () => {
    await expect(checkUrlAtConfigTime('https://hooks.example.com/inbox', strict, resolve)).resolves.toEqual({
      ok: true,
    });
  });

  it.each([
    ['http://internal.example.com/x', '10.0.0.7', 'private'],
    ['http://mixed.example.com/x', '127.0.0.1', 'loopback'],
    ['http://metadata.example.com/latest/meta-data', '169.254.169.254', 'metadata'],
    ['http://localhost.example.com:8080/', '::1', 'loopback'],
    ['http://127.0.0.1:3000/hook', '127.0.0.1', 'loopback'],
    ['http://[::ffff:169.254.169.254]/', '::ffff:a9fe:a9fe', 'metadata'], // the URL parser normalises the host
    ['http://[fd00:ec2::254]/', 'fd00:ec2::254', 'metadata'],
    ['http://100.64.1.1/', '100.64.1.1', 'cgnat'],
  ])('refuses %s (any address blocked: %s)', async (url, address, category) => {
    const result = await checkUrlAtConfigTime(url, strict, resolve);
    expect(result).toMatchObject({ ok: false, code: 'blocked_address', address });
    expect(result.ok === false && result.reason).toContain(category.replace('_', '-'));
  });

  it('accepts a blocked address that the allow-list names, by IP or by host name', async () => {
    await expect(checkUrlAtConfigTime('http://127.0.0.1:3000/', loopbackAllowed, resolve)).resolves.toEqual({
      ok: true,
    });
    const byName: AddressPolicy = { allowPrivate: false, allowList: ['Internal.Example.com.'] };
    await expect(checkUrlAtConfigTime('http://internal.example.com/', byName, resolve)).resolves.toEqual({ ok: true });
  });

  it.each([
    ['not a url', 'absolute http(s) URL'],
    ['ftp://hooks.example.com/', 'scheme ftp'],
    ['file:///etc/passwd', 'scheme file'],
    ['https://user:pw@hooks.example.com/', 'credentials'],
  ])('refuses the malformed URL %j', async (url, reason) => {
    const result = await checkUrlAtConfigTime(url, strict, resolve);
    expect(result).toMatchObject({ ok: false, code: 'invalid_url', reason: expect.stringContaining(reason) });
  });

  it('refuses a host that does not resolve, with the resolver code', async () => {
    await expect(checkUrlAtConfigTime('https://nowhere.example.com/', strict, resolve)).resolves.toMatchObject({
      ok: false,
      code: 'unresolvable',
      reason: expect.stringContaining('ENOTFOUND'),
    });
  });

  it('gives up on a resolver that never answers after timeoutMs', async () => {
    const hang: Resolver = () => new Promise(() => undefined);
    const started = Date.now();
    await expect(
      checkUrlAtConfigTime('https://slow.example.com/', strict, { resolve: hang, timeoutMs: 50 }),
    ).resolves.toMatchObject({ ok: false, code: 'unresolvable', reason: expect.stringContaining('50 ms') });
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});

describe('createGuardedLookup', () => {
  const resolve = tableResolver({
    'dual.example.com': ['93.184.215.14', '2606:2800::1'],
    'evil.example.com': ['10.0.0.1'],
  });
  const lookup = createGuardedLookup(strict, { resolve });
  const call = (host: string, options: Parameters<typeof lookup>[1]) =>
    new Promise<{ err: NodeJS.ErrnoException | null; address: unknown; family?: number }>((done) =>
      lookup(host, options, (err, address, family) => done({ err, address, family })),
    );

  it('answers like dns.lookup: one address, all addresses, or one family', async () => {
    expect(await call('dual.example.com', {})).toEqual({ err: null, address: '93.184.215.14', family: 4 });
    expect(await call('dual.example.com', { all: true })).toMatchObject({
      err: null,
      address: [
        { address: '93.184.215.14', family: 4 },
        { address: '2606:2800::1', family: 6 },
      ],
    });
    expect(await call('dual.example.com', { family: 6 })).toEqual({ err: null, address: '2606:2800::1', family: 6 });
  });

  it('fails with code blocked_address for a refused address, and passes resolver errors through', async () => {
    const refused = await call('evil.example.com', { all: true });
    expect(refused.err).toBeInstanceOf(AddressPolicyError);
    expect(refused.err?.code).toBe('blocked_address');
    expect((await call('missing.example.com', {})).err?.code).toBe('ENOTFOUND');
  });

  it('with the system resolver: localhost (from /etc/hosts) is refused unless its name is allow-listed', async () => {
    const viaSystem = (policy: AddressPolicy) =>
      new Promise<{ err: NodeJS.ErrnoException | null; address: unknown }>((done) =>
        createGuardedLookup(policy)('localhost', {}, (err, address) => done({ err, address })),
      );
    expect((await viaSystem(strict)).err?.code).toBe('blocked_address');
    const allowed = await viaSystem({ allowPrivate: false, allowList: ['localhost'] });
    expect(allowed.err).toBeNull();
    expect(['127.0.0.1', '::1']).toContain(allowed.address);
  });
});

describe('connect-time guard with undici (real HTTP server on 127.0.0.1)', () => {
  let server: Server;
  let port: number;
  let hits = 0;

  beforeAll(async () => {
    server = createServer((req, res) => {
      hits += 1;
      req.resume();
      res.end('ok');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  async function post(agent: Agent, url: string): Promise<{ status: number } | { code: unknown }> {
    try {
      const res = await request(url, { method: 'POST', body: '[]', dispatcher: agent });
      await res.body.text();
      return { status: res.statusCode };
    } catch (error) {
      return { code: (error as { code?: unknown }).code };
    } finally {
      await agent.close();
    }
  }

  it('refuses a host name that resolves to 127.0.0.1, and the core classifies the refusal as failed', async () => {
    const before = hits;
    const resolve = tableResolver({ 'customer.example.com': ['127.0.0.1'] });
    const agent = new Agent({ connect: { lookup: createGuardedLookup(strict, { resolve }) } });
    const result = await post(agent, `http://customer.example.com:${port}/hook`);
    expect(result).toEqual({ code: 'blocked_address' });
    expect(hits).toBe(before);
    expect(classify({ kind: 'error', code: 'blocked_address' }, 0).verdict).toBe('failed');
  });

  it('connects when the allow-list names 127.0.0.1', async () => {
    const before = hits;
    const resolve = tableResolver({ 'customer.example.com': ['127.0.0.1'] });
    const agent = new Agent({ connect: { lookup: createGuardedLookup(loopbackAllowed, { resolve }) } });
    expect(await post(agent, `http://customer.example.com:${port}/hook`)).toEqual({ status: 200 });
    expect(hits).toBe(before + 1);
  });

  it('defeats DNS rebinding: public when configured, loopback when connecting', async () => {
    let answers = 0;
    // First answer public (the configuration check), every later one loopback (the connection).
    const rebinding: Resolver = async () => [{ address: answers++ === 0 ? '93.184.215.14' : '127.0.0.1', family: 4 }];
    const url = `http://rebind.example.com:${port}/hook`;
    await expect(checkUrlAtConfigTime(url, strict, rebinding)).resolves.toEqual({ ok: true });
    const before = hits;
    const agent = new Agent({ connect: createGuardedConnector(strict, { resolve: rebinding }) });
    expect(await post(agent, url)).toEqual({ code: 'blocked_address' });
    expect(hits).toBe(before);
  });

  it('Node skips lookup for an IP literal, so a lookup-only guard lets it through (why the connector exists)', async () => {
    const before = hits;
    const agent = new Agent({ connect: { lookup: createGuardedLookup(strict) } });
    expect(await post(agent, `http://127.0.0.1:${port}/hook`)).toEqual({ status: 200 });
    expect(hits).toBe(before + 1);
  });

  it.each(['127.0.0.1', '[::ffff:127.0.0.1]'])('the guarded connector refuses the IP literal %s', async (host) => {
    const before = hits;
    const agent = new Agent({ connect: createGuardedConnector(strict, { timeout: 2_000 }) });
    expect(await post(agent, `http://${host}:${port}/hook`)).toEqual({ code: 'blocked_address' });
    expect(hits).toBe(before);
  });

  it('the guarded connector connects to an allow-listed IP literal', async () => {
    const agent = new Agent({ connect: createGuardedConnector(loopbackAllowed) });
    expect(await post(agent, `http://127.0.0.1:${port}/hook`)).toEqual({ status: 200 });
  });
});

describe('assertUrlAllowed', () => {
  it('refuses blocked IP literals without DNS and lets host names through to the connect-time check', () => {
    expect(() => assertUrlAllowed('http://127.0.0.1:8080/', strict)).toThrow(
      expect.objectContaining({ code: 'blocked_address', details: expect.objectContaining({ category: 'loopback' }) }),
    );
    expect(() => assertUrlAllowed('http://[::1]/', strict)).toThrow(
      expect.objectContaining({ code: 'blocked_address' }),
    );
    expect(() => assertUrlAllowed('http://0.0.0.0/', strict)).toThrow(
      expect.objectContaining({ code: 'blocked_address' }),
    );
    expect(() => assertUrlAllowed('http://127.0.0.1:8080/', loopbackAllowed)).not.toThrow();
    expect(() => assertUrlAllowed('https://8.8.8.8/', strict)).not.toThrow();
    expect(() => assertUrlAllowed('https://localhost/', strict)).not.toThrow();
    expect(() => assertUrlAllowed('gopher://8.8.8.8/', strict)).toThrow(
      expect.objectContaining({ code: 'invalid_url' }),
    );
  });

  it('sees through alternative spellings of loopback that the URL parser normalises', () => {
    for (const url of ['http://2130706433/', 'http://0x7f.1/', 'http://127.1/', 'http://[0:0:0:0:0:0:0:1]/']) {
      expect(() => assertUrlAllowed(url, strict), url).toThrow(expect.objectContaining({ code: 'blocked_address' }));
    }
  });
});
