/**
 * The server's signatures checked by the mock receiver's own Standard Webhooks verifier (`signingSecrets`), end to
 * end: a real server and gRPC client, real mock receivers that refuse (401) what does not verify, as a customer's
 * receiver would. The receiver's records say what its check found (`valid`, `wrong`) and which of its secrets
 * verified; the signing-secret rotation is seen from the receiver's side: during the overlap
 * (`signingSecretOverlapSeconds`) a receiver that knows only the new secret, or only the old one, accepts.
 */
import { randomBytes } from 'node:crypto';
import { createMockReceiver, type MockReceiver } from '@app-inbox/mock-receiver';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DeliveryState } from '../../src/gen/app_inbox/v1/delivery.js';
import {
  accountId,
  deliveryIn,
  eventually,
  inboxMessage,
  startTestServer,
  storeUrls,
  type TestServer,
} from './harness.js';

const newSecret = () => `whsec_${randomBytes(32).toString('base64')}`;
const { DELIVERY_STATE_DELIVERED: DELIVERED, DELIVERY_STATE_FAILED: FAILED } = DeliveryState;

describe.each(storeUrls())('signatures verified by the mock receiver ($engine)', (target) => {
  let t: TestServer | undefined;
  const receivers: MockReceiver[] = [];

  afterEach(async () => {
    await t?.stop();
    t = undefined;
    await Promise.all(receivers.splice(0).map((r) => r.close()));
  });
  afterAll(() => target.release());

  /** A mock receiver that checks signatures with `secrets` only. */
  async function receiverKnowing(...secrets: string[]): Promise<MockReceiver> {
    const receiver = await createMockReceiver({ signingSecrets: secrets });
    receivers.push(receiver);
    return receiver;
  }

  /** Publishes one message to `account` and gives its delivery id. */
  async function publishOne(account: string, contact: string): Promise<string> {
    const published = await t!.clients.publishMessages({ accountId: account, messages: [inboxMessage(contact)] });
    return published.deliveries[0]!.deliveryId;
  }

  /**
   * What `receiver` recorded of `deliveryId` (status, branch, signature check, secret index, per request), once it
   * holds `count` requests: a request is recorded when its exchange ends, which may be just after the server saw it.
   */
  const seen = (receiver: MockReceiver, deliveryId: string, count = 1) =>
    eventually(
      () => {
        const records = receiver.records.list({ deliveryId });
        return records.length >= count ? records : undefined;
      },
      5_000,
      `${count} request(s) of ${deliveryId}`,
    ).then((records) => records.map((r) => [r.answer.status, r.answer.branch, r.signature, r.signatureSecretIndex]));

  it("with the webhook's secret: delivered, recorded valid; with another secret: 401 on every attempt, recorded wrong", async () => {
    t = await startTestServer(await target.newUrl(), { maxAttempts: 3 });
    const secret = newSecret();
    const [right, wrong] = [await receiverKnowing(secret), await receiverKnowing(newSecret())];
    const [good, bad] = [accountId('sig-good'), accountId('sig-bad')];
    await t.clients.upsertWebhook({ accountId: good, url: `${right.url}/hook`, signingSecret: secret });
    await t.clients.upsertWebhook({ accountId: bad, url: `${wrong.url}/hook`, signingSecret: secret });

    const [delivered, refused] = [await publishOne(good, 'c-1'), await publishOne(bad, 'c-1')];
    expect(await deliveryIn(t.clients, delivered, [DELIVERED])).toMatchObject({ attemptCount: 1 });
    expect(await seen(right, delivered)).toEqual([[200, 'accepted', 'valid', 0]]);

    // 401 is retried (SPEC §5: the customer may fix its side), until the attempts run out.
    expect(await deliveryIn(t.clients, refused, [FAILED])).toMatchObject({
      attemptCount: 3,
      lastError: 'max_attempts:http_401',
    });
    expect(await seen(wrong, refused, 3)).toEqual(
      Array.from({ length: 3 }, () => [401, 'invalid_signature', 'wrong', null]),
    );
  });

  it('after UpdateWebhook changes the secret, a receiver that knows only the new one or only the old one accepts during the overlap', async () => {
    t = await startTestServer(await target.newUrl(), { signingSecretOverlapSeconds: 600 });
    const [oldSecret, newSecretValue] = [newSecret(), newSecret()];
    const [onlyOld, onlyNew] = [await receiverKnowing(oldSecret), await receiverKnowing(newSecretValue)];
    const account = accountId('sig-rotate');
    await t.clients.upsertWebhook({ accountId: account, url: `${onlyOld.url}/hook`, signingSecret: oldSecret });
    const before = await publishOne(account, 'c-0');
    await deliveryIn(t.clients, before, [DELIVERED]);
    expect(await seen(onlyOld, before)).toEqual([[200, 'accepted', 'valid', 0]]);

    await t.clients.updateWebhook({
      accountId: account,
      updateMask: ['signing_secret'],
      signingSecret: newSecretValue,
    });
    // The receiver has not heard of the new secret yet: the old one's signature, beside the new one's, verifies.
    const stillOld = await publishOne(account, 'c-1');
    await deliveryIn(t.clients, stillOld, [DELIVERED]);
    expect(await seen(onlyOld, stillOld)).toEqual([[200, 'accepted', 'valid', 0]]);

    // A receiver that moved to the new secret (the URL changed alone: the rotation runs on).
    await t.clients.updateWebhook({ accountId: account, updateMask: ['url'], url: `${onlyNew.url}/hook` });
    const moved = await publishOne(account, 'c-2');
    await deliveryIn(t.clients, moved, [DELIVERED]);
    expect(await seen(onlyNew, moved)).toEqual([[200, 'accepted', 'valid', 0]]);
  });

  it('without an overlap (signingSecretOverlapSeconds 0), a receiver that knows only the old secret refuses at once', async () => {
    t = await startTestServer(await target.newUrl(), { signingSecretOverlapSeconds: 0, maxAttempts: 2 });
    const [oldSecret, newSecretValue] = [newSecret(), newSecret()];
    const onlyOld = await receiverKnowing(oldSecret);
    const account = accountId('sig-no-overlap');
    await t.clients.upsertWebhook({ accountId: account, url: `${onlyOld.url}/hook`, signingSecret: oldSecret });
    await t.clients.updateWebhook({
      accountId: account,
      updateMask: ['signing_secret'],
      signingSecret: newSecretValue,
    });
    const refused = await publishOne(account, 'c-0');
    expect(await deliveryIn(t.clients, refused, [FAILED])).toMatchObject({ lastError: 'max_attempts:http_401' });
    expect(await seen(onlyOld, refused, 2)).toEqual(
      Array.from({ length: 2 }, () => [401, 'invalid_signature', 'wrong', null]),
    );
  });
});
