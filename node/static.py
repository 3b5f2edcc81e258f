"""The web chat page: `/` (web/app/index.html), `/app/…` (its assets), `/sdk/…` (the JS SDK).

No build step: the browser loads the SDK's ES modules from web/src as they are, and an import map
in index.html points the bare specifier `tweetnacl` at `/sdk/tweetnacl.js`. tweetnacl ships a
classic script (`nacl-fast.js` writes to `module.exports` or `self.nacl`), so that one URL is an
ES-module wrapper built here around it. Its source is web/node_modules/tweetnacl/nacl-fast.js when
`npm ci` has run (the exact version web/package-lock.json pins and the SDK's Node tests used), and
otherwise the vendored copy web/app/vendor/nacl-fast.js (tweetnacl 1.0.3, public domain), so a
node serves a working page from a plain checkout without npm.

The files are read from the source tree (`web/` next to this package), so the page exists in a
checkout or an editable install; without web/ the routes answer 404 `not_found`.

Only files under the three roots with a known suffix are served (no listings, no dotfiles, no
`..`). The page gets a Content-Security-Policy that allows scripts from this origin plus the
inline import map by its hash: the page renders other people's text, and an injected script
could read every decrypted message.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from aiohttp import web

from node.errors import ClientError

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",  # RFC 9239: the one JavaScript media type
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_IMPORT_MAP = re.compile(rb'<script type="importmap">(.*?)</script>', re.DOTALL)
NACL_EXPORTS = (
    "randomBytes",
    "secretbox",
    "scalarMult",
    "box",
    "sign",
    "hash",
    "verify",
    "setPRNG",
    "lowlevel",
)


def _not_found(what: str) -> ClientError:
    return ClientError("not_found", f"no such file: {what}")


class StaticSite:
    """Serves the page and the SDK from `root` (the repository's web/ folder)."""

    def __init__(self, root: Path = WEB_ROOT) -> None:
        self.app_dir = root / "app"
        self.sdk_dir = root / "src"
        self.nacl_sources = (
            root / "node_modules" / "tweetnacl" / "nacl-fast.js",
            self.app_dir / "vendor" / "nacl-fast.js",
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/sdk/tweetnacl.js", self.tweetnacl),
            web.get("/app/{path:.+}", self.asset),
            web.get("/sdk/{path:.+}", self.sdk),
        ]

    async def index(self, request: web.Request) -> web.Response:
        page = self.app_dir / "index.html"
        if not page.is_file():
            raise _not_found("web/app/index.html (the node runs without its source tree)")
        html = page.read_bytes()
        response = _response(html, ".html")
        response.headers["Content-Security-Policy"] = page_policy(html)
        return response

    async def asset(self, request: web.Request) -> web.Response:
        return _file(self.app_dir, request.match_info["path"])

    async def sdk(self, request: web.Request) -> web.Response:
        return _file(self.sdk_dir, request.match_info["path"])

    async def tweetnacl(self, request: web.Request) -> web.Response:
        for source in self.nacl_sources:
            if source.is_file():
                return _response(nacl_module(source.read_bytes()), ".js")
        raise _not_found("tweetnacl (neither web/node_modules nor web/app/vendor has nacl-fast.js)")


def nacl_module(script: bytes) -> bytes:
    """Wrap tweetnacl's browser build as an ES module with a default and named exports.

    The script picks `module.exports` when a `module` is in scope; a module-local one keeps it
    off `self` and lets us export the result."""
    names = ", ".join(NACL_EXPORTS)
    return (
        b"// tweetnacl as an ES module, wrapped by the Yanzi node (node/static.py)\n"
        b"const module = { exports: {} };\n"
        + script
        + b"\nconst nacl = module.exports;\nexport default nacl;\n"
        + f"export const {{ {names} }} = nacl;\n".encode()
    )


def page_policy(html: bytes) -> str:
    """CSP for the page: same-origin everything, plus the inline import map by its hash."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode() + "'"
        for m in _IMPORT_MAP.finditer(html)
    )
    return (
        "default-src 'self'; "
        f"script-src 'self' {hashes}; "
        "connect-src 'self'; "
        "img-src 'self' data:; "
        "style-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _file(root: Path, path: str) -> web.Response:
    parts = path.split("/")
    if not all(_NAME.fullmatch(part) for part in parts):
        raise _not_found(path)
    target = root.joinpath(*parts)
    suffix = target.suffix
    if suffix not in CONTENT_TYPES or not target.is_file():
        raise _not_found(path)
    # Resolve symlinks too: only files really under the root leave the node.
    if not target.resolve().is_relative_to(root.resolve()):
        raise _not_found(path)
    return _response(target.read_bytes(), suffix)


def _response(body: bytes, suffix: str) -> web.Response:
    content_type = CONTENT_TYPES[suffix]
    text = not content_type.startswith("image/") or suffix == ".svg"
    response = web.Response(body=body, content_type=content_type, charset="utf-8" if text else None)
    # Always revalidate: a node upgrade must never leave a browser on an old SDK module.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
