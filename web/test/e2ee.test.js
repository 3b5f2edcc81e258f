// E2EE format v1 (docs/e2ee.md) against the known answers the Python SDK publishes in
// tests/sdk/e2ee_vectors.json: device records and keys_sig, safety numbers, chain steps,
// encrypted bodies, tampered bodies (with the same failure reasons), key shares (including
// the split of a share too big for one op) and key requests — byte for byte.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import nacl from 'tweetnacl';

import { b64decode, b64encode } from '../src/base64url.js';
import { canonicalJson } from '../src/canonical.js';
import * as e2ee from '../src/e2ee.js';
import { utf8Decode, utf8Encode } from '../src/utf8.js';

const V = JSON.parse(readFileSync(new URL('../../tests/sdk/e2ee_vectors.json', import.meta.url)));
const text = (bytes) => utf8Decode(bytes);

/** The vectors' nonces: SHA-512(label || u32be(k))[:24], k = 0, 1, … per label. */
function vectorNonces(label) {
  let k = 0;
  return (n) => {
    assert.equal(n, 24);
    const input = new Uint8Array([...utf8Encode(label), 0, 0, 0, 0]);
    new DataView(input.buffer).setUint32(input.length - 4, k++);
    return nacl.hash(input).slice(0, 24);
  };
}

function deviceKeys() {
  const keys = new Map();
  for (const d of V.devices) {
    const sign = nacl.sign.keyPair.fromSeed(b64decode(d.ed25519_seed));
    const box = nacl.box.keyPair.fromSecretKey(b64decode(d.x25519_secret));
    keys.set(`${d.user}/${d.device}`, { sign, box });
  }
  return keys;
}

test('vectors are format 1', () => {
  assert.equal(V.format, 'yanzi-e2ee-vectors');
  assert.equal(V.version, 1);
});

test('§1 device records and keys_sig', () => {
  const keys = deviceKeys();
  for (const d of V.devices) {
    const { sign, box } = keys.get(`${d.user}/${d.device}`);
    assert.equal(b64encode(sign.publicKey), d.ed25519);
    assert.equal(b64encode(box.publicKey), d.x25519);
    const record = e2ee.deviceRecord(d.user, d.device, d.ed25519, d.x25519);
    assert.equal(canonicalJson(record), d.record);
    assert.equal(e2ee.signDeviceRecord(record, sign.secretKey), d.keys_sig);
    assert.ok(e2ee.verifyDeviceRecord(record, d.keys_sig));
    assert.ok(!e2ee.verifyDeviceRecord({ ...record, user: d.user + 'x' }, d.keys_sig));
    assert.ok(!e2ee.verifyDeviceRecord({ ...record, x25519: V.devices[0].x25519 === d.x25519 ? V.devices[1].x25519 : V.devices[0].x25519 }, d.keys_sig));
  }
});

test('§2 safety numbers', () => {
  assert.equal(V.safety_numbers.length, 4);
  for (const c of V.safety_numbers) {
    assert.equal(e2ee.safetyNumber(c.a, c.a_keys, c.b, c.b_keys), c.number);
    assert.match(c.number, /^\d{5}( \d{5}){5}$/);
  }
  assert.equal(V.safety_numbers[0].number, V.safety_numbers[1].number);
  assert.notEqual(V.safety_numbers[0].number, V.safety_numbers[2].number);
});

test('§3 chain steps', () => {
  const ck0 = b64decode(V.chain.ck0);
  for (const step of V.chain.steps) {
    const ck = e2ee.chainKeyAt(0, ck0, step.i);
    assert.equal(b64encode(ck), step.ck);
    assert.equal(b64encode(e2ee.messageKey(ck)), step.mk);
  }
  assert.throws(() => e2ee.chainKeyAt(0, ck0, 100), (e) => e.reason === 'out_of_range');
  assert.throws(() => e2ee.chainKeyAt(3, ck0, 2), (e) => e.reason === 'before_share');
});

