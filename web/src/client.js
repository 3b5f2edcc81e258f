// The Yanzi client: accounts, the live socket, exact catch-up, the local view and E2EE.
//
// Connection model (docs/protocol.md §10): the WebSocket carries live traffic; its first frame
// is `auth`; after `ready` the client resends unacknowledged sends (same cmid), then pulls the
// gap over HTTP (`POST /v1/sync` from the cursor until `more` is false). Because `ready` comes
// before the first sync request, every op is live, in a sync page, or both; the overlap is
// removed by op id. A live op beyond a gap triggers another catch-up. On a drop the client
// reconnects with exponential backoff and full jitter. The cursor advances contiguously per
// origin and is persisted in `storage`.
//
// Timers and in-flight work are owned: close() clears every timer, rejects pending sends and
// waits for the E2EE work queue, so nothing outlives the client.

import nacl from './nacl.js';
import { b64decode, b64encode } from './base64url.js';
import { CursorState } from './cursor.js';
import { E2eeSession } from './crypto.js';
import { Directory } from './directory.js';
import * as e2ee from './e2ee.js';
import { RETRYABLE_CODES, YanziError, YanziTimeout } from './errors.js';
import { ConversationState, MessageLog } from './fold.js';
import { buildContent, decodeOp, directConvId, OpError, orderKey, signContent } from './op.js';
import { BrowserTransport } from './transport.js';

const FATAL_CLOSE = new Set([4001, 4009, 4011]); // auth failed, too many errors, logout_all
const DEFAULTS = {
  backoffBaseMs: 500,
  backoffMaxMs: 30000,
  readyTimeoutMs: 10000,
  requestTimeoutMs: 15000,
  sendTimeoutMs: 30000,
  pingIntervalMs: 25000,
  pongTimeoutMs: 10000,
  syncPage: 500,
  deviceRefreshMs: 30000,
  keyRequestDelayMs: 3000,
  keyRequestRetryMs: 30000,
  persistDelayMs: 50,
  storagePrefix: 'yanzi:',
};

const randomId = (n) => b64encode(nacl.randomBytes(n));
const sortedUnique = (xs) => [...new Set(xs)].sort();

export class Client {
  /**
   * @param {object} o
   * @param {string} o.baseUrl e.g. "https://chat.example.com" (the node, or a TLS proxy in front)
   * @param {{get(key: string): any, set(key: string, value: string): any}} o.storage
   * @param {object} [o.transport] defaults to a BrowserTransport
   * @param {boolean} [o.e2ee] encrypt message bodies (docs/e2ee.md); default true
   */
  constructor({ baseUrl, storage, transport, e2ee: encrypt = true, deviceName = '', now = () => Date.now(), random = Math.random, ...options } = {}) {
    if (!baseUrl) throw new TypeError('Client needs baseUrl');
    if (!storage || typeof storage.get !== 'function' || typeof storage.set !== 'function') {
      throw new TypeError('Client needs storage with get(key) and set(key, value)');
    }
    this.baseUrl = String(baseUrl).replace(/\/+$/, '');
    this.storage = storage;
    this.transport = transport ?? new BrowserTransport();
    this.e2ee = encrypt;
    this.deviceName = deviceName;
    this.now = now;
    this.random = random;
    this.options = { ...DEFAULTS, ...options };
    this.prefix = this.options.storagePrefix;

    this.listeners = new Map();
    this.session = null; // {user, device, token, expiresMs, node}
    this.keys = null; // {device, sign: {pk, sk}, box: {pk, sk}}
    this.cursor = new CursorState();
    this.logs = new Map(); // conv -> MessageLog
    this.complete = new Set(); // convs whose whole log this session holds
    this.backfilling = new Set();
    this.backfillChain = Promise.resolve();
    this.readMarkers = new Map(); // conv -> order key
    this.sendLocks = new Map(); // conv -> promise (E2EE sends are serialised per conversation)
    this.crypto = new E2eeSession(this);
    this.directory = null;

    this.sock = null; // {send, close, gen}
    this.gen = 0;
    this.ready = false;
    this.want = false;
    this.reconnecting = false;
    this.attempt = 0;
    this.timers = new Set();
    this.pingTimer = null;
    this.pongTimer = null;
    this.reqSeq = 0;
    this.pending = new Map(); // cmid -> {frame, resolve, reject, reqId, deadline}
    this.byReqId = new Map(); // frame id -> {cmid} | {resolve, reject}
    this.syncRunning = null;
    this.syncAgain = false;
    this.work = Promise.resolve();
    this.closed = false;
    this.dirtyKeys = new Set();
    this.persistTimer = null;
    this.loaded = this.load();
    this.loaded.catch(() => {});
  }

  // -- introspection ----------------------------------------------------------------------------

  get connected() {
    return this.ready;
  }

  get user() {
    return this.session?.user ?? null;
  }

  get device() {
    return this.keys?.device ?? null;
  }

  /** A copy of the cursor: {conv: {origin: highest contiguous seq}}. */
  get syncCursor() {
    return this.cursor.snapshot();
  }

