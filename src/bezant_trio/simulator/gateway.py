"""The fake CPAPI gateway: one loopback port serving REST, the WebSocket and /sim controls.

:class:`GatewaySimulator` owns the listener, every connection task, the
background stream generator and the fault timers, all inside one nursery:
nothing it starts outlives :meth:`GatewaySimulator.run`. It is assembled from
parts with one job each: ``core.py`` (connections, change signals, timers),
``streams.py`` (sequence channels and the frames generated from them),
``faults.py`` (drops, stalls, restarts, bad frames, gateway states),
``connection.py`` (one WebSocket), ``commands.py`` (what clients send),
``frames.py`` (what the gateway sends), ``rest.py`` (the REST subset),
``truth.py`` (what the account holds) and ``replay.py`` (recorded sessions).
Faults and event emission are plain async methods for in-process tests;
``routes.py`` exposes the same operations over HTTP under ``/sim/...`` for
out-of-process users. Defaults follow the frame corpus (``corpus/``).

This module must not import from ``bezant_trio.cpapi``: the simulator is the
other side of the wire, and sharing code would hide protocol mistakes.
"""

from __future__ import annotations

import logging
import math
import ssl
import tempfile
import urllib.parse
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import trio
import trustme
from wsproto.connection import Connection as WsProtocol

from bezant_trio.simulator import commands
from bezant_trio.simulator.connection import WsConnection
from bezant_trio.simulator.errors import SimulatorError, SimulatorTimeout
from bezant_trio.simulator.faults import DROP_MODES, FaultsMixin
from bezant_trio.simulator.httpserver import Request, Response, serve_http_connection
from bezant_trio.simulator.replay import ReplaySession
from bezant_trio.simulator.routes import dispatch
from bezant_trio.simulator.streams import STREAM_CHANNELS, BurstResult, StreamsMixin

__all__ = [
    "DROP_MODES",
    "STREAM_CHANNELS",
    "BurstResult",
    "GatewaySimulator",
    "SimulatorError",
    "SimulatorTimeout",
    "open_simulator",
]

logger = logging.getLogger(__name__)

WS_PATH = "/v1/api/ws"


