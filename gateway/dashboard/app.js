// Orquestra's operator dashboard: a single page over the JSON API, no build
// step and no dependencies. Every value from the API reaches the page as
// text (textContent / attributes), never as HTML.
//
// Auth: the token typed at login lives in sessionStorage and goes out only
// as a Bearer header, the live event stream included (read with fetch, not
// EventSource, so it never appears in a URL, a log or the history).

const TOKEN_KEY = 'orq.token';
const FINAL = new Set(['COMPLETE', 'FAILED', 'TIMEOUT', 'CANCELED']);
const BOTS_REFRESH_MS = 3000;
// The live stream's reconnection delay: doubles from the first to the last.
const STREAM_RETRY_MS = [1000, 15000];

const session = { token: sessionStorage.getItem(TOKEN_KEY), me: null };
// Run when the view changes: timers and event streams of the old view.
let teardown = [];
// Counts view changes: work started for a view that is gone stays quiet.
let viewSerial = 0;

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
        const target = /^#\/./.test(location.hash) ? location.hash : '#/bots';
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

function botsView() {
  const holder = h('div', { testid: 'bots' });
  let stopped = false;
  let timer = null;
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
    if (stopped) return;
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
      h('td', {}, h('strong', {}, b.name), h('div', { class: 'muted mono' }, `${b.ip_address} · ${b.delivery}`)),
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
  // One poll at a time; none once the view is left (a refresh in flight
  // then must not schedule the next).
  const tick = async () => {
    await guarded(refresh);
    if (stopped) return;
    timer = setTimeout(tick, BOTS_REFRESH_MS);
  };
  teardown.push(() => {
    stopped = true;
    clearTimeout(timer);
  });
  tick();
  return [h('h1', {}, 'Bots'), holder];
}

// ------------------------------------------------------------------ lists

/** A filtered list, newest first, that pages with X-Next-Cursor ("Load more") and, when
 * `live`, updates its rows' status and progress from the live feed.
 * `row(item, reload)` makes an item's row (or rows); `reload()` reads the
 * list again from its start. */
function listView({ title, path, filters, headers, row, top = [], live = true, testid = 'list' }) {
  const values = Object.fromEntries(filters.map((f) => [f.name, '']));
  const body = h('tbody');
  const more = h('button', { class: 'more', hidden: true, testid: 'load-more' }, 'Load more');
  const indicator = h('span', { class: 'live', testid: 'live' });
  const rows = new Map();
  let cursor = null;
  let stopped = false;
  teardown.push(() => { stopped = true; });

  const load = (append) => guarded(async () => {
    const { data, next } = await api('GET', `${path}${query({ ...values, order: 'desc', limit: 50, after: append ? cursor : '' })}`);
    if (stopped) return;
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
    h('div', { class: 'head' }, h('h1', {}, title), h('span', { class: 'spacer' }), live ? indicator : null),
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
    h('td', {}, badge(t.status)),
    h('td', {}, progress(t.percent), ` ${t.percent}%`),
    h('td', {}, when(t.created_at)),
    h('td', { class: 'mono' }, t.bot_id ? t.bot_id.slice(0, 8) : '—'));
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
    ],
    headers: ['Task', 'Status', 'Progress', 'Step', 'Created', 'Bot'],
    row: (j) => h('tr', { testid: 'job-row', 'data-id': j.id },
      h('td', {}, h('a', { href: `#/jobs/${j.id}` }, j.name || j.id), h('div', { class: 'muted mono' }, (j.task_arguments ?? []).join(' '))),
      h('td', {}, badge(j.status)),
      h('td', {}, progress(j.percent), ` ${j.percent}%`),
      h('td', {}, j.step ?? '—'),
      h('td', {}, when(j.created_at)),
      h('td', { class: 'mono' }, j.bot_id ? j.bot_id.slice(0, 8) : '—')),
  });
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
      : [['id', item.id], ['task', item.task_id], ['arguments', (item.task_arguments ?? []).join(' ')],
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
  let stopped = false;
  teardown.push(() => { stopped = true; });

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
      fields.push(['bot', item.bot_id], ['attempt', item.attempt], ['created', item.created_at],
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
    if (stopped) return;
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
      if (!stopped) render(item);
    } finally {
      action.disabled = false;
    }
  }));

  guarded(async () => {
    const [item, history] = await Promise.all([get(base), get(`${base}/events`)]);
    // Left meanwhile: no render, and above all no stream.
    if (stopped) return;
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

// ----------------------------------------------------------------- router

const ROUTES = [
  [/^#\/bots$/, botsView],
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
  clearError();
  const main = $('main');
  const signedIn = Boolean(session.token);
  $('nav').hidden = !signedIn;
  // Deliveries are an admin's: the link is not offered to other roles.
  $('nav-deliveries').hidden = session.me?.role !== 'admin';
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
  $('nav-deliveries').hidden = session.me.role !== 'admin';
  $('who').textContent = `${session.me.customer} · ${session.me.role}${session.me.name ? ` · ${session.me.name}` : ''}`;
  const hash = location.hash || '#/bots';
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
  location.hash = '#/bots';
}

$('logout').addEventListener('click', () => logout());
$('banner-close').addEventListener('click', clearError);
window.addEventListener('hashchange', route);
route();
