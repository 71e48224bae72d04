/**
 * Server-side request forgery protection for webhook URLs (issue 7).
 *
 * A customer chooses the URL we POST to, so without a guard it could point the service at its own host
 * (loopback admin ports), the internal network, or the cloud metadata service. The rule is applied twice:
 * - at configuration time ({@link checkUrlAtConfigTime}): every address the host resolves to must be
 *   allowed, so a bad URL is refused with a clear reason when the webhook is saved;
 * - at connect time ({@link createGuardedLookup}, {@link createGuardedConnector}, {@link assertUrlAllowed}):
 *   the addresses are resolved again and checked right before the socket connects, so a name that
 *   resolved to a public address when it was saved and to 127.0.0.1 later (DNS rebinding) still fails.
 *
 * Which ranges are refused is one data table ({@link ADDRESS_RANGES}); the decision is a pure function of
 * the address and the {@link AddressPolicy}.
 */
import { isIP } from 'node:net';
import { promises as dnsPromises, type LookupAddress, type LookupOptions } from 'node:dns';
import { BLOCKED_ADDRESS_CODE } from '@app-inbox/core';
import { buildConnector } from 'undici';

/** What kind of address an IP is; everything but `public` is refused unless the policy allows it. */
export type AddressCategory =
  'public' | 'loopback' | 'private' | 'link_local' | 'cgnat' | 'metadata' | 'unspecified' | 'multicast' | 'reserved';

/**
 * Which destinations the delivery path may connect to. Public addresses are always allowed.
 * @see SPEC §2, issue 7 "SSRF protection"
 */
export interface AddressPolicy {
  /**
   * Also allow private networks: RFC 1918 / unique local (fc00::/7) and CGNAT (100.64.0.0/10), for a deployment
   * whose customers' receivers live on an internal network. Loopback, link-local, metadata, multicast and
   * reserved addresses stay refused (allow-list them one by one if ever needed). Default false.
   */
  allowPrivate: boolean;
  /**
   * Destinations allowed whatever their category: IP addresses (`127.0.0.1`, `::1`), CIDR blocks
   * (`10.1.0.0/16`), or exact host names (`receiver.internal`: whatever it resolves to is trusted).
   * The tests and the local demo set `['127.0.0.1']`. Default empty.
   */
  allowList: readonly string[];
}

/** The default policy: public addresses only. */
export const DEFAULT_ADDRESS_POLICY: AddressPolicy = Object.freeze({
  allowPrivate: false,
  allowList: Object.freeze([]),
});

/** Categories that `allowPrivate: true` opens. */
export const CATEGORIES_ALLOWED_BY_ALLOW_PRIVATE: ReadonlySet<AddressCategory> = new Set(['private', 'cgnat']);

/**
 * The address table. Longest prefix wins, so a /32 metadata address inside a wider range is reported as
 * `metadata`. IPv6 addresses outside 2000::/3 (global unicast) that no row names are `reserved`.
 * Sources: IANA IPv4/IPv6 Special-Purpose Address Registries (RFC 6890 and updates), cloud provider docs.
 */
