// Client behaviour against a scripted transport (no node): the auth frame comes first, sends
// carry a cmid and a dsig that verifies, unacknowledged sends are resent with the same cmid after
// a reconnect, reconnect delays are exponential with full jitter, fatal close codes stop the
// client, and live ops are de-duplicated by op id.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import nacl from 'tweetnacl';

import { Client, MemoryStorage } from '../src/index.js';
import { b64decode, b64encode } from '../src/base64url.js';
import { buildContent, computeOpId, verifyContent } from '../src/op.js';
import { eventually } from './helpers.js';

/** A transport whose "node" is the test: it sees every frame and answers by hand. */
class ScriptedTransport {
  constructor() {
    this.sockets = [];
    this.http = [];
    this.httpAnswer = (method, path, body) => {
      if (path === '/v1/sync') return { status: 200, text: JSON.stringify({ ops: [], cursor: '', more: false }) };
      if (path === '/v1/login') return { status: 200, text: JSON.stringify({ token: 'T'.repeat(43), user: 'alice', device: body.device, expires_ms: 1, node: 'N' }) };
      return { status: 200, text: '{}' };
    };
  }

  openSocket(url, handlers) {
    const sock = { url, handlers, sent: [], closed: null };
    this.sockets.push(sock);
    setImmediate(() => handlers.onOpen());
    return {
      send: (text) => sock.sent.push(JSON.parse(text)),
      close: (code, reason) => {
        sock.closed = { code, reason };
      },
    };
  }

  async request(method, url, headers, body) {
    const path = new URL(url).pathname;
    this.http.push({ method, path, headers, body: body ? JSON.parse(body) : undefined });
    return this.httpAnswer(method, path, body ? JSON.parse(body) : undefined);
  }

  get last() {
    return this.sockets[this.sockets.length - 1];
  }

  /** The node side: answer the auth frame with ready. */
  async answerReady() {
    await eventually(() => this.last && !this.last.answered && this.last.sent.some((f) => f.type === 'auth'), { what: 'an auth frame' });
    const sock = this.last;
    sock.answered = true;
    sock.handlers.onMessage(JSON.stringify({ type: 'ready', user: 'alice', device: 'd', node: 'N', session: 1, limits: {} }));
  }
}

async function loggedIn(transport, opts = {}) {
  const c = new Client({ baseUrl: 'http://node.test', storage: new MemoryStorage(), transport, e2ee: false, backoffBaseMs: 10, backoffMaxMs: 40, sendTimeoutMs: 5000, ...opts });
  c.on('error', () => {});
  await c.login('alice', 'pw');
  return c;
}

test('login sends the device keys and a keys_sig; the token is kept in storage', async () => {
  const t = new ScriptedTransport();
  const storage = new MemoryStorage();
  const c = new Client({ baseUrl: 'http://node.test/', storage, transport: t });
  await c.login('alice', 'pw', { deviceName: 'test' });
  const { body } = t.http.find((r) => r.path === '/v1/login');
  assert.equal(body.device, c.device);
  assert.equal(b64decode(body.keys.ed25519).length, 32);
  assert.equal(b64decode(body.keys.x25519).length, 32);
  assert.equal(b64decode(body.keys_sig).length, 64);
  assert.equal(JSON.parse(storage.get('yanzi:session')).token, 'T'.repeat(43));
  // The same storage gives the same device and keys.
  const again = new Client({ baseUrl: 'http://node.test', storage, transport: t });
  await again.login('alice', 'pw');
  assert.equal(again.device, c.device);
  assert.equal(t.http.filter((r) => r.path === '/v1/login')[1].body.keys.ed25519, body.keys.ed25519);
});

test('auth is the first frame; sends carry a cmid and a valid dsig; a reconnect resends with the same cmid', async () => {
  const t = new ScriptedTransport();
  const c = await loggedIn(t);
  const connecting = c.connect();
  await t.answerReady();
  await connecting;
  assert.equal(t.last.url, 'ws://node.test/v1/ws');
  assert.deepEqual(t.last.sent[0], { type: 'auth', token: 'T'.repeat(43) });

  const sending = c.send('conv-1', 'hello');
  await eventually(() => t.last.sent.find((f) => f.type === 'send'));
  const frame = t.last.sent.find((f) => f.type === 'send');
  assert.match(frame.cmid, /^c-[A-Za-z0-9_-]{22}$/);
  assert.deepEqual(frame.attrs, { cmid: frame.cmid }); // the signed content carries the cmid
  const content = buildContent({ conv: 'conv-1', kind: 'message', author: 'alice', device: c.device, attrs: { cmid: frame.cmid }, body: b64encode(new TextEncoder().encode('hello')) });
  assert.ok(verifyContent(content, frame.dsig, b64decode(c.keys.sign.pk)));

  // The connection drops before the ack: the client reconnects and resends the same cmid.
  const first = t.last;
  first.handlers.onClose(1006, '');
  assert.equal(c.connected, false);
  await eventually(() => t.sockets.length === 2, { what: 'reconnect' });
  await t.answerReady();
  await eventually(() => t.last.sent.find((f) => f.type === 'send'));
  const resent = t.last.sent.find((f) => f.type === 'send');
  assert.equal(resent.cmid, frame.cmid);
  assert.equal(resent.dsig, frame.dsig);
  t.last.handlers.onMessage(JSON.stringify({ type: 'ack', id: resent.id, op_id: 'X'.repeat(43), conv: 'conv-1', hlc: [1, 0], dot: ['N', 2] }));
  const ack = await sending;
  assert.equal(ack.opId, 'X'.repeat(43));
  assert.equal(ack.cmid, frame.cmid);
  assert.ok(t.http.some((r) => r.path === '/v1/sync'), 'caught up after the reconnect');
  await c.close();
});

