/** Waiting with a bound: the shutdown steps that must end even when what they wait for never does. */

/** `promise`'s value, or `timedOut` once `ms` have passed first (the timer is cleared when `promise` settles first). */
export async function within<T, U>(promise: Promise<T>, ms: number, timedOut: U): Promise<T | U> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<U>((resolve) => {
        timer = setTimeout(() => resolve(timedOut), Math.max(0, ms));
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