export const ADDRESS_RANGES: ReadonlyArray<{ cidr: string; category: AddressCategory; why: string }> = [
  // IPv4
  { cidr: '0.0.0.0/8', category: 'unspecified', why: '"this network"; 0.0.0.0 reaches the local host on Linux' },
  { cidr: '10.0.0.0/8', category: 'private', why: 'RFC 1918' },
  { cidr: '100.64.0.0/10', category: 'cgnat', why: 'RFC 6598 shared address space' },
  { cidr: '100.100.100.200/32', category: 'metadata', why: 'Alibaba Cloud metadata' },
  { cidr: '127.0.0.0/8', category: 'loopback', why: 'RFC 1122' },
  { cidr: '169.254.0.0/16', category: 'link_local', why: 'RFC 3927' },
  { cidr: '169.254.169.254/32', category: 'metadata', why: 'AWS, GCP, Azure, OpenStack metadata' },
  { cidr: '169.254.170.2/32', category: 'metadata', why: 'AWS ECS task metadata' },
  { cidr: '172.16.0.0/12', category: 'private', why: 'RFC 1918' },
  { cidr: '192.0.0.0/24', category: 'reserved', why: 'IETF protocol assignments' },
  { cidr: '192.0.0.192/32', category: 'metadata', why: 'Oracle Cloud metadata' },
  { cidr: '192.0.2.0/24', category: 'reserved', why: 'TEST-NET-1 documentation' },
  { cidr: '192.88.99.0/24', category: 'reserved', why: 'deprecated 6to4 relay anycast' },
  { cidr: '192.168.0.0/16', category: 'private', why: 'RFC 1918' },
  { cidr: '198.18.0.0/15', category: 'reserved', why: 'benchmarking (RFC 2544)' },
  { cidr: '198.51.100.0/24', category: 'reserved', why: 'TEST-NET-2 documentation' },
  { cidr: '203.0.113.0/24', category: 'reserved', why: 'TEST-NET-3 documentation' },
  { cidr: '224.0.0.0/4', category: 'multicast', why: 'RFC 5771' },
  { cidr: '240.0.0.0/4', category: 'reserved', why: 'future use, and 255.255.255.255 broadcast' },
  // IPv6
  { cidr: '::/128', category: 'unspecified', why: 'RFC 4291' },
  { cidr: '::1/128', category: 'loopback', why: 'RFC 4291' },
  { cidr: '::/96', category: 'reserved', why: 'deprecated IPv4-compatible addresses' },
  { cidr: '64:ff9b:1::/48', category: 'private', why: 'local-use NAT64 (RFC 8215)' },
  { cidr: '100::/64', category: 'reserved', why: 'discard-only (RFC 6666)' },
  { cidr: '2001::/23', category: 'reserved', why: 'IETF protocol assignments, incl. Teredo 2001::/32' },
  { cidr: '2001:db8::/32', category: 'reserved', why: 'documentation' },
  { cidr: '3fff::/20', category: 'reserved', why: 'documentation (RFC 9637)' },
  { cidr: '5f00::/16', category: 'reserved', why: 'SRv6 SIDs (RFC 9602)' },
  { cidr: 'fc00::/7', category: 'private', why: 'unique local addresses (RFC 4193)' },
  { cidr: 'fd00:ec2::254/128', category: 'metadata', why: 'AWS metadata over IPv6' },
  { cidr: 'fe80::/10', category: 'link_local', why: 'RFC 4291' },
  { cidr: 'fec0::/10', category: 'private', why: 'deprecated site-local' },
  { cidr: 'ff00::/8', category: 'multicast', why: 'RFC 4291' },
];

/**
 * IPv6 ranges that carry an IPv4 address: judged by the embedded IPv4 address (so ::ffff:127.0.0.1,
 * 64:ff9b::7f00:1 and 2002:7f00:1:: are all loopback). `shift` is where the IPv4 bits start from the right.
 */
const EMBEDDED_IPV4: ReadonlyArray<{ cidr: string; shift: bigint; why: string }> = [
  { cidr: '::ffff:0:0/96', shift: 0n, why: 'IPv4-mapped (RFC 4291)' },
  { cidr: '64:ff9b::/96', shift: 0n, why: 'well-known NAT64 prefix (RFC 6052)' },
  { cidr: '2002::/16', shift: 80n, why: '6to4 (RFC 3056)' },
];

// ---------------------------------------------------------------------------------------------------------
// Errors

/** Why a URL or address is refused; `blocked_address` is the code core classifies as `failed`. */
export type AddressPolicyErrorCode = typeof BLOCKED_ADDRESS_CODE | 'invalid_url' | 'unresolvable' | 'invalid_argument';

/** Raised for a refused destination or an invalid policy; its message never contains credentials. */
export class AddressPolicyError extends Error {
  override readonly name = 'AddressPolicyError';
  constructor(
    readonly code: AddressPolicyErrorCode,
    message: string,
    readonly details: { host?: string; address?: string; category?: AddressCategory } = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Addresses and CIDRs

interface Ip {
  family: 4 | 6;
  value: bigint;
}

interface Cidr {
  family: 4 | 6;
  network: bigint;
  prefix: number;
}

function parseIpv4(text: string): bigint | null {
  const parts = text.split('.');
  if (parts.length !== 4) return null;
  let value = 0n;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part)) return null;
    const n = Number(part);
    if (n > 255) return null;
    value = (value << 8n) | BigInt(n);
  }
  return value;
}

