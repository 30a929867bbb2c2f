// Drives the gateway's dashboard in the system's headless Chromium: logs in
// with an admin token and lands on the overview (the agent up, every
// status, the hour's chart), finds the running agent on the bots page by
// name and opens its page, uploads a CSV task, and waits on its detail page
// for COMPLETE and 100% to arrive live (from the event feed, read with fetch
// and a Bearer header: the page is never reloaded, and no URL it requests
// carries a token), its bot named and linked. Then every view renders; the
// deliveries page lists the task's webhook deliveries and links to the task
// through the jobs view; the overview counts the task (its chart too); an
// admin adds a script, defines a task with arguments, edits it, runs it with
// arguments to COMPLETE on the agent (its output on the job page), finds the
// job on the definition's page, shows and rotates its secret key, exports
// its recipe and imports it as a new definition, which, made to require a
// tag no agent carries, runs a job whose page says why it waits (and the
// overview counts it) and which the tags filter finds; the jobs list names
// the run's bot; the People view lists a micro-task (its page: executions,
// submissions, notifications) and a user task, which the admin expires on
// its page (COMPLETE, its history arriving live); after logging out,
// nothing wipes the login form, a viewer is offered no deliveries nor
// overview and reads a definition without a run form, key or recipe, and a
// token the stream refuses logs out at once instead of reconnecting.
// Full-page screenshots along the way. Any uncaught page error or console
// error fails the run.
//
// Environment: ORQ_URL (the gateway), ORQ_TOKEN (an admin token),
// ORQ_VIEWER_TOKEN and ORQ_BOT_TOKEN (a viewer's and a bot's token of the
// same customer: the stream refuses a bot), ORQ_SCREENSHOT (a
// .png path), ORQ_AGENT (the running agent's bot name), ORQ_SYSTEM (a system
// that agent runs; default Vivo360), ORQ_TEST_CHROMIUM (default
// /usr/bin/chromium), ORQ_MICRO_TASK_ID and ORQ_USER_TASK_ID (an open
// micro-task and user task of the customer). Run by e2e/tests/dashboard.rs.

import { chromium } from 'playwright-core';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === '') throw new Error(`${name} is not set`);
  return value;
};

const TIMEOUT_MS = 60_000;
const url = env('ORQ_URL').replace(/\/$/, '');
const token = env('ORQ_TOKEN');
const viewerToken = env('ORQ_VIEWER_TOKEN');
const botToken = env('ORQ_BOT_TOKEN');
const screenshot = env('ORQ_SCREENSHOT');
const agent = env('ORQ_AGENT');
const system = env('ORQ_SYSTEM', 'Vivo360');
const microTaskId = env('ORQ_MICRO_TASK_ID');
const userTaskId = env('ORQ_USER_TASK_ID');
const executablePath = env('ORQ_TEST_CHROMIUM', '/usr/bin/chromium');

const step = (what) => console.log(`dashboard: ${what}`);

