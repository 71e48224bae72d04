/**
 * What every scenario shares: the options of the run, the receiver, temporary stores, how to start the
 * server process(es) with the bench's flags, and the result shape (figures with their targets).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatProfile, summariseProfileFile, type ProfileSummary } from './profile.js';
import type { Receiver } from './receiver.js';
import { ServerProcess } from './server-process.js';
import { BenchClient } from './grpc.js';

export interface BenchOptions {
  quick: boolean;
  /** Scenario numbers to run. */
  only: Set<number>;
  profile: boolean;
  /** PostgreSQL server URL whose user may CREATE DATABASE; scenario 6 runs when set. */
  pgUrl: string | null;
  /** Connections to the receiver: the server's per-endpoint concurrency, and the raw ceiling's pool. */
  connections: number;
  /** Echo the servers' stderr live. */
  serverStderr: boolean;
  /** Run the servers from their sources under tsx, not from dist/ (a smoke run without a build). */
  serverSource: boolean;
}

/** A target of the issue, shown beside the measured value; never asserted. */
export interface Target {
  op: '>=' | '<=' | '==';
  value: number;
}

export interface Figure {
  name: string;
  value: number;
  unit: string;
  /** Decimals shown. Default 0. */
  digits?: number;
  target?: Target;
}

export interface ScenarioResult {
  id: string;
  title: string;
  figures: Figure[];
  notes: string[];
  /** Summaries of the server CPU profiles (with `--profile`), by process label. */
  profiles: Record<string, ProfileSummary>;
}

export function verdict(figure: Figure): 'PASS' | 'MISS' | '' {
  const t = figure.target;
  if (t === undefined) return '';
  if (!Number.isFinite(figure.value)) return 'MISS';
  const ok =
    t.op === '>=' ? figure.value >= t.value : t.op === '<=' ? figure.value <= t.value : figure.value === t.value;
  return ok ? 'PASS' : 'MISS';
}

export class BenchContext {
  readonly options: BenchOptions;
  readonly receiver: Receiver;
  readonly profileDir: string;
  /** Flags for every server: generous concurrency, plus the SSRF allow-list for 127.0.0.1 when the build has one. */
  readonly serverArgs: string[];
  /**
   * Environment of every server: one secret-sealing key for the whole run (the processes sharing a
   * PostgreSQL store must agree on it; SQLite would otherwise create a key file and warn).
   */
  readonly serverEnv: Record<string, string> = { APP_INBOX_SECRET_KEYS: `bench:${randomBytes(32).toString('base64')}` };
  readonly #tempDirs: string[] = [];
  /** Results so far (scenario 3 compares itself with scenario 2). */
  readonly results: ScenarioResult[] = [];

  constructor(options: BenchOptions, receiver: Receiver, profileDir: string, knownFlags: Set<string>) {
    this.options = options;
    this.receiver = receiver;
    this.profileDir = profileDir;
    const c = options.connections;
    this.serverArgs = [
      '--first-lane-concurrency',
      String(c * 4),
      '--retry-lane-concurrency',
      String(c * 2),
      '--per-endpoint-concurrency',
      String(c),
    ];
    // The receiver is on loopback: allow it where the server guards against private addresses (issue 7).
    if (knownFlags.has('--webhook-allow-list')) this.serverArgs.push('--webhook-allow-list', '127.0.0.1');
    // Metrics stay on (their cost is part of the hot path), each process on a free port: scenario 6 runs two.
    if (knownFlags.has('--metrics-address')) this.serverArgs.push('--metrics-address', '127.0.0.1:0');
  }

  /** A new SQLite file in a temporary directory, removed by {@link cleanup}. */
  sqliteStore(label: string): string {
    const dir = mkdtempSync(join(tmpdir(), `app-inbox-bench-${label}-`));
    this.#tempDirs.push(dir);
    return join(dir, 'store.db');
  }

  /**
   * Starts `count` server processes on `store`, runs `fn` with them and a client for each, then stops them
   * and reads their CPU profiles (with `--profile`) into `result.profiles`.
   */
  async withServers<T>(
    label: string,
    store: string,
    count: number,
    extraArgs: readonly string[],
    result: ScenarioResult,
    fn: (servers: ServerProcess[], clients: BenchClient[]) => Promise<T>,
  ): Promise<T> {
    const servers: ServerProcess[] = [];
    const clients: BenchClient[] = [];
    const names: string[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const name = `${label}${count > 1 ? `-${i + 1}` : ''}-${Date.now()}`;
        names.push(name);
        const server = await ServerProcess.start({
          store,
          args: [...this.serverArgs, ...extraArgs],
          env: this.serverEnv,
          echoStderr: this.options.serverStderr,
          fromSource: this.options.serverSource,
          ...(this.options.profile ? { profile: { dir: this.profileDir, name } } : {}),
        });
        servers.push(server);
        clients.push(new BenchClient(server.address));
      }
      return await fn(servers, clients);
    } finally {
      for (const client of clients) client.close();
      for (const server of servers) {
        const problems = server.problems();
        if (problems.length > 0) {
          const distinct = [...new Set(problems.map((line) => line.slice(0, 300)))].slice(0, 3);
          result.notes.push(`server ${server.pid} logged ${problems.length} warning(s): ${distinct.join(' | ')}`);
        }
        await server.stop();
      }
      if (this.options.profile) {
        for (const name of names) {
          const file = join(this.profileDir, `${name}.cpuprofile`);
          try {
            const summary = summariseProfileFile(file);
            result.profiles[name] = summary;
            console.log(`\n  profile ${file}\n    ${formatProfile(summary).join('\n    ')}`);
          } catch (error) {
            result.notes.push(`profile ${file} unreadable: ${String(error)}`);
          }
        }
      }
    }
  }

  cleanup(): void {
    for (const dir of this.#tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  }
}

export function newResult(id: string, title: string): ScenarioResult {
  return { id, title, figures: [], notes: [], profiles: {} };
}
