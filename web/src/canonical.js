// Canonical JSON as in Matrix (appendix "Canonical JSON") and crdt/canonical.py: object keys
// sorted by Unicode *code point* at every level (not JavaScript's UTF-16 order, which differs for
// characters above U+FFFF against U+E000–U+FFFF), compact separators, non-ASCII written
// literally, integers only within ±(2^53−1) (-0 written 0), no floats, no lone surrogates,
// at most 32 nested arrays/objects. The string escapes are JSON.stringify's, which match
// Python's json with ensure_ascii=False (\b \f \n \r \t, other controls as lowercase \u00xx).

import { utf8Encode } from './utf8.js';

export const MAX_SAFE_INT = Number.MAX_SAFE_INTEGER; // 2^53 − 1
export const MAX_DEPTH = 32;

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?:[^\ud800-\udbff]|^)[\udc00-\udfff]/;

/** Compare two strings by Unicode code point (what Python's sorted() does for str). */
export function compareCodePoints(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // Only a surrogate (a code point above U+FFFF) against U+E000–U+FFFF sorts differently in
    // UTF-16; a surrogate against a surrogate compares the same in both orders.
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1;
    return x < y ? -1 : 1;
  }
  return a.length - b.length;
}

function checkString(text) {
  if (LONE_SURROGATE.test(text)) throw new TypeError('string contains a lone surrogate (not encodable as UTF-8)');
}

function encode(value, depth) {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'string':
      checkString(value);
      return JSON.stringify(value);
    case 'number':
      if (!Number.isInteger(value)) throw new TypeError('floats are not allowed in canonical JSON');
      if (Math.abs(value) > MAX_SAFE_INT) throw new TypeError(`integer ${value} outside ±(2^53−1)`);
      return value === 0 ? '0' : String(value);
    case 'bigint':
      if (value > BigInt(MAX_SAFE_INT) || value < -BigInt(MAX_SAFE_INT)) throw new TypeError(`integer ${value} outside ±(2^53−1)`);
      return String(value);
    case 'object': {
      if (depth >= MAX_DEPTH) throw new TypeError(`more than ${MAX_DEPTH} nested arrays/objects`);
      if (Array.isArray(value)) return '[' + value.map((v) => encode(v, depth + 1)).join(',') + ']';
      if (value instanceof Uint8Array) throw new TypeError('bytes are not JSON: base64url-encode them');
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) throw new TypeError('only plain objects are JSON objects');
      const keys = Object.keys(value).filter((k) => value[k] !== undefined);
      keys.forEach(checkString);
      keys.sort(compareCodePoints);
      return '{' + keys.map((k) => JSON.stringify(k) + ':' + encode(value[k], depth + 1)).join(',') + '}';
    }
    default:
      throw new TypeError(`a ${typeof value} is not JSON`);
  }
}

/** Canonical JSON text of `value`; throws TypeError for anything canonical JSON cannot hold. */
export function canonicalJson(value) {
  return encode(value, 0);
}

/** Canonical JSON as UTF-8 bytes: what is signed and hashed. */
export function canonicalBytes(value) {
  return utf8Encode(canonicalJson(value));
}

/** Parse JSON text from the network, refusing what the protocol refuses: floats, integers beyond
 * ±(2^53−1), and duplicate keys are not re-checked here (the node already refused them on
 * input, and JSON.parse cannot see them); callers validate shapes. */
export function parseJson(text) {
  return JSON.parse(text);
}
