// Errors the SDK raises. Server refusals carry the node's stable code (docs/protocol.md §12).

export class YanziError extends Error {
  /** @param {string} code stable code ('not_member', 'auth_failed', 'timeout', ...) */
  constructor(code, message, { status = 0, retryable = false } = {}) {
    super(message);
    this.name = 'YanziError';
    this.code = code;
    this.status = status;
    this.retryable = retryable;
  }
}

export class YanziTimeout extends YanziError {
  constructor(message) {
    super('timeout', message, { retryable: true });
    this.name = 'YanziTimeout';
  }
}

/** Codes worth retrying with the same cmid (the node stored nothing, or will answer the same). */
export const RETRYABLE_CODES = new Set(['unavailable', 'rate_limited', 'internal']);
