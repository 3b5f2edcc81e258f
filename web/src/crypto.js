// The client's end-to-end encryption layer (docs/e2ee.md): the I/O side of src/e2ee.js.
//
// E2eeSession owns this device's chains (outbound, past, inbound), the replay book, the caches
// of decrypted bodies and signature verdicts, and the key requests in flight. It reaches the
// world only through its Client (submit an op, fetch the directory, persist, emit events).
//
// * Sending (`sealBody`): rotate the conversation's chain when §3 says so, share it with every
//   trusted device of every member (key_share ops, acknowledged before the first message that
//   uses the chain, so the share precedes it in total order), then encrypt at the next index.
// * Receiving (`processOp`, one op at a time on the client's work queue): check the op's device
//   signature against the directory, decrypt with the inbound chain, record the position in
//   the replay book; a body whose chain is unknown waits for its share, and after
//   `keyRequestDelayMs` a yz.keyreq.v1 asks the chain's owner for it.
// * Answering key requests: share the chain's start key with the requesting device if it is
//   trusted and its user was a member when the chain started and still is (§6).

import { b64decode, b64encode } from './base64url.js';
import * as e2ee from './e2ee.js';
import { YanziError } from './errors.js';
import { ConversationState } from './fold.js';
import { verifyContent } from './op.js';
import { utf8Decode, utf8Encode } from './utf8.js';

export class E2eeSession {
  constructor(client) {
    this.client = client;
    this.plain = new Map(); // op id -> {text, encrypted, error?}
    this.verified = new Map(); // op id -> boolean
    this.replays = new Set(); // op ids hidden as replays
    this.pendingChains = new Map(); // inbound chain key -> {conv, user, device, chain, firstMs, requestedMs, ops: Set}
    this.answered = new Set(); // key requests answered this session
    this.keyring = { out: {}, past: {}, in: {}, seen: {} }; // persisted by the client
    this.keyRequestTimer = null;
  }

  /** Forget what was read for another account (the keyring is reloaded by the client). */
  reset() {
    this.plain.clear();
    this.verified.clear();
    this.replays.clear();
    this.pendingChains.clear();
    this.answered.clear();
  }

  /** E2EE work for one op: verify its device signature, decrypt, read key shares. */
  async processOp(op) {
    if (this.client.closed) return;
    const { kind, conv } = op.content;
    if (kind === 'key_share') {
      if (this.client.e2ee) await this.onKeyShare(op);
      return;
    }
    await this.verify(op);
    this.decrypt(op);
    this.client.recheck(conv, op);
  }

  async verify(op) {
    if (this.verified.has(op.opId)) return this.verified.get(op.opId);
    const d = await this.signer(op);
    const ok = !!d && d.trusted;
    this.verified.set(op.opId, ok);
    return ok;
  }

  /** The directory record of the device that signed `op`, or null if its dsig does not verify.
   * A signature that fails with the pinned key refreshes the directory once: that is how a
   * changed key is found (and raises keyChanged). */
  async signer(op) {
    const { author, device } = op.content;
    const check = (d) => !!d && verifyContent(op.content, op.dsig, b64decode(d.ed25519));
    try {
      let d = await this.client.directory.device(author, device);
      if (check(d)) return d;
      // The node checks every dsig against the registered key, so a failure here means the
      // key changed since we pinned it (or the node lies): ask the directory now.
      await this.client.directory.refresh(author, { maxAgeMs: 0 });
      d = this.client.directory.get(author, device);
      return check(d) ? d : null;
    } catch (err) {
      this.client.emit('error', err);
      return null;
    }
  }

  inboundKey(user, device, conv, chain) {
    return [user, device, conv, chain].join('\u0000');
  }

