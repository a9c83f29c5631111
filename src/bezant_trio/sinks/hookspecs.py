"""The hook specifications of the ``bezant_trio`` plugin project (markers and empty specs only).

Plugins implement these with ``@bezant_trio.hookimpl`` and are found through
the ``bezant_trio`` entry-point group. Hooks are always called with keywords.
"""

from __future__ import annotations

from typing import Any

import pluggy

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("bezant_trio")
hookimpl = pluggy.HookimplMarker("bezant_trio")


@hookspec
def register_sink_types() -> list[type]:
    """When the sink manager is built: return the sink classes this plugin provides."""


@hookspec
def startup(daemon: Any) -> None:
    """Once the daemon serves (hub open, sinks running, HTTP bound): return nothing."""


@hookspec
def shutdown(daemon: Any) -> None:
    """When a graceful stop begins, before the sinks are closed: return nothing."""
