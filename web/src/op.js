// Ops on the wire (docs/protocol.md §5, docs/crdt.md §2–3): validation of what the node sends,
// the op id (SHA-256 of the canonical header, signatures excluded), the device signature
// (Ed25519 over the canonical content) and the total order (hlc.l, hlc.c, origin, op id).

import nacl from './nacl.js';
import { b64decode, b64encode } from './base64url.js';
import { canonicalBytes, compareCodePoints } from './canonical.js';
import { sha256 } from './sha256.js';
import { utf8Encode } from './utf8.js';

export const OP_KINDS = new Set([
  'create', 'message', 'edit', 'delete', 'react', 'unreact',
  'member_add', 'member_remove', 'member_role', 'key_share', 'settings',
]);
const ID_RE = /^[A-Za-z0-9._:@=+/-]{1,128}$/;
const MAX_SEQ = Number.MAX_SAFE_INTEGER;

export class OpError extends Error {
  constructor(message) {
    super(message);
    this.name = 'OpError';
  }
}

function check(cond, message) {
  if (!cond) throw new OpError(message);
}

const isId = (v) => typeof v === 'string' && ID_RE.test(v);
const isInt = (v, lo, hi) => Number.isInteger(v) && v >= lo && v <= hi;

/**
 * Validate a wire op (from an `op` frame or a sync page) and return it frozen with its op id:
 * {content, hlc, dot, dsig, nsig, opId}. Throws OpError on anything malformed.
 */
export function decodeOp(raw) {
  check(raw && typeof raw === 'object' && !Array.isArray(raw), 'an op must be an object');
  const { content, hlc, dot } = raw;
  check(content && typeof content === 'object' && !Array.isArray(content), 'op.content must be an object');
  check(content.v === 1, 'op.content.v must be 1');
  check(isId(content.conv), 'op.content.conv is not an id');
  check(OP_KINDS.has(content.kind), `unknown op kind ${content.kind}`);
  check(isId(content.author) && isId(content.device), 'op author/device is not an id');
  check(content.target === '' || isId(content.target), 'op.content.target is not an id');
  check(content.attrs && typeof content.attrs === 'object' && !Array.isArray(content.attrs), 'op attrs must be an object');
  check(typeof content.body === 'string', 'op body must be base64url text');
  check(Array.isArray(hlc) && hlc.length === 2 && isInt(hlc[0], 0, MAX_SEQ) && isInt(hlc[1], 0, 2 ** 31 - 1), 'op.hlc must be [l, c]');
  check(Array.isArray(dot) && dot.length === 2 && isId(dot[0]) && isInt(dot[1], 1, MAX_SEQ), 'op.dot must be [origin, seq]');
  const dsig = raw.dsig ?? '';
  const nsig = raw.nsig ?? '';
  check(typeof dsig === 'string' && typeof nsig === 'string', 'op signatures must be strings');
  const op = { content, hlc, dot, dsig, nsig, opId: computeOpId({ content, hlc, dot }) };
  return Object.freeze(op);
}

/** base64url(SHA-256(canonical({content, hlc, dot}))) — docs/protocol.md §5.2. */
export function computeOpId({ content, hlc, dot }) {
  return b64encode(sha256(canonicalBytes({ content, hlc, dot })));
}

/** The content object the node builds from a send frame and the session (§5.3). */
export function buildContent({ conv, kind, author, device, target = '', attrs = {}, body = '' }) {
  return { v: 1, conv, kind, author, device, target, attrs, body };
}

/** Ed25519 device signature over canonical(content), base64url. */
export function signContent(content, secretKey) {
  return b64encode(nacl.sign.detached(canonicalBytes(content), secretKey));
}

/** Verify an op's dsig with a device's Ed25519 public key (32 bytes). */
export function verifyContent(content, dsig, publicKey) {
  if (!dsig) return false;
  let sig;
  try {
    sig = b64decode(dsig, 64);
  } catch {
    return false;
  }
  if (sig.length !== 64) return false;
  return nacl.sign.detached.verify(canonicalBytes(content), sig, publicKey);
}

/** Verify the origin node's nsig over the envelope (header + dsig); the node id is its key. */
export function verifyNodeSignature(op) {
  try {
    const key = b64decode(op.dot[0], 32);
    const sig = b64decode(op.nsig, 64);
    if (key.length !== 32 || sig.length !== 64) return false;
    const envelope = canonicalBytes({ content: op.content, hlc: op.hlc, dot: op.dot, dsig: op.dsig });
    return nacl.sign.detached.verify(envelope, sig, key);
  } catch {
    return false;
  }
}

/** Total order of a conversation's ops (docs/crdt.md §4). */
export function compareOps(a, b) {
  return (
    a.hlc[0] - b.hlc[0] ||
    a.hlc[1] - b.hlc[1] ||
    compareCodePoints(a.dot[0], b.dot[0]) ||
    compareCodePoints(a.opId, b.opId)
  );
}

/** The order key [l, c, origin, op id] (the read-marker form). */
export const orderKey = (op) => [op.hlc[0], op.hlc[1], op.dot[0], op.opId];

export function compareKeys(a, b) {
  return a[0] - b[0] || a[1] - b[1] || compareCodePoints(a[2], b[2]) || compareCodePoints(a[3], b[3]);
}

/** direct_id(a, b) = "d_" + b64(SHA-256(min + "\0" + max)[0:18]) — docs/protocol.md §6.3. */
export function directConvId(a, b) {
  const [lo, hi] = compareCodePoints(a, b) <= 0 ? [a, b] : [b, a];
  return 'd_' + b64encode(sha256(utf8Encode(lo + '\u0000' + hi)).subarray(0, 18));
}
