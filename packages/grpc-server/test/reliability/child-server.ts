/**
 * The real server (`src/main.ts` under tsx) as a child process, like the end-to-end harness's `spawnServer`,
 * but keeping everything the process wrote: when a restart after a SIGKILL fails, the test shows why.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { TEST_SECRET_KEYS, connect, type Clients } from '../e2e/harness.js';

const PACKAGE_DIR = fileURLToPath(new URL('../../', import.meta.url));

export interface ChildProcessServer {
  address: string;
  clients: Clients;
  /** Everything the process wrote to stdout and stderr so far (JSON log lines). */
  output(): string;
  /** Sends `signal` (default SIGKILL); resolves with the exit code (null when a signal ended it). */
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts the server on `store` (port 0, 127.0.0.1 allow-listed for the receivers) and waits until it listens. */
export async function startChildServer(
  store: string,
  extraArgs: readonly string[],
  startTimeoutMs = 30_000,
  /** More environment variables of the process. */
  env: NodeJS.ProcessEnv = {},
): Promise<ChildProcessServer> {
  const child = spawn(
    process.execPath,
    [
      '--conditions=@app-inbox/source',
      '--import',
      'tsx',
      'src/main.ts',
      '--grpc-address',
      '127.0.0.1:0',
      '--store',
      store,
      '--webhook-allow-list',
      '127.0.0.1',
      // Several servers may run at once on this machine: none takes the default metrics port.
      '--metrics-address',
      '127.0.0.1:0',
      ...extraArgs,
    ],
    {
      cwd: PACKAGE_DIR,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NODE_OPTIONS: '', APP_INBOX_SECRET_KEYS: TEST_SECRET_KEYS, ...env },
    },
  );
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  const address = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the server did not start within ${startTimeoutMs} ms:\n${output}`));
    }, startTimeoutMs);
    const look = () => {
      for (const line of output.split('\n')) {
        if (!line.includes('gRPC server listening')) continue;
        try {
          const entry = JSON.parse(line) as { address?: string };
          if (entry.address) {
            clearTimeout(timer);
            child.stdout.off('data', look);
            resolve(entry.address);
            return;
          }
        } catch {
          // A line still being written: the next chunk completes it.
        }
      }
    };
    child.stdout.on('data', look);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited with ${code} before listening:\n${output}`));
    });
  });
  const clients = connect(address);
  let killed: Promise<number | null> | null = null;
  return {
    address,
    clients,
    output: () => output,
    kill(signal = 'SIGKILL') {
      killed ??= (async () => {
        clients.close();
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        return exited;
      })();
      return killed;
    },
  };
}
