/**
 * The QA page in real headless Chromium (Debian's package, driven by playwright-core; no browser download):
 * a delivery posted after the page loaded appears without a reload, newest first, and a click shows its body.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser } from 'playwright-core';
import { request } from 'undici';
import { message, post, startReceiver } from './helpers.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let browser: Browser;

// playwright's launch() gives every browser a fresh temporary profile (user data dir) and removes it on close.
beforeAll(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

afterAll(async () => {
  await browser?.close();
});

describe('GET / (the QA page)', () => {
  it('is self-contained HTML with a strict Content-Security-Policy', async () => {
    const receiver = await startReceiver();
    const res = await request(`${receiver.url}/`);
    const html = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(res.headers['content-security-policy']).toContain("default-src 'none'");
    // No external assets: the only URL is the empty data: icon (so the browser does not GET /favicon.ico).
    expect(html).not.toMatch(/<(script|link|img)[^>]+(src|href)="(?!data:)/);
    expect(receiver.records.list()).toEqual([]);
  });

  it('shows deliveries live, newest first, and the body on click', async () => {
    const receiver = await startReceiver({ maxMessagesPerContact: 1 });
    await post(receiver, { deliveryId: 'before-load', body: [message('early-bird')] });

    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    await page.goto(`${receiver.url}/`);
    await page.locator('#live[data-state="live"]').waitFor({ timeout: 10_000 });
    await page.locator('tr.delivery', { hasText: 'before-load' }).waitFor();

    // Posted after the page loaded: must appear without a reload (the marker would be gone after one).
    await page.evaluate(() => Object.assign(globalThis, { loadedOnce: true }));
    const title = 'Shown <b>without</b> reload';
    await post(receiver, { deliveryId: 'after-load', body: [message('late-bird', { title })] });
    await post(receiver, { deliveryId: 'too-many', body: [message('crowd'), message('crowd')] });
    const rows = page.locator('tr.delivery');
    await expect.poll(() => rows.count(), { timeout: 10_000 }).toBe(3);
    expect(await rows.nth(0).textContent()).toContain('429');
    expect(await rows.nth(0).locator('td.contacts').textContent()).toBe('crowd');
    expect(await rows.nth(0).locator('td.count').textContent()).toBe('2');
    expect(await rows.nth(1).textContent()).toContain('after-load');
    expect(await rows.nth(1).textContent()).toContain('200');
    expect(await rows.nth(2).textContent()).toContain('before-load');

    expect(await page.evaluate(() => (globalThis as { loadedOnce?: boolean }).loadedOnce)).toBe(true);
    // The page's own requests are not deliveries.
    expect(receiver.records.stats().received).toBe(3);

    await rows.nth(1).click();
    const body = page.locator('tr.detail pre.body');
    await expect.poll(() => body.textContent(), { timeout: 10_000 }).toContain(title);
    // Bodies are text, never markup.
    expect(await page.locator('tr.detail b').count()).toBe(0);

    await request(`${receiver.url}/__received`, { method: 'DELETE' }).then((r) => r.body.dump());
    await expect.poll(() => rows.count(), { timeout: 10_000 }).toBe(0);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('after its event stream was cut, shows what arrived meanwhile', async () => {
    const receiver = await startReceiver();
    const streams: Socket[] = [];
    receiver.server.on('request', (req: IncomingMessage) => {
      if (req.url === '/__events') streams.push(req.socket);
    });
    const page = await browser.newPage();
    await page.goto(`${receiver.url}/`);
    await page.locator('#live[data-state="live"]').waitFor({ timeout: 10_000 });
    // Cut (as the receiver does to a stream that stopped reading), then a delivery before the EventSource
    // reconnects (it waits `retry: 1000` ms): only a reload of the list on reconnect can show it.
    for (const socket of streams) socket.destroy();
    await post(receiver, { deliveryId: 'while-cut', body: [message('c-1')] });
    await page.locator('tr.delivery', { hasText: 'while-cut' }).waitFor({ timeout: 10_000 });
    await page.close();
  });
});
