// keeptyping-composer.js in headless Chromium: exact call timelines on a fake clock, measured
// timings through the relay, a tab close, a reconnect, and once end to end against the real
// keeptyping and its mock upstream (KEEPTYPING_BIN).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  ACCOUNT,
  HOOK_TOKEN,
  fakeKeeptyping,
  launch,
  openPage,
  realKeeptyping,
  relayServer,
  sleep,
  until,
} from './harness.mjs';

let chromium;
let relay;
let keeptyping; // the recording stand-in

before(async () => {
  chromium = await launch();
  keeptyping = await fakeKeeptyping();
  relay = await relayServer(keeptyping.url);
});

after(async () => {
  await chromium?.close();
  await relay?.close();
  await keeptyping?.close();
});

/** The page's recorded calls as `action@t` (plus `(beacon)`), for whole-timeline comparisons. */
async function timeline(page) {
  return page.evaluate(() => window.t.calls.map((c) => `${c.action}@${c.t}${c.beacon ? '(beacon)' : ''}`));
}

describe('on a fake clock', () => {
  test('start on the first keystroke, refresh every 10 s while typing, idle stop 30 s after the last key, stop on send', async () => {
    const { page, errors, context } = await openPage(chromium.browser, relay.url, { mode: 'fake', priority: 'high' });
    const box = page.locator('#composer');
    await box.focus();
    await page.keyboard.type('h');
    assert.deepEqual(await timeline(page), ['start@0']);
    await page.keyboard.type('ello'); // debounced: no call per keystroke
    await page.evaluate(() => window.t.advance(4000));
    await page.keyboard.type(' there'); // last keystroke at t=4000
    await page.evaluate(() => window.t.advance(5999));
    assert.deepEqual(await timeline(page), ['start@0']);
    await page.evaluate(() => window.t.advance(1));
    assert.deepEqual(await timeline(page), ['start@0', 'start@10000']);
    await page.evaluate(() => window.t.advance(24000)); // to t=34000: 30 s after the last key
    assert.deepEqual(await timeline(page), ['start@0', 'start@10000', 'start@20000', 'start@30000', 'stop@34000']);
    await page.evaluate(() => window.t.advance(60000)); // nothing while idle, draft or not
    await page.keyboard.type('!'); // t=94000: composing again
    await page.evaluate(() => window.t.advance(3000));
    await page.keyboard.press('Enter'); // send
    await page.evaluate(() => window.t.advance(60000));
    assert.deepEqual(await timeline(page), [
      'start@0',
      'start@10000',
      'start@20000',
      'start@30000',
      'stop@34000',
      'start@94000',
      'stop@97000',
    ]);
    assert.equal(await page.locator('#thread li').count(), 1, 'the message was sent');
    const calls = await page.evaluate(() => window.t.calls);
    const chatterId = calls[0].body.chatter_id;
    assert.match(chatterId, /^[A-Za-z0-9_\-.:@]{1,128}$/);
    for (const c of calls) {
      const expected = { account_id: ACCOUNT, chat_id: '424242', chatter_id: chatterId };
      if (c.action === 'start') expected.priority = 'high';
      assert.deepEqual(c.body, expected, `${c.action}@${c.t}`);
    }
    assert.deepEqual(errors, []);
    await context.close();
  });

  test('clearing the draft stops; a whitespace-only draft is empty; leaving the chat stops', async () => {
    const { page, context } = await openPage(chromium.browser, relay.url, { mode: 'fake' });
    await page.locator('#composer').focus();
    await page.keyboard.type('abc');
    await page.evaluate(() => window.t.advance(2000));
    await page.keyboard.press('Control+A');
    await page.keyboard.press('Backspace');
    await page.evaluate(() => window.t.advance(1000));
    await page.keyboard.type('   '); // only spaces: nothing
    await page.evaluate(() => window.t.advance(15000));
    await page.keyboard.type('x');
    await page.evaluate(() => window.t.advance(500));
    await page.evaluate(() => window.t.composer.leave());
    await page.evaluate(() => window.t.advance(60000));
    assert.deepEqual(await timeline(page), ['start@0', 'stop@2000', 'start@18000', 'stop@18500']);
    await context.close();
  });

  test('a stop waits for the start in flight, and a start never sent is dropped with its stop', async () => {
    const { page, context } = await openPage(chromium.browser, relay.url, { mode: 'fake', hold: true });
    await page.locator('#composer').focus();
    await page.keyboard.type('a'); // start in flight (held)
    await page.keyboard.press('Enter'); // send while the start is in flight
    assert.deepEqual(await timeline(page), ['start@0'], 'the stop must not overtake the start');
    await page.evaluate(() => window.t.release()); // start answered: the stop leaves
    assert.deepEqual(await timeline(page), ['start@0', 'stop@0']);
    // Type and send again while that stop is still in flight: the new start was never sent, so
    // neither is its stop.
    await page.keyboard.type('b');
    await page.keyboard.press('Enter');
    await page.evaluate(() => window.t.release());
    await page.evaluate(() => window.t.advance(60000));
    assert.deepEqual(await timeline(page), ['start@0', 'stop@0']);
    // Send, then type again before the start was answered: the stop is dropped, the start
    // (a refresh) leaves once the first is answered.
    await page.keyboard.type('c');
    await page.keyboard.press('Enter');
    await page.keyboard.type('d');
    await page.evaluate(() => window.t.release());
    await page.evaluate(() => window.t.release());
    assert.deepEqual(await timeline(page), ['start@0', 'stop@0', 'start@60000', 'start@60000']);
    await context.close();
  });

  test('reconnect re-sends one batch of starts; a hidden tab stops every chat in one beacon', async () => {
    const { page, context } = await openPage(chromium.browser, relay.url, { mode: 'fake' });
    await page.locator('#composer').focus();
    await page.keyboard.type('one');
    await page.evaluate(() => {
      const other = window.t.other({ account_id: 'acct_0123456789abcdef0123456789abcdef', chat_id: 7 });
      other.input('two');
      window.t.other({ account_id: 'acct_0123456789abcdef0123456789abcdef', chat_id: 8 }); // idle
    });
    await page.evaluate(() => window.t.advance(1000));
    await page.evaluate(() => window.dispatchEvent(new Event('online')));
    await page.evaluate(() => window.t.settle());
    await page.evaluate(() => {
      Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await page.evaluate(() => window.t.advance(60000));
    assert.deepEqual(await timeline(page), ['start@0', 'start@0', 'batch@1000', 'batch@1000(beacon)']);
    const calls = await page.evaluate(() => window.t.calls);
    const id = calls[0].body.chatter_id;
    const ev = (action, chat) => ({ action, account_id: ACCOUNT, chat_id: chat, chatter_id: id });
    assert.deepEqual(calls[2].body, { events: [ev('start', '424242'), ev('start', '7')] });
    assert.deepEqual(calls[3].body, { events: [ev('stop', '424242'), ev('stop', '7')] });
    await context.close();
  });
});

describe('through the relay, on the real clock', () => {
  // A chat tool's relay is a long-lived server: warm its outgoing HTTP client once, as any request
  // before the first chatter's would, so the timings below measure the kit, not module loading.
  before(async () => {
    const r = await fetch(`${relay.url}/keeptyping/stop`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ account_id: ACCOUNT, chat_id: 'warm-up', chatter_id: 'warm-up' }),
    });
    assert.equal(r.status, 200);
  });

  test('measured cadence: start at once, refreshes every refreshMs, stop within 250 ms of Enter; the token stays on the server', async () => {
    const since = keeptyping.calls.length;
    const { page, context, errors } = await openPage(chromium.browser, relay.url, {
      mode: 'relay',
      refreshMs: 700,
      idleMs: 5000,
      chat_id: '5001',
    });
    await page.locator('#composer').focus();
    const t0 = performance.now();
    for (let i = 0; i < 10; i++) {
      await page.keyboard.type('ab');
      await sleep(180); // about 2 s of typing
    }
    const enterAt = performance.now();
    await page.keyboard.press('Enter');
    await until(() => keeptyping.calls.slice(since).some((c) => c.action === 'stop'), 3000, 'the stop');
    await sleep(1000); // nothing after the stop
    const calls = keeptyping.calls.slice(since);
    const actions = calls.map((c) => c.action);
    const refreshes = Math.floor((enterAt - t0) / 700);
    // Timers may run late on a busy machine: allow one refresh fewer than the ideal count.
    assert.ok(actions.length >= 2 + refreshes - 1 && actions.length <= 2 + refreshes, `calls: ${actions}`);
    assert.deepEqual(actions, [...Array(actions.length - 1).fill('start'), 'stop']);
    assert.ok(calls[0].t - t0 < 250, `first start ${calls[0].t - t0} ms after the first key`);
    // Each refresh is armed when the previous start is sent, so refresh i leaves no sooner than
    // i * refreshMs after the first key. Arrival times are compared with that bound rather than
    // with each other: the first start opens the relay's connection and may arrive later than
    // it left, which makes the next arrival gap look short though nothing was sent early.
    for (let i = 1; i < actions.length - 1; i++) {
      const since = calls[i].t - t0;
      assert.ok(since >= i * 700 - 20, `refresh ${i} came ${since} ms after the first key`);
      const gap = calls[i].t - calls[i - 1].t;
      assert.ok(gap < 1000, `refresh ${i} came ${gap} ms after the previous start`);
    }
    const stop = calls.at(-1);
    assert.ok(stop.t - enterAt < 250, `stop ${stop.t - enterAt} ms after Enter`);
    for (const c of calls) assert.equal(c.auth, `Bearer ${HOOK_TOKEN}`);
    const html = await page.content();
    assert.ok(!html.includes(HOOK_TOKEN), 'the hook token reached the page');
    assert.deepEqual(errors, []);
    await context.close();
  });

  test('closing the tab sends the stop by beacon', async () => {
    const since = keeptyping.calls.length;
    const { page } = await openPage(chromium.browser, relay.url, { mode: 'relay', chat_id: '5002' });
    await page.locator('#composer').focus();
    await page.keyboard.type('see you');
    await until(() => keeptyping.calls.slice(since).some((c) => c.action === 'start'), 3000, 'the start');
    const closedAt = performance.now();
    await page.close({ runBeforeUnload: true });
    const stop = await until(
      () => keeptyping.calls.slice(since).find((c) => c.action === 'stop'),
      3000,
      'the stop after the tab closed',
    );
    assert.equal(stop.body.chat_id, '5002');
    assert.ok(stop.t - closedAt < 1500, `stop ${stop.t - closedAt} ms after close`);
    assert.deepEqual(
      keeptyping.calls.slice(since).map((c) => c.action),
      ['start', 'stop'],
    );
  });

  test('going offline and back online re-sends the chats being composed in one batch', async () => {
    const since = keeptyping.calls.length;
    const { page, context } = await openPage(chromium.browser, relay.url, { mode: 'relay', chat_id: '5003' });
    await page.locator('#composer').focus();
    await page.keyboard.type('hello');
    await until(() => keeptyping.calls.length > since, 3000, 'the start');
    await context.setOffline(true);
    await sleep(200);
    await context.setOffline(false);
    const batch = await until(
      () => keeptyping.calls.slice(since).find((c) => c.action === 'batch'),
      3000,
      'the batch after reconnecting',
    );
    assert.deepEqual(
      batch.body.events.map((e) => [e.action, e.chat_id]),
      [['start', '5003']],
    );
    await context.close();
  });

  test('the relay refuses what it must not forward', async () => {
    const post = (path, body, type = 'application/json') =>
      fetch(`${relay.url}${path}`, { method: 'POST', headers: { 'content-type': type }, body });
    const since = keeptyping.calls.length;
    const other = JSON.stringify({ account_id: 'acct_ffffffffffffffffffffffffffffffff', chat_id: '1' });
    assert.equal((await post('/keeptyping/start', other)).status, 403);
    assert.equal((await post('/keeptyping/sessions', '{}')).status, 404);
    assert.equal((await post('/keeptyping/start', 'not json')).status, 400);
    const mixed = JSON.stringify({ events: [{ action: 'start', account_id: ACCOUNT, chat_id: '1' }, { action: 'start', account_id: 'acct_ff', chat_id: '2' }] });
    assert.equal((await post('/keeptyping/batch', mixed)).status, 403);
    assert.equal(keeptyping.calls.length, since, 'a refused call reached keeptyping');
    // A beacon's text/plain body is JSON all the same; unknown fields are not forwarded.
    const beacon = JSON.stringify({ account_id: ACCOUNT, chat_id: '9', chatter_id: 'tab.x', extra: 'dropped' });
    assert.equal((await post('/keeptyping/stop', beacon, 'text/plain')).status, 200);
    assert.deepEqual(keeptyping.calls.at(-1).body, { account_id: ACCOUNT, chat_id: '9', chatter_id: 'tab.x' });
  });
});

