/**
 * The Express app of the mock receiver: the webhook on every path, the control endpoints under `/__`,
 * and the QA page at `GET /`.
 *
 * One request goes: read the body (bounded) -> the contract's checks (405, 415, 401 Basic auth, 401 signature,
 * 413, 400, 429, 200) -> a scripted rule may override the answer -> delay / drop / hang / (dripped) answer ->
 * recorded once the exchange has ended, with the outcome the client really saw (and what the signature check said).
 *
 * @see SPEC §4, §5
 */
import { createHash, randomBytes } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import express, { type Express, type Request, type Response } from 'express';
import {
  CONTACT_HEADER,
  DELIVERY_ID_HEADER,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  type AppInboxMessage,
} from '@app-inbox/core';
import { checkCredentials, redactHeaders } from './auth.js';
import {
  checkBody,
  checkHeaders,
  contactsOf,
  decide,
  groupByContact,
  mediaTypeProblem,
  parseBody,
  type ContractAnswer,
  type ParsedBody,
} from './contract.js';
import { MockReceiverError } from './errors.js';
import { resolveAppOptions, type MockReceiverAppOptions, type ResolvedAppOptions } from './options.js';
import { pageSecurityPolicy, renderPage } from './page.js';
import { Recorder, summarize, type Outcome, type RecordFilter } from './recorder.js';
import {
  RuleBook,
  SCENARIO_DESCRIPTIONS,
  type ControlInput,
  type ControlState,
  type RuleAnswer,
  type RuleInput,
  type ScenarioName,
} from './rules.js';
import { SIGNATURE_RESULTS, verifySignature, type SignatureResult } from './signature.js';

/** Largest body of a `POST /__control` (bytes). */
const CONTROL_BODY_LIMIT = 1024 * 1024;
/** Bytes an `/__events` stream may have waiting for its reader (beyond the kernel's buffers) before it is dropped. */
const EVENTS_BACKLOG_LIMIT = 1024 * 1024;
/** Characters of a non-JSON body kept in a record. */
const BODY_TEXT_LIMIT = 64 * 1024;

/** The records of a receiver, as the library exposes them. */
export type ReceiverRecords = Pick<
  Recorder,
  'list' | 'get' | 'clear' | 'duplicates' | 'lastAccepted' | 'contacts' | 'stats' | 'subscribe' | 'waitFor'
>;

/** Scripted answers at run time (the same as `/__control`). */
export interface ReceiverControl {
  /** Replaces the rules (or with `append: true` adds to them); a scenario's rules come first. */
  set(input: ControlInput): ControlState;
  /** Adds rules after the current ones. */
  append(rules: RuleInput[]): ControlState;
  /** Replaces the rules by a preset's. */
  useScenario(name: ScenarioName): ControlState;
  /** Removes every rule. */
  clear(): ControlState;
  /** The rules and how far each has got. */
  state(): ControlState;
}

/** What {@link createMockReceiverApp} returns. */
export interface MockReceiverApp {
  /** The Express 5 app; mount it or pass it to `http.createServer`. */
  app: Express;
  records: ReceiverRecords;
  control: ReceiverControl;
  /**
   * Ends what the app keeps running by itself: pending delays, hanging requests, drips and `/__events`
   * streams. Call before closing the server so that it closes at once. Idempotent.
   */
  shutdown(): void;
}

/** Reads a body up to `limit` bytes; resolves early when it is larger or when the client goes away. */
function readBody(
  req: IncomingMessage,
  limit: number,
): Promise<{ bytes: Buffer; total: number; state: 'ok' | 'too_large' | 'aborted' }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let total = 0;
    let done = false;
    const finish = (state: 'ok' | 'too_large' | 'aborted') => {
      if (done) return;
      done = true;
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onAbort);
      req.off('close', onClose);
      resolve({ bytes: Buffer.concat(chunks), total, state });
    };
    const onData = (chunk: Buffer) => {
      total += chunk.length;
      if (total > limit) {
        // Stop reading: the answer is a 413 with `Connection: close`, so the rest is never buffered.
        req.pause();
        finish('too_large');
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => finish('ok');
    const onAbort = () => finish('aborted');
    const onClose = () => finish(req.complete ? 'ok' : 'aborted');
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onAbort);
    req.on('close', onClose);
  });
}

