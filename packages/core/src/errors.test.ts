import { describe, expect, it } from 'vitest';
import { CORE_ERROR_CODES, CoreError, isCoreError } from './errors.js';

describe('CoreError', () => {
  it('carries a code, its violations and its cause', () => {
    const cause = new Error('inner');
    const error = new CoreError('invalid_argument', 'bad input', {
      cause,
      violations: [{ field: 'url', description: 'is required' }],
    });
    expect(error).toBeInstanceOf(Error);
    expect(error).toMatchObject({ name: 'CoreError', code: 'invalid_argument', message: 'bad input', cause });
    expect(error.violations).toEqual([{ field: 'url', description: 'is required' }]);
    expect(CORE_ERROR_CODES).toContain(error.code);
  });

  it('has no cause and no violations unless given', () => {
    const error = new CoreError('invalid_argument', 'x');
    expect('cause' in error).toBe(false);
    expect(error.violations).toEqual([]);
  });

  it('is recognised by isCoreError, optionally by code', () => {
    const error = new CoreError('invalid_argument', 'x');
    expect(isCoreError(error)).toBe(true);
    expect(isCoreError(error, 'invalid_argument')).toBe(true);
    expect(isCoreError(new Error('x'))).toBe(false);
    expect(isCoreError({ code: 'invalid_argument' })).toBe(false);
  });
});
