"""The gateway's REST side: tickle, the brokerage session, accounts, the WebSocket URL, TLS.

Every call has a bounded timeout (``gateway.request_timeout``): the real
gateway, when it cannot reach IBKR, accepts the connection and never answers
(docs/gateway.md). Failures become :class:`GatewayError` subclasses whose
``state`` is the gateway state they imply (``gateway_unreachable``,
``needs_login``, ``session_down``, ``competing``) and whose message says, in
words, what is wrong and what to check. The session id never appears in a
message or a log line, and neither does a URL's userinfo or query.
"""

from __future__ import annotations

import errno
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bezant_trio.util import describe

__all__ = [
    "GatewayCompeting",
    "GatewayError",
    "GatewayNeedsLogin",
    "GatewaySession",
    "GatewaySessionDown",
    "GatewayTLSError",
    "GatewayUnreachable",
    "SessionStatus",
    "display_url",
]


class GatewayError(Exception):
    """Base error of everything that talks to the gateway.

    ``state`` is the gateway state the failure implies (``_status.state``),
    ``reason`` a short fixed label for metrics.
    """

    state = "gateway_unreachable"
    reason = "error"


class GatewayUnreachable(GatewayError):
    """The gateway did not answer in time, refused, or answered something unusable."""

    def __init__(self, message: str, *, reason: str = "unreachable") -> None:
        super().__init__(message)
        self.reason = reason


