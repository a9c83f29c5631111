"""Shared fixtures: a hub, and the HTTP app served on a real Hypercorn socket."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bezant_trio.http.app import create_app
from bezant_trio.http.context import HttpContext
from bezant_trio.http.server import serve_http
from bezant_trio.store.hub import Hub
from helpers import capacity_of

# The mutation check (tests/test_mutations.py) runs tests against a mutated
# copy of src/: make sure that copy, not the installed package, is what runs.
if os.environ.get("BEZANT_MUTANT_SRC"):
    import bezant_trio

    _mutant = Path(os.environ["BEZANT_MUTANT_SRC"]).resolve()
    if _mutant not in Path(bezant_trio.__file__).resolve().parents:
        raise RuntimeError(f"bezant_trio comes from {bezant_trio.__file__}, not {_mutant}")


@pytest.fixture
async def hub() -> Hub:
    hub = Hub(capacity_of())
    await hub.open()
    return hub


ServeFn = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve(nursery: trio.Nursery) -> AsyncIterator[ServeFn]:
    """Serve ``create_app(ctx, **options)`` on 127.0.0.1:0; returns its base URL."""
    stops: list[trio.Event] = []

    async def _serve(ctx: HttpContext, **options: Any) -> str:
        stop = trio.Event()
        stops.append(stop)
        app = create_app(ctx, **options)
        binds = await nursery.start(
            partial(serve_http, app, "127.0.0.1:0", shutdown_trigger=stop.wait)
        )
        return binds[0]

    yield _serve
    for stop in stops:
        stop.set()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as c:
        yield c
