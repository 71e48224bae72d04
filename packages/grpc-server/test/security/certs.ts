/**
 * Test certificates made by openssl in a temporary directory: a CA, a server certificate for `localhost`,
 * a client certificate from the same CA (mutual TLS), and a client certificate from another CA (refused).
 * Keys are P-256 (fast to generate), valid for one day. Used by the security unit and end-to-end tests.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCerts {
  dir: string;
  /** Path of a file in the directory, e.g. `file('ca.crt')`. */
  file(name: string): string;
  /** Removes the directory. */
  remove(): void;
}

const EC = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';

/**
 * Writes `ca.crt/key`, `rogue-ca.crt/key`, `server.crt/key` (SAN DNS:localhost, serverAuth),
 * `client.crt/key` (from `ca`, clientAuth) and `rogue-client.crt/key` (from `rogue-ca`), plus the `*.ext`
 * extension files (`client.ext` is a handy non-PEM file).
 */
export function makeTestCerts(prefix = 'grpc-tls-'): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const file = (name: string) => join(dir, name);
  /** `command` is split on spaces (no argument here contains one). */
  const openssl = (command: string) => execFileSync('openssl', command.split(' '), { cwd: dir, stdio: 'pipe' });
  const makeCa = (name: string) =>
    openssl(
      `req -x509 ${EC} -days 1 -subj /CN=${name} -keyout ${name}.key -out ${name}.crt ` +
        '-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign',
    );
  let serial = Date.now();
  const makeLeaf = (name: string, ca: string, extensions: string) => {
    writeFileSync(file(`${name}.ext`), extensions);
    openssl(`req ${EC} -subj /CN=${name} -keyout ${name}.key -out ${name}.csr`);
    serial += 1;
    openssl(
      `x509 -req -in ${name}.csr -CA ${ca}.crt -CAkey ${ca}.key -set_serial ${serial} -days 1 ` +
        `-extfile ${name}.ext -out ${name}.crt`,
    );
  };
  try {
    makeCa('ca');
    makeCa('rogue-ca');
    makeLeaf('server', 'ca', 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n');
    makeLeaf('client', 'ca', 'extendedKeyUsage=clientAuth\n');
    makeLeaf('rogue-client', 'rogue-ca', 'extendedKeyUsage=clientAuth\n');
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return { dir, file, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
