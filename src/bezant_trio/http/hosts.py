"""Which requests a daemon without a token answers: the ``Host`` and browser-origin check.

Without ``http.token`` the daemon trusts whoever can connect, which on the
default loopback bind means this machine. A web page the user opens can
still reach it: by DNS rebinding (``attacker.example`` resolves to
127.0.0.1 after the page loaded, so the browser lets the page read the
answers) or by plain cross-site requests (an ``<img>`` that subscribes a
conid). Browsers always say where a request comes from, and neither attack
can change it: the ``Host`` names the attacker's domain, and ``Origin`` or
``Sec-Fetch-Site`` say the request is cross-site. So without a token:

- ``Host`` must be ``localhost``, ``127.0.0.1``, ``[::1]``, the bind host, or
  a name in ``http.allowed_hosts`` (any port; ``*`` there turns the name
  checks off, the ``Sec-Fetch-Site`` check stays). A request without ``Host``
  (HTTP/1.0; no browser sends one) passes.
- ``Origin``, when sent, must name one of those hosts (``null`` does not).
- ``Sec-Fetch-Site``, when sent, must be ``same-origin`` or ``none`` (the
  user typed the URL).

Anything else is ``403 host_not_allowed``. With a token none of this applies:
a page cannot know the token, and a browser sends no ``Authorization`` it was
not given. The check runs where the token check runs, in Quart's
``before_request`` and in the fast path, with the same answer (see
``tests/http/test_http_fastpath.py``). ``/health`` is exempt, as from the
token. Pure functions of the request's headers; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["HOST_NOT_ALLOWED_MESSAGE", "LOOPBACK_NAMES", "HostPolicy"]

#: Always allowed without a token (lower case, IPv6 in brackets as in a Host header).
LOOPBACK_NAMES = frozenset(("localhost", "127.0.0.1", "[::1]"))
#: What a refused request is told (code ``host_not_allowed``, status 403).
HOST_NOT_ALLOWED_MESSAGE = (
    "without http.token this daemon answers only requests for localhost, 127.0.0.1 or [::1] "
    "(browsers' cross-site requests are refused); add the name you use to http.allowed_hosts, "
    "or set http.token"
)
_FETCH_SITES_ALLOWED = frozenset((b"same-origin", b"none"))


@dataclass(frozen=True)
class HostPolicy:
    """The names a request may give in ``Host`` and ``Origin`` when there is no token."""

    #: Lower-case host names (no port); IPv6 literals in brackets.
    names: frozenset[str] = LOOPBACK_NAMES
    #: ``http.allowed_hosts`` holds ``*``: every name passes (``Sec-Fetch-Site`` still counts).
    any_host: bool = False

    @classmethod
    def build(
        cls, allowed_hosts: Iterable[str] = (), *, bind_host: str | None = None
    ) -> HostPolicy:
        """The loopback names, the bind host and ``allowed_hosts`` (``*`` allows any)."""
        names = set(LOOPBACK_NAMES)
        extra = [h.strip().lower() for h in allowed_hosts]
        if bind_host:
            extra.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
        any_host = "*" in extra
        names.update(h for h in extra if h and h != "*")
        return cls(frozenset(names), any_host)

    def allows(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether an ASGI request with these (lower-case) headers may be answered.

        The first ``Host``, ``Origin`` and ``Sec-Fetch-Site`` count, as Quart
        reads the first of each.
        """
        host = origin = fetch_site = None
        for name, value in headers:
            if name == b"host":
                if host is None:
                    host = value
            elif name == b"origin":
                if origin is None:
                    origin = value
            elif name == b"sec-fetch-site" and fetch_site is None:
                fetch_site = value
        if host and not self._host_ok(host):
            return False
        if origin is not None and not self._origin_ok(origin):
            return False
        return fetch_site is None or fetch_site.strip().lower() in _FETCH_SITES_ALLOWED

    def _host_ok(self, value: bytes) -> bool:
        if self.any_host:
            return True
        return _host_name(value) in self.names

    def _origin_ok(self, value: bytes) -> bool:
        # "scheme://host[:port]" (RFC 6454); "null" and anything else is refused.
        scheme, sep, rest = value.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https") or b"/" in rest or not rest:
            return False
        return self._host_ok(rest)


def _host_name(value: bytes) -> str | None:
    """The lower-case name of a ``Host`` value without its port, or None if malformed."""
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _is_port(text[end + 1 :])):
            return None
        return text[: end + 1]
    name, sep, port = text.partition(":")
    if sep and not port.isdigit():
        return None
    return name


def _is_port(tail: str) -> bool:
    return tail.startswith(":") and tail[1:].isdigit()
