// End-to-end encryption, format v1 — docs/e2ee.md, implemented byte for byte. Pure functions
// over tweetnacl's primitives (sign, box, secretbox, hash = SHA-512, randomBytes); the Client
// owns state, storage and the network. Section numbers below are docs/e2ee.md's.

import nacl from './nacl.js';
import { b64decode, b64encode } from './base64url.js';
import { canonicalBytes, canonicalJson, compareCodePoints } from './canonical.js';
import { utf8Decode, utf8Encode } from './utf8.js';

export const CHAIN_ALG = 'yz.chain.v1';
export const SHARE_ALG = 'yz.share.v1';
export const KEYREQ_ALG = 'yz.keyreq.v1';
/** Indices 0..99: a chain rotates after 100 bodies (§3), so a receiver derives at most 99 steps. */
export const CHAIN_LENGTH = 100;
export const MAX_CHAIN_AGE_MS = 7 * 24 * 3600 * 1000; // §3: … and after a week
export const MAX_BODY_BYTES = 64 * 1024; // the op body limit: larger share bodies are split (§5)
const CHAIN_ID_BYTES = 16;
const KEY_BYTES = 32;
const NONCE_BYTES = 24;
const MAC_BYTES = 16;
const MAX_NAME_LEN = 128;

/**
 * An end-to-end check failed or input is not format v1. `reason` is one of the stable reasons
 * the Python SDK uses too: malformed, tampered, bad_signature, unknown_chain, before_share,
 * out_of_range, not_for_us, too_large.
 */
export class E2eeError extends Error {
  constructor(reason, message) {
    super(`${reason}: ${message}`);
    this.name = 'E2eeError';
    this.reason = reason;
  }
}

const fail = (reason, message) => {
  throw new E2eeError(reason, message);
};

// Strict readers: objects with exactly the listed fields, canonical base64url of exact sizes.
function loads(bytes) {
  try {
    return JSON.parse(utf8Decode(bytes));
  } catch {
    return fail('malformed', 'not JSON');
  }
}

function exactObject(value, fields) {
  if (!value || typeof value !== 'object' || Array.isArray(value)) fail('malformed', `expected an object with exactly ${fields}`);
  const keys = Object.keys(value);
  if (keys.length !== fields.length || !fields.every((f) => Object.prototype.hasOwnProperty.call(value, f))) {
    fail('malformed', `expected an object with exactly ${fields}`);
  }
  return value;
}

function checkVersion(obj, alg) {
  if (obj.v !== 1 || !Number.isInteger(obj.v) || obj.alg !== alg) fail('malformed', `expected v 1 and alg ${alg}`);
}

function b64(value, size, what) {
  let raw;
  try {
    raw = b64decode(value, size ?? MAX_BODY_BYTES);
  } catch {
    return fail('malformed', `${what} must be unpadded base64url`);
  }
  if (size !== null && raw.length !== size) fail('malformed', `${what} must be ${size} bytes`);
  return raw;
}

function index(value) {
  if (!Number.isInteger(value) || value < 0 || value > Number.MAX_SAFE_INTEGER) fail('malformed', 'an index must be an integer from 0 to 2^53-1');
  return value;
}

function name(value, what) {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_NAME_LEN) fail('malformed', `${what} must be a string of 1-${MAX_NAME_LEN} characters`);
  return value;
}

const DEVICE_PREFIX = utf8Encode('yanzi-device-v1\u0000');
const SAFETY_PREFIX = utf8Encode('yanzi-safety-v1\u0000');

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// -- §1 device keys -------------------------------------------------------------------------

/** A fresh device: Ed25519 (signing) and X25519 (box) key pairs, as base64url strings. */
export function generateDeviceKeys() {
  const sign = nacl.sign.keyPair();
  const box = nacl.box.keyPair();
  return {
    sign: { pk: b64encode(sign.publicKey), sk: b64encode(sign.secretKey) },
    box: { pk: b64encode(box.publicKey), sk: b64encode(box.secretKey) },
  };
}

export function deviceRecord(user, device, ed25519, x25519) {
  return { user, device, ed25519, x25519 };
}

