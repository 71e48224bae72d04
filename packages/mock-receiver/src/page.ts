/**
 * The QA page served at `GET /`: one self-contained HTML document (no external assets) that lists the
 * received deliveries newest first and updates live from the `/__events` stream (Server-Sent Events).
 * Everything from a request is inserted with `textContent`, never as HTML: bodies are untrusted.
 */

/** Most rows the page keeps; older rows are removed so a long load test cannot freeze the tab. */
export const PAGE_MAX_ROWS = 500;

/** The Content-Security-Policy of the page: only its own inline code (by nonce) and same-origin requests. */
export function pageSecurityPolicy(nonce: string): string {
  return [
    "default-src 'none'",
    `script-src 'nonce-${nonce}'`,
    `style-src 'nonce-${nonce}'`,
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

const STYLE = `
  :root { color-scheme: light dark; font-family: system-ui, sans-serif; font-size: 14px; }
  body { margin: 0; padding: 1rem 1.5rem; }
  header { display: flex; gap: 1rem; align-items: baseline; flex-wrap: wrap; }
  h1 { font-size: 1.25rem; margin: 0; }
  #live { font-size: .85rem; padding: .1rem .5rem; border-radius: 1rem; background: #8884; }
  #live[data-state="live"] { background: #2a84; }
  #stats { color: #888; }
  table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
  th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #8883; vertical-align: top; }
  tr.delivery { cursor: pointer; }
  tr.delivery:hover { background: #8881; }
  td.status { font-weight: 600; font-variant-numeric: tabular-nums; }
  td.status[data-class="2"] { color: #2a8; } td.status[data-class="4"] { color: #c80; }
  td.status[data-class="5"], td.status[data-class="x"] { color: #d33; }
  .tag { font-size: .75rem; padding: 0 .35rem; margin-left: .3rem; border-radius: .3rem; background: #8883; }
  pre { margin: 0; max-height: 32rem; overflow: auto; white-space: pre-wrap; word-break: break-all; }
  td.mono, pre { font-family: ui-monospace, monospace; font-size: .8rem; }
  #empty { color: #888; margin-top: 1rem; }
`;

const SCRIPT = `
(() => {
  'use strict';
  const MAX_ROWS = ${PAGE_MAX_ROWS};
  const tbody = document.getElementById('rows');
  const empty = document.getElementById('empty');
  const live = document.getElementById('live');
  const stats = document.getElementById('stats');
  const seen = new Map();

  function cell(text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }
  function time(iso) {
    const d = new Date(iso);
    return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }
  function answerText(r) {
    return r.answer.status === null ? r.answer.outcome : String(r.answer.status);
  }
  function updateEmpty() { empty.hidden = seen.size > 0; }

  function add(r) {
    if (seen.has(r.seq)) return;
    const tr = document.createElement('tr');
    tr.className = 'delivery';
    tr.dataset.seq = String(r.seq);
    tr.append(
      cell(time(r.receivedAt)),
      cell(r.method + ' ' + r.path, 'mono'),
      cell(r.externalCustomerIds.length ? r.externalCustomerIds.join(', ') : '—', 'contacts'),
      cell(r.messageCount === null ? '—' : String(r.messageCount), 'count'),
    );
    const status = cell(answerText(r), 'status');
    status.dataset.class = r.answer.status === null ? 'x' : String(r.answer.status)[0];
    if (r.answer.ruleId !== null) {
      const tag = document.createElement('span'); tag.className = 'tag'; tag.textContent = 'rule ' + r.answer.ruleId;
      status.append(tag);
    }
    if (r.signature !== 'not_required') {
      const tag = document.createElement('span'); tag.className = 'tag'; tag.textContent = 'signature ' + r.signature;
      status.append(tag);
    }
    if (r.duplicate) {
      const tag = document.createElement('span'); tag.className = 'tag'; tag.textContent = 'duplicate';
      status.append(tag);
    }
    tr.append(status, cell(r.deliveryId ?? '—', 'mono'), cell(r.durationMs + ' ms'));
    tr.addEventListener('click', () => toggle(r.seq, tr));
    // Newest first: before the first row with a smaller seq (events and the first fetch may interleave).
    let before = null;
    for (const row of tbody.querySelectorAll('tr.delivery')) {
      if (Number(row.dataset.seq) < r.seq) { before = row; break; }
    }
    tbody.insertBefore(tr, before);
    seen.set(r.seq, tr);
    while (seen.size > MAX_ROWS) {
      const oldest = Math.min(...seen.keys());
      remove(oldest);
    }
    updateEmpty();
  }
  function remove(seq) {
    const tr = seen.get(seq);
    if (!tr) return;
    if (tr.nextSibling && tr.nextSibling.classList.contains('detail')) tr.nextSibling.remove();
    tr.remove();
    seen.delete(seq);
  }
  async function toggle(seq, tr) {
    const next = tr.nextSibling;
    if (next && next.classList.contains('detail')) { next.remove(); return; }
    const detail = document.createElement('tr');
    detail.className = 'detail';
    const td = document.createElement('td');
    td.colSpan = 7;
    const pre = document.createElement('pre');
    pre.className = 'body';
    pre.textContent = 'loading…';
    td.append(pre);
    detail.append(td);
    tr.after(detail);
    try {
      const res = await fetch('/__received/' + seq);
      if (!res.ok) { pre.textContent = 'no longer kept (' + res.status + ')'; return; }
      const r = await res.json();
      const body = r.body !== null ? JSON.stringify(r.body, null, 2) : (r.bodyText ?? '(empty body)');
      pre.textContent = body + '\\n\\n' + JSON.stringify(r.headers, null, 2);
    } catch (e) {
      pre.textContent = 'could not load: ' + e;
    }
  }
  let statsTimer = null;
  function refreshStats() {
    if (statsTimer !== null) return;
    statsTimer = setTimeout(async () => {
      statsTimer = null;
      try {
        const s = await (await fetch('/__stats')).json();
        stats.textContent = s.received + ' received, ' + s.dropped + ' no longer kept, ' +
          s.duplicateRequests + ' duplicate' + (s.duplicateRequests === 1 ? '' : 's');
      } catch { /* the stream's reconnect will bring the page back */ }
    }, 200);
  }
  function clearRows() {
    for (const seq of [...seen.keys()]) remove(seq);
    updateEmpty();
  }

  function load() {
    fetch('/__received?summary=1&limit=' + MAX_ROWS)
      .then((res) => res.json())
      .then((data) => { for (const r of data.records) add(r); refreshStats(); })
      .catch(() => {});
  }
  // Subscribed first (the stream is open), then load what is already there: nothing falls between the two (add()
  // dedupes by seq). Again at every reconnect: what arrived while the stream was down (or dropped, when this tab
  // stopped reading it) is shown too.
  const events = new EventSource('/__events');
  events.addEventListener('open', () => { live.textContent = 'live'; live.dataset.state = 'live'; load(); });
  events.addEventListener('error', () => { live.textContent = 'reconnecting…'; live.dataset.state = 'off'; });
  events.addEventListener('record', (e) => { add(JSON.parse(e.data)); refreshStats(); });
  events.addEventListener('clear', () => { clearRows(); refreshStats(); });
  document.getElementById('clear').addEventListener('click', () => { fetch('/__received', { method: 'DELETE' }); });
})();
`;

/** The page, with `nonce` on its inline style and script. */
export function renderPage(nonce: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mock receiver — deliveries</title>
<link rel="icon" href="data:,">
<style nonce="${nonce}">${STYLE}</style>
</head>
<body>
<header>
  <h1>Mock receiver</h1>
  <span id="live" data-state="off">connecting…</span>
  <span id="stats"></span>
  <button id="clear" type="button">Clear</button>
</header>
<table>
  <thead><tr><th>Time</th><th>Request</th><th>Contact</th><th>Messages</th><th>Answer</th><th>Delivery id</th><th>Took</th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<p id="empty">No deliveries yet. POST a JSON array of messages to any path of this server.</p>
<script nonce="${nonce}">${SCRIPT}</script>
</body>
</html>
`;
}
