/**
 * Calls of one kind made during one turn of the event loop, sent to PostgreSQL as one statement: the engine
 * freezes (and records the attempts of) the deliveries of a claim together, so one round trip and one
 * transaction serve them all where each call had its own (issue 6). Each call is still answered for its own
 * item. Two calls for the same key (the same delivery) never share a statement: the later one goes in the
 * next, so it sees the first one's effect as it would have alone.
 */
export interface TurnBatchOptions<T, R> {
  /** What makes two calls conflict (they then go in successive statements). */
  key: (item: T) => string;
  /**
   * Sends one batch and answers each of its items, in order (a promise is allowed, for an item that needs a way
   * of its own: it is waited for before the batch counts as done). When a batch of several items is rejected,
   * each of them is sent again alone, so that a call fails only for its own item, as with a statement of its own.
   */
  send: (items: T[]) => Promise<ReadonlyArray<R | PromiseLike<R>>>;
}

interface Queued<T, R> {
  item: T;
  resolve: (value: R | PromiseLike<R>) => void;
  reject: (error: unknown) => void;
}

export class TurnBatch<T, R> {
  readonly #options: TurnBatchOptions<T, R>;
  readonly #queue: Array<Queued<T, R>> = [];
  #scheduled = false;
  /** Flushes whose statements are on their way (drain() waits for them). */
  readonly #flushes = new Set<Promise<void>>();

  constructor(options: TurnBatchOptions<T, R>) {
    this.#options = options;
  }

  /** Queues `item` for the statement sent at the end of this turn; settles with its own answer. */
  add(item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.#queue.push({ item, resolve, reject });
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => {
          this.#scheduled = false;
          this.#start();
        });
      }
    });
  }

  /** No call queued or on its way. */
  get idle(): boolean {
    return this.#queue.length === 0 && this.#flushes.size === 0;
  }

  /**
   * Sends what is queued now and waits until every call made so far has settled, those whose statement waits
   * for a connection included (a pool that ends first would leave them unsettled forever).
   */
  async drain(): Promise<void> {
    while (this.#queue.length > 0 || this.#flushes.size > 0) {
      if (this.#queue.length > 0) this.#start();
      await Promise.allSettled([...this.#flushes]);
    }
  }

  #start(): void {
    if (this.#queue.length === 0) return;
    const flush = this.#flush(this.#queue.splice(0));
    this.#flushes.add(flush);
    void flush.finally(() => this.#flushes.delete(flush));
  }

  async #flush(queued: Array<Queued<T, R>>): Promise<void> {
    while (queued.length > 0) {
      const batch: Array<Queued<T, R>> = [];
      const later: Array<Queued<T, R>> = [];
      try {
        const seen = new Set<string>();
        for (const q of queued) {
          const key = this.#options.key(q.item);
          if (seen.has(key)) later.push(q);
          else {
            seen.add(key);
            batch.push(q);
          }
        }
      } catch (error) {
        for (const q of queued) q.reject(error);
        return;
      }
      queued = later;
      try {
        await this.#answer(batch);
      } catch (error) {
        if (batch.length === 1) batch[0]!.reject(error);
        // Which item made the statement fail is unknown: each goes again alone and gets its own answer.
        else for (const q of batch) await this.#answer([q]).catch((alone: unknown) => q.reject(alone));
      }
    }
  }

  /** Sends `batch` and settles each call with its answer, once every answer (promises too) has settled. */
  async #answer(batch: Array<Queued<T, R>>): Promise<void> {
    const answers = await this.#options.send(batch.map((q) => q.item));
    if (answers.length !== batch.length) {
      throw new Error(`turn batch: ${answers.length} answers for ${batch.length} calls`);
    }
    const settled = await Promise.allSettled(answers.map((answer) => Promise.resolve(answer)));
    settled.forEach((outcome, i) => {
      if (outcome.status === 'fulfilled') batch[i]!.resolve(outcome.value);
      else batch[i]!.reject(outcome.reason);
    });
  }
}
