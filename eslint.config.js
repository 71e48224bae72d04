// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/dist/**', '**/coverage/**', '**/node_modules/**', '**/src/gen/**', '.nx/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-console': 'off',
    },
  },
  {
    // The core is pure: no I/O, no transport libraries (CONVENTIONS §1).
    files: ['packages/core/src/**/*.ts'],
    ignores: ['packages/core/src/**/*.test.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['node:*', 'fs', 'net', 'http', 'https', 'crypto', 'dns', 'tls', 'child_process'],
              message: 'core is pure: no node I/O modules.',
            },
            {
              group: [
                'undici',
                '@grpc/*',
                'express',
                'better-sqlite3',
                'pg',
                'pino',
                '@app-inbox/grpc-server',
                '@app-inbox/mock-receiver',
              ],
              message: 'core must not depend on I/O or transport libraries.',
            },
          ],
        },
      ],
    },
  },
);