function parseIpv6(text: string): bigint | null {
  let rest = text;
  // A trailing dotted quad (::ffff:1.2.3.4) stands for the last two groups.
  const lastColon = rest.lastIndexOf(':');
  const last = rest.slice(lastColon + 1);
  if (last.includes('.')) {
    const v4 = parseIpv4(last);
    if (v4 === null) return null;
    rest = `${rest.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const halves = rest.split('::');
  if (halves.length > 2) return null;
  const groups = (s: string): bigint[] | null => {
    if (s === '') return [];
    const out: bigint[] = [];
    for (const g of s.split(':')) {
      if (!/^[0-9a-f]{1,4}$/i.test(g)) return null;
      out.push(BigInt(`0x${g}`));
    }
    return out;
  };
  const head = groups(halves[0] ?? '');
  const tail = halves.length === 2 ? groups(halves[1] ?? '') : [];
  if (head === null || tail === null) return null;
  const missing = 8 - head.length - tail.length;
  // `::` stands for at least one zero group; without it there must be exactly eight.
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const all = [...head, ...new Array<bigint>(missing).fill(0n), ...tail];
  return all.reduce((acc, g) => (acc << 16n) | g, 0n);
}

/** Parses an IP literal (IPv6 may be bracketed and may carry a zone id); null when it is not one. */
function parseIp(text: string): Ip | null {
  let t = text.trim();
  if (t.startsWith('[') && t.endsWith(']')) t = t.slice(1, -1);
  const zone = t.indexOf('%');
  if (zone !== -1) t = t.slice(0, zone);
  const family = isIP(t);
  if (family === 4) {
    const value = parseIpv4(t);
    return value === null ? null : { family: 4, value };
  }
  if (family === 6) {
    const value = parseIpv6(t);
    return value === null ? null : { family: 6, value };
  }
  return null;
}

function parseCidr(text: string): Cidr | null {
  const slash = text.indexOf('/');
  const ip = parseIp(slash === -1 ? text : text.slice(0, slash));
  if (ip === null) return null;
  const bits = ip.family === 4 ? 32 : 128;
  let prefix = bits;
  if (slash !== -1) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p)) return null;
    prefix = Number(p);
    if (prefix > bits) return null;
  }
  return { family: ip.family, network: maskTo(ip.value, bits, prefix), prefix };
}

function maskTo(value: bigint, bits: number, prefix: number): bigint {
  const hostBits = BigInt(bits - prefix);
  return (value >> hostBits) << hostBits;
}

function contains(cidr: Cidr, ip: Ip): boolean {
  if (cidr.family !== ip.family) return false;
  return maskTo(ip.value, ip.family === 4 ? 32 : 128, cidr.prefix) === cidr.network;
}

function mustCidr(text: string): Cidr {
  const cidr = parseCidr(text);
  if (cidr === null) throw new Error(`bad CIDR in the address table: ${text}`);
  return cidr;
}

// Longest prefix first, so the first match is the most specific one.
const RANGES = ADDRESS_RANGES.map((r) => ({ ...mustCidr(r.cidr), category: r.category })).sort(
  (a, b) => b.prefix - a.prefix,
);
const EMBEDDED = EMBEDDED_IPV4.map((e) => ({ ...mustCidr(e.cidr), shift: e.shift }));
const GLOBAL_UNICAST_V6 = mustCidr('2000::/3');

/** The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), or null. */
function embeddedIpv4(ip: Ip): Ip | null {
  if (ip.family !== 6) return null;
  for (const e of EMBEDDED) {
    if (contains(e, ip)) return { family: 4, value: (ip.value >> e.shift) & 0xffffffffn };
  }
  return null;
}

function classifyParsed(ip: Ip): AddressCategory {
  const v4 = embeddedIpv4(ip);
  if (v4 !== null) return classifyParsed(v4);
  for (const range of RANGES) {
    if (contains(range, ip)) return range.category;
  }
  if (ip.family === 6 && !contains(GLOBAL_UNICAST_V6, ip)) return 'reserved';
  return 'public';
}

/**
 * The category of an IP address (IPv4, IPv6, IPv4-mapped IPv6, bracketed or with a zone id).
 * @throws AddressPolicyError `invalid_argument` when `ip` is not an IP address
 */
export function classifyAddress(ip: string): AddressCategory {
  const parsed = parseIp(ip);
  if (parsed === null) throw new AddressPolicyError('invalid_argument', `not an IP address: ${JSON.stringify(ip)}`);
  return classifyParsed(parsed);
}

// ---------------------------------------------------------------------------------------------------------
// Policy

interface CompiledPolicy {
  allowPrivate: boolean;
  cidrs: Cidr[];
  hostnames: Set<string>;
}

const HOSTNAME = /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

/** Lower case, no IPv6 brackets, no trailing dot: the form host names are compared in. */
export function normalizeHost(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h.endsWith('.')) h = h.slice(0, -1);
  return h;
}

const compiled = new WeakMap<AddressPolicy, CompiledPolicy>();

/**
 * Validates a policy (call it once at start so a bad option stops the server).
 * @throws AddressPolicyError `invalid_argument` naming the bad field, e.g. `allowList[1]`
 */
export function validateAddressPolicy(policy: AddressPolicy): void {
  compilePolicy(policy);
}

function compilePolicy(policy: AddressPolicy): CompiledPolicy {
  const cached = compiled.get(policy);
  if (cached) return cached;
  if (policy === null || typeof policy !== 'object') {
    throw new AddressPolicyError('invalid_argument', 'address policy: required');
  }
  if (typeof policy.allowPrivate !== 'boolean') {
    throw new AddressPolicyError('invalid_argument', 'allowPrivate: must be a boolean');
  }
  if (!Array.isArray(policy.allowList)) {
    throw new AddressPolicyError('invalid_argument', 'allowList: must be a list of IPs, CIDRs or host names');
  }
  const result: CompiledPolicy = { allowPrivate: policy.allowPrivate, cidrs: [], hostnames: new Set() };
  policy.allowList.forEach((entry: unknown, i) => {
    const text = typeof entry === 'string' ? entry.trim() : '';
    const cidr = text === '' ? null : parseCidr(text);
    if (cidr !== null) {
      result.cidrs.push(cidr);
      return;
    }
    const host = normalizeHost(text);
    if (!text.includes('/') && HOSTNAME.test(host)) {
      result.hostnames.add(host);
      return;
    }
    throw new AddressPolicyError(
      'invalid_argument',
      `allowList[${i}]: ${JSON.stringify(entry)} is not an IP address, CIDR block or host name`,
    );
  });
  compiled.set(policy, result);
  return result;
}

/** The verdict on one address under a policy. */
export interface AddressVerdict {
  allowed: boolean;
  category: AddressCategory;
}

function judgeParsed(ip: Ip, policy: CompiledPolicy): AddressVerdict {
  const category = classifyParsed(ip);
  if (category === 'public') return { allowed: true, category };
  const v4 = ip.family === 6 ? embeddedIpv4(ip) : null;
  const listed = policy.cidrs.some((c) => contains(c, ip) || (v4 !== null && contains(c, v4)));
  if (listed) return { allowed: true, category };
  return { allowed: policy.allowPrivate && CATEGORIES_ALLOWED_BY_ALLOW_PRIVATE.has(category), category };
}

/**
 * Whether `ip` may be connected to under `policy`.
 * @throws AddressPolicyError `invalid_argument` when `ip` is not an IP address or the policy is invalid
 */
export function judgeAddress(ip: string, policy: AddressPolicy): AddressVerdict {
  const parsed = parseIp(ip);
  if (parsed === null) throw new AddressPolicyError('invalid_argument', `not an IP address: ${JSON.stringify(ip)}`);
  return judgeParsed(parsed, compilePolicy(policy));
}

function blocked(host: string, address: string, category: AddressCategory): AddressPolicyError {
  const where = host === address ? address : `${host} (${address})`;
  return new AddressPolicyError(
    BLOCKED_ADDRESS_CODE,
    `destination ${where} is a ${category.replace('_', '-')} address, which webhooks may not target`,
    { host, address, category },
  );
}

// ---------------------------------------------------------------------------------------------------------
// Resolution

/** One resolved address of a host name. */
export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}

/** Resolves a host name to all its addresses (like `dns.lookup(host, { all: true })`). Injected in tests. */
export type Resolver = (hostname: string) => Promise<readonly ResolvedAddress[]>;

/** The system resolver (`getaddrinfo`, honours /etc/hosts), as the HTTP client itself would resolve. */
export const systemResolver: Resolver = async (hostname) => {
  const found = await dnsPromises.lookup(hostname, { all: true });
  return found.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }));
};

/**
 * Resolves `host` (or takes it as is when it is an IP literal) and checks every address.
 * Resolves to the allowed addresses; rejects with AddressPolicyError when any address is refused.
 */
async function resolveAndJudge(host: string, policy: CompiledPolicy, resolve: Resolver): Promise<ResolvedAddress[]> {
  const bare = normalizeHost(host);
  const literal = parseIp(bare);
  if (literal !== null) {
    const verdict = judgeParsed(literal, policy);
    if (!verdict.allowed) throw blocked(bare, bare, verdict.category);
    return [{ address: bare.split('%')[0] ?? bare, family: literal.family }];
  }
  let addresses: readonly ResolvedAddress[];
  try {
    addresses = await resolve(bare);
  } catch (error) {
    const code = (error as { code?: unknown } | null)?.code;
    throw new AddressPolicyError(
      'unresolvable',
      `host ${bare} could not be resolved${typeof code === 'string' ? ` (${code})` : ''}`,
      { host: bare },
      { cause: error },
    );
  }
  if (addresses.length === 0) {
    throw new AddressPolicyError('unresolvable', `host ${bare} has no address`, { host: bare });
  }
  // An allow-listed name is trusted whatever it resolves to.
  if (policy.hostnames.has(bare)) return [...addresses];
  // ANY refused address refuses the host: otherwise a name with one public and one private address would
  // reach the private one whenever the client happens to pick it.
  for (const a of addresses) {
    const ip = parseIp(a.address);
    if (ip === null)
      throw new AddressPolicyError('unresolvable', `host ${bare} resolved to a non-IP value`, { host: bare });
    const verdict = judgeParsed(ip, policy);
    if (!verdict.allowed) throw blocked(bare, a.address, verdict.category);
  }
  return [...addresses];
}

// ---------------------------------------------------------------------------------------------------------
// Configuration time

/** Options of {@link checkUrlAtConfigTime}. */
export interface CheckUrlOptions {
  /** Resolver used for host names. Default: the system resolver (`dns.lookup`, all addresses). */
  resolve?: Resolver;
  /** Give up resolving after this long (milliseconds); the URL is then refused as unresolvable. Default 5,000. */
  timeoutMs?: number;
}

/** The answer of {@link checkUrlAtConfigTime}; `reason` is ready to be shown to the caller. */
export type UrlCheckResult =
  | { ok: true }
  | { ok: false; code: Exclude<AddressPolicyErrorCode, 'invalid_argument'>; reason: string; address?: string };

/**
 * Checks a webhook URL when it is configured: it must be http(s), carry no credentials, and every address
 * its host resolves to must be allowed by `policy`. A host that does not resolve is refused (`unresolvable`)
 * so a typo is reported at once. Never throws for a bad URL; throws only for an invalid policy.
 * @see issue 7 "SSRF protection"
 */
export async function checkUrlAtConfigTime(
  url: string,
  policy: AddressPolicy,
  options: CheckUrlOptions | Resolver = {},
): Promise<UrlCheckResult> {
  const opts: CheckUrlOptions = typeof options === 'function' ? { resolve: options } : options;
  const compiledPolicy = compilePolicy(policy);
  const parsed = parseHttpUrl(url);
  if (!parsed.ok) return parsed;
  const resolve = opts.resolve ?? systemResolver;
  const timeoutMs = opts.timeoutMs ?? 5_000;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      resolveAndJudge(parsed.host, compiledPolicy, resolve),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new AddressPolicyError(
                'unresolvable',
                `host ${parsed.host} could not be resolved within ${timeoutMs} ms`,
              ),
            ),
          timeoutMs,
        );
      }),
    ]);
    return { ok: true };
  } catch (error) {
    if (error instanceof AddressPolicyError && error.code !== 'invalid_argument') {
      return {
        ok: false,
        code: error.code,
        reason: error.message,
        ...(error.details.address === undefined ? {} : { address: error.details.address }),
      };
    }
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

function parseHttpUrl(url: string): { ok: true; host: string } | { ok: false; code: 'invalid_url'; reason: string } {
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    return { ok: false, code: 'invalid_url', reason: 'must be an absolute http(s) URL' };
  }
  if (target.protocol !== 'http:' && target.protocol !== 'https:') {
    return {
      ok: false,
      code: 'invalid_url',
      reason: `scheme ${target.protocol.slice(0, -1)} is not allowed: use http or https`,
    };
  }
  if (target.username !== '' || target.password !== '') {
    // Credentials belong in `auth`, where they are encrypted and never shown.
    return { ok: false, code: 'invalid_url', reason: 'must not contain credentials: use auth instead' };
  }
  if (target.hostname === '') return { ok: false, code: 'invalid_url', reason: 'must name a host' };
  return { ok: true, host: normalizeHost(target.hostname) };
}

// ---------------------------------------------------------------------------------------------------------
// Connect time

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/** A `lookup` for `net.connect` / `tls.connect` / undici's `connect` options. */
export type GuardedLookup = (hostname: string, options: LookupOptions, callback: LookupCallback) => void;

/** Options of {@link createGuardedLookup}. */
export interface GuardedLookupOptions {
  /** Resolver for host names. Default: the system resolver. */
  resolve?: Resolver;
}

/**
 * A drop-in `lookup` for `net.connect` (and undici `connect: { lookup }`) that resolves the host and fails
 * with an AddressPolicyError whose `code` is `blocked_address` when ANY address is refused by `policy`, so
 * the check happens on the addresses actually connected to (DNS rebinding fails).
 *
 * Note: Node skips `lookup` when the host is an IP literal; use {@link createGuardedConnector} (which also
 * checks literals) or call {@link assertUrlAllowed} before sending.
 * @throws AddressPolicyError `invalid_argument` at creation when the policy is invalid
 */
export function createGuardedLookup(policy: AddressPolicy, options: GuardedLookupOptions = {}): GuardedLookup {
  const compiledPolicy = compilePolicy(policy);
  const resolve = options.resolve ?? systemResolver;
  return function guardedLookup(hostname, lookupOptions, callback) {
    resolveAndJudge(hostname, compiledPolicy, resolve).then(
      (addresses) => {
        const wanted = familyOf(lookupOptions.family);
        const usable = wanted === 0 ? addresses : addresses.filter((a) => a.family === wanted);
        if (lookupOptions.all) {
          callback(
            null,
            usable.map((a) => ({ address: a.address, family: a.family })),
          );
          return;
        }
        const first = usable[0];
        if (first === undefined) {
          callback(Object.assign(new Error(`no IPv${wanted} address for ${hostname}`), { code: 'ENOTFOUND' }), '');
          return;
        }
        callback(null, first.address, first.family);
      },
      (error: unknown) => {
        // `unresolvable` keeps the resolver's own errno (ENOTFOUND...) so the classifier sees a DNS failure.
        const cause = (error as { cause?: unknown }).cause;
        const err =
          error instanceof AddressPolicyError && error.code === 'unresolvable' && isErrno(cause) ? cause : error;
        callback(err as NodeJS.ErrnoException, lookupOptions.all ? [] : '');
      },
    );
  };
}

function isErrno(value: unknown): value is NodeJS.ErrnoException {
  return value instanceof Error && typeof (value as { code?: unknown }).code === 'string';
}

function familyOf(family: LookupOptions['family']): 0 | 4 | 6 {
  if (family === 4 || family === 'IPv4') return 4;
  if (family === 6 || family === 'IPv6') return 6;
  return 0;
}

/**
 * Checks, without any DNS, that a URL whose host is an IP literal is allowed (Node connects to literals
 * without calling `lookup`). Host names pass here: the guarded lookup checks them when connecting.
 * @throws AddressPolicyError `blocked_address` for a refused literal, `invalid_url` for a non-http(s) URL
 */
export function assertUrlAllowed(url: string, policy: AddressPolicy): void {
  const parsed = parseHttpUrl(url);
  if (!parsed.ok) throw new AddressPolicyError('invalid_url', `url ${parsed.reason}`);
  const literal = parseIp(parsed.host);
  if (literal === null) return;
  const verdict = judgeParsed(literal, compilePolicy(policy));
  if (!verdict.allowed) throw blocked(parsed.host, parsed.host, verdict.category);
}

/** undici's connector options (timeouts, TLS options...) without `lookup`, which the guard provides. */
export type GuardedConnectorOptions = Omit<buildConnector.BuildOptions, 'lookup'> & GuardedLookupOptions;

/**
 * An undici connector (`new Agent({ connect: createGuardedConnector(policy, { timeout }) })`) that refuses
 * blocked destinations both for host names (through the guarded lookup) and for IP literals (checked here,
 * since Node never calls `lookup` for them). A refusal reaches the request as an error with code
 * `blocked_address`.
 */
export function createGuardedConnector(
  policy: AddressPolicy,
  options: GuardedConnectorOptions = {},
): buildConnector.connector {
  const { resolve, ...buildOptions } = options;
  const compiledPolicy = compilePolicy(policy);
  const lookup = createGuardedLookup(policy, resolve ? { resolve } : {});
  const connect = buildConnector({ ...buildOptions, lookup } as buildConnector.BuildOptions);
  return function guardedConnect(connectOptions, callback) {
    const literal = parseIp(connectOptions.hostname);
    if (literal !== null) {
      const verdict = judgeParsed(literal, compiledPolicy);
      if (!verdict.allowed) {
        const host = normalizeHost(connectOptions.hostname);
        callback(blocked(host, host, verdict.category), null);
        return;
      }
    }
    connect(connectOptions, callback);
  };
}
