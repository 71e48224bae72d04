import { fileURLToPath } from 'node:url';
import { defineConfig, type ViteUserConfig } from 'vitest/config';

const root = fileURLToPath(new URL('.', import.meta.url));

/**
 * One vitest configuration for every package: sources of sibling packages are
 * resolved through the `@app-inbox/source` export condition (no build needed
 * before a test), and each run writes a JSON report to `packages/<name>/.reports/<report>.json`
 * (`vitest.json`; a second configuration of a package, `vitest.<kind>.config.ts`, names its own
 * `vitest.<kind>`) that `.ci/run` sums into its one-line summary.
 */
export function defineProjectConfig(
  name: string,
  extra: ViteUserConfig['test'] = {},
  report = 'vitest',
): ViteUserConfig {
  return defineConfig({
    resolve: { conditions: ['@app-inbox/source', 'module', 'node', 'development|production'] },
    // vitest passes `ssr.resolve.conditions` to Node as `--conditions`; with `import` among them, Node's own
    // `require()` of a CommonJS dependency (express -> router -> is-promise) picks the ESM build and express
    // fails on every async route. Vite adds `import`/`require` by itself, so they are left out here.
    ssr: { resolve: { conditions: ['@app-inbox/source', 'node', 'development|production'] } },
    test: {
      include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
      reporters: ['default', 'json'],
      outputFile: { json: `${root}packages/${name}/.reports/${report}.json` },
      testTimeout: 30_000,
      hookTimeout: 30_000,
      ...extra,
    },
  });
}
