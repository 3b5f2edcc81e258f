// Op ids, device and node signatures, the cursor and the fold against the Python crdt:
// the vectors of docs/crdt.md §3 and docs/protocol.md §5.4, and a fixture conversation
// (fixtures/ops.json, made by test/py/make_fixtures.py) whose view bytes the JS fold must
// reproduce for any delivery order, with duplicates.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import nacl from 'tweetnacl';

import { b64decode, b64encode } from '../src/base64url.js';
import { canonicalJson } from '../src/canonical.js';
import { CursorState, decodeCursor, encodeCursor } from '../src/cursor.js';
import { MessageLog } from '../src/fold.js';
import { buildContent, computeOpId, decodeOp, directConvId, OpError, signContent, verifyContent, verifyNodeSignature } from '../src/op.js';
import { sha256 } from '../src/sha256.js';
import { utf8Encode } from '../src/utf8.js';

const fx = JSON.parse(readFileSync(new URL('./fixtures/ops.json', import.meta.url)));

test('docs/crdt.md §3 test vector: content bytes, dsig, op id, nsig', () => {
  const device = nacl.sign.keyPair.fromSeed(Uint8Array.from({ length: 32 }, (_, i) => i));
  const node = nacl.sign.keyPair.fromSeed(Uint8Array.from({ length: 32 }, (_, i) => i + 32));
  const nodeId = b64encode(node.publicKey);
  assert.equal(nodeId, 'Kay64UG8yvCyLhqU000LxzYeUm0L_hLIl5S8kyKWbdc');
  const content = buildContent({ conv: 'conv:trip', kind: 'message', author: '@alice:yanzi.example', device: 'alice-phone', body: b64encode(utf8Encode('hi')) });
  assert.equal(canonicalJson(content), '{"attrs":{},"author":"@alice:yanzi.example","body":"aGk","conv":"conv:trip","device":"alice-phone","kind":"message","target":"","v":1}');
  const dsig = signContent(content, device.secretKey);
  assert.equal(dsig, 'q5w1wcAxhx6s680-6URqiFOzMIqk-WaMwMQmBUHvDJ_0-J5lEsvJiExEB70ScQwSoZKtqPmSlWhz_3wkwYurDg');
  const header = { content, hlc: [1767225600000, 0], dot: [nodeId, 1] };
  assert.equal(computeOpId(header), 'PfGJr0BdzMRIxgMS_uViprsb0Vl7v1WrEdfkJ-LJPiQ');
  const envelope = { ...header, dsig };
  const nsig = b64encode(nacl.sign.detached(utf8Encode(canonicalJson(envelope)), node.secretKey));
  assert.equal(nsig, 'CmSKZ6Pa8LVzxY4FZmCpmZaz2dKtpOt9hdzu28ZECCtgB53Oq7kwl3IXykkSpIni3jPvM3oD6uJ1M-NA-kWdAw');
  const op = decodeOp({ ...envelope, nsig });
  assert.equal(op.opId, 'PfGJr0BdzMRIxgMS_uViprsb0Vl7v1WrEdfkJ-LJPiQ');
  assert.ok(verifyNodeSignature(op));
  assert.ok(verifyContent(content, dsig, device.publicKey));
  assert.ok(!verifyContent({ ...content, body: 'aGl' }, dsig, device.publicKey));
  assert.ok(!verifyNodeSignature({ ...op, hlc: [1767225600001, 0] }));
});

test('docs/protocol.md §5.4 worked example and direct ids', () => {
  const seed = sha256(utf8Encode('alice-phone'));
  const key = nacl.sign.keyPair.fromSeed(seed);
  assert.equal(b64encode(key.publicKey), 'xHG2obsGM7zEZIvgOWrRsRZixLEr_Qrq0S-UAoiuesY');
  const body = b64encode(Uint8Array.from([0, ...utf8Encode('opaque ciphertext'), 0xff]));
  assert.equal(body, 'AG9wYXF1ZSBjaXBoZXJ0ZXh0_w');
  const content = buildContent({ conv: 'd_FBpM0kK2foLt9KeLtBjUCmo4', kind: 'message', author: 'alice', device: 'phone-1', attrs: { mime: 'text/plain' }, body });
  assert.equal(signContent(content, key.secretKey), 'aF4Z7KAlrmt-s7SVi1HN_DyOjnCzTSLwkl9gxykdzAQO7oVbFOC-a2HcX0K3EJlwf9hb39FHZDf1GGZ3WDiFBw');
  assert.equal(computeOpId({ content, hlc: [1795709878247, 0], dot: ['30Z4bh2NgZDpBqqBgJSYnPnFpdd9IeHt1dtUYF_ZX6M', 2] }), 'dMpHuqV505gjTtfyfwyHfBnV4yhikclx2vW6DcBC5wA');
  assert.equal(directConvId('alice', 'bob'), 'd_FBpM0kK2foLt9KeLtBjUCmo4');
  assert.equal(directConvId('bob', 'alice'), 'd_FBpM0kK2foLt9KeLtBjUCmo4');
  const create = buildContent({ conv: directConvId('alice', 'dave'), kind: 'create', author: 'alice', device: 'phone-1', attrs: { type: 'direct', members: ['dave'] } });
  assert.equal(create.conv, 'd_mfQmTD7k3d-noKwGsHAlHkbb');
  assert.equal(signContent(create, key.secretKey), 'JU4Lrq1oWK4qrunmQmdSrcbdJrlzXdgEf-RLToMdcG11kVFHApODVjFXrqPtmG5Dq9djIV3ZvFllF58narOuCw');
});

