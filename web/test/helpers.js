// Test helpers: a real Yanzi node as a child process, condition waits, transports for Node.js.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { WebSocket } from 'ws';

import { BrowserTransport } from '../src/transport.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const PYTHON = process.env.PYTHON || 'python3';
export const PASSWORD = 'correct-horse-battery';

/** `python -m node.cli up` on 127.0.0.1, port 0, its own data dir; `stop()` kills it by PID. */
export async function startNode({ timeoutMs = 60000 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'yanzi-web-'));
  const child = spawn(PYTHON, ['-m', 'node.cli', 'up', '--data-dir', join(dir, 'node'), '--port', '0', '--host', '127.0.0.1'], {
    cwd: ROOT,
    env: { ...process.env, YANZI_PWHASH_LEVEL: 'min' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d) => {
    log += d;
  });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`node did not start in ${timeoutMs} ms:\n${log}`)), timeoutMs);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /yanzi node listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`node exited early (${code}):\n${log}`));
    });
  });
  child.stdout.resume();
  return {
    url,
    pid: child.pid,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        process.kill(child.pid, 'SIGTERM');
        const timer = setTimeout(() => child.exitCode === null && process.kill(child.pid, 'SIGKILL'), 15000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Poll `predicate` until it returns something truthy, or fail after `timeoutMs`. */
export async function eventually(predicate, { timeoutMs = 15000, intervalMs = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await predicate();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms (last value ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Resolve with the first `event` of `client` whose payload satisfies `pred`. */
export function nextEvent(client, event, pred = () => true, { timeoutMs = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    const fn = (data) => {
      if (!pred(data)) return;
      clearTimeout(timer);
      client.off(event, fn);
      resolve(data);
    };
    const timer = setTimeout(() => {
      client.off(event, fn);
      reject(new Error(`no ${event} event within ${timeoutMs} ms`));
    }, timeoutMs);
    client.on(event, fn);
  });
}

/**
 * A BrowserTransport over the `ws` package (Node 20 has no global WebSocket), with hooks for
 * tests: `sever()` drops the TCP connection under the client (it sees 1006), `dropOps` filters
 * live op frames before the client sees them (to make a gap).
 */
export class TestTransport extends BrowserTransport {
  constructor() {
    super({ WebSocket, fetch: globalThis.fetch });
    this.sockets = [];
    this.dropOps = null;
    this.opened = 0;
  }

  openSocket(url, handlers) {
    this.opened++;
    const wrapped = {
      ...handlers,
      onMessage: (text) => {
        if (this.dropOps) {
          const frame = JSON.parse(text);
          if (frame.type === 'op' && this.dropOps(frame.op)) return;
        }
        handlers.onMessage(text);
      },
    };
    const sock = super.openSocket(url, wrapped);
    return sock;
  }

  // BrowserTransport keeps the WebSocket private; capture it through the constructor.
  get WebSocketClass() {
    return this.WebSocket;
  }

  sever() {
    for (const ws of this.sockets) ws.terminate();
    this.sockets = [];
  }
}

// Record every ws the transport creates so sever() can reach it.
const Original = WebSocket;
export function trackingWebSocket(transport) {
  return class extends Original {
    constructor(...args) {
      super(...args);
      transport.sockets.push(this);
    }
  };
}

export function testTransport() {
  const t = new TestTransport();
  t.WebSocket = trackingWebSocket(t);
  return t;
}

/** Fast timers for tests (reconnects in tens of ms, not seconds). */
export const FAST = {
  backoffBaseMs: 50,
  backoffMaxMs: 500,
  readyTimeoutMs: 10000,
  requestTimeoutMs: 10000,
  sendTimeoutMs: 20000,
  keyRequestDelayMs: 300,
  keyRequestRetryMs: 2000,
  persistDelayMs: 5,
};
