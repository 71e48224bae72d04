import { InvalidArgumentError } from 'commander';

/** commander option parser: a positive integer, or a clear error naming what was expected. */
export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}
