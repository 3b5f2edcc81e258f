// Yanzi JavaScript SDK — browser and WeChat mini-program client for a Yanzi node.
// See web/README.md for a quick start and web/index.d.ts for the typed API.

export { Client } from './client.js';
export { BrowserTransport, WxTransport, EntropyPool, TransportError } from './transport.js';
export { MemoryStorage, localStorageAdapter, wxStorage } from './storage.js';
export { YanziError, YanziTimeout } from './errors.js';
export { canonicalJson, canonicalBytes, compareCodePoints } from './canonical.js';
export { b64encode, b64decode } from './base64url.js';
export { sha256 } from './sha256.js';
export { utf8Encode, utf8Decode } from './utf8.js';
export { decodeOp, computeOpId, directConvId, compareOps, verifyContent, verifyNodeSignature, OpError } from './op.js';
export { encodeCursor, decodeCursor, CursorState } from './cursor.js';
export { MessageLog, ConversationState } from './fold.js';
export * as e2ee from './e2ee.js';
