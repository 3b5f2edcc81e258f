// The local view of one conversation (docs/crdt.md §5–6, docs/protocol.md §11 option B): a
// grow-only set of ops by id, parking of ops whose targets are missing, and a left fold of the
// ready ops in total order with authorization evaluated at each op's position. A port of
// crdt/log.py and crdt/state.py; `viewJson()` produces the same JSON as Python's
// ConversationView.to_json(), which the tests compare byte for byte on shared fixtures.

import { compareCodePoints } from './canonical.js';
import { compareOps, orderKey, compareKeys } from './op.js';

const DEPENDENT = new Set(['edit', 'delete', 'react', 'unreact']);
export const RANK = { member: 1, admin: 2, owner: 3 };
const MAX_REACTION_KEY = 64;

/** The op ids that must be present (and ready) before `op` joins the fold. */
export function dependencies(op) {
  const { kind, target, attrs } = op.content;
  if (!DEPENDENT.has(kind)) return [];
  const deps = [target];
  if (kind === 'unreact' && Array.isArray(attrs.removes)) deps.push(...attrs.removes);
  return deps;
}

const byCodePoint = (a, b) => compareCodePoints(a, b);

const MAX_CMID = 64;
// (author, device, attrs.cmid): a retry of an op already applied is hidden (docs/crdt.md)
const cmidKey = (content, cmid) => `${content.author}\u0000${content.device}\u0000${cmid}`;

export class ConversationState {
  constructor() {
    this.type = null; // 'direct' | 'group' | null
    this.members = new Map(); // user -> role
    this.settings = {};
    this.messages = new Map(); // message op id -> MessageState, in total order (insertion)
    this.hidden = new Set();
    this.lastOp = null;
    this.reacts = new Map(); // react op id -> [message op id, key]
    this.cmids = new Map(); // author NUL device NUL attrs.cmid -> the visible op that used it first
    /** op id of the last visible membership op (create, member_add, member_remove): E2EE rotates
     * an outbound chain whenever this changes (docs/e2ee.md §3). */
    this.membershipEpoch = null;
  }

  rank(user) {
    return RANK[this.members.get(user)] ?? 0;
  }

  fold(op) {
    this.lastOp = op;
    if (this.refusal(op.content) !== null) {
      this.hidden.add(op.opId);
      return false;
    }
    this.mutate(op);
    const cmid = op.content.attrs?.cmid;
    if (typeof cmid === 'string') this.cmids.set(cmidKey(op.content, cmid), op.opId);
    return true;
  }

  /** Why `content`, placed at the end of the order, would be hidden; null if it counts. */
  refusal(content) {
    const { kind, author, attrs } = content;
    if (attrs && Object.hasOwn(attrs, 'cmid')) {
      const cmid = attrs.cmid;
      if (typeof cmid !== 'string' || cmid.length === 0 || [...cmid].length > MAX_CMID) return `attrs.cmid must be a string of 1-${MAX_CMID} chars`;
      if (this.cmids.has(cmidKey(content, cmid))) return 'a retry of an op already applied (same cmid)';
    }
    if (kind === 'create') return this.createRefusal(content);
    if (this.type === null) return 'the conversation does not exist yet';
    if (!this.members.has(author)) return 'the author is not a member';
    if (kind === 'message' || kind === 'key_share') return null;
    if (DEPENDENT.has(kind)) {
      const target = this.messages.get(content.target);
      if (!target) return 'the target is not a visible message';
      if (target.deletedBy !== null) return 'the target message is deleted';
      if (kind === 'edit' && target.op.content.author !== author) return 'only the author may edit a message';
      if (kind === 'delete' && target.op.content.author !== author && this.rank(author) < RANK.admin) {
        return 'only the author or an admin may delete a message';
      }
      if (kind === 'react') {
        const key = attrs.key;
        if (typeof key !== 'string' || key.length === 0 || key.length > MAX_REACTION_KEY) {
          return `a reaction needs attrs.key of 1-${MAX_REACTION_KEY} chars`;
        }
      }
      if (kind === 'unreact' && this.ownReacts(content, target).length === 0) {
        return "attrs.removes names none of the author's reactions on the target";
      }
      return null;
    }
    if (kind === 'settings') {
      if (this.type === 'group' && this.rank(author) < RANK.admin) return 'only admins and owners change group settings';
      return null;
    }
    return this.membershipRefusal(content);
  }

