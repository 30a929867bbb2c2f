// Orquestra's operator dashboard: a single page over the JSON API, no build
// step and no dependencies. Every value from the API reaches the page as
// text (textContent / attributes), never as HTML.
//
// Sections, in order: helpers, the API and its live feed, login, bots,
// lists (tasks, jobs), people, detail pages, deliveries, the overview (its
// chart drawn as SVG here), a bot's page, task definitions, scripts, and
// the router (`ROUTES`: one view function per hash).
//
// Auth: the token typed at login lives in sessionStorage and goes out only
// as a Bearer header, the live event stream included (read with fetch, not
// EventSource, so it never appears in a URL, a log or the history).

const TOKEN_KEY = 'orq.token';
const FINAL = new Set(['COMPLETE', 'FAILED', 'TIMEOUT', 'CANCELED']);
const BOTS_REFRESH_MS = 3000;
// The overview is read again this often, and within a second of a job's
// status change on the live feed.
const OVERVIEW_REFRESH_MS = 5000;
const OVERVIEW_SOON_MS = 1000;
// The live stream's reconnection delay: doubles from the first to the last.
const STREAM_RETRY_MS = [1000, 15000];

const session = { token: sessionStorage.getItem(TOKEN_KEY), me: null };
// Run when the view changes: timers and event streams of the old view.
let teardown = [];
// Counts view changes: work started for a view that is gone stays quiet.
let viewSerial = 0;
// Names of bots and scripts by id, read at most once per view (`lookup`).
let lookups = {};

// ---------------------------------------------------------------- helpers

/** An element: `attrs` are attributes (`testid` → data-testid, `on…` →
 * listeners, non-strings → properties), children nodes or text. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'testid') el.dataset.testid = value;
    else if (key === 'class') el.className = value;
    else if (typeof value !== 'string' && key in el) el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const $ = (id) => document.getElementById(id);

function badge(status) {
  return h('span', { class: `badge st-${status}` }, status ?? '—');
}

const isAdmin = () => session.me?.role === 'admin';
// Who may run task definitions and cancel jobs.
const canRun = () => session.me?.role === 'admin' || session.me?.role === 'user';

/** A link to a bot's page, showing its name: bots' ids made close together
 * share their first characters, so an id alone tells bots apart badly. */
function botLink(id, name) {
  if (!id) return '—';
  return h('a', { href: `#/bots/${id}`, testid: 'bot-link', 'data-bot-id': id }, name || id.slice(0, 8));
}

/** `Map(id → item)` of the customer's bots or scripts (`kind`), read once
 * per view. */
function lookup(kind) {
  lookups[kind] ??= (async () => {
    const path = kind === 'bots' ? `/bots${query({ limit: 1000 })}` : customerPath(`/script${query({ limit: 1000 })}`);
    const items = await get(path);
    return new Map(items.map((x) => [x.id, x]));
  })();
  return lookups[kind];
}

/** The name of a bot or script (`kind`) by id, as a link when `href` is
 * given: its short id until the name arrives (or if it never does). */
function nameOf(kind, id, href) {
  if (!id) return '—';
  const el = href ? h('a', { href, testid: `${kind}-name` }, id.slice(0, 8)) : h('span', { testid: `${kind}-name` }, id.slice(0, 8));
  lookup(kind).then((items) => {
    const item = items.get(id);
    if (item) el.textContent = item.name;
  }).catch(() => { /* the short id stays */ });
  return el;
}

/** A span of seconds in words: "45 s", "3 min 20 s", "2 h 5 min", "3 d 4 h". */
function duration(secs) {
  const s = Math.max(0, Math.round(Number(secs) || 0));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ''}`;
  if (s < 86400) return `${Math.floor(s / 3600)} h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)} min` : ''}`;
  return `${Math.floor(s / 86400)} d${Math.floor((s % 86400) / 3600) ? ` ${Math.floor((s % 86400) / 3600)} h` : ''}`;
}

/** An SVG element (`h` for the SVG namespace): attributes only, no listeners. */
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'testid') el.dataset.testid = value;
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  const ago = Math.round((Date.now() - d.getTime()) / 1000);
  // Deadlines and expiries lie ahead; a few seconds of clock skew do not.
  const ahead = ago < -5;
  const span = ahead ? -ago : Math.max(ago, 0);
  const amount = span < 60 ? `${span} s` : span < 3600 ? `${Math.round(span / 60)} min` : null;
  const rel = amount === null ? d.toLocaleString() : ahead ? `in ${amount}` : `${amount} ago`;
  return h('time', { datetime: iso, title: d.toLocaleString() }, rel);
}

function progress(percent, testid) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  return h('progress', { max: 100, value, testid, title: `${value}%` }, `${value}%`);
}

function table(headers, rows, empty = 'Nothing here yet.') {
  const body = rows.length
    ? rows
    : [h('tr', {}, h('td', { colSpan: headers.length, class: 'empty' }, empty))];
  return h('table', {}, h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))), h('tbody', {}, body));
}

function showError(err) {
  const detail = err?.details?.field ? ` (field: ${err.details.field})` : '';
  $('banner-text').textContent = err instanceof ApiError
    ? `${err.message}${detail} [${err.status} ${err.code}]`
    : String(err?.message ?? err);
  $('banner').hidden = false;
}

function clearError() {
  $('banner').hidden = true;
  $('banner-text').textContent = '';
}

/** Runs `fn`, showing any failure in the banner; a failure of a view
 * that was left meanwhile is dropped (it must not log out or show). */
async function guarded(fn) {
  const serial = viewSerial;
  try {
    return await fn();
  } catch (err) {
    if (serial !== viewSerial) return undefined;
    if (err instanceof ApiError && err.status === 401) return logout(err);
    showError(err);
  }
}

// -------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body) {
    const e = body && typeof body === 'object' ? body.error ?? {} : {};
    super(e.message ?? (typeof body === 'string' && body ? body.slice(0, 300) : `HTTP ${status}`));
    this.status = status;
    this.code = e.code ?? `http_${status}`;
    this.details = e.details ?? null;
  }
}

/** `{data, next}`: the parsed body and the X-Next-Cursor of a page. */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: keep the text for the error message.
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return { data, next: response.headers.get('x-next-cursor') };
}

const get = async (path) => (await api('GET', path)).data;
const post = async (path, body) => (await api('POST', path, body)).data;
const put = async (path, body) => (await api('PUT', path, body)).data;
const del = async (path) => (await api('DELETE', path)).data;

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

const customerPath = (rest) => `/${encodeURIComponent(session.me.customer)}${rest}`;

/** A parser of a text/event-stream body, after the SSE spec: lines end
 * with CRLF, LF or CR; a blank line dispatches the event; `data:` lines are
 * joined with "\n"; lines starting with ":" are comments; one space after
 * the colon is dropped; `retry:` is ignored (the backoff is ours). Calls
 * `onMessage({type, data, id})` for each event with data; `lastId` is the
 * last event ID as of the last dispatch. */
function sseParser(onMessage) {
  const parser = { lastId: '' };
  let pending = '';
  let data = null;
  let type = '';
  let idBuffer = '';
  const line = (text) => {
    if (text === '') {
      parser.lastId = idBuffer;
      const event = data === null ? null : { type: type || 'message', data, id: idBuffer };
      data = null;
      type = '';
      if (event) onMessage(event);
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const name = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'data') data = data === null ? value : `${data}\n${value}`;
    else if (name === 'event') type = value;
    else if (name === 'id' && !value.includes('\0')) idBuffer = value;
  };
  /** Takes the next decoded piece of the body. */
  parser.push = (chunk) => {
    pending += chunk;
    let start = 0;
    for (let i = 0; i < pending.length; i += 1) {
      const c = pending[i];
      if (c !== '\n' && c !== '\r') continue;
      // A CR at the end may be the first half of a CRLF: wait for more.
      if (c === '\r' && i + 1 === pending.length) break;
      line(pending.slice(start, i));
      if (c === '\r' && pending[i + 1] === '\n') i += 1;
      start = i + 1;
    }
    pending = pending.slice(start);
  };
  return parser;
}

/** Follows the live event feed (of one job, or all the caller may see);
 * calls `onEvent` with each event. The token goes as a header (fetch, not
 * EventSource); when the stream ends or fails it reconnects with backoff
 * (1 s doubling to 15 s), sending `Last-Event-ID` so nothing is missed; a
 * refused token (401/403) logs out. Stopped with the view, or by the
 * `close()` of what it returns. Call it only while its view is current. */
