"""bezant-trio: capture IBKR Client Portal WebSocket events into cursor logs."""

from __future__ import annotations

__version__ = "0.1.0"
