/**
 * @app-inbox/mock-receiver — the customer's side of the webhook contract, for contract tests and QA:
 * an Express app that checks requests like a careful receiver, answers as scripted, and records all.
 * @see SPEC §4, §5, §6
 */
export { createMockReceiver } from './server.js';
export type { MockReceiver } from './server.js';

export { createMockReceiverApp } from './app.js';
export type { MockReceiverApp, ReceiverControl, ReceiverRecords } from './app.js';

export { DEFAULTS, MAX_SIGNING_SECRETS } from './options.js';
export type { MockReceiverAppOptions, MockReceiverOptions } from './options.js';

export {
  ANSWER_ACTIONS,
  MAX_COUNTER_KEYS,
  MAX_RULES,
  MAX_RULE_DELAY_MS,
  RULE_COUNTERS,
  SCENARIO_DESCRIPTIONS,
  SCENARIO_NAMES,
  isScenarioName,
  parseControlInput,
  parseRule,
  parseRules,
  scenarioRules,
} from './rules.js';
export type {
  AnswerAction,
  ChosenAnswer,
  ControlInput,
  ControlState,
  PresetSettings,
  RequestFacts,
  Rule,
  RuleAnswer,
  RuleCounter,
  RuleInput,
  RuleState,
  ScenarioName,
} from './rules.js';

export { MAX_TRACKED_DELIVERIES, OUTCOMES, summarize } from './recorder.js';
export type {
  AcceptedList,
  DuplicateDelivery,
  DuplicateReport,
  Outcome,
  ReceivedRequest,
  ReceivedSummary,
  ReceiverStats,
  RecordFilter,
  RecordedAnswer,
  RecorderEvent,
  RecorderLimits,
} from './recorder.js';

export {
  BODY_FIELD,
  CONTRACT_BRANCHES,
  checkBody,
  contactsOf,
  decide,
  mediaTypeProblem,
  parseBody,
} from './contract.js';
export type {
  BodyCheck,
  ContractAnswer,
  ContractBranch,
  ContractRequest,
  ContractSettings,
  ParsedBody,
} from './contract.js';

export { REDACTED, REDACTED_HEADERS } from './auth.js';

export { SIGNATURE_HEADERS, SIGNATURE_RESULTS } from './signature.js';
export type { SignatureCheck, SignatureResult } from './signature.js';

export { MOCK_RECEIVER_ERROR_CODES, MockReceiverError } from './errors.js';
export type { MockReceiverErrorCode } from './errors.js';
