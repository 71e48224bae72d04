#!/usr/bin/env node
/**
 * `mock-receiver`: runs the mock receiver until SIGINT/SIGTERM. A second signal exits at once.
 * Run `mock-receiver --help` for the flags.
 */
import { readFileSync } from 'node:fs';
import { commandLineWithoutPassword, startCli } from './cli-program.js';

/** The command line as `ps` shows it (Linux: the title fits in its memory), else as Node parsed it. */
function ownCommandLine(): string[] {
  try {
    return readFileSync('/proc/self/cmdline', 'utf8').split('\0').slice(0, -1);
  } catch {
    return [process.argv0, ...process.execArgv, ...process.argv.slice(1)];
  }
}

// `ps` shows a command line to every user of the host: not the password given by --password.
const title = commandLineWithoutPassword(ownCommandLine());
if (title !== null) process.title = title;

const io = { out: (line: string) => console.log(line), err: (line: string) => console.error(line) };
// A reader of the output that goes away (`mock-receiver | head -1`) must not stop the receiver: what it prints
// is only a log, so it keeps serving and recording without it. Anything else stays an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
  });
}

const started = await startCli(process.argv, io);
if (typeof started === 'number') {
  process.exitCode = started;
} else {
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      io.err(`mock-receiver: ${signal} again, exiting now`);
      process.exit(1);
    }
    stopping = true;
    io.out(`mock-receiver: ${signal}, closing`);
    started.close().then(
      () => process.exit(0),
      (error: unknown) => {
        io.err(`mock-receiver: close failed: ${String(error)}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