  /** Decrypt (or read) one message/edit op body into the cache; null when the key is missing. */
  decrypt(op) {
    if (this.plain.has(op.opId)) return this.plain.get(op.opId);
    const { author, device, conv, body } = op.content;
    let bytes;
    try {
      bytes = b64decode(body);
    } catch {
      return this.cachePlain(op, { text: null, encrypted: false, error: 'malformed' });
    }
    const alg = e2ee.bodyAlg(bytes);
    if (alg === null) {
      let text = null;
      try {
        text = utf8Decode(bytes);
      } catch {
        /* binary: no text */
      }
      return this.cachePlain(op, { text, encrypted: false });
    }
    let sealed;
    try {
      sealed = e2ee.parseBody(bytes);
    } catch (err) {
      return this.cachePlain(op, { text: null, encrypted: true, error: err.reason ?? 'malformed' });
    }
    const key = this.inboundKey(author, device, conv, sealed.chain);
    const chain = this.keyring.in[key];
    if (!chain) {
      let p = this.pendingChains.get(key);
      if (!p) {
        p = { conv, user: author, device, chain: sealed.chain, firstMs: this.client.now(), requestedMs: null, ops: new Set() };
        this.pendingChains.set(key, p);
      }
      p.ops.add(op.opId);
      this.scheduleKeyRequests();
      return null;
    }
    let text;
    try {
      const { app } = e2ee.decrypt(conv, bytes, { conv, chain: sealed.chain, s: chain.s, ck: b64decode(chain.ck) });
      text = utf8Decode(app);
    } catch (err) {
      return this.cachePlain(op, { text: null, encrypted: true, error: err.reason ?? 'malformed' });
    }
    // Replays (docs/e2ee.md §7): one (sender device, chain, index) decrypts for one op id only.
    const seenKey = [author, device, sealed.chain, sealed.i].join('\u0000');
    const first = this.keyring.seen[seenKey];
    if (first && first !== op.opId) {
      this.replays.add(op.opId);
      this.client.emit('replay', { conv, opId: op.opId, original: first, user: author, device });
      return this.cachePlain(op, { text: null, encrypted: true, error: 'replay' });
    }
    if (!first) {
      this.keyring.seen[seenKey] = op.opId;
      this.client.markDirty('e2ee');
    }
    return this.cachePlain(op, { text, encrypted: true });
  }

  cachePlain(op, value) {
    this.plain.set(op.opId, value);
    return value;
  }

  async onKeyShare(op) {
    const { author, device, conv } = op.content;
    let body;
    try {
      body = e2ee.parseKeyShare(b64decode(op.content.body));
    } catch {
      return; // not a v1 key_share body: nothing for us
    }
    const me = { user: this.client.session.user, device: this.client.keys.device };
    if (body.alg === e2ee.KEYREQ_ALG) {
      if (body.sender_user === me.user && body.sender_device === me.device) await this.answerKeyRequest(op, body);
      return;
    }
    if (!body.shares.some((s) => s.user === me.user && s.device === me.device)) return;
    if (author === me.user && device === me.device) return; // our own share: we hold the chain
    const d = await this.signer(op);
    if (!d) {
      this.client.emit('error', new YanziError('bad_key_share', `key share ${op.opId} from ${author}/${device} is not signed by a known device key`));
      return;
    }
    let opened;
    try {
      opened = e2ee.openShare(body, op.content, me, b64decode(d.x25519), b64decode(this.client.keys.box.sk));
    } catch (err) {
      this.client.emit('error', new YanziError('bad_key_share', err.message));
      return;
    }
    const key = this.inboundKey(author, device, conv, opened.chain);
    const have = this.keyring.in[key];
    if (!have || opened.start < have.s) {
      this.keyring.in[key] = { s: opened.start, ck: b64encode(opened.ck) };
      this.client.markDirty('e2ee');
    }
    const waiting = this.pendingChains.get(key);
    if (waiting) {
      this.pendingChains.delete(key);
      const log = this.client.logs.get(conv);
      for (const id of waiting.ops) {
        const pendingOp = log?.get(id);
        if (!pendingOp) continue;
        this.decrypt(pendingOp);
        this.client.recheck(conv, pendingOp);
      }
    }
  }

  scheduleKeyRequests() {
    if (!this.client.e2ee || this.keyRequestTimer || this.client.closed || this.pendingChains.size === 0) return;
    this.keyRequestTimer = this.client.timer(() => {
      this.keyRequestTimer = null;
      this.client.enqueue(() => this.sendKeyRequests());
    }, this.client.options.keyRequestDelayMs);
  }

  /** docs/e2ee.md §6: ask the sender device for chains held back longer than the delay. */
  async sendKeyRequests() {
    if (!this.client.ready || this.client.syncRunning) {
      this.scheduleKeyRequests();
      return;
    }
    const now = this.client.now();
    for (const p of this.pendingChains.values()) {
      if (now - p.firstMs < this.client.options.keyRequestDelayMs) continue;
      if (p.requestedMs !== null && now - p.requestedMs < this.client.options.keyRequestRetryMs) continue;
      p.requestedMs = now;
      const body = e2ee.keyRequestBody(p.chain, p.user, p.device);
      await this.client.submit({ conv: p.conv, kind: 'key_share', body: b64encode(body) }).catch((err) => this.client.emit('error', err));
    }
    if (this.pendingChains.size) {
      this.keyRequestTimer = this.client.timer(() => {
        this.keyRequestTimer = null;
        this.client.enqueue(() => this.sendKeyRequests());
      }, this.client.options.keyRequestRetryMs);
    }
  }

