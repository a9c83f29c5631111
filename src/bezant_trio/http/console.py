"""The live console at ``GET /``: static files shipped in the package, under a strict CSP.

Owns the files in ``http/console/`` (the page, one stylesheet, one JavaScript
module, an icon) and how they are served: content types, caching and the
security headers. The files hold no data. The page reads the daemon's public
API like any other client (docs/console.md), sending the bearer token itself,
so these files, and only these, are served without the token:
:data:`PUBLIC_PATHS` is the exact list the app's token check lets through.

Caching: every file is answered ``Cache-Control: no-cache`` with a strong
``ETag`` (a hash of its bytes), and a matching ``If-None-Match`` gets a bodiless
304. A browser therefore asks again on every load and gets the files of the
daemon it is talking to: after an upgrade the page and its script can never
come from two versions, and no build step has to rename files by their hash.
The cost is one small conditional request per file, on a loopback or LAN hop.

Reads nothing of the hub; imports nothing from the rest of ``http`` but the
error envelope.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from quart import Response, request
from quart_trio import QuartTrio

from bezant_trio.http.errors import ApiError

__all__ = [
    "ASSET_NAMES",
    "CONTENT_SECURITY_POLICY",
    "PUBLIC_PATHS",
    "install_console",
]

#: The page's policy: nothing inline, nothing from another origin (everything
#: works offline), no framing, no form posts, and Trusted Types required, so
#: no string from the daemon (an order's fields come from the gateway) can
#: ever be parsed as HTML: the script writes text nodes only.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)

#: Asset file name -> content type; served at ``/console/<name>``.
_ASSETS = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
_PAGE = "index.html"
ASSET_NAMES = tuple(_ASSETS)
#: The only paths served without the token: the page and its assets, exactly.
PUBLIC_PATHS = frozenset({"/", *(f"/console/{name}" for name in _ASSETS)})

_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Older browsers ignore frame-ancestors; they know this one.
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _load(name: str, content_type: str) -> _File:
    body = resources.files(__package__).joinpath("console", name).read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:20]
    return _File(body, content_type, f'"{digest}"')


def install_console(app: QuartTrio) -> None:
    """Register ``GET /`` (the page) and ``GET /console/<name>`` (its assets) on ``app``.

    The files are read once, here, from the installed package.
    """
    page = _load(_PAGE, "text/html; charset=utf-8")
    assets = {name: _load(name, content_type) for name, content_type in _ASSETS.items()}

    @app.get("/")
    async def console_page() -> Response:
        return _serve(page)

    @app.get("/console/<name>")
    async def console_asset(name: str) -> Response:
        file = assets.get(name)
        if file is None:
            raise ApiError(404, "not_found", f"no console file {name[:40]!r}; the console is at /")
        return _serve(file)


def _serve(file: _File) -> Response:
    headers = {**_HEADERS, "etag": file.etag}
    if _matches(request.headers.get("if-none-match"), file.etag):
        return Response(b"", status=304, headers=headers)
    return Response(file.body, status=200, headers=headers, content_type=file.content_type)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's weak comparison for ``If-None-Match``: ``*`` or any listed tag."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags
