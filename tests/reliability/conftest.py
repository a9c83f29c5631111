"""Fixtures of the reliability suite: the rig and the opt-in soak.

``BEZANT_SOAK=1`` runs the long versions (tests marked ``soak``, the 30 s
outage, the 10 minute chaos run, the 1 hour soak); without it they are
skipped and the CI-sized versions run. Seeds (``BEZANT_SEED=N`` replays a
run) come from the ``seed`` fixture of tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from .rig import Rig

SOAK = os.environ.get("BEZANT_SOAK") == "1"


def scaled(ci: float, soak: float) -> float:
    """A duration: the CI-sized one, or the full one with ``BEZANT_SOAK=1``."""
    return soak if SOAK else ci


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="long soak/chaos run: opt in with BEZANT_SOAK=1")
    for item in items:
        if "soak" in item.keywords and not SOAK:
            item.add_marker(skip)


@pytest.fixture
async def rig(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Rig]:
    """A started simulator and webhook endpoint; the test starts the daemon it needs."""
    r = Rig(nursery, tmp_path)
    await r.start_gateway()
    try:
        yield r
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(40):
            await r.stop()
