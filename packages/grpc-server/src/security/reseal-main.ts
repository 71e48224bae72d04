#!/usr/bin/env node
/**
 * Key rotation, step 3 (SECURITY.md "Key rotation"): re-seals every webhook secret that is not sealed with
 * the primary key. Takes the server's own options (`--store`, `--secret-key-file`, APP_INBOX_SECRET_KEYS...)
 * so it opens exactly what the server opens:
 *
 *   APP_INBOX_SECRET_KEYS="k2:NEW,k1:OLD" npm run secrets:reseal -w @app-inbox/grpc-server -- --store PATH_OR_URL
 *
 * Prints one JSON line `{ checked, resealed, failed }` (account ids only, never a secret); exits 0 when every
 * webhook is sealed with the primary key, 1 when some could not be opened, 2 on a configuration error.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError, HelpShown, loadConfig } from '../config.js';
import { prepareStoreLocation } from '../server.js';
import { openStore, sqlitePath } from '../store/index.js';
import { hideCredentialsInProcessTitle } from './redact.js';
import { resealAllWebhookSecrets } from './sealed-store.js';
import { SecretBoxError } from './secrets.js';
import { secretBoxForStore } from './setup.js';

async function main(): Promise<number> {
  hideCredentialsInProcessTitle();
  let config;
  try {
    config = loadConfig(process.argv.slice(2), process.env);
  } catch (error) {
    if (error instanceof HelpShown) return error.exitCode;
    if (error instanceof ConfigError) {
      process.stderr.write(`reseal-secrets: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  // A SQLite store must exist: opening a mistyped or relative path (npm -w runs in packages/grpc-server) created an
  // empty database, and the report of nothing, `{"checked":0,...}` with exit 0, read as a finished step 3 of the
  // rotation, after which removing the old key locks the real database's secrets out.
  const path = sqlitePath(config.store);
  if (path !== null && !existsSync(path)) {
    process.stderr.write(
      `reseal-secrets: --store ${resolve(path)}: no such database (the reseal command opens an existing one; a relative path is taken from ${process.cwd()})\n`,
    );
    return 2;
  }
  let box;
  try {
    ({ box } = secretBoxForStore({
      store: config.store,
      secretKeys: config.secretKeys,
      secretKeyFile: config.secretKeyFile,
      createKeyFile: false,
      onWarning: (message) => process.stderr.write(`reseal-secrets: ${message}\n`),
    }));
  } catch (error) {
    if (error instanceof SecretBoxError) {
      process.stderr.write(`reseal-secrets: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  const store = await openStore(prepareStoreLocation(config.store));
  try {
    const report = await resealAllWebhookSecrets(store, box);
    process.stdout.write(`${JSON.stringify({ primaryKeyId: box.primaryKeyId, ...report })}\n`);
    return report.failed.length === 0 ? 0 : 1;
  } finally {
    await store.close();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`reseal-secrets: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
