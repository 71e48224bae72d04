/** Secrets out of what is shown: logs and error messages. @see SECURITY.md */
import { readFileSync } from 'node:fs';
import { redactedCommandLine as redactedCommandLineOf } from '@app-inbox/core';

/** `scheme://user:` … up to the last '@': what may be a password when the URL parser does not say. */
const USERINFO_PASSWORD = /^([a-z][a-z0-9+.-]*:\/\/[^/:@]*):.*@/i;

/**
 * A query parameter name (percent-decoded, as node-postgres reads it) whose value is a secret: `password` and
 * `sslpassword` (node-postgres takes them in the URL), tokens and API keys (an OTLP collector's `?api_key=`),
 * signatures.
 */
const SECRET_NAME = /pass(?:word)?|passwd|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|signature|sig|auth/i;
/** One `?name=value` or `&name=value` of a URL. */
const QUERY_PARAMETER = /([?&])([^=&#]*)=([^&#]*)/g;

/** A libpq keyword of a connection parameter, as it starts one `keyword=value` of a connection string. */
const CONNINFO_KEYWORD = /(?:^|\s)(?:host|hostaddr|port|dbname|user|password|passfile|service|sslmode)\s*=/i;
/** One `keyword=value` of a libpq connection string; a value is a word or a single-quoted string. */
const CONNINFO_PARAMETER = /(^|\s)([\w-]+)\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*)/g;

/**
 * Whether `value` is a libpq keyword/value connection string (`host=db user=app password=secret dbname=x`), the
 * other form of a `DATABASE_URL` that PostgreSQL tools take: not a URL, and not a file path either.
 */
export function isKeywordValueConninfo(value: string): boolean {
  return !/^\s*[a-z][a-z0-9+.-]*:/i.test(value) && CONNINFO_KEYWORD.test(value);
}

function isSecretName(raw: string): boolean {
  let name = raw;
  try {
    name = decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    // Not valid percent-encoding: judged as written.
  }
  return SECRET_NAME.test(name);
}

/**
 * `value` with the password of a `scheme://user:password@host` URL replaced by `***` (any scheme, any case:
 * `POSTGRES://` opens a store as well as `postgres://`), and so the value of each query parameter named like a
 * secret (`?password=`, `?api_key=`, `?token=`), or of each such parameter of a libpq keyword/value connection
 * string (`password=secret`); anything else as it is. For logs and error messages.
 *
 * When the parser finds no password yet the value has an '@' after a `user:`, the cut is made on the text:
 * a password with a raw '#' or '/' makes the parser read `http://u:12#ss@c:4318` as host `u`, port 12 and
 * `postgres://app:123/abc@db` as host `app` with a path, and it refuses others outright. This over-cuts a
 * URL with a port and an '@' further on (`http://c:4318/a@b` shows as `http://c:***@b`): hiding too much of a
 * malformed value is the side to err on.
 */
export function redactCredentials(value: string): string {
  if (isKeywordValueConninfo(value))
    return value.replace(CONNINFO_PARAMETER, (whole, lead: string, name: string) =>
      isSecretName(name) ? `${lead}${name}=***` : whole,
    );
  if (!/^\s*[a-z][a-z0-9+.-]*:\/\//i.test(value)) return value;
  return redactUserinfo(value).replace(QUERY_PARAMETER, (whole, sep: string, name: string) =>
    isSecretName(name) ? `${sep}${name}=***` : whole,
  );
}

function redactUserinfo(value: string): string {
  const trimmed = value.trim();
  let parsed: URL | undefined;
  try {
    parsed = new URL(trimmed);
  } catch {
    parsed = undefined;
  }
  if (parsed !== undefined && parsed.password !== '') {
    parsed.password = '***';
    return parsed.toString();
  }
  if (!USERINFO_PASSWORD.test(trimmed)) return parsed === undefined ? trimmed : parsed.toString();
  return trimmed.replace(USERINFO_PASSWORD, '$1:***@');
}

/**
 * The command line `argv` as {@link redactCredentials} shows each argument (`--name=value` too), with the value of
 * each flag of `secretFlags` (`--token`) as `***`, or null when nothing was hidden. For the process title: a command
 * line is readable by every user of the host (`ps`, `/proc/<pid>/cmdline`), and `--store postgres://app:pass@db/x`
 * is how a PostgreSQL store is given.
 */
export function redactedCommandLine(argv: readonly string[], secretFlags: readonly string[] = []): string | null {
  return redactedCommandLineOf(argv, secretFlags, redactCredentials);
}

/**
 * Replaces the process title (what `ps` shows) by the command line without its credentials, when it has any. On
 * Linux the title overwrites the memory `/proc/<pid>/cmdline` is read from; call it first thing, before anything
 * slow. The full arguments stay in `process.argv`. `secretFlags`: flags whose value is hidden whatever it is.
 */
export function hideCredentialsInProcessTitle(secretFlags: readonly string[] = []): void {
  const title = redactedCommandLine(ownCommandLine(), secretFlags);
  if (title !== null) process.title = title;
}

/**
 * The command line as `ps` shows it, else as Node parsed it. On Linux the title must fit in the memory of the
 * original command line (a longer one is cut), so it is rebuilt from that, not from the resolved `process.argv`.
 */
function ownCommandLine(): string[] {
  try {
    return readFileSync('/proc/self/cmdline', 'utf8').split('\0').slice(0, -1);
  } catch {
    return [process.argv0, ...process.execArgv, ...process.argv.slice(1)];
  }
}

/** A JSON header map's entry whose values are secrets: `"authorization":["Bearer abc"]`. */
const SECRET_HEADER_VALUES = /"(authorization|proxy-authorization|cookie)":\[((?:"(?:[^"\\]|\\.)*",?)*)\]/gi;
/** One JSON string. */
const JSON_STRING = /"((?:[^"\\]|\\.)*)"/g;

/**
 * `text` with the values of `authorization`, `proxy-authorization` and `cookie` in JSON header maps replaced by
 * `[redacted]`, keeping an auth scheme (`"Bearer [redacted]"`): grpc-js's `server_call` tracer (GRPC_TRACE) prints
 * every call's headers as such a map.
 */
export function redactHeaderValues(text: string): string {
  return text.replace(
    SECRET_HEADER_VALUES,
    (_whole, name: string, values: string) =>
      `"${name}":[${values.replace(JSON_STRING, (_value, inner: string) => {
        const scheme = /^([A-Za-z][\w-]*) +\S/.exec(inner)?.[1];
        return `"${scheme === undefined ? '' : `${scheme} `}[redacted]"`;
      })}]`,
  );
}
