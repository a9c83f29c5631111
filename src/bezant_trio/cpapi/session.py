"""The gateway's REST side: tickle, session cookie, WebSocket URL, TLS options.

Errors are turned into :class:`GatewayError` subclasses whose messages say
what to check; the session id never appears in a message or a log line.
"""

from __future__ import annotations

import ssl
import urllib.parse

import httpx
import orjson

__all__ = [
    "GatewayAuthError",
    "GatewayError",
    "GatewaySession",
    "GatewayTLSError",
    "GatewayUnavailable",
]


class GatewayError(Exception):
    """Base error of everything that talks to the gateway."""


class GatewayUnavailable(GatewayError):
    """The gateway did not answer (down, refused, timed out, bad answer)."""


class GatewayAuthError(GatewayError):
    """The gateway answered but its brokerage session is not authenticated."""


class GatewayTLSError(GatewayError):
    """TLS verification of the gateway failed."""


class GatewaySession:
    """Talks to ``{base}/tickle`` and knows how to reach ``{base}/ws``."""

    def __init__(self, base_url: str, *, verify_tls: bool, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.verify_tls = verify_tls
        self._client = httpx.AsyncClient(
            verify=self.ssl_context() or True, timeout=timeout, http2=False
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

    async def tickle(self) -> str:
        """``POST /tickle``; returns the session id or raises a :class:`GatewayError`."""
        url = f"{self.base_url}/tickle"
        try:
            response = await self._client.post(url)
        except httpx.ConnectError as exc:
            if _is_cert_failure(exc):
                raise GatewayTLSError(
                    f"TLS verification of {self.base_url} failed (the gateway's certificate is "
                    "self-signed?): set gateway.verify_tls: false or install a trusted certificate"
                ) from None
            raise GatewayUnavailable(
                f"cannot reach the gateway at {self.base_url}: is it running? ({_short(exc)})"
            ) from None
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(
                f"POST /tickle to {self.base_url} failed: {_short(exc)}"
            ) from None
        if response.status_code == 401:
            raise GatewayAuthError(
                "tickle 401: the gateway is not logged in; log in at the gateway's web page"
            )
        if response.status_code != 200:
            raise GatewayUnavailable(f"tickle answered HTTP {response.status_code}")
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise GatewayUnavailable("tickle answered something that is not JSON") from None
        session = body.get("session") if isinstance(body, dict) else None
        if not isinstance(session, str) or not session:
            raise GatewayUnavailable("tickle answered without a session id")
        auth = (body.get("iserver") or {}).get("authStatus") or {}
        if auth.get("authenticated") is False:
            raise GatewayAuthError(
                "tickle: the brokerage session is not authenticated; log in at the gateway"
            )
        return session


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
