/**
 * Crash safety of the real server process: it runs as a child (`main.ts` on a SQLite file), messages are
 * published continuously from several loops, and it is killed with SIGKILL at random moments (six times),
 * restarted each time on the same file. Afterwards the mock receiver's records must show that nothing
 * accepted was lost, that each contact ends with exactly its final state, that no contact ever got an older
 * list after a newer one, and that a delivery id seen twice carried the same bytes both times.
 * @see issue 7 "Crash safety", ARCHITECTURE §1-§3, SPEC §4
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMockReceiver, type MockReceiver, type RuleInput } from '@app-inbox/mock-receiver';
import { afterAll, describe, expect, it } from 'vitest';
import type { InboxMessage } from '../../src/gen/app_inbox/v1/message.js';
import { eventually } from '../e2e/harness.js';
import { startChildServer, type ChildProcessServer } from './child-server.js';

/** SIGKILLs of the server (the issue asks for at least 5). */
const KILLS = 6;
/** Each server lives this long (ms, uniformly random) before it is killed: kills land anywhere. */
const UPTIME_MS = { min: 300, max: 1_500 };
/** Concurrent publishers: a kill finds some publishes in flight and some commits half-way. */
const PUBLISHERS = 3;

/** A short timeout and lease: a killed worker's claims come back within 3 s. */
const SERVER_ARGS = [
  '--request-timeout-ms',
  '2000',
  '--lease-ms',
  '3000',
  '--poll-interval-ms',
  '50',
  '--backoff-base-ms',
  '50',
  '--backoff-max-ms',
  '200',
  '--max-attempts',
  '100',
];

interface Account {
  id: string;
  /** maxMessagesPerContact of its webhook. */
  cap: number;
  contacts: string[];
}

/** A publish the test made: answered OK (`accepted`) or not (killed mid-call: it may or may not be stored). */
interface Batch {
  account: Account;
  messages: InboxMessage[];
}

