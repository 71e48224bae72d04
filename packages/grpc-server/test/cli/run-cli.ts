/**
 * Runs the `app-inbox` client as a child process (from its sources, as `node --conditions=@app-inbox/source
 * --import tsx src/cli/main.ts`). Asynchronous on purpose: the server under test runs in this process and
 * must keep answering while the child waits for it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliRunOptions {
  /** Written to the child's standard input, which is then closed. Default: nothing (closed at once). */
  stdin?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Killed after this long (milliseconds). Default 30,000. */
  timeoutMs?: number;
}

/** A running client: its output so far, and its end. */
export interface CliProcess {
  child: ChildProcess;
  readonly stdout: () => string;
  readonly stderr: () => string;
  /** Resolves once the process exited and its output is read. */
  done: Promise<CliResult>;
}

function withoutClientVariables(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { APP_INBOX_ADDRESS: _address, APP_INBOX_TOKEN: _token, ...rest } = env;
  return rest;
}

export function startCli(args: readonly string[], options: CliRunOptions = {}): CliProcess {
  const child = spawn(
    process.execPath,
    ['--conditions=@app-inbox/source', '--import', 'tsx', 'src/cli/main.ts', ...args],
    {
      cwd: PACKAGE_DIR,
      stdio: ['pipe', 'pipe', 'pipe'],
      // The variables of the machine running the tests must not change the client's address or token (unset,
      // not empty: an empty APP_INBOX_ADDRESS is refused).
      env: {
        ...withoutClientVariables(process.env),
        NODE_OPTIONS: '',
        ...options.env,
      },
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdin!.end(options.stdin ?? '');
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000);
  const done = once(child, 'close').then(([code]) => {
    clearTimeout(timer);
    return { code: code as number | null, stdout, stderr };
  });
  return { child, stdout: () => stdout, stderr: () => stderr, done };
}

/** Runs the client to its end. */
export function runCli(args: readonly string[], options: CliRunOptions = {}): Promise<CliResult> {
  return startCli(args, options).done;
}