function follow(jobId, onEvent, indicator) {
  const controller = new AbortController();
  const params = jobId ? { job_id: jobId, after: 0 } : {};
  let stopped = false;
  let lastId = '';
  const show = (state) => {
    if (!indicator || stopped) return;
    indicator.className = state ? `live ${state}` : 'live';
    indicator.textContent = state === 'on' ? 'live' : state === 'off' ? 'reconnecting…' : '';
  };
  const close = () => {
    show('');
    stopped = true;
    controller.abort();
  };
  const pause = (ms) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    controller.signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
  const deliver = (message) => {
    if (stopped || message.type !== 'message') return;
    try {
      onEvent(JSON.parse(message.data));
    } catch (err) {
      showError(err);
    }
  };

  (async () => {
    let delay = STREAM_RETRY_MS[0];
    while (!stopped) {
      try {
        const headers = { Authorization: `Bearer ${session.token}`, Accept: 'text/event-stream' };
        if (lastId) headers['Last-Event-ID'] = lastId;
        const response = await fetch(`/events/stream${query(params)}`, {
          headers, cache: 'no-store', signal: controller.signal,
        });
        if (stopped) return;
        if (!response.ok) {
          const text = await response.text().catch(() => '');
          let body = text;
          try { body = JSON.parse(text); } catch { /* keep the text */ }
          const err = new ApiError(response.status, body);
          if (stopped) return;
          if (response.status === 401 || response.status === 403) {
            // A revoked token: retrying cannot help.
            close();
            logout(err);
            return;
          }
          if (response.status < 500 && response.status !== 408 && response.status !== 429) {
            close();
            showError(err);
            return;
          }
          throw err;
        }
        show('on');
        const parser = sseParser(deliver);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { done, value } = await reader.read();
          if (done || stopped) break;
          parser.push(decoder.decode(value, { stream: true }));
          lastId = parser.lastId || lastId;
          // Data flows: the next break starts the backoff over.
          delay = STREAM_RETRY_MS[0];
        }
      } catch {
        // A network error, an abort or a 5xx: retried below unless stopped.
      }
      if (stopped) return;
      show('off');
      await pause(delay);
      delay = Math.min(delay * 2, STREAM_RETRY_MS[1]);
    }
  })();
  teardown.push(close);
  return { close };
}

/** The percent a PERCENT_CHANGE event carries ("40% (2/5 rows)"). */
const eventPercent = (e) => Number.parseInt(e.description, 10);

// ------------------------------------------------------------ login/out

function logout(err) {
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = null;
  session.me = null;
  route().then(() => err && showError(err));
}

function loginView() {
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', required: true, testid: 'login-token', placeholder: 'orq_…' });
  const form = h('form', {
    onsubmit: async (ev) => {
      ev.preventDefault();
      clearError();
      session.token = input.value.trim();
      try {
        session.me = await get('/me');
        sessionStorage.setItem(TOKEN_KEY, session.token);
        // A deep link opened before logging in is kept.
        const target = /^#\/./.test(location.hash) ? location.hash : home();
        if (location.hash === target) await route();
        else location.hash = target;
      } catch (err) {
        session.token = null;
        showError(err);
      }
    },
  },
  h('label', {}, 'Access token', input),
  h('button', { type: 'submit', class: 'primary', testid: 'login-submit' }, 'Log in'));
  return h('div', { class: 'card login' }, h('h1', {}, 'Log in'),
    h('p', { class: 'muted' }, 'Paste an access token (for example the admin token deploy/up.sh prints).'), form);
}

// ------------------------------------------------------------------- bots

/* Whether the view being built is still the one shown: false once it is
 * left (work finishing after that must not render into it). */
function viewShown() {
  let shown = true;
  teardown.push(() => { shown = false; });
  return () => shown;
}

/* Runs `refresh` now and then every `ms`, one at a time, while `shown()`
 * (a refresh in flight when the view is left schedules no next one). */
function pollWhileShown(refresh, ms, shown) {
  let timer = null;
  const tick = async () => {
    await guarded(refresh);
    if (!shown()) return;
    timer = setTimeout(tick, ms);
  };
  teardown.push(() => clearTimeout(timer));
  tick();
}

function botsView() {
  const holder = h('div', { testid: 'bots' });
  const shown = viewShown();
  const refresh = async () => {
    // What each bot has in hand (ASSIGNED or RUNNING): CSV tasks and runs
    // of task definitions, in a fixed number of requests, grouped here.
    // `/tasks` takes one status at a time; `/{customer}/job` takes several.
    const [bots, assigned, running, jobs] = await Promise.all([
      get(`/bots${query({ limit: 1000 })}`),
      get(`/tasks${query({ status: 'ASSIGNED', limit: 1000 })}`),
      get(`/tasks${query({ status: 'RUNNING', limit: 1000 })}`),
      get(customerPath(`/job${query({ status: 'ASSIGNED,RUNNING', limit: 1000 })}`)),
    ]);
    if (!shown()) return;
    const work = new Map();
    const add = (botId, href, text, status) => {
      if (!botId) return;
      const link = h('a', { href, title: status, testid: 'bot-work', 'data-status': status }, text);
      const item = status === 'ASSIGNED' ? [link, h('span', { class: 'muted' }, ' (assigned)')] : [link];
      work.set(botId, [...(work.get(botId) ?? []), item]);
    };
    for (const t of [...assigned, ...running]) add(t.bot_id, `#/tasks/${t.id}`, t.description || t.id.slice(0, 8), t.status);
    for (const j of jobs) add(j.bot_id, `#/jobs/${j.id}`, j.name || j.id.slice(0, 8), j.status);
    const rows = bots.map((b) => h('tr', { testid: 'bot-row', 'data-bot': b.name },
      h('td', {}, h('strong', {}, botLink(b.id, b.name)), h('div', { class: 'muted mono' }, `${b.ip_address} · ${b.delivery}`)),
      h('td', {}, badge(b.status), b.draining ? h('span', { class: 'badge st-WARNING' }, 'draining') : null),
      h('td', {}, `${b.active_jobs} / ${b.capacity}`),
      h('td', {}, b.systems.join(', ') || '—'),
      h('td', {}, when(b.last_heartbeat_at)),
      h('td', {}, (work.get(b.id) ?? []).flatMap((item, i) => (i ? [', ', ...item] : item))),
      h('td', { class: 'actions' }, b.draining
        ? h('button', { onclick: () => guarded(async () => { await post(`/bots/${b.id}/resume`); await refresh(); }) }, 'Resume')
        : h('button', { onclick: () => guarded(async () => { await post(`/bots/${b.id}/drain`); await refresh(); }) }, 'Drain'))));
    holder.replaceChildren(table(['Bot', 'Status', 'Jobs', 'Systems', 'Last heartbeat', 'Current work', ''], rows, 'No bots registered.'));
  };
  pollWhileShown(refresh, BOTS_REFRESH_MS, shown);
  return [h('h1', {}, 'Bots'), holder];
}

// ------------------------------------------------------------------ lists

/** A filtered list, newest first, that pages with X-Next-Cursor ("Load more") and, when
 * `live`, updates its rows' status and progress from the live feed.
 * `row(item, reload)` makes an item's row (or rows); `reload()` reads the
 * list again from its start. `level` is its title's heading (`h2` for a
 * list within a page). */
function listView({ title, path, filters, headers, row, top = [], live = true, testid = 'list', level = 'h1' }) {
  const values = Object.fromEntries(filters.map((f) => [f.name, '']));
  const body = h('tbody');
  const more = h('button', { class: 'more', hidden: true, testid: 'load-more' }, 'Load more');
  const indicator = h('span', { class: 'live', testid: 'live' });
  const rows = new Map();
  let cursor = null;
  const shown = viewShown();

  const load = (append) => guarded(async () => {
    const { data, next } = await api('GET', `${path}${query({ ...values, order: 'desc', limit: 50, after: append ? cursor : '' })}`);
    if (!shown()) return;
    if (!append) { body.replaceChildren(); rows.clear(); }
    for (const item of data) {
      const tr = row(item, reload);
      rows.set(item.id, { tr, item });
      body.append(...[tr].flat());
    }
    if (!body.children.length) body.append(h('tr', {}, h('td', { colSpan: headers.length, class: 'empty' }, 'Nothing matches.')));
    cursor = next;
    more.hidden = !next;
  });
  const reload = () => load(false);
  more.addEventListener('click', () => load(true));

  if (live) {
    follow(null, (e) => {
      const known = rows.get(e.job_id);
      if (!known) return;
      if (e.type === 'STATUS_CHANGE' && e.to_status) {
        known.item.status = e.to_status;
        // Finishing sets 100% without a PERCENT_CHANGE event.
        if (e.to_status === 'COMPLETE') known.item.percent = 100;
      } else if (e.type === 'PERCENT_CHANGE' && !Number.isNaN(eventPercent(e))) {
        known.item.percent = eventPercent(e);
      } else {
        return;
      }
      const tr = row(known.item, reload);
      known.tr.replaceWith(tr);
      known.tr = tr;
    }, indicator);
  }

  const controls = filters.map((f) => h('label', {}, f.label, f.options
    ? h('select', { onchange: (ev) => { values[f.name] = ev.target.value; reload(); }, testid: `filter-${f.name}` },
      f.options.map((o) => h('option', { value: o }, o || 'any')))
    : h('input', { placeholder: 'any', testid: `filter-${f.name}`, onchange: (ev) => { values[f.name] = ev.target.value.trim(); reload(); } })));
  reload();
  return [
    h('div', { class: 'head' }, h(level, {}, title), h('span', { class: 'spacer' }), live ? indicator : null),
    ...top,
    h('div', { class: 'toolbar' }, controls, h('button', { onclick: reload }, 'Refresh'),
      h('span', { class: 'muted' }, 'newest first')),
    h('table', { testid }, h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))), body),
    more,
  ];
}

const JOB_STATUSES = ['', 'WAITING', 'ASSIGNED', 'RUNNING', 'COMPLETE', 'FAILED', 'TIMEOUT', 'CANCELED'];

