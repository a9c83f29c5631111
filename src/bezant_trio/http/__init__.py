"""The HTTP surface: REST polls, SSE, history, status, health, metrics (docs/architecture.md).

The daemon uses one name from here, :class:`HttpService`, and hands it an
:class:`HttpContext`. Reads the hub and the wants only; never imports
``cpapi`` or ``sinks``.
"""

from __future__ import annotations

from bezant_trio.http.context import HttpContext
from bezant_trio.http.limits import HttpLimits
from bezant_trio.http.service import HttpService

__all__ = ["HttpContext", "HttpLimits", "HttpService"]
