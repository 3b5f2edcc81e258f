// JS ↔ JS chat through a REAL node (python -m node.cli up, started here): E2EE direct and group
// chat, edits, reactions, deletes, the cursor persisted in storage, reconnect after a drop
// with HTTP catch-up, a gap in live traffic closed by catch-up, history after a restart,
// rotation on membership change, key requests, TOFU and safety numbers.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client, MemoryStorage } from '../src/index.js';
import { b64decode } from '../src/base64url.js';
import { utf8Decode } from '../src/utf8.js';
import { eventually, FAST, nextEvent, PASSWORD, startNode, testTransport } from './helpers.js';

let node;
const clients = [];
let n = 0;
const unique = (p) => `${p}${++n}${Math.random().toString(36).slice(2, 7)}`;

before(async () => {
  node = await startNode();
});

after(async () => {
  for (const c of clients) await c.close();
  await node?.stop();
});

function makeClient({ storage = new MemoryStorage(), transport = testTransport(), ...rest } = {}) {
  const c = new Client({ baseUrl: node.url, storage, transport, e2ee: true, ...FAST, ...rest });
  c.errors = [];
  c.on('error', (e) => c.errors.push(e));
  clients.push(c);
  return c;
}

async function user(prefix, opts) {
  const c = makeClient(opts);
  const name = unique(prefix);
  await c.register(name, PASSWORD);
  await c.login(name, PASSWORD, { deviceName: `${prefix}'s test device` });
  await c.connect();
  c.name = name;
  return c;
}

const textOf = (c, conv) => c.messages(conv).map((m) => m.text);
const bodyText = (op) => utf8Decode(b64decode(op.content.body));

test('direct E2EE chat both ways, edits, reactions, deletes, safety numbers', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  assert.equal(alice.connected, true);
  const conv = await alice.direct(bob.name);
  assert.equal(await bob.direct(alice.name), conv);

  const wire = [];
  bob.on('op', ({ op }) => wire.push(op));
  const got = nextEvent(bob, 'message', ({ message }) => message.text === 'hello bob 🐦' && message.verified);
  const ack = await alice.send(conv, 'hello bob 🐦');
  assert.match(ack.opId, /^[A-Za-z0-9_-]{43}$/);
  const { message } = await got;
  assert.equal(message.opId, ack.opId);
  assert.equal(message.author, alice.name);
  assert.equal(message.encrypted, true);
  // What the node relayed is ciphertext: the text is nowhere in the op.
  const relayed = wire.find((op) => op.opId === ack.opId);
  assert.ok(!JSON.stringify(relayed).includes('hello'));
  assert.equal(JSON.parse(bodyText(relayed)).alg, 'yz.chain.v1');
  assert.ok(wire.some((op) => op.content.kind === 'key_share'), 'the chain was shared before the message');

  const reply = await bob.send(conv, 'hi alice');
  await eventually(() => textOf(alice, conv).includes('hi alice'), { what: 'alice sees the reply' });

  await alice.edit(conv, ack.opId, 'hello bob (edited)');
  await alice.react(conv, reply.opId, '👍');
  await bob.react(conv, reply.opId, '👍');
  await eventually(() => {
    const m = bob.messages(conv).find((x) => x.opId === ack.opId);
    const r = bob.messages(conv).find((x) => x.opId === reply.opId);
    return m?.text === 'hello bob (edited)' && m.edited && m.verified && r?.reactions['👍']?.length === 2;
  }, { what: 'edit and reactions at bob' });
  await alice.unreact(conv, reply.opId, '👍');
  await bob.delete(conv, reply.opId);
  await eventually(() => {
    const r = alice.messages(conv).find((x) => x.opId === reply.opId);
    return r?.deleted && r.text === '' && Object.keys(r.reactions).length === 0;
  }, { what: 'delete at alice' });
  assert.deepEqual(textOf(alice, conv), textOf(bob, conv));
  assert.deepEqual(alice.messages(conv).map((m) => m.opId), bob.messages(conv).map((m) => m.opId));

  await alice.devices(bob.name);
  await bob.devices(alice.name);
  const sn = alice.safetyNumber(bob.name);
  assert.match(sn, /^\d{5}( \d{5}){5}$/);
  assert.equal(bob.safetyNumber(alice.name), sn);

  const typing = nextEvent(bob, 'typing', (t) => t.user === alice.name && t.active);
  await alice.typing(conv, true);
  await typing;
  const read = nextEvent(alice, 'read', (r) => r.user === bob.name);
  await bob.markRead(conv, ack.opId);
  assert.equal((await read).opId, ack.opId);

  const list = await alice.conversations();
  const row = list.find((r) => r.conv === conv);
  assert.equal(row.type, 'direct');
  assert.equal(row.title, bob.name);
  assert.deepEqual(row.members, [alice.name, bob.name].sort());
  assert.equal(row.lastMessage.opId, reply.opId);
  assert.equal(row.lastMessage.deleted, true);
  assert.equal(alice.errors.length + bob.errors.length, 0, String([...alice.errors, ...bob.errors]));
});

