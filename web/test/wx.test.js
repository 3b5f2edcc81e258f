// The WeChat mini-program adapter (WxTransport) under Node.js.
//
// The WeChat runtime itself is not on this machine (no WeChat client or devtools here), so these
// tests drive the SDK through a stand-in `wx` object that implements the documented API surface
// the adapter uses — wx.connectSocket and its SocketTask (onOpen/onMessage/onClose/onError/
// send/close), wx.request, the asynchronous wx.getRandomValues, wx.getStorageSync/setStorageSync —
// mapped onto a real WebSocket (the `ws` package) and real HTTP (fetch) to a real Yanzi node.

import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';
import { after, before, test } from 'node:test';

import nacl from 'tweetnacl';
import { WebSocket } from 'ws';

import { Client, EntropyPool, MemoryStorage, WxTransport, wxStorage } from '../src/index.js';
import { eventually, FAST, nextEvent, PASSWORD, startNode, testTransport } from './helpers.js';

/** A stand-in for the mini-program `wx` global, backed by real sockets and HTTP. */
function fakeWx({ randomDelayMs = 1 } = {}) {
  const wx = {
    openSockets: 0,
    maxOpenSockets: 0,
    socketsCreated: 0,
    requests: [],
    randomCalls: 0,
    store: new Map(),
    connectSocket({ url, fail }) {
      const ws = new WebSocket(url);
      wx.socketsCreated++;
      wx.openSockets++;
      wx.maxOpenSockets = Math.max(wx.maxOpenSockets, wx.openSockets);
      let counted = true;
      const uncount = () => {
        if (counted) wx.openSockets--;
        counted = false;
      };
      const task = {
        onOpen: (fn) => ws.on('open', () => fn({ header: {} })),
        onMessage: (fn) => ws.on('message', (data, isBinary) => fn({ data: isBinary ? data.buffer : data.toString() })),
        onClose: (fn) => ws.on('close', (code, reason) => { uncount(); fn({ code, reason: reason.toString() }); }),
        onError: (fn) => ws.on('error', (err) => fn({ errMsg: err.message })),
        send: ({ data, success, fail: failed }) => ws.send(data, (err) => (err ? failed?.({ errMsg: err.message }) : success?.({}))),
        close: ({ code = 1000, reason = '' } = {}) => {
          uncount();
          ws.close(code, reason);
        },
        ws,
      };
      ws.on('error', (err) => {
        if (ws.readyState !== WebSocket.OPEN) fail?.({ errMsg: `connectSocket:fail ${err.message}` });
      });
      wx.lastTask = task;
      return task;
    },
    request({ url, method = 'GET', header = {}, data, dataType = 'json', success, fail }) {
      wx.requests.push(`${method} ${new URL(url).pathname}`);
      fetch(url, { method, headers: header, body: data })
        .then(async (resp) => {
          const text = await resp.text();
          let body = text;
          if (dataType === 'json') {
            try {
              body = JSON.parse(text);
            } catch {
              /* wx hands back the string */
            }
          }
          success?.({ statusCode: resp.status, data: body, header: Object.fromEntries(resp.headers) });
        })
        .catch((err) => fail?.({ errMsg: `request:fail ${err.message}` }));
      return { abort() {} };
    },
    getRandomValues({ length, success, fail }) {
      wx.randomCalls++;
      if (wx.randomBroken) {
        setTimeout(() => fail({ errMsg: 'getRandomValues:fail system error' }), randomDelayMs);
        return;
      }
      setTimeout(() => {
        const bytes = new Uint8Array(length);
        webcrypto.getRandomValues(bytes);
        success({ randomValues: bytes.buffer });
      }, randomDelayMs);
    },
    getStorageSync: (key) => (wx.store.has(key) ? wx.store.get(key) : ''),
    setStorageSync: (key, value) => wx.store.set(key, value),
    removeStorageSync: (key) => wx.store.delete(key),
  };
  return wx;
}

let node;
const clients = [];
before(async () => {
  node = await startNode();
});
after(async () => {
  for (const c of clients) await c.close();
  await node?.stop();
});

test('the entropy pool fills from the asynchronous wx.getRandomValues and fails loudly when empty', async () => {
  const wx = fakeWx();
  const pool = new EntropyPool((n) => new Promise((resolve, reject) => wx.getRandomValues({ length: n, success: (r) => resolve(new Uint8Array(r.randomValues)), fail: (e) => reject(new Error(e.errMsg)) })), { size: 256, lowWater: 64 });
  assert.throws(() => pool.take(new Uint8Array(32)), /entropy pool empty/);
  await pool.ready();
  assert.ok(pool.available >= 64);
  const a = new Uint8Array(32);
  const b = new Uint8Array(32);
  pool.take(a);
  pool.take(b);
  assert.notDeepEqual(a, b);
  // Drain it: the pool refills in the background, and drawing past what it holds throws.
  while (pool.available >= 32) pool.take(new Uint8Array(32));
  assert.throws(() => pool.take(new Uint8Array(64)), /entropy pool empty/);
  await eventually(() => pool.available >= 64, { what: 'background refill' });

  wx.randomBroken = true;
  const broken = new EntropyPool((n) => new Promise((resolve, reject) => wx.getRandomValues({ length: n, success: (r) => resolve(new Uint8Array(r.randomValues)), fail: (e) => reject(new Error(e.errMsg)) })), { size: 64, lowWater: 16 });
  await assert.rejects(broken.ready(), /getRandomValues:fail/);
  assert.throws(() => broken.take(new Uint8Array(8)), /getRandomValues:fail system error/);
});

