import { describe, expect, it } from 'vitest';
import * as api from './index.js';

describe('@app-inbox/mock-receiver public API', () => {
  it('exports the library entry points', () => {
    for (const name of [
      'createMockReceiver',
      'createMockReceiverApp',
      'parseRules',
      'scenarioRules',
      'SCENARIO_NAMES',
      'summarize',
      'MockReceiverError',
      'checkBody',
      'decide',
      'SIGNATURE_RESULTS',
      'SIGNATURE_HEADERS',
    ]) {
      expect(api, name).toHaveProperty(name);
    }
  });

  it('keeps the internals in', () => {
    for (const name of [
      'Recorder',
      'RuleBook',
      'buildReply',
      'checkCredentials',
      'resolveAppOptions',
      'verifySignature',
      'signingSecretKey',
    ]) {
      expect(api, name).not.toHaveProperty(name);
    }
  });

  it('createMockReceiverApp returns an Express app with records and control, and validates options', () => {
    const { app, records, control, shutdown } = api.createMockReceiverApp({ scenario: 'flaky' });
    expect(typeof app).toBe('function');
    expect(records.list()).toEqual([]);
    expect(control.state().scenario).toBe('flaky');
    shutdown();
    shutdown();
    expect(() => api.createMockReceiverApp({ recordLimit: -5 })).toThrow(api.MockReceiverError);
  });
});
