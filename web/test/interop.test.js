// Python SDK ↔ JS SDK through a REAL node. The Python side is the `yanzi` SDK driven by
// test/py/peer.py in a child process (JSON lines on stdin/stdout). With E2EE on both sides the
// JS client reads what Python encrypted and the other way round, and both compute the same
// safety number; plain chat (E2EE off on both sides) is checked too.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';

import { Client, MemoryStorage } from '../src/index.js';
import { b64decode } from '../src/base64url.js';
import { utf8Decode } from '../src/utf8.js';
import { eventually, FAST, PASSWORD, PYTHON, ROOT, startNode, testTransport } from './helpers.js';

class PythonPeer {
  constructor(url, keystore, { plain = false } = {}) {
    this.child = spawn(PYTHON, [join(ROOT, 'web/test/py/peer.py'), url, keystore, ...(plain ? ['plain'] : [])], {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.stderr = '';
    this.child.stderr.on('data', (d) => {
      this.stderr += d;
    });
    this.waiting = new Map();
    this.seq = 0;
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      const answer = JSON.parse(line);
      const w = this.waiting.get(answer.id);
      if (!w) return;
      this.waiting.delete(answer.id);
      if (answer.ok) w.resolve(answer);
      else w.reject(new Error(`python peer: ${answer.error}\n${this.stderr}`));
    });
    this.exited = new Promise((resolve) => this.child.once('exit', resolve));
  }

  call(cmd, args = {}, timeoutMs = 30000) {
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`python peer: no answer to ${cmd} in ${timeoutMs} ms\n${this.stderr}`)), timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.child.stdin.write(JSON.stringify({ id, cmd, ...args }) + '\n');
    });
  }

  async stop() {
    if (this.child.exitCode === null) {
      await this.call('close').catch(() => {});
      const timer = setTimeout(() => this.child.exitCode === null && process.kill(this.child.pid, 'SIGKILL'), 10000);
      await this.exited;
      clearTimeout(timer);
    }
  }
}

let node;
let dir;
const peers = [];
const clients = [];
let n = 0;
const unique = (p) => `${p}${++n}${Math.random().toString(36).slice(2, 7)}`;

before(async () => {
  node = await startNode();
  dir = mkdtempSync(join(tmpdir(), 'yanzi-peer-'));
});

after(async () => {
  for (const c of clients) await c.close();
  for (const p of peers) await p.stop();
  await node?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function pythonUser(prefix, opts) {
  const peer = new PythonPeer(node.url, join(dir, `${unique('ks')}.json`), opts);
  peers.push(peer);
  peer.name = unique(prefix);
  await peer.call('register', { user: peer.name, password: PASSWORD });
  peer.device = (await peer.call('login', { user: peer.name, password: PASSWORD })).device;
  await peer.call('connect');
  return peer;
}

async function jsUser(prefix, { e2ee = true } = {}) {
  const c = new Client({ baseUrl: node.url, storage: new MemoryStorage(), transport: testTransport(), e2ee, ...FAST });
  clients.push(c);
  c.name = unique(prefix);
  await c.register(c.name, PASSWORD);
  await c.login(c.name, PASSWORD);
  await c.connect();
  return c;
}

// The Python SDK has E2EE; a peer that says otherwise is broken, and these tests must fail then.
const probe = new PythonPeer('http://127.0.0.1:9', join(tmpdir(), 'yanzi-probe-unused.json'));
assert.equal((await probe.call('features')).e2ee, true, 'the Python peer reports no E2EE');
await probe.stop();

test('plain chat: Python SDK and JS SDK with E2EE off', async () => {
  const py = await pythonUser('pyplain', { plain: true });
  const js = await jsUser('jsplain', { e2ee: false });
  const conv = await js.direct(py.name);
  assert.equal((await py.call('direct', { peer: js.name })).conv, conv);
  const ack = await js.send(conv, 'hello from JS 👋');
  const { message } = await py.call('wait_text', { conv, text: 'hello from JS 👋' });
  assert.equal(message.op_id, ack.opId);
  assert.equal(message.author, js.name);
  const sent = await py.call('send', { conv, text: '你好 from Python' });
  await eventually(() => js.messages(conv).find((m) => m.opId === sent.op_id)?.text === '你好 from Python', { what: 'JS reads Python' });
  assert.equal(js.messages(conv).find((x) => x.opId === sent.op_id).encrypted, false);
  // Signatures are checked against the directory asynchronously: wait for the verdict.
  await eventually(() => js.messages(conv).find((x) => x.opId === sent.op_id).verified, { what: 'the Python device signature verifies in JS' });
  await py.call('edit', { conv, op_id: sent.op_id, text: 'edited in Python' });
  await eventually(() => js.messages(conv).find((x) => x.opId === sent.op_id)?.text === 'edited in Python');
  const shown = (await py.call('messages', { conv })).messages.map((x) => x.text);
  assert.deepEqual(shown, js.messages(conv).map((x) => x.text));
});

test('E2EE both ways: Python encrypts → JS decrypts, JS encrypts → Python decrypts', async () => {
  const py = await pythonUser('py');
  const js = await jsUser('js');
  const conv = await js.direct(py.name);
  assert.equal((await py.call('direct', { peer: js.name })).conv, conv);

  const wire = [];
  js.on('op', ({ op }) => wire.push(op));
  const ack = await js.send(conv, 'secret from JS 🔐');
  const { message } = await py.call('wait_text', { conv, text: 'secret from JS 🔐', verified: true });
  assert.equal(message.op_id, ack.opId);
  assert.equal(message.e2ee, 'decrypted');

  const sent = await py.call('send', { conv, text: 'secret from Python 🐍' });
  await eventually(() => js.messages(conv).find((m) => m.opId === sent.op_id)?.text === 'secret from Python 🐍', { what: 'JS decrypts Python' });
  const m = js.messages(conv).find((x) => x.opId === sent.op_id);
  assert.equal(m.encrypted, true);
  await eventually(() => js.messages(conv).find((x) => x.opId === sent.op_id)?.verified, { what: 'Python signature trusted in JS' });
  const relayed = wire.find((op) => op.opId === sent.op_id);
  assert.equal(JSON.parse(utf8Decode(b64decode(relayed.content.body))).alg, 'yz.chain.v1');
  assert.ok(!JSON.stringify(relayed).includes('Python 🐍'));

  await py.call('edit', { conv, op_id: sent.op_id, text: 'edited secret from Python' });
  await eventually(() => js.messages(conv).find((x) => x.opId === sent.op_id)?.text === 'edited secret from Python', { what: 'JS decrypts the Python edit' });
  await js.edit(conv, ack.opId, 'edited secret from JS');
  await py.call('wait_text', { conv, text: 'edited secret from JS', verified: true });
  for (let i = 0; i < 5; i++) await js.send(conv, `burst ${i}`);
  await py.call('wait_text', { conv, text: 'burst 4', verified: true });

  await js.devices(py.name);
  const sn = (await py.call('safety_number', { user: js.name })).number;
  assert.equal(js.safetyNumber(py.name), sn);
  const shown = (await py.call('messages', { conv })).messages.map((x) => x.text);
  assert.deepEqual(shown, js.messages(conv).map((x) => x.text));
});
