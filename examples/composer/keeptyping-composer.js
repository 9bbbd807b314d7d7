// keeptyping-composer.js: turns a chat composer's events into keeptyping hook calls.
//
// Dependency-free ES module for the chat tool's page. It never holds the hook token: every call
// goes through `send(action, body, options)`, a function the tool supplies that forwards to its
// own server, which adds `Authorization: Bearer <hook token>` (see relay.mjs and
// docs/integration.md). `relaySender(base)` below is such a function for a relay at `base`.
//
// The recipe (docs/integration.md, "The event recipe"):
//   - start on the first keystroke that leaves a non-empty draft;
//   - while the draft is non-empty and the chatter typed within `idleMs`, re-send start every
//     `refreshMs` (10 s, well inside keeptyping's 30 s idle lease: two refreshes may be lost
//     before the indicator lapses); keystrokes in between send nothing (debounced);
//   - stop at once on send (`sent()`), on clearing the draft, on leaving the chat (`leave()`),
//     after `idleMs` without a keystroke, when the tab is hidden, and when it closes (beacon);
//   - one `chatter_id` per tab, so two tabs on one chat hold it together;
//   - calls for one chat are sent one at a time, in order: a stop is never overtaken by the
//     start before it (a start still waiting to be sent is dropped instead);
//   - on reconnect (`online`), one batch re-sends start for every chat still being composed.

/** Default cadence: re-send start every 10 s (keeptyping's idle lease is 30 s). */
export const REFRESH_MS = 10_000;
/** Default idle time after which a chatter who stopped typing is no longer "typing". */
export const IDLE_MS = 30_000;

const realClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (id) => globalThis.clearTimeout(id),
};

/** A `chatter_id` for this tab: letters, digits and `-.` only (keeptyping allows `_-.:@`). */
export function newChatterId(prefix = 'tab') {
  const random =
    globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  return `${prefix}.${random}`;
}

/**
 * A `send` for a relay on the tool's own server: `POST {base}/{action}` with the JSON body.
 * Calls made while the page is going away (`options.beacon`) use `navigator.sendBeacon`, the
 * one request a closing tab is sure to send, and fall back to `fetch(..., {keepalive: true})`.
 * The beacon's body is sent as text/plain (a simple request, no preflight); the relay parses
 * it as JSON whatever its type.
 */
export function relaySender(base = '/keeptyping') {
  return async (action, body, options = {}) => {
    const url = `${base}/${action}`;
    const json = JSON.stringify(body);
    if (options.beacon && globalThis.navigator?.sendBeacon?.(url, new Blob([json], { type: 'text/plain' }))) {
      return { status: 202, beacon: true };
    }
    const resp = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: json,
      keepalive: true,
      credentials: 'same-origin',
    });
    if (!resp.ok) throw new Error(`keeptyping ${action}: HTTP ${resp.status}`);
    return resp.json();
  };
}

/**
 * The keeptyping side of one tab.
 *
 * @param {object} o
 * @param {(action: string, body: object, options: {beacon?: boolean}) => Promise<unknown>} o.send
 * @param {string} [o.chatterId] this tab's `chatter_id` (default: a fresh one per page load)
 * @param {number} [o.refreshMs] re-send start this often while composing (default 10 s)
 * @param {number} [o.idleMs] stop after this long without a keystroke (default 30 s)
 * @param {{now(): number, setTimeout(fn: Function, ms: number): unknown, clearTimeout(id: unknown): void}} [o.clock]
 * @param {EventTarget | null} [o.window] where `pagehide`, `visibilitychange` and `online` are
 *   listened for (default `globalThis`; `null` for none)
 * @param {(error: unknown, action: string, body: object) => void} [o.onError]
 */