test('a dropped connection reconnects with backoff and catches up over HTTP', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  const conv = await alice.direct(bob.name);
  await alice.send(conv, 'before');
  await eventually(() => textOf(bob, conv).includes('before'));

  const states = [];
  bob.on('state', (s) => states.push(s));
  const opened = bob.transport.opened;
  bob.onHide(); // the mini-program went to the background: socket closed, no reconnect
  assert.equal(bob.connected, false);
  for (let i = 0; i < 3; i++) await alice.send(conv, `while away ${i}`);
  assert.ok(!textOf(bob, conv).includes('while away 0'));
  await bob.onShow();
  await eventually(() => textOf(bob, conv).includes('while away 2'), { what: 'catch-up after onShow' });
  assert.equal(bob.transport.opened, opened + 1);

  // A severed TCP connection (1006): the client reconnects by itself and catches up.
  const back = nextEvent(bob, 'state', (s) => s.connected);
  const down = nextEvent(bob, 'state', (s) => !s.connected && s.reconnecting);
  bob.transport.sever();
  await down;
  await alice.send(conv, 'during the outage');
  await back;
  await eventually(() => textOf(bob, conv).includes('during the outage'), { what: 'catch-up after a drop' });
  const texts = textOf(bob, conv);
  assert.equal(new Set(bob.messages(conv).map((m) => m.opId)).size, texts.length, 'no duplicates');
  assert.deepEqual(texts, textOf(alice, conv));
});

test('a live op beyond a gap triggers a catch-up that fills it', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  const conv = await alice.direct(bob.name);
  await alice.send(conv, 'one');
  await eventually(() => textOf(bob, conv).includes('one'));
  let dropped = null;
  bob.transport.dropOps = (op) => {
    if (!dropped && op.content.kind === 'message' && op.content.author === alice.name) {
      dropped = op;
      return true;
    }
    return false;
  };
  await alice.send(conv, 'two (lost live)');
  await eventually(() => dropped, { what: 'the frame was dropped' });
  assert.ok(!textOf(bob, conv).includes('two (lost live)'));
  const caughtUp = nextEvent(bob, 'caughtUp');
  await alice.send(conv, 'three');
  await caughtUp;
  await eventually(() => textOf(bob, conv).join('|') === 'one|two (lost live)|three', { what: 'gap filled' });
  bob.transport.dropOps = null;
});

test('cursor and keys persist in storage: a restart resumes without duplicates; history backfills', async () => {
  const storage = new MemoryStorage();
  const alice = await user('alice');
  const bob = await user('bob', { storage });
  const conv = await alice.direct(bob.name);
  for (const t of ['a', 'b', 'c']) await alice.send(conv, t);
  await eventually(() => textOf(bob, conv).length === 3);
  await bob.close();
  const saved = JSON.parse(storage.get(`yanzi:cursor:${bob.name}`));
  assert.ok(Object.values(saved[conv]).every((seq) => seq >= 1), JSON.stringify(saved));

  await alice.send(conv, 'd (while bob was gone)');
  const bob2 = makeClient({ storage });
  const fresh = [];
  bob2.on('op', ({ op, backfill }) => backfill || fresh.push(op.content.kind));
  await bob2.connect(); // no login: the token is in storage
  assert.equal(bob2.user, bob.name);
  assert.equal(bob2.device, bob.device);
  await eventually(() => textOf(bob2, conv).includes('d (while bob was gone)'));
  // Only the gap is news: one message op (the rest is the background backfill of the log).
  assert.deepEqual(fresh, ['message']);
  const page = await bob2.history(conv, { limit: 2 });
  assert.deepEqual(page.messages.map((m) => m.text), ['c', 'd (while bob was gone)']);
  assert.equal(page.more, true);
  const older = await bob2.history(conv, { before: page.messages[0].opId, limit: 10 });
  assert.deepEqual(older.messages.map((m) => m.text), ['a', 'b']);
  assert.equal(older.more, false);
  assert.ok(older.messages.every((m) => m.verified && m.encrypted));
});

test('group chat: members added and removed, the chain rotates, a removed member reads nothing new', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  const carol = await user('carol');
  const dave = await user('dave');
  const conv = await alice.createGroup('Trip', [bob.name, carol.name]);
  await alice.send(conv, 'welcome');
  await eventually(() => textOf(bob, conv).includes('welcome') && textOf(carol, conv).includes('welcome'));
  const chain1 = alice.crypto.keyring.out[conv].chain;

  await alice.addMember(conv, dave.name);
  await alice.send(conv, 'hi dave');
  assert.notEqual(alice.crypto.keyring.out[conv].chain, chain1, 'rotated on member_add');
  await eventually(() => textOf(dave, conv).includes('hi dave'), { what: 'dave reads after joining' });
  await dave.history(conv);
  assert.equal(dave.messages(conv).find((m) => m.text === null)?.pending, true, 'the old chain was never shared with dave');

  await alice.removeMember(conv, carol.name);
  const chain2 = alice.crypto.keyring.out[conv].chain;
  await bob.send(conv, 'carol is gone');
  await alice.send(conv, 'secret plan');
  assert.notEqual(alice.crypto.keyring.out[conv].chain, chain2, 'rotated on member_remove');
  await eventually(() => textOf(bob, conv).includes('secret plan') && textOf(dave, conv).includes('carol is gone'));
  const list = await bob.conversations();
  assert.deepEqual(list.find((r) => r.conv === conv).members, [alice.name, bob.name, dave.name].sort());
  assert.equal(list.find((r) => r.conv === conv).title, 'Trip');
  assert.ok(!textOf(carol, conv).includes('secret plan'));
});