  // -- events -----------------------------------------------------------------------------------

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    this.listeners.get(event)?.delete(fn);
    return this;
  }

  emit(event, data) {
    for (const fn of [...(this.listeners.get(event) ?? [])]) {
      try {
        fn(data);
      } catch (err) {
        if (event !== 'error') this.emit('error', err);
      }
    }
  }

  // -- storage ----------------------------------------------------------------------------------

  key(name) {
    return this.prefix + name;
  }

  async readJson(name) {
    const text = await this.storage.get(this.key(name));
    if (text === null || text === undefined || text === '') return null;
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  async writeJson(name, value) {
    await this.storage.set(this.key(name), JSON.stringify(value));
  }

  async load() {
    if (typeof this.transport.ready === 'function') await this.transport.ready();
    this.keys = await this.readJson('device');
    if (!this.keys) {
      // Generated once per storage and kept: the device id and both key pairs (docs/e2ee.md §1).
      this.keys = { device: 'web-' + randomId(6), ...e2ee.generateDeviceKeys() };
      await this.writeJson('device', this.keys);
    }
    this.session = await this.readJson('session');
    await this.loadAccount();
  }

  async loadAccount() {
    const user = this.session?.user;
    this.cursor = new CursorState(user ? (await this.readJson(`cursor:${user}`)) ?? {} : {});
    const keyring = user ? await this.readJson(`e2ee:${user}`) : null;
    this.crypto.keyring = { out: {}, past: {}, in: {}, seen: {}, ...(keyring ?? {}) };
    const dirState = user ? await this.readJson(`tofu:${user}`) : null;
    this.directory = new Directory({
      fetch: (u) => this.fetchDevices(u),
      emit: (event, data) => this.emit(event, data),
      save: () => this.markDirty('tofu'),
      now: this.now,
      state: dirState ?? {},
    });
    if (user) this.directory.pinSelf(user, this.keys.device, this.keys.sign.pk, this.keys.box.pk);
  }

  markDirty(what) {
    this.dirtyKeys.add(what);
    if (this.persistTimer === null && !this.closed) {
      this.persistTimer = this.timer(() => {
        this.persistTimer = null;
        this.persist().catch((err) => this.emit('error', err));
      }, this.options.persistDelayMs);
    }
  }

  async persist() {
    const user = this.session?.user;
    const dirty = [...this.dirtyKeys];
    this.dirtyKeys.clear();
    if (!user) return;
    for (const what of dirty) {
      if (what === 'cursor') await this.writeJson(`cursor:${user}`, this.cursor.snapshot());
      else if (what === 'e2ee') await this.writeJson(`e2ee:${user}`, this.crypto.keyring);
      else if (what === 'tofu') await this.writeJson(`tofu:${user}`, this.directory.toJSON());
    }
  }

  timer(fn, ms) {
    const handle = setTimeout(() => {
      this.timers.delete(handle);
      fn();
    }, ms);
    this.timers.add(handle);
    return handle;
  }

  clearTimer(handle) {
    if (handle !== null && handle !== undefined) {
      clearTimeout(handle);
      this.timers.delete(handle);
    }
  }

  // -- HTTP -------------------------------------------------------------------------------------

  async http(method, path, body, { auth = true } = {}) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (auth) headers.Authorization = `Bearer ${this.token()}`;
    const request = this.transport.request(method, this.baseUrl + path, headers, body === undefined ? undefined : JSON.stringify(body));
    let timeout;
    const timer = new Promise((_, reject) => {
      timeout = setTimeout(() => reject(new YanziTimeout(`${method} ${path} timed out`)), this.options.requestTimeoutMs);
    });
    let resp;
    try {
      resp = await Promise.race([request, timer]);
    } catch (err) {
      if (err instanceof YanziError) throw err;
      throw new YanziError('network', err?.message || String(err), { retryable: true });
    } finally {
      clearTimeout(timeout);
    }
    let data = null;
    try {
      data = resp.text ? JSON.parse(resp.text) : null;
    } catch {
      data = null;
    }
    if (resp.status >= 400) {
      const code = data?.error?.code ?? `http_${resp.status}`;
      const message = data?.error?.message ?? (resp.text || `HTTP ${resp.status}`).slice(0, 200);
      throw new YanziError(code, message, { status: resp.status, retryable: RETRYABLE_CODES.has(code) || resp.status >= 500 });
    }
    return data;
  }

  token() {
    if (!this.session?.token) throw new YanziError('not_logged_in', 'no token: call login() first');
    return this.session.token;
  }

  async fetchDevices(user) {
    const data = await this.http('GET', `/v1/users/${encodeURIComponent(user)}/devices`);
    return Array.isArray(data?.devices) ? data.devices : [];
  }

  // -- accounts ---------------------------------------------------------------------------------

  async register(username, password) {
    await this.loaded;
    await this.http('POST', '/v1/register', { username, password }, { auth: false });
  }

  /** Log this device in (keys generated once and kept in storage); the token is persisted. */
  async login(username, password, { deviceName } = {}) {
    await this.loaded;
    if (this.want) throw new YanziError('bad_state', 'close() before logging in again');
    const k = this.keys;
    const record = e2ee.deviceRecord(username, k.device, k.sign.pk, k.box.pk);
    const data = await this.http(
      'POST',
      '/v1/login',
      {
        username,
        password,
        device: k.device,
        device_name: deviceName ?? this.deviceName,
        keys: { ed25519: k.sign.pk, x25519: k.box.pk },
        keys_sig: e2ee.signDeviceRecord(record, b64decode(k.sign.sk)),
      },
      { auth: false },
    );
    const previous = this.session?.user;
    this.session = { user: data.user, device: data.device ?? k.device, token: data.token, expiresMs: data.expires_ms ?? null, node: data.node ?? null };
    await this.writeJson('session', this.session);
    if (previous !== data.user) {
      // Another account on this storage: its cursor, chains and pins mean nothing here.
      this.logs.clear();
      this.complete.clear();
      this.crypto.reset();
      await this.loadAccount();
    } else {
      this.directory.pinSelf(data.user, k.device, k.sign.pk, k.box.pk);
    }
    return { user: data.user, device: this.session.device, expiresMs: this.session.expiresMs };
  }

  async logout() {
    await this.loaded;
    const token = this.session?.token;
    await this.close();
    if (token) {
      await this.transport.request('POST', this.baseUrl + '/v1/logout', { Authorization: `Bearer ${token}` }, '{}').catch(() => {});
    }
    this.session = { ...this.session, token: null };
    await this.writeJson('session', this.session);
  }

  /** A user's devices after refreshing the directory: [{device, name, ed25519, trusted}]. */
  async devices(user) {
    await this.loaded;
    await this.directory.refresh(user);
    const devices = this.directory.users[user]?.devices ?? {};
    return Object.entries(devices)
      .filter(([, d]) => d.listed !== false)
      .map(([device, d]) => ({ device, name: d.name, ed25519: d.ed25519, trusted: d.trusted }));
  }

  /** The safety number of this user and `user` over their listed device keys (docs/e2ee.md §2). */
  safetyNumber(user) {
    const me = this.session?.user;
    if (!me || !this.directory) throw new YanziError('not_logged_in', 'log in first');
    // Every listed key, trusted or not: comparing the number is how a changed key is checked
    // before trust() (docs/e2ee.md §2).
    const keysOf = (u) => this.directory.listedDevices(u).map((d) => d.ed25519);
    if (!this.directory.users[user]) throw new YanziError('unknown_user', `no devices of ${user} known yet: await devices(user) first`);
    return e2ee.safetyNumber(me, keysOf(me), user, keysOf(user));
  }

  /** Accept the current key of a device after a keyChanged event. */
  async trust(user, device) {
    await this.loaded;
    this.directory.trust(user, device);
    for (const [conv, log] of this.logs) {
      const ops = [...log.ops.values()].filter((op) => op.content.author === user && op.content.device === device);
      for (const op of ops) this.crypto.verified.delete(op.opId);
      if (ops.length) {
        this.enqueue(async () => {
          for (const op of ops) if (op.content.kind === 'message' || op.content.kind === 'edit') await this.crypto.verify(op);
          this.recheck(conv);
        });
      }
    }
    await this.persist();
  }

  // -- connection -------------------------------------------------------------------------------

  wsUrl() {
    return this.baseUrl.replace(/^http/, 'ws') + '/v1/ws';
  }

  /** Connect, authenticate, catch up; then stay live (reconnecting by itself) until close(). */
  async connect() {
    await this.loaded;
    if (this.closed) throw new YanziError('closed', 'this client is closed');
    this.token();
    if (this.want && (this.ready || this.opening)) {
      if (this.opening) await this.opening;
      return;
    }
    this.want = true;
    this.clearTimer(this.reconnectTimer);
    this.reconnectTimer = null;
    try {
      await this.open();
    } catch (err) {
      this.want = false;
      throw err;
    }
    this.refreshOwnDevices();
    await this.catchUp();
  }

  /** Close the socket for good (pending sends are rejected), flush storage. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    this.want = false;
    this.dropSocket(1000, 'client closed');
    for (const h of this.timers) clearTimeout(h);
    this.timers.clear();
    this.persistTimer = null;
    for (const [cmid, p] of this.pending) {
      this.pending.delete(cmid);
      p.reject(new YanziError('closed', 'the client was closed before the send was acknowledged'));
    }
    await this.work.catch(() => {});
    await this.persist().catch(() => {});
    this.setState();
  }

  /** Mini-program onHide: close the socket and stop reconnecting; state and cursor are kept. */
  onHide() {
    this.hidden = true;
    this.want = false;
    this.clearTimer(this.reconnectTimer);
    this.reconnectTimer = null;
    this.dropSocket(1000, 'hidden');
    this.setState();
    this.persist().catch((err) => this.emit('error', err));
  }

  /** Mini-program onShow: reconnect and catch up the gap over HTTP (retrying with backoff). */
  onShow() {
    if (this.closed) return Promise.resolve();
    this.hidden = false;
    return this.connect().catch((err) => {
      this.emit('error', err);
      if (!this.closed && !this.hidden && err.code !== 'closed' && err.code !== 'auth_failed' && err.code !== 'token_expired' && err.code !== 'not_logged_in') {
        this.want = true;
        this.scheduleReconnect();
      }
    });
  }

  setState() {
    this.emit('state', { connected: this.ready, reconnecting: this.reconnecting && this.want });
  }

  open() {
    if (this.sock) this.dropSocket(1000, 'reopening');
    const gen = ++this.gen;
    this.opening = new Promise((resolve, reject) => {
      let settled = false;
      const fail = (err) => {
        if (settled) return;
        settled = true;
        if (this.abortOpen === fail) this.abortOpen = null;
        this.clearTimer(readyTimer);
        if (this.sock?.gen === gen) this.dropSocket(4000, 'open failed');
        reject(err);
      };
      const readyTimer = this.timer(() => fail(new YanziTimeout('no ready frame in time')), this.options.readyTimeoutMs);
      this.abortOpen = fail;
      const handlers = {
        onOpen: () => {
          if (gen !== this.gen) return;
          this.sock?.send(JSON.stringify({ type: 'auth', token: this.session.token }));
        },
        onMessage: (text) => {
          if (gen !== this.gen) return;
          let frame;
          try {
            frame = JSON.parse(text);
          } catch {
            return;
          }
          if (!settled) {
            if (frame.type === 'ready') {
              settled = true;
              this.abortOpen = null;
              this.clearTimer(readyTimer);
              this.onReady(frame);
              resolve(frame);
            } else if (frame.type === 'error') {
              fail(new YanziError(frame.code, frame.message, { status: 401 }));
            }
            return;
          }
          this.onFrame(frame);
        },
        onClose: (code, reason) => {
          if (gen !== this.gen) return;
          if (!settled) fail(new YanziError(code === 4001 ? reason || 'auth_failed' : 'network', `socket closed (${code} ${reason})`, { retryable: code !== 4001 }));
          else this.onDrop(code, reason);
        },
        onError: () => {
          /* a close follows; errors carry no extra information for the protocol */
        },
      };
      let socket;
      try {
        socket = this.transport.openSocket(this.wsUrl(), handlers);
      } catch (err) {
        fail(new YanziError('network', err?.message || String(err), { retryable: true }));
        return;
      }
      if (gen === this.gen && !settled) this.sock = { ...socket, gen };
    });
    const opening = this.opening;
    opening.then(
      () => { if (this.opening === opening) this.opening = null; },
      () => { if (this.opening === opening) this.opening = null; },
    );
    return opening;
  }

  onReady(frame) {
    this.ready = true;
    this.reconnecting = false;
    this.attempt = 0;
    this.node = frame.node;
    this.limits = frame.limits;
    this.setState();
    this.schedulePing();
    // Resend every unacknowledged send with its original cmid: the node applies each once.
    for (const [cmid, p] of this.pending) this.transmit(cmid, p);
  }

  dropSocket(code, reason) {
    const abort = this.abortOpen;
    this.abortOpen = null;
    abort?.(new YanziError('closed', `the connection was closed while opening (${reason})`));
    const sock = this.sock;
    this.sock = null;
    this.gen++;
    this.ready = false;
    this.clearTimer(this.pingTimer);
    this.clearTimer(this.pongTimer);
    this.pingTimer = this.pongTimer = null;
    this.failRequests(new YanziError('network', 'the connection closed', { retryable: true }));
    if (sock) {
      try {
        sock.close(code, reason);
      } catch {
        /* already closed */
      }
    }
  }

  failRequests(err) {
    for (const [id, entry] of this.byReqId) {
      if (entry.reject) {
        this.byReqId.delete(id);
        entry.reject(err);
      }
    }
  }

  onDrop(code, reason) {
    this.dropSocket(code, reason);
    if (FATAL_CLOSE.has(code)) {
      this.want = false;
      this.reconnecting = false;
      this.setState();
      this.emit('error', new YanziError(code === 4011 ? 'logged_out' : reason || 'closed', `the node closed the session (${code} ${reason})`));
      return;
    }
    if (!this.want) {
      this.setState();
      return;
    }
    this.reconnecting = true;
    this.setState();
    this.scheduleReconnect(code === 4008 ? 0 : undefined);
  }

  /** Exponential backoff with full jitter: uniform(0, min(max, base · 2^attempt)). */
  backoff(attempt) {
    const cap = Math.min(this.options.backoffMaxMs, this.options.backoffBaseMs * 2 ** attempt);
    return Math.floor(this.random() * cap);
  }

  scheduleReconnect(delay) {
    if (this.closed || !this.want || this.reconnectTimer) return;
    this.reconnecting = true;
    const wait = delay ?? this.backoff(this.attempt);
    this.attempt++;
    this.reconnectTimer = this.timer(async () => {
      this.reconnectTimer = null;
      if (!this.want || this.closed || this.ready) return;
      try {
        await this.open();
      } catch (err) {
        if (err.code === 'auth_failed' || err.code === 'token_expired' || err.code === 'auth_required') {
          this.want = false;
          this.reconnecting = false;
          this.setState();
          this.emit('error', err);
          return;
        }
        this.scheduleReconnect();
        return;
      }
      this.requestCatchUp();
    }, wait);
  }

  schedulePing() {
    this.clearTimer(this.pingTimer);
    this.pingTimer = this.timer(() => {
      if (!this.ready) return;
      const id = `p${++this.reqSeq}`;
      this.byReqId.set(id, { resolve: () => {}, reject: () => {} });
      this.sendFrame({ type: 'ping', id });
      // No pong in time: the connection is dead even if the platform has not noticed (§13.3).
      this.pongTimer = this.timer(() => {
        this.byReqId.delete(id);
        if (this.ready) this.onDrop(1006, 'no pong');
      }, this.options.pongTimeoutMs);
      this.pingAwaiting = id;
    }, this.options.pingIntervalMs);
  }

  sendFrame(frame) {
    if (!this.sock || !this.ready) return false;
    try {
      this.sock.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** A request frame answered by `ok`/`pong`/`error` with the same id. */
  request(frame, timeoutMs = this.options.requestTimeoutMs) {
    return new Promise((resolve, reject) => {
      const id = `r${++this.reqSeq}`;
      const timer = this.timer(() => {
        this.byReqId.delete(id);
        reject(new YanziTimeout(`no reply to ${frame.type} in time`));
      }, timeoutMs);
      this.byReqId.set(id, {
        resolve: (v) => { this.clearTimer(timer); resolve(v); },
        reject: (e) => { this.clearTimer(timer); reject(e); },
      });
      if (!this.sendFrame({ ...frame, id })) {
        this.byReqId.get(id).reject(new YanziError('network', 'not connected', { retryable: true }));
        this.byReqId.delete(id);
      }
    });
  }

  onFrame(frame) {
    switch (frame.type) {
      case 'op': {
        let op;
        try {
          op = decodeOp(frame.op);
        } catch (err) {
          this.emit('error', err instanceof OpError ? err : new OpError(String(err)));
          return;
        }
        this.ingest([op], { live: true });
        return;
      }
      case 'ack':
      case 'error':
      case 'ok':
      case 'pong': {
        if (frame.type === 'pong' && frame.id === this.pingAwaiting) {
          this.clearTimer(this.pongTimer);
          this.pongTimer = null;
          this.schedulePing();
        }
        const entry = frame.id === undefined ? undefined : this.byReqId.get(frame.id);
        if (!entry) {
          if (frame.type === 'error') this.emit('error', new YanziError(frame.code, frame.message));
          return;
        }
        this.byReqId.delete(frame.id);
        if (entry.cmid) this.onSendReply(entry.cmid, frame);
        else if (frame.type === 'error') entry.reject(new YanziError(frame.code, frame.message));
        else entry.resolve(frame);
        return;
      }
      case 'read': {
        if (frame.user === this.session?.user) {
          const op = this.logs.get(frame.conv)?.get(frame.op_id);
          if (op) this.readMarkers.set(frame.conv, orderKey(op));
        }
        this.emit('read', { conv: frame.conv, user: frame.user, opId: frame.op_id });
        return;
      }
      case 'typing':
        this.emit('typing', { conv: frame.conv, user: frame.user, active: !!frame.active });
        return;
      case 'presence':
        this.emit('presence', { user: frame.user, online: !!frame.online });
        return;
      default:
        // Unknown frame types are ignored (docs/protocol.md §4.4).
    }
  }

  // -- catch-up ---------------------------------------------------------------------------------

  /** Coalesced: one catch-up at a time; a trigger during one runs another after it. */
  requestCatchUp() {
    this.catchUp().catch((err) => {
      this.emit('error', err);
      if (this.ready && err.retryable && !this.closed) this.timer(() => this.requestCatchUp(), this.backoff(1));
    });
  }

  async catchUp() {
    if (this.syncRunning) {
      this.syncAgain = true;
      return this.syncRunning;
    }
    this.syncRunning = (async () => {
      try {
        do {
          this.syncAgain = false;
          await this.pullPages(this.cursor.encoded());
          this.cursor.noteCaughtUp();
        } while (this.syncAgain && !this.closed);
      } finally {
        this.syncRunning = null;
      }
      this.crypto.scheduleKeyRequests();
      this.emit('caughtUp', {});
    })();
    return this.syncRunning;
  }

  /** POST /v1/sync from `cursor` until more=false; stops when a page makes no progress. */
  async pullPages(cursor) {
    for (;;) {
      const page = await this.http('POST', '/v1/sync', { cursor, limit: this.options.syncPage });
      const ops = [];
      for (const raw of page?.ops ?? []) {
        try {
          ops.push(decodeOp(raw));
        } catch (err) {
          this.emit('error', err);
        }
      }
      this.ingest(ops, { live: false });
      if (!page?.more || typeof page.cursor !== 'string' || page.cursor === cursor) break;
      cursor = page.cursor;
    }
  }

  /** Load the whole op log of `conv` once per session (a new process starts from its cursor). */
  async ensureComplete(conv) {
    if (this.complete.has(conv)) return;
    if (!this.isComplete(conv)) await this.pullPages(this.cursor.encoded({ without: conv }));
    this.complete.add(conv);
  }

  /** Backfill `conv` in the background (after a restart the local log starts empty, and the
   * fold needs the conversation's create and membership ops to show anything). */
  requestBackfill(conv) {
    if (this.complete.has(conv) || this.backfilling.has(conv) || this.closed) return;
    if (this.isComplete(conv)) {
      this.complete.add(conv);
      return;
    }
    this.backfilling.add(conv);
    this.backfillChain = this.backfillChain
      .then(() => this.ensureComplete(conv))
      .catch((err) => this.emit('error', err))
      .finally(() => this.backfilling.delete(conv));
  }

  isComplete(conv) {
    const log = this.logs.get(conv);
    const entry = this.cursor.cursor[conv] ?? {};
    if (!log) return false;
    const counts = new Map();
    for (const op of log.ops.values()) {
      const [origin, seq] = op.dot;
      if (seq <= (entry[origin] ?? 0)) counts.set(origin, (counts.get(origin) ?? 0) + 1);
    }
    return Object.entries(entry).every(([origin, seq]) => (counts.get(origin) ?? 0) >= seq);
  }

  // -- ops in -----------------------------------------------------------------------------------

  logOf(conv) {
    let log = this.logs.get(conv);
    if (!log) this.logs.set(conv, (log = new MessageLog(conv)));
    return log;
  }

  ingest(ops, { live }) {
    const touched = new Map(); // conv -> Set of message op ids
    let gap = false;
    let moved = false;
    for (const op of ops) {
      const conv = op.content.conv;
      const log = this.logOf(conv);
      const outcome = log.apply(op);
      if (outcome === 'duplicate' || outcome === 'equivocation') continue;
      const r = this.cursor.add(conv, op.dot[0], op.dot[1]);
      moved ||= r.moved;
      gap ||= r.gap;
      if (!touched.has(conv)) touched.set(conv, new Set());
      const { kind, target } = op.content;
      if (kind === 'message') touched.get(conv).add(op.opId);
      else if (['edit', 'delete', 'react', 'unreact'].includes(kind)) touched.get(conv).add(target);
      if (kind === 'message' || kind === 'edit' || kind === 'key_share') this.enqueue(() => this.crypto.processOp(op));
      // backfill: the cursor already covered this op (a reload after a restart), not news.
      this.emit('op', { conv, op, live, backfill: !r.new });
    }
    if (moved) this.markDirty('cursor');
    for (const conv of touched.keys()) if (!this.complete.has(conv)) this.requestBackfill(conv);
    for (const [conv, ids] of touched) {
      const state = this.logs.get(conv).state;
      for (const id of ids) {
        const m = state.messages.get(id);
        if (m && !this.crypto.replays.has(id)) this.emit('message', { conv, message: this.view(conv, m) });
      }
    }
    if (live && gap) this.requestCatchUp();
  }

  enqueue(task) {
    this.work = this.work.then(task).catch((err) => this.emit('error', err));
  }

  /** Emit a message event for the message `op` belongs to (or every message of conv). */
  recheck(conv, op) {
    const log = this.logs.get(conv);
    if (!log) return;
    const state = log.state;
    const ids = op ? [op.content.kind === 'message' ? op.opId : op.content.target] : [...state.messages.keys()];
    for (const id of ids) {
      const m = state.messages.get(id);
      if (m && !this.crypto.replays.has(id)) this.emit('message', { conv, message: this.view(conv, m) });
    }
  }

  // -- ops out ----------------------------------------------------------------------------------

  /** Random bytes are drawn synchronously (tweetnacl's PRNG); on a mini-program they come from an
   * entropy pool filled asynchronously, so wait for enough of them first. */
  async entropy(bytes) {
    if (typeof this.transport.ready === 'function') await this.transport.ready(bytes);
  }

  /** Sign and send one op until acknowledged (WebSocket, or POST /v1/ops when offline). */
  async submit({ conv, kind, target = '', attrs = {}, body = '', cmid }) {
    const me = this.session?.user;
    if (!me) throw new YanziError('not_logged_in', 'log in first');
    if (!cmid) await this.entropy();
    cmid = cmid ?? 'c-' + randomId(16);
    // The cmid goes into the signed content too: every replica hides a retry of it (docs/crdt.md).
    attrs = { ...attrs, cmid };
    const content = buildContent({ conv, kind, author: me, device: this.session.device ?? this.keys.device, target, attrs, body });
    const dsig = signContent(content, b64decode(this.keys.sign.sk));
    const frame = { type: 'send', cmid, conv, kind, target, attrs, body, dsig };
    return new Promise((resolve, reject) => {
      const p = { frame, resolve, reject, attempt: 0 };
      this.pending.set(frame.cmid, p);
      p.timer = this.timer(() => {
        if (!this.pending.has(frame.cmid)) return;
        this.pending.delete(frame.cmid);
        reject(new YanziTimeout(`op ${frame.cmid} not acknowledged within ${this.options.sendTimeoutMs} ms; retrying with the same cmid is safe`));
      }, this.options.sendTimeoutMs);
      this.transmit(frame.cmid, p);
    });
  }

  transmit(cmid, p) {
    if (this.ready) {
      const id = `s${++this.reqSeq}`;
      this.byReqId.set(id, { cmid });
      if (this.sendFrame({ ...p.frame, id })) return;
      this.byReqId.delete(id);
    }
    if (this.want) return; // reconnecting: onReady resends it
    // Not connected and not trying to be: HTTP (docs/protocol.md §8.8), same cmid semantics.
    const { type, ...fields } = p.frame;
    this.http('POST', '/v1/ops', fields).then(
      (ack) => this.settleSend(cmid, { type: 'ack', ...ack }),
      (err) => this.settleSend(cmid, { type: 'error', code: err.code, message: err.message, retryable: err.retryable }),
    );
  }

  onSendReply(cmid, frame) {
    this.settleSend(cmid, frame);
  }

  settleSend(cmid, frame) {
    const p = this.pending.get(cmid);
    if (!p) return;
    if (frame.type === 'ack') {
      this.pending.delete(cmid);
      this.clearTimer(p.timer);
      p.resolve({ opId: frame.op_id, conv: frame.conv, hlc: frame.hlc, dot: frame.dot, cmid });
      return;
    }
    if (frame.retryable || RETRYABLE_CODES.has(frame.code) || frame.code === 'network' || frame.code === 'timeout') {
      this.timer(() => this.pending.has(cmid) && this.transmit(cmid, p), this.backoff(++p.attempt));
      return;
    }
    this.pending.delete(cmid);
    this.clearTimer(p.timer);
    p.reject(new YanziError(frame.code, frame.message));
  }

  async withConvLock(conv, fn) {
    const prev = this.sendLocks.get(conv) ?? Promise.resolve();
    const next = prev.catch(() => {}).then(fn);
    this.sendLocks.set(conv, next);
    try {
      return await next;
    } finally {
      if (this.sendLocks.get(conv) === next) this.sendLocks.delete(conv);
    }
  }

  async persistNow(what) {
    this.dirtyKeys.add(what);
    await this.persist();
  }

  // -- public API: conversations ------------------------------------------------------------------

  /** The direct conversation with `user` (created on first use; the same id for both). */
  async direct(user) {
    await this.loaded;
    const me = this.session?.user;
    const conv = directConvId(me, user);
    const content = buildContent({ conv, kind: 'create', author: me, device: this.keys.device, attrs: { type: 'direct', members: [user] } });
    const data = await this.http('POST', '/v1/direct', { user, dsig: signContent(content, b64decode(this.keys.sign.sk)) });
    if (this.e2ee) await this.directory.refresh(user, { maxAgeMs: this.options.deviceRefreshMs }).catch((err) => this.emit('error', err));
    return data.conv;
  }

  async createGroup(title, members = []) {
    await this.loaded;
    await this.entropy();
    const conv = 'g_' + randomId(16);
    const others = sortedUnique(members.filter((u) => u !== this.session.user));
    const attrs = { type: 'group', members: others };
    if (title !== undefined && title !== null) attrs.title = String(title);
    await this.submit({ conv, kind: 'create', attrs });
    this.complete.add(conv);
    return conv;
  }

  async addMember(conv, user, role = 'member') {
    await this.loaded;
    return this.submit({ conv, kind: 'member_add', target: user, attrs: { role } });
  }

  async removeMember(conv, user) {
    await this.loaded;
    return this.submit({ conv, kind: 'member_remove', target: user });
  }

  // -- public API: messages ---------------------------------------------------------------------

  async send(conv, text) {
    await this.loaded;
    return this.withConvLock(conv, async () => this.submit({ conv, kind: 'message', body: await this.crypto.sealBody(conv, text) }));
  }

  async edit(conv, opId, text) {
    await this.loaded;
    return this.withConvLock(conv, async () => this.submit({ conv, kind: 'edit', target: opId, body: await this.crypto.sealBody(conv, text) }));
  }

  async delete(conv, opId) {
    await this.loaded;
    return this.submit({ conv, kind: 'delete', target: opId });
  }

  async react(conv, opId, key) {
    await this.loaded;
    return this.submit({ conv, kind: 'react', target: opId, attrs: { key } });
  }

  /** Remove this user's `key` reactions on a message: the react ops the local view holds. */
  async unreact(conv, opId, key) {
    await this.loaded;
    const m = this.logs.get(conv)?.state.messages.get(opId);
    const mine = m ? [...(m.reactions.get(key) ?? new Map())].filter(([, u]) => u === this.session.user).map(([id]) => id).sort() : [];
    if (!mine.length) throw new YanziError('not_found', `you have no ${key} reaction on ${opId} in the local view`);
    return this.submit({ conv, kind: 'unreact', target: opId, attrs: { removes: mine } });
  }

  async markRead(conv, opId) {
    await this.loaded;
    if (this.ready) {
      try {
        await this.request({ type: 'read', conv, op_id: opId });
        return;
      } catch (err) {
        if (err.code !== 'network' && err.code !== 'timeout') throw err;
      }
    }
    await this.http('POST', `/v1/conversations/${encodeURIComponent(conv)}/read`, { op_id: opId });
  }

  async typing(conv, active) {
    await this.loaded;
    return this.sendFrame({ type: 'typing', conv, active: !!active });
  }

  /** The decrypted local view of `conv`, oldest first, in total order. */
  messages(conv) {
    const log = this.logs.get(conv);
    if (!log) return [];
    const out = [];
    for (const m of log.state.messages.values()) if (!this.crypto.replays.has(m.op.opId)) out.push(this.view(conv, m));
    return out;
  }

  view(conv, m) {
    const deleted = m.deletedBy !== null;
    const bodyOp = m.bodyOp;
    let plain = this.crypto.plain.get(bodyOp.opId);
    if (!plain && !deleted) plain = this.crypto.decrypt(bodyOp) ?? undefined;
    const reactions = ConversationState.reactionSummary(m);
    const verified = this.crypto.verified.get(m.op.opId) === true && (bodyOp === m.op || this.crypto.verified.get(bodyOp.opId) === true);
    return {
      conv,
      opId: m.op.opId,
      author: m.op.content.author,
      device: m.op.content.device,
      text: deleted ? '' : plain?.text ?? null,
      edited: m.editedBy !== null,
      editedBy: m.editedBy,
      deleted,
      reactions,
      hlc: m.op.hlc,
      dot: m.op.dot,
      attrs: m.op.content.attrs,
      verified,
      encrypted: plain ? plain.encrypted : true,
      pending: !deleted && !plain,
      error: plain?.error ?? null,
    };
  }

  /** Older messages: loads the conversation's whole log once, then pages locally. */
  async history(conv, { before = null, limit = 50 } = {}) {
    await this.loaded;
    await this.ensureComplete(conv);
    await this.backfillChain;
    await this.work; // decryption of what was just loaded
    const all = this.messages(conv);
    let end = all.length;
    if (before) {
      const i = all.findIndex((m) => m.opId === before);
      if (i >= 0) end = i;
    }
    const start = Math.max(0, end - limit);
    return { messages: all.slice(start, end), more: start > 0 };
  }

  /** The conversation list: [{conv, type, title, members, roles, lastMessage, unread}]. */
  async conversations() {
    await this.loaded;
    const data = await this.http('GET', '/v1/conversations');
    const me = this.session.user;
    return (data?.conversations ?? []).map((row) => {
      const roles = row.members ?? {};
      const members = Object.keys(roles).sort();
      const title = row.settings?.title ?? (row.type === 'direct' ? members.find((u) => u !== me) ?? me : row.conv);
      let lastMessage = null;
      const local = row.last_message && this.logs.get(row.conv)?.state.messages.get(row.last_message.op_id);
      if (local) lastMessage = this.view(row.conv, local);
      else if (row.last_message) lastMessage = this.serverMessage(row.conv, row.last_message);
      const marker = this.readMarkers.get(row.conv);
      return { conv: row.conv, type: row.type, title, members, roles, lastMessage, unread: row.unread ?? 0, readMarker: row.read_marker ?? marker ?? null };
    });
  }

  /** A message from the node's materialised view (no op, so no signature to check). */
  serverMessage(conv, m) {
    let text = null;
    let encrypted = false;
    if (!m.deleted_by) {
      try {
        ({ text, encrypted } = this.crypto.decryptServerBody(conv, m.author, m.body));
      } catch {
        text = null;
      }
    }
    return {
      conv, opId: m.op_id, author: m.author, device: m.device, text: m.deleted_by ? '' : text,
      edited: !!m.edited_by, editedBy: m.edited_by ?? null, deleted: !!m.deleted_by, reactions: m.reactions ?? {},
      hlc: m.hlc, dot: m.dot, attrs: m.attrs ?? {}, verified: false, encrypted, pending: text === null && !m.deleted_by, error: null,
    };
  }

  /** Unread count of `conv` from the local view and the last read marker seen. */
  unread(conv) {
    const state = this.logs.get(conv)?.state;
    return state ? state.unreadCount(this.session?.user, this.readMarkers.get(conv) ?? null) : 0;
  }

  refreshOwnDevices() {
    if (!this.e2ee || !this.session?.user) return;
    this.directory.refresh(this.session.user).catch((err) => this.emit('error', err));
  }
}


