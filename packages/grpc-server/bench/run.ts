/**
 * `npm run bench [-- --quick] [-- --profile] [-- --only 1,2] [-- --pg URL]`: the performance benchmark of
 * issue 6. The server runs as a separate process from the built dist/, the receiver as another (bare
 * node:http), the bench drives both. It prints a table, writes the figures as JSON to
 * `bench-results/<date>.json` (repository root) and the latest table to `bench/RESULTS.md`. Targets are
 * shown beside the measured values (PASS/MISS) and never asserted: the exit code says only whether the
 * bench itself ran.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { BenchContext, verdict, type BenchOptions, type Figure, type ScenarioResult } from './lib/context.js';
import { formatProfile } from './lib/profile.js';
import { Receiver } from './lib/receiver.js';
import { PACKAGE_DIR, serverFlags } from './lib/server-process.js';
import { fmt, mib } from './lib/stats.js';
import { runBacklog } from './scenarios/backlog.js';
import { runEndToEnd } from './scenarios/end-to-end.js';
import { runIngest } from './scenarios/ingest.js';
import { runLargeLists } from './scenarios/large-lists.js';
import { runPostgres } from './scenarios/postgres.js';
import { runRetryStorm } from './scenarios/retry-storm.js';

const ROOT = join(PACKAGE_DIR, '..', '..');
const SCENARIOS: Record<number, (ctx: BenchContext) => Promise<ScenarioResult>> = {
  1: runIngest,
  2: runEndToEnd,
  3: runBacklog,
  4: runRetryStorm,
  5: runLargeLists,
  6: runPostgres,
};

function parseOnly(value: string): Set<number> {
  const numbers = value.split(',').map((s) => Number(s.trim()));
  if (numbers.some((n) => !(n in SCENARIOS))) throw new InvalidArgumentError('must be scenario numbers 1-6, e.g. 1,2');
  return new Set(numbers);
}

/** A parser of an integer option from `min` to `max`. */
function integerFrom(min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(
        `must be an integer from ${min.toLocaleString('en-US')} to ${max.toLocaleString('en-US')}`,
      );
    }
    return n;
  };
}

function parseArgs(): BenchOptions & { skipBuild: boolean; settleSeconds: number; out: string; markdown: boolean } {
  const program = new Command('bench')
    .description('Benchmark of the App Inbox webhook server (issue 6). Targets are reported, never asserted.')
    .option('--quick', 'smaller sizes: a smoke run of a few minutes', false)
    .option('--only <list>', 'scenarios to run, e.g. 1,2 (default: all)', parseOnly)
    .option('--profile', 'run each server with --cpu-prof; summarise the top self-time functions', false)
    .option('--pg <url>', 'PostgreSQL server for scenario 6 (default: env APP_INBOX_TEST_PG_URL)')
    .option(
      '--connections <n>',
      'connections to the receiver (server per-endpoint concurrency and raw pool)',
      integerFrom(1, 1_000),
      32,
    )
    .option(
      '--settle <seconds>',
      'before each scenario: flush the page cache to disk (sync), then wait this long (default: 10, quick 2)',
      integerFrom(0, 600),
    )
    .option('--skip-build', 'use the existing dist/ instead of building first', false)
    .option(
      '--server-source',
      "run the servers from src/ under tsx, no build (a smoke run: the figures are not production code's)",
      false,
    )
    .option('--server-stderr', "echo the servers' stderr as it comes (nx keeps --verbose for itself)", false)
    .option('--out <dir>', 'directory of the JSON results', join(ROOT, 'bench-results'))
    .option('--no-markdown', 'leave bench/RESULTS.md as it is (the JSON is still written)')
    .allowExcessArguments(false);
  program.parse(process.argv.slice(2), { from: 'user' });
  const o = program.opts<{
    quick: boolean;
    only?: Set<number>;
    profile: boolean;
    pg?: string;
    connections: number;
    settle?: number;
    skipBuild: boolean;
    serverSource: boolean;
    serverStderr: boolean;
    out: string;
    markdown: boolean;
  }>();
  const pgUrl = o.pg ?? process.env.APP_INBOX_TEST_PG_URL ?? '';
  return {
    quick: o.quick,
    only: o.only ?? new Set([1, 2, 3, 4, 5, 6]),
    profile: o.profile,
    pgUrl: pgUrl === '' ? null : pgUrl,
    connections: o.connections,
    settleSeconds: o.settle ?? (o.quick ? 2 : 10),
    serverStderr: o.serverStderr,
    serverSource: o.serverSource,
    skipBuild: o.skipBuild || o.serverSource,
    out: o.out,
    markdown: o.markdown,
  };
}

