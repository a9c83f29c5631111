"""bezant-trio-nats: a sink plugin that publishes every event into NATS JetStream.

Installing the distribution is all it takes: its ``bezant_trio`` entry point
names this module, whose ``register_sink_types`` hook adds the ``nats`` sink
type. Configure it with::

    sinks:
      - {name: fanout, type: nats, servers: ["nats://127.0.0.1:4222"], stream: BEZANT}

Modules: ``sink`` (options, ``deliver``), ``wire`` (event -> subject, headers,
body), ``settings`` (what a sink is configured with), ``publisher`` (the
nats-py side: connection, stream, acks; imported by the first NATS sink, so a
daemon without one never loads nats-py), ``bridge``
(the asyncio thread Trio awaits), ``testing`` (real nats-server processes).
"""

from __future__ import annotations

from bezant_trio import hookimpl
from bezant_trio_nats.sink import NatsSink
from bezant_trio_nats.wire import message_for, msg_id, subject_for

__all__ = ["NatsSink", "message_for", "msg_id", "register_sink_types", "subject_for"]


@hookimpl
def register_sink_types() -> list[type]:
    return [NatsSink]
