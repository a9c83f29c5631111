"""What the simulated account really holds: every order, fill, PnL row and quote.

The gateway's REST API answers from this record (``/iserver/account/orders``,
``/iserver/account/trades``, ``/iserver/account/pnl/partitioned``), and tests
compare a consumer's merged state with it. It is updated with every frame the
simulator generates, whether or not the frame then reaches a socket: the
account changed either way, which is why a consumer resyncs after a gap.

Records merge the way a consumer must merge the stream: an order's updates
carry only the fields that changed (corpus: behaviour.jsonl
sor-full-then-deltas), and so do quotes (smd-deltas-only-changed).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["AccountTruth"]


class AccountTruth:
    """Merged orders by ``orderId``, executions by ``execution_id``, PnL rows, quotes."""

    def __init__(self) -> None:
        #: orderId -> the order's full record, every update merged in.
        self.orders: dict[int, dict[str, Any]] = {}
        #: execution_id -> the execution (in the order first seen).
        self.trades: dict[str, dict[str, Any]] = {}
        #: "<acct>.Core" -> the latest PnL row.
        self.pnl: dict[str, dict[str, Any]] = {}
        #: conid -> every field last sent for it (the merged ``smd`` frames).
        self.quotes: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------- recording

    def record_frame(self, frame: dict[str, Any]) -> None:
        """Merge one generated frame (``sor``, ``str``, ``spl``, ``smd+``) into the record."""
        topic = frame.get("topic")
        args = frame.get("args")
        if topic == "sor" and isinstance(args, list):
            for item in args:
                order_id = item.get("orderId")
                if isinstance(order_id, int):
                    self.orders.setdefault(order_id, {}).update(item)
        elif topic == "str" and isinstance(args, list):
            for item in args:
                execution = item.get("execution_id")
                if isinstance(execution, str):
                    self.trades.setdefault(execution, {}).update(item)
        elif topic == "spl" and isinstance(args, dict):
            for key, row in args.items():
                self.pnl[key] = dict(row)
        elif isinstance(topic, str) and topic.startswith("smd+"):
            conid = frame.get("conid")
            if isinstance(conid, int):
                self.quotes.setdefault(conid, {}).update(frame)

    # ------------------------------------------------------------ REST bodies

    def orders_body(self) -> dict[str, Any]:
        """``GET /iserver/account/orders`` (corpus: rest.jsonl orders-force-campus)."""
        return {"orders": copy.deepcopy(list(self.orders.values())), "snapshot": True}

    def trades_body(self) -> list[dict[str, Any]]:
        """``GET /iserver/account/trades`` (corpus: rest.jsonl trades-openapi)."""
        return copy.deepcopy(list(self.trades.values()))

    def pnl_body(self) -> dict[str, Any]:
        """``GET /iserver/account/pnl/partitioned``; ``{"upnl": {}}`` before any PnL.

        corpus: rest.jsonl pnl-partitioned-openapi, pnl-partitioned-empty-openapi.
        """
        return {"upnl": copy.deepcopy(self.pnl)}

    def quote(self, conid: int) -> dict[str, Any] | None:
        """The merged quote of ``conid`` (what a consumer merging every frame holds)."""
        quote = self.quotes.get(conid)
        return dict(quote) if quote is not None else None