  createRefusal(content) {
    if (this.type !== null) return 'the conversation already exists';
    const others = content.attrs.members ?? [];
    if (!Array.isArray(others)) return 'attrs.members must be a list of user ids';
    if (content.attrs.type === 'direct') {
      if (others.length !== 1 || others[0] === content.author) return 'a direct conversation names exactly one other member';
      return null;
    }
    if (content.attrs.type === 'group') return null;
    return 'attrs.type must be "direct" or "group"';
  }

  ownReacts(content, target) {
    const removes = content.attrs.removes;
    if (!Array.isArray(removes)) return [];
    const own = [];
    for (const reactId of removes) {
      if (own.includes(reactId)) continue;
      const found = this.reacts.get(reactId);
      if (!found || found[0] !== target.op.opId) continue;
      if (target.reactions.get(found[1])?.get(reactId) === content.author) own.push(reactId);
    }
    return own;
  }

  membershipRefusal(content) {
    if (this.type !== 'group') return 'membership of a direct conversation cannot change';
    const { author, target, kind, attrs } = content;
    const authorRank = this.rank(author);
    const targetRank = this.rank(target);
    const role = attrs.role ?? 'member';
    if (kind === 'member_add') {
      if (targetRank) return 'the user is already a member';
      if (typeof role !== 'string' || !(role in RANK)) return 'attrs.role must be owner, admin or member';
      if (authorRank < RANK.admin || RANK[role] > authorRank) return 'only admins add members, and nobody grants a role above their own';
      return null;
    }
    if (kind === 'member_remove') {
      if (!targetRank) return 'the user is not a member';
      if (target !== author && !(authorRank >= RANK.admin && authorRank > targetRank)) {
        return 'you may remove yourself, or members of lower rank if you are an admin';
      }
      return null;
    }
    if (kind === 'member_role') {
      if (!targetRank || target === author) return 'the target must be another member';
      if (typeof attrs.role !== 'string' || !(attrs.role in RANK)) return 'attrs.role must be owner, admin or member';
      if (authorRank < RANK.owner) return 'only owners change roles';
      return null;
    }
    return `unknown op kind ${kind}`;
  }

  mutate(op) {
    const { kind, author, attrs, target } = op.content;
    switch (kind) {
      case 'create': {
        const others = (attrs.members ?? []).filter((u) => typeof u === 'string');
        if (attrs.type === 'direct') {
          this.type = 'direct';
          this.members = new Map([[author, 'member'], [others[0], 'member']]);
        } else {
          this.type = 'group';
          this.members = new Map([[author, 'owner']]);
          for (const u of others) if (u !== author) this.members.set(u, 'member');
        }
        if (typeof attrs.title === 'string') this.settings.title = attrs.title;
        this.membershipEpoch = op.opId;
        break;
      }
      case 'message':
        this.messages.set(op.opId, {
          op, body: op.content.body, bodyOp: op, editedBy: null, deletedBy: null, reactions: new Map(),
        });
        break;
      case 'edit': {
        const m = this.messages.get(target);
        m.body = op.content.body;
        m.bodyOp = op;
        m.editedBy = op.opId;
        break;
      }
      case 'delete': {
        const m = this.messages.get(target);
        m.body = '';
        m.deletedBy = op.opId;
        for (const adds of m.reactions.values()) for (const reactId of adds.keys()) this.reacts.delete(reactId);
        m.reactions = new Map();
        break;
      }
      case 'react': {
        const m = this.messages.get(target);
        const key = String(attrs.key);
        if (!m.reactions.has(key)) m.reactions.set(key, new Map());
        m.reactions.get(key).set(op.opId, author);
        this.reacts.set(op.opId, [m.op.opId, key]);
        break;
      }
      case 'unreact': {
        const m = this.messages.get(target);
        for (const reactId of this.ownReacts(op.content, m)) {
          const key = this.reacts.get(reactId)[1];
          this.reacts.delete(reactId);
          const adds = m.reactions.get(key);
          adds.delete(reactId);
          if (adds.size === 0) m.reactions.delete(key);
        }
        break;
      }
      case 'settings':
        for (const [k, v] of Object.entries(attrs)) if (k !== 'cmid') this.settings[k] = v;
        break;
      case 'member_add':
        this.members.set(target, String(attrs.role ?? 'member'));
        this.membershipEpoch = op.opId;
        break;
      case 'member_remove':
        this.members.delete(target);
        this.membershipEpoch = op.opId;
        break;
      case 'member_role':
        this.members.set(target, String(attrs.role));
        break;
      default:
        break; // key_share: no effect on the view (the E2EE layer reads it from the op stream)
    }
  }

