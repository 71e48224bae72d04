/**
 * Requests that cannot be decoded are the caller's fault: INVALID_ARGUMENT naming the field, not INTERNAL.
 *
 * grpc-js answers `INTERNAL: Error deserializing request` whenever a service's `requestDeserialize` throws,
 * whatever the thrown error says (server-interceptors.ts, grpc-js 1.14). Three things make the generated
 * (ts-proto, `forceLong=number`) decoders throw: a 64-bit integer field beyond ±(2^53 − 1), which a
 * JavaScript number cannot hold (e.g. `created_date: 2^63 − 1`), a string field that is not UTF-8 (see
 * {@link decodeStrictly}: only because requests are decoded here with a strict UTF-8 decoder), and bytes that
 * are not protobuf at all. A fourth thing makes them lose data without throwing: a map key `__proto__`, which a
 * plain object cannot hold ({@link findUndecodableField}); it is refused here too. So the wrapped deserializer never
 * throws: it hands the handler a marker, and the wrapped handler answers INVALID_ARGUMENT with a
 * `google.rpc.BadRequest`, the field path found by walking the wire bytes with the message's descriptor (from the
 * same .proto files the code was generated from).
 * @see CONVENTIONS §6 (typed errors; bad input gets a clear error naming the field)
 */
import { fileURLToPath } from 'node:url';
import type {
  MethodDefinition,
  ServerUnaryCall,
  ServerWritableStream,
  ServiceDefinition,
  UntypedServiceImplementation,
  sendUnaryData,
} from '@grpc/grpc-js';
import { loadSync, type PackageDefinition } from '@grpc/proto-loader';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import type { Logger } from 'pino';
import { invalidArgument, toServiceError, type FieldViolation } from './errors.js';

/** The .proto sources beside `src/` and `dist/` (the package ships them). */
const PROTO_DIR = fileURLToPath(new URL('../../proto/', import.meta.url));
const API_PROTO_FILES = ['app_inbox/v1/webhook.proto', 'app_inbox/v1/message.proto', 'app_inbox/v1/delivery.proto'];

/** Largest magnitude a JavaScript number holds exactly, as the decoders check it. */
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** How deep the field search follows nested messages (our requests nest two levels). */
const MAX_DEPTH = 16;

/** What the handler receives instead of a request that could not be decoded. */
const UNDECODABLE: unique symbol = Symbol('undecodable request');
interface Undecodable {
  readonly [UNDECODABLE]: readonly FieldViolation[];
}

function isUndecodable(request: unknown): request is Undecodable {
  return typeof request === 'object' && request !== null && UNDECODABLE in request;
}

/** The parts of a protobuf descriptor (as @grpc/proto-loader gives it) the field search reads. */
interface FieldDescriptor {
  name: string;
  number: number;
  type: string;
  label: string;
  typeName: string;
}
interface MessageDescriptor {
  field: FieldDescriptor[];
  /** Nested types, a map field's implicit entry type among them (`options.mapEntry`). */
  nestedType?: Array<{ name: string; options?: { mapEntry?: boolean } | null }>;
}

/**
 * The one map key a decoded request cannot hold: ts-proto decodes a `map<string, …>` into a plain object, where
 * `message.headers["__proto__"] = value` sets the object's prototype (to nothing, for a string) instead of a key.
 */
const LOST_MAP_KEY = '__proto__';
const LOST_MAP_KEY_DESCRIPTION = `is a key this server cannot hold (JavaScript's ${LOST_MAP_KEY}): use another`;

/** A request the generated decoder read, but whose map key {@link LOST_MAP_KEY} it dropped. */
class LostMapKeyError extends Error {
  constructor(readonly violation: FieldViolation) {
    super(`${violation.field}: ${violation.description}`);
  }
}

/**
 * proto3 string fields hold UTF-8. The generated decoders' default (`TextDecoder` without `fatal`) puts U+FFFD
 * in place of bytes that are not, so two different contact ids (bytes FF and FE) became the same contact.
 * This one throws instead. `ignoreBOM`: a leading U+FEFF is text, as in the default decoder.
 */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const decodeUtf8Strictly = (bytes: Uint8Array): string => strictUtf8.decode(bytes);

/**
 * `method`'s request decoded from `bytes` with strict UTF-8 strings, in the one pass of the generated decoder:
 * ts-proto's `requestDeserialize` is `(value) => Request.decode(value)`, and `decode` reads from a
 * `BinaryReader` it is given (the generated code's own way of decoding nested messages), so the reader is
 * handed to it in place of the bytes. Throws where the generated decoder would, on a string that is not UTF-8,
 * and on a map key the decoder drops ({@link findUndecodableField}). The reader must end at the end of the bytes: a
 * deserializer that did not read from it (another code generator) would fail every request here, in every test,
 * rather than go on decoding strings leniently.
 */
