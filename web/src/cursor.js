// The portable cursor (docs/protocol.md §9, docs/crdt.md §7–8): per conversation and origin the
// highest contiguous seq held, plus the seqs held beyond a gap. Pure: the client owns storage.
//
// Encoded as unpadded base64url of canonical JSON {"v": 1, "vv": {conv: {origin: seq}}}.

import { b64decode, b64encode } from './base64url.js';
import { canonicalJson } from './canonical.js';
import { utf8Decode, utf8Encode } from './utf8.js';

/** Encode a cursor map; zero seqs are dropped (the node's normal form). */
export function encodeCursor(cursor) {
  const vv = {};
  for (const [conv, entry] of Object.entries(cursor)) {
    const out = {};
    for (const [origin, seq] of Object.entries(entry)) if (seq > 0) out[origin] = seq;
    vv[conv] = out;
  }
  if (Object.keys(vv).length === 0) return '';
  return b64encode(utf8Encode(canonicalJson({ v: 1, vv })));
}

export function decodeCursor(text) {
  if (text === '') return {};
  const value = JSON.parse(utf8Decode(b64decode(text)));
  if (!value || value.v !== 1 || typeof value.vv !== 'object' || value.vv === null) {
    throw new TypeError('cursor must be {"v": 1, "vv": {...}}');
  }
  const cursor = {};
  for (const [conv, entry] of Object.entries(value.vv)) {
    cursor[conv] = {};
    for (const [origin, seq] of Object.entries(entry)) {
      if (!Number.isInteger(seq) || seq < 0) throw new TypeError('cursor seqs must be integers >= 0');
      if (seq > 0) cursor[conv][origin] = seq;
    }
  }
  return cursor;
}

/**
 * What the client holds, per conversation and origin: the contiguous prefix (the cursor) and the
 * seqs beyond a gap. `add(conv, origin, seq)` says whether that dot was new, whether the cursor
 * moved, and whether the conversation now has a gap (so the caller runs an HTTP catch-up).
 */
export class CursorState {
  constructor(cursor = {}) {
    /** @type {Record<string, Record<string, number>>} */
    this.cursor = {};
    for (const [conv, entry] of Object.entries(cursor)) this.cursor[conv] = { ...entry };
    /** conv -> origin -> Set of seqs held beyond the contiguous prefix */
    this.extra = new Map();
    /** conv -> JSON of the prefix at which a catch-up already failed to close the gap */
    this.holeTried = new Map();
  }

  has(conv, origin, seq) {
    if (seq <= (this.cursor[conv]?.[origin] ?? 0)) return true;
    return this.extra.get(conv)?.get(origin)?.has(seq) ?? false;
  }

  add(conv, origin, seq) {
    if (this.has(conv, origin, seq)) return { new: false, moved: false, gap: this.untriedGap(conv) };
    const entry = (this.cursor[conv] ??= {});
    const have = entry[origin] ?? 0;
    let moved = false;
    let extras = this.extra.get(conv);
    if (seq === have + 1) {
      let top = seq;
      const held = extras?.get(origin);
      while (held?.has(top + 1)) held.delete(++top);
      if (held && held.size === 0) extras.delete(origin);
      entry[origin] = top;
      moved = true;
    } else {
      if (!extras) this.extra.set(conv, (extras = new Map()));
      if (!extras.has(origin)) extras.set(origin, new Set());
      extras.get(origin).add(seq);
    }
    if (extras && extras.size === 0) this.extra.delete(conv);
    return { new: true, moved, gap: this.untriedGap(conv) };
  }

  hasGaps(conv) {
    return (this.extra.get(conv)?.size ?? 0) > 0;
  }

  untriedGap(conv) {
    return this.hasGaps(conv) && this.holeTried.get(conv) !== JSON.stringify(this.cursor[conv] ?? {});
  }

  /** A catch-up ended: gaps still open are ones the node cannot fill now (protocol §9.3). */
  noteCaughtUp() {
    this.holeTried.clear();
    for (const conv of this.extra.keys()) this.holeTried.set(conv, JSON.stringify(this.cursor[conv] ?? {}));
  }

  /** Raise entries to a cursor the node returned (never lowers; protocol §10 step 4). */
  merge(cursor) {
    let moved = false;
    for (const [conv, entry] of Object.entries(cursor)) {
      for (const [origin, seq] of Object.entries(entry)) {
        const mine = (this.cursor[conv] ??= {});
        if (seq > (mine[origin] ?? 0)) {
          mine[origin] = seq;
          moved = true;
          const held = this.extra.get(conv)?.get(origin);
          if (held) {
            for (const s of [...held]) if (s <= seq) held.delete(s);
            let top = seq;
            while (held.has(top + 1)) held.delete(++top);
            mine[origin] = top;
            if (held.size === 0) this.extra.get(conv).delete(origin);
            if (this.extra.get(conv).size === 0) this.extra.delete(conv);
          }
        }
      }
    }
    return moved;
  }

  encoded({ without } = {}) {
    const copy = {};
    for (const [conv, entry] of Object.entries(this.cursor)) if (conv !== without) copy[conv] = entry;
    return encodeCursor(copy);
  }

  snapshot() {
    const copy = {};
    for (const [conv, entry] of Object.entries(this.cursor)) copy[conv] = { ...entry };
    return copy;
  }
}
