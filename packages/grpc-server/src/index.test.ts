import { describe, expect, it } from 'vitest';
import { VERSION } from '@app-inbox/core';
describe('workspace', () => { it('resolves core from source', () => { expect(VERSION).toBe('0.1.0'); }); });
