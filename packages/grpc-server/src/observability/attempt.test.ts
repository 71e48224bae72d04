import { describe, expect, it } from 'vitest';
import { endpointHost, statusClass } from './attempt.js';

describe('endpointHost', () => {
  it('keeps host and non-default port only, lower case', () => {
    expect(endpointHost('https://u:p@Hooks.Example.COM:8443/a/b?token=x#f')).toBe('hooks.example.com:8443');
    expect(endpointHost('https://hooks.example.com:443/a')).toBe('hooks.example.com');
    expect(endpointHost('http://[::1]:3000/')).toBe('[::1]:3000');
  });

  it('never echoes a value that is not a URL', () => {
    expect(endpointHost('token=abc not a url')).toBe('invalid-url');
    expect(endpointHost('')).toBe('invalid-url');
  });
});

describe('statusClass', () => {
  it('maps statuses to their hundreds and no answer to error', () => {
    expect([101, 200, 299, 302, 400, 429, 500, 599].map(statusClass)).toEqual([
      '1xx',
      '2xx',
      '2xx',
      '3xx',
      '4xx',
      '4xx',
      '5xx',
      '5xx',
    ]);
    expect([null, 99, 600, 200.5].map(statusClass)).toEqual(['error', 'error', 'error', 'error']);
  });
});
