// Unpadded base64url (RFC 4648 §5), the encoding of every binary value in Yanzi.
// Decoding is strict like the node's (docs/protocol.md §2.1): no padding, no '+' or '/',
// no length ≡ 1 (mod 4), no non-zero trailing bits — so every value has one spelling.

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const LOOKUP = new Int16Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) LOOKUP[ALPHABET.charCodeAt(i)] = i;

/** @param {Uint8Array} bytes @returns {string} */
export function b64encode(bytes) {
  let out = '';
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63] + ALPHABET[(n >> 6) & 63] + ALPHABET[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63];
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63] + ALPHABET[(n >> 6) & 63];
  }
  return out;
}

/** Strict decode; throws TypeError with a reason on anything but the canonical spelling. */
export function b64decode(text, maxBytes = Infinity) {
  if (typeof text !== 'string') throw new TypeError('base64url value must be a string');
  if (text.length % 4 === 1) throw new TypeError('base64url length is impossible');
  const size = Math.floor((text.length * 3) / 4);
  if (size > maxBytes) throw new TypeError(`base64url value longer than ${maxBytes} bytes`);
  const out = new Uint8Array(size);
  let acc = 0;
  let bits = 0;
  let j = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    const v = code < 128 ? LOOKUP[code] : -1;
    if (v < 0) throw new TypeError('not unpadded base64url');
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[j++] = (acc >> bits) & 0xff;
    }
    acc &= (1 << bits) - 1;
  }
  if (acc !== 0) throw new TypeError('base64url has non-zero trailing bits');
  return out;
}
