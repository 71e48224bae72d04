// Sums the vitest JSON reports of every package (packages/*/.reports/vitest*.json) into one line:
// `tests: N passed, N failed`. Exits non-zero when a test failed or a package
// that has tests wrote no report (its run crashed before reporting).
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

let passed = 0;
let failed = 0;
let problems = 0;
// Each vitest configuration of a package writes its own report: vitest.config.ts -> vitest.json,
// vitest.<kind>.config.ts -> vitest.<kind>.json (vitest.shared.ts).
const expected = readdirSync('packages').flatMap((pkg) =>
  readdirSync(join('packages', pkg))
    .map((file) => /^(vitest(?:\.[a-z-]+)?)\.config\.ts$/.exec(file)?.[1])
    .filter((report) => report !== undefined)
    .map((report) => ({ pkg, report })),
);
for (const { pkg, report: name } of expected) {
  const file = join('packages', pkg, '.reports', `${name}.json`);
  if (!existsSync(file)) {
    // vitest.bench (the bench's smoke run) is skipped by nx when the package's own tests failed.
    console.error(
      `summary: no test report ${name}.json for ${pkg} (its run did not start, was skipped after a failed dependency, or crashed)`,
    );
    problems += 1;
    continue;
  }
  const report = JSON.parse(readFileSync(file, 'utf8'));
  passed += report.numPassedTests ?? 0;
  failed += report.numFailedTests ?? 0;
  if (report.success === false && (report.numFailedTests ?? 0) === 0) {
    console.error(`summary: ${pkg} (${name}) reported failure outside tests (suite error)`);
    problems += 1;
  }
}
console.log(`tests: ${passed} passed, ${failed + problems} failed`);
process.exit(failed + problems > 0 ? 1 : 0);
