#!/usr/bin/env node
// Cross-app isolation in a real browser (issue 13): every app lives under the gateway's
// domain, so a page of one app is "same-site" to all the others. Opens the victim's link
// (its session cookie), then the attacker's link, whose page tries what a hostile app
// would: a credentialed fetch POST, a form POST, an <img> on the victim's logout, a
// WebSocket, and (from its server) a cookie for the whole domain. Then it reads, as the
// victim, what the victim's app receives (/headers) and whether the session still works.
//
//   node siblings.mjs --victim LINK --attacker LINK [--resolve RULES] [--timeout SECONDS]
//
// The attacker's link must carry ?next=/?victim=<victim origin>. The gateway is trusted
// with ignoreHTTPSErrors (this script is about cookies and requests, not TLS). Prints one
// JSON line: {"ok":true, "attacks":{...}, "victim_status":..., "victim_cookies":[...]}
// (exit 0) or {"ok":false,"error":...} (exit 1).
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.JOBGATE_CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const o = { timeout: 60 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const k = argv[i].replace(/^--/, '');
  if (!['victim', 'attacker', 'resolve', 'timeout'].includes(k) || i + 1 >= argv.length) {
    process.stderr.write(`siblings.mjs: bad argument ${argv[i]}\n`);
    process.exit(2);
  }
  o[k] = k === 'timeout' ? Number(argv[i + 1]) : argv[i + 1];
}
const log = (m) => process.stderr.write(`browser: ${m}\n`);
const done = (r, code) => { process.stdout.write(JSON.stringify(r) + '\n'); process.exit(code); };

async function main() {
  const args = [...FLAGS];
  if (o.resolve) args.push(`--host-resolver-rules=${o.resolve}`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args,
    timeout: 30000 });
  try {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    context.setDefaultTimeout(o.timeout * 1000);
    const victim = await context.newPage();
    log('victim: opening the link');
    let r = await victim.goto(o.victim);
    if (!r || r.status() !== 200) throw new Error(`the victim's link gave ${r && r.status()}`);
    const victimOrigin = new URL(o.victim).origin;

    log('attacker: opening the link (its page attacks)');
    const attacker = await context.newPage();
    r = await attacker.goto(o.attacker);
    if (!r || r.status() !== 200) throw new Error(`the attacker's link gave ${r && r.status()}`);
    await attacker.waitForFunction(() => document.title.startsWith('done '));
    const attacks = JSON.parse((await attacker.title()).slice(5));
    const attackerCookies = (await context.cookies(new URL(o.attacker).origin)).map((c) => c.name);

    log('victim: what its app receives now');
    r = await victim.goto(`${victimOrigin}/headers`);
    const status = r ? r.status() : null;
    let cookies = [];
    if (status === 200) {
      const heads = JSON.parse(await r.text());
      cookies = heads.filter(([k]) => k.toLowerCase() === 'cookie')
        .flatMap(([, v]) => v.split(';').map((p) => p.trim().split('=')[0]));
    }
    done({ ok: true, attacks, victim_status: status, victim_cookies: cookies,
      attacker_cookies: attackerCookies }, 0);
  } finally {
    await browser.close().catch(() => {});
  }
}

const timer = setTimeout(() => done({ ok: false, error: `timed out after ${o.timeout} s` }, 1),
  o.timeout * 1000);
timer.unref();
main().catch((e) => done({ ok: false, error: e.message }, 1));
