// UTF-8 encoding and strict decoding, written out because WeChat mini-program base libraries
// do not all have TextEncoder/TextDecoder. Lone surrogates have no UTF-8 form: encoding one
// throws (the same rule canonical JSON applies), decoding refuses overlongs and surrogates.

/** @param {string} text @returns {Uint8Array} */
export function utf8Encode(text) {
  const out = [];
  for (let i = 0; i < text.length; i++) {
    let cp = text.charCodeAt(i);
    if (cp >= 0xd800 && cp <= 0xdbff) {
      const next = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
      if (next < 0xdc00 || next > 0xdfff) throw new TypeError('lone surrogate in string');
      cp = 0x10000 + ((cp - 0xd800) << 10) + (next - 0xdc00);
      i++;
    } else if (cp >= 0xdc00 && cp <= 0xdfff) {
      throw new TypeError('lone surrogate in string');
    }
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 63));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 63), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
  }
  return Uint8Array.from(out);
}

/** Strict UTF-8 decoding (RFC 3629): throws TypeError on any invalid sequence. */
export function utf8Decode(bytes) {
  let out = '';
  const chunk = [];
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let cp;
    let need;
    let min;
    if (b < 0x80) { cp = b; need = 0; min = 0; }
    else if (b >= 0xc2 && b <= 0xdf) { cp = b & 31; need = 1; min = 0x80; }
    else if (b >= 0xe0 && b <= 0xef) { cp = b & 15; need = 2; min = 0x800; }
    else if (b >= 0xf0 && b <= 0xf4) { cp = b & 7; need = 3; min = 0x10000; }
    else throw new TypeError('invalid UTF-8');
    if (i + need >= bytes.length + (need ? 0 : 1)) throw new TypeError('truncated UTF-8');
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if ((c & 0xc0) !== 0x80) throw new TypeError('invalid UTF-8');
      cp = (cp << 6) | (c & 63);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) throw new TypeError('invalid UTF-8');
    i += need + 1;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      chunk.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
    } else chunk.push(cp);
    if (chunk.length >= 8192) { out += String.fromCharCode.apply(null, chunk); chunk.length = 0; }
  }
  return out + String.fromCharCode.apply(null, chunk);
}