test('a new device of the recipient gets old keys through a key request', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  const conv = await alice.direct(bob.name);
  const ack = await alice.send(conv, 'sent before your new phone existed');
  await eventually(() => textOf(bob, conv).includes('sent before your new phone existed'));

  // Bob logs in on a second device: the chain was shared with his first device only.
  const phone = makeClient();
  await phone.login(bob.name, PASSWORD, { deviceName: 'new phone' });
  const added = nextEvent(alice, 'deviceAdded', (e) => e.user === bob.name && e.device === phone.device);
  const request = nextEvent(alice, 'op', ({ op }) => op.content.kind === 'key_share' && op.content.author === bob.name && op.content.device === phone.device);
  await phone.connect();
  const page = await phone.history(conv);
  const m = page.messages.find((x) => x.opId === ack.opId);
  assert.equal(m.pending, true);
  assert.equal(m.text, null);
  const { op } = await request;
  assert.equal(JSON.parse(bodyText(op)).alg, 'yz.keyreq.v1');
  await added;
  await eventually(() => phone.messages(conv).find((x) => x.opId === ack.opId)?.text === 'sent before your new phone existed', { what: 'decrypted after the key request' });
  assert.equal(phone.messages(conv).find((x) => x.opId === ack.opId).verified, true);
  // And from now on alice shares with both of bob's devices.
  await alice.send(conv, 'to both devices');
  await eventually(() => textOf(phone, conv).includes('to both devices') && textOf(bob, conv).includes('to both devices'));
});

test('TOFU: a changed device key raises keyChanged and leaves the device untrusted until trust()', async () => {
  const alice = await user('alice');
  const bobStorage = new MemoryStorage();
  const bob = await user('bob', { storage: bobStorage });
  const conv = await alice.direct(bob.name);
  await bob.send(conv, 'first key');
  await eventually(() => alice.messages(conv).some((m) => m.text === 'first key' && m.verified));
  const before = alice.safetyNumber(bob.name);

  // Same device id, new keys: another installation reusing the id (or an attacker).
  await bob.close();
  const device = JSON.parse(bobStorage.get('yanzi:device'));
  const imposterStorage = new MemoryStorage({ 'yanzi:device': JSON.stringify({ device: device.device, ...(await import('../src/e2ee.js')).generateDeviceKeys() }) });
  const imposter = makeClient({ storage: imposterStorage });
  await imposter.login(bob.name, PASSWORD);
  await imposter.connect();
  const changed = nextEvent(alice, 'keyChanged', (e) => e.user === bob.name && e.device === device.device);
  await imposter.send(conv, 'new key');
  await changed;
  await eventually(() => alice.messages(conv).some((m) => m.text === 'new key'), { what: 'the message still decrypts' });
  assert.equal(alice.messages(conv).find((m) => m.text === 'new key').verified, false);
  assert.notEqual(alice.safetyNumber(bob.name), before);
  await alice.trust(bob.name, device.device);
  await eventually(() => alice.messages(conv).find((m) => m.text === 'new key')?.verified === true, { what: 'verified after trust' });
});

test('a replayed ciphertext is detected: a replay event, and the copy stays hidden', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  const conv = await alice.direct(bob.name);
  const original = await alice.send(conv, 'pay bob 10 yuan');
  await eventually(() => textOf(bob, conv).includes('pay bob 10 yuan'), { what: 'bob reads it' });
  // Someone holding alice's token posts the same ciphertext as a new op (a new cmid, no
  // attrs.cmid: this node does not require device signatures). The E2EE layer must catch it.
  const op = bob.logOf(conv).ops.get(original.opId);
  const replay = nextEvent(bob, 'replay');
  const copy = await alice.http('POST', '/v1/ops', { cmid: unique('replay'), conv, kind: 'message', body: op.content.body });
  const seen = await replay;
  assert.deepEqual(seen, { conv, opId: copy.op_id, original: original.opId, user: alice.name, device: seen.device });
  assert.equal(seen.device, op.content.device);
  assert.deepEqual(textOf(bob, conv), ['pay bob 10 yuan']);
  assert.ok(!bob.messages(conv).some((m) => m.opId === copy.op_id), 'the replay is not shown');
});