class GatewayTLSError(GatewayUnreachable):
    """TLS verification of the gateway failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="tls")


class GatewayNeedsLogin(GatewayError):
    """Nobody is logged in at the gateway: a person must log in at its web page."""

    state = "needs_login"
    reason = "needs_login"


class GatewaySessionDown(GatewayError):
    """The gateway is logged in but its brokerage session is not authenticated."""

    state = "session_down"
    reason = "session_down"


class GatewayCompeting(GatewayError):
    """Another login (TWS, the mobile app, another gateway) holds the brokerage session."""

    state = "competing"
    reason = "competing"


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """What ``/tickle`` (or ``ssodh/init``) said of the session; None where it did not say."""

    session: str | None
    authenticated: bool | None
    competing: bool | None
    connected: bool | None
    server_name: str | None = None
    server_version: str | None = None
    message: str | None = None


def display_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: safe for a message or a log line."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class GatewaySession:
    """Talks to the gateway's REST API at ``base_url`` and knows how to reach ``{base}/ws``."""

    def __init__(self, base_url: str, *, verify_tls: bool, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.verify_tls = verify_tls
        self.timeout = timeout
        self._where = display_url(self.base_url)
        # A plain-HTTP gateway (the simulator, a gateway behind a local proxy)
        # has no certificate to check: no CA bundle (56 ms of CPU to load).
        self._client = httpx.AsyncClient(
            verify=self.ssl_context() or False, timeout=timeout, http2=False
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def ws_url(self) -> str:
        """``wss://host:port/v1/api/ws`` (``ws://`` for a plain-HTTP gateway)."""
        parts = urllib.parse.urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/ws", "", ""))

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for both REST and WebSocket (``None`` for http)."""
        if not self.base_url.startswith("https"):
            return None
        context = ssl.create_default_context()
        if not self.verify_tls:
            # The gateway ships a self-signed certificate for localhost.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @staticmethod
    def cookie_header(session: str) -> tuple[bytes, bytes]:
        """The ``Cookie: api={"session": ...}`` header the WebSocket handshake needs."""
        value = urllib.parse.quote(orjson.dumps({"session": session}).decode(), safe="")
        return (b"cookie", f"api={value}".encode())

    # ----------------------------------------------------------------- calls

    async def tickle(self) -> SessionStatus:
        """``POST /tickle``: the session id and the brokerage session's state.

        Raises :class:`GatewayUnreachable`, :class:`GatewayTLSError` or
        :class:`GatewayNeedsLogin`; a session that is down or competing is
        reported in the answer, not raised, so the caller can recover it.
        """
        body = await self._call("POST", "/tickle")
        session = body.get("session")
        if not isinstance(session, str) or not session:
            raise GatewayUnreachable(
                f"POST /tickle at {self._where} answered without a session id; "
                "is this a Client Portal gateway?",
                reason="bad_answer",
            )
        iserver = body.get("iserver")
        auth = iserver.get("authStatus") if isinstance(iserver, dict) else None
        return _status(auth if isinstance(auth, dict) else {}, session=session)

    async def init_brokerage_session(self, *, compete: bool) -> SessionStatus:
        """``POST /iserver/auth/ssodh/init``: ask the gateway to open the brokerage session.

        ``compete`` takes the session from another login; without it a
        competing login keeps it.
        """
        body = await self._call(
            "POST", "/iserver/auth/ssodh/init", json={"publish": True, "compete": compete}
        )
        return _status(body, session=None)

    async def accounts(self) -> list[str]:
        """``GET /iserver/accounts``: the account ids. The orders stream stays silent without it."""
        body = await self._call("GET", "/iserver/accounts")
        accounts = body.get("accounts")
        if not isinstance(accounts, list):
            return []
        return [str(account) for account in accounts if isinstance(account, str) and account]

    async def get_json(self, path: str, *, params: dict[str, str] | None = None) -> Any:
        """``GET path`` (relative to the base URL): the decoded JSON body, whatever its shape."""
        return await self._call("GET", path, params=params, want_object=False)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        want_object: bool = True,
    ) -> Any:
        what = f"{method} {path}"
        try:
            response = await self._client.request(
                method, f"{self.base_url}{path}", json=json, params=params
            )
        except httpx.TimeoutException:
            raise GatewayUnreachable(
                f"the gateway at {self._where} did not answer {what} within {self.timeout:g} s: "
                "it cannot reach IBKR (network down, IBKR's nightly reset) or is still starting",
                reason="timeout",
            ) from None
        except httpx.ConnectError as exc:
            if _is_cert_failure(exc):
                raise GatewayTLSError(
                    f"TLS verification of {self._where} failed (the gateway's certificate is "
                    "self-signed?): set gateway.verify_tls: false or install a trusted certificate"
                ) from None
            raise GatewayUnreachable(
                f"cannot reach the gateway at {self._where}: {_reason(exc)}; is it running?",
                reason="refused",
            ) from None
        except httpx.HTTPError as exc:
            raise GatewayUnreachable(
                f"{what} to {self._where} failed: {_reason(exc)}", reason="network"
            ) from None
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        to_login = "sso/login" in response.headers.get("location", "").lower()
        if status == 401 or to_login or (status == 200 and "text/html" in content_type):
            raise GatewayNeedsLogin(
                f"{what} answered {status}: nobody is logged in at the gateway; "
                f"log in at {display_url(self.base_url.split('/v1/')[0])}"
            )
        if status != 200:
            raise GatewayUnreachable(
                f"{what} at {self._where} answered HTTP {status}", reason=f"http_{status // 100}xx"
            )
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise GatewayUnreachable(
                f"{what} at {self._where} answered something that is not JSON", reason="bad_answer"
            ) from None
        if want_object and not isinstance(body, dict):
            raise GatewayUnreachable(
                f"{what} at {self._where} answered JSON that is not an object", reason="bad_answer"
            )
        return body


def _status(auth: dict[str, Any], *, session: str | None) -> SessionStatus:
    info = auth.get("serverInfo")
    info = info if isinstance(info, dict) else {}
    message = auth.get("message")
    return SessionStatus(
        session=session,
        authenticated=_flag(auth.get("authenticated")),
        competing=_flag(auth.get("competing")),
        connected=_flag(auth.get("connected")),
        server_name=_text(info.get("serverName")),
        server_version=_text(info.get("serverVersion")),
        message=_text(message) or None,
    )


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _reason(exc: BaseException) -> str:
    """A transport error in words: the OS's reason when one is in the chain."""
    for cause in _chain(exc):
        if (
            isinstance(cause, ConnectionRefusedError)
            or getattr(cause, "errno", None) == errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
    return describe(exc)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, and the members of exception groups among them."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending and len(seen) < 20:
        item = pending.pop(0)
        if item in seen:
            continue
        seen.append(item)
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        for linked in (item.__cause__, item.__context__):
            if linked is not None:
                pending.append(linked)
    return seen


def _is_cert_failure(exc: BaseException) -> bool:
    """Whether a connect error was a TLS certificate verification failure."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
