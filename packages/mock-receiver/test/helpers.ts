/**
 * Helpers of the integration tests: messages in the seed's format, a receiver per test that is always
 * closed, and a POST over real HTTP with undici.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { afterEach } from 'vitest';
import { request } from 'undici';
import {
  DELIVERY_ID_HEADER,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  basicAuthorization,
  buildRequestHeaders,
  type AppInboxMessage,
} from '@app-inbox/core';
import { createMockReceiver, type MockReceiver, type MockReceiverOptions } from '../src/index.js';

/** Messages made so far: each is a millisecond older than the one before. */
let made = 0;

/**
 * A valid message for `externalCustomerId` (SPEC §4), unique id per call, and older than the one made before it, so
 * that messages listed in the order they were made are newest first (a random id could not break a createdDate tie).
 */
export function message(externalCustomerId: string, overrides: Partial<AppInboxMessage> = {}): AppInboxMessage {
  made += 1;
  return {
    externalCustomerId,
    id: randomUUID(),
    createdDate: 1_700_000_000_000 - made,
    title: 'Your order shipped',
    content: 'It arrives on Tuesday.',
    image: 'https://cdn.example.com/box.png',
    link: 'https://shop.example.com/orders/1',
    category: 'orders',
    customData: '{"orderId":1}',
    ...overrides,
  };
}

/** `count` messages for one contact, newest first. */
export function messages(externalCustomerId: string, count: number): AppInboxMessage[] {
  return Array.from({ length: count }, (_, i) => message(externalCustomerId, { createdDate: 1_700_000_000_000 - i }));
}

const open = new Set<MockReceiver>();
afterEach(async () => {
  await Promise.all([...open].map((r) => r.close()));
  open.clear();
});

/** A receiver on 127.0.0.1, port 0, closed after the test. */
export async function startReceiver(options: MockReceiverOptions = {}): Promise<MockReceiver> {
  const receiver = await createMockReceiver(options);
  open.add(receiver);
  return receiver;
}

export interface PostOptions {
  path?: string;
  method?: 'POST' | 'PUT' | 'GET' | 'PATCH' | 'DELETE';
  /** Sent as is when a string; else JSON-encoded. */
  body?: unknown;
  headers?: Record<string, string>;
  contentType?: string | null;
  deliveryId?: string | null;
  auth?: { username: string; password: string };
  /** undici's headers timeout (ms). */
  headersTimeout?: number;
}

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: unknown;
}

/** One request over real HTTP; reads the whole answer. */
export async function post(receiver: { url: string }, options: PostOptions = {}): Promise<Answer> {
  const method = options.method ?? 'POST';
  const headers: Record<string, string> = {};
  if (options.contentType !== null) headers['content-type'] = options.contentType ?? 'application/json';
  if (options.deliveryId !== null) headers[DELIVERY_ID_HEADER] = options.deliveryId ?? randomUUID();
  if (options.auth !== undefined)
    headers.authorization = basicAuthorization(options.auth.username, options.auth.password);
  Object.assign(headers, options.headers);
  const body =
    options.body === undefined
      ? undefined
      : typeof options.body === 'string'
        ? options.body
        : JSON.stringify(options.body);
  const res = await request(`${receiver.url}${options.path ?? '/webhook'}`, {
    method,
    headers,
    ...(body === undefined || method === 'GET' ? {} : { body }),
    ...(options.headersTimeout === undefined ? {} : { headersTimeout: options.headersTimeout }),
  });
  const text = await res.body.text();
  let json: unknown = undefined;
  try {
    json = JSON.parse(text);
  } catch {
    // Not JSON: leave json undefined, the test looks at text.
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

/** GET a control endpoint and parse its JSON. */
export async function getJson(receiver: { url: string }, path: string): Promise<{ status: number; json: unknown }> {
  const res = await request(`${receiver.url}${path}`);
  return { status: res.statusCode, json: await res.body.json() };
}

/** Send a JSON body to a control endpoint. */
export async function sendJson(
  receiver: { url: string },
  method: 'POST' | 'DELETE',
  path: string,
  body?: unknown,
): Promise<{ status: number; json: unknown }> {
  const res = await request(`${receiver.url}${path}`, {
    method,
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    headers: { 'content-type': 'application/json' },
  });
  return { status: res.statusCode, json: await res.body.json() };
}

/** A fresh Standard Webhooks secret (`whsec_` + base64 of 32 random bytes). */
export function newSigningSecret(): string {
  return `whsec_${randomBytes(32).toString('base64')}`;
}

/**
 * The Standard Webhooks headers the sender (core's `buildRequestHeaders`, the service's own code) makes for `body`:
 * `webhook-id`, `webhook-timestamp` (default now) and `webhook-signature` with `secret`, plus a second signature with
 * `previousSecret` as during a rotation. The receiver checks them with its own verifier.
 */
export async function signedHeaders(
  body: string,
  secret: string,
  options: { deliveryId?: string; timestampSeconds?: number; previousSecret?: string } = {},
): Promise<Record<string, string>> {
  const headers = await buildRequestHeaders({
    deliveryId: options.deliveryId ?? randomUUID(),
    externalCustomerId: 'c-1',
    body,
    timestampSeconds: options.timestampSeconds ?? Math.floor(Date.now() / 1000),
    signingSecret: secret,
    ...(options.previousSecret === undefined ? {} : { previousSigningSecret: options.previousSecret }),
  });
  return {
    [DELIVERY_ID_HEADER]: headers[DELIVERY_ID_HEADER]!,
    [TIMESTAMP_HEADER]: headers[TIMESTAMP_HEADER]!,
    [SIGNATURE_HEADER]: headers[SIGNATURE_HEADER]!,
  };
}
