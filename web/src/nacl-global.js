// For plain browser pages without a bundler: load tweetnacl's nacl-fast.min.js with a classic
// <script> tag (it sets globalThis.nacl) and map the bare specifier "tweetnacl" to this file in
// an import map: {"imports": {"tweetnacl": "/path/to/web/src/nacl-global.js"}}.
const nacl = globalThis.nacl;
if (!nacl || !nacl.sign) {
  throw new Error('yanzi: load tweetnacl (nacl-fast.min.js) with a <script> tag before the SDK');
}
export default nacl;
