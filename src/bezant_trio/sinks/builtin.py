"""The built-in sink types, registered as an ordinary plugin.

Loaded through the ``bezant_trio`` entry point ``builtin`` (and registered
explicitly by the manager when the package is used from a source tree that
was not installed), exactly like a third-party plugin.
"""

from __future__ import annotations

from bezant_trio.sinks.file import FileSink
from bezant_trio.sinks.hookspecs import hookimpl
from bezant_trio.sinks.testing import TestSink
from bezant_trio.sinks.webhook import WebhookSink

__all__ = ["register_sink_types"]


@hookimpl
def register_sink_types() -> list[type]:
    return [FileSink, WebhookSink, TestSink]
