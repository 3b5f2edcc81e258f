// TypeScript declarations for the Yanzi JavaScript SDK (web/src/index.js).
// The public API is stable: additions only. See web/README.md for a quick start.

/** Where the SDK keeps its device keys, token, cursor, chains and TOFU pins. Sync or async. */
export interface Storage {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
  remove?(key: string): void | Promise<void>;
}

export interface SocketHandlers {
  onOpen(): void;
  onMessage(text: string): void;
  onClose(code: number, reason: string): void;
  onError(error: Error): void;
}

export interface SocketHandle {
  send(text: string): void;
  close(code?: number, reason?: string): void;
}

/** How the client reaches a node: a WebSocket and HTTP requests. */
export interface Transport {
  openSocket(url: string, handlers: SocketHandlers): SocketHandle;
  request(method: string, url: string, headers: Record<string, string>, bodyText?: string): Promise<{ status: number; text: string }>;
  /** Optional: resolves once `minBytes` random bytes are available (WxTransport's entropy pool). */
  ready?(minBytes?: number): Promise<void>;
}

export class BrowserTransport implements Transport {
  /** `WebSocket` and `fetch` default to the globals; inject them under Node.js (e.g. the `ws` package). */
  constructor(options?: { WebSocket?: any; fetch?: typeof fetch });
  openSocket(url: string, handlers: SocketHandlers): SocketHandle;
  request(method: string, url: string, headers: Record<string, string>, bodyText?: string): Promise<{ status: number; text: string }>;
}

/** The subset of the WeChat mini-program `wx` object the transport uses. */
export interface WxLike {
  connectSocket(options: { url: string; fail?: (err: { errMsg: string }) => void }): {
    onOpen(fn: (res?: unknown) => void): void;
    onMessage(fn: (res: { data: string | ArrayBuffer }) => void): void;
    onClose(fn: (res: { code: number; reason: string }) => void): void;
    onError(fn: (err: { errMsg: string }) => void): void;
    send(options: { data: string }): void;
    close(options: { code?: number; reason?: string }): void;
  };
  request(options: {
    url: string;
    method: string;
    header?: Record<string, string>;
    data?: string;
    dataType?: string;
    responseType?: string;
    success(res: { statusCode: number; data: unknown }): void;
    fail(err: { errMsg: string }): void;
  }): unknown;
  getRandomValues(options: { length: number; success(res: { randomValues: ArrayBuffer }): void; fail?(err: { errMsg: string }): void }): void;
  getStorageSync?(key: string): unknown;
  setStorageSync?(key: string, value: string): void;
  removeStorageSync?(key: string): void;
}

/**
 * WeChat mini-program transport: wx.connectSocket (one socket at a time) and wx.request; installs
 * an entropy pool filled from the asynchronous wx.getRandomValues as tweetnacl's PRNG
 * (drawing from an empty pool throws: await `ready()` first; the Client does).
 */
export class WxTransport implements Transport {
  constructor(wx: WxLike, options?: { installPrng?: boolean; poolSize?: number });
  ready(minBytes?: number): Promise<void>;
  openSocket(url: string, handlers: SocketHandlers): SocketHandle;
  request(method: string, url: string, headers: Record<string, string>, bodyText?: string): Promise<{ status: number; text: string }>;
}

export class EntropyPool {
  constructor(getRandomValues: (length: number) => Promise<Uint8Array>, options?: { size?: number; lowWater?: number });
  readonly available: number;
  ready(min?: number): Promise<void>;
  take(out: Uint8Array): void;
}

export class TransportError extends Error {}

export class MemoryStorage implements Storage {
  constructor(initial?: Record<string, string>);
  get(key: string): string | null;
  set(key: string, value: string): void;
  remove(key: string): void;
}
/** Browser localStorage as a Storage. */
export function localStorageAdapter(ls?: { getItem(k: string): string | null; setItem(k: string, v: string): void; removeItem(k: string): void }): Storage;
/** wx.getStorageSync / wx.setStorageSync as a Storage. */
export function wxStorage(wx: WxLike): Storage;

