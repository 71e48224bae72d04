/**
 * The file of `app-inbox publish`: a JSON array of App Inbox messages in the seed's format (SPEC §4), each
 * with an optional `ttlSeconds` or `expiresAtMs`. Only the shape is checked here (types, unknown fields),
 * naming each bad entry by its index; the server validates the values (UUIDs, URLs, lengths) and names
 * the field in its answer.
 */
import type { InboxMessage } from '../gen/app_inbox/v1/message.js';
import { CliError, type CliFieldViolation } from './errors.js';

/** Messages per PublishMessages call: the server's limit (MAX_MESSAGES_PER_PUBLISH). */
export const PUBLISH_BATCH_SIZE = 10_000;

type FieldType = 'string' | 'integer';

/** Every field a message of the file may have, and its JSON type. */
const MESSAGE_FIELDS: Readonly<Record<string, FieldType>> = {
  externalCustomerId: 'string',
  id: 'string',
  createdDate: 'integer',
  title: 'string',
  content: 'string',
  image: 'string',
  link: 'string',
  category: 'string',
  customData: 'string',
  ttlSeconds: 'integer',
  expiresAtMs: 'integer',
};

/** Most violations listed before the rest is summed up. */
const MAX_VIOLATIONS = 20;

function typeProblem(value: unknown, type: FieldType): string | null {
  if (type === 'string') return typeof value === 'string' ? null : 'must be a string';
  return typeof value === 'number' && Number.isSafeInteger(value) ? null : 'must be an integer';
}

/**
 * The messages of a publish file, as the API's `InboxMessage`s. A message without `externalCustomerId`
 * (absent, null or empty) is kept: the server skips it and says so (SPEC §3).
 * @param source the file name, for error messages
 * @throws CliError (`input`) naming every bad entry as `[index].field`
 */
export function parseMessageFile(text: string, source: string): InboxMessage[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new CliError('input', `${source}: not valid JSON (${(error as Error).message})`, [], { cause: error });
  }
  if (!Array.isArray(parsed)) {
    throw new CliError('input', `${source}: must be a JSON array of messages, got ${describe(parsed)}`);
  }
  const violations: CliFieldViolation[] = [];
  const messages: InboxMessage[] = [];
  parsed.forEach((entry: unknown, index) => {
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
      violations.push({ field: `[${index}]`, description: `must be an object, got ${describe(entry)}` });
      return;
    }
    const record = entry as Record<string, unknown>;
    for (const [key, value] of Object.entries(record)) {
      const type = MESSAGE_FIELDS[key];
      if (type === undefined) {
        violations.push({ field: `[${index}].${key}`, description: 'is not a known field' });
        continue;
      }
      // null means absent (an export tool may write it for a missing contact id or image).
      if (value === null) continue;
      const problem = typeProblem(value, type);
      if (problem !== null) violations.push({ field: `[${index}].${key}`, description: problem });
    }
    const str = (key: string): string | undefined => (typeof record[key] === 'string' ? record[key] : undefined);
    const int = (key: string): number | undefined => (typeof record[key] === 'number' ? record[key] : undefined);
    const message: InboxMessage = {
      externalCustomerId: str('externalCustomerId') ?? '',
      id: str('id') ?? '',
      createdDate: int('createdDate') ?? 0,
      title: str('title') ?? '',
      content: str('content') ?? '',
      category: str('category') ?? '',
    };
    const optional = { image: str('image'), link: str('link'), customData: str('customData') };
    for (const [key, value] of Object.entries(optional))
      if (value !== undefined) Object.assign(message, { [key]: value });
    const ttl = int('ttlSeconds');
    const expires = int('expiresAtMs');
    if (ttl !== undefined) message.ttlSeconds = ttl;
    if (expires !== undefined) message.expiresAtMs = expires;
    messages.push(message);
  });
  if (violations.length > 0) {
    const shown = violations.slice(0, MAX_VIOLATIONS);
    const more = violations.length - shown.length;
    throw new CliError(
      'input',
      `${source}: ${violations.length} problem${violations.length === 1 ? '' : 's'} in the messages${more > 0 ? ` (first ${shown.length} shown)` : ''}`,
      shown,
    );
  }
  return messages;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

/** `messages[3].id` of batch `b` (0-based) → `messages[b × size + 3].id`: the index in the whole file. */
export function fileFieldPath(field: string, batchStart: number): string {
  return field.replace(/^messages\[(\d+)\]/, (_, i: string) => `messages[${batchStart + Number(i)}]`);
}