function taskRow(t) {
  return h('tr', { testid: 'task-row', 'data-id': t.id },
    h('td', {}, h('a', { href: `#/tasks/${t.id}` }, t.description || '(no description)')),
    h('td', {}, t.system),
    h('td', {}, badge(t.status), waitingReason(t)),
    h('td', {}, progress(t.percent), ` ${t.percent}%`),
    h('td', {}, when(t.created_at)),
    h('td', { testid: 'task-bot' }, botLink(t.bot_id, t.bot_name)));
}

/** The standard base64 of a file's bytes. */
async function base64File(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function uploadForm() {
  const systems = h('datalist', { id: 'systems' });
  guarded(async () => {
    const bots = await get('/bots?limit=1000');
    const names = [...new Set(bots.flatMap((b) => b.systems))].sort();
    systems.replaceChildren(...names.map((s) => h('option', { value: s })));
  });
  const description = h('input', { name: 'description', testid: 'upload-description', placeholder: 'what this batch is' });
  const system = h('input', { name: 'system', list: 'systems', required: true, testid: 'upload-system', placeholder: 'e.g. Vivo360' });
  const file = h('input', { type: 'file', name: 'file', accept: '.csv,text/csv', required: true, testid: 'upload-file' });
  const submit = h('button', { type: 'submit', class: 'primary', testid: 'upload-submit' }, 'Upload CSV');
  const form = h('form', {
    class: 'grid',
    onsubmit: (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      guarded(async () => {
        const [csv] = file.files;
        const task = await post('/tasks', {
          description: description.value,
          system: system.value.trim(),
          attachment: await base64File(csv),
        });
        location.hash = `#/tasks/${task.id}`;
      }).finally(() => { submit.disabled = false; });
    },
  },
  h('label', {}, 'Description', description),
  h('label', {}, 'System', system),
  h('label', {}, 'CSV file (header row first)', file),
  submit, systems);
  return h('div', { class: 'card' }, h('h2', {}, 'New CSV task'), form);
}

function tasksView() {
  return listView({
    title: 'Tasks',
    path: '/tasks',
    filters: [
      { name: 'status', label: 'Status', options: JOB_STATUSES },
      { name: 'system', label: 'System' },
    ],
    headers: ['Description', 'System', 'Status', 'Progress', 'Created', 'Bot'],
    row: taskRow,
    top: [uploadForm()],
  });
}

function jobsView() {
  return listView({
    title: 'Jobs',
    path: customerPath('/job'),
    filters: [
      { name: 'status', label: 'Status', options: JOB_STATUSES },
      { name: 'lifecycle', label: 'Lifecycle', options: ['', 'ready', 'assigned', 'finished', 'expired', 'canceled'] },
      { name: 'task', label: 'Task id' },
      { name: 'tags', label: 'Task tags (all of)' },
    ],
    headers: JOB_HEADERS,
    row: jobRow,
  });
}

const JOB_HEADERS = ['Task', 'Status', 'Progress', 'Step', 'Created', 'Bot'];

/** A job's row: a run of a task definition, or a CSV task seen as a job. */
function jobRow(j) {
  return h('tr', { testid: 'job-row', 'data-id': j.id },
    h('td', {}, h('a', { href: `#/jobs/${j.id}` }, j.name || j.id), h('div', { class: 'muted mono' }, (j.task_arguments ?? []).join(' '))),
    h('td', {}, badge(j.status), waitingReason(j)),
    h('td', {}, progress(j.percent), ` ${j.percent}%`),
    h('td', {}, j.step ?? '—'),
    h('td', {}, when(j.created_at)),
    h('td', { testid: 'job-bot' }, botLink(j.bot_id, j.bot_name)));
}

// ----------------------------------------------------------------- people

const HUMAN_STATUSES = ['', 'NEW', 'RESERVED', 'EXECUTING', 'SUBMITTED', 'COMPLETE', 'REJECTED', 'ERROR'];
const HUMAN_FINAL = new Set(['COMPLETE', 'REJECTED', 'ERROR']);
// A user task still waiting for a person (it takes commits, or an expiry).
const HUMAN_OPEN = new Set(['NEW', 'RESERVED', 'EXECUTING']);

/** A JSON value in one short line. */
function brief(value, max = 60) {
  if (value === null || value === undefined) return '—';
  const text = JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** The people view's two kinds, as tabs over one list. */
function peopleTabs(current) {
  const tab = (kind, href, text) => h('a', { href, class: kind === current ? 'active' : null, testid: `people-tab-${kind}` }, text);
  return h('div', { class: 'tabs' }, tab('micro', '#/people', 'Micro-tasks (field workers)'), tab('user', '#/people/user', 'User tasks (activity manager)'));
}

/** Human tasks: micro-tasks (`kind` "micro") or user tasks ("user"). */
function peopleView(kind) {
  const micro = kind === 'micro';
  return listView({
    title: 'People',
    path: micro ? customerPath('/micro_task') : '/activity_manager',
    filters: micro
      ? [
        { name: 'status', label: 'Status', options: HUMAN_STATUSES },
        { name: 'name', label: 'Name' },
        { name: 'worker', label: 'Worker' },
      ]
      : [
        { name: 'status', label: 'Status', options: HUMAN_STATUSES },
        { name: 'action', label: 'Action' },
      ],
    headers: micro
      ? ['Name', 'Status', 'Worker', 'Deadline', 'Created']
      : ['Action', 'Status', 'Input', 'Expires', 'Created'],
    row: micro
      ? (t) => h('tr', { testid: 'micro-task-row', 'data-id': t.id },
        h('td', {}, h('a', { href: `#/people/micro/${t.id}` }, t.action), h('div', { class: 'muted mono' }, `v${t.version}`)),
        h('td', {}, badge(t.status)),
        h('td', {}, t.worker ?? '—'),
        h('td', {}, when(t.deadline)),
        h('td', {}, when(t.created_at)))
      : (t) => h('tr', { testid: 'user-task-row', 'data-id': t.id },
        h('td', {}, h('a', { href: `#/people/user/${t.id}` }, t.action), h('div', { class: 'muted' }, t.activity_manager)),
        h('td', {}, badge(t.status)),
        h('td', { class: 'mono' }, brief(t.input)),
        h('td', {}, when(t.expires_at)),
        h('td', {}, when(t.created_at))),
    top: [peopleTabs(kind)],
    testid: micro ? 'micro-tasks' : 'user-tasks',
  });
}

// ----------------------------------------------------------------- detail

/** A titled JSON block, or nothing when there is no value. */
const jsonSection = (title, value, testid) => (value === null || value === undefined
  ? []
  : [h('h2', {}, title), h('pre', { testid }, JSON.stringify(value, null, 2))]);

/** What a detail page shows of each kind: where the item is read (its
 * events at `${base}/events`), which statuses are final, its fields and
 * sections, and its one action (a button shown while `shown(status)`). */
const DETAIL = {
  task: {
    base: (id) => `/tasks/${id}`,
    back: ['#/tasks', '← Tasks'],
    label: 'Task',
    final: FINAL,
    progress: true,
    title: (item) => item.description,
    fields: (item) => [['id', item.id], ['system', item.system], ['rows', `${item.rows_done} / ${item.rows_total}`]],
    action: { label: 'Cancel', testid: 'cancel', path: 'cancel', shown: (s) => !FINAL.has(s) },
  },
  job: {
    base: (id) => customerPath(`/job/${id}`),
    back: ['#/jobs', '← Jobs'],
    label: 'Job',
    final: FINAL,
    progress: true,
    title: (item) => item.name,
    // A job is read through `/{customer}/job/{id}`, which serves runs of
    // task definitions and CSV jobs alike (its `kind`: "script" or
    // "system"); `/tasks/{id}` serves CSV jobs only.
    fields: (item) => (item.kind === 'system'
      // A CSV job seen as a job: its rows and system are on its task page.
      ? [['id', item.id], ['kind', h('span', {}, 'CSV task (', h('a', { href: `#/tasks/${item.id}`, testid: 'csv-task-link' }, 'rows and system'), ')')],
        ['lifecycle', item.lifecycle]]
      : [['id', item.id],
        ['task', item.task_id ? h('a', { href: `#/definitions/${item.task_id}`, testid: 'definition-link' }, item.name) : item.name],
        ['arguments', (item.task_arguments ?? []).join(' ')],
        ...(item.host_id ? [['runs on', nameOf('bots', item.host_id, `#/bots/${item.host_id}`)]] : []),
        ['step', item.step], ['exit code', item.exit_code], ['lifecycle', item.lifecycle]]),
    action: { label: 'Cancel', testid: 'cancel', path: 'cancel', shown: (s) => !FINAL.has(s) },
  },
  micro: {
    base: (id) => customerPath(`/micro_task/${id}`),
    back: ['#/people', '← Micro-tasks'],
    label: 'Micro-task',
    final: HUMAN_FINAL,
    title: (item) => item.action,
    fields: (item) => [['id', item.id], ['name', `${item.action} (version ${item.version})`], ['worker', item.worker],
      ['deadline', item.deadline], ['execution time', `${Math.round(item.execution_ms / 1000)} s`],
      ['created', item.created_at], ['finished', item.finished_at], ['error', item.error]],
    sections: (item) => [
      ...jsonSection('Task flow and variables', item.input, 'human-input'),
      ...jsonSection('Result', item.result, 'human-result'),
      h('h2', {}, 'Executions'),
      h('div', { testid: 'executions' }, table(['Worker', 'Status', 'Started', 'Deadline', 'Ended', 'Reason'],
        (item.executions ?? []).map((x) => h('tr', {}, h('td', {}, x.worker), h('td', {}, badge(x.status)),
          h('td', {}, when(x.started_at)), h('td', {}, when(x.deadline)), h('td', {}, when(x.finished_at)),
          h('td', {}, x.reason ?? ''))),
        'Nobody started it yet.')),
      h('h2', {}, 'Submissions'),
      h('div', { testid: 'submissions' }, table(['Received', 'Worker', 'Outcome', 'Reason'],
        (item.submissions ?? []).map((s) => h('tr', {}, h('td', {}, when(s.received_at)), h('td', {}, s.worker),
          h('td', {}, badge(s.outcome)), h('td', {}, s.reason ?? ''))),
        'No finish received.')),
      h('h2', {}, 'Notifications'),
      h('div', { testid: 'notifications' }, table(['Channel', 'Recipient', 'Status', 'Attempts', 'Sent', 'Last error'],
        (item.notifications ?? []).map((n) => h('tr', {}, h('td', {}, n.channel), h('td', { class: 'mono' }, n.recipient),
          h('td', {}, badge(n.status)), h('td', {}, n.attempts), h('td', {}, when(n.sent_at)), h('td', {}, n.last_error ?? ''))),
        'No notifications.')),
    ],
  },
  user: {
    base: (id) => `/activity_manager/${id}`,
    back: ['#/people/user', '← User tasks'],
    label: 'User task',
    final: HUMAN_FINAL,
    title: (item) => item.action,
    fields: (item) => [['id', item.id], ['action', item.action], ['activity manager', item.activity_manager],
      ['expires', item.expires_at], ['is_continue', String(item.is_continue)],
      ['created', item.created_at], ['finished', item.finished_at], ['error', item.error]],
    sections: (item) => [
      ...jsonSection('Input', item.input, 'human-input'),
      ...jsonSection('Committed payload', item.committed, 'human-committed'),
      ...jsonSection('Result', item.result, 'human-result'),
    ],
    // Ends it now, as its timeout would: an admin's.
    action: { label: 'Expire', testid: 'expire', path: 'expire', shown: (s) => session.me?.role === 'admin' && HUMAN_OPEN.has(s) },
  },
};

/** One item of `kind` (see DETAIL: a CSV task, a job, a micro-task or a
 * user task), with its history, kept live from the event feed. */
function detailView(kind, id) {
  const spec = DETAIL[kind];
  const base = spec.base(id);
  const status = h('span', { class: 'badge', testid: 'job-status' }, '…');
  const bar = progress(0, 'job-progress');
  const percentText = h('span', { testid: 'job-percent' }, '0%');
  const indicator = h('span', { class: 'live', testid: 'live' });
  const action = spec.action
    ? h('button', { class: 'danger', testid: spec.action.testid, hidden: true }, spec.action.label)
    : null;
  const title = h('h1', {}, spec.label);
  const meta = h('dl', { class: 'meta' });
  const result = h('div');
  const events = h('tbody', { testid: 'job-events' });
  const seen = new Set();
  let current = null;
  let source = null;
  const shown = viewShown();

  const setStatus = (s) => {
    status.textContent = s;
    status.className = `badge st-${s}`;
    if (action) action.hidden = !spec.action.shown(s);
  };
  const setPercent = (p) => {
    bar.value = p;
    bar.title = `${p}%`;
    percentText.textContent = `${p}%`;
  };
  const render = (item) => {
    current = item;
    title.textContent = spec.title(item) || `${spec.label.toLowerCase()} ${id}`;
    setStatus(item.status);
    if (spec.progress) setPercent(item.percent);
    const fields = spec.fields(item);
    if (spec.progress) {
      if (item.waiting_reason) fields.push(['waiting because', h('span', { class: 'reason', testid: 'waiting-reason' }, item.waiting_reason)]);
      fields.push(['bot', botLink(item.bot_id, item.bot_name)], ['attempt', item.attempt], ['created', item.created_at],
        ['started', item.started_at], ['finished', item.finished_at], ['error', item.error]);
    }
    meta.replaceChildren(...fields.flatMap(([k, v]) => [h('dt', {}, k), h('dd', { class: 'mono' }, v ?? '—')]));
    result.replaceChildren(...(spec.sections ? spec.sections(item) : jsonSection('Result', item.output ?? item.result)));
  };
  const addEvent = (e) => {
    if (seen.has(e.id)) return false;
    seen.add(e.id);
    events.append(h('tr', {},
      h('td', {}, new Date(e.created_at).toLocaleTimeString()),
      h('td', {}, badge(e.type)),
      h('td', {}, e.to_status ? [badge(e.from_status), ' → ', badge(e.to_status)] : e.description)));
    return true;
  };
  // The item itself, re-read after a status change (rows, result, error).
  const reload = () => guarded(async () => {
    const item = await get(base);
    if (!shown()) return;
    render(item);
    if (spec.final.has(current.status) && source) {
      source.close();
      source = null;
    }
  });

  action?.addEventListener('click', () => guarded(async () => {
    action.disabled = true;
    try {
      const item = await post(`${base}/${spec.action.path}`);
      if (shown()) render(item);
    } finally {
      action.disabled = false;
    }
  }));

  guarded(async () => {
    const [item, history] = await Promise.all([get(base), get(`${base}/events`)]);
    // Left meanwhile: no render, and above all no stream.
    if (!shown()) return;
    render(item);
    history.forEach(addEvent);
    if (spec.final.has(item.status)) return;
    // From the item's first event, so nothing between the reads above and
    // the stream's start is missed; events already shown are skipped.
    source = follow(id, (e) => {
      if (!addEvent(e)) return;
      if (e.type === 'PERCENT_CHANGE' && !Number.isNaN(eventPercent(e))) setPercent(eventPercent(e));
      if (e.type === 'STATUS_CHANGE' && e.to_status) {
        setStatus(e.to_status);
        // Finishing sets 100% without a PERCENT_CHANGE event.
        if (e.to_status === 'COMPLETE') setPercent(100);
        reload();
      }
      // A warning may come with a changed field (why it waits for a bot).
      if (e.type === 'WARNING') reload();
    }, indicator);
  });

  return h('div', { class: 'detail' },
    h('p', {}, h('a', { href: spec.back[0] }, spec.back[1])),
    h('div', { class: 'head' }, title, status, h('span', { class: 'spacer' }), indicator, action),
    spec.progress ? h('div', { class: 'progress-line' }, bar, percentText) : null,
    h('div', { class: 'card' }, meta),
    result,
    h('h2', {}, 'History'),
    h('table', {}, h('thead', {}, h('tr', {}, ['Time', 'Event', 'Change'].map((t) => h('th', {}, t)))), events));
}

// ------------------------------------------------------------- deliveries

/** A delivery's row and its (hidden) attempts row. Its job may be a CSV
 * task or a run of a task definition: the jobs view shows either. */
function deliveryRows(d, reload) {
  const attempts = h('tr', { class: 'sub', hidden: true }, h('td', { colSpan: 7 }));
  const toggle = () => guarded(async () => {
    if (attempts.hidden) {
      const full = await get(`/webhooks/deliveries/${d.id}`);
      attempts.firstChild.replaceChildren(table(['#', 'At', 'HTTP status', 'Error', 'Duration'],
        (full.attempt_log ?? []).map((a) => h('tr', {}, h('td', {}, a.n), h('td', {}, when(a.attempted_at)),
          h('td', {}, a.status_code ?? '—'), h('td', {}, a.error ?? ''), h('td', {}, `${a.duration_ms} ms`))),
        'No attempts yet.'));
    }
    attempts.hidden = !attempts.hidden;
  });
  return [h('tr', { testid: 'delivery-row', 'data-job': d.job_id },
    h('td', {}, badge(d.status)),
    h('td', { class: 'mono' }, d.url),
    h('td', {}, h('a', { href: `#/jobs/${d.job_id}`, testid: 'delivery-job' }, d.job_id.slice(0, 8))),
    h('td', {}, d.attempts),
    h('td', {}, d.last_status ?? '—', d.last_error ? h('div', { class: 'muted' }, d.last_error) : null),
    h('td', {}, when(d.next_attempt_at ?? d.finished_at ?? d.created_at)),
    h('td', { class: 'actions' },
      h('button', { onclick: toggle }, 'Attempts'),
      d.status !== 'PENDING'
        ? h('button', { testid: 'redeliver', onclick: () => guarded(async () => { await post(`/webhooks/deliveries/${d.id}/redeliver`); reload(); }) }, 'Redeliver')
        : null)), attempts];
}

function deliveriesView() {
  if (session.me.role !== 'admin') {
    return [h('h1', {}, 'Webhook deliveries'),
      h('p', { class: 'card', testid: 'admins-only' }, 'Webhook deliveries are shown to admins only.')];
  }
  return listView({
    title: 'Webhook deliveries',
    path: '/webhooks/deliveries',
    filters: [{ name: 'status', label: 'Status', options: ['', 'PENDING', 'DEAD', 'DELIVERED'] }],
    headers: ['Status', 'Endpoint', 'Job', 'Attempts', 'Last result', 'When', ''],
    row: deliveryRows,
    live: false,
    testid: 'deliveries',
  });
}

// --------------------------------------------------------------- overview

const STATUS_ORDER = ['WAITING', 'ASSIGNED', 'RUNNING', 'COMPLETE', 'FAILED', 'TIMEOUT', 'CANCELED'];

/** A number in a tile, with its label and a line beneath. */
function tile(label, value, sub, testid, tone = '') {
  return h('div', { class: `tile ${tone}`, testid },
    h('div', { class: 'tile-label' }, label),
    h('div', { class: 'tile-value', testid: `${testid}-value` }, String(value)),
    h('div', { class: 'tile-sub' }, sub));
}

/** Jobs by status: one bar of proportional segments, and the counts. */
function statusBar(jobs) {
  const total = jobs.reduce((n, s) => n + s.count, 0);
  const bar = h('div', { class: 'status-bar', testid: 'overview-status-bar' });
  for (const s of jobs) {
    if (!s.count) continue;
    const segment = h('span', { class: `segment st-${s.status}`, title: `${s.status}: ${s.count}` });
    // CSSOM, not a style attribute: the page's policy allows no inline style.
    segment.style.width = `${(100 * s.count) / total}%`;
    bar.append(segment);
  }
  const legend = h('div', { class: 'legend' }, jobs.map((s) => h('span', { class: 'legend-item', testid: 'overview-status', 'data-status': s.status, 'data-count': s.count },
    badge(s.status), ' ', h('strong', {}, s.count.toLocaleString()))));
  return [total ? bar : h('p', { class: 'muted' }, 'No jobs yet.'), legend];
}

/** Completed and failed per minute as stacked bars (SVG, drawn here). */
function minuteChart(minutes) {
  const width = 960;
  const height = 180;
  const pad = { left: 34, right: 6, top: 8, bottom: 20 };
  const peak = Math.max(1, ...minutes.map((m) => m.complete + m.failed));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const slot = plotW / minutes.length;
  const y = (n) => pad.top + plotH - (plotH * n) / peak;
  const bars = minutes.flatMap((m, i) => {
    const x = pad.left + i * slot + slot * 0.1;
    const w = slot * 0.8;
    const at = new Date(m.at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    const tip = svg('title', {}, `${at}: ${m.complete} completed, ${m.failed} failed`);
    const out = [];
    if (m.complete) out.push(svg('rect', { class: 'bar-complete', x, y: y(m.complete), width: w, height: y(0) - y(m.complete), 'data-minute': m.at, 'data-count': m.complete }, tip));
    if (m.failed) out.push(svg('rect', { class: 'bar-failed', x, y: y(m.complete + m.failed), width: w, height: y(m.complete) - y(m.complete + m.failed), 'data-minute': m.at, 'data-count': m.failed }, tip.cloneNode(true)));
    return out;
  });
  const label = (x, text, anchor) => svg('text', { x, y: height - 5, 'text-anchor': anchor, class: 'axis' }, text);
  return svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', testid: 'overview-chart', role: 'img', 'aria-label': 'Jobs completed and failed per minute, last hour' },
    svg('line', { x1: pad.left, y1: y(0), x2: width - pad.right, y2: y(0), class: 'axis-line' }),
    svg('line', { x1: pad.left, y1: y(peak), x2: width - pad.right, y2: y(peak), class: 'grid-line' }),
    svg('text', { x: pad.left - 4, y: y(peak) + 4, 'text-anchor': 'end', class: 'axis' }, String(peak)),
    svg('text', { x: pad.left - 4, y: y(0), 'text-anchor': 'end', class: 'axis' }, '0'),
    label(pad.left, '60 min ago', 'start'), label(pad.left + plotW / 2, '30 min ago', 'middle'), label(width - pad.right, 'now', 'end'),
    bars);
}

function renderOverview(o) {
  const completed = o.per_minute.reduce((n, m) => n + m.complete, 0);
  const failed = o.per_minute.reduce((n, m) => n + m.failed, 0);
  const b = o.bots;
  const backlog = o.backlog;
  const running = o.longest_running.map((r) => h('tr', { testid: 'overview-running-row', 'data-id': r.id },
    h('td', {}, h('a', { href: r.kind === 'system' ? `#/tasks/${r.id}` : `#/jobs/${r.id}` }, r.name || r.id.slice(0, 8)),
      h('div', { class: 'muted' }, r.kind === 'system' ? 'CSV task' : 'task definition run')),
    h('td', {}, botLink(r.bot_id, r.bot_name)),
    h('td', {}, duration(r.running_secs)),
    h('td', {}, progress(r.percent), ` ${r.percent}%`)));
  return [
    h('div', { class: 'tiles' },
      tile('Waiting', backlog.waiting.toLocaleString(),
        [backlog.oldest_age_secs === null ? 'nothing waiting' : `oldest waiting ${duration(backlog.oldest_age_secs)}`,
          backlog.on_hold ? ` · ${backlog.on_hold} on hold` : '',
          backlog.stranded ? h('span', { class: 'reason', testid: 'overview-stranded' }, ` · ${backlog.stranded.toLocaleString()} no bot can take`) : ''],
        'overview-backlog', backlog.stranded ? 'bad' : backlog.oldest_age_secs > 300 ? 'warn' : ''),
      tile('Bots up', `${b.up} / ${b.total}`, `${b.busy} busy · ${b.lost} lost${b.draining ? ` · ${b.draining} draining` : ''} · ${b.slots_used}/${b.slots_total} slots in use`,
        'overview-bots', b.lost ? 'bad' : ''),
      tile('Webhook failures', o.webhooks.dead.toLocaleString(), `dead · ${o.webhooks.retrying.toLocaleString()} retrying`, 'overview-webhooks', o.webhooks.dead ? 'bad' : ''),
      tile('Notification failures', o.notifications.dead.toLocaleString(), `dead · ${o.notifications.retrying.toLocaleString()} retrying`, 'overview-notifications', o.notifications.dead ? 'bad' : '')),
    h('div', { class: 'card' }, h('h2', {}, 'Jobs by status'), statusBar(o.jobs)),
    h('div', { class: 'card' },
      h('div', { class: 'head' }, h('h2', {}, 'Finished per minute, last hour'), h('span', { class: 'spacer' }),
        h('span', { class: 'legend-item' }, h('span', { class: 'swatch ok' }), ' completed ', h('strong', { testid: 'overview-completed' }, completed.toLocaleString())),
        h('span', { class: 'legend-item' }, h('span', { class: 'swatch bad' }), ' failed ', h('strong', { testid: 'overview-failed' }, failed.toLocaleString()))),
      minuteChart(o.per_minute)),
    h('h2', {}, 'Running longest'),
    h('div', { testid: 'overview-running' }, table(['Job', 'Bot', 'Running for', 'Progress'], running, 'Nothing is running.')),
    h('p', { class: 'muted' }, 'As of ', when(o.at), '; webhook failures are on the ', h('a', { href: '#/deliveries' }, 'deliveries'), ' page.'),
  ];
}

/** The landing view (admins): read every few seconds, and soon after a
 * job changes status on the live feed. */
function overviewView() {
  if (!isAdmin()) {
    return [h('h1', {}, 'Overview'), h('p', { class: 'card', testid: 'admins-only' }, 'The overview is shown to admins only.')];
  }
  const holder = h('div', { testid: 'overview' }, h('p', { class: 'muted' }, 'Loading…'));
  const indicator = h('span', { class: 'live', testid: 'live' });
  const shown = viewShown();
  let timer = null;
  let dueAt = 0;
  let busy = false;
  const schedule = (ms) => {
    if (!shown()) return;
    const at = Date.now() + ms;
    if (timer && dueAt <= at) return;
    clearTimeout(timer);
    dueAt = at;
    timer = setTimeout(tick, ms);
  };
  // One read at a time; none once the view is left.
  const tick = async () => {
    timer = null;
    if (busy) { schedule(OVERVIEW_SOON_MS); return; }
    busy = true;
    await guarded(async () => {
      const o = await get(customerPath('/overview'));
      if (shown()) holder.replaceChildren(...renderOverview(o));
    });
    busy = false;
    schedule(OVERVIEW_REFRESH_MS);
  };
  teardown.push(() => clearTimeout(timer));
  follow(null, (e) => { if (e.type === 'STATUS_CHANGE') schedule(OVERVIEW_SOON_MS); }, indicator);
  tick();
  return [h('div', { class: 'head' }, h('h1', {}, 'Overview'), h('span', { class: 'spacer' }), indicator), holder];
}

// -------------------------------------------------------------- a bot

/** One bot: its fields, and the CSV tasks and jobs it has (had) in hand,
 * newest first; read again every few seconds. */
function botView(id) {
  const title = h('h1', {}, 'Bot');
  const status = h('span', { class: 'badge', testid: 'bot-status' }, '…');
  const draining = h('span', { class: 'badge st-WARNING', hidden: true }, 'draining');
  const toggle = h('button', { hidden: true, testid: 'bot-drain' });
  const meta = h('dl', { class: 'meta', testid: 'bot-fields' });
  const tasks = h('div', { testid: 'bot-tasks' });
  const jobs = h('div', { testid: 'bot-jobs' });
  const shown = viewShown();
  let current = null;
  const refresh = async () => {
    const [bot, csv, runs] = await Promise.all([
      get(`/bots/${id}`),
      get(`/tasks${query({ bot_id: id, order: 'desc', limit: 20 })}`),
      get(customerPath(`/job${query({ bot_id: id, order: 'desc', limit: 20 })}`)),
    ]);
    if (!shown()) return;
    current = bot;
    title.textContent = bot.name;
    status.textContent = bot.status;
    status.className = `badge st-${bot.status}`;
    draining.hidden = !bot.draining;
    toggle.hidden = !isAdmin();
    toggle.textContent = bot.draining ? 'Resume' : 'Drain';
    meta.replaceChildren(...[
      ['id', bot.id], ['address', `${bot.ip_address}:${bot.port}`], ['delivery', bot.delivery],
      ['jobs in hand', `${bot.active_jobs} / ${bot.capacity}`], ['systems', bot.systems.join(', ') || '—'],
      ['tags', bot.tags.join(', ') || '—'], ['last heartbeat', when(bot.last_heartbeat_at)], ['registered', when(bot.created_at)],
    ].flatMap(([k, v]) => [h('dt', {}, k), h('dd', { class: 'mono' }, v ?? '—')]));
    tasks.replaceChildren(table(['Description', 'System', 'Status', 'Progress', 'Created', 'Bot'], csv.map(taskRow), 'No CSV task on this bot.'));
    jobs.replaceChildren(table(JOB_HEADERS, runs.map(jobRow), 'No run of a task definition on this bot.'));
  };
  toggle.addEventListener('click', () => guarded(async () => {
    await post(`/bots/${id}/${current?.draining ? 'resume' : 'drain'}`);
    await refresh();
  }));
  pollWhileShown(refresh, BOTS_REFRESH_MS, shown);
  return [
    h('p', {}, h('a', { href: '#/bots' }, '← Bots')),
    h('div', { class: 'head' }, title, status, draining, h('span', { class: 'spacer' }), toggle),
    h('div', { class: 'card' }, meta),
    h('h2', {}, 'CSV tasks (latest 20)'), tasks,
    h('h2', {}, 'Runs of task definitions (latest 20)'), jobs,
  ];
}

// ------------------------------------------------------ task definitions

/** A task's arguments as the form and the run form read them (`select`
 * is TheEye's other name for `options`). */
const argumentsOf = (t) => (Array.isArray(t.task_arguments) ? t.task_arguments : [])
  .map((a) => ({ ...a, type: a.type === 'select' ? 'options' : a.type }));

function argumentsSummary(t) {
  const args = argumentsOf(t);
  if (!args.length) return h('span', { class: 'muted' }, 'none');
  return args.map((a, i) => [i ? ', ' : '', a.type === 'fixed' ? h('span', { class: 'muted' }, `${a.label}=${a.value}`) : a.label]);
}

/** Where a definition runs: its bot, or any agent (carrying its required
 * tags). Its `tags` are labels only. */
const runsOn = (t) => (t.host_id
  ? nameOf('bots', t.host_id, `#/bots/${t.host_id}`)
  : h('span', { class: 'muted' }, t.required_tags?.length ? `an agent with ${t.required_tags.join(', ')}` : 'any agent'));

/** Why a waiting job no registered bot could take waits, under its status. */
const waitingReason = (item) => (item.waiting_reason
  ? h('div', { class: 'reason', testid: 'waiting-reason' }, item.waiting_reason)
  : null);

/** A select of agent bots (`''`: any), with `selected` chosen. */
function hostSelect(selected, testid) {
  const select = h('select', { testid }, h('option', { value: '' }, 'any agent'));
  lookup('bots').then((bots) => {
    for (const b of bots.values()) {
      if (b.delivery !== 'agent') continue;
      select.append(h('option', { value: b.id, selected: b.id === selected }, b.name));
    }
  }).catch(() => { /* any agent only */ });
  return select;
}

/** Reads a JSON field of a form; a clear error naming it otherwise. */
function jsonField(name, text, fallback) {
  if (!text.trim()) return fallback;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${name} is not valid JSON: ${err.message}`);
  }
}

/** Comma-separated words as a list. */
const words = (text) => text.split(',').map((w) => w.trim()).filter(Boolean);

/** Recipe import: a recipe file (or its JSON pasted), optionally pinned
 * to a bot; opens the imported definition. */
function importCard() {
  const text = h('textarea', { rows: 4, class: 'mono', testid: 'import-recipe', placeholder: '{"version": 1, "task": {…}, "file": {…}}' });
  const file = h('input', { type: 'file', accept: '.json,application/json', testid: 'import-file' });
  file.addEventListener('change', () => guarded(async () => {
    const [f] = file.files;
    if (f) text.value = await f.text();
  }));
  const host = hostSelect('', 'import-host');
  const submit = h('button', { type: 'submit', class: 'primary', testid: 'import-submit' }, 'Import');
  const form = h('form', {
    class: 'form',
    onsubmit: (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      guarded(async () => {
        const recipe = jsonField('The recipe', text.value, null);
        if (!recipe || typeof recipe !== 'object') throw new Error('Paste a recipe or choose its file first.');
        if (host.value) recipe.host_id = host.value;
        const task = await post(customerPath('/task/import'), recipe);
        location.hash = `#/definitions/${task.id}`;
      }).finally(() => { submit.disabled = false; });
    },
  },
  h('label', {}, 'Recipe file', file),
  h('label', {}, 'or its JSON', text),
  h('label', {}, 'Runs on', host),
  h('div', {}, submit));
  return h('details', { class: 'card', testid: 'import-card' }, h('summary', {}, 'Import a recipe'), form);
}