/** Resolves once the response is finished (true) or its connection closed first (false). */
function ended(res: ServerResponse): Promise<boolean> {
  if (res.writableFinished) return Promise.resolve(true);
  if (res.destroyed) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onFinish = () => {
      res.off('close', onClose);
      resolve(true);
    };
    const onClose = () => {
      res.off('finish', onFinish);
      resolve(res.writableFinished);
    };
    res.once('finish', onFinish);
    res.once('close', onClose);
  });
}

function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}

/** Waits `ms` unless `signal` aborts first; resolves false when aborted. */
async function wait(ms: number, signal: AbortSignal): Promise<boolean> {
  if (ms <= 0) return !signal.aborted;
  try {
    await sleep(ms, undefined, { signal });
    return true;
  } catch {
    return false;
  }
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

/**
 * The contact of an empty list: the `app-inbox-contact` header, percent-decoded (the body `[]` names nobody);
 * undefined when the body is anything else, or the header is missing or not valid percent-encoded UTF-8.
 */
function emptyListContact(req: IncomingMessage, body: ParsedBody): string | undefined {
  if (body.kind !== 'json' || !Array.isArray(body.value) || body.value.length > 0) return undefined;
  const raw = headerValue(req, CONTACT_HEADER);
  if (raw === undefined || raw === '') return undefined;
  try {
    return decodeURIComponent(raw);
  } catch {
    return undefined;
  }
}

function errorSlug(status: number): string {
  return (STATUS_CODES[status] ?? `status ${status}`)
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '_')
    .replace(/^_|_$/g, '');
}

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** The response to send: the contract's, or the rule's forced status, with the rule's headers on top. */
function buildReply(
  contract: ContractAnswer,
  chosen: { ruleId: string; answer: RuleAnswer } | undefined,
  options: Pick<ResolvedAppOptions, 'retryAfterSeconds' | 'realm'>,
): Reply {
  const answer = chosen?.answer ?? {};
  let status = contract.status;
  let headers: Record<string, string> = { 'content-type': 'application/json', ...contract.headers };
  let body: unknown = contract.body;
  if (answer.status !== undefined) {
    status = answer.status;
    headers = { 'content-type': 'application/json' };
    const message = `answer forced by rule ${chosen?.ruleId ?? ''}`.trim();
    body = status < 300 ? { message } : { error: errorSlug(status), message };
    // The forced statuses keep the headers a sender looks for. @see SPEC §5
    if (status === 401) headers['www-authenticate'] = `Basic realm="${options.realm}", charset="UTF-8"`;
    if (status === 429) headers['retry-after'] = String(options.retryAfterSeconds);
  }
  if (answer.body !== undefined) body = answer.body;
  if (answer.retryAfterSeconds !== undefined) headers['retry-after'] = String(answer.retryAfterSeconds);
  if (answer.location !== undefined) headers.location = answer.location;
  for (const [name, value] of Object.entries(answer.headers ?? {})) headers[name.toLowerCase()] = value;
  if (status === 204 || status === 304) {
    // These statuses have no body (RFC 9110 §15.3.5, §15.4.5).
    delete headers['content-type'];
    return { status, headers, body: Buffer.alloc(0) };
  }
  return { status, headers, body: Buffer.from(JSON.stringify(body), 'utf8') };
}

function intParam(value: unknown, field: string, violations: { field: string; description: string }[]) {
  const text = stringParam(value, field, violations);
  if (text === undefined) return undefined;
  if (!/^\d{1,15}$/.test(text)) {
    violations.push({ field, description: 'must be a non-negative integer' });
    return undefined;
  }
  return Number(text);
}

