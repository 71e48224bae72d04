/**
 * Summary of a V8 `.cpuprofile` (written by `node --cpu-prof`): the functions with the most self time, and
 * self time per origin (our code, each npm package, node internals, garbage collection), so a hot spot
 * shows up without opening DevTools.
 */
import { readFileSync } from 'node:fs';

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
}

interface CpuProfile {
  nodes: CpuProfileNode[];
  startTime: number;
  endTime: number;
}

export interface HotFunction {
  /** Function name (or `(anonymous)`) and where it is: `dist/store/sqlite/sqlite-store.js:123`. */
  name: string;
  location: string;
  selfMs: number;
  /** Share of the busy (non-idle) time, 0-100. */
  busyPct: number;
}

export interface ProfileSummary {
  /** Wall time the profile covers (milliseconds). */
  totalMs: number;
  /** Time the process was not idle (milliseconds). */
  busyMs: number;
  top: HotFunction[];
  /** Self time per origin, largest first. */
  byOrigin: Array<{ origin: string; selfMs: number; busyPct: number }>;
}

const SPECIAL = new Set(['(idle)', '(program)', '(garbage collector)', '(root)']);

/** A short location: the path from `node_modules/` or from the package's `dist/`/`src/`, with the line (1-based). */
function shortLocation(url: string, line: number): string {
  if (url === '') return '';
  let path = url.replace(/^file:\/\//, '');
  const nm = path.lastIndexOf('node_modules/');
  if (nm >= 0) path = path.slice(nm + 'node_modules/'.length);
  else {
    const own = /\/packages\/([^/]+)\/(.*)$/.exec(path);
    if (own) path = `${own[1]}/${own[2]}`;
  }
  return `${path}:${line + 1}`;
}

/** Where a frame comes from: `ours:<package>`, `npm:<package>`, `node`, or a special V8 bucket. */
function origin(node: CpuProfileNode): string {
  const { functionName, url } = node.callFrame;
  if (SPECIAL.has(functionName)) return functionName;
  if (url === '') return '(native)';
  if (url.startsWith('node:')) return 'node';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) {
    // Workspace packages are symlinked into node_modules but resolve to packages/<name>.
    return `npm:${nm[1]}`;
  }
  const own = /\/packages\/([^/]+)\//.exec(url);
  return own ? `ours:${own[1]}` : 'other';
}

export function summariseProfile(profile: CpuProfile, topN = 15): ProfileSummary {
  const totalHits = profile.nodes.reduce((sum, n) => sum + (n.hitCount ?? 0), 0);
  const totalMs = (profile.endTime - profile.startTime) / 1000;
  const msPerHit = totalHits > 0 ? totalMs / totalHits : 0;
  const byFunction = new Map<string, { name: string; location: string; hits: number }>();
  const byOrigin = new Map<string, number>();
  let idleHits = 0;
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0;
    if (hits === 0) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === '(idle)') {
      idleHits += hits;
      continue;
    }
    const location = shortLocation(url, lineNumber);
    const key = `${functionName}@${location}`;
    const entry = byFunction.get(key) ?? { name: functionName || '(anonymous)', location, hits: 0 };
    entry.hits += hits;
    byFunction.set(key, entry);
    const o = origin(node);
    byOrigin.set(o, (byOrigin.get(o) ?? 0) + hits);
  }
  const busyHits = totalHits - idleHits;
  const pct = (hits: number) => (busyHits > 0 ? (hits * 100) / busyHits : 0);
  return {
    totalMs,
    busyMs: busyHits * msPerHit,
    top: [...byFunction.values()]
      .sort((a, b) => b.hits - a.hits)
      .slice(0, topN)
      .map((f) => ({ name: f.name, location: f.location, selfMs: f.hits * msPerHit, busyPct: pct(f.hits) })),
    byOrigin: [...byOrigin]
      .sort((a, b) => b[1] - a[1])
      .map(([o, hits]) => ({ origin: o, selfMs: hits * msPerHit, busyPct: pct(hits) })),
  };
}

export function summariseProfileFile(path: string, topN = 15): ProfileSummary {
  return summariseProfile(JSON.parse(readFileSync(path, 'utf8')) as CpuProfile, topN);
}

/** The summary as text lines (for the console and RESULTS.md). */
export function formatProfile(summary: ProfileSummary): string[] {
  const lines = [
    `busy ${(summary.busyMs / 1000).toFixed(1)} s of ${(summary.totalMs / 1000).toFixed(1)} s`,
    'self time by origin: ' +
      summary.byOrigin
        .slice(0, 8)
        .map((o) => `${o.origin} ${o.busyPct.toFixed(1)}%`)
        .join(', '),
    'top self time:',
  ];
  for (const f of summary.top) {
    lines.push(`  ${f.busyPct.toFixed(1).padStart(5)}%  ${f.name}  ${f.location}`);
  }
  return lines;
}
