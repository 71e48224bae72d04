/**
 * Secrets at rest for any Store engine: a wrapper that seals the webhook's Basic auth password, signing
 * secret and own header values before they are written, and opens them after they are read, so neither engine ever
 * stores a plaintext secret and neither needs to know about encryption. @see issue 7 "Secrets at rest"
 */
import type { WebhookConfig } from '@app-inbox/core';
import { StoreError } from '../store/errors.js';
import type { ClaimedDelivery, SigningRotation, Store, WebhookRecord } from '../store/types.js';
import type { SecretBox } from './secrets.js';

/**
 * The fields of a webhook configuration that are secrets (a rotation's replaced signing secret too, and the values of
 * the webhook's own headers: an API key, a bearer token; their names are not secret, a read shows them).
 */
type WithSecrets = Pick<WebhookConfig, 'auth' | 'signingSecret' | 'headers'> &
  Pick<SigningRotation, 'previousSigningSecret'>;

/**
 * A copy of `config` with its password, signing secrets and header values sealed with the primary key. Always seals,
 * even a value that looks sealed: what a caller configures is plaintext, whatever it looks like.
 */
export function sealWebhookSecrets<T extends WithSecrets>(config: T, box: SecretBox): T {
  return mapSecrets(config, (value) => box.seal(value));
}

/**
 * A copy of `config` with its password, signing secrets and header values opened. A value that is not sealed
 * (written before encryption at rest was turned on) is returned as it is; {@link resealWebhookSecrets} encrypts it.
 * @throws SecretBoxError when a sealed value cannot be opened (unknown key, altered value)
 */
export function openWebhookSecrets<T extends WithSecrets>(config: T, box: SecretBox): T {
  return mapSecrets(config, (value) => (box.isSealed(value) ? box.open(value) : value));
}

/** True when a stored (sealed) configuration has a secret that is not sealed with the primary key. */
export function webhookNeedsRotation(config: WithSecrets, box: SecretBox): boolean {
  return someSecret(config, (value) => box.needsRotation(value));
}

/** True when a stored configuration has a password, signing secret or header value not sealed at all (plaintext). */
export function webhookHasPlaintextSecret(config: WithSecrets, box: SecretBox): boolean {
  return someSecret(config, (value) => !box.isSealed(value));
}

/** Whether `test` holds for any of the configuration's secrets. */
function someSecret(config: WithSecrets, test: (value: string) => boolean): boolean {
  let found = false;
  mapSecrets(config, (value) => {
    found ||= test(value);
    return value;
  });
  return found;
}

function mapSecrets<T extends WithSecrets>(config: T, fn: (value: string) => string): T {
  const out: T = { ...config };
  if (config.auth !== undefined) out.auth = { ...config.auth, password: fn(config.auth.password) };
  if (config.signingSecret !== undefined) out.signingSecret = fn(config.signingSecret);
  if (config.previousSigningSecret !== undefined) out.previousSigningSecret = fn(config.previousSigningSecret);
  if (config.headers !== undefined) {
    out.headers = Object.fromEntries(Object.entries(config.headers).map(([name, value]) => [name, fn(value)]));
  }
  return out;
}

export interface SealedStoreOptions {
  /**
   * Told when a claimed delivery's webhook secret cannot be opened (key removed too early, altered row).
   * That delivery is released (due again after `retryDelayMs`) instead of failing the whole claim, so one
   * broken account never stops the others, and nothing is dropped. Default: nothing is told.
   */
  onSecretError?: (accountId: string, error: unknown) => void;
  /** When a delivery released for an unreadable secret is due again (milliseconds). Default 60,000. */
  retryDelayMs?: number;
}

/**
 * Wraps a store so that `upsertWebhook`, `createWebhookIfAbsent` and `replaceWebhookIfUnchanged` seal, and they,
 * `getWebhook` and `claimDue`
 * open, the webhook's secrets (`getWebhook` leaves one it cannot open sealed); every other method is the store's own.
 * Callers keep seeing plaintext; the database only sees `enc:v1:...`. A method added to Store later that returns a
 * WebhookRecord must be added here.
 */