test('op ids, content bytes and signatures of the fixture ops equal Python', () => {
  assert.equal(fx.ops.length, 23);
  fx.ops.forEach((raw, i) => {
    const op = decodeOp(raw);
    assert.equal(op.opId, fx.op_ids[i]);
    assert.equal(canonicalJson(op.content), fx.content_bytes[i]);
    assert.ok(verifyContent(op.content, op.dsig, b64decode(fx.device_keys[op.content.author])), `dsig ${i}`);
    assert.ok(verifyNodeSignature(op), `nsig ${i}`);
  });
});

test('decodeOp refuses malformed ops', () => {
  const good = fx.ops[1];
  const variants = [
    null, [], { ...good, content: null }, { ...good, hlc: [1.5, 0] }, { ...good, dot: ['x', 0] },
    { ...good, dot: ['bad id!', 1] }, { ...good, content: { ...good.content, kind: 'nope' } },
    { ...good, content: { ...good.content, v: 2 } }, { ...good, content: { ...good.content, attrs: [] } },
    { ...good, hlc: [1, 2 ** 31] },
  ];
  for (const v of variants) assert.throws(() => decodeOp(v), OpError);
});

function shuffled(items, seed) {
  const out = [...items];
  let s = seed;
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

test('the fold gives the Python view bytes for any delivery order, with duplicates', () => {
  const ops = fx.ops.map(decodeOp);
  const orders = [ops, [...ops].reverse()];
  for (let seed = 1; seed <= 60; seed++) {
    const order = shuffled(ops, seed);
    orders.push(seed % 3 ? order : [...order, ...shuffled(ops, seed * 7).slice(0, 9)]);
  }
  for (const order of orders) {
    const log = new MessageLog(fx.conv);
    for (const op of order) log.apply(op);
    assert.equal(canonicalJson(log.viewJson()), fx.view);
  }
});

test('the fold applies incrementally too (reading the view between ops)', () => {
  const log = new MessageLog(fx.conv);
  for (const op of fx.ops.map(decodeOp)) {
    assert.notEqual(log.apply(op), 'duplicate');
    log.state; // forces the incremental path and rebuilds
  }
  assert.equal(canonicalJson(log.viewJson()), fx.view);
  assert.equal(log.apply(decodeOp(fx.ops[3])), 'duplicate');
  const clash = decodeOp({ ...fx.ops[2], content: { ...fx.ops[2].content, body: 'eHg' } });
  assert.equal(log.apply(clash), 'equivocation');
});

test('cursor encoding equals Python and round-trips', () => {
  assert.equal(encodeCursor(fx.cursor), fx.cursor_encoded);
  assert.deepEqual(decodeCursor(fx.cursor_encoded), fx.cursor);
  assert.equal(
    encodeCursor({ 'conv:trip': { n1: 6, n2: 5 } }),
    'eyJ2IjoxLCJ2diI6eyJjb252OnRyaXAiOnsibjEiOjYsIm4yIjo1fX19',
  );
  assert.equal(encodeCursor({}), '');
  assert.deepEqual(decodeCursor(''), {});
  assert.deepEqual(decodeCursor(encodeCursor({ c: { a: 0, b: 3 } })), { c: { b: 3 } });
});

test('the cursor advances contiguously per origin and reports gaps', () => {
  const c = new CursorState({ conv: { n1: 2 } });
  assert.deepEqual(c.add('conv', 'n1', 2), { new: false, moved: false, gap: false });
  assert.deepEqual(c.add('conv', 'n1', 3), { new: true, moved: true, gap: false });
  assert.deepEqual(c.add('conv', 'n1', 6), { new: true, moved: false, gap: true });
  assert.deepEqual(c.add('conv', 'n1', 5), { new: true, moved: false, gap: true });
  assert.deepEqual(c.add('conv', 'n2', 1), { new: true, moved: true, gap: true });
  assert.deepEqual(c.snapshot(), { conv: { n1: 3, n2: 1 } });
  c.noteCaughtUp(); // the node could not fill 4 either: no catch-up storm on every live op
  assert.equal(c.add('conv', 'n1', 7).gap, false);
  assert.equal(c.add('conv', 'n2', 2).gap, true); // the prefix moved: worth another catch-up
  assert.deepEqual(c.add('conv', 'n1', 4), { new: true, moved: true, gap: false });
  assert.deepEqual(c.snapshot(), { conv: { n1: 7, n2: 2 } });
  assert.equal(c.hasGaps('conv'), false);
  c.add('conv', 'n1', 10);
  assert.equal(c.merge({ conv: { n1: 9, n3: 4 }, other: { n1: 1 } }), true);
  assert.deepEqual(c.snapshot(), { conv: { n1: 10, n2: 2, n3: 4 }, other: { n1: 1 } });
  c.add('conv', 'n1', 12);
  assert.equal(c.merge({ conv: { n1: 11 } }), true);
  assert.deepEqual(c.snapshot(), { conv: { n1: 12, n2: 2, n3: 4 }, other: { n1: 1 } });
  assert.equal(c.merge({ conv: { n1: 2 } }), false); // never lowers
  assert.equal(decodeCursor(c.encoded({ without: 'other' })).other, undefined);
});