class GatewaySimulator(StreamsMixin, FaultsMixin):
    """A fake Client Portal gateway on one loopback port.

    Start it with ``await nursery.start(sim.run)`` (or :func:`open_simulator`);
    ``started`` hands back the simulator once it is listening. All fault and
    emit methods must be called from the same Trio run.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        ready_delay: float = 0.05,
        heartbeat_interval: float = 10.0,
        rates: Mapping[str, float] | None = None,
        binary_frames: bool = False,
        queue_size: int = 1024,
        send_timeout: float = 5.0,
        close_timeout: float = 2.0,
        command_log_size: int = 200,
        ca_pem_path: str | Path | None = None,
        marketdata_expiry: float | None = 600.0,
        duplicate_first_quote: bool = False,
        replay: ReplaySession | None = None,
    ) -> None:
        super().__init__(
            queue_size=queue_size,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            command_log_size=command_log_size,
        )
        # 600 s: the gateway ends an smd stream 10 minutes after the request
        # (corpus: behaviour.jsonl smd-expires-after-10-minutes).
        self._init_streams(
            marketdata_expiry=marketdata_expiry, duplicate_first_quote=duplicate_first_quote
        )
        self._init_faults()
        #: A recorded session played into every WebSocket instead of the
        #: simulated streams (``replay.py``); None: simulate.
        self.replay = replay
        #: REST calls per endpoint (path after ``/v1/api``), for pacing checks.
        self.rest_calls: Counter[str] = Counter()
        #: The last REST calls: (trio time, method, path).
        self.rest_log: deque[tuple[float, str, str]] = deque(maxlen=command_log_size)
        self.host = host
        self.tls = tls
        #: The bound port, set once :meth:`run` is listening.
        self.port: int | None = None
        #: PEM of the CA that signed the TLS certificate (TLS only).
        self.ca_pem: bytes | None = None
        #: Where that PEM was written (TLS only); a temp file unless ``ca_pem_path`` given.
        self.ca_pem_path: str | None = None
        self.ready_delay = ready_delay
        self.heartbeat_interval = heartbeat_interval
        self.binary_frames = binary_frames
        self.tickle_count = 0

        self._requested_port = port
        self._initial_rates = dict(rates or {})
        self._ca_pem_out = Path(ca_pem_path) if ca_pem_path is not None else None
        self._ca: trustme.CA | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def _url_host(self) -> str:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    def _require_port(self) -> int:
        if self.port is None:
            raise SimulatorError("the simulator is not listening yet: start run() first")
        return self.port

    @property
    def base_url(self) -> str:
        """REST base, e.g. ``https://127.0.0.1:5000/v1/api``."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._url_host}:{self._require_port()}/v1/api"

    @property
    def ws_url(self) -> str:
        """The WebSocket URL, e.g. ``wss://127.0.0.1:5000/v1/api/ws``."""
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{self._url_host}:{self._require_port()}{WS_PATH}"

    @property
    def control_url(self) -> str:
        """Base of the HTTP control API, e.g. ``http://127.0.0.1:5000/sim``."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._url_host}:{self._require_port()}/sim"

    def cookie_header(self, session: str | None = None) -> tuple[bytes, bytes]:
        """The ``Cookie`` header a client sends on the WebSocket handshake."""
        body = orjson.dumps({"session": self.session if session is None else session})
        return (b"cookie", b"api=" + urllib.parse.quote(body, safe="").encode("ascii"))

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this simulator's CA (TLS only)."""
        if self._ca is None:
            raise SimulatorError("TLS is off or the simulator has not started")
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self, *, task_status: trio.TaskStatus[GatewaySimulator] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled or :meth:`stop` is called."""
        if self._nursery is not None:
            raise SimulatorError("this simulator is already running")
        with tempfile.TemporaryDirectory(prefix="bezant-sim-") as tmp:
            ssl_context = self._setup_tls(Path(tmp)) if self.tls else None
            tcp_listeners = await trio.open_tcp_listeners(self._requested_port, host=self.host)
            listeners: list[trio.abc.Listener[Any]] = list(tcp_listeners)
            self.port = tcp_listeners[0].socket.getsockname()[1]
            if ssl_context is not None:
                # https_compatible: HTTP clients routinely skip close_notify.
                listeners = [
                    trio.SSLListener(listener, ssl_context, https_compatible=True)
                    for listener in tcp_listeners
                ]
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(
                        partial(
                            trio.serve_listeners,
                            self._serve_stream,
                            listeners,
                            handler_nursery=nursery,
                        )
                    )
                    if self._initial_rates:
                        self.start_stream(self._initial_rates)
                    logger.info("gateway simulator listening on %s", self.base_url)
                    task_status.started(self)
            finally:
                self._nursery = None

    def stop(self) -> None:
        """Stop serving: cancels every connection and task of the simulator."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _setup_tls(self, tmp: Path) -> ssl.SSLContext:
        self._ca = trustme.CA()
        names = {"127.0.0.1", "localhost", "::1"}
        if self.host not in ("", "0.0.0.0", "::"):
            names.add(self.host)
        cert = self._ca.issue_cert(*sorted(names))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.ca_pem = self._ca.cert_pem.bytes()
        path = self._ca_pem_out or tmp / "simulator-ca.pem"
        self._ca.cert_pem.write_to_path(str(path))
        self.ca_pem_path = str(path)
        return context

    # ------------------------------------------------------------- HttpApp hooks

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        await serve_http_connection(self, stream)

    async def handle_request(self, request: Request) -> Response:
        """Answer one REST or ``/sim`` request (see ``routes.py``)."""
        return await dispatch(self, request)

    def _count_rest(self, method: str, path: str) -> None:
        self.rest_calls[path] += 1
        self.rest_log.append((trio.current_time(), method, path))
        self._notify()

    def websocket_rejection(self, request: Request) -> Response | None:
        """Refuse the upgrade when the path is wrong, the gateway is down or unauthenticated."""
        if request.path != WS_PATH:
            return Response(404, {"error": "not found", "path": request.path})
        if self.down:
            return Response(503, {"error": "gateway restarting"})
        if not self.authenticated:
            return Response(401, {"error": "not authenticated"})
        return None

    async def handle_websocket(
        self, request: Request, stream: trio.abc.Stream, ws: WsProtocol
    ) -> None:
        """Serve one upgraded WebSocket until it closes."""
        session = commands.parse_session_cookie(request.headers.get("cookie", ""))
        conn_id = self._next_connection_id
        self._next_connection_id += 1
        connection = WsConnection(
            self,
            conn_id,
            stream,
            ws,
            peer=request.peer,
            tls=self.tls,
            session_ok=session == self.session,
            queue_size=self._queue_size,
            silent=self.ws_silent,
        )
        if self.replay is not None:
            await self.replay.serve(self, connection)
            return
        await connection.serve()

    # -------------------------------------------------------------- inspection

    def state(self) -> dict[str, Any]:
        """Everything ``GET /sim/state`` returns."""
        return {
            "session": self.session,
            "authenticated": self.authenticated,
            "down": self.down,
            "stalled": self.stalled,
            "slow_delay": self.slow_delay,
            "binary_frames": self.binary_frames,
            "ready_delay": self.ready_delay,
            "heartbeat_interval": self.heartbeat_interval,
            "send_timeout": self.send_timeout,
            "close_timeout": self.close_timeout,
            "queue_size": self._queue_size,
            "tickle_count": self.tickle_count,
            "ws_handshakes": self.ws_handshakes,
            "restarts": self.restarts,
            "brokerage_up": self.brokerage_up,
            "competing": self.competing,
            "rest_hang": self.rest_hang,
            "answer_echo": self.answer_echo,
            "ws_silent": self.ws_silent,
            "ssodh_inits": self.ssodh_inits,
            "marketdata_expiry": self.marketdata_expiry,
            "rest_calls": dict(sorted(self.rest_calls.items())),
            "replay": self.replay.describe() if self.replay is not None else None,
            "dropped_before_ready": self._dropped_before_ready,
            "connections": [conn.describe() for conn in self._connections.values()],
            "closed_connections": list(self._closed_connections),
            "channels": {
                name: {
                    "last_seq": channel.last_assigned,
                    "written_count": channel.written.count,
                    "last_written": channel.written.last,
                    "written": channel.written.ranges(),
                }
                for name, channel in sorted(self._channels.items())
            },
            "marketdata": {
                str(conid): {"server_id": entry.server_id, "fields": list(entry.fields)}
                for conid, entry in sorted(self._marketdata.items())
            },
            "commands": list(self._commands),
            "stream": {"running": self._stream_scope is not None, "rates": dict(self._rates)},
        }

    # ----------------------------------------------------------------- settings

    def configure(
        self,
        *,
        heartbeat_interval: float | None = None,
        ready_delay: float | None = None,
        binary_frames: bool | None = None,
        send_timeout: float | None = None,
    ) -> None:
        """Change settings at run time; a new heartbeat interval applies at once."""
        for name, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("ready_delay", ready_delay),
            ("send_timeout", send_timeout),
        ):
            if value is not None and (value < 0 or not math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0")
        if heartbeat_interval is not None:
            self.heartbeat_interval = heartbeat_interval
        if ready_delay is not None:
            self.ready_delay = ready_delay
        if binary_frames is not None:
            self.binary_frames = binary_frames
        if send_timeout is not None:
            self.send_timeout = send_timeout
        self._config_changed.set()
        self._config_changed = trio.Event()
        self._notify()


@asynccontextmanager
async def open_simulator(**options: Any) -> AsyncIterator[GatewaySimulator]:
    """Run a :class:`GatewaySimulator` for the body of an ``async with``.

    ``options`` are the constructor's keyword arguments. The simulator is
    listening when the body starts and fully stopped when the block exits.
    """
    sim = GatewaySimulator(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        try:
            yield sim
        finally:
            sim.stop()
