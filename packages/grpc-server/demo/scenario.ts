/**
 * What the demo publishes and how it sums up what happened: plain data and pure functions, so the demo
 * script (demo.ts) is only wiring.
 */
import { randomUUID } from 'node:crypto';
import type { DeepPartial, Delivery } from '../src/gen/app_inbox/v1/delivery.js';
import type { InboxMessage } from '../src/gen/app_inbox/v1/message.js';

/** The demo's account id. */
export const DEMO_ACCOUNT = 'demo-shop';

/** The contact whose first delivery the receiver answers with a 503 (once): its retry is visible. */
export const FLAKY_CONTACT = 'carol';

/** Sample messages: several contacts, one message without an externalCustomerId, rich optional fields. */
export function sampleMessages(now: number): Array<DeepPartial<InboxMessage>> {
  const message = (contact: string, minutesAgo: number, fields: Partial<InboxMessage>) => ({
    externalCustomerId: contact,
    id: randomUUID(),
    createdDate: now - minutesAgo * 60_000,
    category: 'promo',
    content: '',
    title: '',
    ...fields,
  });
  return [
    message('alice', 30, { title: 'Welcome!', content: 'Thanks for joining us, Alice.', category: 'onboarding' }),
    message('alice', 5, {
      title: 'Your order shipped',
      content: 'Order #1042 is on its way.',
      link: 'https://shop.example/orders/1042',
      category: 'orders',
    }),
    message('bob', 12, {
      title: 'Spring sale',
      content: '20% off everything this weekend.',
      image: 'https://shop.example/img/spring.png',
      link: 'https://shop.example/sale',
      customData: JSON.stringify({ campaign: 'spring-sale', variant: 'B' }),
    }),
    message(FLAKY_CONTACT, 3, { title: 'Back in stock', content: 'The blue sneakers are back.', ttlSeconds: 3_600 }),
    message('dave', 1, {
      title: 'Password changed',
      content: 'If this was not you, contact support.',
      category: 'security',
    }),
    // No externalCustomerId: this contact cannot receive messages by webhook (SPEC §3); the server skips it.
    message('', 2, { title: 'Hello, guest', content: 'Create an account to keep your inbox.' }),
  ];
}

/** One row of the summary. */
export interface SummaryRow {
  contact: string;
  deliveryId: string;
  state: string;
  attempts: number;
  /** The answers of the attempts in order: `503, 200`. */
  answers: string;
  result: string;
}

/** The delivery's row: how it ended and, when it took more than one attempt, that it was retried. */
export function summaryRow(delivery: Delivery, state: string): SummaryRow {
  const answers = delivery.attempts
    .map((a) => (a.statusCode !== undefined ? String(a.statusCode) : (a.errorKind ?? '?')))
    .join(', ');
  const retried = delivery.attempts.length > 1;
  const result =
    state === 'delivered'
      ? retried
        ? `delivered after ${delivery.attempts.length - 1} retr${delivery.attempts.length === 2 ? 'y' : 'ies'}`
        : 'delivered'
      : state;
  return {
    contact: delivery.externalCustomerId,
    deliveryId: delivery.id,
    state,
    attempts: delivery.attempts.length,
    answers: answers === '' ? '-' : answers,
    result,
  };
}

/** Totals of the summary: deliveries delivered, retried (more than one attempt), failed; messages skipped. */
export function totals(rows: readonly SummaryRow[], skipped: number) {
  return {
    delivered: rows.filter((r) => r.state === 'delivered').length,
    retried: rows.filter((r) => r.attempts > 1).length,
    failed: rows.filter((r) => r.state === 'failed').length,
    skipped,
  };
}
