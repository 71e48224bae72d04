#!/usr/bin/env node
/**
 * The `app-inbox` program (bin of @app-inbox/grpc-server): the command-line client of the service.
 * @see program.ts for the commands, OPERATIONS.md for the reference
 */
import { readFile } from 'node:fs/promises';
import { text } from 'node:stream/consumers';
import { runCli, type CliIo } from './program.js';

const io: CliIo = {
  stdout: process.stdout,
  stderr: process.stderr,
  readStdin: () => text(process.stdin),
  readFile: (path) => readFile(path, 'utf8'),
  env: process.env,
  onInterrupt(listener) {
    process.on('SIGINT', listener);
    process.on('SIGTERM', listener);
    return () => {
      process.off('SIGINT', listener);
      process.off('SIGTERM', listener);
    };
  },
};

runCli(process.argv.slice(2), io).then(
  (code) => {
    // Not process.exit(): stdout may still be flushing into a pipe.
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`app-inbox: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
