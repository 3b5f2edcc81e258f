// Transports: how the Client reaches a node. The interface is two methods —
//   openSocket(url, {onOpen, onMessage(text), onClose(code, reason), onError(err)}) -> {send(text), close(code, reason)}
//   request(method, url, headers, bodyText) -> Promise<{status, text}>
// BrowserTransport uses WebSocket + fetch; WxTransport uses wx.connectSocket + wx.request and
// feeds tweetnacl's PRNG from wx.getRandomValues (mini-programs have no crypto.getRandomValues).

import nacl from './nacl.js';

export class TransportError extends Error {
  constructor(message) {
    super(message);
    this.name = 'TransportError';
  }
}

export class BrowserTransport {
  /** `WebSocket` and `fetch` default to the globals (inject them under Node.js or for tests). */
  constructor({ WebSocket = globalThis.WebSocket, fetch = globalThis.fetch } = {}) {
    if (!WebSocket || !fetch) throw new TransportError('BrowserTransport needs WebSocket and fetch');
    this.WebSocket = WebSocket;
    // Browsers refuse `fetch` called as a method of another object ("Illegal invocation").
    this.fetch = (...args) => fetch.call(globalThis, ...args);
  }

  openSocket(url, handlers) {
    const ws = new this.WebSocket(url);
    ws.onopen = () => handlers.onOpen();
    ws.onmessage = (event) => {
      if (typeof event.data === 'string') handlers.onMessage(event.data);
      // Yanzi sends only text frames (docs/protocol.md §2.1); anything else is ignored.
    };
    ws.onclose = (event) => handlers.onClose(event.code, event.reason || '');
    ws.onerror = (event) => handlers.onError(new TransportError(event?.message || 'WebSocket error'));
    return {
      send: (text) => ws.send(text),
      close: (code = 1000, reason = '') => {
        try {
          ws.close(code, reason);
        } catch {
          ws.close();
        }
      },
    };
  }

  async request(method, url, headers, bodyText) {
    let resp;
    try {
      resp = await this.fetch(url, { method, headers, body: bodyText ?? undefined });
    } catch (err) {
      throw new TransportError(`${method} ${url}: ${err?.message || err}`);
    }
    return { status: resp.status, text: await resp.text() };
  }
}

/**
 * An entropy pool for tweetnacl inside a mini-program: wx.getRandomValues is asynchronous, nacl's
 * PRNG is synchronous, so bytes are drawn from a pool that is refilled in the background and
 * `ready()` waits for the first fill. Drawing more than the pool holds throws — loudly, never a
 * silent fallback to a weak generator.
 */
export class EntropyPool {
  constructor(getRandomValues, { size = 4096, lowWater = 1024 } = {}) {
    this.getRandomValues = getRandomValues; // (length) -> Promise<Uint8Array>
    this.size = size;
    this.lowWater = lowWater;
    this.pool = new Uint8Array(0);
    this.refilling = null;
    this.lastError = null;
  }

  get available() {
    return this.pool.length;
  }

  refill() {
    if (!this.refilling) {
      this.refilling = this.getRandomValues(this.size).then(
        (bytes) => {
          if (!(bytes instanceof Uint8Array) || bytes.length !== this.size) {
            throw new TransportError('getRandomValues returned the wrong number of bytes');
          }
          const merged = new Uint8Array(this.pool.length + bytes.length);
          merged.set(this.pool);
          merged.set(bytes, this.pool.length);
          this.pool = merged;
          this.refilling = null;
          if (this.pool.length < this.lowWater) this.refill();
        },
        (err) => {
          this.refilling = null;
          this.lastError = err;
          throw err;
        },
      );
      this.refilling.catch(() => {}); // reported through take() and ready()
    }
    return this.refilling;
  }

  /** Resolves once the pool holds at least `min` (default: the low-water mark) bytes. */
  async ready(min = this.lowWater) {
    while (this.pool.length < min) await this.refill();
  }

