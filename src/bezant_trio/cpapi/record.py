"""``bezant-trio record``: write a real gateway session to JSON Lines for replay.

It speaks the gateway protocol as a client, with the daemon's own parts: REST
through :class:`~bezant_trio.cpapi.session.GatewaySession` (``POST /tickle``
for the session, then the answers of ``/tickle``, ``/iserver/auth/status``
and ``/iserver/accounts``, asked before subscribing: the orders stream stays
silent otherwise), the WebSocket through
:func:`~bezant_trio.cpapi.transport.open_transport`. It waits for the ready
greeting, sends the subscriptions asked
for on the command line and ``ech+hb`` every 30 s, and writes every frame
received and every command sent with its time since the start, in the format
``bezant-trio simulate --replay`` plays (``simulator/replay.py``).

The session id is replaced by zeros wherever it appears (tickle, ``tic``
answers); account numbers and everything else are kept as the gateway sent
them, so look at a recording before sharing it.

Imports nothing from ``http``, ``sinks`` or ``store``, and nothing from the
simulator: the file format is the contract between them.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import trio

from bezant_trio.cpapi.frames import (
    CHANNEL_COMMANDS,
    ECHO_TEXT,
    FrameKind,
    classify,
    md_subscribe,
)
from bezant_trio.cpapi.session import GatewayError, GatewaySession
from bezant_trio.cpapi.transport import HandshakeFailed, TransportClosed, open_transport
from bezant_trio.model import format_ts
from bezant_trio.util import describe

__all__ = ["SESSION_FORMAT", "Recorder", "build_parser", "record_session", "run_cli"]

SESSION_FORMAT = "bezant-trio-session"
#: ``ech+hb`` goes out this often; the gateway wants one at least every minute.
KEEPALIVE_INTERVAL = 30.0
#: Subscriptions wait this long for the greeting, then go out anyway.
READY_TIMEOUT = 5.0
#: At the end, how long to wait for the echo of the closing ``ech+hb``.
DRAIN_TIMEOUT = 2.0
#: The REST answers recorded before the WebSocket opens.
RECORDED_REST = ("/tickle", "/iserver/auth/status", "/iserver/accounts")
DEFAULT_FIELDS = ("31", "84", "86", "85", "88", "87")
_ZERO_SESSION = "0" * 32


class Recorder:
    """Writes one session file; every line is flushed as it is written.

    Lines land in the order :meth:`write` was called, whichever tasks call
    it: trio's file methods run in worker threads, and two writes in flight
    at once could otherwise reach the file in either order. The lock is
    FIFO, so it keeps the calls' order.
    """

    def __init__(self, out: trio.abc.AsyncResource | Any, *, started: float) -> None:
        self._out = out
        self._started = started
        self._secret: str | None = None
        self._lock = trio.Lock()
        self.lines = 0

    def redact(self, secret: str) -> None:
        """Replace ``secret`` (the session id) in everything written from now on."""
        self._secret = secret

    def _clean(self, text: str) -> str:
        return text.replace(self._secret, _ZERO_SESSION) if self._secret else text

    async def write(self, entry: dict[str, Any], *, timed: bool = True) -> None:
        """Append one entry (with ``t`` = seconds since the start)."""
        if timed:
            entry = {"t": round(trio.current_time() - self._started, 4), **entry}
        line = self._clean(orjson.dumps(entry).decode()) + "\n"
        async with self._lock:
            await self._out.write(line)
            await self._out.flush()
            self.lines += 1

    async def frame(self, message: str | bytes) -> None:
        """Record one frame the gateway sent."""
        if isinstance(message, bytes):
            try:
                await self.write({"dir": "in", "text": message.decode("utf-8"), "binary": True})
            except UnicodeDecodeError:
                await self.write({"dir": "in", "b64": base64.b64encode(message).decode()})
            return
        await self.write({"dir": "in", "text": message})


async def _record_rest(recorder: Recorder, session: GatewaySession, path: str) -> None:
    try:
        body = await session.get_json(path)
    except GatewayError as exc:
        await recorder.write(
            {"dir": "meta", "event": "rest_failed", "path": path, "error": str(exc)}
        )
        return
    await recorder.write(
        {"dir": "rest", "method": "GET", "path": path, "status": 200, "body": body}
    )


async def record_session(
    url: str,
    out_path: str | Path,
    *,
    commands: Sequence[str] = (),
    duration: float = 60.0,
    verify_tls: bool = False,
    request_timeout: float = 10.0,
    stop: trio.Event | None = None,
) -> int:
    """Record ``duration`` seconds (or until ``stop``) of the gateway at ``url``.

    Returns the number of frames received. Raises :class:`GatewayError` when
    the gateway cannot be tickled, :class:`HandshakeFailed` when the
    WebSocket cannot be opened.
    """
    started = trio.current_time()
    session = GatewaySession(url, verify_tls=verify_tls, timeout=request_timeout)
    received = 0
    try:
        async with await trio.open_file(out_path, "w", encoding="utf-8") as out:
            recorder = Recorder(out, started=started)
            await recorder.write(
                {
                    "format": SESSION_FORMAT,
                    "version": 1,
                    "name": Path(out_path).stem,
                    "source": f"recorded from {session.base_url} by bezant-trio record",
                    "recorded_at": format_ts(),
                    "commands": list(commands),
                },
                timed=False,
            )
            # tickle() first: it turns a gateway that is down or logged out
            # into an error that says what to check.
            status = await session.tickle()
            session_id = status.session
            assert session_id is not None  # tickle() raises without one
            recorder.redact(session_id)
            for path in RECORDED_REST:
                await _record_rest(recorder, session, path)
            received = await _record_socket(
                recorder, session, session_id, commands, started + duration, stop
            )
    finally:
        with trio.CancelScope(shield=True):
            await session.aclose()
    return received


async def _record_socket(
    recorder: Recorder,
    session: GatewaySession,
    session_id: str,
    commands: Sequence[str],
    deadline: float,
    stop: trio.Event | None,
) -> int:
    ready = trio.Event()
    echoed = trio.Event()
    counts = {"frames": 0}
    async with open_transport(
        session.ws_url,
        ssl_context=session.ssl_context(),
        headers=[GatewaySession.cookie_header(session_id)],
        connect_timeout=10.0,
    ) as ws:
        await recorder.write({"dir": "meta", "event": "ws_open", "url": session.ws_url})

        async def send(text: str) -> None:
            # Recorded before it goes out: the answer to it can only come
            # after, and the file keeps that order (a command whose send
            # fails is followed by the ws_closed the reader writes).
            await recorder.write({"dir": "out", "text": text})
            await ws.send(text)

        async def read() -> None:
            try:
                while True:
                    for message in await ws.receive_batch():
                        counts["frames"] += 1
                        await recorder.frame(message)
                        kind = classify(message).kind
                        if kind is FrameKind.READY:
                            ready.set()
                        elif kind is FrameKind.ECHO:
                            echoed.set()
                        elif kind is FrameKind.WAITING_SESSION:
                            await send(orjson.dumps({"session": session_id}).decode())
            except TransportClosed as exc:
                await recorder.write({"dir": "meta", "event": "ws_closed", "code": exc.code})
                nursery.cancel_scope.cancel()

        async def subscribe_and_keep_alive() -> None:
            # Subscribes sent before the greeting are dropped by the gateway.
            with trio.move_on_after(READY_TIMEOUT):
                await ready.wait()
            for command in commands:
                await send(command)
            while True:
                await trio.sleep(KEEPALIVE_INTERVAL)
                await send(ECHO_TEXT)

        async def until_done() -> None:
            nonlocal echoed
            with trio.move_on_at(deadline):
                if stop is not None:
                    await stop.wait()
                else:
                    await trio.sleep_forever()
            # The gateway echoes in order: once the echo of this ech+hb is
            # back, everything it sent before the stop has been recorded.
            echoed = trio.Event()
            with trio.move_on_after(DRAIN_TIMEOUT):
                await send(ECHO_TEXT)
                await echoed.wait()
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(subscribe_and_keep_alive)
            nursery.start_soon(until_done)
    return counts["frames"]


# ------------------------------------------------------------------- CLI


def _commands(args: argparse.Namespace) -> list[str]:
    commands = []
    for channel in ("orders", "pnl", "trades"):
        if getattr(args, channel):
            commands.append(CHANNEL_COMMANDS[channel][0])
    fields = args.fields.split(",") if args.fields else DEFAULT_FIELDS
    commands += [md_subscribe(conid, fields) for conid in args.marketdata]
    commands += args.send
    return commands


def build_parser(prog: str = "bezant-trio record") -> argparse.ArgumentParser:
    """The argument parser of ``bezant-trio record``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Record a gateway session (REST answers and every WebSocket frame) "
        "to JSON Lines, for bezant-trio simulate --replay.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("IBKR_GATEWAY_URL", "https://localhost:5000/v1/api"),
        help="gateway REST base (default $IBKR_GATEWAY_URL or https://localhost:5000/v1/api)",
    )
    parser.add_argument(
        "--verify-tls", action="store_true", help="verify the gateway's certificate"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="session file (default session-<time>.jsonl)"
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds to record (default 60)"
    )
    parser.add_argument("--orders", action="store_true", help="subscribe sor+{}")
    parser.add_argument("--pnl", action="store_true", help="subscribe spl+{}")
    parser.add_argument("--trades", action="store_true", help="subscribe str+{}")
    parser.add_argument(
        "--marketdata",
        type=int,
        action="append",
        default=[],
        metavar="CONID",
        help="subscribe smd (repeatable)",
    )
    parser.add_argument(
        "--fields", default=None, help="smd fields, comma-separated (default 31,84,86,85,88,87)"
    )
    parser.add_argument(
        "--send",
        action="append",
        default=[],
        metavar="COMMAND",
        help="send this command as is after the greeting, e.g. 'ssd+DU1234567+{}' (repeatable)",
    )
    return parser