/**
 * The control endpoints and the methods each takes (HEAD with every GET, as Express answers it): matched like
 * Express's routes, case-insensitive and with an optional trailing slash. Keep in step with the routes below.
 */
const CONTROL_ENDPOINTS: ReadonlyArray<{ path: RegExp; methods: readonly string[] }> = [
  { path: /^\/__health\/?$/i, methods: ['GET', 'HEAD'] },
  { path: /^\/__control\/?$/i, methods: ['GET', 'HEAD', 'POST', 'DELETE'] },
  { path: /^\/__received\/?$/i, methods: ['GET', 'HEAD', 'DELETE'] },
  { path: /^\/__received\/[^/]+\/?$/i, methods: ['GET', 'HEAD'] },
  { path: /^\/__duplicates\/?$/i, methods: ['GET', 'HEAD'] },
  { path: /^\/__stats\/?$/i, methods: ['GET', 'HEAD'] },
  { path: /^\/__contacts\/?$/i, methods: ['GET', 'HEAD'] },
  { path: /^\/__contacts\/[^/]+\/?$/i, methods: ['GET', 'HEAD'] },
  { path: /^\/__events\/?$/i, methods: ['GET', 'HEAD'] },
];

/** The query parameters of `GET /__received`: any other is refused, so that a misspelt filter is not ignored. */
const RECEIVED_QUERY = [
  'externalCustomerId',
  'deliveryId',
  'path',
  'status',
  'signature',
  'since',
  'limit',
  'summary',
] as const;
/** The control routes with a path parameter: their prefix and the parameter's name. */
const PATH_PARAMETERS: readonly (readonly [string, string])[] = [
  ['/__contacts/', 'externalCustomerId'],
  ['/__received/', 'seq'],
];
/** Values of `summary`: on, or off (the default). */
const SUMMARY_VALUES: Readonly<Record<string, boolean>> = { '1': true, true: true, '0': false, false: false };

function stringParam(value: unknown, field: string, violations: { field: string; description: string }[]) {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') {
    violations.push({ field, description: 'must be given once' });
    return undefined;
  }
  return value;
}

/**
 * Builds the mock receiver's Express app. Listening is the caller's: see `createMockReceiver` for a
 * server on 127.0.0.1 that closes cleanly.
 * @throws MockReceiverError `invalid_options` listing every bad option
 */
