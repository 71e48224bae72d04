/** Periodic tasks of the server process (the sweeper, the circuit's check, the store probe). */

/** A periodic task: `stop()` ends its ticks and waits for the one running. */
export interface Periodic {
  stop(): Promise<void>;
}

/**
 * Runs `task` every `intervalMs` (never two at once; a tick that comes while one runs is skipped); `stop()` ends the
 * ticks and waits for the one running. The timer does not keep the process alive.
 */
export function every(
  intervalMs: number,
  task: (stopped: () => boolean) => Promise<void>,
  onError: (error: unknown) => void,
): Periodic {
  let running: Promise<void> | null = null;
  let stopped = false;
  const timer = setInterval(() => {
    if (running !== null || stopped) return;
    running = task(() => stopped)
      .catch(onError)
      .finally(() => {
        running = null;
      });
  }, intervalMs);
  timer.unref();
  return {
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}