export function createKeepTyping(o) {
  const send = o.send;
  if (typeof send !== 'function') throw new TypeError('createKeepTyping: send(action, body) is required');
  const chatterId = o.chatterId ?? newChatterId();
  const refreshMs = o.refreshMs ?? REFRESH_MS;
  const idleMs = o.idleMs ?? IDLE_MS;
  const clock = o.clock ?? realClock;
  const onError = o.onError ?? (() => {});
  const win = o.window === undefined ? globalThis : o.window;
  const composers = new Set();

  function composer(chat) {
    const target = { account_id: chat.account_id, chat_id: String(chat.chat_id) };
    if (chat.platform) target.platform = chat.platform;
    let lit = false; // keeptyping was told start and not stop since
    let lastInput = 0;
    let refreshTimer = null;
    let idleTimer = null;
    let inFlight = null; // the promise of the call being sent for this chat
    let pending = null; // the action waiting for inFlight to settle

    const body = (action) => {
      const b = { ...target, chatter_id: chatterId };
      if (action === 'start' && chat.priority) b.priority = chat.priority;
      return b;
    };

    // Calls for this chat go one at a time. While one is in flight only the latest wish is kept
    // (start and stop set a state): a stop then overtakes a start that was never sent, and a
    // stop after a stop is not repeated.
    function call(action) {
      if (inFlight) {
        pending = action;
        return;
      }
      if (action === 'stop' && lastSent !== 'start') return;
      lastSent = action;
      const b = body(action);
      inFlight = Promise.resolve()
        .then(() => send(action, b, {}))
        .catch((e) => onError(e, action, b))
        .finally(() => {
          inFlight = null;
          const next = pending;
          pending = null;
          if (next) call(next);
        });
    }
    let lastSent = null; // the last action handed to send for this chat

    function clearTimers() {
      if (refreshTimer !== null) clock.clearTimeout(refreshTimer);
      if (idleTimer !== null) clock.clearTimeout(idleTimer);
      refreshTimer = idleTimer = null;
    }

    function armRefresh() {
      refreshTimer = clock.setTimeout(() => {
        refreshTimer = null;
        if (!lit) return;
        call('start');
        armRefresh();
      }, refreshMs);
    }

    function armIdle() {
      if (idleTimer !== null) clock.clearTimeout(idleTimer);
      idleTimer = clock.setTimeout(() => {
        idleTimer = null;
        stop();
      }, Math.max(0, lastInput + idleMs - clock.now()));
    }

    function stop() {
      clearTimers();
      if (!lit) return;
      lit = false;
      call('stop');
    }

    const c = {
      chat: target,
      /** Call on every edit with the whole draft (`input` event). */
      input(draft) {
        if (!draft || !String(draft).trim()) return stop();
        lastInput = clock.now();
        armIdle();
        if (lit) return undefined;
        lit = true;
        call('start');
        armRefresh();
        return undefined;
      },
      /** Call when the message is sent (the tool's send button or Enter): stops at once. */
      sent: stop,
      /** The draft was cleared or discarded. */
      clear: stop,
      /** The chatter left this chat (switched chat, composer unmounted). */
      leave() {
        stop();
        composers.delete(c);
      },
      /** Whether keeptyping is being kept on for this chat. */
      get lit() {
        return lit;
      },
      /** For `pageHide`: forget everything without a call; the caller sends the stop. */
      _drop() {
        clearTimers();
        const was = lit;
        lit = false;
        pending = null;
        if (was) lastSent = 'stop';
        return was;
      },
      /** Listens to a textarea, input or contenteditable element; returns the detach function. */
      attach(el) {
        const text = () => (el.isContentEditable ? el.textContent : el.value);
        const onInput = () => c.input(text());
        el.addEventListener('input', onInput);
        return () => el.removeEventListener('input', onInput);
      },
    };
    composers.add(c);
    return c;
  }

  /** The tab is being hidden or closed: stop every chat at once, by beacon. */
  function pageHide() {
    const events = [];
    for (const c of composers) if (c._drop()) events.push({ action: 'stop', ...c.chat, chatter_id: chatterId });
    if (events.length === 0) return;
    const [only] = events;
    const { action, ...b } = only;
    const p = events.length === 1 ? send(action, b, { beacon: true }) : send('batch', { events }, { beacon: true });
    Promise.resolve(p).catch((e) => onError(e, 'stop', b));
  }

  /** After a reconnect: one batch re-sends start for every chat still being composed. */
  function resync() {
    const events = [];
    for (const c of composers) if (c.lit) events.push({ action: 'start', ...c.chat, chatter_id: chatterId });
    if (events.length === 0) return;
    Promise.resolve(send('batch', { events }, {})).catch((e) => onError(e, 'batch', { events }));
  }

  const onVisibility = () => {
    if (globalThis.document?.visibilityState === 'hidden') pageHide();
  };
  if (win && typeof win.addEventListener === 'function') {
    win.addEventListener('pagehide', pageHide);
    win.addEventListener('online', resync);
    globalThis.document?.addEventListener?.('visibilitychange', onVisibility);
  }

  return {
    chatterId,
    composer,
    pageHide,
    resync,
    /** Stops every chat and removes the listeners. */
    dispose() {
      for (const c of [...composers]) c.leave();
      if (win && typeof win.removeEventListener === 'function') {
        win.removeEventListener('pagehide', pageHide);
        win.removeEventListener('online', resync);
        globalThis.document?.removeEventListener?.('visibilitychange', onVisibility);
      }
    },
  };
}
