/**
 * Connect-time guard against server-side request forgery: refuses loopback, private, link-local,
 * CGNAT, multicast/reserved and cloud-metadata addresses unless the host is explicitly allowed.
 * Checked on the resolved address at connect time, so DNS rebinding cannot slip past a check made
 * when the webhook was configured. Off by default until issue 7 wires it into the configuration.
 */
import { BlockList, isIP } from 'node:net';
import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions, type LookupOneOptions } from 'node:dns';
import { BLOCKED_ADDRESS_CODE } from '@app-inbox/core';

/** The error raised when a connection to a blocked address is refused. */
export class BlockedAddressError extends Error {
  readonly code = BLOCKED_ADDRESS_CODE;
  constructor(
    readonly host: string,
    readonly address: string,
  ) {
    super(`connection to ${host} (${address}) refused: the address is not public`);
    this.name = 'BlockedAddressError';
  }
}

const blocked = new BlockList();
// IPv4: "this" network, RFC 1918, CGNAT, loopback, link-local (incl. 169.254.169.254 metadata), IETF protocol
// assignments, TEST-NETs, benchmarking, multicast, reserved and broadcast.
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  blocked.addSubnet(net, prefix, 'ipv4');
}
// IPv6: unspecified, loopback, NAT64, unique local (incl. fd00:ec2::254 metadata), link-local, site-local, multicast.
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  ['64:ff9b::', 96],
  ['100::', 64],
  ['2001:db8::', 32],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  blocked.addSubnet(net, prefix, 'ipv6');
}

/** True when `address` (an IP literal) is loopback, private, link-local, CGNAT, metadata or reserved. */
export function isNonPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return blocked.check(address, 'ipv4');
  if (family === 6) {
    const lower = address.toLowerCase();
    // IPv4-mapped IPv6 (::ffff:a.b.c.d): judge the embedded IPv4 address.
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
    if (mapped?.[1]) return blocked.check(mapped[1], 'ipv4');
    return blocked.check(lower, 'ipv6');
  }
  return false;
}

/** Hostname of a URL without IPv6 brackets, lower-cased. */
export function bareHostname(hostname: string): string {
  return hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/**
 * A `dns.lookup` replacement for `net.connect` that fails with {@link BlockedAddressError} when the name
 * resolves to a non-public address and the host is not in `allowedHosts`.
 */
export function guardedLookup(allowedHosts: ReadonlySet<string>) {
  return function lookup(
    hostname: string,
    options: LookupOneOptions | LookupAllOptions,
    callback: LookupCallback,
  ): void {
    const allowed = allowedHosts.has(hostname.toLowerCase());
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) {
        callback(err, []);
        return;
      }
      if (!allowed) {
        const bad = addresses.find((a) => isNonPublicAddress(a.address));
        if (bad) {
          callback(new BlockedAddressError(hostname, bad.address) as unknown as NodeJS.ErrnoException, []);
          return;
        }
      }
      if (options.all) {
        callback(null, addresses);
        return;
      }
      const first = addresses[0];
      if (!first) {
        const none = Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' });
        callback(none, []);
        return;
      }
      callback(null, first.address, first.family);
    });
  };
}
