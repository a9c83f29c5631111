"""What a client sends the simulated gateway: commands and the session cookie, parsed.

Pure functions, as the gateway reads them (corpus: ``ws_out.jsonl``). This
module mirrors the real gateway, not the daemon's command builders in
``bezant_trio.cpapi.frames``; it must not import from ``cpapi``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bezant_trio.simulator.frames import DEFAULT_MD_FIELDS

__all__ = ["ACCOUNT_CHANNELS", "Command", "parse_command", "parse_session_cookie"]

#: Account-wide channels without a target and the verbs that (un)subscribe them.
ACCOUNT_CHANNELS: dict[str, tuple[str, str]] = {
    "orders": ("sor", "uor"),
    "pnl": ("spl", "upl"),
    "trades": ("str", "utr"),
}
_VERB_TO_CHANNEL: dict[str, tuple[str, bool]] = {
    verb: (channel, verb == verbs[0])
    for channel, verbs in ACCOUNT_CHANNELS.items()
    for verb in verbs
}


#: Channels of the targeted verbs: verb -> (channel, subscribe?).
_TARGETED: dict[str, tuple[str, bool]] = {
    "smd": ("marketdata", True),
    "umd": ("marketdata", False),
    "ssd": ("account_summary", True),
    "usd": ("account_summary", False),
    "sld": ("ledger", True),
    "uld": ("ledger", False),
    "smh": ("bars", True),
    "umh": ("bars", False),
    "sbd": ("book", True),
    "ubd": ("book", False),
}


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed client text frame.

    ``kind`` is ``subscribe``, ``unsubscribe``, ``session``, ``echo``, ``tic``
    or ``unknown``; ``channel`` is ``orders``/``pnl``/``trades``/``marketdata``/
    ``account_summary``/``ledger``/``bars``/``book`` for (un)subscribes;
    ``conid``, ``account`` and ``server_id`` are the topic targets; ``fields``
    is only set for ``smd``, ``args`` holds the JSON arguments.
    """

    kind: str
    channel: str | None = None
    conid: int | None = None
    fields: tuple[str, ...] | None = None
    session: str | None = None
    error: str | None = None
    account: str | None = None
    server_id: str | None = None
    args: Mapping[str, Any] | None = None

    @property
    def is_subscription(self) -> bool:
        """True for the commands the gateway drops before its ready frame."""
        return self.kind in ("subscribe", "unsubscribe")


def _json_args(text: str) -> dict[str, Any] | None:
    if not text:
        return {}
    try:
        args = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return args if isinstance(args, dict) else None


def _conid(text: str) -> int | None:
    # smd and smh accept conid@EXCHANGE (corpus: IBKR Campus, Market Data Request).
    text = text.partition("@")[0]
    return int(text) if text.isascii() and text.isdigit() and 0 < len(text) <= 18 else None


def _parse_targeted(verb: str, rest: str) -> Command:
    channel, subscribe = _TARGETED[verb]
    kind = "subscribe" if subscribe else "unsubscribe"
    target, _, args_text = rest.partition("+")
    if channel in ("marketdata", "bars") and not (channel == "bars" and not subscribe):
        conid = _conid(target)
        if conid is None:
            return Command("unknown", error=f"bad conid {target!r}")
        args = _json_args(args_text) if subscribe else {}
        if args is None:
            return Command("unknown", error=f"{verb} arguments are not JSON")
        fields: tuple[str, ...] | None = None
        if channel == "marketdata" and subscribe:
            raw_fields = args.get("fields")
            if isinstance(raw_fields, list) and raw_fields:
                fields = tuple(str(field) for field in raw_fields)
            else:
                fields = DEFAULT_MD_FIELDS
        return Command(kind, channel=channel, conid=conid, fields=fields, args=args)
    if channel == "bars":  # umh+<serverId>
        if not target:
            return Command("unknown", error="umh needs a serverId")
        return Command(kind, channel=channel, server_id=target)
    if not target:
        return Command("unknown", error=f"{verb} needs an account")
    if channel == "book":
        if not subscribe:  # ubd+<acctId>
            return Command(kind, channel=channel, account=target)
        # sbd+<acctId>+<conid>[+<exchange>]
        conid = _conid(args_text.partition("+")[0])
        if conid is None:
            return Command("unknown", error="sbd needs acctId+conid")
        return Command(kind, channel=channel, account=target, conid=conid)
    args = _json_args(args_text) if subscribe else {}
    if args is None:
        return Command("unknown", error=f"{verb} arguments are not JSON")
    return Command(kind, channel=channel, account=target, args=args)


def parse_command(text: str) -> Command:
    """Parse one client text frame the way the gateway reads it (corpus: ws_out.jsonl)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            return Command("unknown", error="not JSON")
        if isinstance(body, dict) and isinstance(body.get("session"), str):
            return Command("session", session=body["session"])
        return Command("unknown", error="JSON without a session")
    if text == "tic":
        return Command("tic")
    if text.startswith("ech+"):
        return Command("echo")
    verb = text[:3]
    if text == "utr":  # trades' cancel is documented without +{} (corpus: cmd-utr-bare)
        return Command("unsubscribe", channel="trades")
    if text[3:4] == "+":
        if verb in _VERB_TO_CHANNEL:
            channel, subscribe = _VERB_TO_CHANNEL[verb]
            args = _json_args(text[4:]) or {}
            return Command("subscribe" if subscribe else "unsubscribe", channel=channel, args=args)
        if verb in _TARGETED:
            return _parse_targeted(verb, text[4:])
    return Command("unknown", error="unknown verb")


def parse_session_cookie(cookie_header: str) -> str | None:
    """The session id from a ``Cookie`` header's ``api`` cookie, or None.

    Clients send ``api={"session":"..."}`` either URL-encoded or as raw JSON;
    both are accepted. A bare id is not: the real gateway wants the JSON object,
    and accepting less here would hide a client bug until it met a real gateway.
    """
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if not sep or name.strip() != "api":
            continue
        value = urllib.parse.unquote(value.strip())
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if isinstance(body, dict) and isinstance(body.get("session"), str):
            return body["session"]
        return None
    return None