test('§4 encrypted bodies: encrypt and decrypt', () => {
  const ck0 = b64decode(V.chain.ck0);
  assert.equal(V.messages.length, 4);
  for (const m of V.messages) {
    const body = e2ee.encryptBody(m.conv, m.chain, m.i, b64decode(m.mk), b64decode(m.app), b64decode(m.n));
    assert.equal(text(body), m.body);
    const inbound = { conv: m.conv, chain: m.chain, s: 0, ck: ck0 };
    const { sealed, app } = e2ee.decrypt(m.conv, utf8Encode(m.body), inbound);
    assert.equal(sealed.i, m.i);
    assert.equal(b64encode(app), m.app);
    // A share starting later cannot open earlier indices; one starting at i opens i.
    if (m.i > 0) {
      const late = { ...inbound, s: m.i, ck: e2ee.chainKeyAt(0, ck0, m.i) };
      assert.equal(b64encode(e2ee.decrypt(m.conv, utf8Encode(m.body), late).app), m.app);
      const later = { ...inbound, s: m.i + 1, ck: e2ee.chainKeyAt(0, ck0, Math.min(m.i + 1, 99)) };
      if (m.i < 99) assert.throws(() => e2ee.decrypt(m.conv, utf8Encode(m.body), later), (e) => e.reason === 'before_share');
    }
  }
});

test('§4 an outbound chain seals index after index, as the vectors do', () => {
  const chain = { conv: V.messages[0].conv, chain: V.chain.chain, ck0: V.chain.ck0, ck: V.chain.ck0, index: 0 };
  const nonces = V.messages.filter((m) => m.i < 3);
  for (const m of nonces) {
    const body = e2ee.sealWithChain(chain, m.conv, b64decode(m.app), () => b64decode(m.n));
    assert.equal(text(body), m.body);
  }
  assert.equal(chain.index, 3);
  assert.equal(chain.ck, V.chain.steps.find((s) => s.i === 3).ck);
});

test('§4 tampered and malformed bodies fail with the Python reasons', () => {
  const cases = V.invalid_messages;
  assert.equal(cases.cases.length, 7);
  for (const c of cases.cases) {
    const inbound = { conv: c.conv, chain: cases.chain, s: 0, ck: b64decode(cases.ck0) };
    assert.throws(() => e2ee.decrypt(c.conv, utf8Encode(c.body), inbound), (e) => e instanceof e2ee.E2eeError && e.reason === c.reason, c.why);
  }
});

test('§5 key shares: byte-identical bodies, each recipient opens its own', () => {
  const keys = deviceKeys();
  for (const s of V.shares) {
    const sender = keys.get(`${s.sender_user}/${s.sender_device}`);
    const recipients = s.recipients.map(([user, device]) => ({ user, device, x25519: b64encode(keys.get(`${user}/${device}`).box.publicKey) }));
    const bodies = e2ee.sealShares({
      conv: s.conv, chainId: s.chain, start: s.i, ck: b64decode(s.ck), senderUser: s.sender_user,
      senderDevice: s.sender_device, boxSecretKey: sender.box.secretKey, recipients, randomBytes: vectorNonces(s.nonce_label),
    });
    assert.deepEqual(bodies.map(text), s.bodies);
    const parsed = e2ee.parseKeyShare(bodies[0]);
    for (const [user, device] of s.recipients) {
      const opened = e2ee.openShare(parsed, { conv: s.conv, author: s.sender_user, device: s.sender_device }, { user, device }, sender.box.publicKey, keys.get(`${user}/${device}`).box.secretKey);
      assert.equal(opened.start, s.i);
      assert.equal(b64encode(opened.ck), s.ck);
      // Bound to the op: another author or conversation is refused.
      assert.throws(
        () => e2ee.openShare(parsed, { conv: s.conv + 'x', author: s.sender_user, device: s.sender_device }, { user, device }, sender.box.publicKey, keys.get(`${user}/${device}`).box.secretKey),
        (e) => e.reason === 'tampered',
      );
    }
    assert.throws(() => e2ee.openShare(parsed, { conv: s.conv, author: s.sender_user, device: s.sender_device }, { user: 'zed', device: 'x' }, sender.box.publicKey, sender.box.secretKey), (e) => e.reason === 'not_for_us');
  }
});