/** A node refusal or a client-side failure; `code` is stable (docs/protocol.md §12 plus 'network', 'timeout', 'closed', 'not_logged_in'). */
export class YanziError extends Error {
  code: string;
  status: number;
  retryable: boolean;
}
export class YanziTimeout extends YanziError {}

export interface ClientOptions {
  /** The node's base URL, e.g. "https://chat.example.com" (WebSocket URL derived: ws(s)://…/v1/ws). */
  baseUrl: string;
  storage: Storage;
  /** Defaults to `new BrowserTransport()`. */
  transport?: Transport;
  /** End-to-end encryption of message bodies (docs/e2ee.md). Default true. */
  e2ee?: boolean;
  deviceName?: string;
  /** Key prefix in storage. Default "yanzi:". */
  storagePrefix?: string;
  backoffBaseMs?: number; // default 500: reconnect delay = uniform(0, min(max, base · 2^attempt))
  backoffMaxMs?: number; // default 30000
  readyTimeoutMs?: number; // default 10000
  requestTimeoutMs?: number; // default 15000
  sendTimeoutMs?: number; // default 30000
  pingIntervalMs?: number; // default 25000
  pongTimeoutMs?: number; // default 10000
  syncPage?: number; // default 500
  deviceRefreshMs?: number; // default 30000
  keyRequestDelayMs?: number; // default 3000
  keyRequestRetryMs?: number; // default 30000
  now?: () => number;
  random?: () => number;
}

export interface Ack {
  opId: string;
  conv: string;
  hlc: [number, number];
  dot: [string, number];
  cmid: string;
}

export interface MessageView {
  conv: string;
  opId: string;
  author: string;
  device: string;
  /** Decrypted text; '' once deleted; null while its key is missing (`pending`) or if it failed (`error`). */
  text: string | null;
  edited: boolean;
  editedBy: string | null;
  deleted: boolean;
  /** reaction key -> users (sorted, unique) */
  reactions: Record<string, string[]>;
  hlc: [number, number];
  dot: [string, number];
  attrs: Record<string, unknown>;
  /** The op carrying the current body is signed by a trusted key of its device. */
  verified: boolean;
  /** The body was end-to-end encrypted. */
  encrypted: boolean;
  /** Waiting for the chain key (a key share or the answer to a key request). */
  pending: boolean;
  /** Why the body could not be read: 'tampered', 'malformed', 'before_share', 'replay', … */
  error: string | null;
}

export interface ConversationSummary {
  conv: string;
  type: 'direct' | 'group';
  /** settings.title, or the other user of a direct conversation */
  title: string;
  members: string[];
  roles: Record<string, 'owner' | 'admin' | 'member'>;
  lastMessage: MessageView | null;
  unread: number;
  readMarker: [number, number, string, string] | null;
}

export interface WireOp {
  content: { v: 1; conv: string; kind: string; author: string; device: string; target: string; attrs: Record<string, unknown>; body: string };
  hlc: [number, number];
  dot: [string, number];
  dsig: string;
  nsig: string;
  opId: string;
}

export interface ClientEvents {
  message: { conv: string; message: MessageView };
  op: { conv: string; op: WireOp; live: boolean; backfill: boolean };
  typing: { conv: string; user: string; active: boolean };
  presence: { user: string; online: boolean };
  read: { conv: string; user: string; opId: string };
  state: { connected: boolean; reconnecting: boolean };
  keyChanged: { user: string; device: string; old: string; new: string };
  deviceAdded: { user: string; device: string; ed25519: string };
  replay: { conv: string; opId: string; original: string; user: string; device: string };
  caughtUp: Record<string, never>;
  error: Error;
}

export class Client {
  constructor(options: ClientOptions);
  readonly connected: boolean;
  readonly user: string | null;
  readonly device: string | null;
  /** A copy of the sync cursor: {conv: {origin node: highest contiguous seq}}. */
  readonly syncCursor: Record<string, Record<string, number>>;

  on<E extends keyof ClientEvents>(event: E, fn: (data: ClientEvents[E]) => void): this;
  off<E extends keyof ClientEvents>(event: E, fn: (data: ClientEvents[E]) => void): this;

