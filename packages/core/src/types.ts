/**
 * Domain types shared by every package. @see SPEC §2, §4
 */

/** One App Inbox message exactly as the receiver sees it (the seed's format). @see SPEC §4 */
export interface AppInboxMessage {
  /** Receiver's identifier of the contact. */
  externalCustomerId: string;
  /** UUID: the interaction id; the customer uses it to set status. */
  id: string;
  /** Creation time, milliseconds since the epoch (integer). */
  createdDate: number;
  title: string;
  content: string;
  /** http(s) URL, or empty. */
  image?: string;
  /** http(s) URL, or empty. */
  link?: string;
  category: string;
  /** Optional JSON text the platform attached to the message. */
  customData?: string;
}

/** A message as kept by the service: the receiver's fields plus its expiry. */
export interface StoredMessage extends AppInboxMessage {
  /** Expiry, milliseconds since the epoch; the message is no longer part of any list at or after it. */
  expiresAt: number;
}

/** Basic authentication of the customer's webhook (RFC 7617). The only supported type. */
export interface BasicAuth {
  type: 'basic';
  username: string;
  password: string;
}

/** The webhook configuration of one account. @see SPEC §2 */
export interface WebhookConfig {
  /** http(s) URL the messages are POSTed to; no credentials in it. */
  url: string;
  auth?: BasicAuth;
  /** At most this many messages of one contact in a delivery (the newest). Default 1,000; 1-10,000. */
  maxMessagesPerContact: number;
  /** A disabled webhook keeps accepting messages but sends nothing until enabled. Default true. */
  enabled: boolean;
  /**
   * Standard Webhooks signing secret (`whsec_` + base64), or absent for no signature.
   * @see https://www.standardwebhooks.com/
   */
  signingSecret?: string;
  /**
   * At most this many requests per second to the URL (a token bucket that holds one second's worth, so up to this
   * many may go out at once after a quiet spell), 1-10,000; absent for no limit (the default): then only the
   * server's per-endpoint concurrency bounds the requests. Deliveries over the limit wait for their turn, in order;
   * none is dropped or counted as a failed attempt.
   */
  rateLimitPerSecond?: number;
  /**
   * Static headers every request to the URL carries (an API key, a bearer token, a routing header), names in lower
   * case; absent (or empty) for none. The values are secrets like the password: sealed at rest, never returned by a
   * read, never logged. At most 20; reserved names (the service's own headers, connection and framing headers,
   * `proxy-*`, `app-inbox-*`) are refused, and so is `authorization` together with `auth`.
   */
  headers?: Record<string, string>;
}

/** Outcome of one attempt, as the core classifier decides it. @see SPEC §5 */
export type Verdict = 'delivered' | 'retry' | 'failed';
