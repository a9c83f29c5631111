"""Every frame in the corpus is classified as its entry documents.

The corpus (``bezant_trio/simulator/corpus``) holds real frames with their
sources; this is what keeps ``cpapi/frames.py`` honest about the gateway.
"""

from __future__ import annotations

import orjson
import pytest

from bezant_trio.cpapi.frames import FrameKind, classify
from bezant_trio.simulator import corpus

FRAMES = corpus.entries(kind="ws_in")


def _wire(entry: dict) -> str:
    return entry["text"] if "text" in entry else orjson.dumps(entry["data"]).decode()


def test_the_corpus_covers_every_kind_the_gateway_sends() -> None:
    kinds = {entry["expect"]["kind"] for entry in FRAMES}
    assert kinds >= {"event", "heartbeat", "echo", "ready", "system", "auth_lost"}
    assert kinds >= {"competing", "waiting_session", "error"}
    topics = {entry["expect"]["topic"] for entry in FRAMES}
    for topic in (
        "orders", "pnl", "trades", "account_summary", "ledger", "marketdata:265598",
        "bars:265598", "book:265598", "ntf", "blt", "sts", "act", "system",
    ):  # fmt: skip
        assert topic in topics, topic


def test_every_entry_names_its_source_and_ids_are_unique() -> None:
    everything = corpus.entries()
    assert len({e["id"] for e in everything}) == len(everything)
    for entry in everything:
        assert entry["kind"] in ("ws_in", "ws_out", "rest", "behaviour"), entry["id"]
        assert len(entry["source"]) > 20, entry["id"]
        assert ("data" in entry) != ("text" in entry), entry["id"]


@pytest.mark.parametrize("entry", FRAMES, ids=[e["id"] for e in FRAMES])
def test_corpus_frame_is_classified_as_documented(entry: dict) -> None:
    expect = entry["expect"]
    frame = classify(_wire(entry))
    assert frame.kind is FrameKind(expect["kind"])
    assert frame.topic == expect["topic"]
    per_account = classify(_wire(entry), per_account=True)
    assert per_account.kind is frame.kind
    assert per_account.topic == expect.get("topic_per_account", expect["topic"])
    if frame.topic is not None:
        # What is captured is the frame itself, byte for byte.
        assert frame.payload_json == _wire(entry).encode()
    if frame.kind in (FrameKind.HEARTBEAT, FrameKind.ECHO):
        assert frame.topic is None  # heartbeats are never events


@pytest.mark.parametrize("entry", FRAMES, ids=[e["id"] for e in FRAMES])
def test_binary_message_of_a_corpus_frame_is_classified_alike(entry: dict) -> None:
    text_frame = classify(_wire(entry))
    binary_frame = classify(_wire(entry).encode())
    assert (binary_frame.kind, binary_frame.topic) == (text_frame.kind, text_frame.topic)


def test_capture_other_off_keeps_control_kinds_but_not_the_topics() -> None:
    lost = classify(_wire(corpus.by_id("sts-authenticated-false")), capture_other=False)
    assert lost.kind is FrameKind.AUTH_LOST and lost.topic is None
    competing = classify(_wire(corpus.by_id("sts-competing-true")), capture_other=False)
    assert competing.kind is FrameKind.COMPETING and competing.topic is None
    ntf = classify(_wire(corpus.by_id("ntf-doc")), capture_other=False)
    assert ntf.kind is FrameKind.UNKNOWN and ntf.topic is None
    # system frames are not "other" topics: still captured
    ready = classify(_wire(corpus.by_id("system-greeting-captured")), capture_other=False)
    assert ready.kind is FrameKind.READY and ready.topic == "system"
