// Canonical JSON, base64url, SHA-256 and UTF-8 against known vectors: the Matrix appendix
// examples (copied into tests/crdt/test_canonical.py) and values canonicalised by the Python
// crdt (fixtures/canonical.json, made by test/py/make_fixtures.py).

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { b64decode, b64encode } from '../src/base64url.js';
import { canonicalBytes, canonicalJson, compareCodePoints } from '../src/canonical.js';
import { sha256 } from '../src/sha256.js';
import { utf8Decode, utf8Encode } from '../src/utf8.js';

const fixtures = JSON.parse(readFileSync(new URL('./fixtures/canonical.json', import.meta.url)));
const hex = (bytes) => Buffer.from(bytes).toString('hex');

test('Matrix canonical JSON examples', () => {
  assert.equal(fixtures.matrix.length, 10);
  for (const { input, canonical } of fixtures.matrix) {
    assert.equal(canonicalJson(JSON.parse(input)), canonical, input);
  }
});

test('canonical JSON equals the Python crdt on 302 random values', () => {
  for (const { value_json: text, canonical } of fixtures.values) {
    const value = JSON.parse(text);
    assert.equal(canonicalJson(value), canonical);
    assert.deepEqual(Buffer.from(canonicalBytes(value)), Buffer.from(canonical, 'utf8'));
  }
});

test('keys sort by code point, not by UTF-16 code unit', () => {
  assert.equal(canonicalJson({ '😀': 2, '\uffff': 1 }), '{"\uffff":1,"😀":2}');
  // JavaScript's default sort puts the surrogate pair first: the bug this guards against.
  assert.deepEqual(['\uffff', '😀'].sort(), ['😀', '\uffff']);
  assert.deepEqual(['😀', '\uffff'].sort(compareCodePoints), ['\uffff', '😀']);
  assert.ok(compareCodePoints('\uffff', '😀') < 0);
  assert.ok(compareCodePoints('😀', '\ue000') > 0);
  assert.ok(compareCodePoints('a', 'ab') < 0);
  assert.equal(compareCodePoints('x', 'x'), 0);
});

test('canonical JSON refuses what it cannot hold', () => {
  for (const bad of [1.5, 0.1, NaN, Infinity, 2 ** 53, -(2 ** 53), '\ud800', { '\udc00': 1 }, ['a\ud800'], new Uint8Array(1), () => 1, new Date(0)]) {
    assert.throws(() => canonicalJson(bad), TypeError, String(bad));
  }
  let deep = [];
  for (let i = 0; i < 31; i++) deep = [deep];
  assert.equal(canonicalJson(deep).length, 64);
  assert.throws(() => canonicalJson([deep]), /nested/);
  assert.equal(canonicalJson(-0), '0');
  assert.equal(canonicalJson(Number.MAX_SAFE_INTEGER), '9007199254740991');
  assert.equal(canonicalJson({ a: undefined, b: 1 }), '{"b":1}');
  assert.equal(canonicalJson('\u007f/\u2028'), '"\u007f/\u2028"');
  assert.equal(canonicalJson('\u0000\u001f\b'), '"\\u0000\\u001f\\b"');
});

test('unpadded base64url: Matrix examples and the Python encoder', () => {
  for (const { raw, encoded } of fixtures.base64) {
    assert.equal(b64encode(Buffer.from(raw, 'ascii')), encoded);
    assert.equal(Buffer.from(b64decode(encoded)).toString('ascii'), raw);
  }
  for (const { raw, hex: h } of fixtures.b64_bytes) {
    assert.equal(hex(b64decode(raw)), h);
    assert.equal(b64encode(Buffer.from(h, 'hex')), raw);
  }
  for (let n = 0; n < 70; n++) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37 + n) & 255);
    assert.equal(b64encode(bytes), Buffer.from(bytes).toString('base64url'));
    assert.deepEqual(b64decode(b64encode(bytes)), bytes);
  }
});

test('base64url decoding is strict', () => {
  for (const bad of ['Zh', 'Zm9=', 'Zg==', 'Z', 'Zm9vY', '+/8', 'Zm 9v', 'Zm9v\n', 'ｚｇ', 42, null]) {
    assert.throws(() => b64decode(bad), TypeError, String(bad));
  }
  assert.throws(() => b64decode(b64encode(new Uint8Array(65)), 64), /longer/);
  assert.equal(b64decode(b64encode(new Uint8Array(64)), 64).length, 64);
});

test('SHA-256 against FIPS 180-4 examples and Python hashlib', () => {
  const enc = (s) => Buffer.from(s, 'utf8');
  assert.equal(hex(sha256(enc(''))), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(hex(sha256(enc('abc'))), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(
    hex(sha256(enc('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'))),
    '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
  );
  assert.equal(hex(sha256(new Uint8Array(1000000).fill(0x61))), 'cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0');
  for (const { input, digest } of fixtures.sha256) assert.equal(hex(sha256(b64decode(input))), digest);
});

test('UTF-8 encode/decode round trip and strictness', () => {
  const text = 'a é 日本 😀 \u0000 \uffff \u{10ffff}';
  assert.deepEqual(Buffer.from(utf8Encode(text)), Buffer.from(text, 'utf8'));
  assert.equal(utf8Decode(utf8Encode(text)), text);
  assert.throws(() => utf8Encode('\ud800x'), TypeError);
  assert.throws(() => utf8Encode('x\udc00'), TypeError);
  for (const bad of [[0xff], [0xc3], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]]) {
    assert.throws(() => utf8Decode(Uint8Array.from(bad)), TypeError, String(bad));
  }
  const big = 'x'.repeat(20000) + '😀';
  assert.equal(utf8Decode(utf8Encode(big)), big);
});
