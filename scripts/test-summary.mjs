// Sums the vitest JSON reports of every package (packages/*/.reports/vitest.json) into one line:
// `tests: N passed, N failed`. Exits non-zero when a test failed or a package
// that has tests wrote no report (its run crashed before reporting).
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

let passed = 0;
let failed = 0;
let problems = 0;
const expected = readdirSync('packages').filter((p) => existsSync(join('packages', p, 'vitest.config.ts')));
for (const pkg of expected) {
  const file = join('packages', pkg, '.reports', 'vitest.json');
  if (!existsSync(file)) {
    console.error(`summary: no test report for ${pkg}`);
    problems += 1;
    continue;
  }
  const report = JSON.parse(readFileSync(file, 'utf8'));
  passed += report.numPassedTests ?? 0;
  failed += report.numFailedTests ?? 0;
  if (report.success === false && (report.numFailedTests ?? 0) === 0) {
    console.error(`summary: ${pkg} reported failure outside tests (suite error)`);
    problems += 1;
  }
}
console.log(`tests: ${passed} passed, ${failed + problems} failed`);
process.exit(failed + problems > 0 ? 1 : 0);
