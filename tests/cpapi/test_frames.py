"""The frame classifier: every gateway frame kind, and totality on arbitrary input."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bezant_trio.cpapi.frames import FrameKind, classify, md_subscribe, md_unsubscribe

CASES = [
    ('{"topic":"sor","args":[{"orderId":1,"status":"Filled"}]}', FrameKind.EVENT, "orders"),
    ('{"topic":"spl","args":{"DU1.Core":{"dpl":1}}}', FrameKind.EVENT, "pnl"),
    ('{"topic":"str","args":[{"execution_id":"x"}]}', FrameKind.EVENT, "trades"),
    ('{"topic":"smd+265598","31":"1.0","conid":265598}', FrameKind.EVENT, "marketdata:265598"),
    ('{"topic":"smd+bad","conid":8314}', FrameKind.EVENT, "marketdata:8314"),
    ('{"topic":"smd+bad"}', FrameKind.UNKNOWN, None),
    ('{"topic":"system","hb":1700000000000}', FrameKind.HEARTBEAT, None),
    ("{}", FrameKind.HEARTBEAT, None),
    ('{"topic":"system","success":"user","isFT":false,"isPaper":true}', FrameKind.READY, None),
    ('{"topic":"system","message":"x"}', FrameKind.SYSTEM, None),
    ('{"topic":"sts","args":{"authenticated":true}}', FrameKind.EVENT, "sts"),
    ('{"topic":"sts","args":{"authenticated":false}}', FrameKind.AUTH_LOST, "sts"),
    ('{"topic":"act","args":{"accounts":["DU1"]}}', FrameKind.EVENT, "act"),
    ('{"topic":"ntf","args":{"id":"1"}}', FrameKind.EVENT, "ntf"),
    ('{"topic":"blt","args":{}}', FrameKind.EVENT, "blt"),
    ('{"topic":"ech","hb":1}', FrameKind.HEARTBEAT, None),
    ('{"message":"waiting for session"}', FrameKind.WAITING_SESSION, None),
    ('{"message":"Unsubscribed q1"}', FrameKind.SYSTEM, None),
    ('{"result":"unsubscribed from summary"}', FrameKind.SYSTEM, None),
    ('{"error":"unable to subscribe"}', FrameKind.ERROR, None),
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
    if kind is FrameKind.EVENT:
        # the payload is the frame itself, byte for byte
        expected = raw if isinstance(raw, bytes) else raw.encode()
        assert frame.payload_json == expected
        assert orjson.loads(frame.payload_json) == frame.data


def test_capture_other_off_ignores_other_topics() -> None:
    assert classify('{"topic":"ntf","args":{}}', capture_other=False).kind is FrameKind.UNKNOWN
    lost = classify('{"topic":"sts","args":{"authenticated":false}}', capture_other=False)
    assert lost.kind is FrameKind.AUTH_LOST and lost.topic is None


def test_commands() -> None:
    assert md_subscribe(265598, ["31", "84"]) == 'smd+265598+{"fields":["31","84"]}'
    assert md_unsubscribe(265598) == "umd+265598+{}"


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_arbitrary_input_never_raises(raw: str | bytes) -> None:
    frame = classify(raw)
    assert isinstance(frame.kind, FrameKind)
    if frame.kind is FrameKind.EVENT:
        assert frame.topic and orjson.loads(frame.payload_json) is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.one_of(
        st.sampled_from(["sor", "spl", "str", "sts", "system", "smd+1", "smd+x", "ntf"]),
        st.text(max_size=12),
    ),
    body=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_structured_frames_never_raise(topic: str, body: dict) -> None:
    body["topic"] = topic
    frame = classify(orjson.dumps(body))
    assert isinstance(frame.kind, FrameKind)
