// Drives the gateway's dashboard in the system's headless Chromium: logs in
// with a token, checks the bots page lists the running agent, uploads a CSV
// task, and waits on its detail page for COMPLETE and 100% to arrive live
// (from the event feed, read with fetch and a Bearer header: the page is
// never reloaded, and no URL it requests carries a token). Then every view
// renders; the deliveries page lists the task's webhook deliveries and links
// to the task through the jobs view; the People view lists a micro-task
// (its page: executions, submissions, notifications) and a user task, which
// the admin expires on its page (COMPLETE, its history arriving live); after
// logging out, nothing wipes the login form, a viewer is offered no
// deliveries, and a token the stream refuses logs out at once instead of
// reconnecting. Full-page screenshots
// along the way. Any uncaught page error or console error fails the run.
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

  step('open / (redirects to /dashboard) and log in');
  await page.goto(`${url}/`);
  if (!page.url().startsWith(`${url}/dashboard`)) throw new Error(`/ led to ${page.url()}, not /dashboard`);
  await page.getByTestId('login-token').fill(token);
  await page.getByTestId('login-submit').click();
  await page.getByTestId('logout').waitFor({ state: 'visible' });
  // The document this run started in: a reload would lose it.
  await page.evaluate(() => { window.orqSameDocument = true; });

  step(`bots page lists agent ${agent}`);
  const botRow = page.locator(`[data-testid="bot-row"][data-bot="${agent}"]`);
  await botRow.waitFor();
  const botText = await botRow.innerText();
  if (!/AVAILABLE|BUSY/.test(botText)) throw new Error(`agent ${agent} is not available: ${botText}`);
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

  step('a viewer is offered no deliveries');
  await page.getByTestId('login-submit').click();
  await page.getByTestId('logout').waitFor({ state: 'visible' });
  await page.getByTestId('nav-bots').waitFor({ state: 'visible' });
  if (await page.getByTestId('nav-deliveries').isVisible()) throw new Error('a viewer sees the deliveries link');
  await page.evaluate(() => { location.hash = '#/deliveries'; });
  await page.getByTestId('admins-only').waitFor();
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-viewer-deliveries.png'), fullPage: true });
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