test('reconnect delays are exponential with full jitter, capped', () => {
  const c = new Client({ baseUrl: 'http://x', storage: new MemoryStorage(), transport: new ScriptedTransport(), backoffBaseMs: 100, backoffMaxMs: 1000, random: () => 0.999999 });
  assert.deepEqual([0, 1, 2, 3, 4, 10].map((a) => c.backoff(a)), [99, 199, 399, 799, 999, 999]);
  const low = new Client({ baseUrl: 'http://x', storage: new MemoryStorage(), transport: new ScriptedTransport(), random: () => 0 });
  assert.equal(low.backoff(5), 0);
});

test('a 4001 close stops reconnecting and reports the error; 4008 reconnects at once', async () => {
  const t = new ScriptedTransport();
  const c = await loggedIn(t, { backoffBaseMs: 60000, backoffMaxMs: 60000 });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const connecting = c.connect();
  await t.answerReady();
  await connecting;
  t.last.handlers.onClose(4008, 'slow consumer: catch up with GET /v1/sync');
  await eventually(() => t.sockets.length === 2, { what: 'immediate reconnect after 4008', timeoutMs: 2000 });
  await t.answerReady();
  await eventually(() => c.connected);
  t.last.handlers.onClose(4011, 'logged out');
  assert.equal(c.connected, false);
  assert.equal(errors.at(-1).code, 'logged_out');
  const states = [];
  c.on('state', (s) => states.push(s));
  await new Promise((r) => setImmediate(r));
  assert.equal(t.sockets.length, 2, 'no reconnect after 4011');
  await c.close();
});

test('an auth error on connect rejects connect()', async () => {
  const t = new ScriptedTransport();
  const c = await loggedIn(t);
  const connecting = c.connect();
  await eventually(() => t.last?.sent.length);
  t.last.handlers.onMessage(JSON.stringify({ type: 'error', code: 'token_expired', message: 'log in again' }));
  await assert.rejects(connecting, (e) => e.code === 'token_expired');
  assert.equal(c.connected, false);
  await c.close();
});

test('live ops are de-duplicated by op id and advance the persisted cursor; a gap triggers a catch-up', async () => {
  const t = new ScriptedTransport();
  const storage = new MemoryStorage();
  const c = new Client({ baseUrl: 'http://node.test', storage, transport: t, e2ee: false, persistDelayMs: 1 });
  c.on('error', () => {});
  await c.login('alice', 'pw');
  const connecting = c.connect();
  await t.answerReady();
  await connecting;
  const node = nacl.sign.keyPair();
  const origin = b64encode(node.publicKey);
  const op = (seq, kind, attrs = {}, body = '') => {
    const content = buildContent({ conv: 'g_1', kind, author: 'alice', device: c.device, attrs, body });
    return { content, hlc: [1000 + seq, 0], dot: [origin, seq], dsig: '', nsig: '' };
  };
  const ops = [];
  c.on('op', (e) => ops.push(e.op.opId));
  const frame = (o) => JSON.stringify({ type: 'op', op: o });
  const create = op(1, 'create', { type: 'group', members: [] });
  const hello = op(2, 'message', {}, 'aGk');
  t.last.handlers.onMessage(frame(create));
  t.last.handlers.onMessage(frame(hello));
  t.last.handlers.onMessage(frame(hello)); // duplicate
  assert.deepEqual(ops, [computeOpId(create), computeOpId(hello)]);
  assert.deepEqual(c.messages('g_1').map((m) => m.text), ['hi']);
  await eventually(() => JSON.parse(storage.get('yanzi:cursor:alice') ?? '{}').g_1?.[origin] === 2, { what: 'cursor persisted' });

  const syncs = t.http.filter((r) => r.path === '/v1/sync').length;
  t.last.handlers.onMessage(frame(op(4, 'message', {}, 'aGk')));
  await eventually(() => t.http.filter((r) => r.path === '/v1/sync').length > syncs, { what: 'catch-up after a gap' });
  assert.deepEqual(c.syncCursor, { g_1: { [origin]: 2 } }, 'the cursor does not pass the gap');
  await c.close();
});

test('close() during connect rejects connect(); onHide during onShow does not reconnect behind it', async () => {
  const t = new ScriptedTransport();
  const c = await loggedIn(t);
  const connecting = c.connect();
  await eventually(() => t.last?.sent.length, { what: 'auth sent' });
  await c.close();
  await assert.rejects(connecting, (e) => e.code === 'closed');

  const t2 = new ScriptedTransport();
  const mini = await loggedIn(t2, { backoffBaseMs: 1, backoffMaxMs: 2 });
  const showing = mini.onShow();
  await eventually(() => t2.last?.sent.length, { what: 'auth sent' });
  mini.onHide(); // the app went to the background before the node answered
  await showing;
  assert.equal(mini.connected, false);
  const sockets = t2.sockets.length;
  await new Promise((r) => setTimeout(r, 30)); // several backoff periods: nothing may reopen
  assert.equal(t2.sockets.length, sockets);
  const again = mini.onShow();
  await t2.answerReady();
  await again;
  assert.equal(mini.connected, true);
  await mini.close();
});
