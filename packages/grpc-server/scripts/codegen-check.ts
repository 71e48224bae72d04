// Fails when `buf generate` would change src/gen: regenerates into a temporary directory (so it needs
// neither git nor a clean working tree) and compares the two trees file by file.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const packageDir = fileURLToPath(new URL('..', import.meta.url));
const committed = join(packageDir, 'src', 'gen');
const temp = mkdtempSync(join(tmpdir(), 'app-inbox-codegen-'));

/** Every file under `dir`, as paths relative to it, sorted; none when `dir` does not exist. */
function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, entry.name);
      if (entry.isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  try {
    walk(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  return out.sort();
}

try {
  // -o prefixes the template's `out` (src/gen), so the fresh code lands in <temp>/src/gen.
  const result = spawnSync('buf', ['generate', '-o', temp], { cwd: packageDir, stdio: 'inherit', shell: false });
  if (result.error) throw result.error;
  if (result.status !== 0) {
    console.error(`codegen:check: buf generate exited with ${result.status}`);
    process.exit(1);
  }
  const fresh = join(temp, 'src', 'gen');
  const a = listFiles(committed);
  const b = listFiles(fresh);
  const problems = [];
  for (const f of b) if (!a.includes(f)) problems.push(`missing from src/gen: ${f}`);
  for (const f of a) if (!b.includes(f)) problems.push(`stale in src/gen (no longer generated): ${f}`);
  for (const f of a) {
    if (b.includes(f) && !readFileSync(join(committed, f)).equals(readFileSync(join(fresh, f)))) {
      problems.push(`differs from a fresh generate: src/gen/${f}`);
    }
  }
  if (problems.length > 0) {
    console.error(
      `codegen:check: src/gen is out of date; run \`npm run codegen\` and commit it.\n  ${problems.join('\n  ')}`,
    );
    process.exit(1);
  }
  console.log(`codegen:check: src/gen matches the proto (${a.length} files).`);
} finally {
  rmSync(temp, { recursive: true, force: true });
}
