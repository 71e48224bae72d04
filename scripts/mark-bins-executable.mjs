// Marks the `bin` files of the package in the current directory executable (mode 0755). tsc writes its
// output with the default mode (0644), and npm marks bin targets executable only when it links them at
// install time, which on a fresh clone is before they are built: without this, `npm exec -- app-inbox`
// and `./dist/cli.js` fail with "Permission denied". Run by each package's `build` script after tsc.
import { chmodSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';

const dir = process.argv[2] ?? process.cwd();
const { bin } = JSON.parse(readFileSync(resolve(dir, 'package.json'), 'utf8'));
const files = typeof bin === 'string' ? [bin] : Object.values(bin ?? {});
for (const file of files) chmodSync(resolve(dir, file), 0o755);
