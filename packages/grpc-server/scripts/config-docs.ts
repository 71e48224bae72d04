// Writes CONFIG.md (the README's configuration table) from the options definition in src/config.ts,
// formatted by prettier so that `prettier --check` agrees. `src/config.test.ts` fails when it is out of date.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { format, resolveConfig } from 'prettier';
import { configMarkdown } from '../src/config-docs.js';

const target = fileURLToPath(new URL('../CONFIG.md', import.meta.url));
const options = (await resolveConfig(target)) ?? {};
writeFileSync(target, await format(configMarkdown(), { ...options, filepath: target }));
console.log(`wrote ${target}`);