export function withSealedSecrets<S extends Store>(store: S, box: SecretBox, options: SealedStoreOptions = {}): S {
  const retryDelayMs = options.retryDelayMs ?? 60_000;
  const overrides: Pick<
    Store,
    'upsertWebhook' | 'createWebhookIfAbsent' | 'replaceWebhookIfUnchanged' | 'getWebhook' | 'claimDue'
  > = {
    async upsertWebhook(accountId, config, now) {
      return openWebhookSecrets(await store.upsertWebhook(accountId, sealWebhookSecrets(config, box), now), box);
    },
    async createWebhookIfAbsent(accountId, config, now) {
      const record = await store.createWebhookIfAbsent(accountId, sealWebhookSecrets(config, box), now);
      return record === null ? null : openWebhookSecrets(record, box);
    },
    async replaceWebhookIfUnchanged(accountId, config, now, ifUpdatedAt) {
      const record = await store.replaceWebhookIfUnchanged(
        accountId,
        sealWebhookSecrets(config, box),
        now,
        ifUpdatedAt,
      );
      return record === null ? null : openWebhookSecrets(record, box);
    },
    async getWebhook(accountId) {
      const record = await store.getWebhook(accountId);
      if (record === null) return null;
      try {
        return openWebhookSecrets(record, box);
      } catch (error) {
        // Its key is lost or was removed too early. The account must stay manageable: the read RPCs show only
        // whether a secret is set, publishing needs none, and a re-save (the documented recovery) replaces it.
        // What is returned keeps that secret sealed (`enc:v1:…`, never usable as a password) and says so, so that
        // UpdateWebhook does not keep it; claims, the one path that sends, refuse it (below).
        options.onSecretError?.(accountId, error);
        return { ...record, secretsSealed: true };
      }
    },
    async claimDue(claim) {
      const claimed = await store.claimDue(claim);
      const opened: ClaimedDelivery[] = [];
      for (const c of claimed) {
        let webhook: WebhookRecord;
        try {
          webhook = openWebhookSecrets(c.webhook, box);
        } catch (error) {
          options.onSecretError?.(c.webhook.accountId, error);
          await store.release(c.delivery.id, claim.owner, claim.now + retryDelayMs);
          continue;
        }
        opened.push({ ...c, webhook });
      }
      return opened;
    },
  };
  return new Proxy(store, {
    get(target, property) {
      if (Object.hasOwn(overrides, property)) return overrides[property as keyof typeof overrides];
      // Bound to the real store: engines keep state in private (#) fields a proxy receiver cannot reach.
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/** Reads of a webhook saved again each time between a re-seal's read and its write before the re-seal gives up. */
const RESEAL_TRIES = 10;

/**
 * Re-encrypts one account's secrets with the primary key when they are sealed with an older key or not
 * sealed at all (rotation step 3). Takes the RAW store (not the wrapper), so it sees what is stored.
 * Returns true when the webhook was rewritten. Its `updatedAt` stays as it was: a rotation is not a save of the
 * webhook, and a save (a new `updatedAt`) lifts a 410 pause of its endpoint and gives back claims that waited for it.
 *
 * The write goes through only while the webhook is still the save it read: an UpsertWebhook or DeleteWebhook
 * answered OK in between stands (the save is read again; a server seals with the primary key too).
 * @throws StoreError `conflict` when the webhook was saved again between every read and write of {@link RESEAL_TRIES}
 */
export async function resealWebhookSecrets(rawStore: Store, box: SecretBox, accountId: string): Promise<boolean> {
  for (let tries = 0; tries < RESEAL_TRIES; tries++) {
    const stored = await rawStore.getWebhook(accountId);
    if (stored === null || !webhookNeedsRotation(stored, box)) return false;
    // Everything but the record's own bookkeeping goes back in, so settings added to WebhookConfig later survive.
    const { accountId: _id, createdAt: _created, updatedAt, ...config } = stored;
    const sealed = sealWebhookSecrets(openWebhookSecrets(config, box), box);
    if ((await rawStore.replaceWebhookIfUnchanged(accountId, sealed, updatedAt, updatedAt)) !== null) return true;
  }
  throw new StoreError('conflict', `the webhook of ${accountId} was saved again during each of ${RESEAL_TRIES} tries`);
}

/** What {@link resealAllWebhookSecrets} did. */
export interface ResealReport {
  /** Webhooks looked at. */
  checked: number;
  /** Webhooks rewritten with the primary key. */
  resealed: number;
  /** Webhooks whose secrets could not be opened (their key is not loaded, or the value was altered). */
  failed: Array<{ accountId: string; code: string }>;
}

/**
 * Rotation step 3 for every account: re-seals each webhook whose secrets are not sealed with the primary
 * key (older key, or plaintext from before encryption at rest), page by page over `listWebhookAccounts`.
 * Takes the RAW store. A webhook that cannot be opened is reported, not fatal, so one broken row does not
 * stop the others; keep its old key loaded until it is fixed or deleted.
 *
 * Safe while servers serve: see {@link resealWebhookSecrets} (SECURITY.md "Key rotation").
 */
export async function resealAllWebhookSecrets(
  rawStore: Store,
  box: SecretBox,
  options: { pageSize?: number } = {},
): Promise<ResealReport> {
  const report: ResealReport = { checked: 0, resealed: 0, failed: [] };
  for await (const accountId of webhookAccounts(rawStore, options.pageSize ?? 500)) {
    report.checked += 1;
    try {
      if (await resealWebhookSecrets(rawStore, box, accountId)) report.resealed += 1;
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      report.failed.push({ accountId, code: typeof code === 'string' ? code : 'error' });
    }
  }
  return report;
}

/** Every account with a webhook, in order, read page by page over `listWebhookAccounts` (the RAW store). */
async function* webhookAccounts(rawStore: Store, pageSize: number): AsyncGenerator<string> {
  let after: string | null = null;
  for (;;) {
    const page = await rawStore.listWebhookAccounts(after, pageSize);
    yield* page;
    if (page.length < pageSize) return;
    after = page[page.length - 1] ?? null;
  }
}

/** What {@link countPlaintextWebhookSecrets} found. */
export interface PlaintextSecretsReport {
  /** Webhooks looked at. */
  checked: number;
  /** Webhooks with a password, signing secret or header value stored in plaintext. */
  plaintext: number;
}

/**
 * Counts the webhooks whose password, signing secret or header value is stored in plaintext (saved by a build before
 * encryption at rest; the reseal command or a re-save seals them), finding them as {@link resealAllWebhookSecrets}
 * does: page by page over `listWebhookAccounts`, one read each. Takes the RAW store; reads only. Returns null when
 * `stopped()` turned true before the last webhook was read (the count would be short).
 */
export async function countPlaintextWebhookSecrets(
  rawStore: Store,
  box: SecretBox,
  options: { pageSize?: number; stopped?: () => boolean } = {},
): Promise<PlaintextSecretsReport | null> {
  const stopped = options.stopped ?? (() => false);
  const report: PlaintextSecretsReport = { checked: 0, plaintext: 0 };
  if (stopped()) return null;
  for await (const accountId of webhookAccounts(rawStore, options.pageSize ?? 500)) {
    if (stopped()) return null;
    const stored = await rawStore.getWebhook(accountId);
    if (stored === null) continue; // deleted since the page was read
    report.checked += 1;
    if (webhookHasPlaintextSecret(stored, box)) report.plaintext += 1;
  }
  return report;
}
