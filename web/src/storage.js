// Storage adapters: the Client needs only {get(key) -> string|null, set(key, string)}, sync or
// async. MemoryStorage is for tests and bots; localStorageAdapter and wxStorage wrap platforms.

export class MemoryStorage {
  constructor(initial = {}) {
    this.map = new Map(Object.entries(initial));
  }

  get(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }

  set(key, value) {
    this.map.set(key, String(value));
  }

  remove(key) {
    this.map.delete(key);
  }
}

/** Browser localStorage (synchronous; about 5 MB per origin). */
export function localStorageAdapter(ls = globalThis.localStorage) {
  return {
    get: (key) => ls.getItem(key),
    set: (key, value) => ls.setItem(key, value),
    remove: (key) => ls.removeItem(key),
  };
}

/** WeChat mini-program storage (wx.getStorageSync / wx.setStorageSync; 10 MB per user). */
export function wxStorage(wx) {
  return {
    get: (key) => {
      const v = wx.getStorageSync(key);
      return v === '' || v === undefined || v === null ? null : String(v);
    },
    set: (key, value) => wx.setStorageSync(key, value),
    remove: (key) => wx.removeStorageSync(key),
  };
}