export function decodeStrictly(method: MethodDefinition<unknown, unknown>, bytes: Uint8Array): unknown {
  const reader = new BinaryReader(bytes, decodeUtf8Strictly);
  const request = method.requestDeserialize(reader as unknown as Buffer);
  if (reader.pos !== reader.len) throw new Error(`${method.path}: the request decoder did not read its bytes`);
  // Only bytes holding `__proto__` anywhere are walked again for a map key that was lost (one memory search).
  if (Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).includes(LOST_MAP_KEY)) {
    const found = lostMapKeyOf(method.path, bytes);
    if (found !== null) throw new LostMapKeyError(found);
  }
  return request;
}

/** Whether `bytes` are UTF-8. */
function isUtf8(bytes: Uint8Array): boolean {
  try {
    strictUtf8.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

const SIXTY_FOUR_BIT: Readonly<Record<string, (r: BinaryReader) => bigint | string>> = {
  TYPE_INT64: (r) => r.int64(),
  TYPE_UINT64: (r) => r.uint64(),
  TYPE_SINT64: (r) => r.sint64(),
  TYPE_FIXED64: (r) => r.fixed64(),
  TYPE_SFIXED64: (r) => r.sfixed64(),
};

let descriptors: PackageDefinition | null = null;
/** Loaded on the first undecodable request (or one whose bytes hold `__proto__`) only: other traffic never pays for it. */
function packageDefinition(): PackageDefinition {
  descriptors ??= loadSync(API_PROTO_FILES, { includeDirs: [PROTO_DIR], keepCase: true });
  return descriptors;
}

function messageDescriptor(fullName: string): MessageDescriptor | null {
  const entry = packageDefinition()[fullName] as { type?: MessageDescriptor } | undefined;
  return entry?.type?.field === undefined ? null : entry.type;
}

/** A field's message type, resolved like protoc: relative to the enclosing package, or fully qualified. */
function resolveType(typeName: string, packageName: string): MessageDescriptor | null {
  if (typeName.startsWith('.')) return messageDescriptor(typeName.slice(1));
  return messageDescriptor(`${packageName}.${typeName}`) ?? messageDescriptor(typeName);
}

function unsafe(value: bigint | string): boolean {
  const n = BigInt(value);
  return n > MAX_SAFE || n < -MAX_SAFE;
}

const UNSAFE_INTEGER = `must be an integer from -${Number.MAX_SAFE_INTEGER} to ${Number.MAX_SAFE_INTEGER} (2^53 - 1)`;
const NOT_UTF8 = 'must be UTF-8 text (a protobuf string): these bytes are not valid UTF-8';

/**
 * The first field the generated decoders refuse, with why, or null when there is none (or the bytes do not
 * parse): a 64-bit integer whose value a JavaScript number cannot hold, a string that is not UTF-8, or a map key
 * they drop without an error ({@link LOST_MAP_KEY}, named as core names a header: `headers["__proto__"]`). The
 * field is named by its path (proto field names, `messages[3].created_date`).
 */
export function findUndecodableField(
  bytes: Uint8Array,
  descriptor: MessageDescriptor,
  packageName: string,
  prefix = '',
  depth = 0,
): FieldViolation | null {
  if (depth > MAX_DEPTH) return null;
  const reader = new BinaryReader(bytes);
  const seen = new Map<number, number>();
  while (reader.pos < reader.len) {
    const [number, wireType] = reader.tag();
    const field = descriptor.field.find((f) => f.number === number);
    if (field === undefined) {
      reader.skip(wireType, number);
      continue;
    }
    const index = seen.get(number) ?? 0;
    const repeated = field.label === 'LABEL_REPEATED';
    const path = (i: number) => `${prefix}${field.name}${repeated ? `[${i}]` : ''}`;
    const read = SIXTY_FOUR_BIT[field.type];
    if (read !== undefined && wireType === WireType.LengthDelimited) {
      // A packed repeated field: every element in one length-delimited run.
      const packed = new BinaryReader(reader.bytes());
      let i = index;
      while (packed.pos < packed.len) {
        if (unsafe(read(packed))) return { field: path(i), description: UNSAFE_INTEGER };
        i++;
      }
      seen.set(number, i);
    } else if (read !== undefined) {
      seen.set(number, index + 1);
      if (unsafe(read(reader))) return { field: path(index), description: UNSAFE_INTEGER };
    } else if (field.type === 'TYPE_STRING' && wireType === WireType.LengthDelimited) {
      seen.set(number, index + 1);
      if (!isUtf8(reader.bytes())) return { field: path(index), description: NOT_UTF8 };
    } else if (field.type === 'TYPE_MESSAGE' && wireType === WireType.LengthDelimited) {
      seen.set(number, index + 1);
      const sub = reader.bytes();
      if (isMapEntry(descriptor, field) && mapKey(sub) === LOST_MAP_KEY) {
        return {
          field: `${prefix}${field.name}[${JSON.stringify(LOST_MAP_KEY)}]`,
          description: LOST_MAP_KEY_DESCRIPTION,
        };
      }
      const nested = resolveType(field.typeName, packageName);
      const found =
        nested === null ? null : findUndecodableField(sub, nested, packageName, `${path(index)}.`, depth + 1);
      if (found !== null) return found;
    } else {
      seen.set(number, index + 1);
      reader.skip(wireType, number);
    }
  }
  return null;
}

/** Whether `field` is a map field of `descriptor` (its type is an implicit map entry nested in it). */
function isMapEntry(descriptor: MessageDescriptor, field: FieldDescriptor): boolean {
  return descriptor.nestedType?.some((n) => n.name === field.typeName && n.options?.mapEntry === true) === true;
}

/** A map entry's key (field 1) as the decoder reads it: the last one, if repeated. */
function mapKey(entry: Uint8Array): string {
  const reader = new BinaryReader(entry);
  let key = '';
  while (reader.pos < reader.len) {
    const [n, w] = reader.tag();
    if (n === 1 && w === WireType.LengthDelimited) key = reader.string();
    else reader.skip(w, n);
  }
  return key;
}

/** The request descriptor of the method at `path` (`/pkg.Service/Method`) and its package, or null. */
function requestDescriptorOf(
  path: string,
): { descriptor: MessageDescriptor & { name?: string }; packageName: string } | null {
  const [, service = '', method = ''] = path.split('/');
  const packageName = service.slice(0, service.lastIndexOf('.'));
  const definition = packageDefinition()[service] as
    Record<string, { requestType?: { type?: MessageDescriptor & { name?: string } } }> | undefined;
  const descriptor = definition?.[method]?.requestType?.type;
  return descriptor?.field === undefined ? null : { descriptor, packageName };
}

/**
 * {@link findUndecodableField} of a request the generated decoder read: only a lost map key can be found then (its
 * integers and strings were read); null when there is none or it cannot be told.
 */
function lostMapKeyOf(path: string, bytes: Uint8Array): FieldViolation | null {
  try {
    const request = requestDescriptorOf(path);
    return request === null ? null : findUndecodableField(bytes, request.descriptor, request.packageName);
  } catch {
    return null;
  }
}

/** Why `bytes` could not be decoded as the request of the method at `path` (`/pkg.Service/Method`). */
export function describeUndecodable(path: string, bytes: Uint8Array): FieldViolation[] {
  let requestType = 'request';
  let found: FieldViolation | null = null;
  try {
    const request = requestDescriptorOf(path);
    if (request !== null) {
      requestType = `${request.packageName}.${request.descriptor.name ?? 'request'}`;
      found = findUndecodableField(bytes, request.descriptor, request.packageName);
    }
  } catch {
    // Not protobuf at all: the generic answer below.
  }
  if (found !== null) return [found];
  return [{ field: '', description: `is not a valid ${requestType} message: the bytes are not well-formed protobuf` }];
}

/**
 * `definition` and `implementation` with every unary and server-streaming method made to answer
 * INVALID_ARGUMENT (with a BadRequest naming the field when one is to blame) for a request that cannot be
 * decoded, instead of grpc-js's INTERNAL. Other methods are left as they are. Spread the result into
 * `server.addService(...)`.
 */
export function decodeFailuresAsInvalidArgument(
  definition: ServiceDefinition,
  implementation: UntypedServiceImplementation,
  logger?: Logger,
): [ServiceDefinition, UntypedServiceImplementation] {
  const tolerantDefinition: Record<string, MethodDefinition<unknown, unknown>> = {};
  const tolerantImplementation: UntypedServiceImplementation = { ...implementation };
  for (const [name, method] of Object.entries(definition) as Array<[string, MethodDefinition<unknown, unknown>]>) {
    const handler = implementation[name];
    if (method.requestStream || handler === undefined) {
      tolerantDefinition[name] = method;
      continue;
    }
    tolerantDefinition[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer): unknown => {
        try {
          return decodeStrictly(method, bytes);
        } catch (error) {
          const violations =
            error instanceof LostMapKeyError ? [error.violation] : describeUndecodable(method.path, bytes);
          return { [UNDECODABLE]: violations } satisfies Undecodable;
        }
      },
    };
    const refuse = (request: Undecodable) => {
      const error = invalidArgument(request[UNDECODABLE]);
      logger?.info({ method: method.path, code: error.code, message: error.message }, 'rpc refused');
      return toServiceError(error);
    };
    if (method.responseStream) {
      const stream = handler as (call: ServerWritableStream<unknown, unknown>) => void;
      tolerantImplementation[name] = (call: ServerWritableStream<unknown, unknown>) => {
        if (isUndecodable(call.request)) call.emit('error', refuse(call.request));
        else stream(call);
      };
    } else {
      const unary = handler as (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => void;
      tolerantImplementation[name] = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        if (isUndecodable(call.request)) callback(refuse(call.request));
        else unary(call, callback);
      };
    }
  }
  return [tolerantDefinition as ServiceDefinition, tolerantImplementation];
}