function definitionsView() {
  const top = isAdmin()
    ? [h('div', { class: 'toolbar' }, h('a', { href: '#/definitions/new', class: 'button primary', testid: 'new-definition' }, 'New definition'),
      h('a', { href: '#/scripts/new', class: 'button' }, 'New script')), importCard()]
    : [];
  return listView({
    title: 'Task definitions',
    path: customerPath('/task'),
    filters: [{ name: 'tags', label: 'Tags (all of)' }],
    headers: ['Name', 'Script', 'Runs on', 'Arguments', 'Timeout', 'Tags', 'Updated'],
    row: (t) => h('tr', { testid: 'definition-row', 'data-id': t.id, 'data-name': t.name },
      h('td', {}, h('a', { href: `#/definitions/${t.id}` }, t.name), t.description ? h('div', { class: 'muted' }, t.description) : null),
      h('td', {}, nameOf('scripts', t.script_id, isAdmin() ? `#/scripts/${t.script_id}` : null)),
      h('td', {}, runsOn(t)),
      h('td', {}, argumentsSummary(t)),
      h('td', {}, duration(t.timeout)),
      h('td', {}, t.tags.join(', ') || '—'),
      h('td', {}, when(t.updated_at))),
    top,
    live: false,
    testid: 'definitions',
  });
}