  async answerKeyRequest(op, body) {
    const { author, device, conv } = op.content;
    const chain = this.keyring.out[conv]?.chain === body.chain ? this.keyring.out[conv] : this.keyring.past[body.chain];
    if (!chain || chain.conv !== conv) return;
    const tag = [body.chain, author, device].join('\u0000');
    if (this.answered.has(tag)) return;
    await this.client.ensureComplete(conv);
    // Only a user who was a member when the chain started and still is: a member added later
    // must not read what was said before (docs/e2ee.md §6).
    if (!(chain.members ?? []).includes(author) || !this.client.logs.get(conv)?.state.members.has(author)) return;
    const d = await this.signer(op);
    if (!d || !d.trusted) return; // §2: no chain keys for an untrusted device
    this.answered.add(tag);
    await this.shareChain(conv, chain, [{ user: author, device, x25519: d.x25519 }], { start: 0, ck: chain.ck0 });
  }

  /** The body for a message or edit: an encrypted envelope (E2EE) or the UTF-8 text. */
  async sealBody(conv, text) {
    const bytes = utf8Encode(String(text));
    if (!this.client.e2ee) return b64encode(bytes);
    const chain = await this.outboundChain(conv);
    await this.client.entropy();
    const body = e2ee.sealWithChain(chain, conv, bytes);
    await this.client.persistNow('e2ee'); // never reuse an index after a crash
    return b64encode(body);
  }

  /** The chain to send with in `conv`: rotated when due, shared with every trusted member device. */
  async outboundChain(conv) {
    await this.client.ensureComplete(conv);
    const state = this.client.logs.get(conv)?.state ?? new ConversationState();
    if (state.type === null) throw new YanziError('not_found', `conversation ${conv} is not known here`);
    let chain = this.keyring.out[conv];
    const me = this.client.session.user;
    const myDevice = this.client.keys.device;
    if (e2ee.needsRotation(chain, { nowMs: this.client.now(), epoch: state.membershipEpoch })) {
      await this.client.entropy();
      if (chain) this.keyring.past[chain.chain] = { conv, chain: chain.chain, ck0: chain.ck0, members: chain.members ?? [] };
      chain = e2ee.newOutboundChain(conv, this.client.now(), state.membershipEpoch, [...state.members.keys()]);
      this.keyring.out[conv] = chain;
      this.keyring.in[this.inboundKey(me, myDevice, conv, chain.chain)] = { s: 0, ck: chain.ck0 };
      await this.client.persistNow('e2ee');
    }
    const recipients = [];
    for (const user of state.members.keys()) {
      try {
        await this.client.directory.refresh(user, { maxAgeMs: this.client.options.deviceRefreshMs });
      } catch (err) {
        this.client.emit('error', err);
      }
      for (const d of this.client.directory.trustedDevices(user)) {
        if (user === me && d.device === myDevice) continue;
        if (!chain.sharedWith.includes(user + '\u0000' + d.device)) recipients.push(d);
      }
    }
    if (recipients.length) await this.shareChain(conv, chain, recipients, { start: chain.index, ck: chain.ck });
    return chain;
  }

  /** Send key_share op(s) for `chain` to `recipients` (acknowledged before returning). */
  async shareChain(conv, chain, recipients, { start, ck }) {
    await this.client.entropy(24 * recipients.length + 1024);
    const bodies = e2ee.sealShares({
      conv, chainId: chain.chain, start, ck: b64decode(ck), senderUser: this.client.session.user, senderDevice: this.client.keys.device,
      recipients, boxSecretKey: b64decode(this.client.keys.box.sk),
    });
    for (const body of bodies) await this.client.submit({ conv, kind: 'key_share', body: b64encode(body) });
    if (this.keyring.out[conv] === chain) {
      for (const r of recipients) {
        const tag = r.user + '\u0000' + r.device;
        if (!chain.sharedWith.includes(tag)) chain.sharedWith.push(tag);
      }
      this.client.markDirty('e2ee');
    }
  }

  /** Read a body from the node's materialised view (no op, so no signature): the node names
   * the message's device, not an editor's, so the chain is looked up by id. */
  decryptServerBody(conv, author, bodyB64) {
    const bytes = b64decode(bodyB64);
    if (e2ee.bodyAlg(bytes) === null) return { text: utf8Decode(bytes), encrypted: false };
    const sealed = e2ee.parseBody(bytes);
    const suffix = '\u0000' + conv + '\u0000' + sealed.chain;
    for (const [key, chain] of Object.entries(this.keyring.in)) {
      if (key.startsWith(author + '\u0000') && key.endsWith(suffix)) {
        const inbound = { conv, chain: sealed.chain, s: chain.s, ck: b64decode(chain.ck) };
        return { text: utf8Decode(e2ee.decrypt(conv, bytes, inbound).app), encrypted: true };
      }
    }
    return { text: null, encrypted: true };
  }
}
