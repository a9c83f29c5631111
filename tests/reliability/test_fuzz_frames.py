"""Frame fuzzing: whatever bytes arrive, the classifier answers and never raises.

``cpapi.frames.classify`` sits between the socket and the hub: an exception
out of it would end the connection (and, repeated, stall capture). Hypothesis
feeds it arbitrary bytes, arbitrary text, and JSON shaped like gateway frames
with hostile values; atheris (when it installs) runs a coverage-guided fuzzer
over it in a child process for a bounded number of runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bezant_trio.cpapi.frames import Frame, FrameKind, classify
from helpers import examples

_SETTINGS = settings(
    max_examples=examples(3000), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

_TOPICS = st.one_of(
    st.sampled_from(
        [
            *("sor", "spl", "str", "system", "sts", "ech", "tic", "act", "ntf", "blt"),
            *("smd+265598", "smh+265598", "sbd+DU1+265598", "ssd+DU1", "sld+DU1"),
        ]
    ),
    st.text(max_size=20).map(lambda s: "smd+" + s),
    st.text(max_size=20).map(lambda s: "sbd+" + s),
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.none(),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    # orjson encodes 64-bit integers; bigger ones arrive as text below.
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _check(frame: Frame) -> None:
    assert isinstance(frame, Frame) and isinstance(frame.kind, FrameKind)
    if frame.kind is FrameKind.EVENT:
        assert isinstance(frame.topic, str) and frame.topic
    if frame.topic is not None:
        # What gets captured is a topic name and the frame's own bytes, as JSON.
        assert isinstance(orjson.loads(frame.payload_json), dict)
    if frame.kind in (FrameKind.HEARTBEAT, FrameKind.ECHO):
        assert frame.topic is None


@_SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _check(classify(raw))
    _check(classify(raw, capture_other=False))


@settings(max_examples=examples(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=2048))
def test_arbitrary_text_never_raises(raw: str) -> None:
    _check(classify(raw))


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TOPICS, st.dictionaries(st.text(max_size=10), _JSON, max_size=6), st.booleans())
def test_frame_shaped_json_never_raises(topic: object, body: dict, as_bytes: bool) -> None:
    body["topic"] = topic
    raw = orjson.dumps(body)
    _check(classify(raw if as_bytes else raw.decode()))


@settings(max_examples=examples(300), deadline=None)
@given(st.sampled_from(["[", "{", '{"a":']), st.integers(min_value=1, max_value=5000))
def test_deeply_nested_and_huge_numbers_never_raise(opener: str, depth: int) -> None:
    _check(classify(opener * depth))
    _check(classify('{"topic":"sor","args":[{"seq":' + "9" * depth + "}]}"))
    _check(classify(b'{"topic":"smd+1","x":"' + b"\xed\xa0\x80" * (depth % 50) + b'"}'))


def test_lone_surrogates_in_text_are_non_utf8_not_an_exception() -> None:
    assert classify('{"topic":"ntf","text":"\ud800"}').kind is FrameKind.NON_UTF8


_ATHERIS_HARNESS = textwrap.dedent(
    """
    import sys
    import atheris

    # Our code only: classify calls nothing else that Python runs (orjson is C).
    # Instrumenting every import (trio, attrs, pluggy, idna, ssl...) took 10 s
    # of CPU and gave the fuzzer no coverage it could use.
    with atheris.instrument_imports(include=["bezant_trio"]):
        from bezant_trio.cpapi.frames import classify

    def one_input(data: bytes) -> None:
        classify(data)
        classify(data, capture_other=False)
        fdp = atheris.FuzzedDataProvider(data)
        classify(fdp.ConsumeUnicodeNoSurrogates(len(data)))

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
    """
)


@pytest.mark.timeout(150)  # instrumenting our imports, then 6 s of fuzzing (its own bound: 120 s)
def test_atheris_coverage_guided_fuzzing_finds_no_crash(tmp_path, seed: int) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (no wheel for this platform)")
    script = tmp_path / "fuzz_frames.py"
    script.write_text(_ATHERIS_HARNESS)
    # libFuzzer's inputs follow from its seed; the 6 s bound may end a run on a
    # loaded machine earlier, never elsewhere (the seed still replays it).
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            f"-seed={seed}",
            "-runs=200000",
            "-max_total_time=6",
            "-max_len=4096",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done" in done.stderr, done.stderr[-3000:]
