"""The console's static files (``http/console.py``) on a real Hypercorn socket, no browser.

Content types, the CSP and the other security headers, caching (no-cache with
an ETag, 304 on a match), the token (the page and its assets load without it,
nothing else does), and files that need nothing from another origin.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
import trio

from bezant_trio.http.console import ASSET_NAMES, CONTENT_SECURITY_POLICY
from bezant_trio.http.context import HttpContext
from bezant_trio.store.hub import Hub

TOKEN = "console-unit-token"
FILES = {
    "/": "text/html; charset=utf-8",
    "/console/console.css": "text/css; charset=utf-8",
    "/console/console.js": "text/javascript; charset=utf-8",
    "/console/icon.svg": "image/svg+xml",
}
DATA_ROUTES = (
    "/events/_status",
    "/events/orders",
    "/events/orders/stream",
    "/events/gap?since=0",
    "/state/orders",
    "/state/marketdata",
    "/state/pnl",
    "/metrics",
    "/openapi.json",
    "/console/unknown.js",
    "/console/",
    "/index.html",
)


def test_every_asset_is_served_and_the_page_is_not_an_asset() -> None:
    assert {f"/console/{name}" for name in ASSET_NAMES} | {"/"} == set(FILES)


@pytest.mark.parametrize("path", sorted(FILES))
async def test_each_file_has_its_content_type_csp_and_no_cache(serve, client, hub, path) -> None:
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        r = await client.get(base + path)
    assert r.status_code == 200
    assert r.headers["content-type"] == FILES[path]
    assert r.headers["cache-control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{20}"', r.headers["etag"])
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.content


def test_the_csp_allows_nothing_inline_and_no_other_origin() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[name] == "'self'", name
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert directives["require-trusted-types-for"] == "'script'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert "http" not in CONTENT_SECURITY_POLICY and "*" not in CONTENT_SECURITY_POLICY


async def test_a_matching_if_none_match_gets_a_bodiless_304(serve, client, hub) -> None:
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        first = await client.get(f"{base}/console/console.js")
        again = await client.get(
            f"{base}/console/console.js", headers={"if-none-match": first.headers["etag"]}
        )
        listed = await client.get(
            f"{base}/", headers={"if-none-match": f'"other", W/{first.headers["etag"]}'}
        )
        page = await client.get(f"{base}/")
        stale = await client.get(f"{base}/", headers={"if-none-match": '"not-it"'})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["cache-control"] == "no-cache"
    # The page's tag is its own: the script's does not match it.
    assert listed.status_code == 200
    assert page.headers["etag"] != first.headers["etag"]
    assert stale.status_code == 200 and stale.content == page.content


async def test_head_of_the_page_has_the_headers_and_no_body(serve, client, hub) -> None:
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        r = await client.head(f"{base}/")
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert r.content == b""


async def test_an_unknown_console_file_is_a_404_envelope(serve, client, hub) -> None:
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        r = await client.get(f"{base}/console/secrets.txt")
        traversal = await client.get(f"{base}/console/..%2Fapp.py")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found" and "the console is at /" in r.json()["message"]
    assert traversal.status_code == 404


async def test_with_a_token_the_page_loads_and_no_data_route_answers_without_it(
    serve, client, hub: Hub
) -> None:
    hub.publish("orders", {"topic": "sor", "args": [{"orderId": 1, "status": "Submitted"}]})
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub, token=TOKEN))
        files = {path: await client.get(base + path) for path in FILES}
        refused = {path: await client.get(base + path) for path in DATA_ROUTES}
        wrong = await client.get(
            f"{base}/state/orders", headers={"authorization": "Bearer not-the-token"}
        )
        allowed = await client.get(
            f"{base}/state/orders", headers={"authorization": f"Bearer {TOKEN}"}
        )
    assert {path: r.status_code for path, r in files.items()} == dict.fromkeys(FILES, 200)
    assert {path: r.status_code for path, r in refused.items()} == dict.fromkeys(DATA_ROUTES, 401)
    assert all(r.json()["code"] == "unauthorized" for r in refused.values())
    assert wrong.status_code == 401
    assert allowed.status_code == 200 and allowed.json()["items"]["1"]["status"] == "Submitted"
    # The files themselves carry no data.
    for r in files.values():
        assert b"Submitted" not in r.content


async def test_status_gives_ring_capacity_and_last_event_time_per_topic(
    serve, client, hub: Hub
) -> None:
    event = hub.publish("orders", {"id": 1})
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        body = (await client.get(f"{base}/events/_status")).json()
    assert body["ring_capacity"]["orders"] == 1000
    assert body["last_event_at"]["orders"] == event.received_at


class _Markup(HTMLParser):
    """What the page's markup holds that a strict CSP would refuse or that leaves the origin."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script = False
        self.styles = 0
        self.style_attributes: list[str] = []
        self.handlers: list[str] = []
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True
        if tag == "style":
            self.styles += 1
        for name, value in attrs:
            if name == "style":
                self.style_attributes.append(tag)
            if name.startswith("on"):
                self.handlers.append(f"{tag}.{name}")
            if name in ("src", "href") and value is not None:
                self.urls.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


async def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files(
    serve, client, hub
) -> None:
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        html = (await client.get(f"{base}/")).text
        css = (await client.get(f"{base}/console/console.css")).text
        js = (await client.get(f"{base}/console/console.js")).text
    markup = _Markup()
    markup.feed(html)
    assert markup.scripts == [{"type": "module", "src": "/console/console.js"}]
    assert not markup.inline_script and markup.styles == 0
    assert markup.style_attributes == [] and markup.handlers == []
    assert all(url.startswith("/") and not url.startswith("//") for url in markup.urls)
    assert {"/console/console.css", "/console/console.js", "/console/icon.svg"} <= set(markup.urls)
    # Nothing from another origin: the page works offline.
    assert "url(" not in css and "@import" not in css
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", js)
    # Under Trusted Types these would throw: the script writes text nodes only.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, sink
    # EventSource cannot send the token header; the page must not fall back to it.
    assert "new EventSource" not in js


def test_the_demo_prints_the_console_url(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from bezant_trio.cli import _announce_demo
    from bezant_trio.wants import Wants

    daemon = SimpleNamespace(wants=Wants(10), http_url="http://127.0.0.1:8080")
    _announce_demo(daemon, "https://127.0.0.1:5000/v1/api", [265598])
    assert "console: open http://127.0.0.1:8080/ in a browser" in capsys.readouterr().out
