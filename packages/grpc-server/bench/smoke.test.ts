/**
 * The benchmark's smoke run in CI (issue 6: "a --quick mode that CI may run as a smoke test"): `bench/run.ts --quick`
 * runs every scenario against real server processes (from src/ under tsx, so no build is needed), a real receiver
 * and, for scenario 6, the test PostgreSQL cluster. Its speed targets are not asserted (CI machines are noisy, and
 * the bench is where speed is measured); what is asserted is that the bench still runs, measures every scenario
 * and writes its JSON, and the targets that are correctness, not speed (`==`: the retry storm loses no contact's
 * final list and never sends an older list after a newer one), which hold on any machine.
 *
 * Run by `vitest.bench.config.ts` (nx target `test:bench-smoke`, after the package's tests: the bench fills both
 * cores, and run beside the other test files it would slow their servers).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { TEST_PG_URL_VARIABLE } from '../src/store/postgres/test-db.js';

const PACKAGE_DIR = fileURLToPath(new URL('..', import.meta.url));

interface BenchJson {
  options: { quick: boolean; only: number[] };
  scenarios: Array<{
    id: string;
    figures: Array<{ name: string; value: number; target?: { op: string; value: number }; verdict: string }>;
    notes: string[];
  }>;
}

describe('npm run bench -- --quick', () => {
  const out = mkdtempSync(join(tmpdir(), 'app-inbox-bench-smoke-'));
  let running: ChildProcess | undefined;
  afterAll(() => {
    if (running !== undefined && running.exitCode === null && running.signalCode === null) {
      try {
        process.kill(-running.pid!, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    rmSync(out, { recursive: true, force: true });
  });

  it('runs every scenario and writes their figures; the correctness targets hold', { timeout: 600_000 }, async () => {
    const pgUrl = process.env[TEST_PG_URL_VARIABLE];
    expect(pgUrl, `${TEST_PG_URL_VARIABLE} (scenario 6 needs PostgreSQL)`).toBeTruthy();
    const args = [
      '--expose-gc',
      '--conditions=@app-inbox/source',
      '--import',
      'tsx',
      'bench/run.ts',
      '--quick',
      '--server-source',
      '--no-markdown',
      '--settle',
      '0',
      '--pg',
      pgUrl!,
      '--out',
      out,
    ];
    // Its own process group (the bench, its servers, its receiver), killed whole if the test ends first (a timeout):
    // nothing is left running.
    const child = spawn(process.execPath, args, {
      cwd: PACKAGE_DIR,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NODE_OPTIONS: '' },
      detached: true,
    });
    running = child;
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const [code] = (await once(child, 'exit')) as [number | null];
    expect({ code, tail: code === 0 ? '' : output.slice(-4000) }).toEqual({ code: 0, tail: '' });

    const files = readdirSync(out).filter((f) => f.endsWith('.json'));
    expect(files).toHaveLength(1);
    const json = JSON.parse(readFileSync(join(out, files[0]!), 'utf8')) as BenchJson;
    expect(json.options).toMatchObject({ quick: true, only: [1, 2, 3, 4, 5, 6] });
    expect(json.scenarios.map((s) => s.id)).toEqual(['1', '2', '3', '4', '5', '6']);
    for (const scenario of json.scenarios) {
      // Every scenario measured something, and every figure is a number (a failed measurement shows as NaN or null).
      expect({ id: scenario.id, figures: scenario.figures.length > 0 }).toEqual({ id: scenario.id, figures: true });
      for (const figure of scenario.figures) {
        expect({
          id: scenario.id,
          name: figure.name,
          finite: Number.isFinite(figure.value) && figure.value >= 0,
        }).toEqual({ id: scenario.id, name: figure.name, finite: true });
      }
    }
    // Scenario 6 ran with one and with two server processes (not skipped for want of a database).
    const postgres = json.scenarios.find((s) => s.id === '6')!.figures.map((f) => f.name);
    expect(postgres).toEqual(
      expect.arrayContaining(['1 proc.: messages/s committed', '2 proc.: messages/s committed']),
    );
    // Equality targets are guarantees, not speed: they hold in any run.
    const exact = json.scenarios.flatMap((s) =>
      s.figures.filter((f) => f.target?.op === '==').map((f) => ({ id: s.id, name: f.name, value: f.value })),
    );
    expect(exact.map((f) => f.name)).toEqual(['contacts without their final list', 'older list after a newer one']);
    expect(exact).toEqual(exact.map((f) => ({ ...f, value: 0 })));
  });
});