/** The rows of a definition's arguments, editable: type, label, value or
 * options, required. `read()` gives them as `task_arguments`. */
function argumentsEditor(initial) {
  const body = h('tbody', { testid: 'arguments' });
  const add = (arg = { type: 'input', label: '', required: true }) => {
    const type = h('select', { testid: 'arg-type' }, ['input', 'options', 'fixed'].map((t) => h('option', { value: t, selected: t === arg.type }, t)));
    const label = h('input', { value: arg.label ?? '', placeholder: 'label', testid: 'arg-label' });
    const value = h('input', {
      value: arg.type === 'fixed' ? arg.value ?? '' : arg.type === 'options' ? (arg.options ?? []).join(', ') : '',
      testid: 'arg-value',
    });
    const required = h('input', { type: 'checkbox', checked: arg.required !== false, testid: 'arg-required' });
    const requiredLabel = h('label', { class: 'inline' }, required, ' required');
    const sync = () => {
      value.hidden = type.value === 'input';
      value.placeholder = type.value === 'fixed' ? 'value' : 'option 1, option 2';
      requiredLabel.hidden = type.value !== 'input';
    };
    type.addEventListener('change', sync);
    sync();
    const tr = h('tr', { testid: 'arg-row' }, h('td', {}, type), h('td', {}, label), h('td', {}, value, requiredLabel),
      h('td', { class: 'actions' }, h('button', { type: 'button', onclick: () => tr.remove() }, 'Remove')));
    tr.read = () => {
      if (type.value === 'fixed') return { type: 'fixed', label: label.value.trim(), value: value.value };
      if (type.value === 'options') return { type: 'options', label: label.value.trim(), options: words(value.value) };
      return { type: 'input', label: label.value.trim(), required: required.checked };
    };
    body.append(tr);
  };
  initial.forEach(add);
  const element = h('div', {},
    h('table', { class: 'compact' }, h('thead', {}, h('tr', {}, ['Type', 'Label', 'Value, options or required', ''].map((t) => h('th', {}, t)))), body),
    h('button', { type: 'button', class: 'more', testid: 'add-argument', onclick: () => add() }, 'Add an argument'));
  return { element, read: () => [...body.children].map((tr) => tr.read()) };
}

