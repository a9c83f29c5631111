"""What the connector asks the gateway to stream, and the commands that ask for it.

Two kinds (docs/gateway.md, "What the daemon captures"):

- **channels**, account-wide and always on while connected: ``events.channels``
  (``sor``, ``spl``, ``str`` once; ``ssd`` and ``sld`` once per account);
- **per-instrument streams**, subscribed while some reader wants their conid
  (:class:`bezant_trio.wants.Wants`): market data (``smd``), streaming bars
  (``smh``, five at most, unsubscribed by the ``serverId`` of their answer)
  and the BookTrader price ladder (``sbd``, one per account).

:class:`Subscriptions` builds the commands and remembers what the current
socket has been asked for; the connector sends them (through a callable, so
a closed socket is the connector's business). No socket, no task of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from bezant_trio.cpapi.frames import (
    CHANNEL_COMMANDS,
    account_summary_subscribe,
    account_summary_unsubscribe,
    bars_subscribe,
    bars_unsubscribe,
    book_subscribe,
    book_unsubscribe,
    ledger_subscribe,
    ledger_unsubscribe,
    md_subscribe,
    md_unsubscribe,
)
from bezant_trio.model import BARS, BOOK, MARKETDATA, bars_topic, keyed_topic
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants

if TYPE_CHECKING:
    from bezant_trio.config import EventsConfig

__all__ = ["BARS_LIMIT", "BOOK_LIMIT", "Subscriptions"]

log = logging.getLogger(__name__)

#: Streaming bars (smh) the gateway allows at once (corpus: smh-answers-once).
BARS_LIMIT = 5
#: BookTrader price ladders at once: ``ubd+<account>`` ends the account's one ladder
#: (corpus: cmd-ubd), so one per (first) account.
BOOK_LIMIT = 1
#: Account-wide channels subscribed once per account: name -> (subscribe, unsubscribe).
_ACCOUNT_CHANNELS: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "account_summary": (account_summary_subscribe, account_summary_unsubscribe),
    "ledger": (ledger_subscribe, ledger_unsubscribe),
}

#: Sends one command on the current socket.
Send = Callable[[str], Awaitable[None]]


@dataclass(eq=False)
class _LazyStream:
    """A per-instrument stream subscribed while some reader wants its conid."""

    family: str
    wants: Wants
    #: The subscribe command for a conid (None: cannot be asked for now).
    subscribe: Callable[[int], str | None]
    #: The unsubscribe command for a conid (None: nothing to send).
    unsubscribe: Callable[[int], Awaitable[str | None]]
    #: Whether subscriptions are re-sent every ``resubscribe_interval`` (the
    #: gateway ends market-data streams after about 10 minutes).
    resubscribe: bool = False
    #: Conids the current socket has been asked for.
    subscribed: set[int] = field(default_factory=set)


class Subscriptions:
    """The channels and per-instrument streams of one connector (see the module docstring)."""

    def __init__(
        self,
        hub: Hub,
        events: EventsConfig,
        *,
        marketdata: Wants,
        bars: Wants,
        book: Wants,
        accounts: Callable[[], Sequence[str]],
    ) -> None:
        self._hub = hub
        self._channels = events.channels
        self._accounts = accounts
        fields = events.marketdata.fields
        config = events.bars
        self.streams = [
            _LazyStream(
                MARKETDATA,
                marketdata,
                lambda conid: md_subscribe(conid, fields),
                _constant(md_unsubscribe),
                resubscribe=True,
            ),
            _LazyStream(
                BARS,
                bars,
                lambda conid: bars_subscribe(
                    conid,
                    period=config.period,
                    bar=config.bar,
                    source=config.source,
                    outside_rth=config.outside_rth,
                ),
                self._bars_unsubscribe,
            ),
            _LazyStream(BOOK, book, self._book_subscribe, self._book_unsubscribe),
        ]

    # ------------------------------------------------------------- asking

    def channel_commands(self, *, subscribe: bool) -> list[str]:
        """The (un)subscribe commands of ``events.channels``; per account for ssd/sld."""
        commands = []
        for channel in self._channels:
            pair = CHANNEL_COMMANDS.get(channel)
            if pair is not None:
                commands.append(pair[0] if subscribe else pair[1])
            elif channel in _ACCOUNT_CHANNELS:
                on, off = _ACCOUNT_CHANNELS[channel]
                commands += [on(acct) if subscribe else off(acct) for acct in self._accounts()]
        return commands

    async def subscribe_all(self, send: Send) -> None:
        """A new socket: every channel, then every wanted conid."""
        for command in self.channel_commands(subscribe=True):
            await send(command)
        self.forget()
        await self.sync(send)

    async def sync(self, send: Send) -> None:
        """Subscribe what readers want now, unsubscribe what nobody wants any more."""
        for stream in self.streams:
            wanted = set(stream.wants.wanted())
            for conid in sorted(stream.subscribed - wanted):
                command = await stream.unsubscribe(conid)
                if command is not None:
                    await send(command)
                stream.subscribed.discard(conid)
            for conid in sorted(wanted - stream.subscribed):
                command = stream.subscribe(conid)
                if command is not None:
                    await send(command)
                    stream.subscribed.add(conid)

    async def resubscribe(self, send: Send) -> None:
        """Re-send the streams the gateway would otherwise end (market data, after ~10 min)."""
        for stream in self.streams:
            if stream.resubscribe:
                for conid in sorted(stream.subscribed):
                    command = stream.subscribe(conid)
                    if command is not None:
                        await send(command)

    async def unsubscribe_all(self, send: Send) -> None:
        """Before a drain: ask the gateway to stop everything."""
        for command in self.channel_commands(subscribe=False):
            await send(command)
        for stream in self.streams:
            for conid in sorted(stream.subscribed):
                command = await stream.unsubscribe(conid)
                if command is not None:
                    await send(command)

    def forget(self) -> None:
        """The socket is gone: nothing is subscribed any more."""
        for stream in self.streams:
            stream.subscribed.clear()

    # --------------------------------------------------------------- demand

    def changed(self) -> list[trio.Event]:
        """Events set when any stream's wants change (take them before syncing)."""
        return [stream.wants.changed for stream in self.streams]

    def expire_idle(self, idle_seconds: float) -> None:
        """Forget conids nobody asked for in ``idle_seconds`` (the next sync unsubscribes)."""
        for stream in self.streams:
            for conid in stream.wants.expire_idle(idle_seconds):
                log.info(
                    "%s for conid %d idle for %.0f s; unsubscribing",
                    stream.family,
                    conid,
                    idle_seconds,
                )

    # --------------------------------------------------------------- status

    def topics(self) -> list[str]:
        """The per-instrument topics the current socket has been asked for."""
        return [
            keyed_topic(stream.family, conid)
            for stream in self.streams
            for conid in sorted(stream.subscribed)
        ]

    @property
    def marketdata(self) -> set[int]:
        """Market-data conids the current socket has been asked for."""
        return self.streams[0].subscribed

    # ------------------------------------------------------------- commands

    def _book_subscribe(self, conid: int) -> str | None:
        accounts = self._accounts()
        return book_subscribe(accounts[0], conid) if accounts else None

    async def _book_unsubscribe(self, conid: int) -> str | None:
        accounts = self._accounts()
        return book_unsubscribe(accounts[0]) if accounts else None

    async def _bars_unsubscribe(self, conid: int) -> str | None:
        """``umh+<serverId>``: the id is in the gateway's answer to ``smh``, kept in the hub."""
        topic = bars_topic(conid)
        head = self._hub.head(topic)
        if head:
            answer = await self._hub.read(topic, max(0, head - 5), 5)
            for event in reversed(answer.events):
                payload = event.payload
                server_id = payload.get("serverId") if isinstance(payload, dict) else None
                if isinstance(server_id, str | int) and str(server_id):
                    return bars_unsubscribe(str(server_id))
        log.info("no serverId for the bars of conid %d yet; nothing to unsubscribe", conid)
        return None


def _constant(build: Callable[[int], str]) -> Callable[[int], Awaitable[str | None]]:
    """An unsubscribe builder that needs nothing but the conid, as a stream wants it."""

    async def unsubscribe(conid: int) -> str | None:
        return build(conid)

    return unsubscribe