const random = (min: number, max: number) => min + Math.floor(Math.random() * (max - min + 1));
const pick = <T>(items: readonly T[]): T => items[random(0, items.length - 1)]!;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('crash safety (server process killed with SIGKILL while publishing)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'app-inbox-crash-'));
  let receiver: MockReceiver | undefined;
  let server: ChildProcessServer | null = null;

  afterAll(async () => {
    await server?.kill();
    await receiver?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('loses nothing accepted, ends each contact on its final state, never goes back, keeps duplicates identical', async () => {
    const store = join(dir, 'store.db');
    // Uncapped contacts (every message must reach the receiver) and capped ones (the newest 5 only, SPEC §4).
    const wide: Account = { id: `crash-wide-${randomUUID()}`, cap: 1000, contacts: [] };
    const narrow: Account = { id: `crash-narrow-${randomUUID()}`, cap: 5, contacts: [] };
    for (let i = 0; i < 12; i++) wide.contacts.push(`w-${i}`);
    for (let i = 0; i < 4; i++) narrow.contacts.push(`n-${i}`);
    const accounts = [wide, narrow];
    // Some contacts' first attempt of every delivery gets a 503: retries (frozen bodies) are in flight too
    // when the kills come.
    const rules: RuleInput[] = ['w-0', 'w-1', 'w-2', 'n-0'].map((contact) => ({
      match: { externalCustomerId: contact },
      answers: [{ status: 503, times: 1 }],
      per: 'delivery',
    }));
    receiver = await createMockReceiver({ rules, recordLimit: 1_000_000, maxMessagesPerContact: 10_000 });

    server = await startChildServer(store, SERVER_ARGS);
    for (const account of accounts) {
      await server.clients.upsertWebhook({
        accountId: account.id,
        url: `${receiver.url}/hooks/${account.id}`,
        maxMessagesPerContact: account.cap,
        signingSecret: '',
      });
    }

    const accepted: Batch[] = [];
    const uncertain: Batch[] = [];
    let created = Date.now() - 3_600_000;
    let publishing = true;
    /** Resolves when a server is up again (publishers wait on it while the server is down). */
    let up: Promise<void> = Promise.resolve();
    let markUp: () => void = () => undefined;

    const publisher = async () => {
      while (publishing) {
        await up;
        const current = server;
        if (current === null) continue;
        const account = pick(accounts);
        const messages = Array.from({ length: random(1, 4) }, () => ({
          externalCustomerId: pick(account.contacts),
          id: randomUUID(),
          // Strictly increasing over the whole test: "newest first" is one order, no ties.
          createdDate: ++created,
          title: `t${created}`,
          content: 'c',
          category: 'crash',
        }));
        const batch = { account, messages };
        try {
          const answer = await current.clients.publishMessages({ accountId: account.id, messages });
          expect(answer.accepted + answer.duplicates).toBe(messages.length);
          accepted.push(batch);
        } catch {
          // Cut by the kill: committed or not, the caller cannot know; it publishes again below.
          uncertain.push(batch);
        }
        await sleep(random(0, 10));
      }
    };
    const publishers = Array.from({ length: PUBLISHERS }, publisher);

    /** Kills of a server that had answered publishes: the kill hit a server at work. */
    let killsWhilePublishing = 0;
    for (let kill = 0; kill < KILLS; kill++) {
      const acceptedAtStart = accepted.length;
      await sleep(random(UPTIME_MS.min, UPTIME_MS.max));
      up = new Promise<void>((resolve) => (markUp = resolve));
      const victim = server;
      server = null;
      expect(await victim.kill('SIGKILL')).toBeNull(); // ended by the signal: no exit code
      if (accepted.length > acceptedAtStart) killsWhilePublishing++;
      server = await startChildServer(store, SERVER_ARGS);
      markUp();
    }
    await sleep(random(UPTIME_MS.min, UPTIME_MS.max));
    publishing = false;
    await Promise.all(publishers);
    expect(killsWhilePublishing).toBeGreaterThanOrEqual(KILLS - 1);
    expect(accepted.length).toBeGreaterThan(50);

    // What a careful caller does after an error: publish again (idempotent on message id).
    const final = server!;
    for (const batch of uncertain) {
      const answer = await final.clients.publishMessages({ accountId: batch.account.id, messages: batch.messages });
      expect(answer.accepted + answer.duplicates).toBe(batch.messages.length);
    }

    // Each contact's final state: every message published to it, newest first, capped.
    const expected = new Map<string, string[]>();
    for (const account of accounts) {
      for (const contact of account.contacts) {
        const all = [...accepted, ...uncertain]
          .filter((b) => b.account === account)
          .flatMap((b) => b.messages)
          .filter((m) => m.externalCustomerId === contact)
          .sort((a, b) => b.createdDate - a.createdDate);
        expected.set(
          contact,
          all.slice(0, account.cap).map((m) => m.id),
        );
      }
    }
    await eventually(
      () => {
        for (const [contact, ids] of expected) {
          const last = receiver!.records.lastAccepted(contact)?.messages.map((m) => m.id) ?? [];
          if (ids.length > 0 && last.join() !== ids.join()) return undefined;
        }
        return true;
      },
      30_000,
      'every contact to have received its final state',
    );
    for (const [contact, ids] of expected) {
      expect(receiver.records.lastAccepted(contact)?.messages.map((m) => m.id) ?? [], contact).toEqual(ids);
    }

    const records = receiver.records.list();
    const acceptedRequests = records.filter((r) => r.answer.status !== null && r.answer.status < 300);

    // At least once: every message of an OK publish reached the receiver in an accepted (2xx) request. For
    // the capped account, the messages pushed out of a contact's newest five before its next delivery are
    // rightly never sent (SPEC §4): its final lists were checked above instead.
    const received = new Set(
      acceptedRequests
        .flatMap((r) => (Array.isArray(r.body) ? (r.body as Array<{ id: string }>) : []))
        .map((m) => m.id),
    );
    const missing = accepted
      .filter((b) => b.account === wide)
      .flatMap((b) => b.messages)
      .filter((m) => !received.has(m.id));
    expect(missing).toEqual([]);

    // Never an older list after a newer one: per contact, each accepted list contains the previous one
    // (uncapped) or is at least as new (capped: its newest message is not older).
    for (const account of accounts) {
      const createdOf = new Map(
        [...accepted, ...uncertain].flatMap((b) => b.messages).map((m) => [m.id, m.createdDate] as const),
      );
      for (const contact of account.contacts) {
        const lists = acceptedRequests
          .filter((r) => r.externalCustomerIds.includes(contact))
          .sort((a, b) => a.seq - b.seq)
          .map((r) => (r.body as Array<{ id: string }>).map((m) => m.id));
        for (let i = 1; i < lists.length; i++) {
          const previous = lists[i - 1]!;
          const next = lists[i]!;
          if (account.cap >= 1000)
            expect(
              previous.filter((id) => !next.includes(id)),
              contact,
            ).toEqual([]);
          const newest = (ids: string[]) => Math.max(...ids.map((id) => createdOf.get(id) ?? -Infinity));
          expect(newest(next), contact).toBeGreaterThanOrEqual(newest(previous));
        }
      }
    }

    // A delivery id received more than once (a retry, or a resend after a kill) carried the same bytes.
    const duplicates = receiver.records.duplicates();
    expect(duplicates.differentBodies).toBe(0);
    expect(duplicates.deliveries.every((d) => d.bodiesEqual)).toBe(true);
    // The 503 rules guarantee retried deliveries, so the check above is not vacuous.
    expect(duplicates.deliveries.length).toBeGreaterThan(0);

    expect(await final.kill('SIGTERM')).toBe(0);
    server = null;
  }, 120_000);
});