  /** {key: [users, sorted, unique]} */
  static reactionSummary(m) {
    const out = {};
    for (const [key, adds] of m.reactions) {
      const users = [...new Set(adds.values())].sort(byCodePoint);
      if (users.length) out[key] = users;
    }
    return out;
  }

  /** Visible, undeleted messages by others after `marker` ([l, c, origin, op id] or null). */
  unreadCount(user, marker) {
    let n = 0;
    for (const m of this.messages.values()) {
      if (marker && compareKeys(orderKey(m.op), marker) <= 0) continue;
      if (m.op.content.author !== user && m.deletedBy === null) n++;
    }
    return n;
  }
}

/** One conversation's op set: apply (idempotent, parking), and the lazily rebuilt fold. */
export class MessageLog {
  constructor(conv) {
    this.conv = conv;
    this.ops = new Map(); // op id -> op
    this.byDot = new Map(); // "origin\u0000seq" -> op id
    this.parked = new Set();
    this.waiting = new Map(); // missing dep -> Set of parked op ids
    this._state = new ConversationState();
    this.dirty = false;
  }

  get size() {
    return this.ops.size;
  }

  has(opId) {
    return this.ops.has(opId);
  }

  get(opId) {
    return this.ops.get(opId);
  }

  /** Returns 'new', 'parked', 'duplicate' or 'equivocation' (another op on this dot: dropped). */
  apply(op) {
    if (op.content.conv !== this.conv) throw new Error(`op of ${op.content.conv} applied to ${this.conv}`);
    if (this.ops.has(op.opId)) return 'duplicate';
    const dotKey = op.dot[0] + '\u0000' + op.dot[1];
    if (this.byDot.has(dotKey)) return 'equivocation';
    this.ops.set(op.opId, op);
    this.byDot.set(dotKey, op.opId);
    const missing = dependencies(op).filter((d) => !this.ops.has(d) || this.parked.has(d));
    if (missing.length) {
      this.parked.add(op.opId);
      for (const dep of missing) {
        if (!this.waiting.has(dep)) this.waiting.set(dep, new Set());
        this.waiting.get(dep).add(op.opId);
      }
      return 'parked';
    }
    this.ready([op, ...this.release(op.opId)]);
    return 'new';
  }

  release(opId) {
    const released = [];
    const stack = [opId];
    while (stack.length) {
      const waiters = [...(this.waiting.get(stack.at(-1)) ?? [])].sort(byCodePoint);
      this.waiting.delete(stack.pop());
      for (const waiter of waiters) {
        if (!this.parked.has(waiter)) continue;
        const op = this.ops.get(waiter);
        if (dependencies(op).some((d) => !this.ops.has(d) || this.parked.has(d))) continue;
        this.parked.delete(waiter);
        released.push(op);
        stack.push(waiter);
      }
    }
    return released;
  }

  ready(ops) {
    if (this.dirty) return;
    ops.sort(compareOps);
    const last = this._state.lastOp;
    if (last && compareOps(ops[0], last) < 0) {
      this.dirty = true;
      return;
    }
    for (const op of ops) this._state.fold(op);
  }

  /** The materialised state (rebuilt if an op arrived out of order). */
  get state() {
    if (this.dirty) {
      const state = new ConversationState();
      const ready = [...this.ops.values()].filter((op) => !this.parked.has(op.opId)).sort(compareOps);
      for (const op of ready) state.fold(op);
      this._state = state;
      this.dirty = false;
    }
    return this._state;
  }

  /** Every op, parked included, in total order. */
  sortedOps() {
    return [...this.ops.values()].sort(compareOps);
  }

  /** The same JSON as Python's ConversationView.to_json() (compare its canonical bytes). */
  viewJson() {
    const s = this.state;
    const members = {};
    for (const [u, r] of s.members) members[u] = r;
    return {
      type: s.type,
      members,
      settings: { ...s.settings },
      messages: [...s.messages.values()].map((m) => ({
        op_id: m.op.opId,
        author: m.op.content.author,
        device: m.op.content.device,
        hlc: m.op.hlc,
        dot: m.op.dot,
        body: m.body,
        attrs: m.op.content.attrs,
        edited_by: m.editedBy,
        deleted_by: m.deletedBy,
        reactions: ConversationState.reactionSummary(m),
      })),
      hidden: [...s.hidden].sort(byCodePoint),
      parked: [...this.parked].sort(byCodePoint),
    };
  }
}