/** keys_sig = Ed25519(sk, "yanzi-device-v1\0" || canonical(device record)), base64url. */
export function signDeviceRecord(record, signSecretKey) {
  return b64encode(nacl.sign.detached(concat(DEVICE_PREFIX, canonicalBytes(record)), signSecretKey));
}

export function verifyDeviceRecord(record, keysSig) {
  try {
    const pk = b64decode(record.ed25519, 32);
    const sig = b64decode(keysSig, 64);
    if (pk.length !== 32 || sig.length !== 64) return false;
    return nacl.sign.detached.verify(concat(DEVICE_PREFIX, canonicalBytes(record)), sig, pk);
  } catch {
    return false;
  }
}

// -- §2 safety numbers ----------------------------------------------------------------------

/**
 * The 30-digit safety number of two users; `keysA`/`keysB` are the b64 Ed25519 keys of each
 * user's trusted devices (any order: they are sorted here). Symmetric in its two users.
 */
export function safetyNumber(userA, keysA, userB, keysB) {
  let a = { user: userA, keys: [...keysA].sort(compareCodePoints) };
  let b = { user: userB, keys: [...keysB].sort(compareCodePoints) };
  if (compareCodePoints(userA, userB) > 0) [a, b] = [b, a];
  const h = nacl.hash(concat(SAFETY_PREFIX, canonicalBytes({ a, b })));
  const groups = [];
  for (let i = 0; i < 6; i++) {
    let n = 0;
    for (let k = 0; k < 5; k++) n = n * 256 + h[5 * i + k]; // 40 bits: exact in a double
    groups.push(String(n % 100000).padStart(5, '0'));
  }
  return groups.join(' ');
}

// -- §3 sender chains -----------------------------------------------------------------------

const ONE = Uint8Array.of(1);
const TWO = Uint8Array.of(2);

/** MK_i = SHA512(0x01 || CK_i)[:32] */
export const messageKey = (ck) => nacl.hash(concat(ONE, ck)).slice(0, 32);
/** CK_{i+1} = SHA512(0x02 || CK_i)[:32] */
export const nextChainKey = (ck) => nacl.hash(concat(TWO, ck)).slice(0, 32);

/** CK_index derived forward from CK_start (docs/e2ee.md §3); throws before_share / out_of_range. */
export function chainKeyAt(start, ckStart, idx) {
  if (idx < start) fail('before_share', `index ${idx} precedes the share's start ${start}`);
  if (idx >= CHAIN_LENGTH) fail('out_of_range', `index ${idx} is beyond a chain's ${CHAIN_LENGTH}`);
  let ck = ckStart;
  for (let i = start; i < idx; i++) ck = nextChainKey(ck);
  return ck;
}

/** A new outbound chain (rotation): 16-byte id, random CK_0, index 0. Plain JSON for storage. */
export function newOutboundChain(conv, nowMs, epoch, members = [], randomBytes = nacl.randomBytes) {
  const chain = b64encode(randomBytes(CHAIN_ID_BYTES));
  const ck0 = b64encode(randomBytes(KEY_BYTES));
  return {
    conv,
    chain,
    ck0, // kept to answer key requests (§6)
    index: 0, // the next index to use
    ck: ck0, // CK_index (earlier ones are erased)
    createdMs: nowMs,
    epoch, // the last membership op seen when the chain started: rotate when it changes
    members: [...members].sort(compareCodePoints), // who may ask for the chain later (§6)
    sharedWith: [], // "user\u0000device" entries that hold a share of this chain
  };
}

/** §3: rotate after a membership change, 100 bodies, or a week (by the sender's clock). */
export function needsRotation(chain, { nowMs, epoch }) {
  return (
    !chain ||
    chain.epoch !== epoch ||
    chain.index >= CHAIN_LENGTH ||
    !(nowMs - chain.createdMs >= 0 && nowMs - chain.createdMs < MAX_CHAIN_AGE_MS)
  );
}

// -- §4 encrypted bodies --------------------------------------------------------------------

