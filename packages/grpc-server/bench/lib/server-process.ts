/**
 * The server under test as a separate process: the built `dist/main.js` (what production runs), or its sources under
 * tsx for a smoke run without a build (`--server-source`), on 127.0.0.1 port 0, its bound address read from its JSON log. Peak memory is read from
 * `/proc/<pid>/status` (VmHWM, the resident-set high-water mark of the process's whole life).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** `getconf CLK_TCK`: 100 on every Linux architecture Node supports. */
const CLOCK_TICKS = 100;

export const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));
export const DIST_MAIN = fileURLToPath(new URL('../../dist/main.js', import.meta.url));

/**
 * What `node` runs as the server: `dist/main.js`, or with `fromSource` `src/main.ts` under tsx (the sources as the
 * tests run them: no build needed; the figures are then not production's, only a smoke run's).
 */
export function serverEntry(fromSource = false): string[] {
  return fromSource
    ? [
        '--conditions=@app-inbox/source',
        '--import',
        'tsx',
        fileURLToPath(new URL('../../src/main.ts', import.meta.url)),
      ]
    : [DIST_MAIN];
}

export interface ServerProcessOptions {
  /** `--store` value: a SQLite path or a postgres:// URL. */
  store: string;
  /** More server flags (concurrency, backoff, ...). */
  args?: readonly string[];
  /** When set, the server runs with `--cpu-prof` and writes `<name>.cpuprofile` into `dir` at exit. */
  profile?: { dir: string; name: string };
  /** More environment variables (e.g. `APP_INBOX_SECRET_KEYS`, which every process of one store must share). */
  env?: Record<string, string>;
  /** Echo the server's stderr (Node warnings, crashes) as it comes. Default false. */
  echoStderr?: boolean;
  /** Node.js flags of the server process (e.g. `--max-old-space-size=400`). Default none. */
  nodeFlags?: readonly string[];
  /** Run `src/main.ts` under tsx instead of `dist/main.js` (see {@link serverEntry}). Default false. */
  fromSource?: boolean;
}

/** Flags the server knows (from its `--help`), to pass optional ones only when they exist. */
export function serverFlags(fromSource = false): Set<string> {
  const help = execFileSync(process.execPath, [...serverEntry(fromSource), '--help'], {
    encoding: 'utf8',
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  return new Set(help.match(/--[a-z][a-z0-9-]+/g) ?? []);
}

/**
 * CPU time process `pid` has used so far, user + system (milliseconds; 10 ms resolution); NaN where /proc is not
 * available or the process is gone.
 */
export function processCpuMs(pid: number): number {
  try {
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here; in clock ticks (100 per second on Linux).
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}

export class ServerProcess {
  readonly #child: ChildProcess;
  readonly #log: string[] = [];
  readonly address: string;
  readonly pid: number;

  private constructor(child: ChildProcess, address: string, log: string[]) {
    this.#child = child;
    this.address = address;
    this.pid = child.pid ?? -1;
    this.#log = log;
  }

  static async start(options: ServerProcessOptions): Promise<ServerProcess> {
    const nodeFlags = options.profile
      ? ['--cpu-prof', '--cpu-prof-dir', options.profile.dir, '--cpu-prof-name', `${options.profile.name}.cpuprofile`]
      : [];
    const child = spawn(
      process.execPath,
      [
        ...nodeFlags,
        ...(options.nodeFlags ?? []),
        ...serverEntry(options.fromSource),
        '--grpc-address',
        '127.0.0.1:0',
        '--store',
        options.store,
        '--log-level',
        'info',
        '--shutdown-deadline-ms',
        '2000',
        ...(options.args ?? []),
      ],
      // The bench runs under tsx; the server does not (production runs plain node on dist/), unless `fromSource`.
      {
        cwd: PACKAGE_DIR,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ...options.env, NODE_OPTIONS: '' },
      },
    );
    const log: string[] = [];
    const keep = (line: string) => {
      log.push(line);
      if (log.length > 200) log.shift();
    };
    createInterface({ input: child.stderr! }).on('line', (line) => {
      keep(line);
      if (options.echoStderr === true) process.stderr.write(`  [server ${child.pid}] ${line}\n`);
    });
    const lines = createInterface({ input: child.stdout! });
    const address = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL'); // not left running behind the bench
        reject(new Error(`the server did not start within 30 s:\n${log.join('\n')}`));
      }, 30_000);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the server exited with code ${code} before listening:\n${log.join('\n')}`));
      });
      lines.on('line', (line) => {
        keep(line);
        try {
          const entry = JSON.parse(line) as { msg?: string; address?: string };
          if (entry.msg === 'gRPC server listening' && entry.address) {
            clearTimeout(timer);
            resolve(entry.address);
          }
        } catch {
          // Not a JSON log line: kept for the error message only.
        }
      });
    });
    return new ServerProcess(child, address, log);
  }

  /** The last lines the server logged (errors of a run). */
  get logTail(): readonly string[] {
    return this.#log;
  }

  /** Log lines at level warn (40) or above. */
  problems(): string[] {
    return this.#log.filter((line) => {
      try {
        return ((JSON.parse(line) as { level?: number }).level ?? 0) >= 40;
      } catch {
        return line.trim() !== '';
      }
    });
  }

  #status(field: 'VmHWM' | 'VmRSS'): number {
    try {
      const status = readFileSync(`/proc/${this.pid}/status`, 'utf8');
      const kib = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1];
      return kib === undefined ? Number.NaN : Number(kib) * 1024;
    } catch {
      return Number.NaN;
    }
  }

  /**
   * CPU time the process has used so far, user + system (milliseconds; 10 ms resolution); NaN where /proc
   * is not available. Unlike wall time it hardly moves with the load of other processes, so a change in
   * the server's own work shows through a noisy machine.
   */
  cpuMs(): number {
    return processCpuMs(this.pid);
  }

  /** Peak resident set size of the process so far (bytes); NaN where /proc is not available. */
  peakRssBytes(): number {
    return this.#status('VmHWM');
  }

  rssBytes(): number {
    return this.#status('VmRSS');
  }

  /** SIGTERM (graceful: the CPU profile is written at exit), SIGKILL after 15 s. */
  async stop(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    const exited = once(this.#child, 'exit');
    this.#child.kill('SIGTERM');
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  }
}
