// Orquestra's operator dashboard: a single page over the JSON API, no build
// step and no dependencies. Every value from the API reaches the page as
// text (textContent / attributes), never as HTML.
//
// Auth: the token typed at login lives in sessionStorage and goes out as a
// Bearer header; only EventSource, which cannot send headers, puts it in
// the URL (?access_token=).

const TOKEN_KEY = 'orq.token';
const FINAL = new Set(['COMPLETE', 'FAILED', 'TIMEOUT', 'CANCELED']);
const BOTS_REFRESH_MS = 3000;

const session = { token: sessionStorage.getItem(TOKEN_KEY), me: null };
// Run when the view changes: timers and event streams of the old view.
let teardown = [];

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
  const rel = ago < 60 ? `${Math.max(ago, 0)} s ago` : ago < 3600 ? `${Math.round(ago / 60)} min ago` : d.toLocaleString();
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

/** Runs `fn`, showing any failure in the banner. */
async function guarded(fn) {
  try {
    return await fn();
  } catch (err) {
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

/** Follows the live event feed (of one job, or all the caller may see);
 * calls `onEvent` with each event. Returns the EventSource (closed with
 * the view). EventSource reconnects by itself, with Last-Event-ID. */
function follow(jobId, onEvent, indicator) {
  const params = { access_token: session.token };
  if (jobId) Object.assign(params, { job_id: jobId, after: 0 });
  const source = new EventSource(`/events/stream${query(params)}`);
  source.onmessage = (m) => {
    try {
      onEvent(JSON.parse(m.data));
    } catch (err) {
      showError(err);
    }
  };
  if (indicator) {
    source.onopen = () => { indicator.className = 'live on'; indicator.textContent = 'live'; };
    source.onerror = () => { indicator.className = 'live off'; indicator.textContent = 'reconnecting…'; };
  }
  teardown.push(() => source.close());
  return source;
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
  const refresh = async () => {
    const bots = await get('/bots?limit=1000');
    // What each bot is running: CSV tasks and task-definition runs.
    const running = new Map();
    const add = (botId, link) => running.set(botId, [...(running.get(botId) ?? []), link]);
    const busy = bots.filter((b) => b.active_jobs > 0);
    const [tasks, jobs] = await Promise.all([
      Promise.all(busy.map((b) => get(`/tasks${query({ bot_id: b.id, status: 'RUNNING', limit: 20 })}`))),
      busy.length ? get(customerPath(`/job${query({ status: 'ASSIGNED,RUNNING', limit: 1000 })}`)) : [],
    ]);
    for (const t of tasks.flat()) add(t.bot_id, h('a', { href: `#/tasks/${t.id}` }, t.description || t.id.slice(0, 8)));
    for (const j of jobs) if (j.bot_id) add(j.bot_id, h('a', { href: `#/jobs/${j.id}` }, j.name || j.id.slice(0, 8)));
    const rows = bots.map((b) => h('tr', { testid: 'bot-row', 'data-bot': b.name },
      h('td', {}, h('strong', {}, b.name), h('div', { class: 'muted mono' }, `${b.ip_address} · ${b.delivery}`)),
      h('td', {}, badge(b.status), b.draining ? h('span', { class: 'badge st-WARNING' }, 'draining') : null),
      h('td', {}, `${b.active_jobs} / ${b.capacity}`),
      h('td', {}, b.systems.join(', ') || '—'),
      h('td', {}, when(b.last_heartbeat_at)),
      h('td', {}, (running.get(b.id) ?? []).flatMap((a, i) => (i ? [', ', a] : [a]))),
      h('td', { class: 'actions' }, b.draining
        ? h('button', { onclick: () => guarded(async () => { await post(`/bots/${b.id}/resume`); await refresh(); }) }, 'Resume')
        : h('button', { onclick: () => guarded(async () => { await post(`/bots/${b.id}/drain`); await refresh(); }) }, 'Drain'))));
    holder.replaceChildren(table(['Bot', 'Status', 'Jobs', 'Systems', 'Last heartbeat', 'Running', ''], rows, 'No bots registered.'));
  };
  let timer = null;
  const tick = async () => {
    await guarded(refresh);
    timer = setTimeout(tick, BOTS_REFRESH_MS);
  };
  teardown.push(() => clearTimeout(timer));
  tick();
  return [h('h1', {}, 'Bots'), holder];
}

// ------------------------------------------------------------------ lists

/** A filtered list that pages with X-Next-Cursor ("Load more") and
 * updates its rows' status and progress from the live feed. */
function listView({ title, path, filters, headers, row, top = [] }) {
  const values = Object.fromEntries(filters.map((f) => [f.name, '']));
  const body = h('tbody');
  const more = h('button', { class: 'more', hidden: true, testid: 'load-more' }, 'Load more');
  const indicator = h('span', { class: 'live' });
  const rows = new Map();
  let cursor = null;

  const load = (append) => guarded(async () => {
    const { data, next } = await api('GET', `${path}${query({ ...values, limit: 50, after: append ? cursor : '' })}`);
    if (!append) { body.replaceChildren(); rows.clear(); }
    for (const item of data) {
      const tr = row(item);
      rows.set(item.id, { tr, item });
      body.append(tr);
    }
    if (!body.children.length) body.append(h('tr', {}, h('td', { colSpan: headers.length, class: 'empty' }, 'Nothing matches.')));
    cursor = next;
    more.hidden = !next;
  });
  more.addEventListener('click', () => load(true));

  follow(null, (e) => {
    const known = rows.get(e.job_id);
    if (!known) return;
    if (e.type === 'STATUS_CHANGE' && e.to_status) known.item.status = e.to_status;
    else if (e.type === 'PERCENT_CHANGE' && !Number.isNaN(eventPercent(e))) known.item.percent = eventPercent(e);
    else return;
    const tr = row(known.item);
    known.tr.replaceWith(tr);
    known.tr = tr;
  }, indicator);

  const controls = filters.map((f) => h('label', {}, f.label, f.options
    ? h('select', { onchange: (ev) => { values[f.name] = ev.target.value; load(false); }, testid: `filter-${f.name}` },
      f.options.map((o) => h('option', { value: o }, o || 'any')))
    : h('input', { placeholder: 'any', testid: `filter-${f.name}`, onchange: (ev) => { values[f.name] = ev.target.value.trim(); load(false); } })));
  load(false);
  return [
    h('div', { class: 'head' }, h('h1', {}, title), h('span', { class: 'spacer' }), indicator),
    ...top,
    h('div', { class: 'toolbar' }, controls, h('button', { onclick: () => load(false) }, 'Refresh'),
      h('span', { class: 'muted' }, 'oldest first')),
    h('table', { testid: 'list' }, h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))), body),
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

// ----------------------------------------------------------------- detail

/** A CSV task (`kind` "task") or a run of a task definition ("job"), with
 * its history, kept live from the event feed. */
function detailView(kind, id) {
  const base = kind === 'task' ? `/tasks/${id}` : customerPath(`/job/${id}`);
  const status = h('span', { class: 'badge', testid: 'job-status' }, '…');
  const bar = progress(0, 'job-progress');
  const percentText = h('span', { testid: 'job-percent' }, '0%');
  const indicator = h('span', { class: 'live', testid: 'live' });
  const cancel = h('button', { class: 'danger', testid: 'cancel', hidden: true }, 'Cancel');
  const title = h('h1', {}, kind === 'task' ? 'Task' : 'Job');
  const meta = h('dl', { class: 'meta' });
  const result = h('div');
  const events = h('tbody', { testid: 'job-events' });
  const seen = new Set();
  let current = null;
  let source = null;

  const setStatus = (s) => {
    status.textContent = s;
    status.className = `badge st-${s}`;
    cancel.hidden = FINAL.has(s);
  };
  const setPercent = (p) => {
    bar.value = p;
    bar.title = `${p}%`;
    percentText.textContent = `${p}%`;
  };
  const render = (item) => {
    current = item;
    title.textContent = (kind === 'task' ? item.description : item.name) || `${kind} ${id}`;
    setStatus(item.status);
    setPercent(item.percent);
    const fields = kind === 'task'
      ? [['id', item.id], ['system', item.system], ['rows', `${item.rows_done} / ${item.rows_total}`]]
      : [['id', item.id], ['task', item.task_id], ['arguments', (item.task_arguments ?? []).join(' ')],
        ['step', item.step], ['exit code', item.exit_code], ['lifecycle', item.lifecycle]];
    fields.push(['bot', item.bot_id], ['attempt', item.attempt], ['created', item.created_at],
      ['started', item.started_at], ['finished', item.finished_at], ['error', item.error]);
    meta.replaceChildren(...fields.flatMap(([k, v]) => [h('dt', {}, k), h('dd', { class: 'mono' }, v ?? '—')]));
    const shown = item.output ?? item.result;
    result.replaceChildren(...(shown ? [h('h2', {}, 'Result'), h('pre', {}, JSON.stringify(shown, null, 2))] : []));
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
    render(await get(base));
    if (FINAL.has(current.status) && source) {
      source.close();
      indicator.className = 'live';
      indicator.textContent = '';
    }
  });

  cancel.addEventListener('click', () => guarded(async () => {
    cancel.disabled = true;
    try {
      render(await post(`${base}/cancel`));
    } finally {
      cancel.disabled = false;
    }
  }));

  guarded(async () => {
    const [item, history] = await Promise.all([get(base), get(`${base}/events`)]);
    render(item);
    history.forEach(addEvent);
    if (FINAL.has(item.status)) return;
    // From the job's first event, so nothing between the reads above and
    // the stream's start is missed; events already shown are skipped.
    source = follow(id, (e) => {
      if (!addEvent(e)) return;
      if (e.type === 'PERCENT_CHANGE' && !Number.isNaN(eventPercent(e))) setPercent(eventPercent(e));
      if (e.type === 'STATUS_CHANGE' && e.to_status) {
        setStatus(e.to_status);
        reload();
      }
    }, indicator);
  });

  return h('div', { class: 'detail' },
    h('p', {}, h('a', { href: kind === 'task' ? '#/tasks' : '#/jobs' }, kind === 'task' ? '← Tasks' : '← Jobs')),
    h('div', { class: 'head' }, title, status, h('span', { class: 'spacer' }), indicator, cancel),
    h('div', { class: 'progress-line' }, bar, percentText),
    h('div', { class: 'card' }, meta),
    result,
    h('h2', {}, 'History'),
    h('table', {}, h('thead', {}, h('tr', {}, ['Time', 'Event', 'Change'].map((t) => h('th', {}, t)))), events));
}

