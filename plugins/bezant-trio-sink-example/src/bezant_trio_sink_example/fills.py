"""The ``fills-csv`` sink: one CSV row per filled order or executed trade.

Reads two kinds of gateway frames the daemon captures: ``sor`` order frames
(topic ``orders``), keeping orders whose ``status`` is ``Filled``, and ``str``
trade frames (topic ``trades``, opt-in in ``events.channels``), one row per
execution. Everything else (PnL, gap events, market data) is skipped.

Delivery is at-least-once, so each row carries the event's ``topic`` and
``cursor``: a consumer can drop repeats by that pair. Within one process the
sink also skips events it already wrote, so a retried batch adds no rows.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import orjson
import trio

from bezant_trio.model import Event
from bezant_trio.sinks import Option

__all__ = ["COLUMNS", "FillsCsvSink", "rows_for"]

COLUMNS = (
    "received_at",
    "topic",
    "cursor",
    "kind",
    "account",
    "conid",
    "symbol",
    "side",
    "quantity",
    "price",
    "order_id",
    "execution_id",
)


def rows_for(event: Event) -> list[dict[str, Any]]:
    """The CSV rows one event yields (none for anything but fills and trades)."""
    try:
        payload = orjson.loads(event.payload_json)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(payload, dict) or not isinstance(payload.get("args"), list):
        return []
    common = {"received_at": event.received_at, "topic": event.topic, "cursor": event.cursor}
    rows = []
    for item in payload["args"]:
        if not isinstance(item, dict):
            continue
        if payload.get("topic") == "sor" and item.get("status") == "Filled":
            rows.append(
                common
                | {
                    "kind": "order_filled",
                    "account": item.get("acct", ""),
                    "conid": item.get("conid", ""),
                    "symbol": item.get("ticker", ""),
                    "side": item.get("side", ""),
                    "quantity": item.get("filledQuantity", item.get("totalSize", "")),
                    "price": item.get("avgPrice", item.get("price", "")),
                    "order_id": item.get("orderId", ""),
                    "execution_id": "",
                }
            )
        elif payload.get("topic") == "str":
            rows.append(
                common
                | {
                    "kind": "trade",
                    "account": item.get("account", ""),
                    "conid": item.get("conid", ""),
                    "symbol": item.get("symbol", ""),
                    "side": item.get("side", ""),
                    "quantity": item.get("size", ""),
                    "price": item.get("price", ""),
                    "order_id": item.get("order_ref", ""),
                    "execution_id": item.get("execution_id", ""),
                }
            )
    return rows


def _csv_path(value: str) -> str:
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isdir(os.path.dirname(path)):
        raise ValueError(f"the directory {os.path.dirname(path)} does not exist")
    return path


class FillsCsvSink:
    """Appends fills and trades to a CSV file (header written once, when it is empty)."""

    type_name = "fills-csv"
    options = {
        "path": Option(str, check=_csv_path, help="the CSV file to append to"),
        "fsync": Option(bool, default=True, help="fsync after every batch"),
    }

    def __init__(self, name: str, *, path: str, fsync: bool = True) -> None:
        self.name = name
        self.path = _csv_path(path)
        self.fsync = fsync
        self.rows_written = 0
        # Highest cursor written per topic: a retried batch adds no rows.
        self._written: dict[str, int] = {}

    async def deliver(self, batch: list[Event]) -> None:
        done = self._written.get(batch[0].topic, 0)
        rows = [row for event in batch if event.cursor > done for row in rows_for(event)]
        if rows:
            await trio.to_thread.run_sync(self._append, rows)
            self.rows_written += len(rows)
        self._written[batch[0].topic] = max(done, batch[-1].cursor)

    def _append(self, rows: list[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            if handle.tell() == 0:
                writer.writeheader()
            writer.writerows(rows)
            handle.write(buffer.getvalue())
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())

    async def aclose(self) -> None:
        """Nothing stays open between batches."""
