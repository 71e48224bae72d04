#!/usr/bin/env node
/**
 * The `app-inbox` program (bin of @app-inbox/grpc-server): the command-line client of the service.
 * @see program.ts for the commands, OPERATIONS.md for the reference
 */
import { readFile } from 'node:fs/promises';
import { text } from 'node:stream/consumers';
import { hideCredentialsInProcessTitle } from '../security/redact.js';
import { runCli, type CliIo } from './program.js';

// `ps` shows a command line to every user of the host: not the bearer token given by --token.
hideCredentialsInProcessTitle(['--token']);

const interruptListeners = new Set<() => void>();

/**
 * Standard output closed by its reader (`app-inbox ... | head -1`). Node ignores SIGPIPE, so a write then
 * fails with EPIPE, emitted as an 'error' event that nothing handled: a stack trace and exit code 1, even
 * after a publish the server had accepted. As Unix tools do, the client stops writing and ends without a
 * word: the rest of the output is discarded, and a running `watch` ends as on Ctrl-C.
 *
 * Exit code: the command's own (0 for a publish that was accepted, 1 or 2 for a refusal), not 141
 * (128 + SIGPIPE, what a shell reports for a process killed by SIGPIPE) nor 1: the reader not wanting more
 * output is no failure of the command, and a script (`set -o pipefail`) must not take an accepted publish
 * for a failed one. Any other write error (a full disk behind `> file`) loses output: it is reported on
 * stderr and the exit code is 1.
 */
let stdoutClosed = false;
let stdoutFailed = false;
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (stdoutClosed) return;
  stdoutClosed = true;
  if (error.code !== 'EPIPE' && error.code !== 'ERR_STREAM_DESTROYED') {
    stdoutFailed = true;
    process.stderr.write(`app-inbox: cannot write standard output (${error.code ?? error.message})\n`);
    if (!process.exitCode) process.exitCode = 1;
  }
  for (const listener of interruptListeners) listener();
});
// Nothing can be reported once standard error is closed as well (`2>&1 | head -1`).
process.stderr.on('error', () => undefined);

const io: CliIo = {
  stdout: {
    write: (s: string) => (stdoutClosed ? true : process.stdout.write(s)),
    get isTTY() {
      return process.stdout.isTTY;
    },
  },
  stderr: process.stderr,
  readStdin: () => text(process.stdin),
  readFile: (path) => readFile(path, 'utf8'),
  env: process.env,
  onInterrupt(listener) {
    process.on('SIGINT', listener);
    process.on('SIGTERM', listener);
    interruptListeners.add(listener);
    return () => {
      process.off('SIGINT', listener);
      process.off('SIGTERM', listener);
      interruptListeners.delete(listener);
    };
  },
};

runCli(process.argv.slice(2), io).then(
  (code) => {
    // Not process.exit(): stdout may still be flushing into a pipe.
    process.exitCode = code === 0 && stdoutFailed ? 1 : code;
  },
  (error: unknown) => {
    process.stderr.write(`app-inbox: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
