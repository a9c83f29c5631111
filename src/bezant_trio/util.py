"""Small helpers every part of the daemon uses: error text, backoff, plain data, waits.

No I/O and nothing of the daemon, so any module may import this one (the
simulator included).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

import trio

__all__ = ["backoff_delay", "describe", "first_line", "plain", "verifying_tls_context", "wait_any"]


@functools.cache
def verifying_tls_context() -> ssl.SSLContext:
    """httpx's ``verify=True`` context (its CA bundle, ``SSL_CERT_FILE``), built once per process.

    Building one loads the CA bundle, about 56 ms of CPU; every client that
    verifies (each webhook sink's) shares this one.
    """
    import httpx  # only the clients that verify need it

    return httpx.create_ssl_context()


def first_line(exc: BaseException) -> str:
    """The first line of ``str(exc)``, or the exception's type name when it says nothing."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``"TypeName: first line"``: one line for a log, a status field or an error message."""
    name = type(exc).__name__
    text = first_line(exc)
    return name if text == name else f"{name}: {text}"


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """The delay before retry ``attempt`` (1-based): exponential from ``low`` up to ``high``.

    "Equal jitter": half the ceiling is fixed and half is random, so retries of
    many clients spread out while each still waits at least ``low / 2``.
    """
    ceiling = min(high, low * 2.0 ** min(max(0, attempt - 1), 62))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def plain(value: Any) -> Any:
    """Dataclasses, mappings and sequences as plain dicts and lists (for YAML and JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


async def wait_any(events: Iterable[trio.Event]) -> None:
    """Return as soon as one of ``events`` is set."""
    async with trio.open_nursery() as nursery:

        async def wait_one(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait_one, event)
