/**
 * The packages' `bin` files must be executable once built: `npm exec -w @app-inbox/grpc-server -- app-inbox`
 * (README) runs the file itself, and on a fresh clone npm linked the bins at `npm ci`, before `dist/` existed,
 * so nothing but the build can set the mode (tsc writes 0644).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const SCRIPT = join(ROOT, 'scripts', 'mark-bins-executable.mjs');
const PACKAGES_WITH_BINS = ['grpc-server', 'mock-receiver'];

describe('built bins are executable', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it.each(PACKAGES_WITH_BINS)('the build of %s marks its bins executable after tsc', (name) => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'packages', name, 'package.json'), 'utf8')) as {
      bin: Record<string, string>;
      scripts: Record<string, string>;
    };
    expect(Object.keys(pkg.bin).length).toBeGreaterThan(0);
    expect(pkg.scripts['build']).toMatch(
      /^tsc -p tsconfig\.build\.json && node \.\.\/\.\.\/scripts\/mark-bins-executable\.mjs$/,
    );
  });

  it('mark-bins-executable sets mode 0755 on every bin of the package in the working directory', () => {
    dir = mkdtempSync(join(tmpdir(), 'bins-'));
    mkdirSync(join(dir, 'dist', 'cli'), { recursive: true });
    writeFileSync(
      join(dir, 'package.json'),
      JSON.stringify({ bin: { server: './dist/main.js', client: './dist/cli/main.js' } }),
    );
    for (const file of ['dist/main.js', 'dist/cli/main.js', 'dist/other.js']) {
      writeFileSync(join(dir, file), '#!/usr/bin/env node\n', { mode: 0o644 });
    }
    execFileSync(process.execPath, [SCRIPT], { cwd: dir });
    expect(statSync(join(dir, 'dist/main.js')).mode & 0o777).toBe(0o755);
    expect(statSync(join(dir, 'dist/cli/main.js')).mode & 0o777).toBe(0o755);
    expect(statSync(join(dir, 'dist/other.js')).mode & 0o777).toBe(0o644);
  });
});
