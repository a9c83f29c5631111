"""The third-party example plugin is found through its entry point; sinks run in the daemon."""

from __future__ import annotations

import csv
import importlib.metadata
from pathlib import Path

import httpx
import pytest
import trio

from bezant_trio.sinks.plugins import create_plugin_manager, sink_types
from bezant_trio.sinks.testing import TestSink
from helpers import SSL_CONTEXT


def _example_installed() -> bool:
    return any(ep.name == "example" for ep in importlib.metadata.entry_points(group="bezant_trio"))


@pytest.mark.skipif(
    not _example_installed(),
    reason="pip install -e plugins/bezant-trio-sink-example to test plugin discovery",
)
async def test_example_plugin_is_discovered_via_its_entry_point_and_delivers(
    bezant_sink_manager_factory, tmp_path: Path
):
    import bezant_trio_sink_example

    pm = create_plugin_manager()
    assert pm.get_plugin("example") is bezant_trio_sink_example
    assert sink_types(pm)["fills-csv"] is bezant_trio_sink_example.FillsCsvSink

    path = tmp_path / "fills.csv"
    with trio.fail_after(10):
        manager = await bezant_sink_manager_factory(
            [{"name": "fills", "type": "fills-csv", "path": str(path)}], pm=pm
        )
        manager.hub.publish(
            "orders", {"topic": "sor", "args": [{"orderId": 9, "status": "Filled", "side": "SELL"}]}
        )
        await manager.wait_delivered("fills", 1)
    (row,) = list(csv.DictReader(path.read_text().splitlines()))
    assert row["order_id"] == "9" and row["side"] == "SELL" and row["kind"] == "order_filled"


async def test_daemon_runs_configured_sinks_and_reports_them_in_status(bezant_daemon_factory):
    with trio.fail_after(20):
        daemon = await bezant_daemon_factory([{"name": "t", "type": "test", "topics": ["orders"]}])
        sink: TestSink = daemon.sinks.sinks["t"]
        for i in range(3):
            daemon.hub.publish("orders", {"i": i})
        await sink.wait_for(3)
        async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
            response = await client.get(f"{daemon.http_url}/events/_status")
        assert response.status_code == 200
        status = response.json()["sinks"]["t"]
        assert status["type"] == "test" and status["checkpoints"] == {"orders": 3}