test('§5 a share too big for one op is split exactly as Python splits it', () => {
  const s = V.split_share;
  const sender = deviceKeys().get(`${s.sender_user}/${s.sender_device}`);
  const recipients = [];
  for (let k = 0; k < s.recipient_users; k++) {
    const user = `u${String(k).padStart(3, '0')}`;
    const secret = createHash('sha256').update(`recipient-${user}`).digest();
    recipients.push({ user, device: 'd', x25519: b64encode(nacl.box.keyPair.fromSecretKey(new Uint8Array(secret)).publicKey) });
  }
  const bodies = e2ee.sealShares({
    conv: s.conv, chainId: s.chain, start: s.i, ck: b64decode(s.ck), senderUser: s.sender_user, senderDevice: s.sender_device,
    boxSecretKey: sender.box.secretKey, recipients: recipients.reverse(), randomBytes: vectorNonces(s.nonce_label),
  });
  assert.deepEqual(bodies.map((b) => b.length), s.body_lengths);
  assert.deepEqual(bodies.map((b) => createHash('sha256').update(b).digest('base64url')), s.body_sha256);
  assert.deepEqual(bodies.map((b) => e2ee.parseKeyShare(b).shares.length), s.shares_per_body);
  assert.ok(bodies.length > 1 && bodies.every((b) => b.length <= e2ee.MAX_BODY_BYTES));
});

test('§6 key requests', () => {
  for (const r of V.key_requests) {
    const body = e2ee.keyRequestBody(r.chain, r.sender_user, r.sender_device);
    assert.equal(text(body), r.body);
    assert.deepEqual(e2ee.parseKeyShare(body), { alg: e2ee.KEYREQ_ALG, chain: r.chain, sender_user: r.sender_user, sender_device: r.sender_device });
  }
});

test('bodyAlg tells plain text from encrypted bodies; decoders fail only with E2eeError', () => {
  assert.equal(e2ee.bodyAlg(utf8Encode(V.messages[0].body)), e2ee.CHAIN_ALG);
  assert.equal(e2ee.bodyAlg(utf8Encode('hello')), null);
  assert.equal(e2ee.bodyAlg(utf8Encode('{not json')), null);
  for (const junk of ['', 'x', '{}', '[]', '{"v":1,"alg":"yz.share.v1","chain":"AAAAAAAAAAAAAAAAAAAAAA","shares":[]}', '{"v":1,"alg":"yz.chain.v1"}', '\u00ff']) {
    for (const fn of [e2ee.parseBody, e2ee.parseKeyShare]) {
      assert.throws(() => fn(utf8Encode(junk)), (e) => e instanceof e2ee.E2eeError && e.reason === 'malformed', junk);
    }
  }
});

test('a fresh chain rotates on membership change, after 100 bodies and after a week', () => {
  const chain = e2ee.newOutboundChain('c', 1000, 'epoch-1');
  assert.equal(b64decode(chain.chain).length, 16);
  assert.equal(e2ee.needsRotation(chain, { nowMs: 2000, epoch: 'epoch-1' }), false);
  assert.equal(e2ee.needsRotation(chain, { nowMs: 2000, epoch: 'epoch-2' }), true);
  assert.equal(e2ee.needsRotation(chain, { nowMs: 1000 + e2ee.MAX_CHAIN_AGE_MS, epoch: 'epoch-1' }), true);
  assert.equal(e2ee.needsRotation(chain, { nowMs: 999, epoch: 'epoch-1' }), true); // clock went back
  for (let i = 0; i < 100; i++) e2ee.sealWithChain(chain, 'c', utf8Encode(`m${i}`));
  assert.equal(e2ee.needsRotation(chain, { nowMs: 2000, epoch: 'epoch-1' }), true);
  assert.throws(() => e2ee.sealWithChain(chain, 'c', utf8Encode('one more')), (e) => e.reason === 'out_of_range');
});