async def _record_until_signal(args: argparse.Namespace, out: Path) -> int:
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    stop.set()
                    return

            nursery.start_soon(watch)
            frames = await record_session(
                args.url,
                out,
                commands=_commands(args),
                duration=args.duration,
                verify_tls=args.verify_tls,
                stop=stop,
            )
            nursery.cancel_scope.cancel()
    return frames


def run_cli(argv: Sequence[str] | None = None) -> int:
    """``bezant-trio record``: 0 when recorded, 1 when the gateway failed, 2 for bad arguments."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if not (args.duration > 0 and math.isfinite(args.duration)):
        print(
            "bezant-trio record: --duration must be a positive number of seconds", file=sys.stderr
        )
        return 2
    out = args.out or Path(f"session-{format_ts().replace(':', '')}.jsonl")
    failures: list[str] = []
    frames = 0
    try:
        frames = trio.run(_record_until_signal, args, out)
    except* GatewayError as group:
        failures += [str(leaf) for leaf in _leaves(group)]
    except* (HandshakeFailed, TransportClosed, OSError) as group:
        failures += [f"{args.url}: {describe(leaf)}" for leaf in _leaves(group)]
    if failures:
        print(f"bezant-trio record: {failures[0]}", file=sys.stderr)
        return 1
    print(f"recorded {frames} frames to {out}", file=sys.stderr)
    return 0


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