  /** Fill `out` from the pool (synchronously); throws if the pool cannot cover it. */
  take(out) {
    const n = out.length;
    if (n > this.pool.length) {
      this.refill();
      throw new TransportError(
        `entropy pool empty: ${n} random bytes wanted, ${this.pool.length} held` +
          (this.lastError ? ` (wx.getRandomValues failed: ${this.lastError.message || this.lastError})` : '') +
          '; await transport.ready() first',
      );
    }
    out.set(this.pool.subarray(0, n));
    this.pool.fill(0, 0, n); // erase what was handed out
    this.pool = this.pool.slice(n);
    if (this.pool.length < this.lowWater) this.refill();
  }
}

function wxRandom(wx) {
  return (length) =>
    new Promise((resolve, reject) => {
      wx.getRandomValues({
        length,
        success: (res) => resolve(new Uint8Array(res.randomValues)),
        fail: (err) => reject(new TransportError(`wx.getRandomValues: ${err?.errMsg || err}`)),
      });
    });
}

/**
 * The WeChat mini-program transport. Keeps a single socket (opening a new one closes the old:
 * mini-programs may hold only a few), and installs the entropy pool as tweetnacl's PRNG.
 * Call `await transport.ready()` (the Client does) before generating keys or sending.
 */
export class WxTransport {
  constructor(wx, { installPrng = true, poolSize = 16384 } = {}) {
    if (!wx || typeof wx.connectSocket !== 'function' || typeof wx.request !== 'function') {
      throw new TransportError('WxTransport needs the wx object (wx.connectSocket, wx.request)');
    }
    this.wx = wx;
    this.task = null;
    this.pool = new EntropyPool(wxRandom(wx), { size: poolSize, lowWater: poolSize / 4 });
    if (installPrng) {
      nacl.setPRNG((out, n) => {
        const buf = new Uint8Array(n);
        this.pool.take(buf);
        out.set(buf);
        buf.fill(0);
      });
    }
  }

  /** Wait until the entropy pool holds `minBytes` (default a quarter of the pool). The Client
   * awaits this before every operation that draws random bytes. */
  ready(minBytes) {
    return this.pool.ready(minBytes);
  }

  openSocket(url, handlers) {
    if (this.task) {
      const old = this.task;
      this.task = null;
      try {
        old.close({ code: 1000, reason: 'replaced' });
      } catch {
        /* already closed */
      }
    }
    let failed = false;
    const task = this.wx.connectSocket({
      url,
      fail: (err) => {
        failed = true;
        handlers.onError(new TransportError(`wx.connectSocket: ${err?.errMsg || err}`));
        handlers.onClose(1006, err?.errMsg || 'connectSocket failed');
      },
    });
    this.task = task;
    let closed = false;
    task.onOpen(() => handlers.onOpen());
    task.onMessage((res) => {
      if (typeof res.data === 'string') handlers.onMessage(res.data);
    });
    task.onError((err) => handlers.onError(new TransportError(err?.errMsg || 'socket error')));
    task.onClose((res) => {
      if (this.task === task) this.task = null;
      if (closed || failed) return;
      closed = true;
      handlers.onClose(res?.code ?? 1006, res?.reason || '');
    });
    return {
      send: (text) => task.send({ data: text }),
      close: (code = 1000, reason = '') => task.close({ code, reason }),
    };
  }

  request(method, url, headers, bodyText) {
    return new Promise((resolve, reject) => {
      this.wx.request({
        url,
        method,
        header: headers,
        data: bodyText ?? undefined,
        dataType: 'text', // anything but 'json': hand back the raw text, the SDK parses it
        responseType: 'text',
        success: (res) =>
          resolve({
            status: res.statusCode,
            text: typeof res.data === 'string' ? res.data : JSON.stringify(res.data),
          }),
        fail: (err) => reject(new TransportError(`${method} ${url}: ${err?.errMsg || err}`)),
      });
    });
  }
}
