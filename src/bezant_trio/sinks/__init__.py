"""Sinks: pluggy-registered destinations that events are delivered to.

``hookspecs`` declares the plugin hooks, ``interface`` the contract a sink
class follows, ``manager`` the delivery loops (one task per sink instance),
and ``file``, ``webhook`` and ``testing`` the built-in sink types, which
``builtin`` registers like any third-party plugin.

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
)

__all__ = ["REQUIRED", "DeliveryError", "Option", "Sink", "SinkConfigError", "SinkDisabled"]
