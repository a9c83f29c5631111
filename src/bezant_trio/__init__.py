"""bezant-trio: capture IBKR Client Portal WebSocket events into cursor logs."""

from __future__ import annotations

# Plugins write `from bezant_trio import hookimpl`; hookspecs imports only pluggy.
from bezant_trio.sinks.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]

__version__ = "0.1.0"