test('WxTransport installs the pool as tweetnacl PRNG', async () => {
  const wx = fakeWx();
  const transport = new WxTransport(wx, { poolSize: 1024 });
  assert.throws(() => nacl.randomBytes(16), /entropy pool empty/); // no silent weak fallback
  await transport.ready();
  const calls = wx.randomCalls;
  assert.equal(nacl.randomBytes(16).length, 16);
  assert.notDeepEqual(nacl.randomBytes(16), nacl.randomBytes(16));
  for (let i = 0; i < 25; i++) nacl.randomBytes(32); // 800 of 1024 bytes: below the low-water mark
  await eventually(() => wx.randomCalls > calls, { what: 'a refill was requested' });
});

test('a mini-program client chats with a browser client; onHide/onShow reconnect over one socket and catch up', async () => {
  const wx = fakeWx();
  const transport = new WxTransport(wx);
  // tweetnacl's PRNG is global: from here on every client in this process draws from the pool.
  await transport.ready();
  const mini = new Client({ baseUrl: node.url, storage: wxStorage(wx), transport, e2ee: true, ...FAST });
  const web = new Client({ baseUrl: node.url, storage: new MemoryStorage(), transport: testTransport(), e2ee: true, ...FAST });
  clients.push(mini, web);
  const miniName = `mini${Date.now() % 100000}`;
  const webName = `web${Date.now() % 100000}`;
  await mini.register(miniName, PASSWORD);
  await mini.login(miniName, PASSWORD, { deviceName: 'WeChat' });
  await web.register(webName, PASSWORD);
  await web.login(webName, PASSWORD);
  assert.ok(wx.store.get('yanzi:device'), 'device keys kept in wx storage');
  await mini.connect();
  await web.connect();
  assert.equal(wx.openSockets, 1);

  const conv = await mini.direct(webName);
  await mini.send(conv, '来自小程序的问候');
  await eventually(() => web.messages(conv).some((m) => m.text === '来自小程序的问候' && m.verified && m.encrypted), { what: 'web reads mini' });
  await web.send(conv, 'hello mini-program');
  await eventually(() => mini.messages(conv).some((m) => m.text === 'hello mini-program' && m.verified), { what: 'mini reads web' });

  // onHide: the socket is closed and stays closed (code frozen in the background).
  mini.onHide();
  await eventually(() => wx.openSockets === 0, { what: 'socket closed on onHide' });
  for (let i = 0; i < 3; i++) await web.send(conv, `while hidden ${i}`);
  assert.equal(mini.connected, false);
  const requestsBefore = wx.requests.length;

  // onShow: one new socket, then the gap over wx.request (POST /v1/sync).
  const shown = mini.onShow();
  await shown;
  await eventually(() => mini.messages(conv).some((m) => m.text === 'while hidden 2'), { what: 'caught up after onShow' });
  assert.ok(wx.requests.slice(requestsBefore).includes('POST /v1/sync'));
  assert.equal(wx.maxOpenSockets, 1, 'never more than one socket');

  // Repeated onShow/onHide cycles keep a single socket and lose nothing.
  for (let round = 0; round < 3; round++) {
    mini.onHide();
    await web.send(conv, `round ${round}`);
    await mini.onShow();
  }
  await eventually(() => mini.messages(conv).some((m) => m.text === 'round 2'));
  assert.equal(wx.maxOpenSockets, 1);
  const texts = mini.messages(conv).map((m) => m.text);
  assert.equal(new Set(mini.messages(conv).map((m) => m.opId)).size, texts.length, 'no duplicates');
  assert.deepEqual(texts, web.messages(conv).map((m) => m.text));

  // A dropped socket (the network went away) reconnects by itself.
  const back = nextEvent(mini, 'state', (s) => s.connected);
  wx.lastTask.ws.terminate();
  await back;
  await web.send(conv, 'after the drop');
  await eventually(() => mini.messages(conv).some((m) => m.text === 'after the drop'));
  assert.equal(wx.maxOpenSockets, 1);

  // A cold start (the mini-program was killed): the same wx storage resumes the session.
  await mini.close();
  const cold = new Client({ baseUrl: node.url, storage: wxStorage(wx), transport: new WxTransport(wx), e2ee: true, ...FAST });
  clients.push(cold);
  await cold.connect();
  const page = await cold.history(conv);
  assert.ok(page.messages.some((m) => m.text === '来自小程序的问候' && m.verified));
  assert.ok(page.messages.every((m) => m.text !== null));
});
