/**
 * `node --import tsx bench/profile-summary.ts FILE.cpuprofile [...] [--top N]`: prints the functions with
 * the most self time of each profile (what `npm run bench -- --profile` writes).
 */
import { formatProfile, summariseProfileFile } from './lib/profile.js';

const args = process.argv.slice(2);
const topIndex = args.indexOf('--top');
const top = topIndex >= 0 ? Number(args.splice(topIndex, 2)[1]) : 20;
if (args.length === 0 || !Number.isInteger(top) || top < 1) {
  process.stderr.write('usage: profile-summary.ts FILE.cpuprofile [...] [--top N]\n');
  process.exit(2);
}
for (const file of args) {
  process.stdout.write(`${file}\n${formatProfile(summariseProfileFile(file, top)).join('\n')}\n\n`);
}
