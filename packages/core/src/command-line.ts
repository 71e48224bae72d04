/**
 * A command line for display. A process title is readable by every user of the host (`ps`,
 * `/proc/<pid>/cmdline`), so a secret given as a flag must not stay in it. Pure: the caller reads its own
 * command line and sets the title.
 */

/**
 * `argv` joined for display, with the value of each flag of `secretFlags` (`--password x`, `--password=x`) as `***`,
 * and every other argument (or the value of a `--name=value` one) passed through `redactValue` (for example a URL
 * without its password, `***` in its place). Null when nothing was hidden, so the title can stay as it is.
 */
export function redactedCommandLine(
  argv: readonly string[],
  secretFlags: readonly string[],
  redactValue: (value: string) => string = (value) => value,
): string | null {
  let changed = false;
  const shown = argv.map((arg, i) => {
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    if (secretFlags.includes(argv[i - 1] ?? '') || (eq > 0 && secretFlags.includes(arg.slice(0, eq)))) {
      changed = true;
      return eq > 0 ? `${arg.slice(0, eq)}=***` : '***';
    }
    const redacted = eq < 0 ? redactValue(arg) : `${arg.slice(0, eq + 1)}${redactValue(arg.slice(eq + 1))}`;
    // Only a hidden secret counts: `redactValue` may also normalise a value it hid nothing in (a URL's spelling).
    if (redacted.includes('***') && !arg.includes('***')) changed = true;
    return redacted;
  });
  return changed ? shown.join(' ') : null;
}