export function createMockReceiverApp(options: MockReceiverAppOptions = {}): MockReceiverApp {
  const resolved = resolveAppOptions(options);
  const recorder = new Recorder({
    recordLimit: resolved.recordLimit,
    recordBytesLimit: resolved.recordBytesLimit,
    contactLimit: resolved.contactLimit,
  });
  const rules = new RuleBook({ retryAfterSeconds: resolved.retryAfterSeconds, slowDelayMs: resolved.slowDelayMs });
  rules.set({ scenario: resolved.scenario, rules: resolved.rules });
  const lifetime = new AbortController();
  /** Open `/__events` streams and their unsubscribe functions. */
  const streams = new Map<ServerResponse, () => void>();

  const control: ReceiverControl = {
    set: (input) => rules.set(input),
    append: (list) => rules.append(list),
    useScenario: (name) => rules.set({ scenario: name }),
    clear: () => rules.clear(),
    state: () => rules.state(),
  };

  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  // --- The QA page -------------------------------------------------------------------------------------
  // Exactly `/` (not `//`, which Express's non-strict routing would also match): every other path is a webhook.
  app.use((req, res, next) => {
    if ((req.method !== 'GET' && req.method !== 'HEAD') || req.path !== '/') {
      next();
      return;
    }
    const nonce = randomBytes(16).toString('base64');
    res
      .status(200)
      .set({
        'content-type': 'text/html; charset=utf-8',
        'content-security-policy': pageSecurityPolicy(nonce),
        'cache-control': 'no-store',
        'x-content-type-options': 'nosniff',
      })
      .send(renderPage(nonce));
  });

  // --- Control and inspection endpoints (`/__...`; never a webhook path) --------------------------------
  const json = (res: Response, status: number, body: unknown) => {
    res.status(status).set('cache-control', 'no-store').json(body);
  };

  app.get('/__health', (_req, res) => json(res, 200, { ok: true }));

  app.get('/__control', (_req, res) => json(res, 200, { ...rules.state(), scenarios: SCENARIO_DESCRIPTIONS }));
  app.post('/__control', async (req, res) => {
    const read = await readBody(req, CONTROL_BODY_LIMIT);
    if (read.state === 'aborted') return;
    // JSON only: a form on any web page open in QA's browser can POST text/plain, urlencoded or multipart to
    // 127.0.0.1 without a CORS preflight, and would otherwise change the rules (make the receiver hang or refuse).
    const mediaProblem = mediaTypeProblem(headerValue(req, 'content-type'), headerValue(req, 'content-encoding'));
    if (mediaProblem !== null) {
      if (read.state === 'too_large') res.set('connection', 'close');
      json(res, 415, {
        error: 'unsupported_media_type',
        message: mediaProblem,
        violations: [{ field: 'content-type', description: 'must be application/json' }],
      });
      return;
    }
    const body: ParsedBody =
      read.state === 'too_large' ? { kind: 'too_large', limitBytes: CONTROL_BODY_LIMIT } : parseBody(read.bytes);
    if (body.kind !== 'json') {
      const description =
        body.kind === 'invalid' ? body.description : body.kind === 'empty' ? 'is required' : 'is too large';
      if (read.state === 'too_large') res.set('connection', 'close');
      json(res, 400, { error: 'invalid_rule', violations: [{ field: 'body', description }] });
      return;
    }
    try {
      json(res, 200, rules.set(body.value as ControlInput));
    } catch (error) {
      if (!(error instanceof MockReceiverError)) throw error;
      // A body that is not an object is named like the other faults of the body as a whole (invalid JSON).
      const violations = error.violations.map((v) => (v.field === '' ? { ...v, field: 'body' } : v));
      json(res, 400, { error: error.code, message: error.message, violations });
    }
  });
  app.delete('/__control', (_req, res) => json(res, 200, rules.clear()));

  app.get('/__received', (req, res) => {
    const violations: { field: string; description: string }[] = [];
    const filter: RecordFilter = {};
    const externalCustomerId = stringParam(req.query.externalCustomerId, 'externalCustomerId', violations);
    const deliveryId = stringParam(req.query.deliveryId, 'deliveryId', violations);
    const path = stringParam(req.query.path, 'path', violations);
    const status = intParam(req.query.status, 'status', violations);
    const since = intParam(req.query.since, 'since', violations);
    const limit = intParam(req.query.limit, 'limit', violations);
    const summary = stringParam(req.query.summary, 'summary', violations);
    const signature = stringParam(req.query.signature, 'signature', violations);
    if (signature !== undefined && !(SIGNATURE_RESULTS as readonly string[]).includes(signature)) {
      violations.push({ field: 'signature', description: `must be one of ${SIGNATURE_RESULTS.join(', ')}` });
    }
    if (summary !== undefined && !Object.hasOwn(SUMMARY_VALUES, summary)) {
      violations.push({ field: 'summary', description: 'must be 1, true, 0 or false' });
    }
    // A misspelt filter (`externalCustomerID`) would otherwise answer every record as if it were the filtered list.
    for (const name of Object.keys(req.query)) {
      if (!(RECEIVED_QUERY as readonly string[]).includes(name)) {
        violations.push({ field: name, description: `is not a known parameter (${RECEIVED_QUERY.join(', ')})` });
      }
    }
    if (violations.length > 0) {
      json(res, 400, { error: 'invalid_query', violations });
      return;
    }
    if (externalCustomerId !== undefined) filter.externalCustomerId = externalCustomerId;
    if (deliveryId !== undefined) filter.deliveryId = deliveryId;
    if (path !== undefined) filter.path = path;
    if (status !== undefined) filter.status = status;
    if (signature !== undefined) filter.signature = signature as SignatureResult;
    if (since !== undefined) filter.since = since;
    let records = recorder.list(filter);
    if (limit !== undefined) records = limit === 0 ? [] : records.slice(-limit);
    const brief = summary !== undefined && SUMMARY_VALUES[summary] === true;
    json(res, 200, { stats: recorder.stats(), records: brief ? records.map(summarize) : records });
  });
  app.delete('/__received', (_req, res) => {
    recorder.clear();
    json(res, 200, { cleared: true });
  });
  app.get('/__received/:seq', (req, res) => {
    if (!/^\d{1,15}$/.test(req.params.seq)) {
      json(res, 400, {
        error: 'invalid_query',
        violations: [{ field: 'seq', description: 'must be a record number (an integer from 1)' }],
      });
      return;
    }
    const record = recorder.get(Number(req.params.seq));
    if (record === undefined) json(res, 404, { error: 'not_found', message: 'no such record is kept' });
    else json(res, 200, record);
  });
  app.get('/__duplicates', (_req, res) => json(res, 200, recorder.duplicates()));
  app.get('/__stats', (_req, res) => json(res, 200, recorder.stats()));
  app.get('/__contacts', (_req, res) =>
    json(res, 200, {
      contacts: recorder.contacts().map(({ messages, ...rest }) => ({ ...rest, messageCount: messages.length })),
    }),
  );
  app.get('/__contacts/:externalCustomerId', (req, res) => {
    const list = recorder.lastAccepted(req.params.externalCustomerId);
    if (list === undefined) json(res, 404, { error: 'not_found', message: 'no list was accepted for this contact' });
    else json(res, 200, list);
  });

  app.get('/__events', (req, res) => {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no',
    });
    res.write('retry: 1000\n\n');
    const unsubscribe = recorder.subscribe((event) => {
      if (res.writableEnded || res.destroyed) return;
      if (res.writableLength > EVENTS_BACKLOG_LIMIT) {
        // Its reader stopped reading (a frozen tab, a suspended curl): every record would wait here for it, without
        // bound. Dropped; an EventSource reconnects once it reads again, and the page then reloads the list.
        res.destroy();
        return;
      }
      const data = event.type === 'record' ? summarize(event.record) : {};
      res.write(`event: ${event.type}\ndata: ${JSON.stringify(data)}\n\n`);
    });
    streams.set(res, unsubscribe);
    res.on('close', () => {
      unsubscribe();
      streams.delete(res);
    });
    req.socket.setNoDelay(true);
  });

  app.use((req, res, next) => {
    if (!req.path.startsWith('/__')) {
      next();
      return;
    }
    // A control endpoint asked with a method it does not take (`PUT /__control`, `POST /__received`) exists: 405
    // with the methods it takes, not a 404 saying it is no control endpoint. @see RFC 9110 §15.5.6
    const allowed = CONTROL_ENDPOINTS.find((endpoint) => endpoint.path.test(req.path))?.methods;
    if (allowed !== undefined) {
      res.set('allow', allowed.join(', '));
      json(res, 405, {
        error: 'method_not_allowed',
        message: `${req.path} takes ${allowed.join(', ')}, not ${req.method}`,
      });
      return;
    }
    json(res, 404, {
      error: 'not_found',
      message: `${req.path} is not a control endpoint (paths under /__ are reserved)`,
    });
  });

  // --- The webhook: every other method and path ---------------------------------------------------------
  // A middleware, not a route with a path pattern: no parameter decoding that could fail on odd paths.
  app.use(async (req: Request, res: Response) => {
    const started = performance.now();
    const arrival = Date.now();
    const receivedAt = new Date(arrival).toISOString();
    // Aborted when the connection closes or the app shuts down. Linked by hand rather than with
    // AbortSignal.any() so that nothing stays attached to the long-lived lifetime signal after a request.
    const exchange = new AbortController();
    const signal = exchange.signal;
    const onShutdown = () => exchange.abort();
    if (lifetime.signal.aborted) exchange.abort();
    else lifetime.signal.addEventListener('abort', onShutdown, { once: true });
    res.once('close', () => {
      lifetime.signal.removeEventListener('abort', onShutdown);
      exchange.abort();
    });

    const read = await readBody(req, resolved.maxBodyBytes);
    const body: ParsedBody =
      read.state === 'too_large' ? { kind: 'too_large', limitBytes: resolved.maxBodyBytes } : parseBody(read.bytes);
    const bodyCheck = checkBody(body, resolved.strict);
    const emptyFor = emptyListContact(req, body);
    const contacts = emptyFor === undefined ? contactsOf(body) : [emptyFor];
    const deliveryId = headerValue(req, DELIVERY_ID_HEADER) ?? null;
    // Over the bytes exactly as received, and only when they were all read (else `unchecked`: the 413 answers).
    const signature = verifySignature(
      {
        id: headerValue(req, DELIVERY_ID_HEADER),
        timestamp: headerValue(req, TIMESTAMP_HEADER),
        // Its lines joined by a space, the header's own separator (Node's ", " would glue a comma to a signature).
        signature: req.headersDistinct[SIGNATURE_HEADER]?.join(' '),
        body: read.state === 'ok' ? read.bytes : null,
      },
      resolved.signing === null ? null : { ...resolved.signing, nowSeconds: Math.floor(arrival / 1000) },
    );
    const contract = decide(
      {
        method: req.method,
        contentType: headerValue(req, 'content-type'),
        contentEncoding: headerValue(req, 'content-encoding'),
        credentials: checkCredentials(headerValue(req, 'authorization'), resolved.auth),
        signature,
        body,
        bodyCheck,
        headerViolations: checkHeaders(
          { deliveryId: headerValue(req, DELIVERY_ID_HEADER), contact: headerValue(req, CONTACT_HEADER) },
          body,
          resolved.strict,
        ),
      },
      {
        maxMessagesPerContact: resolved.maxMessagesPerContact,
        retryAfterSeconds: resolved.retryAfterSeconds,
        realm: resolved.realm,
      },
    );
    // A request whose body could not be read completely gets no rule: the client is already gone. Nor does one that
    // is not a POST (a browser's GET to see that the receiver is up): the sender only POSTs, and such a request would
    // use up an answer scripted for it ("503 twice"); the contract answers it (405).
    const chosen =
      read.state === 'aborted' || req.method !== 'POST'
        ? undefined
        : rules.choose({ path: req.path, externalCustomerIds: contacts, deliveryId });

    let recorded = false;
    const record = (outcome: Outcome, status: number | null) => {
      if (recorded) return;
      recorded = true;
      let accepted: Map<string, AppInboxMessage[]> | undefined;
      if (outcome === 'answered' && status !== null && status >= 200 && status < 300 && bodyCheck.ok) {
        // An empty list accepted for a contact empties its copy, as the sender means it to.
        accepted = emptyFor === undefined ? groupByContact(bodyCheck.messages) : new Map([[emptyFor, []]]);
      }
      const text =
        body.kind === 'json' || read.total === 0 ? undefined : read.bytes.subarray(0, BODY_TEXT_LIMIT).toString('utf8');
      recorder.add({
        receivedAt,
        method: req.method,
        path: req.path,
        url: req.originalUrl,
        headers: redactHeaders(req.headers),
        deliveryId,
        bodyBytes: read.total,
        body: body.kind === 'json' ? body.value : null,
        ...(text === undefined ? {} : { bodyText: text }),
        externalCustomerIds: contacts,
        messageCount: body.kind === 'json' && Array.isArray(body.value) ? body.value.length : null,
        answer: { status, outcome, branch: contract.branch, ruleId: chosen?.ruleId ?? null },
        signature: signature.result,
        signatureSecretIndex: signature.secretIndex,
        durationMs: Math.round((performance.now() - started) * 10) / 10,
        bodyDigest: createHash('sha256').update(read.bytes).digest('base64'),
        ...(accepted === undefined ? {} : { accepted }),
      });
    };

    if (read.state === 'aborted') {
      record('aborted', null);
      return;
    }
    const answer = chosen?.answer ?? {};
    if (!(await wait(answer.delayMs ?? 0, signal))) {
      record('aborted', null);
      return;
    }
    if (answer.action === 'drop') {
      // A reset connection (SPEC §5 "refused or reset connection"): no status line at all.
      req.socket.resetAndDestroy();
      record('dropped', null);
      return;
    }
    if (answer.action === 'hang') {
      // Never answer: the client's timeout decides (SPEC §5 "timeout"). On shutdown the socket is destroyed.
      await aborted(signal);
      if (!res.destroyed) res.destroy();
      record('hung', null);
      return;
    }

    const reply = buildReply(contract, chosen, resolved);
    if (read.state === 'too_large') reply.headers.connection = 'close';
    // 204 and 304 have no body, and a 204 no Content-Length either (RFC 9110 §8.6, §15.3.5): nothing to drip.
    const bodiless = reply.status === 204 || reply.status === 304;
    const drip = bodiless ? undefined : answer.drip;
    if (drip === undefined) {
      res.writeHead(
        reply.status,
        bodiless ? reply.headers : { ...reply.headers, 'content-length': String(reply.body.length) },
      );
      res.end(bodiless ? undefined : reply.body);
    } else {
      // A slow body: the head at once, then the body in `chunks` pieces `intervalMs` apart. Padded with
      // JSON whitespace so there is something to send in every piece.
      const bytes =
        reply.body.length >= drip.chunks
          ? reply.body
          : Buffer.concat([reply.body, Buffer.alloc(drip.chunks - reply.body.length, 0x20)]);
      res.writeHead(reply.status, { ...reply.headers, 'content-length': String(bytes.length) });
      res.flushHeaders();
      const size = Math.ceil(bytes.length / drip.chunks);
      for (let i = 0; i < drip.chunks; i++) {
        const piece = bytes.subarray(i * size, (i + 1) * size);
        if (i === drip.chunks - 1 || piece.length === 0) {
          res.end(bytes.subarray(i * size));
          break;
        }
        res.write(piece);
        if (!(await wait(drip.intervalMs, signal))) {
          if (!res.destroyed) res.destroy();
          break;
        }
      }
    }
    const finished = await ended(res);
    record(finished ? 'answered' : 'aborted', res.headersSent ? reply.status : null);
  });

  // Express's own handler would print a stack trace; the receiver answers a plain JSON 500 instead. An error Express
  // marks as the client's (a 4xx `status`: a control route's path parameter with a malformed percent-escape, named) is
  // answered with that status: the request is at fault, not the receiver.
  app.use((error: unknown, req: Request, res: Response, _next: express.NextFunction) => {
    const status = (error as { status?: unknown } | null)?.status;
    // The one 4xx Express raises on these routes: their parameter did not percent-decode. Named like any other bad
    // parameter, and without echoing the value.
    const param = status === 400 ? PATH_PARAMETERS.find(([prefix]) => req.path.startsWith(prefix))?.[1] : undefined;
    if (param !== undefined && !res.headersSent) {
      json(res, 400, {
        error: 'invalid_query',
        violations: [{ field: param, description: 'must be percent-encoded UTF-8 (a malformed %-escape)' }],
      });
      return;
    }
    if (typeof status === 'number' && Number.isInteger(status) && status >= 400 && status < 500 && !res.headersSent) {
      const message = error instanceof Error ? error.message : 'bad request';
      json(res, status, { error: status === 400 ? 'bad_request' : 'client_error', message });
      return;
    }
    resolved.onError(error);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    json(res, 500, { error: 'internal', message: 'the mock receiver failed on this request' });
  });

  return {
    app,
    records: recorder,
    control,
    shutdown() {
      if (lifetime.signal.aborted) return;
      lifetime.abort();
      for (const [stream, unsubscribe] of streams) {
        unsubscribe();
        stream.end();
      }
      streams.clear();
    },
  };
}