describe('end to end against keeptyping and its mock upstream', { skip: !process.env.KEEPTYPING_BIN && 'KEEPTYPING_BIN is not set' }, () => {
  test("the fan's indicator starts while the chatter types and stops for good on send", async () => {
    const real = await realKeeptyping(process.env.KEEPTYPING_BIN);
    const viaRelay = await relayServer(real.url);
    try {
      const chat = '777001';
      const { page, context, errors } = await openPage(chromium.browser, viaRelay.url, { mode: 'relay', chat_id: chat });
      await page.locator('#composer').focus();
      await page.keyboard.type('hey you', { delay: 40 });
      const first = await until(async () => (await real.typing(chat)).length > 0, 3000, 'a typing call at the mock');
      assert.ok(first);
      await sleep(4200); // keeptyping refires every 3.5 s
      const lit = await real.typing(chat);
      assert.ok(lit.length >= 2, `${lit.length} typing calls in 4 s of composing`);
      assert.ok(lit.every((r) => r.account === ACCOUNT && r.status === 200), JSON.stringify(lit));
      await page.keyboard.press('Enter');
      await until(() => viaRelay.forwarded.some((f) => f.action === 'stop'), 3000, 'the stop answered');
      const stop = viaRelay.forwarded.find((f) => f.action === 'stop');
      assert.equal(stop.status, 200);
      const stoppedAt = await real.mockNow();
      await sleep(5000); // longer than a refire interval
      const late = await real.typing(chat, stoppedAt);
      assert.deepEqual(late, [], 'typing calls reached the mock after the stop');
      assert.ok((await real.typing(chat)).length >= 2);
      assert.deepEqual(errors, []);
      await context.close();
    } finally {
      await viaRelay.close();
      await real.close();
    }
  });
});
