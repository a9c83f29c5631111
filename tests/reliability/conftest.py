"""Fixtures of the reliability suite: the rig, seeds that are printed on failure, opt-in soak.

``BEZANT_SOAK=1`` runs the long versions (tests marked ``soak``, the 30 s
outage, the 10 minute chaos run, the 1 hour soak); without it they are
skipped and the CI-sized versions run. ``BEZANT_SEED=N`` replays a seeded run.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "bezant_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("seed", f"replay with BEZANT_SEED={seed}"))


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A random seed (or ``BEZANT_SEED``), printed with the failure when the test fails."""
    value = int(os.environ.get("BEZANT_SEED") or random.SystemRandom().randrange(2**32))
    request.node.bezant_seed = value
    print(f"BEZANT_SEED={value}")
    return value


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