  register(username: string, password: string): Promise<void>;
  /** Device keys are generated once and kept in storage; the token is persisted (no login per reload). */
  login(username: string, password: string, options?: { deviceName?: string }): Promise<{ user: string; device: string; expiresMs: number | null }>;
  logout(): Promise<void>;

  /** Connect, authenticate, catch up over HTTP; then stay live, reconnecting by itself, until close(). */
  connect(): Promise<void>;
  close(): Promise<void>;
  /** Mini-program hooks: onHide closes the socket (no reconnect); onShow reconnects and catches up. */
  onShow(): Promise<void>;
  onHide(): void;

  direct(user: string): Promise<string>;
  createGroup(title: string | null, members: string[]): Promise<string>;
  addMember(conv: string, user: string, role?: 'member' | 'admin' | 'owner'): Promise<Ack>;
  removeMember(conv: string, user: string): Promise<Ack>;

  send(conv: string, text: string): Promise<Ack>;
  edit(conv: string, opId: string, text: string): Promise<Ack>;
  delete(conv: string, opId: string): Promise<Ack>;
  react(conv: string, opId: string, key: string): Promise<Ack>;
  unreact(conv: string, opId: string, key: string): Promise<Ack>;
  markRead(conv: string, opId: string): Promise<void>;
  typing(conv: string, active: boolean): Promise<boolean>;

  /** The decrypted local view, oldest first, in total order (l, c, origin, op id). */
  messages(conv: string): MessageView[];
  /** Loads the conversation's whole log once per session, then pages backwards locally. */
  history(conv: string, options?: { before?: string | null; limit?: number }): Promise<{ messages: MessageView[]; more: boolean }>;
  conversations(): Promise<ConversationSummary[]>;
  /** Unread count from the local view and the last read marker seen live. */
  unread(conv: string): number;

  /** Refresh and list a user's devices (TOFU: may raise keyChanged / deviceAdded). */
  devices(user: string): Promise<Array<{ device: string; name: string; ed25519: string; trusted: boolean }>>;
  /** 30 digits in 6 groups; both users get the same number. Fetch the user's devices first (direct() or devices()). */
  safetyNumber(user: string): string;
  /** Accept a device's current key after keyChanged. */
  trust(user: string, device: string): Promise<void>;
}

// -- helpers ------------------------------------------------------------------------------------

export function canonicalJson(value: unknown): string;
export function canonicalBytes(value: unknown): Uint8Array;
export function compareCodePoints(a: string, b: string): number;
export function b64encode(bytes: Uint8Array): string;
export function b64decode(text: string, maxBytes?: number): Uint8Array;
export function sha256(data: Uint8Array): Uint8Array;
export function utf8Encode(text: string): Uint8Array;
export function utf8Decode(bytes: Uint8Array): string;
export function decodeOp(raw: unknown): WireOp;
export function computeOpId(header: { content: unknown; hlc: [number, number]; dot: [string, number] }): string;
export function directConvId(a: string, b: string): string;
export function compareOps(a: WireOp, b: WireOp): number;
export function verifyContent(content: WireOp['content'], dsig: string, publicKey: Uint8Array): boolean;
export function verifyNodeSignature(op: WireOp): boolean;
export class OpError extends Error {}
export function encodeCursor(cursor: Record<string, Record<string, number>>): string;
export function decodeCursor(text: string): Record<string, Record<string, number>>;
export class CursorState {
  constructor(cursor?: Record<string, Record<string, number>>);
  add(conv: string, origin: string, seq: number): { new: boolean; moved: boolean; gap: boolean };
  snapshot(): Record<string, Record<string, number>>;
  encoded(options?: { without?: string }): string;
}
export class MessageLog {
  constructor(conv: string);
  apply(op: WireOp): 'new' | 'parked' | 'duplicate' | 'equivocation';
  /** The same JSON as Python's ConversationView.to_json(). */
  viewJson(): unknown;
}
export class ConversationState {}
export const e2ee: {
  CHAIN_ALG: 'yz.chain.v1';
  SHARE_ALG: 'yz.share.v1';
  KEYREQ_ALG: 'yz.keyreq.v1';
  CHAIN_LENGTH: number;
  safetyNumber(userA: string, keysA: string[], userB: string, keysB: string[]): string;
  [name: string]: unknown;
};
