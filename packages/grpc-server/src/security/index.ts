/** Security of the server (issue 7): SSRF guard, secrets at rest, access to the gRPC API. */
export {
  ADDRESS_RANGES,
  AddressPolicyError,
  CATEGORIES_ALLOWED_BY_ALLOW_PRIVATE,
  DEFAULT_ADDRESS_POLICY,
  assertUrlAllowed,
  checkUrlAtConfigTime,
  classifyAddress,
  createGuardedConnector,
  createGuardedLookup,
  judgeAddress,
  normalizeHost,
  systemResolver,
  validateAddressPolicy,
} from './ssrf.js';
export type {
  AddressCategory,
  AddressPolicy,
  AddressPolicyErrorCode,
  AddressVerdict,
  CheckUrlOptions,
  GuardedConnectorOptions,
  GuardedLookup,
  GuardedLookupOptions,
  ResolvedAddress,
  Resolver,
  UrlCheckResult,
} from './ssrf.js';

export {
  SECRET_ERROR_CODES,
  SecretBoxError,
  createSecretBox,
  generateKeyLine,
  loadSecretBoxFromEnv,
  parseKeyList,
} from './secrets.js';
export type {
  LoadSecretBoxOptions,
  SecretBox,
  SecretBoxOptions,
  SecretErrorCode,
  SecretKey,
  SecretKeySource,
} from './secrets.js';

export {
  countPlaintextWebhookSecrets,
  openWebhookSecrets,
  resealAllWebhookSecrets,
  resealWebhookSecrets,
  sealWebhookSecrets,
  webhookHasPlaintextSecret,
  webhookNeedsRotation,
  withSealedSecrets,
} from './sealed-store.js';
export type { PlaintextSecretsReport, ResealReport, SealedStoreOptions } from './sealed-store.js';

export { DEFAULT_KEY_FILE_NAME, grpcTokens, secretBoxForStore } from './setup.js';
export type { SecretBoxOrigin, SecretBoxSetup } from './setup.js';

export {
  DEFAULT_OPEN_METHOD_PREFIXES,
  GrpcAuthConfigError,
  MIN_TOKEN_LENGTH,
  clientCredentials,
  createAuthInterceptor,
  createTokenAuthenticator,
  serverCredentials,
  withAuth,
} from './grpc-auth.js';
export type {
  AuthInterceptorOptions,
  Authenticator,
  ClientAccess,
  ClientAccessOptions,
  ServerTlsOptions,
} from './grpc-auth.js';