async function run(browser) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(TIMEOUT_MS);
  const problems = [];
  // Set while the page is expected to meet refused requests.
  let refusalsExpected = false;
  page.on('pageerror', (err) => problems.push(`uncaught page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    if (refusalsExpected && /status of 40[13]/.test(msg.text())) return;
    problems.push(`console error: ${msg.text()}`);
  });
  // No request may carry the token in its URL (logs, history, Referer);
  // the live stream sends it as a header.
  const streams = [];
  page.on('request', (request) => {
    if (/access_token/i.test(request.url())) problems.push(`a token in a URL: ${request.url()}`);
    if (token && request.url().includes(token)) problems.push(`the token in a URL: ${request.url()}`);
    if (new URL(request.url()).pathname === '/events/stream') streams.push(request);
  });
  const check = async () => {
    if (problems.length) throw new Error(problems.join('\n'));
    const banner = page.getByTestId('error-banner');
    if (await banner.isVisible()) throw new Error(`the page shows an error: ${await banner.innerText()}`);
  };

  // The page's (first) bot link comes to read `name`.
  const botNamed = (name, where) => page.waitForFunction(
    (n) => document.querySelector('[data-testid="bot-link"]')?.textContent === n, name, { timeout: 10_000 },
  ).catch(async () => {
    const shown = await page.getByTestId('bot-link').first().textContent().catch(() => 'no bot link');
    throw new Error(`${where} names its bot ${shown}, not ${name}`);
  });
  const shot = (name) => page.screenshot({ path: screenshot.replace(/(\.png)?$/, `-${name}.png`), fullPage: true });
  // Rotating a secret and deleting ask first: yes.
  page.on('dialog', (dialog) => dialog.accept());

  step('open / (redirects to /dashboard) and log in');
  await page.goto(`${url}/`);
  if (!page.url().startsWith(`${url}/dashboard`)) throw new Error(`/ led to ${page.url()}, not /dashboard`);
  await page.getByTestId('login-token').fill(token);
  await page.getByTestId('login-submit').click();
  await page.getByTestId('logout').waitFor({ state: 'visible' });
  // The document this run started in: a reload would lose it.
  await page.evaluate(() => { window.orqSameDocument = true; });

  step('an admin lands on the overview: the agent up, every status, the hour\'s chart');
  await page.waitForURL(/#\/overview$/);
  await page.getByTestId('overview-bots-value').waitFor();
  const botsUp = await page.getByTestId('overview-bots-value').innerText();
  if (botsUp !== '1 / 1') throw new Error(`the overview shows ${botsUp} bots up, not 1 / 1`);
  const shownStatuses = await page.locator('[data-testid="overview-status"]').evaluateAll((els) => els.map((e) => e.dataset.status));
  if (shownStatuses.join() !== 'WAITING,ASSIGNED,RUNNING,COMPLETE,FAILED,TIMEOUT,CANCELED') throw new Error(`the overview lists statuses ${shownStatuses}`);
  await page.getByTestId('overview-chart').waitFor();
  for (const tile of ['overview-backlog', 'overview-webhooks', 'overview-notifications', 'overview-running']) await page.getByTestId(tile).waitFor();
  await shot('overview-empty');
  await check();

  step(`bots page lists agent ${agent}, by name, linking to its page`);
  await page.getByTestId('nav-bots').click();
  const botRow = page.locator(`[data-testid="bot-row"][data-bot="${agent}"]`);
  await botRow.waitFor();
  const botText = await botRow.innerText();
  if (!/AVAILABLE|BUSY/.test(botText)) throw new Error(`agent ${agent} is not available: ${botText}`);
  await botRow.getByTestId('bot-link').click();
  await page.waitForURL(/#\/bots\/[0-9a-f-]{36}$/);
  const botId = page.url().split('/').pop();
  await page.waitForFunction((name) => document.querySelector('h1')?.textContent === name, agent);
  await page.getByTestId('bot-fields').waitFor();
  await page.getByTestId('bot-tasks').locator('table').waitFor();
  await shot('bot');
  await check();

  step('upload a CSV on the tasks page');
  await page.getByTestId('nav-tasks').click();
  const dir = mkdtempSync(join(tmpdir(), 'orq-dashboard-'));
  const csv = join(dir, 'users.csv');
  writeFileSync(csv, [
    'name,email,profile,cpf',
    'Ana Souza,ana.souza@example.com,atendente,123.456.789-00',
    'Bruno Lima,bruno.lima@example.com,supervisor,234.567.890-11',
    'Carla Dias,carla.dias@example.com,atendente,345.678.901-22',
    'Diego Rocha,diego.rocha@example.com,gerente,456.789.012-33',
    'Elisa Prado,elisa.prado@example.com,atendente,567.890.123-44',
    '',
  ].join('\n'));
  const description = `browser test ${new Date().toISOString()}`;
  await page.getByTestId('upload-description').fill(description);
  await page.getByTestId('upload-system').fill(system);
  await page.getByTestId('upload-file').setInputFiles(csv);
  await page.getByTestId('upload-submit').click();
  await page.waitForURL(/#\/tasks\/[0-9a-f-]{36}$/);
  const taskId = page.url().split('/').pop();
  console.log(`TASK_ID=${taskId}`);

  step('wait for COMPLETE on the detail page, live');
  // Every status the page shows, as it shows it.
  await page.getByTestId('job-status').waitFor();
  await page.evaluate(() => {
    const el = document.querySelector('[data-testid="job-status"]');
    window.orqStatuses = [el.textContent];
    new MutationObserver(() => window.orqStatuses.push(el.textContent))
      .observe(el, { childList: true, characterData: true, subtree: true });
  });
  await page.waitForFunction(
    () => document.querySelector('[data-testid="job-status"]')?.textContent === 'COMPLETE',
    null,
    { timeout: TIMEOUT_MS },
  ).catch(async (err) => {
    const shown = await page.getByTestId('job-status').textContent().catch(() => '?');
    throw new Error(`the task did not show COMPLETE within ${TIMEOUT_MS / 1000} s (shows ${shown}): ${err.message}`);
  });
  await page.waitForFunction(() => document.querySelector('[data-testid="job-progress"]')?.value === 100, null, { timeout: 10_000 })
    .catch(async () => {
      const value = await page.getByTestId('job-progress').evaluate((el) => el.value);
      throw new Error(`the progress bar ended at ${value}%, not 100%`);
    });
  const statuses = await page.evaluate(() => window.orqStatuses);
  step(`statuses shown: ${statuses.join(' → ')}`);
  if (statuses[0] === 'COMPLETE' || statuses.length < 2) {
    throw new Error(`the page never showed the task change: ${statuses.join(' → ')}`);
  }
  if (!(await page.evaluate(() => window.orqSameDocument === true))) {
    throw new Error('the page was reloaded on the way');
  }
  const percent = await page.getByTestId('job-percent').innerText();
  if (percent !== '100%') throw new Error(`the task page shows ${percent}, not 100%`);
  if (!streams.length) throw new Error('the page never opened the event stream');
  for (const request of streams) {
    const auth = request.headers().authorization ?? '';
    if (auth !== `Bearer ${token}`) throw new Error(`the event stream went without the Bearer header: ${request.url()}`);
  }
  const history = await page.getByTestId('job-events').innerText();
  if (!history.includes('COMPLETE')) throw new Error(`the history misses the COMPLETE change:\n${history}`);
  await page.getByTestId('cancel').waitFor({ state: 'hidden' });
  // Its bot by name, a link to the bot's page.
  await botNamed(agent, 'the task page');
  const taskBot = await page.getByTestId('bot-link').getAttribute('href');
  if (taskBot !== `#/bots/${botId}`) throw new Error(`the task's bot links to ${taskBot}`);
  await check();

  step(`screenshot to ${screenshot}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  await check();

  // Every other view renders from the API without an error, each with a
  // screenshot beside the first.
  const views = [
    ['tasks', `[data-testid="task-row"][data-id="${taskId}"]`],
    ['jobs', '[data-testid="list"] tbody tr'],
    ['deliveries', '[data-testid="deliveries"] tbody tr'],
    ['bots', `[data-testid="bot-row"][data-bot="${agent}"]`],
  ];
  for (const [view, ready] of views) {
    step(`view ${view}`);
    await page.getByTestId(`nav-${view}`).click();
    await page.locator(ready).first().waitFor();
    if (view === 'tasks') {
      const text = await page.locator(ready).innerText();
      if (!text.includes('COMPLETE') || !text.includes('100%')) throw new Error(`the tasks list shows the task as: ${text}`);
      const bot = await page.locator(ready).getByTestId('task-bot').innerText();
      if (bot !== agent) throw new Error(`the tasks list's BOT column shows ${bot}, not ${agent}`);
    }
    await page.screenshot({ path: screenshot.replace(/(\.png)?$/, `-${view}.png`), fullPage: true });
    await check();
  }

  step('the deliveries page lists the task\'s deliveries and links to its job page');
  await page.getByTestId('nav-deliveries').click();
  const delivery = page.locator(`[data-testid="delivery-row"][data-job="${taskId}"]`);
  const deadline = Date.now() + 30_000;
  // The reaper delivers within moments: refresh until the task's appear.
  while (!(await delivery.count())) {
    if (Date.now() > deadline) throw new Error('no delivery of the task appeared on the deliveries page');
    await page.waitForTimeout(500);
    await page.getByRole('button', { name: 'Refresh' }).click();
  }
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-deliveries.png'), fullPage: true });
  await delivery.first().getByTestId('delivery-job').click();
  await page.waitForURL(new RegExp(`#/jobs/${taskId}$`));
  await page.waitForFunction(
    () => document.querySelector('[data-testid="job-status"]')?.textContent === 'COMPLETE'
      && document.querySelector('[data-testid="job-progress"]')?.value === 100,
  );
  await page.getByTestId('csv-task-link').waitFor();
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-delivery-job.png'), fullPage: true });
  await check();

  step('the overview counts the completed task, in the chart too');
  await page.getByTestId('nav-overview').click();
  await page.waitForFunction(() => {
    const complete = document.querySelector('[data-testid="overview-status"][data-status="COMPLETE"]');
    return Number(complete?.dataset.count) >= 1
      && Number(document.querySelector('[data-testid="overview-completed"]')?.textContent) >= 1
      && document.querySelectorAll('[data-testid="overview-chart"] rect.bar-complete').length >= 1;
  }, null, { timeout: 15_000 }).catch(async () => {
    throw new Error(`the overview does not count the completed task: ${await page.getByTestId('overview').innerText()}`);
  });
  await shot('overview');
  await check();

  step('scripts: an admin adds one');
  await page.getByTestId('nav-scripts').click();
  await page.getByTestId('new-script').click();
  await page.waitForURL(/#\/scripts\/new$/);
  await page.getByTestId('script-name').fill('greet');
  await page.getByTestId('script-filename').fill('greet.sh');
  await page.getByTestId('script-description').fill('says hello');
  await page.getByTestId('script-content').fill('#!/bin/sh\necho "hello $1, $2"\n');
  await shot('script-form');
  await page.getByTestId('script-save').click();
  await page.waitForURL(/#\/scripts$/);
  await page.locator('[data-testid="script-row"][data-name="greet"]').waitFor();
  await shot('scripts');
  await check();

  step('definitions: an admin defines a task with an input and an options argument');
  await page.getByTestId('nav-definitions').click();
  await page.getByTestId('new-definition').click();
  await page.waitForURL(/#\/definitions\/new$/);
  await page.getByTestId('def-name').fill('greeter');
  await page.getByTestId('def-description').fill('greets someone');
  await page.getByTestId('def-script').selectOption({ label: 'greet (greet.sh)' });
  await page.getByTestId('def-timeout').fill('60');
  await page.getByTestId('add-argument').click();
  await page.getByTestId('add-argument').click();
  const argRows = page.getByTestId('arg-row');
  await argRows.nth(0).getByTestId('arg-label').fill('who');
  await argRows.nth(1).getByTestId('arg-type').selectOption('options');
  await argRows.nth(1).getByTestId('arg-label').fill('tone');
  await argRows.nth(1).getByTestId('arg-value').fill('calm, loud');
  await shot('definition-form');
  await page.getByTestId('def-save').click();
  await page.waitForURL(/#\/definitions\/[0-9a-f-]{36}$/);
  const definitionId = page.url().split('/').pop();
  console.log(`DEFINITION_ID=${definitionId}`);
  await page.waitForFunction(() => document.querySelector('h1')?.textContent === 'greeter');
  await check();

  step('the definition is edited');
  await page.getByTestId('edit-definition').click();
  await page.waitForURL(new RegExp(`#/definitions/${definitionId}/edit$`));
  await page.getByTestId('def-description').waitFor();
  if ((await page.getByTestId('arg-row').count()) !== 2) throw new Error('the edit form lost the arguments');
  await page.getByTestId('def-description').fill('greets someone, edited');
  await page.getByTestId('def-save').click();
  await page.waitForURL(new RegExp(`#/definitions/${definitionId}$`));
  await page.waitForFunction(() => document.querySelector('[data-testid="definition-fields"]')?.innerText.includes('greets someone, edited'));
  const fields = await page.getByTestId('definition-fields').innerText();
  if (!fields.includes('greet') || !fields.includes('who, tone')) throw new Error(`the definition shows: ${fields}`);
  await check();

  step('the definition is run with arguments; its job runs to COMPLETE on the agent');
  await page.getByTestId('run-arg-0').fill('world');
  await page.getByTestId('run-arg-1').selectOption('loud');
  await shot('definition');
  await page.getByTestId('run-submit').click();
  await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/);
  const jobId = page.url().split('/').pop();
  console.log(`JOB_ID=${jobId}`);
  await page.waitForFunction(() => document.querySelector('[data-testid="job-status"]')?.textContent === 'COMPLETE', null, { timeout: TIMEOUT_MS })
    .catch(async () => { throw new Error(`the run did not show COMPLETE: ${await page.getByTestId('job-status').innerText()}`); });
  await botNamed(agent, 'the job page');
  const definitionLink = page.getByTestId('definition-link');
  if ((await definitionLink.innerText()) !== 'greeter') throw new Error(`the job's task link says ${await definitionLink.innerText()}`);
  await page.waitForFunction(() => document.body.innerText.includes('hello world, loud'), null, { timeout: 10_000 })
    .catch(() => { throw new Error('the job page does not show the script\'s output "hello world, loud"'); });
  await shot('run-job');
  await check();

  step('the definition lists its job; an admin reads and rotates its secret key and exports its recipe');
  await definitionLink.click();
  await page.waitForURL(new RegExp(`#/definitions/${definitionId}$`));
  const ownJob = page.locator(`[data-testid="definition-jobs"] [data-testid="job-row"][data-id="${jobId}"]`);
  await ownJob.waitFor();
  if (!(await ownJob.innerText()).includes('COMPLETE')) throw new Error(`the definition's job shows: ${await ownJob.innerText()}`);
  if ((await ownJob.getByTestId('job-bot').innerText()) !== agent) throw new Error('the job row does not name its bot');
  await page.getByTestId('show-secret').click();
  await page.waitForFunction(() => /^[0-9a-f]{64}$/.test(document.querySelector('[data-testid="secret"]')?.textContent ?? ''));
  const secret = await page.getByTestId('secret').innerText();
  await page.getByTestId('rotate-secret').click();
  await page.waitForFunction((old) => {
    const now = document.querySelector('[data-testid="secret"]')?.textContent ?? '';
    return /^[0-9a-f]{64}$/.test(now) && now !== old;
  }, secret);
  await page.getByTestId('export-recipe').click();
  await page.getByTestId('recipe').waitFor();
  const recipe = JSON.parse(await page.getByTestId('recipe').innerText());
  if (recipe.version !== 1 || recipe.file?.filename !== 'greet.sh' || recipe.task?.name !== 'greeter') {
    throw new Error(`the exported recipe: ${JSON.stringify(recipe)}`);
  }
  if (!(await page.getByTestId('recipe-download').getAttribute('href'))?.startsWith('blob:')) throw new Error('no recipe download');
  await shot('definition-admin');
  await check();

  step('the recipe is imported as a new definition');
  await page.getByTestId('nav-definitions').click();
  await page.getByTestId('import-card').locator('summary').click();
  await page.getByTestId('import-recipe').fill(JSON.stringify(recipe));
  await shot('definitions-import');
  await page.getByTestId('import-submit').click();
  await page.waitForURL((u) => /#\/definitions\/[0-9a-f-]{36}$/.test(u.hash) && !u.hash.endsWith(definitionId));
  const importedId = page.url().split('/').pop();
  console.log(`IMPORTED_ID=${importedId}`);
  await page.waitForFunction(() => document.querySelector('h1')?.textContent === 'greeter');

  step('the copy is made to require a tag no agent carries: its run says why it waits, the overview counts it');
  await page.getByTestId('edit-definition').click();
  await page.getByTestId('def-required-tags').fill('gpu');
  await page.getByTestId('def-tags').fill('copy, demo');
  await page.getByTestId('def-save').click();
  await page.waitForURL(new RegExp(`#/definitions/${importedId}$`));
  await page.waitForFunction(() => /required tags\s*gpu/.test(document.querySelector('[data-testid="definition-fields"]')?.innerText ?? ''));
  await page.getByTestId('run-arg-0').fill('nobody');
  await page.getByTestId('run-submit').click();
  await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/);
  const strandedId = page.url().split('/').pop();
  console.log(`STRANDED_ID=${strandedId}`);
  await page.waitForFunction(() => (document.querySelector('[data-testid="waiting-reason"]')?.textContent ?? '').includes('gpu'), null, { timeout: 20_000 })
    .catch(() => { throw new Error('the stranded run\'s page does not say why it waits'); });
  await shot('stranded-job');
  await page.getByTestId('nav-overview').click();
  await page.getByTestId('overview-stranded').waitFor({ timeout: 15_000 });
  await page.getByTestId('nav-definitions').click();
  await page.getByTestId('filter-tags').fill('demo');
  await page.getByTestId('filter-tags').dispatchEvent('change');
  await page.locator(`[data-testid="definition-row"][data-id="${importedId}"]`).waitFor();
  await page.locator(`[data-testid="definition-row"][data-id="${definitionId}"]`).waitFor({ state: 'detached' });
  await page.getByTestId('filter-tags').fill('');
  await page.getByTestId('filter-tags').dispatchEvent('change');
  for (const id of [definitionId, importedId]) await page.locator(`[data-testid="definition-row"][data-id="${id}"]`).waitFor();
  await shot('definitions');
  await check();

  step('the jobs list names the run\'s bot');
  await page.getByTestId('nav-jobs').click();
  const jobRow = page.locator(`[data-testid="job-row"][data-id="${jobId}"]`);
  await jobRow.waitFor();
  if ((await jobRow.getByTestId('job-bot').innerText()) !== agent) throw new Error(`the jobs list names ${await jobRow.getByTestId('job-bot').innerText()}`);
  await shot('jobs-named');
  await check();

  step('the People view lists the micro-task; its page shows executions, submissions, notifications');
  await page.getByTestId('nav-people').click();
  const microRow = page.locator(`[data-testid="micro-task-row"][data-id="${microTaskId}"]`);
  await microRow.waitFor();
  const microText = await microRow.innerText();
  if (!microText.includes('survey') || !microText.includes('NEW')) throw new Error(`the micro-task row shows: ${microText}`);
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-people.png'), fullPage: true });
  await check();
  await microRow.getByRole('link').first().click();
  await page.waitForURL(new RegExp(`#/people/micro/${microTaskId}$`));
  await page.waitForFunction(() => document.querySelector('[data-testid="job-status"]')?.textContent === 'NEW');
  for (const part of ['executions', 'submissions', 'notifications']) await page.getByTestId(part).waitFor();
  const flow = await page.getByTestId('human-input').innerText();
  if (!flow.includes('"step": 1')) throw new Error(`the micro-task page shows no task flow: ${flow}`);
  if (await page.getByTestId('expire').count()) throw new Error('a micro-task offers Expire');
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-micro-task.png'), fullPage: true });
  await check();

  step('the user tasks tab lists the user task; the admin expires it on its page, seen live');
  await page.getByTestId('nav-people').click();
  await page.getByTestId('people-tab-user').click();
  const userRow = page.locator(`[data-testid="user-task-row"][data-id="${userTaskId}"]`);
  await userRow.waitFor();
  const userText = await userRow.innerText();
  if (!userText.includes('approve') || !userText.includes('NEW')) throw new Error(`the user task row shows: ${userText}`);
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-user-tasks.png'), fullPage: true });
  await check();
  await userRow.getByRole('link').first().click();
  await page.waitForURL(new RegExp(`#/people/user/${userTaskId}$`));
  await page.waitForFunction(() => document.querySelector('[data-testid="job-status"]')?.textContent === 'NEW');
  const input = await page.getByTestId('human-input').innerText();
  if (!input.includes('"x": 1')) throw new Error(`the user task page shows no input: ${input}`);
  await page.waitForFunction(() => document.querySelector('[data-testid="live"]')?.textContent === 'live');
  await page.evaluate(() => {
    const el = document.querySelector('[data-testid="job-status"]');
    window.orqStatuses = [el.textContent];
    new MutationObserver(() => window.orqStatuses.push(el.textContent))
      .observe(el, { childList: true, characterData: true, subtree: true });
  });
  await page.getByTestId('expire').click();
  await page.waitForFunction(() => document.querySelector('[data-testid="job-status"]')?.textContent === 'COMPLETE', null, { timeout: 10_000 });
  // The history is filled from the feed alone: both steps arrive live.
  await page.waitForFunction(() => {
    const text = document.querySelector('[data-testid="job-events"]')?.innerText ?? '';
    return text.includes('SUBMITTED') && text.includes('COMPLETE');
  }, null, { timeout: 10_000 }).catch(async () => {
    throw new Error(`the history did not show the expiry live:\n${await page.getByTestId('job-events').innerText()}`);
  });
  await page.getByTestId('expire').waitFor({ state: 'hidden' });
  const expiredResult = await page.getByTestId('human-result').innerText();
  if (!expiredResult.includes('"is_continue": true')) throw new Error(`the expired task's result: ${expiredResult}`);
  step(`user task statuses shown: ${(await page.evaluate(() => window.orqStatuses)).join(' → ')}`);
  if (!(await page.evaluate(() => window.orqSameDocument === true))) throw new Error('the page was reloaded on the way');
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-user-task.png'), fullPage: true });
  await check();
  await page.getByTestId('nav-people').click();
  await page.getByTestId('people-tab-user').click();
  await page.waitForFunction((id) => document.querySelector(`[data-testid="user-task-row"][data-id="${id}"]`)?.innerText.includes('COMPLETE'), userTaskId);
  await check();

  step('log out from the bots page; nothing wipes the login form');
  await page.getByTestId('nav-bots').click();
  await botRow.waitFor();
  await page.getByTestId('logout').click();
  await page.getByTestId('login-token').fill(viewerToken);
  // Longer than the bots page's poll: a leaked poller would log out again.
  await page.waitForTimeout(4000);
  if ((await page.getByTestId('login-token').inputValue()) !== viewerToken) {
    throw new Error('the login form was reset after logging out');
  }

  step('a viewer lands on the bots, is offered no deliveries nor overview, and reads definitions only');
  await page.getByTestId('login-submit').click();
  await page.getByTestId('logout').waitFor({ state: 'visible' });
  await page.getByTestId('nav-bots').waitFor({ state: 'visible' });
  if (await page.getByTestId('nav-deliveries').isVisible()) throw new Error('a viewer sees the deliveries link');
  if (await page.getByTestId('nav-overview').isVisible()) throw new Error('a viewer sees the overview link');
  await page.evaluate(() => { location.hash = '#/deliveries'; });
  await page.getByTestId('admins-only').waitFor();
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-viewer-deliveries.png'), fullPage: true });
  await page.evaluate(() => { location.hash = '#/overview'; });
  await page.getByTestId('admins-only').waitFor();
  await page.getByTestId('nav-definitions').click();
  await page.locator(`[data-testid="definition-row"][data-id="${definitionId}"]`).waitFor();
  if (await page.getByTestId('new-definition').count()) throw new Error('a viewer is offered a new definition');
  await page.locator(`[data-testid="definition-row"][data-id="${definitionId}"] a`).first().click();
  await page.locator(`[data-testid="definition-jobs"] [data-testid="job-row"][data-id="${jobId}"]`).waitFor();
  for (const part of ['run-card', 'credentials-card', 'recipe-card', 'edit-definition']) {
    if (await page.getByTestId(part).count()) throw new Error(`a viewer is offered ${part}`);
  }
  await shot('viewer-definition');
  await check();

  step('a token the stream refuses (a bot\'s) logs out instead of reconnecting');
  await page.getByTestId('logout').click();
  await page.evaluate(() => { location.hash = '#/tasks'; });
  refusalsExpected = true;
  const before = streams.length;
  await page.getByTestId('login-token').fill(botToken);
  await page.getByTestId('login-submit').click();
  await page.getByTestId('login-token').waitFor();
  const banner = page.getByTestId('error-banner');
  await banner.waitFor();
  const said = await banner.innerText();
  if (!said.includes('403')) throw new Error(`the refusal is not shown: ${said}`);
  await page.waitForTimeout(3000);
  if (streams.length - before !== 1) throw new Error(`the refused stream was asked ${streams.length - before} times`);
  if (await page.getByTestId('logout').isVisible()) throw new Error('still logged in after the stream was refused');
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-refused.png'), fullPage: true });
  if (problems.length) throw new Error(problems.join('\n'));
  if (!(await page.evaluate(() => window.orqSameDocument === true))) {
    throw new Error('the page was reloaded on the way');
  }
}

const browser = await chromium.launch({
  executablePath,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  await run(browser);
  step('ok');
} catch (err) {
  console.error(`dashboard test FAILED: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
