"""Replay a recorded gateway session into whoever connects.

A session file is JSON Lines, written by ``bezant-trio record`` or assembled
by hand (``corpus/sessions/``):

* a header ``{"format": "bezant-trio-session", "version": 1, ...}``;
* ``{"t": <seconds>, "dir": "in", "text": "<frame as received>"}`` for what the
  gateway sent (``"binary": true`` if it came as a binary message, ``"b64"``
  instead of ``text`` if it was not UTF-8), optionally ``"corpus": "<id>"``;
* ``{"t": ..., "dir": "out", "text": "sor+{}"}`` for what the client sent;
* ``{"t": ..., "dir": "rest", "method", "path", "status", "body"}`` for a REST
  answer;
* ``{"t": ..., "dir": "meta", "event": "ws_open" | "ws_closed" | ...}``.

``t`` is seconds since the recording started. Every connection to a
replaying simulator gets every ``in`` frame, at its time relative to the
recording's ``ws_open`` (or its first frame), divided by ``speed``; what the
client sends is logged but changes nothing, except that ``ech+hb`` and ``tic``
are still answered, so a client's drain barrier works. REST calls get the
recorded answer when one was recorded (the last one for that path), the
simulated one otherwise; ``/tickle`` is always simulated, so the session id
is the simulator's.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import trio

from bezant_trio.simulator.connection import Outgoing, WsConnection
from bezant_trio.simulator.errors import SimulatorError

if TYPE_CHECKING:
    from bezant_trio.simulator.gateway import GatewaySimulator

__all__ = ["FORMAT", "ReplayFrame", "ReplaySession", "SessionFormatError"]

FORMAT = "bezant-trio-session"
VERSION = 1


class SessionFormatError(SimulatorError):
    """A session file that cannot be replayed; the message names the line."""


@dataclass(frozen=True, slots=True)
class ReplayFrame:
    """One frame to play: seconds after the connection opened, and its bytes."""

    offset: float
    data: str | bytes
    binary: bool = False


class ReplaySession:
    """A loaded session: the frames to play and the REST answers to give."""

    def __init__(
        self,
        frames: list[ReplayFrame],
        rest: dict[str, tuple[int, Any]] | None = None,
        *,
        header: dict[str, Any] | None = None,
        speed: float = 1.0,
        name: str = "",
    ) -> None:
        if not speed > 0:
            raise ValueError("replay speed must be > 0")
        self.frames = frames
        #: path (after /v1/api) -> (status, body) as recorded.
        self.rest = rest or {}
        self.header = header or {}
        self.speed = speed
        self.name = name
        #: Connections that have been played the whole session.
        self.played = 0

    @classmethod
    def load(cls, path: str | Path | Any, *, speed: float = 1.0) -> ReplaySession:
        """Read a session file (a path or a ``Traversable``); raises :class:`SessionFormatError`."""
        name = str(path)
        source = Path(path) if isinstance(path, str) else path
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SessionFormatError(f"cannot read session {name}: {exc}") from None
        return cls.parse(text, speed=speed, name=name)

    @classmethod
    def parse(cls, text: str, *, speed: float = 1.0, name: str = "") -> ReplaySession:
        """Parse the text of a session file."""
        header: dict[str, Any] | None = None
        start: float | None = None
        raw_frames: list[tuple[float, str | bytes, bool]] = []
        rest: dict[str, tuple[int, Any]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{name or 'session'} line {number}"
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise SessionFormatError(f"{where}: not JSON ({exc})") from None
            if not isinstance(entry, dict):
                raise SessionFormatError(f"{where}: not a JSON object")
            if header is None:
                if entry.get("format") != FORMAT:
                    raise SessionFormatError(f"{where}: the first line must be a {FORMAT} header")
                if entry.get("version") != VERSION:
                    raise SessionFormatError(f"{where}: unknown version {entry.get('version')!r}")
                header = entry
                continue
            t = entry.get("t")
            if isinstance(t, bool) or not isinstance(t, int | float) or t < 0:
                raise SessionFormatError(f"{where}: 't' must be seconds >= 0")
            direction = entry.get("dir")
            if direction == "in":
                raw_frames.append((float(t), *_frame_data(entry, where)))
            elif direction == "rest":
                path, status = entry.get("path"), entry.get("status")
                if not isinstance(path, str) or not isinstance(status, int):
                    raise SessionFormatError(f"{where}: a rest entry needs 'path' and 'status'")
                rest[path] = (status, entry.get("body"))
            elif direction == "meta":
                if entry.get("event") == "ws_open" and start is None:
                    start = float(t)
            elif direction != "out":
                raise SessionFormatError(f"{where}: 'dir' must be in, out, rest or meta")
        if header is None:
            raise SessionFormatError(f"{name or 'session'}: empty, no {FORMAT} header")
        if start is None:
            start = raw_frames[0][0] if raw_frames else 0.0
        frames = [ReplayFrame(max(0.0, t - start), data, binary) for t, data, binary in raw_frames]
        frames.sort(key=lambda frame: frame.offset)
        return cls(frames, rest, header=header, speed=speed, name=name)

    def describe(self) -> dict[str, Any]:
        """The replay's entry in ``GET /sim/state``."""
        return {
            "name": self.name,
            "frames": len(self.frames),
            "duration_s": self.frames[-1].offset if self.frames else 0.0,
            "speed": self.speed,
            "played": self.played,
            "rest_paths": sorted(self.rest),
        }

    async def serve(self, sim: GatewaySimulator, connection: WsConnection) -> None:
        """Serve one WebSocket by playing the session into it."""
        connection.script = self._play
        await connection.serve()

    async def _play(self, connection: WsConnection) -> None:
        started = trio.current_time()
        for frame in self.frames:
            await trio.sleep_until(started + frame.offset / self.speed)
            if frame.binary or isinstance(frame.data, bytes):
                data = frame.data.encode() if isinstance(frame.data, str) else frame.data
                item = Outgoing("bytes", data)
            else:
                item = Outgoing("text", frame.data)
            if not await connection.enqueue(item):
                return
        self.played += 1
        connection._sim._notify()


def _frame_data(entry: dict[str, Any], where: str) -> tuple[str | bytes, bool]:
    binary = entry.get("binary") is True
    if "b64" in entry:
        try:
            return base64.b64decode(entry["b64"], validate=True), True
        except (binascii.Error, TypeError, ValueError):
            raise SessionFormatError(f"{where}: 'b64' is not base64") from None
    text = entry.get("text")
    if not isinstance(text, str):
        raise SessionFormatError(f"{where}: an 'in' entry needs 'text' (or 'b64')")
    return text, binary
