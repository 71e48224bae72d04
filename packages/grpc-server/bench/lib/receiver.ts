/**
 * The parent's handle on the receiver child process (`receiver-process.ts`): start it, configure it, read
 * its counters and recorded arrivals over IPC, stop it.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ReceiverCommand, ReceiverConfig, ReceiverStats } from '../receiver-process.js';

const SCRIPT = fileURLToPath(new URL('../receiver-process.ts', import.meta.url));

type Pending = { resolve: (value: unknown) => void; reject: (error: Error) => void };
type WithoutId<T> = T extends unknown ? Omit<T, 'id'> : never;

export class Receiver {
  readonly #child: ChildProcess;
  readonly #pending = new Map<number, Pending>();
  #next = 1;
  readonly url: string;
  readonly pid: number;

  private constructor(child: ChildProcess, port: number) {
    this.#child = child;
    this.url = `http://127.0.0.1:${port}/hook`;
    this.pid = child.pid ?? -1;
    child.on('message', (message: { id?: number; result?: unknown }) => {
      if (message.id === undefined) return;
      const pending = this.#pending.get(message.id);
      this.#pending.delete(message.id);
      pending?.resolve(message.result);
    });
    child.on('exit', () => {
      for (const pending of this.#pending.values()) pending.reject(new Error('the receiver process exited'));
      this.#pending.clear();
    });
  }

  /** Forks the receiver (it inherits this process's `--import tsx`) and waits until it listens. */
  static async start(): Promise<Receiver> {
    const child = fork(SCRIPT, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const port = await new Promise<number>((resolve, reject) => {
      const onExit = (code: number | null) => reject(new Error(`the receiver exited early with code ${code}`));
      child.once('exit', onExit);
      child.once('message', (message: { ready?: boolean; port?: number }) => {
        child.off('exit', onExit);
        if (message.ready === true && typeof message.port === 'number') resolve(message.port);
        else reject(new Error('the receiver sent an unexpected first message'));
      });
    });
    return new Receiver(child, port);
  }

  #call<T>(command: WithoutId<ReceiverCommand>): Promise<T> {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.#child.send({ ...command, id });
    });
  }

  /** Sets the answer mode and what is recorded, and clears every counter. */
  async configure(config: ReceiverConfig): Promise<void> {
    await this.#call({ cmd: 'configure', config });
    await this.#call({ cmd: 'reset' });
  }

  stats(): Promise<ReceiverStats> {
    return this.#call({ cmd: 'stats' });
  }

  /** Delivery id -> wall time (ms since the epoch) of its first 200. */
  async arrivals(): Promise<Map<string, number>> {
    return new Map(await this.#call<Array<[string, number]>>({ cmd: 'arrivals' }));
  }

  /** Contact -> message ids of the last list answered 200 (parse mode). */
  async contacts(): Promise<Map<string, string[]>> {
    return new Map(await this.#call<Array<[string, string[]]>>({ cmd: 'contacts' }));
  }

  async close(): Promise<void> {
    if (this.#child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.#child.once('exit', resolve));
    await this.#call({ cmd: 'close' }).catch(() => undefined);
    await exited;
  }
}
