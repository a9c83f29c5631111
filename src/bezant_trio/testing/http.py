"""A lean HTTP/1.1 client for the loops tests run against a daemon: trio sockets and h11.

Tests poll: pollers that long-poll every topic for a minute, ``_status`` read
every 20 ms until a condition holds. With httpx each request costs about
2 ms of CPU on the test's side, and each new ``httpx.AsyncClient`` 56 ms (its
TLS context), so a suite's loops spent more CPU asking than the daemons spent
answering (tests/README.md, "Lanes and time"). :class:`LeanClient` asks the
same over the same real sockets for about a fifth of that:

- plain ``http://`` only (the daemon under test listens on 127.0.0.1);
- keep-alive connections, pooled per host and port, a new one opened when
  none is idle; a connection the server ends (``Connection: close``, the
  ``keep_alive_max_requests`` of Hypercorn) is closed, not reused;
- a GET on a reused connection that fails before any byte of an answer
  (the server closed it while idle: a daemon restarted, an idle timeout) is
  sent once more on a new connection, as httpx does; every other failure,
  and a timeout, raises :class:`HTTPError`;
- the path and query percent-encoded as httpx encodes them (a space as
  ``%20``, an escape kept); query parameters as httpx writes them (``True``
  as ``true``, ``None`` as an empty value, lists as repeated keys).

:class:`Response` has the parts tests read: ``status_code``, ``headers``
(case-insensitive), ``content``, ``text``, :meth:`~Response.json` and
:meth:`~Response.raise_for_status`.

Knows nothing of the daemon; owns its sockets until :meth:`LeanClient.aclose`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import h11
import orjson
import trio

__all__ = ["HTTPError", "HTTPStatusError", "LeanClient", "Response"]

_READ_SIZE = 65536
#: Idle connections kept per host and port; more are closed when they come back.
MAX_IDLE = 64
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class HTTPError(Exception):
    """The exchange failed: refused, reset, closed before the answer ended, or too slow."""


class HTTPStatusError(HTTPError):
    """:meth:`Response.raise_for_status` on a 4xx or 5xx."""


class Headers(dict[str, str]):
    """Response headers, names lower-cased; looked up in any case."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


@dataclass(frozen=True, slots=True)
class Response:
    status_code: int
    headers: Headers
    content: bytes
    url: str

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return orjson.loads(self.content)

    def raise_for_status(self) -> Response:
        if self.status_code >= 400:
            raise HTTPStatusError(f"HTTP {self.status_code} for {self.url}: {self.text[:200]}")
        return self


def _param(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return "" if value is None else str(value)


#: What httpx leaves as it is in a path and in a query (RFC 3986 sub-delims, ':' and '@';
#: '%' so that an escape stays one).
_PATH_SAFE = "!$&'()*+,;=:@/%"
_QUERY_SAFE = _PATH_SAFE + "?"


def request_target(url: str, params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> str:
    """The request line's target for ``url`` and ``params``, encoded as httpx encodes it."""
    parts = urlsplit(url)
    target = quote(parts.path or "/", safe=_PATH_SAFE)
    query = quote(parts.query, safe=_QUERY_SAFE)
    if params:
        encoded = encode_params(params)
        query = f"{query}&{encoded}" if query else encoded
    return f"{target}?{query}" if query else target


def encode_params(params: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> str:
    """``params`` as a query string, the way httpx writes it."""
    items = params.items() if isinstance(params, Mapping) else params
    pairs: list[tuple[str, str]] = []
    for name, value in items:
        if isinstance(value, list | tuple):
            pairs += [(name, _param(v)) for v in value]
        else:
            pairs.append((name, _param(value)))
    return urlencode(pairs)


class _Connection:
    __slots__ = ("h11", "reused", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.reused = False

    def close(self) -> None:
        self.stream.socket.close()


class _Stale(Exception):
    """A reused connection ended before any byte of the answer."""


class LeanClient:
    """An HTTP/1.1 keep-alive client for ``http://`` URLs (see the module)."""

    def __init__(self, *, timeout: float = 30.0, headers: Mapping[str, str] | None = None) -> None:
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    async def __aenter__(self) -> LeanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.close_idle()
        self._closed = True
        await trio.lowlevel.checkpoint()

    def close_idle(self) -> None:
        """Close every idle connection (synchronous: safe in any ``finally``)."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def get(self, url: str, **options: Any) -> Response:
        return await self.request("GET", url, **options)

    async def post(self, url: str, **options: Any) -> Response:
        return await self.request("POST", url, **options)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> Response:
        if self._closed:
            raise RuntimeError("the client is closed")
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only http:// URLs: {url!r}")
        host, port = parts.hostname, parts.port or 80
        target = request_target(url, params)
        if json is not None:
            content = orjson.dumps(json)
        fields = [("host", parts.netloc), ("accept", "*/*")]
        fields += [(k.lower(), v) for k, v in {**self.headers, **(headers or {})}.items()]
        if json is not None:
            fields.append(("content-type", "application/json"))
        if content is not None or method not in _IDEMPOTENT:
            fields.append(("content-length", str(len(content or b""))))
        request = h11.Request(method=method, target=target, headers=fields)
        key = (host, port)
        try:
            with trio.fail_after(self.timeout if timeout is None else timeout):
                while True:
                    connection = await self._take(key)
                    try:
                        answer = await self._exchange(connection, request, content, url)
                    except _Stale:
                        connection.close()
                        if method in _IDEMPOTENT:
                            continue  # closed while idle: once more, on a new connection
                        raise HTTPError(f"{method} {url}: the connection closed") from None
                    except BaseException:
                        connection.close()
                        raise
                    self._give_back(key, connection)
                    return answer
        except trio.TooSlowError:
            raise HTTPError(
                f"{method} {url}: no answer within {timeout or self.timeout} s"
            ) from None

    async def _take(self, key: tuple[str, int]) -> _Connection:
        idle = self._idle.get(key)
        if idle:
            return idle.pop()
        try:
            stream = await trio.open_tcp_stream(*key)
        except OSError as exc:
            raise HTTPError(f"connect to {key[0]}:{key[1]}: {exc}") from None
        return _Connection(stream)

    def _give_back(self, key: tuple[str, int], connection: _Connection) -> None:
        conn = connection.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE:
                connection.reused = True
                idle.append(connection)
                return
        connection.close()

    async def _exchange(
        self, connection: _Connection, request: h11.Request, content: bytes | None, url: str
    ) -> Response:
        conn = connection.h11
        data = conn.send(request) or b""
        if content:
            data += conn.send(h11.Data(data=content)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        received_any = False
        try:
            await connection.stream.send_all(data)
            status = 0
            headers = Headers()
            body: list[bytes] = []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await connection.stream.receive_some(_READ_SIZE)
                    if not chunk and not received_any and connection.reused:
                        raise _Stale
                    received_any = received_any or bool(chunk)
                    conn.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = Headers(
                        (k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers
                    )
                elif isinstance(event, h11.Data):
                    body.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return Response(status, headers, b"".join(body), url)
                elif isinstance(event, h11.InformationalResponse):
                    continue
                else:  # ConnectionClosed, PAUSED
                    raise HTTPError(f"{request.method.decode()} {url}: the connection closed")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if not received_any and connection.reused:
                raise _Stale from None
            raise HTTPError(f"{request.method.decode()} {url}: {exc!r}") from None
        except h11.RemoteProtocolError as exc:
            if not received_any and connection.reused:
                raise _Stale from None
            raise HTTPError(f"{request.method.decode()} {url}: {exc}") from None
