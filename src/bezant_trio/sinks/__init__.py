"""Sinks: pluggy-registered destinations that events are delivered to.

``hookspecs`` declares the plugin hooks and ``interface`` the contract a sink
class follows; ``plugins`` loads the plugins and calls their hooks, ``specs``
checks the ``sinks:`` entries, ``runner`` is one sink's delivery task and
``manager`` runs them all and stores their checkpoints. ``file``, ``webhook``
and ``testing`` are the built-in sink types, which ``builtin`` registers like
any third-party plugin.

This package imports only the light contract modules, so ``import bezant_trio``
stays cheap and free of import cycles.
"""

from __future__ import annotations

from bezant_trio.sinks.interface import (
    REQUIRED,
    DeliveryError,
    Option,
    Sink,
    SinkConfigError,
    SinkDisabled,
    event_id,
)

__all__ = [
    "REQUIRED",
    "DeliveryError",
    "Option",
    "Sink",
    "SinkConfigError",
    "SinkDisabled",
    "event_id",
]