/** Creates (`id` null) or changes a definition; opens it when saved. */
function definitionForm(id) {
  if (!isAdmin()) return [h('h1', {}, 'Task definition'), h('p', { class: 'card', testid: 'admins-only' }, 'Only admins define tasks.')];
  const holder = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  guarded(async () => {
    const [task, scripts] = await Promise.all([
      id ? get(customerPath(`/task/${id}`)) : null,
      lookup('scripts'),
    ]);
    const t = task ?? {
      name: '', description: '', script_id: '', host_id: null, tags: [], required_tags: [], task_arguments: [], run_as: '', timeout: 600,
      grace_time: 0, multitasking: true, max_attempts: null, acls: [], env: {}, triggers: [],
    };
    const field = (label, control, hint) => h('label', {}, label, control, hint ? h('span', { class: 'hint' }, hint) : null);
    const name = h('input', { value: t.name, required: true, testid: 'def-name' });
    const description = h('textarea', { rows: 2, testid: 'def-description' }, t.description);
    const script = h('select', { required: true, testid: 'def-script' }, h('option', { value: '' }, '— choose a script —'),
      [...scripts.values()].map((s) => h('option', { value: s.id, selected: s.id === t.script_id }, `${s.name} (${s.filename})`)));
    const host = hostSelect(t.host_id, 'def-host');
    const tags = h('input', { value: t.tags.join(', '), testid: 'def-tags', placeholder: 'comma-separated' });
    const requiredTags = h('input', { value: (t.required_tags ?? []).join(', '), testid: 'def-required-tags', placeholder: 'comma-separated; empty: any agent' });
    const runAs = h('input', { value: t.run_as, class: 'mono', testid: 'def-run-as', placeholder: '%script%' });
    const timeout = h('input', { type: 'number', min: 1, value: String(t.timeout), testid: 'def-timeout' });
    const grace = h('input', { type: 'number', min: 0, value: String(t.grace_time), testid: 'def-grace' });
    const attempts = h('input', { type: 'number', min: 1, max: 100, value: t.max_attempts === null ? '' : String(t.max_attempts), testid: 'def-attempts', placeholder: 'the reaper\'s default' });
    const multitasking = h('input', { type: 'checkbox', checked: t.multitasking, testid: 'def-multitasking' });
    const acls = h('input', { value: t.acls.join(', '), testid: 'def-acls', placeholder: 'token names; empty: everyone' });
    const env = h('textarea', { rows: 3, class: 'mono', testid: 'def-env' }, JSON.stringify(t.env ?? {}, null, 2));
    const triggers = h('textarea', { rows: 2, class: 'mono', testid: 'def-triggers' }, JSON.stringify(t.triggers ?? [], null, 2));
    const args = argumentsEditor(argumentsOf(t));
    const submit = h('button', { type: 'submit', class: 'primary', testid: 'def-save' }, id ? 'Save' : 'Create');
    const form = h('form', {
      class: 'form',
      onsubmit: (ev) => {
        ev.preventDefault();
        submit.disabled = true;
        guarded(async () => {
          const body = {
            name: name.value,
            description: description.value,
            script_id: script.value,
            host_id: host.value || null,
            tags: words(tags.value),
            required_tags: words(requiredTags.value),
            task_arguments: args.read(),
            run_as: runAs.value,
            timeout: Number(timeout.value),
            grace_time: Number(grace.value || 0),
            max_attempts: attempts.value ? Number(attempts.value) : null,
            multitasking: multitasking.checked,
            acls: words(acls.value),
            env: jsonField('env', env.value, {}),
            triggers: jsonField('triggers', triggers.value, []),
          };
          const saved = id ? await put(customerPath(`/task/${id}`), body) : await post(customerPath('/task'), body);
          location.hash = `#/definitions/${saved.id}`;
        }).finally(() => { submit.disabled = false; });
      },
    },
    field('Name', name),
    field('Description', description),
    field('Script', script, scripts.size ? null : h('a', { href: '#/scripts/new' }, 'No script yet: add one')),
    field('Runs on', host, 'a bot of its own, or any agent carrying its required tags'),
    field('Required tags', requiredTags, 'an agent must carry every one to run it'),
    field('Tags', tags, 'labels, to find it by (they do not decide where it runs)'),
    field('Run as', runAs, '%script% is the script\'s path'),
    field('Timeout (s)', timeout),
    field('Grace time after a trigger (s)', grace),
    field('Attempts when its bot is lost', attempts),
    h('label', { class: 'inline' }, multitasking, ' several runs at once on one bot (multitasking)'),
    field('ACLs', acls),
    field('Environment (JSON object)', env),
    field('Triggers (JSON: [{"task_id", "on": "success" | "failure" | "finish"}])', triggers),
    h('div', { class: 'wide' }, h('h2', {}, 'Arguments'), args.element),
    h('div', { class: 'wide' }, submit, ' ', h('a', { href: id ? `#/definitions/${id}` : '#/definitions' }, 'Cancel')));
    holder.replaceChildren(h('div', { class: 'card' }, form));
  });
  return [
    h('p', {}, h('a', { href: id ? `#/definitions/${id}` : '#/definitions' }, id ? '← Definition' : '← Definitions')),
    h('h1', {}, id ? 'Edit task definition' : 'New task definition'),
    holder,
  ];
}

