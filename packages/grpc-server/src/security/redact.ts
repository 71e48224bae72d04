/** Secrets out of what is shown: logs and error messages. @see SECURITY.md */

/**
 * `value` with the password of a `scheme://user:password@host` URL replaced by `***` (any scheme, any case:
 * `POSTGRES://` opens a store as well as `postgres://`); anything else as it is. For logs and error messages.
 */
export function redactCredentials(value: string): string {
  if (!/^\s*[a-z][a-z0-9+.-]*:\/\//i.test(value)) return value;
  try {
    const parsed = new URL(value.trim());
    if (parsed.password !== '') parsed.password = '***';
    return parsed.toString();
  } catch {
    // Not a URL the parser takes (a password with a raw '/' or '#'), yet it may carry `user:password@`: everything
    // from the first ':' after the user to the last '@' is cut.
    return value.trim().replace(/^([a-z][a-z0-9+.-]*:\/\/[^/:@]*):.*@/i, '$1:***@');
  }
}
