"""The fills-csv sink, tested the way a plugin author would: through bezant-trio's fixtures."""

from __future__ import annotations

import csv
from pathlib import Path

import trio
from bezant_trio_sink_example import FillsCsvSink


def _order(order_id: int, status: str, filled: int) -> dict:
    return {
        "topic": "sor",
        "args": [
            {
                "acct": "DU1234",
                "orderId": order_id,
                "conid": 265598,
                "ticker": "AAPL",
                "side": "BUY",
                "status": status,
                "filledQuantity": filled,
                "avgPrice": "190.01",
            }
        ],
    }


def _trade(execution_id: str) -> dict:
    return {
        "topic": "str",
        "args": [
            {
                "execution_id": execution_id,
                "symbol": "AAPL",
                "side": "B",
                "size": "100",
                "price": "190.02",
                "account": "DU1234",
                "conid": 265598,
            }
        ],
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


async def test_fills_and_trades_become_csv_rows(bezant_sink_manager_factory, tmp_path: Path):
    path = tmp_path / "fills.csv"
    with trio.fail_after(10):
        manager = await bezant_sink_manager_factory(
            [
                {
                    "name": "fills",
                    "type": "fills-csv",
                    "path": str(path),
                    "topics": ["orders", "trades"],
                }
            ]
        )
        hub = manager.hub
        hub.publish("orders", _order(1, "Submitted", 0))
        hub.publish("orders", _order(1, "Filled", 100))
        hub.publish("trades", _trade("0000e0d5.1"))
        hub.publish("pnl", {"topic": "spl", "args": {}})
        await manager.wait_delivered("fills", 3)

    rows = _rows(path)
    assert [
        (r["kind"], r["topic"], r["cursor"]) for r in sorted(rows, key=lambda r: r["kind"])
    ] == [
        ("order_filled", "orders", "2"),
        ("trade", "trades", "1"),
    ]
    fill = next(r for r in rows if r["kind"] == "order_filled")
    assert fill["order_id"] == "1" and fill["quantity"] == "100" and fill["price"] == "190.01"
    trade = next(r for r in rows if r["kind"] == "trade")
    assert trade["execution_id"] == "0000e0d5.1" and trade["symbol"] == "AAPL"


async def test_a_retried_batch_adds_no_rows(tmp_path: Path, bezant_hub):
    sink = FillsCsvSink("fills", path=str(tmp_path / "fills.csv"))
    event = bezant_hub.publish("orders", _order(7, "Filled", 10))
    await sink.deliver([event])
    await sink.deliver([event])  # at-least-once: the same batch again
    assert len(_rows(tmp_path / "fills.csv")) == 1


async def test_fills_from_the_gateway_simulator_reach_the_csv(
    bezant_daemon_factory, bezant_gateway_simulator, tmp_path: Path
):
    path = tmp_path / "fills.csv"
    with trio.fail_after(20):
        daemon = await bezant_daemon_factory(
            [{"name": "fills", "type": "fills-csv", "path": str(path), "topics": ["orders"]}],
            gateway=bezant_gateway_simulator,
        )
        await bezant_gateway_simulator.wait_subscribed("orders")
        await bezant_gateway_simulator.emit_orders(6)  # two orders: ... -> Filled each
        # The topic also holds the daemon's own resync event, before or among
        # the six: wait for the six frames, then for the sink to reach the head.
        while await _sor_frames(daemon.hub) < 6:
            await daemon.hub.wait("orders", daemon.hub.head("orders"), 1)
        head = daemon.hub.head("orders")
        await daemon.sinks.wait_status("fills", lambda s: s["checkpoints"].get("orders", 0) >= head)
    rows = _rows(path)
    assert [r["kind"] for r in rows] == ["order_filled", "order_filled"]
    assert len({r["order_id"] for r in rows}) == 2


async def _sor_frames(hub) -> int:
    read = await hub.read("orders", 0, 1000)
    return sum(1 for event in read.events if event.payload.get("topic") == "sor")