/** Runs a definition with the values typed for its arguments; opens the job. */
function runForm(t) {
  const args = argumentsOf(t);
  const inputs = args.map((a, i) => {
    if (a.type === 'fixed') return null;
    if (a.type === 'options') return h('select', { testid: `run-arg-${i}` }, a.options.map((o) => h('option', { value: o }, o)));
    return h('input', { required: a.required !== false, testid: `run-arg-${i}`, placeholder: a.label });
  });
  const submit = h('button', { type: 'submit', class: 'primary', testid: 'run-submit' }, 'Run');
  const form = h('form', {
    class: 'form',
    onsubmit: (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      guarded(async () => {
        const job = await post(customerPath(`/task/${t.id}/job`), { task_arguments: inputs.filter(Boolean).map((i) => i.value) });
        location.hash = `#/jobs/${job.id}`;
      }).finally(() => { submit.disabled = false; });
    },
  },
  args.map((a, i) => h('label', {}, a.label, inputs[i] ?? h('input', { value: a.value, disabled: true, title: 'fixed' }))),
  args.length ? null : h('p', { class: 'muted' }, 'It takes no arguments.'),
  h('div', { class: 'wide' }, submit));
  return h('div', { class: 'card', testid: 'run-card' }, h('h2', {}, 'Run it'), form);
}

/** An admin's: the secret key (shown on request) and its rotation. */
function credentialsCard(t) {
  const base = customerPath(`/task/${t.id}/credentials`);
  const shown = h('code', { class: 'secret', testid: 'secret' });
  const usage = h('p', { class: 'muted', hidden: true });
  const show = (secret) => {
    shown.textContent = secret;
    usage.textContent = `Anyone with it may run this task: POST ${customerPath(`/task/${t.id}/secret/`)}<key>/job`;
    usage.hidden = false;
  };
  return h('div', { class: 'card', testid: 'credentials-card' }, h('h2', {}, 'Secret key'),
    h('div', { class: 'toolbar' },
      h('button', { testid: 'show-secret', onclick: () => guarded(async () => show((await get(base)).secret)) }, 'Show'),
      h('button', {
        class: 'danger',
        testid: 'rotate-secret',
        onclick: () => guarded(async () => {
          if (!window.confirm('A new key? The old one stops working at once.')) return;
          show((await post(`${base}/rotate`)).secret);
        }),
      }, 'Rotate'),
      shown),
    usage);
}

/** An admin's: the recipe (the task and its script, for another
 * deployment), shown and offered as a file. */
function recipeCard(t) {
  const out = h('div');
  let url = null;
  teardown.push(() => { if (url) URL.revokeObjectURL(url); });
  const exportIt = () => guarded(async () => {
    const recipe = await get(customerPath(`/task/${t.id}/recipe`));
    const text = JSON.stringify(recipe, null, 2);
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(new Blob([text], { type: 'application/json' }));
    const file = `${t.name.replace(/[^\w.-]+/g, '_') || 'task'}.recipe.json`;
    out.replaceChildren(h('p', {}, h('a', { href: url, download: file, testid: 'recipe-download' }, `Download ${file}`)),
      h('pre', { testid: 'recipe' }, text));
  });
  return h('div', { class: 'card', testid: 'recipe-card' }, h('h2', {}, 'Recipe'),
    h('div', { class: 'toolbar' }, h('button', { testid: 'export-recipe', onclick: exportIt }, 'Export'),
      h('span', { class: 'muted' }, 'the task and its script, without this deployment\'s bot and triggers')),
    out);
}

/** A definition: its fields, a run form, its jobs (live), and for admins
 * edit, delete, its secret key and its recipe. */
