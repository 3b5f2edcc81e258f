// The device-key directory as this client sees it: trust on first use (docs/e2ee.md §1–2).
//
// Per user and device id it pins the first Ed25519 key seen. A later, different key for a known
// device id raises `keyChanged` and leaves the device untrusted until `trust(user, device)`; a
// new device id of a known user raises `deviceAdded` (trusted on first use, but visible).
// Devices whose keys_sig does not verify are ignored. State is plain JSON, persisted by the
// owner through `save`.

import { b64decode } from './base64url.js';
import { verifyDeviceRecord, deviceRecord } from './e2ee.js';

export class Directory {
  /**
   * @param {object} o
   * @param {(user: string) => Promise<any[]>} o.fetch the device list of GET /v1/users/{user}/devices
   * @param {(event: string, data: any) => void} o.emit
   * @param {() => void} o.save called after every change of the pinned state
   * @param {() => number} o.now
   */
  constructor({ fetch, emit, save, now, state = {} }) {
    this.fetchList = fetch;
    this.emit = emit;
    this.save = save;
    this.now = now;
    this.users = state.users ?? {}; // user -> {devices: {id: {ed25519, x25519, name, trusted, listed, old?}}}
    this.fetchedMs = new Map(); // user -> when last fetched (this session)
    this.inflight = new Map();
  }

  toJSON() {
    return { users: this.users };
  }

  get(user, device) {
    return this.users[user]?.devices?.[device] ?? null;
  }

  /** Trusted, currently listed devices of `user`: [{user, device, ed25519, x25519}]. */
  trustedDevices(user) {
    const devices = this.users[user]?.devices ?? {};
    return Object.entries(devices)
      .filter(([, d]) => d.trusted && d.listed !== false)
      .map(([device, d]) => ({ user, device, ed25519: d.ed25519, x25519: d.x25519 }));
  }

  /** Every currently listed device of `user` (trusted or awaiting trust() after a key change),
   * with its current key: what safety numbers cover (docs/e2ee.md §2). */
  listedDevices(user) {
    const devices = this.users[user]?.devices ?? {};
    return Object.entries(devices)
      .filter(([, d]) => d.listed !== false)
      .map(([device, d]) => ({ user, device, ed25519: d.ed25519, x25519: d.x25519 }));
  }

  /** Refresh `user`'s devices unless fetched within `maxAgeMs`; one request at a time per user. */
  async refresh(user, { maxAgeMs = 0 } = {}) {
    const last = this.fetchedMs.get(user);
    if (last !== undefined && this.now() - last < maxAgeMs) return this.users[user];
    if (!this.inflight.has(user)) {
      const p = this.load(user).finally(() => this.inflight.delete(user));
      this.inflight.set(user, p);
    }
    await this.inflight.get(user);
    return this.users[user];
  }

  /** The record of (user, device), fetching the directory when the device is not known yet. */
  async device(user, device, { refreshAfterMs = 2000 } = {}) {
    let d = this.get(user, device);
    if (!d) {
      await this.refresh(user, { maxAgeMs: refreshAfterMs });
      d = this.get(user, device);
    }
    return d;
  }

  async load(user) {
    const list = await this.fetchList(user);
    this.fetchedMs.set(user, this.now());
    const known = this.users[user];
    const entry = known ?? { devices: {} };
    const listed = new Set();
    let changed = !known;
    for (const raw of list) {
      const id = raw?.device;
      const keys = raw?.keys ?? {};
      const keysSig = raw?.keys_sig ?? keys.keys_sig;
      if (typeof id !== 'string' || typeof keys.ed25519 !== 'string' || typeof keys.x25519 !== 'string') continue;
      const record = deviceRecord(user, id, keys.ed25519, keys.x25519);
      if (typeof keysSig !== 'string' || !verifyDeviceRecord(record, keysSig) || !validKey(keys.x25519)) continue;
      listed.add(id);
      const prev = entry.devices[id];
      const name = typeof raw.name === 'string' ? raw.name : '';
      if (!prev) {
        entry.devices[id] = { ed25519: keys.ed25519, x25519: keys.x25519, name, trusted: true, listed: true };
        changed = true;
        if (known) this.emit('deviceAdded', { user, device: id, ed25519: keys.ed25519 });
      } else if (prev.ed25519 !== keys.ed25519) {
        const old = prev.ed25519;
        entry.devices[id] = { ed25519: keys.ed25519, x25519: keys.x25519, name, trusted: false, listed: true, old };
        changed = true;
        this.emit('keyChanged', { user, device: id, old, new: keys.ed25519 });
      } else if (prev.x25519 !== keys.x25519 || prev.listed === false || prev.name !== name) {
        // A new box key signed by the pinned signing key (a re-login) is the same device.
        Object.assign(prev, { x25519: keys.x25519, listed: true, name });
        changed = true;
      }
    }
    for (const [id, d] of Object.entries(entry.devices)) {
      if (!listed.has(id) && d.listed !== false) {
        d.listed = false;
        changed = true;
      }
    }
    this.users[user] = entry;
    if (changed) this.save();
    return entry;
  }

  /** Accept the current key of (user, device) after a key change (the user checked it). */
  trust(user, device) {
    const d = this.get(user, device);
    if (!d) throw new Error(`unknown device ${device} of ${user}: fetch the user's devices first`);
    d.trusted = true;
    delete d.old;
    this.save();
  }

  /** Pin our own device (known locally, before the directory lists it). */
  pinSelf(user, device, ed25519, x25519) {
    const entry = (this.users[user] ??= { devices: {} });
    const prev = entry.devices[device];
    if (!prev || prev.ed25519 !== ed25519 || prev.x25519 !== x25519) {
      entry.devices[device] = { ed25519, x25519, name: prev?.name ?? '', trusted: true, listed: true };
      this.save();
    }
  }
}

function validKey(text) {
  try {
    return b64decode(text, 32).length === 32;
  } catch {
    return false;
  }
}
