// relay.mjs: the chat tool's server side of the composer kit, dependency-free (Node 20+).
//
// The browser never sees the keeptyping hook token. keeptyping-composer.js posts to
// `POST /keeptyping/{start,stop,batch}` on the tool's own origin; this relay checks the action and
// the fields, asks the tool whether the signed-in chatter may act on the account, adds
// `Authorization: Bearer <hook token>` and forwards to keeptyping, answering with keeptyping's
// status and body.
//
// As a library:   import { createRelay } from './relay.mjs';
//                 const relay = createRelay({ keeptypingUrl, hookToken, authorize });
//                 // in your HTTP server: if (await relay(req, res)) return;
// On its own:     KEEPTYPING_URL=http://127.0.0.1:8080 KEEPTYPING_HOOK_TOKEN=... \
//                   node examples/composer/relay.mjs --listen 127.0.0.1:3000 --static examples/composer
//                 (also serves the files under --static, e.g. the demo page, for trying it out)

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const ACTIONS = new Set(['start', 'stop', 'batch']);
const FIELDS = ['account_id', 'chat_id', 'platform', 'chatter_id', 'priority', 'ttl_ms'];
const MAX_BODY = 64 * 1024; // keeptyping's default server.max_body_bytes
const MAX_EVENTS = 500; // keeptyping's default hooks.max_batch_events

class Refused extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function pick(event) {
  if (typeof event !== 'object' || event === null || Array.isArray(event)) {
    throw new Refused(400, 'invalid_field', 'each event must be a JSON object');
  }
  const out = {};
  for (const f of FIELDS) if (event[f] !== undefined) out[f] = event[f];
  return out;
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Refused(413, 'payload_too_large', `body over ${MAX_BODY} bytes`);
    chunks.push(chunk);
  }
  // sendBeacon sends text/plain: the body is parsed as JSON whatever its content type.
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new Refused(400, 'bad_json', 'body is not JSON');
  }
}

/**
 * A request handler for `POST {prefix}/{start,stop,batch}`; resolves true when it answered the
 * request, false when the path is not its own.
 *
 * @param {object} o
 * @param {string} o.keeptypingUrl e.g. http://127.0.0.1:8080
 * @param {string} o.hookToken the bearer token (from the tool's secret store, never the page)
 * @param {(req: import('node:http').IncomingMessage, accountId: string) => boolean | Promise<boolean>} o.authorize
 *   whether the chatter behind `req` (its session cookie) may act on `accountId`
 * @param {string} [o.prefix] default `/keeptyping`
 * @param {(action: string, body: object, status: number) => void} [o.onForward] observer
 */
export function createRelay(o) {
  if (!o.hookToken) throw new Error('createRelay: hookToken is required');
  if (typeof o.authorize !== 'function') throw new Error('createRelay: authorize(req, accountId) is required');
  const prefix = o.prefix ?? '/keeptyping';
  const base = o.keeptypingUrl.replace(/\/+$/, '');
  return async function relay(req, res) {
    const url = new URL(req.url, 'http://relay');
    if (!url.pathname.startsWith(`${prefix}/`)) return false;
    const action = url.pathname.slice(prefix.length + 1);
    try {
      if (!ACTIONS.has(action)) throw new Refused(404, 'not_found', 'no such action');
      if (req.method !== 'POST') throw new Refused(405, 'method_not_allowed', 'POST only');
      const raw = await readBody(req);
      let body;
      if (action === 'batch') {
        const events = raw?.events;
        if (!Array.isArray(events) || events.length > MAX_EVENTS) {
          throw new Refused(400, 'invalid_field', `events: 1 to ${MAX_EVENTS} events`);
        }
        body = {
          events: events.map((e) => {
            if (e?.action !== 'start' && e?.action !== 'stop') {
              throw new Refused(400, 'invalid_field', 'event action must be start or stop');
            }
            return { action: e.action, ...pick(e) };
          }),
        };
      } else {
        body = pick(raw);
      }
      const accounts = new Set(action === 'batch' ? body.events.map((e) => e.account_id) : [body.account_id]);
      for (const account of accounts) {
        if (typeof account !== 'string' || !(await o.authorize(req, account))) {
          throw new Refused(403, 'forbidden_account', 'not your account');
        }
      }
      const upstream = await fetch(`${base}/v1/typing/${action}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${o.hookToken}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5000),
      });
      const text = await upstream.text();
      o.onForward?.(action, body, upstream.status);
      res.writeHead(upstream.status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(text);
    } catch (e) {
      const status = e instanceof Refused ? e.status : 502;
      const code = e instanceof Refused ? e.code : 'relay_failed';
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code, message: String(e.message ?? e) } }));
    }
    return true;
  };
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css' };

/** Serves files under `root` (GET only, no directory listing, nothing outside `root`). */
export function staticFiles(root) {
  const top = resolve(root);
  return async (req, res) => {
    if (req.method !== 'GET') return false;
    const path = normalize(join(top, decodeURIComponent(new URL(req.url, 'http://x').pathname)));
    if (path !== top && !path.startsWith(top + sep)) return false;
    try {
      const data = await readFile(path);
      res.writeHead(200, { 'content-type': TYPES[extname(path)] ?? 'application/octet-stream' });
      res.end(data);
      return true;
    } catch {
      return false;
    }
  };
}

async function main() {
  const args = process.argv.slice(2);
  const arg = (name, dflt) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const [host, port] = arg('--listen', '127.0.0.1:3000').split(':');
  const hookToken = process.env.KEEPTYPING_HOOK_TOKEN;
  if (!hookToken) {
    console.error('relay: set KEEPTYPING_HOOK_TOKEN');
    process.exit(64);
  }
  const relay = createRelay({
    keeptypingUrl: process.env.KEEPTYPING_URL ?? 'http://127.0.0.1:8080',
    hookToken,
    // A real tool checks its own session here; this stand-alone relay allows the accounts
    // listed in RELAY_ACCOUNTS (comma-separated), or any account when it is unset.
    authorize: (_req, account) => {
      const allowed = process.env.RELAY_ACCOUNTS?.split(',').filter(Boolean);
      return !allowed || allowed.includes(account);
    },
  });
  const root = arg('--static');
  const files = root ? staticFiles(root) : async () => false;
  const server = createServer(async (req, res) => {
    if ((await relay(req, res)) || (await files(req, res))) return;
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":{"code":"not_found","message":"no such route"}}');
  });
  server.listen(Number(port), host, () => {
    const a = server.address();
    console.log(`relay listening on http://${a.address}:${a.port}`);
  });
  const close = () => server.close(() => process.exit(0));
  process.on('SIGTERM', close);
  process.on('SIGINT', close);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
