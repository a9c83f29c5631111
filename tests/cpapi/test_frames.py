"""The frame classifier: every gateway frame kind, the command builders, and totality.

Real frames live in the corpus (``test_corpus.py``); this table adds the edge
cases a real gateway has not been seen sending.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bezant_trio.cpapi.frames import (
    FrameKind,
    account_summary_subscribe,
    account_summary_unsubscribe,
    bars_subscribe,
    bars_unsubscribe,
    book_subscribe,
    book_unsubscribe,
    classify,
    ledger_subscribe,
    ledger_unsubscribe,
    md_subscribe,
    md_unsubscribe,
)
from helpers import examples

CASES = [
    ('{"topic":"sor","args":[{"orderId":1,"status":"Filled"}]}', FrameKind.EVENT, "orders"),
    ('{"topic":"spl","args":{"DU1.Core":{"dpl":1}}}', FrameKind.EVENT, "pnl"),
    ('{"topic":"str","args":[{"execution_id":"x"}]}', FrameKind.EVENT, "trades"),
    ('{"topic":"smd+265598","31":"1.0","conid":265598}', FrameKind.EVENT, "marketdata:265598"),
    ('{"topic":"smd+bad","conid":8314}', FrameKind.EVENT, "marketdata:8314"),
    ('{"topic":"smd+bad"}', FrameKind.UNKNOWN, None),
    ('{"topic":"system","hb":1700000000000}', FrameKind.HEARTBEAT, None),
    ("{}", FrameKind.HEARTBEAT, None),
    ('{"topic":"system","success":"user","isFT":false,"isPaper":true}', FrameKind.READY, "system"),
    ('{"topic":"system","message":"x"}', FrameKind.SYSTEM, "system"),
    ('{"topic":"sts","args":{"authenticated":true}}', FrameKind.EVENT, "sts"),
    ('{"topic":"sts","args":{"authenticated":false}}', FrameKind.AUTH_LOST, "sts"),
    ('{"topic":"sts","args":{"competing":true}}', FrameKind.COMPETING, "sts"),
    ('{"topic":"sts","args":{"authenticated":false,"competing":true}}', FrameKind.AUTH_LOST, "sts"),
    ('{"topic":"act","args":{"accounts":["DU1"]}}', FrameKind.EVENT, "act"),
    ('{"topic":"ntf","args":{"id":"1"}}', FrameKind.EVENT, "ntf"),
    ('{"topic":"blt","args":{}}', FrameKind.EVENT, "blt"),
    ("ech+hb", FrameKind.ECHO, None),
    (b"ech+hb", FrameKind.ECHO, None),
    ('{"topic":"ech","hb":1}', FrameKind.ECHO, None),
    ('{"topic":"tic","alive":true}', FrameKind.HEARTBEAT, None),
    ('{"message":"waiting for session"}', FrameKind.WAITING_SESSION, "system"),
    ('{"message":"Unsubscribed q1"}', FrameKind.SYSTEM, "system"),
    ('{"result":"unsubscribed from summary"}', FrameKind.SYSTEM, "system"),
    ('{"error":"unable to subscribe"}', FrameKind.ERROR, "system"),
    ('{"note":"no topic, no message"}', FrameKind.UNKNOWN, None),
    ('{"topic":"ssd+DU1","result":[]}', FrameKind.EVENT, "account_summary"),
    ('{"topic":"sld+DU1","result":[]}', FrameKind.EVENT, "ledger"),
    ('{"topic":"smh+265598","data":[]}', FrameKind.EVENT, "bars:265598"),
    ('{"topic":"smh+x","conid":"77"}', FrameKind.EVENT, "bars:77"),
    ('{"topic":"sbd+DU1+265598","data":[]}', FrameKind.EVENT, "book:265598"),
    ('{"topic":"sbd+DU1","data":[]}', FrameKind.UNKNOWN, None),
    ('{"topic":"smd+0"}', FrameKind.UNKNOWN, None),
    ('{"topic":"WEIRD TOPIC"}', FrameKind.UNKNOWN, None),
    ('{"topic":"sor",', FrameKind.MALFORMED, None),
    ("[1,2]", FrameKind.MALFORMED, None),
    ("42", FrameKind.MALFORMED, None),
    (b"\xff\xfe\x00garbage", FrameKind.NON_UTF8, None),
    (b'{"topic":"ntf","args":{}}', FrameKind.EVENT, "ntf"),
]


@pytest.mark.parametrize(("raw", "kind", "topic"), CASES)
def test_classify_table(raw: str | bytes, kind: FrameKind, topic: str | None) -> None:
    frame = classify(raw)
    assert frame.kind is kind
    assert frame.topic == topic
    if topic is not None:
        # the payload is the frame itself, byte for byte
        expected = raw if isinstance(raw, bytes) else raw.encode()
        assert frame.payload_json == expected
        assert orjson.loads(frame.payload_json) == frame.data


def test_capture_other_off_ignores_other_topics() -> None:
    assert classify('{"topic":"ntf","args":{}}', capture_other=False).kind is FrameKind.UNKNOWN
    lost = classify('{"topic":"sts","args":{"authenticated":false}}', capture_other=False)
    assert lost.kind is FrameKind.AUTH_LOST and lost.topic is None


def test_per_account_topics_for_several_accounts() -> None:
    summary = classify('{"topic":"ssd+DU1234567","result":[]}', per_account=True)
    assert summary.topic == "account_summary:DU1234567"
    ledger = classify('{"topic":"sld+U7","result":[]}', per_account=True)
    assert ledger.topic == "ledger:U7"
    # an account id that cannot be a topic key falls back to the family
    odd = classify('{"topic":"sld+a b","result":[]}', per_account=True)
    assert odd.topic == "ledger"


def test_commands() -> None:
    assert md_subscribe(265598, ["31", "84"]) == 'smd+265598+{"fields":["31","84"]}'
    assert md_unsubscribe(265598) == "umd+265598+{}"
    assert account_summary_subscribe("DU1") == "ssd+DU1+{}"
    assert (
        account_summary_subscribe("DU1", keys=["ExcessLiquidity-S"], fields=["monetaryValue"])
        == 'ssd+DU1+{"keys":["ExcessLiquidity-S"],"fields":["monetaryValue"]}'
    )
    assert account_summary_unsubscribe("DU1") == "usd+DU1+{}"
    assert ledger_subscribe("DU1", keys=["LedgerListBASE"]) == 'sld+DU1+{"keys":["LedgerListBASE"]}'
    assert ledger_unsubscribe("DU1") == "uld+DU1+{}"
    assert (
        bars_subscribe(265598, period="2h", bar="5min", outside_rth=False, format="%h/%l")
        == 'smh+265598+{"period":"2h","bar":"5min","outsideRth":false,"format":"%h/%l"}'
    )
    assert bars_subscribe(265598) == "smh+265598+{}"
    assert bars_unsubscribe("341115") == "umh+341115"
    assert book_subscribe("DU1", 265598) == "sbd+DU1+265598"
    assert book_subscribe("DU1", 265598, "ISLAND") == "sbd+DU1+265598+ISLAND"
    assert book_unsubscribe("DU1") == "ubd+DU1"


@settings(max_examples=examples(500), deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_arbitrary_input_never_raises(raw: str | bytes) -> None:
    frame = classify(raw)
    assert isinstance(frame.kind, FrameKind)
    if frame.topic is not None:
        assert orjson.loads(frame.payload_json) is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=examples(300), deadline=None)
@given(
    topic=st.one_of(
        st.sampled_from(
            [
                *("sor", "spl", "str", "sts", "system", "smd+1", "smd+x", "ntf", "ssd+DU1"),
                *("sld+x", "smh+1", "smh+x", "sbd+DU1+1", "sbd+", "tic", "ech"),
            ]
        ),
        st.text(max_size=12),
    ),
    body=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_structured_frames_never_raise(topic: str, body: dict) -> None:
    body["topic"] = topic
    for per_account in (False, True):
        frame = classify(orjson.dumps(body), per_account=per_account)
        assert isinstance(frame.kind, FrameKind)
        if frame.kind in (FrameKind.HEARTBEAT, FrameKind.ECHO):
            assert frame.topic is None
