// Test harness: headless Chromium, the relay (serving the page too), a recording stand-in for
// keeptyping, and (for the end-to-end test) the real keeptyping wired to its mock upstream.

import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { createRelay, staticFiles } from '../relay.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = join(here, '..'); // examples/composer: the module and test/page.html
export const HOOK_TOKEN = 'composer-test-hook-token';
export const ACCOUNT = 'acct_0123456789abcdef0123456789abcdef';
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${server.address().port}`));
  });
}

/** A free loopback port (bound, then released). */
export async function freePort() {
  const s = createServer();
  const url = await listen(s);
  await new Promise((r) => s.close(r));
  return Number(new URL(url).port);
}

/** A stand-in keeptyping that records each hook call (time, action, body, authorization). */
export async function fakeKeeptyping() {
  const calls = [];
  const server = createServer((req, res) => {
    let data = '';
    req.on('data', (c) => (data += c));
    req.on('end', () => {
      const action = req.url.replace('/v1/typing/', '');
      calls.push({ t: performance.now(), action, body: JSON.parse(data), auth: req.headers.authorization });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ outcome: action === 'stop' ? 'stopped' : 'started' }));
    });
  });
  const url = await listen(server);
  return { url, calls, close: () => new Promise((r) => server.close(r)) };
}

/** The relay (forwarding to `keeptypingUrl`) plus the static files, on a free port. */
export async function relayServer(keeptypingUrl) {
  const forwarded = [];
  const relay = createRelay({
    keeptypingUrl,
    hookToken: HOOK_TOKEN,
    authorize: (_req, account) => account === ACCOUNT,
    onForward: (action, body, status) => forwarded.push({ t: performance.now(), action, body, status }),
  });
  const files = staticFiles(ROOT);
  const server = createServer(async (req, res) => {
    if ((await relay(req, res)) || (await files(req, res))) return;
    res.writeHead(404);
    res.end();
  });
  const url = await listen(server);
  return {
    url,
    forwarded,
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(r));
    },
  };
}

/**
 * Headless Chromium, loopback only, on a fresh profile: playwright-core refuses an explicit
 * --user-data-dir with launch() and passes its own, a new temporary directory per launch, that
 * it removes on close.
 */
export async function launch() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
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
  return {
    browser,
    close: () => browser.close(),
  };
}

/** A new page on `base`/test/page.html with the kit set up by `opts`. */
export async function openPage(browser, base, opts) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${base}/test/page.html`);
  await page.waitForFunction(() => window.ready === true);
  await page.evaluate((o) => window.setup(o), { account_id: ACCOUNT, chat_id: '424242', ...opts });
  return { context, page, errors };
}

/** Waits until `pred()` is truthy, polling every 20 ms, or throws after `ms`. */
export async function until(pred, ms, what) {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    const v = await pred();
    if (v) return v;
    await sleep(20);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

/**
 * The real keeptyping (`bin`) wired to its own mock upstream (`bin mock-upstream`), each on free
 * loopback ports, with a hook token. Resolves once both answer.
 */
export async function realKeeptyping(bin) {
  const [mockPort, hookPort, adminPort] = [await freePort(), await freePort(), await freePort()];
  const logs = [];
  const start = (args, env) => {
    const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d) => logs.push(String(d)));
    child.stderr.on('data', (d) => logs.push(String(d)));
    return child;
  };
  const mock = start(['mock-upstream', '--listen', `127.0.0.1:${mockPort}`], {});
  const service = start(['serve'], {
    KEEPTYPING__SERVER__LISTEN: `127.0.0.1:${hookPort}`,
    KEEPTYPING__ADMIN__LISTEN: `127.0.0.1:${adminPort}`,
    KEEPTYPING__UPSTREAM__BASE_URL: `http://127.0.0.1:${mockPort}`,
    ONLYFANSAPI_API_KEY: 'composer-test-key',
    KEEPTYPING_HOOK_TOKEN: HOOK_TOKEN,
    RUST_LOG: 'warn',
  });
  const mockUrl = `http://127.0.0.1:${mockPort}`;
  const ok = async (url) => {
    try {
      return (await fetch(url)).ok;
    } catch {
      return false;
    }
  };
  try {
    await until(() => ok(`${mockUrl}/_mock/now`), 15000, 'the mock upstream');
    await until(() => ok(`http://127.0.0.1:${adminPort}/readyz`), 15000, 'keeptyping /readyz');
  } catch (e) {
    mock.kill('SIGTERM');
    service.kill('SIGTERM');
    throw new Error(`${e.message}\n${logs.join('')}`);
  }
  const exited = (child) => new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
  return {
    url: `http://127.0.0.1:${hookPort}`,
    mockUrl,
    logs,
    /** The mock's clock, in its record's time base. */
    mockNow: async () => (await (await fetch(`${mockUrl}/_mock/now`)).json()).now_ms,
    /** Typing calls the mock received for `chat` (at or after `sinceMs`). */
    typing: async (chat, sinceMs = 0) => {
      const q = new URLSearchParams({ kind: 'typing', chat, since_ms: String(sinceMs) });
      return (await (await fetch(`${mockUrl}/_mock/requests?${q}`)).json()).requests;
    },
    close: async () => {
      service.kill('SIGTERM');
      mock.kill('SIGTERM');
      await Promise.all([exited(service), exited(mock)]);
    },
  };
}
