"""The frame corpus: real CPAPI frames and REST bodies, each with its source.

The simulator's defaults and the daemon's classifier are held to this data,
not to anyone's memory of the gateway. It is JSON Lines, one entry a line, in
files by area (``ws_system``, ``ws_account``, ``ws_marketdata``, ``ws_out``,
``rest``, ``behaviour``); ``sessions/`` holds recorded or assembled sessions
for ``bezant-trio simulate --replay``.

Every entry has:

``id``
    unique and stable: code comments cite it (``corpus: ws_marketdata.jsonl
    smd-first-captured``).
``kind``
    ``ws_in`` (a frame the gateway sends), ``ws_out`` (a command a client
    sends), ``rest`` (a REST answer, with ``method``, ``path``, ``status``,
    optionally ``query`` and ``request``), ``behaviour`` (an observed or
    documented behaviour, described in ``data``).
``data`` or ``text``
    the frame, body or observation as JSON; ``text`` instead for what goes
    over the wire as raw text (the ``ech+hb`` echo, client commands).
``expect``
    for ``ws_in``: the classification (``kind``, ``topic``, and
    ``topic_per_account`` where it differs); for ``ws_out``: how the gateway
    reads the command.
``source``
    where it comes from: an IBKR document and section, IBKR's changelog or
    OpenAPI, a named public project's capture or fixture (repository and
    path), or the real gateway run offline. ``note`` says what was changed
    (ids replaced, a document's typo fixed) and where a source is thin.

Frames are facts: values are copied, nobody's code is.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import orjson

__all__ = ["FILES", "by_id", "entries", "session_path"]

FILES = ("ws_system", "ws_account", "ws_marketdata", "ws_out", "rest", "behaviour")


@functools.cache
def _load(name: str) -> tuple[dict[str, Any], ...]:
    text = resources.files(__name__).joinpath(f"{name}.jsonl").read_text(encoding="utf-8")
    return tuple(orjson.loads(line) for line in text.splitlines() if line.strip())


def entries(*names: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Entries of the given files (all files if none), optionally of one ``kind``."""
    found: list[dict[str, Any]] = []
    for name in names or FILES:
        found.extend(e for e in _load(name) if kind is None or e["kind"] == kind)
    return found


def by_id(entry_id: str) -> dict[str, Any]:
    """The entry with ``id`` (KeyError if there is none)."""
    for entry in entries():
        if entry["id"] == entry_id:
            return entry
    raise KeyError(entry_id)


def session_path(name: str) -> Any:
    """A shipped session under ``sessions/`` (a ``Traversable``; ``str()`` is a path)."""
    return resources.files(__name__).joinpath("sessions", name)
