// The one place tweetnacl is imported (the bare specifier: npm, a bundler, the mini-program
// npm build, or an import map in a plain browser page — see README.md and nacl-global.js).
import nacl from 'tweetnacl';

export default nacl;