function build(): void {
  console.log('building the server (nx run @app-inbox/grpc-server:build) ...');
  execFileSync('npx', ['nx', 'run', '@app-inbox/grpc-server:build', '--outputStyle=static'], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, NX_DAEMON: 'false', NX_NO_CLOUD: 'true' },
  });
}

/**
 * Lets the machine settle before a scenario: what the previous one wrote (a million-message SQLite file, a
 * PostgreSQL cluster running with fsync off) is flushed to disk now rather than during the next scenario's
 * measurements, and the kernel's and the bench's own clean-up (a full GC of the bench, with --expose-gc) is
 * done. Scenario 6 run right after scenario 3 had its p50 at 1,000/s at 15.0 / 33.5 ms (one / two processes)
 * against 8.9 / 13.7 ms after `sync` and 10 s (bench/README "Eighth round").
 */
async function settle(seconds: number): Promise<void> {
  if (seconds === 0) return;
  execFileSync('sync');
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

function load(): string {
  return loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
}

function shown(figure: Figure): string {
  return `${fmt(figure.value, figure.digits ?? 0)} ${figure.unit}`;
}

function targetText(figure: Figure): string {
  const t = figure.target;
  if (t === undefined) return '';
  return `${t.op === '==' ? '=' : t.op === '>=' ? '≥' : '≤'} ${fmt(t.value)} ${figure.unit}`;
}

function rows(results: readonly ScenarioResult[]): string[][] {
  return results.flatMap((r) =>
    r.figures.map((f) => [`${r.id}. ${r.title}`, f.name, shown(f), targetText(f), verdict(f)]),
  );
}

function printTable(results: readonly ScenarioResult[]): void {
  const header = ['scenario', 'figure', 'measured', 'target', ''];
  const body = rows(results);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  console.log(`\n${line(header)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  let last = '';
  for (const row of body) {
    console.log(line([row[0] === last ? '' : row[0]!, ...row.slice(1)]));
    last = row[0]!;
  }
  for (const r of results) for (const note of r.notes) console.log(`  [${r.id}] ${note}`);
}

/** A markdown table padded the way Prettier pads one, so the generated file passes `prettier --check`. */
function markdownTable(header: string[], body: string[][]): string[] {
  const escape = (cell: string) => cell.replaceAll('|', '\\|');
  const cells = [header, ...body].map((row) => row.map(escape));
  const widths = header.map((_, i) => Math.max(3, ...cells.map((row) => row[i]!.length)));
  const line = (row: string[]) => `| ${row.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(cells[0]!), line(widths.map((w) => '-'.repeat(w))), ...cells.slice(1).map(line)];
}

interface Machine {
  nproc: number;
  cpu: string;
  node: string;
  memoryGiB: number;
  loadBefore: string;
  loadAfter: string;
}

function markdown(
  results: readonly ScenarioResult[],
  machine: Machine,
  date: string,
  options: BenchOptions,
  ms: number,
): string {
  const cmd = `npm run bench${options.quick ? ' -- --quick' : ''}`;
  const out = [
    '# Benchmark results',
    '',
    `Written by \`${cmd}\` (see \`bench/run.ts\`); the latest run replaces this file. Targets are issue 6's;`,
    'they are reported, never asserted.',
    '',
    `- date: ${date}`,
    `- mode: ${options.quick ? 'quick (smoke sizes)' : 'full'}; ${options.connections} connections to the receiver; run time ${fmt(ms / 1000)} s`,
    `- machine: ${machine.nproc} CPUs (\`nproc\`), ${machine.cpu}, ${fmt(machine.memoryGiB, 1)} GiB RAM, Node ${machine.node}`,
    `- load average (1/5/15 min) before: ${machine.loadBefore}; after: ${machine.loadAfter}`,
    '',
    ...markdownTable(['scenario', 'figure', 'measured', 'target', 'result'], rows(results)),
    '',
    '## Notes',
    '',
    ...results.flatMap((r) => r.notes.map((n) => `- ${r.id}: ${n}`)),
  ];
  const profiled = results.flatMap((r) => Object.entries(r.profiles));
  if (profiled.length > 0) {
    out.push('', '## Server CPU profiles (top self time)', '');
    for (const [name, summary] of profiled) {
      out.push(`### ${name}`, '', '```', ...formatProfile({ ...summary, top: summary.top.slice(0, 10) }), '```', '');
    }
  }
  return `${out.join('\n')}\n`;
}

async function main(): Promise<void> {
  const options = parseArgs();
  const machine: Machine = {
    nproc: availableParallelism(),
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    node: process.version,
    memoryGiB: totalmem() / 1024 ** 3,
    loadBefore: load(),
    loadAfter: '',
  };
  console.log(
    `bench (${options.quick ? 'quick' : 'full'}): ${machine.nproc} CPUs, ${machine.cpu}, Node ${machine.node}; load ${machine.loadBefore}`,
  );
  if (!options.skipBuild) build();
  const date = new Date().toISOString();
  const profileDir = join(options.out, 'profiles', date.replace(/[:.]/g, '-'));
  if (options.profile) mkdirSync(profileDir, { recursive: true });
  const receiver = await Receiver.start();
  const ctx = new BenchContext(options, receiver, profileDir, serverFlags(options.serverSource));
  const started = Date.now();
  try {
    for (const [n, run] of Object.entries(SCENARIOS)) {
      if (!options.only.has(Number(n))) continue;
      await settle(options.settleSeconds);
      console.log(`\n== scenario ${n} (load ${load()}) ...`);
      const t0 = Date.now();
      const result = await run(ctx);
      result.notes.push(`took ${fmt((Date.now() - t0) / 1000)} s; load average at its end: ${load()}`);
      ctx.results.push(result);
      for (const f of result.figures) console.log(`   ${f.name}: ${shown(f)} ${targetText(f)} ${verdict(f)}`);
    }
  } finally {
    await receiver.close();
    ctx.cleanup();
  }
  machine.loadAfter = load();
  const ms = Date.now() - started;
  printTable(ctx.results);

  mkdirSync(options.out, { recursive: true });
  const file = join(options.out, `${date.replace(/[:.]/g, '-')}.json`);
  const { only, ...rest } = options;
  writeFileSync(
    file,
    `${JSON.stringify(
      {
        date,
        machine,
        options: { ...rest, only: [...only], pgUrl: rest.pgUrl === null ? null : '(set)' },
        durationMs: ms,
        scenarios: ctx.results.map((r) => ({ ...r, figures: r.figures.map((f) => ({ ...f, verdict: verdict(f) })) })),
      },
      null,
      2,
    )}\n`,
  );
  const md = join(PACKAGE_DIR, 'bench', 'RESULTS.md');
  if (options.markdown) writeFileSync(md, markdown(ctx.results, machine, date, options, ms));
  console.log(
    `\nJSON: ${file}\nMarkdown: ${options.markdown ? md : '(not written: --no-markdown)'} (peak bench RSS ${fmt(mib(process.memoryUsage().rss))} MiB)`,
  );
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