// ------------------------------------------------------------- deliveries

function deliveriesView() {
  let status = '';
  const holder = h('div', { testid: 'deliveries' });
  const refresh = () => guarded(async () => {
    const items = await get(`/webhooks/deliveries${query({ status, limit: 200 })}`);
    const rows = items.flatMap((d) => {
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
      return [h('tr', { testid: 'delivery-row' },
        h('td', {}, badge(d.status)),
        h('td', { class: 'mono' }, d.url),
        h('td', {}, h('a', { href: `#/tasks/${d.job_id}` }, d.job_id.slice(0, 8))),
        h('td', {}, d.attempts),
        h('td', {}, d.last_status ?? '—', d.last_error ? h('div', { class: 'muted' }, d.last_error) : null),
        h('td', {}, when(d.next_attempt_at ?? d.finished_at ?? d.created_at)),
        h('td', { class: 'actions' },
          h('button', { onclick: toggle }, 'Attempts'),
          d.status !== 'PENDING'
            ? h('button', { testid: 'redeliver', onclick: () => guarded(async () => { await post(`/webhooks/deliveries/${d.id}/redeliver`); refresh(); }) }, 'Redeliver')
            : null)), attempts];
    });
    holder.replaceChildren(table(['Status', 'Endpoint', 'Job', 'Attempts', 'Last result', 'When', ''], rows, 'No deliveries.'));
  });
  refresh();
  return [
    h('h1', {}, 'Webhook deliveries'),
    h('div', { class: 'toolbar' },
      h('label', {}, 'Status', h('select', { onchange: (ev) => { status = ev.target.value; refresh(); } },
        ['', 'PENDING', 'DEAD', 'DELIVERED'].map((s) => h('option', { value: s }, s || 'any')))),
      h('button', { onclick: refresh }, 'Refresh')),
    holder,
  ];
}

// ----------------------------------------------------------------- router

const ROUTES = [
  [/^#\/bots$/, botsView],
  [/^#\/tasks$/, tasksView],
  [/^#\/tasks\/([0-9a-f-]{36})$/, (id) => detailView('task', id)],
  [/^#\/jobs$/, jobsView],
  [/^#\/jobs\/([0-9a-f-]{36})$/, (id) => detailView('job', id)],
  [/^#\/deliveries$/, deliveriesView],
];

async function route() {
  teardown.forEach((stop) => stop());
  teardown = [];
  clearError();
  const main = $('main');
  const signedIn = Boolean(session.token);
  $('nav').hidden = !signedIn;
  $('logout').hidden = !signedIn;
  $('who').textContent = '';
  if (!signedIn) {
    main.replaceChildren(loginView());
    return;
  }
  if (!session.me) {
    try {
      session.me = await get('/me');
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return logout(err);
      showError(err);
      return;
    }
  }
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
