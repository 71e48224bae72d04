#!/usr/bin/env node
/**
 * `mock-receiver`: runs the mock receiver until SIGINT/SIGTERM. A second signal exits at once.
 * Run `mock-receiver --help` for the flags.
 */
import { startCli } from './cli-program.js';

const io = { out: (line: string) => console.log(line), err: (line: string) => console.error(line) };

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
