"""The base of every error that stops the daemon from starting.

``str()`` of a :class:`StartupError` is one line saying what to fix; the CLI
prints it on stderr and exits with status 2. Subsystems subclass it for their
own start-up failures (the HTTP socket cannot be bound, the log cannot be
opened), so the daemon catches one base and never matches on message text.
"""

from __future__ import annotations

__all__ = ["StartupError"]


class StartupError(Exception):
    """The daemon cannot start; ``str()`` is one line saying what to fix (exit 2)."""