function definitionView(id) {
  const base = customerPath(`/task/${id}`);
  const title = h('h1', {}, 'Task definition');
  const actions = h('span');
  const meta = h('dl', { class: 'meta', testid: 'definition-fields' });
  const cards = h('div');
  guarded(async () => {
    const t = await get(base);
    title.textContent = t.name;
    if (isAdmin()) {
      actions.replaceChildren(
        h('a', { href: `#/definitions/${id}/edit`, class: 'button', testid: 'edit-definition' }, 'Edit'), ' ',
        h('button', {
          class: 'danger',
          testid: 'delete-definition',
          onclick: () => guarded(async () => {
            if (!window.confirm(`Delete ${t.name} and its waiting jobs?`)) return;
            await del(base);
            location.hash = '#/definitions';
          }),
        }, 'Delete'));
    }
    const triggers = Array.isArray(t.triggers) ? t.triggers : [];
    meta.replaceChildren(...[
      ['id', t.id], ['description', t.description || '—'],
      ['script', nameOf('scripts', t.script_id, isAdmin() ? `#/scripts/${t.script_id}` : null)],
      ['runs on', runsOn(t)], ['run as', t.run_as], ['arguments', argumentsSummary(t)],
      ['timeout', duration(t.timeout)], ['multitasking', t.multitasking ? 'yes' : 'no (one run per bot at a time)'],
      ['attempts when its bot is lost', t.max_attempts ?? 'the reaper\'s default'], ['tags', t.tags.join(', ') || '—'],
      ['required tags', (t.required_tags ?? []).join(', ') || '—'],
      ['acls', t.acls.join(', ') || 'everyone'],
      ['triggered by', triggers.length ? triggers.map((g, i) => [i ? ', ' : '', h('a', { href: `#/definitions/${g.task_id}` }, g.task_id.slice(0, 8)), ` on ${g.on}`]) : '—'],
      ['grace time', duration(t.grace_time)], ['environment', Object.keys(t.env ?? {}).join(', ') || '—'],
      ['updated', when(t.updated_at)],
    ].flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
    cards.replaceChildren(...[canRun() ? runForm(t) : null, isAdmin() ? credentialsCard(t) : null, isAdmin() ? recipeCard(t) : null].filter(Boolean));
  });
  return [
    h('p', {}, h('a', { href: '#/definitions' }, '← Definitions')),
    h('div', { class: 'head' }, title, h('span', { class: 'spacer' }), actions),
    h('div', { class: 'card' }, meta),
    cards,
    ...listView({
      title: 'Its jobs',
      level: 'h2',
      path: `${base}/job`,
      filters: [{ name: 'status', label: 'Status', options: JOB_STATUSES }],
      headers: JOB_HEADERS,
      row: jobRow,
      testid: 'definition-jobs',
    }),
  ];
}

// ---------------------------------------------------------------- scripts

function scriptsView() {
  return listView({
    title: 'Scripts',
    path: customerPath('/script'),
    filters: [],
    headers: ['Name', 'File', 'Description', 'Size', 'Checksum', 'Updated'],
    row: (s) => h('tr', { testid: 'script-row', 'data-id': s.id, 'data-name': s.name },
      h('td', {}, isAdmin() ? h('a', { href: `#/scripts/${s.id}` }, s.name) : s.name),
      h('td', { class: 'mono' }, s.filename),
      h('td', {}, s.description || '—'),
      h('td', {}, `${s.size.toLocaleString()} B`),
      h('td', { class: 'mono', title: s.checksum }, s.checksum.slice(0, 12)),
      h('td', {}, when(s.updated_at))),
    top: isAdmin() ? [h('div', { class: 'toolbar' }, h('a', { href: '#/scripts/new', class: 'button primary', testid: 'new-script' }, 'New script'))] : [],
    live: false,
    testid: 'scripts',
  });
}

/** Creates (`id` null) or changes a script (admins: a script's content is
 * theirs to read); back to the list when saved. */
function scriptForm(id) {
  if (!isAdmin()) return [h('h1', {}, 'Script'), h('p', { class: 'card', testid: 'admins-only' }, 'Only admins read and write scripts.')];
  const holder = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  guarded(async () => {
    const s = id ? await get(customerPath(`/script/${id}`)) : { name: '', filename: '', description: '', content: '#!/bin/sh\n' };
    // Content that is not UTF-8 cannot be edited as text: kept unless a
    // file replaces it.
    let binary = s.content_base64 ?? null;
    const name = h('input', { value: s.name, required: true, testid: 'script-name' });
    const filename = h('input', { value: s.filename, required: true, class: 'mono', testid: 'script-filename', placeholder: 'run.sh' });
    const description = h('input', { value: s.description, testid: 'script-description' });
    const content = h('textarea', { rows: 14, class: 'mono', testid: 'script-content', disabled: Boolean(binary) }, s.content ?? '');
    const file = h('input', { type: 'file', testid: 'script-file' });
    file.addEventListener('change', () => guarded(async () => {
      const [f] = file.files;
      if (!f) return;
      content.value = await f.text();
      content.disabled = false;
      binary = null;
      if (!filename.value) filename.value = f.name;
    }));
    const submit = h('button', { type: 'submit', class: 'primary', testid: 'script-save' }, id ? 'Save' : 'Create');
    const remove = id
      ? h('button', {
        type: 'button',
        class: 'danger',
        testid: 'script-delete',
        onclick: () => guarded(async () => {
          if (!window.confirm(`Delete script ${s.name}?`)) return;
          await del(customerPath(`/script/${id}`));
          location.hash = '#/scripts';
        }),
      }, 'Delete')
      : null;
    const form = h('form', {
      class: 'form',
      onsubmit: (ev) => {
        ev.preventDefault();
        submit.disabled = true;
        guarded(async () => {
          const body = { name: name.value, filename: filename.value, description: description.value };
          if (binary) body.content_base64 = binary;
          else body.content = content.value;
          if (id) await put(customerPath(`/script/${id}`), body);
          else await post(customerPath('/script'), body);
          location.hash = '#/scripts';
        }).finally(() => { submit.disabled = false; });
      },
    },
    h('label', {}, 'Name', name),
    h('label', {}, 'File name (on the bot)', filename),
    h('label', { class: 'wide' }, 'Description', description),
    h('label', { class: 'wide' }, binary ? `Content (binary, ${s.size} bytes: load a file to replace it)` : 'Content', content),
    h('label', {}, 'or load it from a file', file),
    h('div', { class: 'wide' }, submit, ' ', h('a', { href: '#/scripts' }, 'Cancel'), ' ', remove));
    holder.replaceChildren(h('div', { class: 'card' }, form));
  });
  return [h('p', {}, h('a', { href: '#/scripts' }, '← Scripts')), h('h1', {}, id ? 'Edit script' : 'New script'), holder];
}

// ----------------------------------------------------------------- router

const ID = '([0-9a-f-]{36})';
const ROUTES = [
  [/^#\/overview$/, overviewView],
  [/^#\/bots$/, botsView],
  [new RegExp(`^#/bots/${ID}$`), botView],
  [/^#\/definitions$/, definitionsView],
  [/^#\/definitions\/new$/, () => definitionForm(null)],
  [new RegExp(`^#/definitions/${ID}$`), definitionView],
  [new RegExp(`^#/definitions/${ID}/edit$`), definitionForm],
  [/^#\/scripts$/, scriptsView],
  [/^#\/scripts\/new$/, () => scriptForm(null)],
  [new RegExp(`^#/scripts/${ID}$`), scriptForm],
  [/^#\/tasks$/, tasksView],
  [/^#\/tasks\/([0-9a-f-]{36})$/, (id) => detailView('task', id)],
  [/^#\/jobs$/, jobsView],
  [/^#\/jobs\/([0-9a-f-]{36})$/, (id) => detailView('job', id)],
  [/^#\/people$/, () => peopleView('micro')],
  [/^#\/people\/user$/, () => peopleView('user')],
  [/^#\/people\/(micro|user)\/([0-9a-f-]{36})$/, (kind, id) => detailView(kind, id)],
  [/^#\/deliveries$/, deliveriesView],
];

async function route() {
  viewSerial += 1;
  const serial = viewSerial;
  teardown.forEach((stop) => stop());
  teardown = [];
  lookups = {};
  clearError();
  const main = $('main');
  const signedIn = Boolean(session.token);
  $('nav').hidden = !signedIn;
  // Deliveries and the overview are an admin's: not offered to other roles.
  $('nav-deliveries').hidden = !isAdmin();
  $('nav-overview').hidden = !isAdmin();
  $('logout').hidden = !signedIn;
  $('who').textContent = '';
  if (!signedIn) {
    main.replaceChildren(loginView());
    return;
  }
  if (!session.me) {
    try {
      const me = await get('/me');
      if (serial !== viewSerial) return;
      session.me = me;
    } catch (err) {
      if (serial !== viewSerial) return;
      if (err instanceof ApiError && err.status === 401) return logout(err);
      showError(err);
      return;
    }
  }
  $('nav-deliveries').hidden = !isAdmin();
  $('nav-overview').hidden = !isAdmin();
  $('who').textContent = `${session.me.customer} · ${session.me.role}${session.me.name ? ` · ${session.me.name}` : ''}`;
  const hash = location.hash || home();
  for (const link of $('nav').querySelectorAll('a')) {
    link.classList.toggle('active', hash.startsWith(link.getAttribute('href')));
  }
  for (const [pattern, view] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      main.replaceChildren(...[view(...match.slice(1))].flat());
      return;
    }
  }
  location.hash = home();
}

/** Where a signed-in caller lands: the overview for admins, whose data it
 * is; the bots otherwise. */
const home = () => (isAdmin() ? '#/overview' : '#/bots');

$('logout').addEventListener('click', () => logout());
$('banner-close').addEventListener('click', clearError);
window.addEventListener('hashchange', route);
route();
