"""An example bezant-trio sink plugin: order fills and trades as CSV rows.

Installing the distribution is all it takes: its ``bezant_trio`` entry point
names this module, whose ``register_sink_types`` hook adds the ``fills-csv``
sink type. Configure it with::

    sinks:
      - {name: fills, type: fills-csv, topics: [orders, trades], path: /var/lib/bezant/fills.csv}
"""

from __future__ import annotations

from bezant_trio import hookimpl
from bezant_trio_sink_example.fills import FillsCsvSink

__all__ = ["FillsCsvSink", "register_sink_types"]


@hookimpl
def register_sink_types() -> list[type]:
    return [FillsCsvSink]
