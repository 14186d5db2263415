#!/usr/bin/env node
// Jupyter through jobgate, the way a user does it, in headless Chromium:
// open the one-time link, land on Jupyter's file tree, New -> Python 3 (a new tab),
// type print(6*7) in the first cell, Shift+Enter, and see 42 in its output area.
// The kernel's messages travel over a WebSocket through the gateway, which is the point.
//
//   node jupyter.mjs --link URL [--cert FILE | --ignore-https-errors]
//                    [--resolve 'RULES'] [--timeout SECONDS] [--artifacts DIR]
//
// --cert FILE   trust exactly the key(s) of the PEM certificate(s) in FILE (the gateway's
//               tls.crt): Chromium's --ignore-certificate-errors-spki-list, so a different
//               certificate is still refused. Without --cert, --ignore-https-errors is needed
//               for a self-signed gateway.
// --resolve     Chromium --host-resolver-rules, e.g. 'MAP *.jobgate.test 127.0.0.1', for a
//               gateway whose domain is not localhost (*.localhost needs nothing).
// --artifacts   on failure, a screenshot and the HTML of each open page are written there.
//
// Prints one JSON line on stdout: {"ok":true,...} (exit 0) or {"ok":false,"error":...} (exit 1);
// progress goes to stderr. Exit 2 for usage errors or a browser that does not start.
import { createHash, X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.JOBGATE_CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

function usage(msg) {
  process.stderr.write(`jupyter.mjs: ${msg}\nusage: node jupyter.mjs --link URL ` +
    '[--cert FILE | --ignore-https-errors] [--resolve RULES] [--timeout SECONDS] ' +
    '[--artifacts DIR]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = { timeout: 120, ignoreHttpsErrors: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => (i + 1 < argv.length ? argv[++i] : usage(`${a} needs a value`));
    if (a === '--link') o.link = val();
    else if (a === '--cert') o.cert = val();
    else if (a === '--ignore-https-errors') o.ignoreHttpsErrors = true;
    else if (a === '--resolve') o.resolve = val();
    else if (a === '--timeout') o.timeout = Number(val());
    else if (a === '--artifacts') o.artifacts = val();
    else usage(`unknown argument ${a}`);
  }
  if (!o.link) usage('--link is required');
  if (!/^https:\/\/[^/]+\/_jobgate\/redeem\//.test(o.link)) usage(`not a jobgate link: ${o.link}`);
  if (!(o.timeout > 0)) usage('--timeout must be a positive number of seconds');
  if (!o.cert && !o.ignoreHttpsErrors) usage('give --cert FILE or --ignore-https-errors');
  return o;
}

// base64(SHA-256(SubjectPublicKeyInfo)) of every certificate in a PEM file.
function spkiHashes(file) {
  const pems = readFileSync(file, 'utf8').match(
    /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) || [];
  if (!pems.length) throw new Error(`no PEM certificate in ${file}`);
  return pems.map((p) => createHash('sha256').update(
    new X509Certificate(p).publicKey.export({ type: 'spki', format: 'der' })).digest('base64'));
}

const log = (m) => process.stderr.write(`browser: ${m}\n`);
const t0 = Date.now();
const secs = () => Number(((Date.now() - t0) / 1000).toFixed(1));

const opt = parseArgs(process.argv.slice(2));
const deadline = t0 + opt.timeout * 1000;
const left = () => Math.max(1000, deadline - Date.now());

const args = [...FLAGS];
if (opt.cert) args.push(`--ignore-certificate-errors-spki-list=${spkiHashes(opt.cert).join(',')}`);
if (opt.resolve) args.push(`--host-resolver-rules=${opt.resolve}`);

const result = { ok: false, link_origin: new URL(opt.link).origin, steps: {} };
const sockets = [];      // every WebSocket the pages open: {url, received, sent, closed}
const problems = [];     // console errors, failed requests, page errors (for the report)
let browser;
let context;

function watch(page) {
  page.on('websocket', (ws) => {
    const rec = { url: ws.url(), received: 0, sent: 0, closed: false };
    sockets.push(rec);
    ws.on('framereceived', () => { rec.received++; });
    ws.on('framesent', () => { rec.sent++; });
    ws.on('close', () => { rec.closed = true; });
    ws.on('socketerror', (e) => problems.push(`websocket ${rec.url}: ${e}`));
  });
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed',
    (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
}

async function saveArtifacts() {
  if (!opt.artifacts || !context) return;
  mkdirSync(opt.artifacts, { recursive: true });
  let i = 0;
  for (const p of context.pages()) {
    i++;
    try {
      await p.screenshot({ path: join(opt.artifacts, `page${i}.png`), fullPage: true,
        timeout: 5000 });
      writeFileSync(join(opt.artifacts, `page${i}.html`),
        `<!-- ${p.url()} -->\n${await p.content()}`);
    } catch (e) {
      log(`could not save page ${i} (${p.url()}): ${e.message}`);
    }
  }
}

async function main() {
  log(`starting ${CHROMIUM}`);
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args,
      timeout: 30000 });
  } catch (e) {
    process.stdout.write(
      JSON.stringify({ ok: false, launch_failed: true, error: e.message }) + '\n');
    process.exit(2);
  }
  result.browser_version = browser.version();
  context = await browser.newContext({ ignoreHTTPSErrors: opt.ignoreHttpsErrors });
  context.setDefaultTimeout(30000);
  const tree = await context.newPage();
  watch(tree);

  // 1. The link: redeem sets the session cookie and redirects to /, Jupyter to /tree.
  log('opening the link');
  const resp = await tree.goto(opt.link, { timeout: left() });
  result.steps.link_status = resp ? resp.status() : null;
  const notTree = async () => {
    const body = (await tree.locator('body').innerText().catch(() => '')).slice(0, 300);
    return new Error(`the link did not lead to Jupyter's file tree: at ${tree.url()} ` +
      `(status ${result.steps.link_status}, title ${JSON.stringify(await tree.title())}, ` +
      `text ${JSON.stringify(body)})`);
  };
  // A jobgate error page (403 used link, 502 app gone...) is final: no need to wait.
  if (result.steps.link_status >= 400) throw await notTree();
  await tree.waitForURL((u) => u.origin === result.link_origin && u.pathname.startsWith('/tree'),
    { timeout: left() }).catch(async () => { throw await notTree(); });
  result.steps.tree = secs();

  // 2. New -> Python 3: Jupyter creates Untitled.ipynb and opens it in a new tab.
  log('New -> Python 3');
  await tree.locator('#new-dropdown-button').click({ timeout: left() });
  const item = tree.locator('#new-menu li[id^="kernel-"] a')
    .filter({ hasText: /Python 3/ }).first();
  const [nb] = await Promise.all([
    context.waitForEvent('page', { timeout: left() }),
    item.click({ timeout: left() }),
  ]);
  watch(nb);
  await nb.waitForURL(/\/notebooks\/[^?#]*\.ipynb/, { timeout: left() });
  result.notebook_url = nb.url();
  result.steps.notebook_open = secs();

  // 3. The kernel is up when the UI's indicator says idle: its status came over the WebSocket.
  log('waiting for the kernel');
  await nb.locator('#kernel_indicator_icon.kernel_idle_icon')
    .waitFor({ state: 'attached', timeout: left() })
    .catch(async () => {
      const cls = await nb.locator('#kernel_indicator_icon').getAttribute('class')
        .catch(() => null);
      throw new Error(`the kernel never became idle (indicator class ${JSON.stringify(cls)}; ` +
        `websockets ${JSON.stringify(sockets)})`);
    });
  result.steps.kernel_idle = secs();

  // 4. Type into the first cell and run it.
  log('running print(6*7)');
  const cell = nb.locator('#notebook-container .cell.code_cell').first();
  await cell.locator('.CodeMirror').click();
  await nb.keyboard.type('print(6*7)');
  const source = await cell.locator('.CodeMirror-code').innerText();
  if (source.trim() !== 'print(6*7)') {
    throw new Error(`the cell holds ${JSON.stringify(source)}, not print(6*7)`);
  }
  await nb.keyboard.press('Shift+Enter');

  // 5. Its output area must hold exactly 42, and the prompt an execution count (In [1]:).
  // The output comes on the kernel's iopub channel and the count with execute_reply on the
  // shell channel, in either order: wait for both. Once the count is there the kernel has
  // answered, and the output gets a grace period instead of the whole timeout.
  const out = cell.locator('.output_area .output_subarea');
  const promptText = async () =>
    (await cell.locator('.input_prompt').innerText()).replace(/\s+/g, ' ').trim();
  let until = Date.now() + Math.min(left(), 60000);
  let answered = false;
  let texts = [];
  let prompt = '';
  for (;;) {
    texts = (await out.allInnerTexts()).map((t) => t.trim());
    prompt = await promptText();
    const counted = /^In \[\d+\]:$/.test(prompt);
    if (texts.length === 1 && texts[0] === '42' && counted) break;
    if (counted && !answered) {
      answered = true;
      until = Math.min(until, Date.now() + 5000);
    }
    if (Date.now() > until) {
      throw new Error(`the cell's output is ${JSON.stringify(texts)}, not ["42"], its prompt ` +
        `${JSON.stringify(prompt)} (websockets ${JSON.stringify(sockets)})`);
    }
    await nb.waitForTimeout(100);
  }
  result.output = texts[0];
  result.prompt = prompt;
  result.steps.output = secs();

  // The kernel channel went through the gateway (same origin as the link) and carried traffic.
  const origin = result.link_origin.replace(/^https:/, 'wss:');
  const channel = sockets.find((s) => s.url.startsWith(`${origin}/api/kernels/`) && s.received > 0);
  if (!channel) {
    throw new Error(`no kernel WebSocket with traffic through ${origin}: ` +
      JSON.stringify(sockets));
  }
  result.websockets = sockets;
  result.ok = true;
}

let code = 0;
try {
  await main();
} catch (e) {
  code = 1;
  result.error = (e && e.message ? e.message : String(e)).split('\n')[0];
  result.websockets = sockets;
  await saveArtifacts();
} finally {
  result.seconds = secs();
  result.problems = problems.slice(0, 20);
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(result) + '\n');
process.exit(code);