/** The body for `app` at `idx` with message key `mk`: UTF-8 of canonical JSON {v, alg, chain, i, n, c}. */
export function encryptBody(conv, chainId, idx, mk, app, nonce) {
  if (nonce.length !== NONCE_BYTES) fail('malformed', 'nonce must be 24 bytes');
  const plain = canonicalBytes({ conv, chain: chainId, i: idx, body: b64encode(app) });
  const ct = nacl.secretbox(plain, nonce, mk);
  const body = utf8Encode(canonicalJson({ v: 1, alg: CHAIN_ALG, chain: chainId, i: idx, n: b64encode(nonce), c: b64encode(ct) }));
  if (body.length > MAX_BODY_BYTES) fail('too_large', `the encrypted body would exceed ${MAX_BODY_BYTES} bytes`);
  return body;
}

/** Encrypt with an outbound chain's next index and advance it (mutates `chain`). */
export function sealWithChain(chain, conv, app, randomBytes = nacl.randomBytes) {
  if (chain.index >= CHAIN_LENGTH) fail('out_of_range', 'the chain is used up: rotate');
  const ck = b64decode(chain.ck);
  const body = encryptBody(conv, chain.chain, chain.index, messageKey(ck), app, randomBytes(NONCE_BYTES));
  chain.ck = b64encode(nextChainKey(ck));
  chain.index += 1;
  return body;
}

/** The alg of an E2EE body, or null if `body` is not one (a plaintext message). */
export function bodyAlg(bytes) {
  if (bytes.length === 0 || bytes[0] !== 0x7b) return null; // '{'
  try {
    const v = JSON.parse(utf8Decode(bytes));
    return v && typeof v === 'object' && typeof v.alg === 'string' ? v.alg : null;
  } catch {
    return null;
  }
}

/** Parse a yz.chain.v1 body: {chain (b64), i, nonce, ct}; throws E2eeError('malformed'). */
export function parseBody(bytes) {
  const obj = exactObject(loads(bytes), ['v', 'alg', 'chain', 'i', 'n', 'c']);
  checkVersion(obj, CHAIN_ALG);
  const ct = b64(obj.c, null, 'c');
  if (ct.length < MAC_BYTES) fail('malformed', 'c is shorter than the authentication tag');
  b64(obj.chain, CHAIN_ID_BYTES, 'chain');
  return { chain: obj.chain, i: index(obj.i), nonce: b64(obj.n, NONCE_BYTES, 'n'), ct };
}

/** Open a parsed body with its message key and check its binding to conv, chain and index. */
export function decryptBody(conv, sealed, mk) {
  const plain = nacl.secretbox.open(sealed.ct, sealed.nonce, mk);
  if (!plain) fail('tampered', 'the body does not authenticate');
  const obj = exactObject(loads(plain), ['conv', 'chain', 'i', 'body']);
  if (obj.conv !== conv || obj.chain !== sealed.chain || obj.i !== sealed.i) {
    fail('tampered', 'the body is bound to another conversation or position');
  }
  return b64(obj.body, null, 'body');
}

/** Parse and open `bytes` with an inbound chain {conv, chain, s, ck (bytes)}. */
export function decrypt(conv, bytes, inbound) {
  const sealed = parseBody(bytes);
  if (sealed.chain !== inbound.chain || conv !== inbound.conv) fail('unknown_chain', 'the body belongs to another chain');
  return { sealed, app: decryptBody(conv, sealed, messageKey(chainKeyAt(inbound.s, inbound.ck, sealed.i))) };
}

// -- §5 key shares --------------------------------------------------------------------------

/**
 * key_share bodies giving (start, CK_start) of `chainId` to every recipient ({user, device,
 * x25519 (b64)}), one Box each: recipients in (user, device) order, one nonce drawn per entry,
 * entries packed greedily into bodies of at most 64 KiB (§5; byte-identical to yanzi.e2ee).
 */
export function sealShares({ conv, chainId, start, ck, senderUser, senderDevice, boxSecretKey, recipients, randomBytes = nacl.randomBytes }) {
  const plain = canonicalBytes({ conv, chain: chainId, i: start, ck: b64encode(ck), sender_user: senderUser, sender_device: senderDevice });
  const unique = new Map();
  for (const r of recipients) unique.set(r.user + '\u0000' + r.device, r);
  const sorted = [...unique.values()].sort((x, y) => compareCodePoints(x.user, y.user) || compareCodePoints(x.device, y.device));
  const entries = sorted.map((r) => {
    const nonce = randomBytes(NONCE_BYTES);
    const c = nacl.box(plain, nonce, b64decode(r.x25519), boxSecretKey);
    return canonicalJson({ user: r.user, device: r.device, n: b64encode(nonce), c: b64encode(c) });
  });
  // Canonical JSON of a list is "[" + items joined by "," + "]", so a body is the body with no
  // shares and its entries spliced in: entries are packed by their byte length.
  const head = canonicalJson({ v: 1, alg: SHARE_ALG, chain: chainId, shares: [] });
  const at = head.indexOf('"shares":[]') + '"shares":['.length;
  const emptyLen = utf8Encode(head).length;
  const bodies = [];
  let batch = [];
  let size = emptyLen;
  const flush = () => bodies.push(utf8Encode(head.slice(0, at) + batch.join(',') + head.slice(at)));
  for (const entry of entries) {
    const len = utf8Encode(entry).length;
    let extra = len + (batch.length ? 1 : 0);
    if (batch.length && size + extra > MAX_BODY_BYTES) {
      flush();
      batch = [];
      size = emptyLen;
      extra = len;
    }
    batch.push(entry);
    size += extra;
  }
  if (batch.length) flush();
  return bodies;
}

/** Decode a key_share body: {alg: SHARE_ALG, chain, shares} or {alg: KEYREQ_ALG, chain, sender_user, sender_device}. */
export function parseKeyShare(bytes) {
  const obj = loads(bytes);
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) fail('malformed', 'a key_share body must be a JSON object');
  if (obj.alg === KEYREQ_ALG) {
    exactObject(obj, ['v', 'alg', 'chain', 'sender_user', 'sender_device']);
    checkVersion(obj, KEYREQ_ALG);
    b64(obj.chain, CHAIN_ID_BYTES, 'chain');
    return { alg: KEYREQ_ALG, chain: obj.chain, sender_user: name(obj.sender_user, 'sender_user'), sender_device: name(obj.sender_device, 'sender_device') };
  }
  exactObject(obj, ['v', 'alg', 'chain', 'shares']);
  checkVersion(obj, SHARE_ALG);
  b64(obj.chain, CHAIN_ID_BYTES, 'chain');
  if (!Array.isArray(obj.shares)) fail('malformed', 'shares must be a list');
  const shares = obj.shares.map((raw) => {
    const e = exactObject(raw, ['user', 'device', 'n', 'c']);
    const c = b64(e.c, null, 'c');
    if (c.length < MAC_BYTES) fail('malformed', "a share's c is shorter than the authentication tag");
    return { user: name(e.user, 'user'), device: name(e.device, 'device'), nonce: b64(e.n, NONCE_BYTES, 'n'), c };
  });
  if (!shares.length) fail('malformed', 'a share body needs at least one share');
  return { alg: SHARE_ALG, chain: obj.chain, shares };
}

/**
 * Our entry of a parsed share op by (author, device) in `conv`, opened and checked (§5):
 * {chain, start, ck (bytes)}. Throws not_for_us, tampered or malformed.
 */
export function openShare(share, { conv, author, device }, me, senderBoxPk, boxSecretKey) {
  const entry = share.shares.find((s) => s.user === me.user && s.device === me.device);
  if (!entry) fail('not_for_us', `no share for ${me.user}/${me.device}`);
  const plain = nacl.box.open(entry.c, entry.nonce, senderBoxPk, boxSecretKey);
  if (!plain) fail('tampered', 'the share does not authenticate');
  const obj = exactObject(loads(plain), ['conv', 'chain', 'i', 'ck', 'sender_user', 'sender_device']);
  if (obj.conv !== conv || obj.chain !== share.chain || obj.sender_user !== author || obj.sender_device !== device) {
    fail('tampered', 'the share is bound to another conversation, chain or sender');
  }
  return { chain: share.chain, start: index(obj.i), ck: b64(obj.ck, KEY_BYTES, 'ck') };
}

// -- §6 key requests ------------------------------------------------------------------------

export function keyRequestBody(chainId, senderUser, senderDevice) {
  return utf8Encode(canonicalJson({ v: 1, alg: KEYREQ_ALG, chain: chainId, sender_user: senderUser, sender_device: senderDevice }));
}
